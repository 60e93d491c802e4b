# SPDX-License-Identifier: Apache-2.0
"""dibba-beat against a real redis-server: catch-up after downtime (one coalesced run within starting_deadline,
none beyond it), Redis outages (retried, never duplicated), invalid job files and reloads, the built-in
housekeeping jobs, and the API's /v1/schedules routes with a real token."""
import json
import os
import signal
import time
import unittest
import uuid

import redis
import requests

import fixtures

# dibba-beat's task id namespace (daemons/beat/fire.c): task id = uuid5(NS, "<prefix>beat:<job>:<slot_ms>").
BEAT_NS = uuid.UUID(bytes=bytes([0x5b, 0x0e, 0x6d, 0x3a, 0x2c, 0x41, 0x4f, 0x8e,
                                 0x9a, 0x57, 0x1d, 0x2f, 0x3c, 0x4b, 0x5a, 0x69]))
PLUGINS = os.path.join(fixtures.BUILD_DIR, "plugins")


def setUpModule():
    fixtures.cleanup_stale()


def task_id(prefix, job, slot_ms):
    return str(uuid.uuid5(BEAT_NS, "%sbeat:%s:%d" % (prefix, job, slot_ms)))


def wait_phase(period, lo, hi):
    """Sleep until time() % period is in [lo, hi)."""
    while True:
        ph = time.time() % period
        if lo <= ph < hi:
            return
        time.sleep(min(0.05, (lo - ph) % period or 0.05))


class BeatStack:
    """A private Redis, a job directory, and beat replicas (plus, on demand, a worker and an API)."""

    def __init__(self, redis_server=None, **overrides):
        self.redis = redis_server or fixtures.RedisServer()
        s = fixtures.session()
        self.dir = s.path(s.unique("jobs"))
        os.makedirs(self.dir)
        self.secrets = fixtures.make_secrets(s.path(s.unique("sec")))
        base = {"beat.dir": self.dir, "log.level": "debug", "worker.plugin_dir": PLUGINS,
                "worker.heartbeat_seconds": 1}
        base.update(overrides)
        self.base = base
        self.cfg = fixtures.daemon_config(redis=self.redis, secrets_paths=self.secrets, **base)
        self.prefix = self.cfg["redis"]["prefix"]
        self.r = redis.Redis(unix_socket_path=self.redis.socket, decode_responses=True)
        self.daemons = []

    def job(self, name, **kw):
        job = {"name": name, "task": "noop", "route": {"role": "control"}}
        job.update(kw)
        self.write(name + ".json", json.dumps(job))
        return job

    def write(self, fname, text):
        tmp = os.path.join(self.dir, "." + fname + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(self.dir, fname))

    def beat(self, **overrides):
        cfg = fixtures.daemon_config(redis=self.redis, secrets_paths=self.secrets, **dict(self.base, **overrides))
        d = fixtures.Daemon("beat", cfg)
        d.start(wait_log=r"jobs loaded")
        fixtures.wait_until(lambda: any(l.get("msg") == "redis connected" for l in d.log_lines()), 20,
                            "beat to connect")
        self.daemons.append(d)
        return d

    def worker(self, host="beat-worker", roles="control"):
        cfg = fixtures.daemon_config(redis=self.redis, secrets_paths=self.secrets,
                                     **dict(self.base, **{"worker.hostname": host, "worker.roles": roles}))
        w = fixtures.Daemon("worker", cfg)
        w.start(wait_log=r"consuming")
        self.daemons.append(w)
        return w

    def api(self):
        port = fixtures.free_port()
        cfg = fixtures.daemon_config(redis=self.redis, secrets_paths=self.secrets, api_port=port, **self.base)
        a = fixtures.Daemon("api", cfg)
        for user, role in (("op", "operator"), ("view", "viewer")):
            p = a.run_once("user", "add", user, "--role", role, "--password-stdin",
                           input="correct horse battery staple\n")
            assert p.returncode == 0, p.stderr
        a.start(port=port)
        self.daemons.append(a)
        self.url = "http://127.0.0.1:%d" % port
        return a

    def token(self, user):
        r = requests.post(self.url + "/token", timeout=30,
                          data={"username": user, "password": "correct horse battery staple"})
        assert r.status_code == 200, r.text
        return {"Authorization": "Bearer " + r.json()["access_token"]}

    def record(self, tid):
        return self.r.hgetall(self.prefix + "task:" + tid)

    def slots_with_records(self, job, lo_ms, hi_ms, step_ms):
        """The slots in [lo_ms, hi_ms] whose deterministic task record exists."""
        return [s for s in range(lo_ms, hi_ms + 1, step_ms) if self.r.exists(self.prefix + "task:" +
                                                                             task_id(self.prefix, job, s))]

    def task_records(self, name):
        out = []
        for k in self.r.scan_iter(self.prefix + "task:*", count=1000):
            if k.count(":") == self.prefix.count(":") + 1 and self.r.hget(k, "name") == name:
                out.append(k[len(self.prefix) + 5:])
        return out

    def close(self):
        for d in self.daemons:
            d.close()
        self.redis.stop()


class BeatTest(unittest.TestCase):
    def setUp(self):
        self.st = BeatStack()

    def tearDown(self):
        self.st.close()

    def test_catchup_after_downtime(self):
        st = self.st
        # Both every 10 s; one may catch up a slot up to 60 s old, the other only up to 5 s old.
        st.job("late-ok", schedule={"every": "10s"}, starting_deadline=60, expires=600)
        st.job("late-no", schedule={"every": "10s"}, starting_deadline=5, expires=600)
        b = st.beat()
        fixtures.wait_until(lambda: st.r.hget(st.prefix + "beat:job:late-ok", "last_slot_ms") and
                            st.r.hget(st.prefix + "beat:job:late-no", "last_slot_ms"), 25, "first firings")
        wait_phase(10, 1.0, 2.0)
        b.stop()
        stopped = time.time()
        last_before = int(st.r.hget(st.prefix + "beat:job:late-ok", "last_slot_ms"))
        # Down for at least 35 s, restarted 6.5..8.5 s after a slot: that slot is within 60 s and beyond 5 s.
        time.sleep(35)
        wait_phase(10, 6.5, 8.5)
        restart = time.time()
        b2 = st.beat()
        missed = [s for s in range(last_before + 10000, int(restart * 1000) + 1, 10000)]
        self.assertGreaterEqual(len(missed), 3, (stopped, restart, last_before))
        latest = missed[-1]
        fixtures.wait_until(lambda: any("catching up job late-ok" in l.get("msg", "") for l in b2.log_lines()), 10,
                            "the catch-up of late-ok")
        fixtures.wait_until(lambda: st.r.exists(st.prefix + "task:" + task_id(st.prefix, "late-ok", latest)), 10,
                            "the catch-up task")
        # Exactly one run for the downtime: the latest missed slot, coalesced; nothing for the 5 s job.
        self.assertEqual(st.slots_with_records("late-ok", missed[0], missed[-1], 10000), [latest])
        self.assertEqual(st.slots_with_records("late-no", missed[0], missed[-1], 10000), [])
        self.assertFalse(any("catching up job late-no" in l.get("msg", "") for l in b2.log_lines()))
        # Then both go on with their regular slots.
        nxt = latest + 10000
        fixtures.wait_until(lambda: len(st.slots_with_records("late-no", nxt, nxt, 10000)) == 1 and
                            len(st.slots_with_records("late-ok", nxt, nxt, 10000)) == 1, 15, "the next slot")
        self.assertEqual(len(st.task_records("noop")), len(st.slots_with_records("late-ok", last_before - 60000,
                                                                                 nxt, 10000)) +
                         len(st.slots_with_records("late-no", last_before - 60000, nxt, 10000)))

    def test_redis_outage_retried_never_duplicated(self):
        st = self.st
        st.job("tick", schedule={"every": "1s"}, starting_deadline=15, expires=600)
        b1, b2 = st.beat(), st.beat()
        fixtures.wait_until(lambda: st.r.hget(st.prefix + "beat:job:tick", "last_slot_ms"), 10, "first firing")
        first = int(st.r.hget(st.prefix + "beat:job:tick", "last_slot_ms"))
        # SHUTDOWN SAVE, then start again 3 s later on the same socket: the data set survives.
        st.redis.cli("SHUTDOWN", "SAVE", check=False)
        st.redis.proc.wait(timeout=20)
        down = int(time.time() * 1000)
        time.sleep(3)
        st.redis.start()
        up = int(time.time() * 1000)
        fixtures.wait_until(lambda: int(st.r.hget(st.prefix + "beat:job:tick", "last_slot_ms") or 0) > up + 2000, 20,
                            "firings after the outage")
        last = int(st.r.hget(st.prefix + "beat:job:tick", "last_slot_ms"))
        got = st.slots_with_records("tick", first, last, 1000)
        # Every slot, including those during the outage, fired (retried within 15 s) ...
        self.assertEqual(got, list(range(first, last + 1, 1000)), (down, up))
        # ... and once: one record and one stream entry per slot (nothing consumes the stream here).
        records = st.task_records("noop")
        self.assertEqual(set(records), {task_id(st.prefix, "tick", x) for x in
                                        st.slots_with_records("tick", first - 5000, last + 5000, 1000)})
        streams = list(st.r.scan_iter(st.prefix + "q:*"))
        self.assertEqual(len(streams), 1)
        self.assertEqual(st.r.xlen(streams[0]), len(records))
        retried = sum(1 for d in (b1, b2) for l in d.log_lines() if l.get("msg", "").startswith(
            "job firing will be retried"))
        self.assertGreater(retried, 0)

    def test_claim_never_without_its_task(self):
        # A slot whose claim could land but whose submit could not, and whose claimer then stops, still fires once.
        # Regression: claim (SET NX) and submit were two commands, and a replica that saw another's claim dropped its
        # firing; a claim whose submit failed (Redis shut down between the two; here the task keys are refused by
        # ACL) left the slot to the claimer alone, and when the claimer went away the slot never fired.
        # Deterministic: the replica that holds the claim of the refused slot, if any, is the one stopped.
        st = self.st
        st.r.execute_command("ACL", "SETUSER", "beat", "on", ">beat-pw", "~*", "&*", "+@all")
        url = "redis://beat:beat-pw@127.0.0.1:%d/0" % st.redis.port
        st.job("tick", schedule={"every": "1s"}, starting_deadline=15, expires=600)
        b1 = st.beat(**{"redis.url": url, "beat.replica_id": "r1"})
        b2 = st.beat(**{"redis.url": url, "beat.replica_id": "r2"})
        fixtures.wait_until(lambda: st.r.hget(st.prefix + "beat:job:tick", "last_slot_ms"), 10, "first firing")
        first = int(st.r.hget(st.prefix + "beat:job:tick", "last_slot_ms"))
        # Refuse the task keys (records, streams) for exactly one slot, S; the beat:* keys stay writable.
        wait_phase(1, 0.4, 0.6)
        slot = (int(time.time()) + 1) * 1000
        st.r.execute_command("ACL", "SETUSER", "beat", "resetkeys", "~%sbeat:*" % st.prefix)
        fixtures.wait_until(lambda: time.time() * 1000 > slot + 500, 5, "slot S to be tried")
        holder = st.r.get(st.prefix + "beat:fired:tick:%d" % slot)
        self.assertFalse(st.r.exists(st.prefix + "task:" + task_id(st.prefix, "tick", slot)))
        # The claimer (else r1) goes away before the task keys are writable again.
        gone, stays = (b2, b1) if holder == "r2" else (b1, b2)
        self.assertEqual(gone.stop(), 0)
        st.r.execute_command("ACL", "SETUSER", "beat", "~*")
        fixtures.wait_until(lambda: int(st.r.hget(st.prefix + "beat:job:tick", "last_slot_ms") or 0) >= slot + 3000,
                            15, "firings after S")
        last = int(st.r.hget(st.prefix + "beat:job:tick", "last_slot_ms"))
        self.assertEqual(st.slots_with_records("tick", first, last, 1000), list(range(first, last + 1, 1000)),
                         (slot, holder))
        records = st.task_records("noop")
        streams = list(st.r.scan_iter(st.prefix + "q:*"))
        self.assertEqual(len(streams), 1)
        self.assertEqual(st.r.xlen(streams[0]), len(records))
        self.assertTrue(any(l.get("slot_ms") == slot and l.get("msg", "").startswith("job fired")
                            for l in stays.log_lines()))

    def test_invalid_file_and_reloads(self):
        st = self.st
        st.job("steady", schedule={"cron": "0 0 1 1 *"}, timezone="Europe/Berlin")
        st.job("ticker", schedule={"every": "1s"}, expires=60)
        st.write("broken.json", json.dumps({"name": "broken", "task": "noop", "route": {"role": "control"},
                                            "schedule": {"cron": "61 * * * *"}}))
        b = st.beat()
        err = fixtures.wait_until(lambda: next((l for l in b.log_lines() if l.get("msg", "").startswith(
            "job file rejected")), None), 10, "the rejected file")
        self.assertEqual(err["file"], "broken.json")
        self.assertEqual(err["field"], "schedule.cron")
        self.assertIn("minute out of range", err["error"])
        jobs_key = st.prefix + "beat:jobs"
        fixtures.wait_until(lambda: st.r.hexists(jobs_key, "steady"), 10, "the published job set")
        self.assertFalse(st.r.hexists(jobs_key, "broken"))
        steady_next = json.loads(st.r.hget(jobs_key, "steady"))["next_fire_ms"]
        fixtures.wait_until(lambda: int(st.r.hget(st.prefix + "beat:job:ticker", "last_slot_ms") or 0) >
                            time.time() * 1000 - 3000, 10, "ticker to fire")

        def reloads():
            return [l for l in b.log_lines() if l.get("msg") == "jobs reloaded"]

        # SIGHUP: the same files, every job kept.
        b.proc.send_signal(signal.SIGHUP)
        fixtures.wait_until(lambda: len(reloads()) >= 1, 10, "the SIGHUP reload")
        r = reloads()[-1]
        self.assertEqual((r["kept"], r["added"], r["changed"], r["removed"]), (5, 0, 0, 0))
        # A directory change: the broken file is fixed and a new job is added.
        n = len(reloads())
        st.write("broken.json", json.dumps({"name": "broken", "task": "noop", "route": {"role": "control"},
                                            "schedule": {"cron": "1 * * * *"}}))
        fixtures.wait_until(lambda: len(reloads()) > n and reloads()[-1]["added"] == 1, 10, "the directory reload")
        fixtures.wait_until(lambda: st.r.hexists(jobs_key, "broken"), 10, "the new job in the job set")
        self.assertEqual(json.loads(st.r.hget(jobs_key, "steady"))["next_fire_ms"], steady_next)
        # The other jobs kept firing throughout.
        t = int(time.time()) * 1000
        fixtures.wait_until(lambda: int(st.r.hget(st.prefix + "beat:job:ticker", "last_slot_ms") or 0) > t, 10,
                            "ticker after the reloads")

    def test_builtin_housekeeping(self):
        st = self.st
        now = int(time.time() * 1000)
        nodes, p = st.prefix + "nodes", st.prefix
        st.r.zadd(nodes, {"alive": now + 600000, "silent": now - 60000, "gone": now - 3 * 86400 * 1000})
        old_final, new_final, pending_dead = (str(uuid.uuid4()) for _ in range(3))
        st.r.hset(p + "task:" + old_final, mapping={"state": "SUCCESS", "finished": now - 2 * 86400 * 1000})
        st.r.hset(p + "task:" + new_final, mapping={"state": "FAILURE", "finished": now - 1000})
        st.r.hset(p + "task:" + pending_dead, mapping={"state": "PENDING", "expires": now - 2 * 86400 * 1000})
        revoked_gone = str(uuid.uuid4())
        st.r.sadd(p + "revoked", revoked_gone, new_final)
        st.beat(**{"beat.builtin.node_offline.every": "1s", "beat.builtin.task_purge.every": "1s",
                   "beat.builtin.node_offline.remove_after_s": 86400, "task.record_ttl": 86400})
        fixtures.wait_until(lambda: st.r.hexists(p + "nodes:offline", "silent") and
                            st.r.zscore(nodes, "gone") is None, 10, "node-offline to run")
        self.assertEqual(json.loads(st.r.hget(p + "nodes:offline", "silent"))["last_heartbeat_ms"], now - 60000)
        self.assertFalse(st.r.hexists(p + "nodes:offline", "alive"))
        self.assertIsNotNone(st.r.zscore(nodes, "alive"))
        fixtures.wait_until(lambda: not st.r.exists(p + "task:" + old_final), 10, "task-purge to run")
        self.assertFalse(st.r.exists(p + "task:" + pending_dead))
        ttl = st.r.ttl(p + "task:" + new_final)
        self.assertTrue(86000 < ttl <= 86400, ttl)
        self.assertEqual(st.r.smembers(p + "revoked"), {new_final})
        # A silent host that heartbeats again leaves the offline list.
        st.r.zadd(nodes, {"silent": int(time.time() * 1000) + 600000})
        fixtures.wait_until(lambda: not st.r.hexists(p + "nodes:offline", "silent"), 10, "silent back online")
        # Built-in jobs are listed like the others and can be disabled.
        self.assertTrue(json.loads(st.r.hget(p + "beat:jobs", "beat.task-purge"))["builtin"])

    def test_builtin_disabled(self):
        st = self.st
        st.beat(**{"beat.builtin.node_offline.enabled": False, "beat.builtin.task_purge.enabled": False,
                   "beat.builtin.pod_reconcile.enabled": False})
        time.sleep(1)
        self.assertEqual(st.r.hkeys(st.prefix + "beat:jobs"), [])

    def test_api_schedules(self):
        st = self.st
        st.job("every-2s", schedule={"every": "2s"}, args={"k": 1}, expires=120)
        st.job("nightly", schedule={"cron": "0 2 * * *"}, timezone="Europe/Berlin", route={"host": "db-1"},
               task="pod.exec", enabled=False)
        st.worker()
        st.beat()
        st.api()
        op, viewer = st.token("op"), st.token("view")
        self.assertEqual(requests.get(st.url + "/v1/schedules", timeout=10).status_code, 401)

        def listed():
            r = requests.get(st.url + "/v1/schedules", headers=viewer, timeout=10)
            self.assertEqual(r.status_code, 200, r.text)
            j = {s["name"]: s for s in r.json()["schedules"]}
            return j if j.get("every-2s", {}).get("last_task_id") else None
        j = fixtures.wait_until(listed, 15, "every-2s with a last run")
        self.assertEqual(sorted(j), ["beat.node-offline", "beat.pod-reconcile", "beat.task-purge", "every-2s",
                                     "nightly"])
        e = j["every-2s"]
        self.assertEqual(e["schedule"], {"every": "2s"})
        self.assertEqual(e["timezone"], "UTC")
        self.assertTrue(e["enabled"])
        self.assertEqual(e["last_task_id"], task_id(st.prefix, "every-2s", e["last_slot_ms"]))
        self.assertEqual(e["last_slot_ms"] % 2000, 0)
        self.assertGreater(e["next_fire_ms"], e["last_slot_ms"])
        self.assertGreaterEqual(e["last_fire_ms"], e["last_slot_ms"])
        n = j["nightly"]
        self.assertEqual((n["schedule"], n["timezone"], n["enabled"], n["next_fire_ms"], n["last_task_id"]),
                         ({"cron": "0 2 * * *"}, "Europe/Berlin", False, None, None))
        self.assertEqual(n["route"], {"host": "db-1"})
        # Run now: operator only; the task runs on the worker.
        r = requests.post(st.url + "/v1/schedules/every-2s/run", headers=viewer, timeout=10)
        self.assertEqual(r.status_code, 403, r.text)
        r = requests.post(st.url + "/v1/schedules/every-2s/run", headers=op, timeout=10)
        self.assertEqual(r.status_code, 202, r.text)
        tid = r.json()["task_id"]
        fixtures.wait_until(lambda: st.record(tid).get("state") == "SUCCESS", 15, "the run-now task")
        self.assertEqual(st.record(tid)["name"], "noop")
        r = requests.post(st.url + "/v1/schedules/no-such-job/run", headers=op, timeout=10)
        self.assertEqual((r.status_code, r.json()), (404, {"detail": "unknown schedule"}))
        r = requests.post(st.url + "/v1/schedules/beat.task-purge/run", headers=op, timeout=10)
        self.assertEqual(r.status_code, 409, r.text)
        self.assertIn("detail", r.json())
        # The response hook audits the run.
        audit = st.r.xrange(st.prefix + "audit")
        self.assertTrue(any("/v1/schedules/every-2s/run" in json.dumps(e) for e in audit), audit[-3:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
