# SPDX-License-Identifier: Apache-2.0
"""Failover measurement: one Redis master, one replica and three sentinels on loopback; a dibba-worker and the
dibba-dispatch producer configured with a redis+sentinel:// URL; the master is killed with SIGKILL while a
stream of no-op tasks is being submitted. Used by tools/bench/failover/run.py (10,000 tasks) and by
tests/integration/test_failover.py (CI size).

Every task is accounted for at the end, from the promoted master:
  acked        the producer got "created" or "existed" (dibba-dispatch --resubmit sends a task whose outcome is
               unknown -- ECONNRESET, ETIMEDOUT, too few replicas -- again with the same id until it gets one)
  lost         acked, but the promoted master has no record of it
  never_final  a record exists but it did not reach a final state within the drain timeout
  duplicated   a record whose `completions` counter is above 1 (a second final write of another run)
  extra_runs   handler runs beyond one per task that finished (the worker's `started` counter): tasks run
               again because a result, or the STARTED transition, was lost with the old master
"""
import json
import os
import signal
import subprocess
import time

import redis

import fixtures

DISPATCH = os.path.join(fixtures.BUILD_DIR, "tools", "bench", "dispatch", "dibba-dispatch")
PLUGINS = os.path.join(fixtures.BUILD_DIR, "plugins")
MASTER_NAME = "mymaster"
FINAL = ("SUCCESS", "FAILURE", "REVOKED")
# Longest wait for Sentinel to turn the restarted old master into a replica (it usually takes 15-18 s).
REJOIN_TIMEOUT_S = 40


class Sentinels:
    """Master + replica (fixtures.RedisServer, no persistence) and three redis-sentinel processes, quorum 2,
    down-after 1000 ms, failover-timeout 3000 ms."""

    def __init__(self):
        self.s = fixtures.session()
        self.master = fixtures.RedisServer(name="fo-master")
        self.replica = fixtures.RedisServer(name="fo-replica")
        self.replica.cli("REPLICAOF", "127.0.0.1", self.master.port)
        fixtures.wait_until(lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"), 20,
                            "the replica to sync")
        self.procs, self.ports = [], []
        for i in range(3):
            d = self.s.path(self.s.unique("sentinel"))
            os.makedirs(d)
            port = fixtures.free_port()
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\nlogfile %s/sentinel.log\n"
                        "sentinel monitor %s 127.0.0.1 %d 2\n"
                        "sentinel down-after-milliseconds %s 1000\n"
                        "sentinel failover-timeout %s 3000\n"
                        "sentinel parallel-syncs %s 1\n" % (port, d, d, MASTER_NAME, self.master.port,
                                                           MASTER_NAME, MASTER_NAME, MASTER_NAME))
            p = subprocess.Popen(["redis-server", conf, "--sentinel"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            self.s.record_proc(p.pid)
            self.procs.append(p)
            self.ports.append(port)
        self.s.fixtures.append(self)
        for port in self.ports:
            fixtures.wait_port(port)
        # Every sentinel must know the replica and the two others (hello messages every 2 s) before a
        # failover can be agreed on.
        def known():
            for port in self.ports:
                c = self.sentinel(port)
                try:
                    if len(c.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)) < 1 or \
                            len(c.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)) < 2:
                        return False
                except redis.RedisError:
                    return False
                finally:
                    c.close()
            return True
        fixtures.wait_until(known, 30, "the sentinels to know each other and the replica", interval=0.2)

    @staticmethod
    def sentinel(port):
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    @property
    def url(self):
        return "redis+sentinel://%s/%s" % (",".join("127.0.0.1:%d" % p for p in self.ports), MASTER_NAME)

    def master_port(self):
        """The master's port as the sentinels' majority sees it, or None."""
        votes = {}
        for port in self.ports:
            c = self.sentinel(port)
            try:
                addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                if addr:
                    votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
            except redis.RedisError:
                pass
            finally:
                c.close()
        best = max(votes.items(), key=lambda kv: kv[1], default=(None, 0))
        return best[0] if best[1] >= 2 else None

    def sentinel_view(self, port):
        """What each sentinel says about the instance on port (flags, role) and whether it is in TILT mode."""
        view = []
        for sp in self.ports:
            c = self.sentinel(sp)
            try:
                tilt = c.info("sentinel").get("sentinel_tilt") == 1
                rows = [dict(zip(r[::2], r[1::2])) for r in c.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)]
                me = [r for r in rows if r.get("port") == str(port)]
                view.append({"tilt": tilt, "flags": me[0].get("flags") if me else None,
                             "role": me[0].get("role-reported") if me else None})
            except redis.RedisError as e:
                view.append({"error": str(e)})
            finally:
                c.close()
        return view

    def server(self, port):
        return self.master if port == self.master.port else self.replica

    def client(self):
        """A redis-py client on the current master (unix socket)."""
        srv = self.server(self.master_port())
        return redis.Redis(unix_socket_path=srv.socket, decode_responses=True)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def kill9(srv):
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()


def worker_config(sen, secrets_paths, host, wait_replicas, **extra):
    o = {"worker.plugin_dir": PLUGINS, "worker.heartbeat_seconds": 1, "log.level": "info",
         "worker.hostname": host, "worker.concurrency": 64, "redis.url": sen.url,
         "redis.wait_replicas": wait_replicas, "redis.wait_timeout_ms": 1000}
    o.update(extra)
    return fixtures.daemon_config(secrets_paths=secrets_paths, **o)


def measure(tasks, rate, kill_at=0.4, wait_replicas=0, drain_timeout=120, log=print):
    """One run on a fresh topology. Returns a dict of counts and times (see the module doc)."""
    sen = Sentinels()
    secrets_paths = fixtures.make_secrets(fixtures.session().path(fixtures.session().unique("sec")))
    host = "fo-host"
    cfg = worker_config(sen, secrets_paths, host, wait_replicas)
    prefix = cfg["redis"]["prefix"]
    w = fixtures.Daemon("worker", cfg)
    w.start(wait_log=r"consuming")
    fixtures.wait_until(lambda: sen.client().zscore(prefix + "nodes", host), 15, "the worker's heartbeat")
    out_path = fixtures.session().path(fixtures.session().unique("dispatch") + ".out")
    err_path = out_path + ".err"
    cmd = [DISPATCH, "--config", w.config_path, "submit", "--host", host, "--name", "noop", "--count", str(tasks),
           "--rate", str(rate), "--resubmit", "--wait-replicas", str(wait_replicas)]
    old_master = sen.master
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.monotonic()
        prod = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
        fixtures.session().record_proc(prod.pid)
        try:
            time.sleep(tasks / rate * kill_at)
            submitted_before = _lines(out_path)
            kill9(old_master)
            t_kill = time.monotonic()
            fixtures.wait_until(lambda: sen.master_port() not in (None, old_master.port), 30,
                                "the sentinels to promote the replica", interval=0.05)
            t_switch = time.monotonic()
            # The operator brings the dead node back; the sentinels turn it into a replica of the new master
            # (with WAIT, submits wait for it).
            old_master.start()
            t_restart = time.monotonic()
            t_rejoin = t_done = None
            forced = None
            deadline = time.monotonic() + max(120, tasks / rate * 4)
            while t_rejoin is None or t_done is None:
                if t_done is None and prod.poll() is not None:
                    t_done = time.monotonic()
                if t_rejoin is None and "master_link_status:up" in old_master.cli("INFO", "replication"):
                    t_rejoin = time.monotonic()
                if t_rejoin is None and forced is None and time.monotonic() - t_restart > REJOIN_TIMEOUT_S:
                    # Sentinel converts a returning master only after it has looked sane for 8 s, on its 10 s
                    # INFO period, and not while in TILT mode (a timer late by 2 s on a loaded host suspends
                    # every action for 30 s). That is Sentinel's timing, not something under test: do what the
                    # operator would do and point the node at the new master, and report that it was forced.
                    forced = sen.sentinel_view(old_master.port)
                    old_master.cli("REPLICAOF", "127.0.0.1", sen.master_port() or sen.replica.port)
                if time.monotonic() > deadline:
                    raise TimeoutError("producer done: %s, old master rejoined: %s, sentinels: %s" %
                                       (t_done, t_rejoin, forced or sen.sentinel_view(old_master.port)))
                time.sleep(0.05)
        finally:
            if prod.poll() is None:
                prod.kill()
                prod.wait()
    outcome = {}
    with open(out_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                outcome[parts[0]] = parts[1]
    with open(err_path) as f:
        err_text = f.read()
    summary = {}
    for line in err_text.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
    acked = [i for i, s in outcome.items() if s in ("created", "existed")]
    r = sen.client()

    def states():
        p = r.pipeline(transaction=False)
        for i in acked:
            p.hmget(prefix + "task:" + i, "state", "completions")
        return p.execute()
    deadline = time.monotonic() + drain_timeout
    while True:
        st = states()
        pending = sum(1 for s, _ in st if s is not None and s not in FINAL)
        if pending == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lost = [i for i, (s, _) in zip(acked, st) if s is None]
    never_final = [i for i, (s, _) in zip(acked, st) if s is not None and s not in FINAL]
    dup = [i for i, (_, c) in zip(acked, st) if c is not None and int(c) > 1]
    succeeded = sum(1 for s, _ in st if s == "SUCCESS")
    time.sleep(1.5)  # one more heartbeat with the final counters
    counters = json.loads(r.hget(prefix + "node:" + host, "counters") or "{}")
    res = {
        "wait_replicas": wait_replicas, "tasks": tasks, "rate": rate,
        "submitted_before_kill": submitted_before,
        "acked": len(acked), "not_acked": tasks - len(acked),
        "resubmits": summary.get("resubmits"), "existed_on_resubmit": summary.get("existed"),
        "lost": len(lost), "never_final": len(never_final), "duplicated": len(dup),
        "succeeded": succeeded, "runs": counters.get("started"),
        "extra_runs": (counters.get("started") or 0) - succeeded,
        "failover_s": round(t_switch - t_kill, 2), "rejoin_s": round(t_rejoin - t_kill, 2),
        "rejoin_forced": forced,
        "producer_s": round(t_done - t0, 2),
        "lost_ids": lost[:10], "never_final_ids": never_final[:10], "duplicated_ids": dup[:10],
        "producer_errors": [l for l in err_text.splitlines() if not l.startswith("{")][:5],
    }
    w.stop(expect=None)
    r.close()
    sen.close()
    old_master.stop()
    sen.replica.stop()
    log(json.dumps(res))
    return res


def _lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
