# SPDX-License-Identifier: Apache-2.0
"""Redis Sentinel failover under task traffic (CI size of tools/bench/failover/run.py): 1 master, 1 replica,
3 sentinels on loopback; dibba-worker and dibba-dispatch on a redis+sentinel:// URL; the master is SIGKILLed
after 40% of 2,000 submissions. Every acknowledged task must end in a final state on the promoted master, and
none may be completed twice. With redis.wait_replicas=1 no acknowledged task may be lost either; without it a
loss is allowed (asynchronous replication) and only reported."""
import os
import sys
import unittest

import fixtures

sys.path.insert(0, os.path.join(fixtures.SOURCE_DIR, "tools", "bench", "failover"))
import failover  # noqa: E402


def setUpModule():
    fixtures.cleanup_stale()


class FailoverTest(unittest.TestCase):
    def check(self, res):
        self.assertEqual(res["acked"], res["tasks"], res)  # the producer resubmitted every unknown outcome
        self.assertEqual(res["never_final"], 0, res)
        self.assertEqual(res["duplicated"], 0, res)
        self.assertEqual(res["succeeded"] + res["lost"], res["tasks"], res)
        self.assertLess(res["failover_s"], 15, res)

    def test_failover_without_wait(self):
        res = failover.measure(2000, 500, wait_replicas=0, drain_timeout=60,
                               log=lambda s: print("failover (WAIT off):", s, file=sys.stderr))
        self.check(res)

    def test_failover_with_wait(self):
        res = failover.measure(2000, 500, wait_replicas=1, drain_timeout=60,
                               log=lambda s: print("failover (WAIT 1):", s, file=sys.stderr))
        self.check(res)
        self.assertEqual(res["lost"], 0, res)


if __name__ == "__main__":
    unittest.main(verbosity=2)
