# SPDX-License-Identifier: Apache-2.0
"""The task transport end to end with real redis-server and dibba-worker processes: routing, crashes,
graceful stops, forged/expired/replayed entries, revokes, countdowns."""
import os
import signal
import time
import unittest

import fixtures
import taskkit


def setUpModule():
    fixtures.cleanup_stale()


class TransportTest(unittest.TestCase):
    def setUp(self):
        self.redis = fixtures.RedisServer()
        self.st = taskkit.Stack(self.redis, **{"task.visibility_timeout_ms": 3000})

    def tearDown(self):
        self.st.close()
        self.redis.stop()

    def test_routing_two_hosts(self):
        self.st.worker("host-a")
        self.st.worker("host-b")
        a = self.st.submit("noop", host="host-a", count=20)
        b = self.st.submit("noop", host="host-b", count=20)
        self.st.wait_states(a + b)
        for i in a:
            self.assertEqual(self.st.record(i)["worker"], "host-a")
            self.assertIn('"worker":"host-a"', self.st.record(i)["result"])
        for i in b:
            self.assertEqual(self.st.record(i)["worker"], "host-b")

    def test_kill9_with_100_in_flight(self):
        w = self.st.worker("host-k", **{"worker.concurrency": 128})
        ids = self.st.submit("sleep", host="host-k", args={"ms": 2000}, count=100)
        fixtures.wait_until(lambda: self.st.counters("host-k").get("in_flight", 0) >= 100, 20, "100 in flight")
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait()
        self.st.worker("host-k", **{"worker.concurrency": 128})
        self.st.wait_states(ids, timeout=60)
        for i in ids:
            rec = self.st.record(i)
            self.assertEqual(rec["state"], "SUCCESS")
            self.assertEqual(rec["completions"], "1", rec)

    def test_sigterm_hands_back(self):
        w = self.st.worker("host-t", **{"worker.concurrency": 8, "worker.shutdown_grace_ms": 1000})
        quick = self.st.submit("sleep", host="host-t", args={"ms": 300}, count=4)
        slow = self.st.submit("sleep", host="host-t", args={"ms": 8000}, count=4)
        fixtures.wait_until(lambda: all(self.st.record(i).get("state") == "STARTED" for i in slow), 20, "slow started")
        self.st.wait_states(quick, timeout=10)
        w.stop(signal.SIGTERM)
        for i in slow:
            self.assertNotIn(self.st.record(i)["state"], ("SUCCESS", "FAILURE", "REVOKED"))
        self.st.worker("host-t2")  # another worker of another route must not take them
        w2 = self.st.worker("host-t", **{"worker.concurrency": 8})
        self.st.wait_states(slow, timeout=30)
        for i in quick + slow:
            self.assertEqual(self.st.record(i)["completions"], "1")
        self.assertIsNotNone(w2)

    def test_forged_expired_replay_rejected(self):
        raw = self.st.raw
        # No worker yet: capture the sealed entry of a task before it runs, to replay it after it finished.
        fin = self.st.submit("noop", host="host-f")
        stream = (self.st.prefix + "q:" + self.st.record(fin[0])["route"]).encode()
        env = raw.xrange(stream, count=10)[0][1]
        exp = self.st.submit("noop", host="host-f", expires=1)  # expired before any worker reads it
        time.sleep(0.05)
        self.st.worker("host-f")
        self.st.wait_states(fin)
        raw.xadd(stream, env)                                   # replay of a finished task
        raw.xadd(stream, {b"e": b"garbage-envelope", b"m": b"x" * 32})  # forged
        fixtures.wait_until(lambda: (self.st.counters("host-f").get("rejected_forged", 0) >= 1 and
                                     self.st.counters("host-f").get("rejected_expired", 0) >= 1 and
                                     self.st.counters("host-f").get("rejected_replay", 0) >= 1), 15,
                            "forged, expired and replay counted")
        self.assertEqual(self.st.record(exp[0])["state"], "FAILURE")
        self.assertIn("EEXPIRED", self.st.record(exp[0])["error"])
        self.assertNotIn("started", self.st.record(exp[0]))
        self.assertEqual(self.st.record(fin[0])["completions"], "1")
        fixtures.wait_until(lambda: raw.xlen(stream) == 0, 5, "rejected entries acked and deleted")
        msgs = [r.get("msg", "") for r in self.st.workers[0].log_lines()]
        self.assertTrue(any("forged" in m for m in msgs))
        self.assertTrue(any("expired" in m for m in msgs))
        self.assertTrue(any("already final" in m for m in msgs))

    def test_revoked_while_offline_never_runs(self):
        w = self.st.worker("host-r")
        w.stop()
        self.st.start_api()
        ids = self.st.submit("sleep", host="host-r", args={"ms": 10})
        import requests
        resp = requests.post(self.st.url + "/v1/tasks/%s/revoke" % ids[0], headers=self.st.h, timeout=10)
        self.assertEqual(resp.status_code, 202, resp.text)
        self.st.worker("host-r")
        time.sleep(2)
        rec = self.st.record(ids[0])
        self.assertEqual(rec["state"], "REVOKED")
        self.assertNotIn("started", rec)
        self.assertNotIn("completions", rec)

    def test_countdown_longer_than_visibility(self):
        self.st.worker("host-c")
        self.st.worker("host-c2")
        ids = self.st.submit("noop", host="host-c", countdown=5000)
        time.sleep(2)
        self.assertEqual(self.st.record(ids[0])["state"], "PENDING")
        self.st.wait_states(ids, timeout=20)
        time.sleep(4)  # past another visibility timeout
        rec = self.st.record(ids[0])
        self.assertEqual(rec["completions"], "1")
        self.assertGreaterEqual(int(rec["started"]) - int(rec["created"]), 4900)


if __name__ == "__main__":
    unittest.main(verbosity=2)
