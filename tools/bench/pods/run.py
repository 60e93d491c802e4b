#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Pod benchmark: create -> Running latency through Dibba beside the same containerd + CNI work done directly
(ip netns + CNI plugins + `ctr run -d`), in one run, plus a density run (many pods, worker RSS, cleanup check).

Starts a private stack through tests/integration/fixtures.py: redis-server, containerd (runc), a bridge CNI
network, the busybox and pause images imported, dibba-api and dibba-worker (plugins node + pods), an operator
from `dibba-api user add` and its token from POST /token. Builds nothing: the binaries come from --build-dir
(default build/). Usage (as root, from the source tree):

    /usr/bin/python3 tools/bench/pods/run.py [--build-dir build] [--sequential 50] [--concurrent 20]
                                             [--density 100] [--json FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

POLL = 0.020          # GET /v1/pods/{ns}/{name} every 20 ms
SLEEP = ["sleep", "3600"]
PASSWORD = "bench pods password"


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs):
    return {"n": len(xs), "p50_ms": round(pct(xs, 50) * 1000, 1), "p99_ms": round(pct(xs, 99) * 1000, 1),
            "min_ms": round(min(xs) * 1000, 1), "max_ms": round(max(xs) * 1000, 1),
            "mean_ms": round(statistics.mean(xs) * 1000, 1)}


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Stack:
    def __init__(self, fixtures, concurrency):
        import requests
        self.fx = fixtures
        self.requests = requests
        self.redis = fixtures.RedisServer()
        self.ctrd = fixtures.Containerd()
        # A network name of our own: CniNet.close() of any other session removes the iptables rules whose CNI
        # comment names its network, and the default name ("dibba-test") is shared by every test run.
        self.net = fixtures.CniNet(name="podbench-" + fixtures.session().tag)
        self.ns = self.ctrd.namespace()
        fixtures.import_images(self.ctrd, self.ns)
        sec = fixtures.make_secrets()
        self.host = "podbench-" + fixtures.session().tag
        self.port = fixtures.free_port()
        base = {"worker.plugins": ["node", "pods"], "worker.heartbeat_seconds": 1, "worker.hostname": self.host,
                "worker.concurrency": concurrency, "containerd.namespace": self.ns, "log.level": "warn",
                "api.access_log": False}
        wcfg = fixtures.daemon_config(redis=self.redis, containerd=self.ctrd, cni=self.net, secrets_paths=sec, **base)
        acfg = fixtures.daemon_config(redis=self.redis, containerd=self.ctrd, cni=self.net, secrets_paths=sec,
                                      api_port=self.port, **base)
        self.prefix = wcfg["redis"]["prefix"]
        self.worker = fixtures.Daemon("worker", wcfg).start(wait_log=None)
        self.api = fixtures.Daemon("api", acfg)
        p = self.api.run_once("user", "add", "bench", "--role", "operator", "--password-stdin", input=PASSWORD + "\n")
        if p.returncode != 0:
            raise RuntimeError("dibba-api user add: %s" % p.stderr)
        self.api.start(wait_log=None, port=self.port)
        self.url = "http://127.0.0.1:%d" % self.port
        r = requests.post(self.url + "/token", data={"username": "bench", "password": PASSWORD,
                                                     "grant_type": "password", "scope": ""}, timeout=10)
        r.raise_for_status()
        self.headers = {"Authorization": "Bearer " + r.json()["access_token"]}
        fixtures.wait_until(lambda: "pods" in self.redis.cli("HGET", self.prefix + "node:" + self.host, "plugins"),
                            30, "the worker's heartbeat with the pods plugin", interval=0.2)
        self.local = threading.local()

    def http(self):
        s = getattr(self.local, "s", None)
        if s is None:
            s = self.local.s = self.requests.Session()
            s.headers.update(self.headers)
        return s

    def body(self, ns, name, memory=None):
        c = {"name": "app", "image": self.fx.BUSYBOX_IMAGE, "command": SLEEP}
        if memory:
            c["resources"] = {"limits": {"memory": memory}}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                "spec": {"nodeName": self.host, "containers": [c]}}

    def create(self, ns, name, memory=None):
        r = self.http().post(self.url + "/v1/pods", json=self.body(ns, name, memory), timeout=60)
        if r.status_code != 202:
            raise RuntimeError("POST /v1/pods %s/%s: %d %s" % (ns, name, r.status_code, r.text))
        return r.json()

    def phase(self, ns, name):
        r = self.http().get(self.url + "/v1/pods/%s/%s" % (ns, name), timeout=60)
        if r.status_code != 200:
            return None
        st = r.json().get("status") or {}
        if st.get("phase") == "Failed":
            raise RuntimeError("pod %s/%s failed: %s" % (ns, name, st))
        return st.get("phase")

    def create_timed(self, ns, name, timeout=300):
        t0 = time.monotonic()
        self.create(ns, name)
        while self.phase(ns, name) != "Running":
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("pod %s/%s not Running after %ds" % (ns, name, timeout))
            time.sleep(POLL)
        return time.monotonic() - t0

    def wait_task(self, tid, timeout=300):
        def done():
            r = self.http().get(self.url + "/v1/tasks/" + tid, timeout=60)
            return r.status_code == 200 and r.json()["status"] in ("SUCCESS", "FAILURE") and r.json()
        rec = self.fx.wait_until(done, timeout, "task " + tid, interval=0.05)
        if rec["status"] != "SUCCESS":
            raise RuntimeError("task %s: %s" % (tid, rec))

    def delete(self, ns, names):
        tids = []
        for n in names:
            r = self.http().delete(self.url + "/v1/pods/%s/%s" % (ns, n), timeout=60)
            if r.status_code != 202:
                raise RuntimeError("DELETE %s/%s: %d %s" % (ns, n, r.status_code, r.text))
            tids.append(r.json()["task_id"])
        for t in tids:
            self.wait_task(t)

    def sandboxes(self):
        """dp-<key> sandbox ids among the namespace's containers (app containers are dp-<key>-<name>)."""
        return [c for c in self.ctrd.ctr("containers", "ls", "-q", ns=self.ns).stdout.split() if c.count("-") == 1]

    def close(self):
        for d in (self.api, self.worker):
            try:
                d.stop(expect=None)
            except Exception as e:
                self.fx.log("stopping dibba-%s: %s" % (d.name, e))
        try:
            self.ctrd.clear_namespace(self.ns)
        except Exception as e:
            self.fx.log("clearing the containerd namespace: %s" % e)


def run_threads(n, fn):
    """fn(i) in n threads released together; returns the results in order (re-raises the first error)."""
    out, errs = [None] * n, []
    gate = threading.Barrier(n)

    def go(i):
        try:
            gate.wait()
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001
            errs.append(e)
    th = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    if errs:
        raise errs[0]
    return out


# ---- Dibba ----

def dibba_latency(st, nseq, nconc):
    seq = []
    for i in range(nseq):
        name = "s%d" % i
        seq.append(st.create_timed("seq", name))
        st.delete("seq", [name])
    names = ["c%d" % i for i in range(nconc)]
    conc = run_threads(nconc, lambda i: st.create_timed("conc", names[i]))
    st.delete("conc", names)
    return seq, conc


def density(st, n, memory):
    pid = st.worker.proc.pid
    rss0 = rss_kib(pid)
    names = ["d%d" % i for i in range(n)]
    t0 = time.monotonic()
    for nm in names:
        st.create("density", nm, memory=memory)
    posted = time.monotonic() - t0

    def all_running():
        r = st.http().get(st.url + "/v1/pods?namespace=density", timeout=60)
        items = r.json()["items"] if r.status_code == 200 else []
        run = [p for p in items if (p.get("status") or {}).get("phase") == "Running"]
        return len(run) == n
    st.fx.wait_until(all_running, 900, "%d density pods Running" % n, interval=0.1)
    took = time.monotonic() - t0
    time.sleep(2)  # let the worker settle (status writes) before reading its RSS
    rss1 = rss_kib(pid)
    keys = [s[3:] for s in st.sandboxes()]
    tasks_running = len(st.ctrd.ctr("tasks", "ls", ns=st.ns).stdout.splitlines()) - 1
    ctrd_rss = rss_kib(st.ctrd.proc.pid)
    t1 = time.monotonic()
    st.delete("density", names)
    del_took = time.monotonic() - t1
    rss2 = rss_kib(pid)
    c = st.ctrd.contents(st.ns)
    left_netns = [k for k in keys if os.path.exists(os.path.join(st.fx.NETNS_DIR, "dibba-" + k))]
    veths = st.fx.run(["ip", "-o", "link", "show", "master", st.net.bridge], check=False).stdout.strip()
    ipam = os.path.join(st.net.data_dir, st.net.name)
    ips = [f for f in (os.listdir(ipam) if os.path.isdir(ipam) else []) if f[0].isdigit()]
    snaps = [s for s in c["snapshots"] if s.startswith("dp-")]
    return {"pods": n, "memory_limit": memory, "post_seconds": round(posted, 2),
            "all_running_seconds": round(took, 2), "sandboxes_seen": len(keys), "tasks_running": tasks_running,
            "worker_rss_kib_before": rss0, "worker_rss_kib_with_pods": rss1, "worker_rss_kib_after_delete": rss2,
            "containerd_rss_kib_with_pods": ctrd_rss, "delete_seconds": round(del_took, 2),
            "left": {"containers": c["containers"], "tasks": c["tasks"], "snapshots": snaps,
                     "netns": left_netns, "veths": veths.splitlines() if veths else [], "ipam": ips}}


# ---- baseline: the same containerd + CNI operations, done directly ----

class Baseline:
    def __init__(self, st):
        self.st = st
        self.ctrd, self.net, self.ns = st.ctrd, st.net, st.ns

    def ctr(self, *args):
        return self.ctrd.ctr(*args, ns=self.ns)

    def up(self, cid):
        t0 = time.monotonic()
        path = self.net.netns()  # ip netns add (pinned under /var/run/netns)
        self.net.add(path, cid)  # bridge, portmap, loopback: the conflist the pods plugin uses
        self.ctr("run", "-d", "--runc-root", self.ctrd.runc_root, "--with-ns", "network:" + path,
                 self.st.fx.PAUSE_IMAGE, cid + "-pause")
        self.ctr("run", "-d", "--runc-root", self.ctrd.runc_root, "--with-ns", "network:" + path,
                 self.st.fx.BUSYBOX_IMAGE, cid + "-app", *SLEEP)
        took = time.monotonic() - t0
        return took, path

    def check_running(self, cids):
        lines = self.ctr("tasks", "ls").stdout.splitlines()[1:]
        state = {l.split()[0]: l.split()[-1] for l in lines if l.strip()}
        bad = [c for cid in cids for c in (cid + "-pause", cid + "-app") if state.get(c) != "RUNNING"]
        if bad:
            raise RuntimeError("baseline tasks not RUNNING: %s" % bad)

    def down(self, cid, path):
        for c in (cid + "-app", cid + "-pause"):
            self.ctrd.ctr("tasks", "kill", "-s", "KILL", c, ns=self.ns, check=False)
            self.ctrd.ctr("tasks", "delete", "-f", c, ns=self.ns, check=False)
            self.ctrd.ctr("containers", "delete", c, ns=self.ns, check=False)
        self.net.delete(path, cid)
        self.st.fx.delete_netns(os.path.basename(path))

    def latency(self, nseq, nconc):
        seq = []
        for i in range(nseq):
            cid = "bs%d" % i
            took, path = self.up(cid)
            self.check_running([cid])
            seq.append(took)
            self.down(cid, path)
        cids = ["bc%d" % i for i in range(nconc)]
        res = run_threads(nconc, lambda i: self.up(cids[i]))
        self.check_running(cids)
        run_threads(nconc, lambda i: self.down(cids[i], res[i][1]))
        return seq, [r[0] for r in res]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(SRC, "build"))
    ap.add_argument("--sequential", type=int, default=50)
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--density", type=int, default=100)
    ap.add_argument("--density-memory", default="16Mi", help="memory limit of each density pod")
    ap.add_argument("--concurrency", type=int, default=64, help="the worker's worker.concurrency")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    os.environ["DIBBA_BUILD_DIR"] = os.path.abspath(a.build_dir)
    import fixtures
    fixtures.BUILD_DIR = os.path.abspath(a.build_dir)
    for b in ("api", "worker"):
        if not os.access(fixtures.binary(b), os.X_OK):
            sys.exit("%s is missing: build %s first (this script builds nothing)" % (fixtures.binary(b), a.build_dir))
    fixtures.cleanup_stale()
    fixtures.session()

    res = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                       "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                    if l.startswith("model name")), "?"), "loadavg_start": loadavg()},
           "build_dir": os.path.abspath(a.build_dir), "poll_ms": POLL * 1000,
           "worker_concurrency": a.concurrency}
    t_start = time.monotonic()
    st = Stack(fixtures, a.concurrency)
    try:
        # Warm-up: one pod each way, so image unpacking and first-use costs are not in the numbers.
        st.create_timed("warm", "w0")
        st.delete("warm", ["w0"])
        b = Baseline(st)
        took, path = b.up("bwarm")
        b.down("bwarm", path)

        fixtures.log("dibba: %d sequential, %d concurrent" % (a.sequential, a.concurrent))
        dseq, dconc = dibba_latency(st, a.sequential, a.concurrent)
        res["loadavg_after_dibba"] = loadavg()
        fixtures.log("baseline: %d sequential, %d concurrent" % (a.sequential, a.concurrent))
        bseq, bconc = b.latency(a.sequential, a.concurrent)
        res["loadavg_after_baseline"] = loadavg()
        res["dibba"] = {"sequential": summary(dseq), "concurrent": summary(dconc)}
        res["baseline"] = {"sequential": summary(bseq), "concurrent": summary(bconc)}
        res["ratio_p50"] = {m: round(res["dibba"][m]["p50_ms"] / res["baseline"][m]["p50_ms"], 2)
                            for m in ("sequential", "concurrent")}
        res["ratio_p99"] = {m: round(res["dibba"][m]["p99_ms"] / res["baseline"][m]["p99_ms"], 2)
                            for m in ("sequential", "concurrent")}
        if a.density:
            fixtures.log("density: %d pods" % a.density)
            res["density"] = density(st, a.density, a.density_memory)
            res["loadavg_after_density"] = loadavg()
    finally:
        st.close()
    res["seconds"] = round(time.monotonic() - t_start, 1)

    m = res["machine"]
    print("pods: Dibba (POST /v1/pods -> GET shows Running, polled every %d ms) vs ctr + CNI directly; %d CPUs (%s); "
          "load %s at start" % (POLL * 1000, m["cpus"], m["cpu"], m["loadavg_start"]))
    print("%-10s %-9s %5s %9s %9s %9s" % ("mode", "who", "n", "p50 ms", "p99 ms", "max ms"))
    for mode in ("sequential", "concurrent"):
        for who in ("dibba", "baseline"):
            x = res[who][mode]
            print("%-10s %-9s %5d %9.1f %9.1f %9.1f" % (mode, who, x["n"], x["p50_ms"], x["p99_ms"], x["max_ms"]))
        ok = "meets" if res["ratio_p50"][mode] <= 1.25 else "MISSES"
        print("%-10s ratio dibba/baseline p50 %.2f (%s the 1.25 target), p99 %.2f" % (
            mode, res["ratio_p50"][mode], ok, res["ratio_p99"][mode]))
    if "density" in res:
        d = res["density"]
        clean = not any(d["left"].values())
        print("density: %d pods (memory limit %s) all Running %.1f s after the first POST (POSTs took %.1f s); "
              "worker VmRSS %d KiB before, %d KiB with the pods, %d KiB after delete; delete took %.1f s; "
              "cleanup %s" % (d["pods"], d["memory_limit"], d["all_running_seconds"], d["post_seconds"],
                              d["worker_rss_kib_before"], d["worker_rss_kib_with_pods"],
                              d["worker_rss_kib_after_delete"], d["delete_seconds"],
                              "complete" if clean else "INCOMPLETE: %s" % d["left"]))
    print("total %.0f s; load %s after" % (res["seconds"], loadavg()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
