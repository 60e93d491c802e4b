#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Failover benchmark: SIGKILL the Redis master (1 master, 1 replica, 3 sentinels on loopback) in the middle of
a stream of no-op tasks submitted by dibba-dispatch (--resubmit: unknown outcomes go again with the same id)
and consumed by one dibba-worker, both on a redis+sentinel:// URL. Reports lost / never-final / duplicated
tasks and handler re-runs, without and with redis.wait_replicas=1. See failover.py for the definitions.

    /usr/bin/python3 tools/bench/failover/run.py [--tasks 10000] [--rate 2000] [--runs 1] [--json FILE]

Needs root (the fixtures' session cleanup), redis-server, a built build/ tree.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
sys.path.insert(0, HERE)
import fixtures  # noqa: E402
import failover  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=2000, help="submissions per second")
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction of the stream before the SIGKILL")
    ap.add_argument("--runs", type=int, default=1, help="runs per mode")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    fixtures.cleanup_stale()
    results = []
    for wait in (0, 1):
        for _ in range(a.runs):
            results.append(failover.measure(a.tasks, a.rate, a.kill_at, wait_replicas=wait,
                                            log=lambda s: print(s, file=sys.stderr)))
    print("| WAIT | tasks | acked | lost | never final | duplicated | extra runs | resubmits | failover s |"
          " rejoin s | producer s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print("| %s | %d | %d | %d | %d | %d | %d | %s | %.2f | %.2f | %.2f |" % (
            "1 replica" if r["wait_replicas"] else "off", r["tasks"], r["acked"], r["lost"], r["never_final"],
            r["duplicated"], r["extra_runs"], r["resubmits"], r["failover_s"], r["rejoin_s"], r["producer_s"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
