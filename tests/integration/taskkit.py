# SPDX-License-Identifier: Apache-2.0
"""Helpers for the task integration tests: workers, an API with a minted operator token, submit, wait."""
import json
import os
import secrets
import subprocess
import time
import uuid

import jwt
import redis
import requests

import fixtures

DISPATCH = os.path.join(fixtures.BUILD_DIR, "tools", "bench", "dispatch", "dibba-dispatch")
PLUGINS = os.path.join(fixtures.BUILD_DIR, "plugins")


class Stack:
    def __init__(self, redis_server, **overrides):
        self.redis = redis_server
        self.secrets = fixtures.make_secrets(fixtures.session().path(fixtures.session().unique("sec")))
        base = {"worker.plugin_dir": PLUGINS, "worker.heartbeat_seconds": 1, "log.level": "info"}
        base.update(overrides)
        self.base = base
        self.cfg = fixtures.daemon_config(redis=redis_server, secrets_paths=self.secrets, **base)
        self.prefix = self.cfg["redis"]["prefix"]
        self.r = redis.Redis(unix_socket_path=redis_server.socket, decode_responses=True)
        self.raw = redis.Redis(unix_socket_path=redis_server.socket)
        self.workers = []
        self.api = None

    def worker(self, host, **overrides):
        o = dict(self.base)
        o["worker.hostname"] = host
        o.update(overrides)
        cfg = fixtures.daemon_config(redis=self.redis, secrets_paths=self.secrets, **o)
        w = fixtures.Daemon("worker", cfg)
        w.start(wait_log=r"consuming")
        self.workers.append(w)
        fixtures.wait_until(lambda: self.r.zscore(self.prefix + "nodes", host), 10, "heartbeat of " + host)
        return w

    def start_api(self):
        port = fixtures.free_port()
        cfg = fixtures.daemon_config(redis=self.redis, secrets_paths=self.secrets, api_port=port, **self.base)
        self.api = fixtures.Daemon("api", cfg)
        p = self.api.run_once("user", "add", "op", "--role", "operator", "--password-stdin",
                              input="correct horse battery staple\n")
        assert p.returncode == 0, p.stderr
        self.api.start(port=port)
        self.url = "http://127.0.0.1:%d" % port
        with open(self.secrets["jwt_secret_file"]) as f:
            key = f.read().strip()
        now = int(time.time())
        self.token = jwt.encode({"sub": "op", "role": "operator", "iat": now, "nbf": now, "exp": now + 3600,
                                 "jti": uuid.uuid4().hex}, key, algorithm="HS256")
        self.h = {"Authorization": "Bearer " + self.token}
        return self.api

    def submit(self, name, host=None, role=None, args=None, count=1, countdown=None, expires=None):
        cmd = [DISPATCH, "--config", self.workers[0].config_path if self.workers else self.config_file(),
               "submit", "--name", name, "--count", str(count)]
        cmd += ["--host", host] if host else ["--role", role]
        if args is not None:
            cmd += ["--args", json.dumps(args)]
        if countdown is not None:
            cmd += ["--countdown", str(countdown)]
        if expires is not None:
            cmd += ["--expires", str(expires)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    def config_file(self):
        path = fixtures.session().path(fixtures.session().unique("cfg") + ".json")
        with open(path, "w") as f:
            json.dump(self.cfg, f)
        return path

    def record(self, tid):
        raw = self.raw.hgetall((self.prefix + "task:" + tid).encode())
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    def wait_states(self, ids, states=("SUCCESS",), timeout=60):
        def ok():
            return all(self.r.hget(self.prefix + "task:" + i, "state") in states for i in ids)
        fixtures.wait_until(ok, timeout, "%d tasks to reach %s" % (len(ids), states), interval=0.2)

    def counters(self, host):
        return json.loads(self.r.hget(self.prefix + "node:" + host, "counters") or "{}")

    def close(self):
        for w in self.workers:
            w.close()
        if self.api:
            self.api.close()
