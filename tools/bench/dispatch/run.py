#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Dispatch benchmark: no-op tasks end to end (submit -> result visible to the producer), Dibba beside Celery 5
on one private redis-server. Dibba: dibba-dispatch (lib/task's producer on libuv, results via pub/sub) against
one dibba-worker. Celery: prefork worker, concurrency = cores, results in Redis, round trip with result.get().

    /usr/bin/python3 tools/bench/dispatch/run.py [--tasks N] [--latency-tasks N]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
import fixtures  # noqa: E402


def dibba(redis, tasks, lat_tasks):
    import taskkit
    st = taskkit.Stack(redis, **{"log.level": "info", "worker.concurrency": 64})
    try:
        w = st.worker("bench-host")
        cmd = [taskkit.DISPATCH, "--config", w.config_path, "bench", "--host", "bench-host"]
        subprocess.run(cmd + ["--count", "2000", "--window", "64"], check=True, capture_output=True)  # warm-up
        thr = json.loads(subprocess.run(cmd + ["--count", str(tasks), "--window", "128"], check=True,
                                        capture_output=True, text=True).stdout)
        lat = json.loads(subprocess.run(cmd + ["--count", str(lat_tasks), "--window", "1"], check=True,
                                        capture_output=True, text=True).stdout)
        return {"throughput": thr["throughput"], "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
                "p50_ms_loaded": thr["p50_ms"], "p99_ms_loaded": thr["p99_ms"]}
    finally:
        st.close()


def celery(redis, tasks, lat_tasks):
    env = dict(os.environ, BENCH_CELERY_URL="redis://127.0.0.1:%d/1" % redis.port, PYTHONPATH=HERE)
    os.environ["BENCH_CELERY_URL"] = env["BENCH_CELERY_URL"]
    sys.path.insert(0, HERE)
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_peer", "worker", "-P", "prefork",
                               "-c", str(os.cpu_count()), "--loglevel", "WARNING", "--without-gossip",
                               "--without-mingle", "--without-heartbeat"], env=env, cwd=HERE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    fixtures.session().record_proc(worker.pid)
    try:
        import celery_peer
        celery_peer.noop.delay().get(timeout=60)  # up
        for _ in range(200):
            celery_peer.noop.delay().get(timeout=30)
        t0 = time.perf_counter()
        rs = [celery_peer.noop.delay() for _ in range(tasks)]
        for r in rs:
            r.get(timeout=300)
        thr = tasks / (time.perf_counter() - t0)
        lat = []
        for _ in range(lat_tasks):
            t = time.perf_counter()
            celery_peer.noop.delay().get(timeout=30)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        return {"throughput": thr, "p50_ms": statistics.median(lat), "p99_ms": lat[int(len(lat) * 0.99)]}
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--celery-tasks", type=int, default=3000)
    ap.add_argument("--latency-tasks", type=int, default=1000)
    a = ap.parse_args()
    fixtures.cleanup_stale()
    redis = fixtures.RedisServer()
    try:
        d = dibba(redis, a.tasks, a.latency_tasks)
        c = celery(redis, a.celery_tasks, a.latency_tasks)
    finally:
        redis.stop()
    out = {"dibba": d, "celery": c, "throughput_ratio": d["throughput"] / c["throughput"],
           "p50_ratio": d["p50_ms"] / c["p50_ms"]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
