#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Soak: N minutes of mixed load on one private stack (redis-server, containerd, CNI bridge, dibba-api,
dibba-worker with the node and pods plugins), sampling VmRSS and the open fd count of every daemon every 10 s.

Load, all at once:
  - task dispatch: dibba-dispatch submits `noop` tasks in batches (--dispatch-rate per second);
  - pod churn: create_pod then delete_pod of a busybox pod through POST /v1/tasks, one pod at a time;
  - API reads: GET /v1/me, GET /v1/nodes and GET /task/{id} from a keep-alive Python client.
After the warm-up (--warmup-minutes, default 2 or a quarter of the run) the growth of each daemon is measured
against the first sample after the warm-up. It fails (exit 1) when RSS grows by more than 20% and more than
10 MiB, or fds by more than 32, or when a daemon dies, or a task or pod operation fails.

    /usr/bin/python3 tools/bench/soak/run.py [--minutes 30] [--asan] [--json FILE]

--asan uses build-asan/ (meson setup build-asan -Db_sanitize=address,undefined; built if missing) and stops
the daemons with SIGTERM at the end, failing on any sanitizer report in their stderr.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
RSS_PCT, RSS_MIB, FD_MAX = 20.0, 10.0, 32


def proc_sample(pid):
    rss = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup-minutes", type=float, default=None)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--dispatch-rate", type=int, default=200)
    ap.add_argument("--asan", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    build = os.path.join(SRC, "build-asan" if a.asan else "build")
    if a.asan and not os.path.exists(os.path.join(build, "build.ninja")):
        subprocess.run(["meson", "setup", build, "-Db_sanitize=address,undefined", "-Db_lundef=false"],
                       cwd=SRC, check=True)
    subprocess.run(["ninja", "-C", build], check=True, stdout=subprocess.DEVNULL)
    os.environ["DIBBA_BUILD_DIR"] = build
    sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
    import fixtures
    import requests
    import test_faults
    import taskkit
    fixtures.cleanup_stale()
    warm = a.warmup_minutes if a.warmup_minutes is not None else min(2.0, a.minutes / 4)
    ps = test_faults.PodStack()
    daemons = {"api": ps.st.api, "worker": ps.worker}
    stop = threading.Event()
    errors, counts = [], {"tasks": 0, "pods": 0, "reads": 0}

    def dispatch():
        cfg = ps.worker.config_path
        while not stop.is_set():
            t0 = time.monotonic()
            p = subprocess.run([taskkit.DISPATCH, "--config", cfg, "submit", "--host", test_faults.HOST,
                                "--name", "noop", "--count", str(a.dispatch_rate)], capture_output=True, text=True)
            if p.returncode != 0:
                errors.append("dispatch: " + p.stderr[-300:])
            else:
                counts["tasks"] += a.dispatch_rate
            stop.wait(max(0, 1 - (time.monotonic() - t0)))

    def pods():
        n = 0
        while not stop.is_set():
            name = "soak%d" % (n % 3)
            n += 1
            try:
                rec = ps.run("create_pod", test_faults.pod_json(name), timeout=120)
                if rec["state"] != "SUCCESS":
                    errors.append("create_pod: %s" % rec.get("error"))
                rec = ps.run("delete_pod", {"name": name}, timeout=120)
                if rec["state"] != "SUCCESS":
                    errors.append("delete_pod: %s" % rec.get("error"))
                counts["pods"] += 1
            except Exception as e:  # a timeout is a failure of the run, not of the script
                errors.append("pods: %s" % e)
            stop.wait(0.5)

    def reads():
        s = requests.Session()
        s.headers.update(ps.st.h)
        last = None
        while not stop.is_set():
            try:
                for path in ("/v1/me", "/v1/nodes") + (("/task/" + last,) if last else ()):
                    r = s.get(ps.st.url + path, timeout=10)
                    if r.status_code != 200:
                        errors.append("GET %s: %d" % (path, r.status_code))
                    counts["reads"] += 1
                if last is None or counts["reads"] % 300 == 0:
                    r = s.post(ps.st.url + "/v1/tasks", json={"name": "noop", "host": test_faults.HOST}, timeout=10)
                    last = r.json().get("task_id") if r.status_code == 202 else last
            except Exception as e:
                errors.append("reads: %s" % e)
            stop.wait(0.01)

    threads = [threading.Thread(target=f, daemon=True) for f in (dispatch, pods, reads)]
    for t in threads:
        t.start()
    samples = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < a.minutes * 60:
            row = {"t": round(time.monotonic() - t0, 1)}
            for name, d in daemons.items():
                if d.proc.poll() is not None:
                    errors.append("dibba-%s died: exit %s" % (name, d.proc.returncode))
                    raise SystemExit(1)
                row[name] = proc_sample(d.proc.pid)
            samples.append(row)
            print(json.dumps(row), dict(counts), file=sys.stderr)
            time.sleep(a.interval)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=150)
    base = next((s for s in samples if s["t"] >= warm * 60), samples[0])
    report = {"minutes": a.minutes, "warmup_minutes": warm, "asan": a.asan, "counts": counts,
              "errors": errors[:20], "n_errors": len(errors), "daemons": {}}
    ok = not errors
    for name in daemons:
        after = [s[name] for s in samples if s["t"] >= base["t"]]
        rss0, fd0 = base[name]
        rss_max = max(r for r, _ in after)
        fd_max = max(f for _, f in after)
        grow_kib = rss_max - rss0
        grow_pct = 100.0 * grow_kib / rss0
        bad = (grow_pct > RSS_PCT and grow_kib > RSS_MIB * 1024) or fd_max - fd0 > FD_MAX
        ok = ok and not bad
        report["daemons"][name] = {"rss_kib_after_warmup": rss0, "rss_kib_max": rss_max,
                                   "rss_kib_end": after[-1][0], "rss_growth_kib": grow_kib,
                                   "rss_growth_pct": round(grow_pct, 1), "fds_after_warmup": fd0,
                                   "fds_max": fd_max, "fds_end": after[-1][1], "within_bounds": not bad}
    if a.asan:
        for name, d in daemons.items():
            d.stop(expect=None)
            if "ERROR: AddressSanitizer" in d.stderr_text() or "runtime error:" in d.stderr_text():
                report["errors"].append("dibba-%s: sanitizer report in %s" % (name, d.stderr_path))
                ok = False
    report["ok"] = ok
    try:
        ps.ctrd.clear_namespace(ps.ns)
    except Exception:
        pass
    ps.close()
    print(json.dumps(report, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"report": report, "samples": samples}, f, indent=2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
