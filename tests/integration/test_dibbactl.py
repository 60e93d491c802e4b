# SPDX-License-Identifier: Apache-2.0
"""dibbactl against a running stack (private redis-server, dibba-api, dibba-worker; for pods a worker with the
node + pods plugins on a private containerd and CNI bridge, with dibba-beat firing one job) and against a small
local HTTP server that records requests, to check the exact bodies and query strings dibbactl sends."""
import base64
import hashlib
import http.server
import json
import socket
import struct
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

import redis
import requests

import fixtures
import taskkit

# DIBBA_IT_DIBBACTL: run another build of dibbactl (a sanitizer build) against the same daemons.
DIBBACTL = os.environ.get("DIBBA_IT_DIBBACTL") or os.path.join(fixtures.BUILD_DIR, "tools", "dibbactl", "dibbactl")
OP_PASSWORD = "correct horse battery staple"
ADMIN_PASSWORD = "admin password for tests"

POD_YAML = """\
# a pod with most of the shapes YAML can write
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  labels: {app: web, tier: "1"}
  annotations:
    note: 'quoted: yes'
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  hostNetwork: false
  containers:
    - name: main
      image: docker.io/library/busybox:latest
      command: ["httpd", "-f", "-p", "8080"]
      args: []
      env:
        - {name: GREETING, value: "hello: world"}
        - name: EMPTY
          value: ""
        - name: NUMBER
          value: "0042"
      ports:
        - containerPort: 8080
          hostPort: 18080
          protocol: TCP
      resources:
        limits: {cpu: 500m, memory: 64Mi}
        requests:
          cpu: 0.25
      tty: false
      workingDir: /www
  volumes:
    - name: data
      emptyDir: {}
"""

# POD_YAML written by hand as JSON, in the same key order
POD_DOC = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web", "tier": "1"},
                 "annotations": {"note": "quoted: yes"}},
    "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "hostNetwork": False,
        "containers": [{
            "name": "main", "image": "docker.io/library/busybox:latest", "command": ["httpd", "-f", "-p", "8080"],
            "args": [],
            "env": [{"name": "GREETING", "value": "hello: world"}, {"name": "EMPTY", "value": ""},
                    {"name": "NUMBER", "value": "0042"}],
            "ports": [{"containerPort": 8080, "hostPort": 18080, "protocol": "TCP"}],
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": 0.25}},
            "tty": False, "workingDir": "/www"}],
        "volumes": [{"name": "data", "emptyDir": {}}]}}


def one_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    return len(lines) == 1


class Ctl:
    """Runs dibbactl with its own config directory (HOME and XDG_CONFIG_HOME), no inherited DIBBA_SERVER."""

    def __init__(self, server):
        self.home = tempfile.mkdtemp(prefix="dibbactl-", dir=fixtures.session().dir)
        self.server = server
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIBBA_")}
        self.env.update(HOME=self.home, XDG_CONFIG_HOME=os.path.join(self.home, "xdg"))

    def __call__(self, *args, input=None, timeout=60, server=True):
        cmd = [DIBBACTL] + (["--server", self.server] if server else []) + list(args)
        return subprocess.run(cmd, env=self.env, input=input, capture_output=True, text=True, timeout=timeout)

    def ok(self, *args, **kw):
        p = self(*args, **kw)
        assert p.returncode == 0, "dibbactl %s exited %d: %s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr)
        return p

    def credentials(self):
        return os.path.join(self.home, "xdg", "dibba", "credentials.json")


def setUpModule():
    fixtures.cleanup_stale()


class StackTest(unittest.TestCase):
    """The real API: login, whoami, nodes, tasks (run, watch, revoke), users, errors."""

    @classmethod
    def setUpClass(cls):
        cls.redis = fixtures.RedisServer()
        cls.st = taskkit.Stack(cls.redis)
        cls.st.worker("host-a")
        cls.st.start_api()
        p = cls.st.api.run_once("user", "add", "admin", "--role", "admin", "--password-stdin",
                                input=ADMIN_PASSWORD + "\n")
        assert p.returncode == 0, p.stderr
        cls.ctl = Ctl(cls.st.url)
        # the API picks the users file up through its directory watch
        fixtures.wait_until(lambda: cls.ctl("login", "-u", "admin", "--password-stdin",
                                            input=ADMIN_PASSWORD + "\n").returncode == 0, 10, "admin login")

    @classmethod
    def tearDownClass(cls):
        cls.st.close()
        cls.redis.stop()

    def test_login_token_file_and_whoami(self):
        ctl = Ctl(self.st.url)
        p = ctl("whoami")
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertTrue(one_line(p.stderr) and "not logged in" in p.stderr, p.stderr)
        p = ctl("login", "-u", "op", "--password-stdin", input="wrong password\n")
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)
        self.assertIn("incorrect username or password", p.stderr)
        self.assertFalse(os.path.exists(ctl.credentials()))
        p = ctl.ok("login", "-u", "op", "--password-stdin", input=OP_PASSWORD + "\n")
        self.assertIn("Logged in to %s as op" % self.st.url, p.stdout)
        st = os.stat(ctl.credentials())
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(ctl.credentials())).st_mode), 0o700)
        with open(ctl.credentials()) as f:
            cred = json.load(f)
        self.assertEqual(cred["server"], self.st.url)
        self.assertEqual(cred["user"], "op")
        self.assertEqual(ctl.ok("whoami").stdout.strip(), "op (operator) on %s" % self.st.url)
        self.assertEqual(json.loads(ctl.ok("-o", "json", "whoami").stdout), {"sub": "op", "role": "operator"})
        # the server of the last login is the default; the token never goes to another server
        self.assertIn("op (operator)", ctl.ok("whoami", server=False).stdout)
        p = ctl("--server", "http://127.0.0.1:1", "whoami", server=False)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertIn("another server", p.stderr)
        # an operator is not an admin
        p = ctl("users", "list")
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)
        self.assertIn("Logged out", ctl.ok("logout").stdout)
        self.assertEqual(ctl("whoami").returncode, 3)
        # XDG_CONFIG_HOME unset: ~/.config/dibba
        env_ctl = Ctl(self.st.url)
        del env_ctl.env["XDG_CONFIG_HOME"]
        env_ctl.ok("login", "-u", "op", "--password-stdin", input=OP_PASSWORD + "\n")
        self.assertTrue(os.path.exists(os.path.join(env_ctl.home, ".config", "dibba", "credentials.json")))

    def test_get_nodes(self):
        p = self.ctl.ok("get", "nodes")
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "STATUS", "CPUS", "MEMORY", "LOAD", "LAST-HEARTBEAT"])
        row = [l.split() for l in lines[1:] if l.split()[0] == "host-a"]
        self.assertEqual(len(row), 1, p.stdout)
        self.assertEqual(row[0][1], "online")
        self.assertGreater(int(row[0][2]), 0)
        self.assertRegex(row[0][3], r"^\d+(\.\d)?[KMGT]i$")
        wide = self.ctl.ok("-o", "wide", "get", "nodes").stdout.splitlines()
        self.assertIn("VERSION", wide[0].split())
        nodes = json.loads(self.ctl.ok("get", "nodes", "-o", "json").stdout)["nodes"]
        self.assertEqual([(n["hostname"], n["online"]) for n in nodes], [("host-a", True)])
        self.assertEqual(self.ctl.ok("get", "nodes", "-o", "name").stdout, "host-a\n")
        one = json.loads(self.ctl.ok("get", "node", "host-a", "-o", "json").stdout)
        self.assertEqual(one["hostname"], "host-a")
        self.assertIn("hostname: host-a", self.ctl.ok("describe", "node", "host-a").stdout)
        p = self.ctl("get", "node", "nosuchhost")
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)

    def test_run_watch_and_get_task(self):
        tid = self.ctl.ok("run", "noop", "--host", "host-a").stdout.strip()
        self.assertRegex(tid, r"^[0-9a-f-]{36}$")
        p = self.ctl.ok("watch", tid, "--timeout", "30")
        self.assertRegex(p.stdout.splitlines()[-1], r"^\d\d:\d\d:\d\d %s SUCCESS( |$)" % tid)
        self.assertNotIn("\r", p.stdout)  # not a terminal: plain lines, no progress bar
        p = self.ctl.ok("get", "task", tid)
        head, row = p.stdout.splitlines()
        self.assertEqual(head.split(), ["ID", "NAME", "STATUS", "PROGRESS", "WORKER"])
        self.assertEqual(row.split(), [tid, "noop", "SUCCESS", "-", "host-a"])
        self.assertEqual(json.loads(self.ctl.ok("get", "task", tid, "-o", "json").stdout)["status"], "SUCCESS")
        self.assertIn("status: SUCCESS", self.ctl.ok("describe", "task", tid).stdout)
        # sleep with a watch from the start: several events, then SUCCESS and exit 0
        p = self.ctl.ok("run", "sleep", "--host", "host-a", "--args", '{"ms": 1500}', "--watch")
        lines = p.stdout.splitlines()
        tid2 = lines[0]
        self.assertGreaterEqual(len(lines), 3, p.stdout)
        self.assertIn(" %s SUCCESS" % tid2, lines[-1])
        # a failing task: watch exits 1
        tid3 = self.ctl.ok("run", "sleep", "--host", "host-a", "--args", '{"ms": 10, "fail": true}').stdout.strip()
        p = self.ctl("watch", tid3)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(" %s FAILURE" % tid3, p.stdout.splitlines()[-1])
        # errors: unknown task (4), a bad --args (2), no such host (4)
        p = self.ctl("watch", "00000000-0000-4000-8000-000000000000")
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)
        self.assertEqual(self.ctl("get", "task", "00000000-0000-4000-8000-000000000000").returncode, 4)
        self.assertEqual(self.ctl("run", "noop", "--host", "host-a", "--args", "[1]").returncode, 2)
        self.assertEqual(self.ctl("run", "noop").returncode, 2)
        p = self.ctl("run", "noop", "--host", "nosuchhost")
        self.assertEqual(p.returncode, 4, p.stderr)
        # listing tasks: GET /v1/tasks is not on this branch; a clear line, or a list once it lands
        p = self.ctl("get", "tasks", "--limit", "5")
        if p.returncode != 0:
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertTrue(one_line(p.stderr) and "does not support" in p.stderr, p.stderr)

    def test_revoke(self):
        tid = self.ctl.ok("run", "sleep", "--host", "host-a", "--args", '{"ms": 60000}').stdout.strip()
        fixtures.wait_until(lambda: self.st.record(tid).get("state") in ("STARTED", "PROGRESS"), 20, "sleep start")
        self.assertEqual(self.ctl.ok("revoke", tid).stdout.strip(), "task %s revoked" % tid)
        p = self.ctl("watch", tid, "--timeout", "30")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("REVOKED", p.stdout.splitlines()[-1])
        self.assertEqual(json.loads(self.ctl.ok("-o", "json", "get", "task", tid).stdout)["status"], "REVOKED")
        self.assertEqual(self.ctl("revoke", "00000000-0000-4000-8000-000000000000").returncode, 4)

    def test_users(self):
        self.assertIn("user bob created",
                      self.ctl.ok("users", "add", "bob", "--role", "viewer", "--password-stdin",
                                  input="bob's password\n").stdout)
        p = self.ctl("users", "add", "bob", "--role", "viewer", "--password-stdin", input="bob's password\n")
        self.assertEqual(p.returncode, 5, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)
        rows = [l.split() for l in self.ctl.ok("users", "list").stdout.splitlines()]
        self.assertEqual(rows[0], ["NAME", "ROLE", "ENABLED"])
        self.assertIn(["bob", "viewer", "true"], rows)
        self.assertEqual(self.ctl.ok("get", "users", "bob", "-o", "name").stdout, "bob\n")
        self.ctl.ok("users", "role", "bob", "operator")
        self.assertEqual(json.loads(self.ctl.ok("get", "user", "bob", "-o", "json").stdout)["role"], "operator")
        p = self.ctl("users", "role", "bob", "king")
        self.assertEqual(p.returncode, 5, p.stderr)
        self.ctl.ok("users", "passwd", "bob", "--password-stdin", input="a new password\n")
        bob = Ctl(self.st.url)
        bob.ok("login", "-u", "bob", "--password-stdin", input="a new password\n")
        self.assertIn("bob (operator)", bob.ok("whoami").stdout)
        self.assertIn("user bob deleted", self.ctl.ok("users", "del", "bob").stdout)
        p = self.ctl("get", "users", "bob")
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertEqual(self.ctl("users", "del", "bob").returncode, 4)
        self.assertNotIn("bob", self.ctl.ok("users", "list", "-o", "name").stdout.split())
        # bob's token is refused now
        p = bob("whoami")
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)

    def test_errors(self):
        p = self.ctl("frobnicate")
        self.assertEqual(p.returncode, 2)
        self.assertTrue(one_line(p.stderr), p.stderr)
        self.assertEqual(self.ctl().returncode, 2)
        self.assertEqual(self.ctl("get", "nodes", "--bogus").returncode, 2)
        self.assertEqual(self.ctl("-o", "yaml", "get", "nodes").returncode, 2)
        self.assertEqual(self.ctl.ok("--help").stdout.count("Exit codes"), 1)
        # server down: connection refused
        down = Ctl("http://127.0.0.1:%d" % fixtures.free_port())
        p = down("login", "-u", "op", "--password-stdin", input=OP_PASSWORD + "\n")
        self.assertEqual(p.returncode, 6, p.stderr)
        self.assertTrue(one_line(p.stderr) and "cannot reach" in p.stderr, p.stderr)
        # pods are not on this branch's API yet: a clear line naming the route (or success once they land)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=fixtures.session().dir, delete=False) as f:
            f.write(POD_YAML)
        p = self.ctl("apply", "-f", f.name)
        if p.returncode != 0:
            self.assertIn(p.returncode, (1, 4, 5), p.stderr)
            self.assertTrue(one_line(p.stderr), p.stderr)
        p = self.ctl("get", "pods")
        if p.returncode == 1:
            self.assertIn("does not support", p.stderr)


class Recorder(http.server.ThreadingHTTPServer):
    """Answers the pods, schedules, instances and token routes from their documented shapes and keeps every
    request: (method, path with query, headers, body bytes)."""

    def __init__(self):
        self.requests = []
        super().__init__(("127.0.0.1", 0), RecorderHandler)
        self.url = "http://127.0.0.1:%d" % self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.shutdown()
        self.server_close()

    def last(self, method=None):
        reqs = [r for r in self.requests if method is None or r[0] == method]
        return reqs[-1]


POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "web", "namespace": "demo", "creationTimestamp": "2024-01-01T00:00:00Z"},
       "spec": {"nodeName": "host-a", "containers": [{"name": "main", "image": "busybox"}]},
       "status": {"phase": "Running", "podIP": "10.0.0.5", "hostIP": "192.0.2.1", "hostName": "host-a",
                  "containerStatuses": [{"name": "main", "restartCount": 2, "ready": True}]}}


class RecorderHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, obj=None):
        body = json.dumps(obj if obj is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        path = urllib.parse.urlsplit(self.path).path
        if self.command == "POST" and path == "/token":
            form = urllib.parse.parse_qs(body.decode())
            if form.get("password") != ["s3cret & more"]:
                return self.reply(401, {"detail": "Incorrect username or password"})
            return self.reply(200, {"access_token": "rec-token", "token_type": "bearer", "expires_in": 3600})
        if self.headers.get("Authorization") != "Bearer rec-token":
            return self.reply(401, {"detail": "Not authenticated"})
        if self.command == "POST" and path == "/v1/pods":
            obj = json.loads(body)
            if obj["metadata"]["name"] == "exists":
                return self.reply(409, {"detail": "pod demo/exists already exists"})
            return self.reply(201, obj)
        if self.command == "GET" and path == "/v1/pods":
            return self.reply(200, {"items": [POD]})
        if path == "/v1/pods/demo/web" and self.command in ("GET", "DELETE"):
            return self.reply(200, POD)
        if self.command == "GET" and path == "/v1/pods/demo/web/logs":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in (b"line one\n", b"line two\n", b"line three\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.command == "POST" and path == "/v1/pods/demo/web/exec":
            return self.reply(200, {"exit_code": 3, "stdout": "out\n", "stderr": "err\n"})
        if self.command == "GET" and path == "/v1/schedules":
            return self.reply(200, {"schedules": [
                {"name": "nightly", "schedule": {"cron": "0 2 * * *"}, "task": "noop",
                 "next_run_ms": int(time.time() * 1000) + 3600_000, "last_run_ms": int(time.time() * 1000) - 60_000,
                 "last_task_id": "11111111-1111-4111-8111-111111111111"}]})
        if self.command == "POST" and path == "/v1/schedules/nightly/run":
            return self.reply(202, {"task_id": "22222222-2222-4222-8222-222222222222"})
        if self.command == "POST" and path in ("/create-instances", "/terminate-namespace"):
            return self.reply(202, {"task_id": "33333333-3333-4333-8333-333333333333"})
        if self.command == "GET" and path == "/v1/namespaces/ci/instances":
            return self.reply(200, {"namespace": "ci", "instances": [
                {"instanceId": "i-0abc", "state": "running", "instanceType": "t3.small", "privateIP": "10.1.0.4"}]})
        return self.reply(404, {"detail": "Not Found"})

    do_GET = do_POST = do_DELETE = do_PATCH = handle_any


class RecordedRoutesTest(unittest.TestCase):
    """The exact requests dibbactl sends (bodies, query strings) and its reading of documented answers."""

    def setUp(self):
        self.rec = Recorder()
        self.ctl = Ctl(self.rec.url)
        self.ctl.ok("login", "-u", "alice", "--password-stdin", input="s3cret & more\n")
        method, path, _, body = self.rec.last()
        self.assertEqual((method, path), ("POST", "/token"))
        self.assertEqual(urllib.parse.parse_qs(body.decode()),
                         {"grant_type": ["password"], "username": ["alice"], "password": ["s3cret & more"]})
        self.dir = tempfile.mkdtemp(dir=fixtures.session().dir)

    def tearDown(self):
        self.rec.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_apply_yaml_equals_json(self):
        doc = POD_DOC
        y = self.write("pod.yaml", POD_YAML)
        j = self.write("pod.json", json.dumps(doc, indent=2))
        self.assertEqual(self.ctl.ok("apply", "-f", y).stdout, "pod demo/web created\n")
        yaml_body = self.rec.last("POST")[3]
        self.ctl.ok("apply", "-f", j)
        json_body = self.rec.last("POST")[3]
        self.assertEqual(self.rec.last("POST")[1], "/v1/pods")
        self.assertEqual(yaml_body, json_body)
        self.assertEqual(json.loads(yaml_body), doc)
        self.assertEqual(self.rec.last("POST")[2]["Content-Type"], "application/json")
        # stdin, JSON sniffed
        self.ctl.ok("apply", "-f", "-", input=json.dumps(doc))
        self.assertEqual(self.rec.last("POST")[3], json_body)
        # errors: one line with file:line:column, exit 5; nothing sent
        sent = len(self.rec.requests)
        for text, where in (("metadata:\n  name: a\n  name: b\n", ":3:3:"), ("a: [1, 2\nb: c\n", ":2:"),
                            ("x: &a 1\ny: *a\n", ":2:4:"), ("a: 1\n---\nb: 2\n", ":2:1:"),
                            ("kind: Service\nmetadata: {name: x}\n", "kind must be Pod"),
                            ("kind: Pod\nspec: {}\n", "metadata.name is required"),
                            ("n: .inf\n", ":1:4:")):
            p = self.ctl("apply", "-f", self.write("bad.yaml", text))
            self.assertEqual(p.returncode, 5, (text, p.stderr))
            self.assertTrue(one_line(p.stderr) and where in p.stderr, (text, p.stderr))
        p = self.ctl("apply", "-f", self.write("bad.json", '{"a": 1,}'))
        self.assertEqual(p.returncode, 5, p.stderr)
        self.assertIn("bad.json:1:", p.stderr)
        big = self.write("big.yaml", "a: " + "x" * (1 << 20) + "\n")
        p = self.ctl("apply", "-f", big)
        self.assertEqual(p.returncode, 5, p.stderr)
        self.assertIn("larger than", p.stderr)
        self.assertEqual(self.ctl("apply", "-f", os.path.join(self.dir, "missing.yaml")).returncode, 1)
        self.assertEqual(len(self.rec.requests), sent)
        # -n conflicting with metadata.namespace; 409 from the server
        self.assertEqual(self.ctl("apply", "-n", "other", "-f", y).returncode, 5)
        p = self.ctl("apply", "-f", self.write("exists.yaml", POD_YAML.replace("name: web", "name: exists")))
        self.assertEqual(p.returncode, 5, p.stderr)
        self.assertIn("already exists", p.stderr)

    def test_pods_logs_exec_delete(self):
        p = self.ctl.ok("logs", "-f", "-c", "main", "--tail", "5", "demo/web")
        self.assertEqual(p.stdout, "line one\nline two\nline three\n")
        self.assertEqual(self.rec.last()[1], "/v1/pods/demo/web/logs?follow=true&container=main&tailLines=5")
        self.ctl.ok("logs", "-n", "demo", "web")
        self.assertEqual(self.rec.last()[1], "/v1/pods/demo/web/logs?follow=false")
        p = self.ctl("exec", "demo/web", "-c", "main", "--", "sh", "-c", "echo hi; ls -l")
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertEqual((p.stdout, p.stderr), ("out\n", "err\n"))
        method, path, _, body = self.rec.last()
        self.assertEqual((method, path), ("POST", "/v1/pods/demo/web/exec"))
        self.assertEqual(json.loads(body), {"container": "main", "command": ["sh", "-c", "echo hi; ls -l"]})
        self.ctl("exec", "-n", "demo", "web", "--", "true")
        self.assertEqual(json.loads(self.rec.last()[3]), {"command": ["true"]})
        self.assertEqual(self.ctl("exec", "demo/web").returncode, 2)
        self.assertEqual(self.ctl.ok("delete", "pod", "demo/web").stdout, "pod demo/web deleted\n")
        self.assertEqual(self.rec.last()[:2], ("DELETE", "/v1/pods/demo/web"))
        self.ctl.ok("delete", "pod", "-n", "demo", "web")
        self.assertEqual(self.rec.last()[:2], ("DELETE", "/v1/pods/demo/web"))
        self.assertEqual(self.ctl("delete", "pod", "a/b/c").returncode, 2)
        rows = [l.split() for l in self.ctl.ok("get", "pods", "-n", "demo", "-l", "app=web").stdout.splitlines()]
        self.assertEqual(self.rec.last()[1], "/v1/pods?namespace=demo&labelSelector=app%3Dweb")
        self.assertEqual(rows, [["NAMESPACE", "NAME", "PHASE", "IP", "HOST", "RESTARTS"],
                                ["demo", "web", "Running", "10.0.0.5", "host-a", "2"]])
        self.assertEqual(self.ctl.ok("get", "pods", "-o", "name").stdout, "demo/web\n")
        self.assertEqual(self.rec.last()[1], "/v1/pods")
        self.assertIn("podIP: 10.0.0.5", self.ctl.ok("describe", "pod", "demo/web").stdout)
        # a route the server does not have: one line, exit 1
        p = self.ctl("logs", "demo/nosuch")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertTrue(one_line(p.stderr) and "does not support" in p.stderr, p.stderr)

    def test_schedules_and_instances(self):
        rows = [l.split() for l in self.ctl.ok("get", "schedules").stdout.splitlines()]
        self.assertEqual(rows[0], ["NAME", "SCHEDULE", "NEXT", "LAST", "LAST-TASK"])
        self.assertEqual(rows[1][:4], ["nightly", "cron", "0", "2"])
        self.assertRegex(" ".join(rows[1]), r" in (59|60)m ")
        self.assertEqual(self.ctl("describe", "schedule", "nosuch").returncode, 4)
        self.assertEqual(self.ctl.ok("schedules", "run", "nightly").stdout.strip(),
                         "22222222-2222-4222-8222-222222222222")
        self.assertEqual(self.rec.last()[:2], ("POST", "/v1/schedules/nightly/run"))
        self.ctl.ok("instances", "create", "--namespace", "ci", "--count", "2", "--instance-type", "t3.small",
                    "--ami", "ami-1", "--security-group", "sg-1", "--tag", "team=ci")
        method, path, _, body = self.rec.last()
        self.assertEqual((method, path), ("POST", "/create-instances"))
        self.assertEqual(json.loads(body), {"namespace": "ci", "min_count": 2, "max_count": 2,
                                            "instance_type": "t3.small",
                                            "ami_id": "ami-1", "security_group_ids": ["sg-1"],
                                            "tags": {"team": "ci"}})
        sent = len(self.rec.requests)
        self.assertEqual(self.ctl("instances", "create", "--namespace", "ci", "--region", "eu-west-1").returncode, 2)
        self.assertEqual(self.ctl("instances", "create", "--namespace", "ci", "--count", "101").returncode, 2)
        self.assertEqual(len(self.rec.requests), sent)
        spec = self.write("spec.json", '{"namespace": "ci", "min_count": 1, "max_count": 1}')
        self.ctl.ok("instances", "create", "-f", spec)
        self.assertEqual(json.loads(self.rec.last()[3]), {"namespace": "ci", "min_count": 1, "max_count": 1})
        self.ctl.ok("instances", "terminate", "ci")
        self.assertEqual(json.loads(self.rec.last()[3]), {"namespace": "ci"})
        rows = [l.split() for l in self.ctl.ok("instances", "list", "ci").stdout.splitlines()]
        self.assertEqual(rows[1][:4], ["i-0abc", "running", "t3.small", "10.1.0.4"])

    def test_bad_password_and_expired_route(self):
        other = Ctl(self.rec.url)
        p = other("login", "-u", "alice", "--password-stdin", input="nope\n")
        self.assertEqual(p.returncode, 3)
        self.assertTrue(one_line(p.stderr), p.stderr)
        # the stored token is refused by the server: exit 3, one line
        with open(self.ctl.credentials()) as f:
            cred = json.load(f)
        cred["token"] = "stale"
        with open(self.ctl.credentials(), "w") as f:
            json.dump(cred, f)
        p = self.ctl("get", "pods")
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)

    def test_server_precedence(self):
        # no --server: config.json's server, then DIBBA_SERVER over it; the token stays with its server
        ctl = Ctl(None)
        os.makedirs(os.path.join(ctl.home, "xdg", "dibba"))
        with open(os.path.join(ctl.home, "xdg", "dibba", "config.json"), "w") as f:
            json.dump({"server": self.rec.url + "/"}, f)
        ctl.ok("login", "-u", "alice", "--password-stdin", input="s3cret & more\n", server=False)
        self.assertEqual(ctl.ok("get", "pods", "-o", "name", server=False).stdout, "demo/web\n")
        ctl.env["DIBBA_SERVER"] = "http://127.0.0.1:1"
        p = ctl("get", "pods", server=False)
        self.assertEqual(p.returncode, 3, p.stderr)
        p = ctl("login", "-u", "alice", "--password-stdin", input="s3cret & more\n", server=False)
        self.assertEqual(p.returncode, 6, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)
        ctl.env["DIBBA_SERVER"] = "ftp://example"
        self.assertEqual(ctl("get", "pods", server=False).returncode, 2)

    def test_completion(self):
        p = self.ctl.ok("completion", "bash")
        with open(os.path.join(fixtures.SOURCE_DIR, "deploy", "bash-completion", "dibbactl")) as f:
            self.assertEqual(p.stdout, f.read())
        # the script completes commands and, through the server, pod names
        script = os.path.join(self.dir, "c.sh")
        with open(script, "w") as f:
            f.write(p.stdout + '\nCOMP_WORDS=(dibbactl --server %s logs ""); COMP_CWORD=4; _dibbactl\n'
                    'printf "%%s\\n" "${COMPREPLY[@]}"\n'
                    'COMP_WORDS=(dibbactl ge); COMP_CWORD=1; _dibbactl; printf "%%s\\n" "${COMPREPLY[@]}"\n'
                    % self.rec.url)
        env = dict(self.ctl.env, PATH=os.path.dirname(DIBBACTL) + ":" + os.environ["PATH"])
        out = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(out.stdout.split(), ["demo/web", "get"], out.stderr)


# A pod the real API accepts, as YAML and (below) the same pod written as JSON; NAME is replaced per copy.
LIVE_POD_YAML = """\
apiVersion: v1
kind: Pod
metadata:
  name: NAME
  namespace: ctl
  labels: {app: ctlweb, tier: "1"}
spec:
  containers:
    - name: main
      image: IMAGE
      command: ["sh", "-c", "echo started; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done"]
      env:
        - {name: GREETING, value: "hello: world"}
        - name: NUMBER
          value: "0042"
"""


def live_pod_doc(name):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ctl", "labels": {"app": "ctlweb", "tier": "1"}},
            "spec": {"containers": [{
                "name": "main", "image": fixtures.BUSYBOX_IMAGE,
                "command": ["sh", "-c", "echo started; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done"],
                "env": [{"name": "GREETING", "value": "hello: world"}, {"name": "NUMBER", "value": "0042"}]}]}}


class LiveRoutesTest(unittest.TestCase):
    """Pods (apply, get, describe, logs, exec, delete) and schedules (get, run) against the real dibba-api, a
    worker with the node + pods plugins (containerd, CNI bridge) and dibba-beat firing one job every second."""

    @classmethod
    def setUpClass(cls):
        c = cls
        c.redis = fixtures.RedisServer()
        c.ctrd = fixtures.Containerd()
        c.net = fixtures.CniNet()
        c.ns = c.ctrd.namespace()
        fixtures.import_images(c.ctrd, c.ns)
        c.secrets = fixtures.make_secrets()
        s = fixtures.session()
        c.jobs = s.path(s.unique("jobs"))
        os.makedirs(c.jobs)
        c.host = "ctlhost-" + s.tag
        with open(os.path.join(c.jobs, "ctl-tick.json"), "w") as f:
            json.dump({"name": "ctl-tick", "task": "noop", "schedule": {"every": "1s"}, "expires": 120,
                       "route": {"host": c.host}}, f)
        c.port = fixtures.free_port()
        base = {"worker.plugins": ["node", "pods"], "worker.heartbeat_seconds": 1, "worker.hostname": c.host,
                "containerd.namespace": c.ns, "log.level": "info", "beat.dir": c.jobs,
                "worker.plugin_dir": os.path.join(fixtures.BUILD_DIR, "plugins")}
        cfg = lambda **kw: fixtures.daemon_config(redis=c.redis, containerd=c.ctrd, cni=c.net,
                                                  secrets_paths=c.secrets, **dict(base, **kw))
        c.daemons = []
        c.worker = fixtures.Daemon("worker", cfg()).start(wait_log=r"consuming")
        c.daemons.append(c.worker)
        c.beat = fixtures.Daemon("beat", cfg()).start(wait_log=r"jobs loaded")
        c.daemons.append(c.beat)
        c.api = fixtures.Daemon("api", cfg(api_port=c.port))
        c.daemons.append(c.api)
        p = c.api.run_once("user", "add", "op", "--role", "operator", "--password-stdin", input=OP_PASSWORD + "\n")
        assert p.returncode == 0, p.stderr
        c.api.start(port=c.port)
        c.url = "http://127.0.0.1:%d" % c.port
        c.prefix = cfg()["redis"]["prefix"]
        c.r = redis.Redis(unix_socket_path=c.redis.socket, decode_responses=True)
        fixtures.wait_until(lambda: "pods" in (c.r.hget(c.prefix + "node:" + c.host, "plugins") or ""), 15,
                            "the worker's heartbeat with the pods plugin")
        c.ctl = Ctl(c.url)
        c.ctl.ok("login", "-u", "op", "--password-stdin", input=OP_PASSWORD + "\n")
        c.dir = tempfile.mkdtemp(dir=s.dir)

    @classmethod
    def tearDownClass(cls):
        c = cls
        try:
            for d in reversed(c.daemons):
                d.stop()
        finally:
            for d in c.daemons:
                d.close()
            c.ctrd.clear_namespace(c.ns)
            c.ctrd.close()
            c.net.close()
            c.redis.stop()

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def pod_json(self, name):
        p = self.ctl("-o", "json", "get", "pod", "ctl/" + name)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def wait_running(self, name):
        def running():
            pod = self.pod_json(name)
            st = (pod or {}).get("status", {})
            return st.get("phase") == "Running" and st.get("podIP") and pod
        return fixtures.wait_until(running, 120, "pod ctl/%s Running" % name, interval=0.3)

    def stored(self, name):
        """The spec as the API stored it (GET /v1/pods/ctl/NAME, without dibbactl in between)."""
        with open(self.ctl.credentials()) as f:
            tok = json.load(f)["token"]
        r = requests.get(self.url + "/v1/pods/ctl/" + name, headers={"Authorization": "Bearer " + tok}, timeout=30)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_pods(self):
        y = self.write("pod.yaml", LIVE_POD_YAML.replace("NAME", "fromyaml").replace("IMAGE", fixtures.BUSYBOX_IMAGE))
        j = self.write("pod.json", json.dumps(live_pod_doc("fromjson"), indent=2))
        self.assertEqual(self.ctl.ok("apply", "-f", y).stdout, "pod ctl/fromyaml created\n")
        self.assertEqual(self.ctl.ok("apply", "-f", j).stdout, "pod ctl/fromjson created\n")
        a, b = self.wait_running("fromyaml"), self.wait_running("fromjson")
        # the same pod: the stored specs are equal (the names aside), and equal to the JSON document's
        sa, sb = self.stored("fromyaml"), self.stored("fromjson")
        self.assertEqual(sa["spec"], sb["spec"])
        self.assertEqual(sa["metadata"]["labels"], sb["metadata"]["labels"])
        self.assertEqual(sa["spec"]["containers"][0]["env"], live_pod_doc("x")["spec"]["containers"][0]["env"])
        self.assertEqual(sa["spec"]["containers"][0]["command"], live_pod_doc("x")["spec"]["containers"][0]["command"])
        self.assertEqual(sa["spec"]["nodeName"], self.host)
        self.assertEqual(a["spec"], sa["spec"])
        # applying the same file again is idempotent; a changed spec under the same name is refused
        self.ctl.ok("apply", "-f", y)
        p = self.ctl("apply", "-f", self.write("changed.yaml", LIVE_POD_YAML.replace("NAME", "fromyaml").replace(
            "IMAGE", fixtures.BUSYBOX_IMAGE).replace("0042", "43")))
        self.assertEqual(p.returncode, 5, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)
        # get pods: table, names, JSON
        rows = [l.split() for l in self.ctl.ok("get", "pods", "-n", "ctl").stdout.splitlines()]
        self.assertEqual(rows[0], ["NAMESPACE", "NAME", "PHASE", "IP", "HOST", "RESTARTS"])
        got = {r[1]: r for r in rows[1:]}
        self.assertEqual(sorted(got), ["fromjson", "fromyaml"])
        self.assertEqual(got["fromyaml"][:5], ["ctl", "fromyaml", "Running", a["status"]["podIP"], self.host])
        self.assertEqual(got["fromjson"][3], b["status"]["podIP"])
        self.assertEqual(sorted(self.ctl.ok("get", "pods", "-l", "app=ctlweb", "-o", "name").stdout.split()),
                         ["ctl/fromjson", "ctl/fromyaml"])
        self.assertEqual(self.ctl.ok("get", "pods", "-l", "app=other", "-o", "name").stdout, "")
        items = json.loads(self.ctl.ok("get", "pods", "-o", "json").stdout)["items"]
        self.assertEqual(sorted(i["metadata"]["name"] for i in items), ["fromjson", "fromyaml"])
        self.assertTrue(all(i["status"]["phase"] == "Running" for i in items))
        d = self.ctl.ok("describe", "pod", "ctl/fromyaml").stdout
        self.assertIn("podIP: " + a["status"]["podIP"], d)
        self.assertIn("GREETING", d)
        # logs; logs -f keeps printing until killed
        fixtures.wait_until(lambda: "tick 1" in self.ctl.ok("logs", "ctl/fromyaml").stdout, 20, "the pod's log")
        self.assertIn("started\n", self.ctl.ok("logs", "-n", "ctl", "fromyaml", "-c", "main").stdout)
        self.assertEqual(len(self.ctl.ok("logs", "--tail", "1", "ctl/fromyaml").stdout.splitlines()), 1)
        f = subprocess.Popen([DIBBACTL, "--server", self.url, "logs", "-f", "--tail", "1", "ctl/fromyaml"],
                             env=self.ctl.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        self.assertIsNone(f.poll(), "logs -f ended on its own")
        f.terminate()
        out, err = f.communicate(timeout=10)
        self.assertGreaterEqual(out.count("tick "), 4, out + err)
        # exec: output and exit status
        p = self.ctl("exec", "ctl/fromyaml", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
        self.assertEqual((p.returncode, p.stdout, p.stderr), (3, "hi\n", "oops\n"))
        self.assertEqual(self.ctl.ok("exec", "-n", "ctl", "fromjson", "-c", "main", "--", "echo", "a  b", "-n").stdout,
                         "a  b -n\n")
        # the YAML's env reached the container (exec's own process does not inherit it: read the main process's)
        env = self.ctl.ok("exec", "ctl/fromyaml", "--", "sh", "-c",
                          "for f in /proc/[0-9]*/environ; do tr '\\000' '\\n' <$f; done").stdout.splitlines()
        self.assertIn("GREETING=hello: world", env)
        self.assertIn("NUMBER=0042", env)
        p = self.ctl("exec", "ctl/nosuch", "--", "true")
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)
        # delete: gone
        for name in ("fromyaml", "fromjson"):
            self.assertEqual(self.ctl.ok("delete", "pod", "ctl/" + name).stdout, "pod ctl/%s deleted\n" % name)
        fixtures.wait_until(lambda: self.ctl("get", "pod", "ctl/fromyaml").returncode == 4 and
                            self.ctl("get", "pod", "ctl/fromjson").returncode == 4, 60, "the pods to go")
        self.assertEqual(self.ctl.ok("get", "pods", "-n", "ctl", "-o", "name").stdout, "")
        p = self.ctl("logs", "ctl/fromyaml")
        self.assertEqual(p.returncode, 4, p.stderr)
        # the YAML pod again under the first name: the same spec as before
        self.ctl.ok("apply", "-f", j)
        self.wait_running("fromjson")
        self.assertEqual(self.stored("fromjson")["spec"], sa["spec"])
        self.ctl.ok("delete", "pod", "-n", "ctl", "fromjson")
        fixtures.wait_until(lambda: self.ctl("get", "pod", "ctl/fromjson").returncode == 4, 60, "the pod to go")

    def test_schedules(self):
        def listed():
            p = self.ctl.ok("get", "schedules")
            rows = [l.split() for l in p.stdout.splitlines()]
            row = [r for r in rows[1:] if r[0] == "ctl-tick"]
            return row and row[0][-1] != "<none>" and (rows, row[0])
        rows, row = fixtures.wait_until(listed, 20, "ctl-tick with a last run")
        self.assertEqual(rows[0], ["NAME", "SCHEDULE", "NEXT", "LAST", "LAST-TASK"])
        self.assertEqual(row[1:3], ["every", "1s"])
        self.assertRegex(row[-1], r"^[0-9a-f-]{36}$")
        self.assertNotIn("<none>", row, row)  # NEXT and LAST are times
        js = {s["name"]: s for s in json.loads(self.ctl.ok("get", "schedules", "-o", "json").stdout)["schedules"]}
        self.assertEqual(js["ctl-tick"]["schedule"], {"every": "1s"})
        self.assertIn("ctl-tick", self.ctl.ok("get", "schedules", "-o", "name").stdout.split())
        self.assertIn("name: ctl-tick", self.ctl.ok("describe", "schedule", "ctl-tick").stdout)
        self.assertEqual(self.ctl("describe", "schedule", "nosuch").returncode, 4)
        tid = self.ctl.ok("schedules", "run", "ctl-tick").stdout.strip()
        self.assertRegex(tid, r"^[0-9a-f-]{36}$")
        rec = fixtures.wait_until(lambda: self.r.hgetall(self.prefix + "task:" + tid), 10, "the task record")
        self.assertEqual(rec.get("name"), "noop", rec)
        p = self.ctl.ok("watch", tid, "--timeout", "30")
        self.assertIn(" %s SUCCESS" % tid, p.stdout.splitlines()[-1])
        self.assertEqual(json.loads(self.ctl.ok("-o", "json", "get", "task", tid).stdout)["status"], "SUCCESS")
        p = self.ctl("schedules", "run", "nosuch")
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertTrue(one_line(p.stderr), p.stderr)


class RawWebSocket:
    """One WebSocket connection served by hand, to see the frames dibbactl sends: behaviour is "good" (ping,
    two events, close 1000) or "huge" (a text frame announcing 2 MiB)."""

    def __init__(self, behaviour):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.request = b""
        self.frames = []  # (opcode, masked, payload) from the client
        self.error = None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def read_frame(self, c):
        def exact(n):
            b = b""
            while len(b) < n:
                chunk = c.recv(n - len(b))
                if not chunk:
                    raise EOFError
                b += chunk
            return b
        b0, b1 = exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", exact(8))[0]
        mask = exact(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytes(x ^ mask[i % 4] for i, x in enumerate(exact(n)))
        self.frames.append((b0 & 0x0F, bool(b1 & 0x80), data))
        return self.frames[-1]

    def serve(self):
        c, _ = self.sock.accept()
        try:
            c.settimeout(10)
            while b"\r\n\r\n" not in self.request:
                self.request += c.recv(4096)
            key = [l.split(b":", 1)[1].strip() for l in self.request.split(b"\r\n")
                   if l.lower().startswith(b"sec-websocket-key:")][0]
            acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
            if self.behaviour == "huge":
                c.sendall(bytes([0x81, 127]) + struct.pack("!Q", 2 << 20) + b"x" * 1000)
                self.read_frame(c)
                return
            c.sendall(bytes([0x89, 2]) + b"hi")
            self.read_frame(c)  # the pong
            for ev in (b'{"status":"STARTED","progress":{"current":1,"total":4,"message":"step"}}',
                       b'{"status":"SUCCESS","worker":"w1"}'):
                c.sendall(bytes([0x81, len(ev)]) + ev)
            c.sendall(bytes([0x88, 7]) + struct.pack("!H", 1000) + b"final")
            self.read_frame(c)  # the close echo
        except Exception as e:  # reported by the test
            self.error = repr(e)
        finally:
            c.close()
            self.sock.close()


class WebSocketClientTest(unittest.TestCase):
    def ctl_for(self, url):
        ctl = Ctl(url)
        os.makedirs(os.path.dirname(ctl.credentials()))
        with open(ctl.credentials(), "w") as f:
            json.dump({"server": url, "user": "alice", "token": "ws-token"}, f)
        return ctl

    def test_masks_pongs_and_closes(self):
        ws = RawWebSocket("good")
        p = self.ctl_for(ws.url)("watch", "t-1", "--timeout", "20")
        ws.thread.join(10)
        self.assertIsNone(ws.error)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"GET /v1/tasks/t-1/watch HTTP/1.1\r\n", ws.request)
        self.assertIn(b"\r\nAuthorization: Bearer ws-token\r\n", ws.request)
        self.assertEqual(ws.frames, [(0xA, True, b"hi"), (0x8, True, struct.pack("!H", 1000))])
        lines = p.stdout.splitlines()
        self.assertRegex(lines[0], r" t-1 STARTED 1/4 step$")
        self.assertRegex(lines[1], r" t-1 SUCCESS worker=w1$")

    def test_message_over_the_cap(self):
        ws = RawWebSocket("huge")
        p = self.ctl_for(ws.url)("watch", "t-2", "--timeout", "20")
        ws.thread.join(10)
        self.assertIsNone(ws.error, p.stderr)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertTrue(one_line(p.stderr) and "1009" in p.stderr, p.stderr)
        self.assertEqual(ws.frames, [(0x8, True, struct.pack("!H", 1009))])


if __name__ == "__main__":
    unittest.main(verbosity=2)
