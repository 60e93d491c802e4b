# SPDX-License-Identifier: Apache-2.0
"""Two dibba-beat replicas on one redis-server fire an every-second job for exactly 300 s: every slot becomes
exactly one task (counted from the task records by the deterministic id of job+slot), none is missing except at
the boundaries, none is duplicated, and a worker's noop handler completes them all."""
import time
import unittest

import fixtures
from test_beat import BeatStack, task_id

DURATION_S = 300  # the requirement


def setUpModule():
    fixtures.cleanup_stale()


class ExactlyOnceTest(unittest.TestCase):
    def test_two_replicas_300s(self):
        st = BeatStack(**{"log.level": "info"})
        try:
            st.job("every-second", schedule={"every": "1s"}, expires=600)
            st.worker()
            b1, b2 = st.beat(), st.beat()
            start_ms = int(time.time() * 1000)
            time.sleep(DURATION_S)
            end_ms = int(time.time() * 1000)
            b1.stop()
            b2.stop()
            first, last = (start_ms // 1000 + 1) * 1000, (end_ms // 1000) * 1000
            # Interior slots: both replicas ran throughout.
            expected = list(range(first + 1000, last - 1000 + 1, 1000))
            self.assertGreaterEqual(len(expected), DURATION_S - 3)
            got = st.slots_with_records("every-second", first - 5000, last + 5000, 1000)
            missing = sorted(set(expected) - set(got))
            self.assertEqual(missing, [], "slots without a task")
            # One record per slot and nothing else: every noop record has a slot's id ...
            records = st.task_records("noop")
            ids = {task_id(st.prefix, "every-second", s): s for s in got}
            self.assertEqual(sorted(records), sorted(ids))
            # ... and each slot was claimed and submitted once: one "job fired" line per slot across replicas.
            fired = {}
            for d in (b1, b2):
                for l in d.log_lines():
                    if l.get("msg", "").startswith("job fired") and l.get("job") == "every-second":
                        fired.setdefault(l["slot_ms"], []).append(l["replica"])
            self.assertEqual({s: len(v) for s, v in fired.items() if len(v) != 1}, {})
            self.assertEqual(sorted(fired), sorted(got))
            # The worker ran each of them once.
            st.r.connection_pool.reset()
            fixtures.wait_until(lambda: all(st.r.hget(st.prefix + "task:" + i, "state") == "SUCCESS" for i in ids),
                                60, "every task to succeed", interval=1)
            self.assertEqual({st.r.hget(st.prefix + "task:" + i, "completions") for i in ids}, {"1"})
            winners = {}
            for v in fired.values():
                winners[v[0]] = winners.get(v[0], 0) + 1
            print("slots %d, records %d, wins per replica %s" % (len(expected), len(records), winners))
        finally:
            st.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
