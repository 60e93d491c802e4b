#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""HTTP benchmark: dibba-api against FastAPI + uvicorn (peer_fastapi.py), side by side in one run.

Starts a private redis-server, dibba-api (release build in build-release/, built if missing) and uvicorn, then
runs `wrk -t2 -c100 -d10s --latency` on GET /healthz and on GET /v1/me (JWT verified and the user looked up on
every request) against each server, and reports req/s, p50/p99 and the dibba/uvicorn ratios. Then holds 10,000
idle keep-alive connections and 1,000 open WebSockets (GET /v1/ws/echo) on dibba-api and reports its RSS
(VmRSS) before and after. Usage (as root, from the source tree):

    /usr/bin/python3 tools/bench/http/run.py [--build-dir build-release] [--duration 10s] [--idle 10000] [--ws 1000]
"""
import argparse
import base64
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jwt
import requests

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PEER = os.path.join(SRC, "tools", "bench", "http", "peer_fastapi.py")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("%s did not answer" % url)


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    PROCS.append(p)
    return p


def stop_all():
    for p in reversed(PROCS):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


def wrk(url, duration, token=None):
    cmd = ["wrk", "-t2", "-c100", "-d" + duration, "--latency"]
    if token:
        cmd += ["-H", "Authorization: Bearer " + token]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock.group(1) if sock else ""}


def hold_idle(port, n):
    """n keep-alive connections, each after one complete GET /healthz, left open."""
    req = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed during the idle set-up")
            got += chunk
        socks.append(s)
    return socks


def hold_ws(port, n, token):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET /v1/ws/echo HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
                   % (key, token)).encode())
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed during the WebSocket upgrade")
            got += chunk
        if not got.startswith(b"HTTP/1.1 101"):
            raise RuntimeError("upgrade refused: %r" % got[:80])
        # One echo round trip on every socket, so each is a working WebSocket, not just an upgraded one.
        mask = os.urandom(4)
        payload = b"ping"
        s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        echo = got.split(b"\r\n\r\n", 1)[1]
        while len(echo) < 6:
            echo += s.recv(64)
        if echo[2:6] != payload:
            raise RuntimeError("bad echo %r" % echo)
        socks.append(s)
    return socks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(SRC, "build-release"))
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--ws", type=int, default=1000)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.idle + a.ws + 1024
    if hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard limit
        except (ValueError, OSError):
            sys.exit("RLIMIT_NOFILE hard limit %d is below the %d descriptors needed" % (hard, want))
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    buildtype = "release"
    if not os.path.exists(os.path.join(a.build_dir, "build.ninja")):
        subprocess.run(["meson", "setup", a.build_dir, "--buildtype=release"], cwd=SRC, check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", a.build_dir, "daemons/api/dibba-api"], check=True, stdout=subprocess.DEVNULL)
    info = subprocess.run(["meson", "introspect", "--buildoptions", a.build_dir], capture_output=True, text=True)
    for o in json.loads(info.stdout or "[]"):
        if o["name"] == "buildtype":
            buildtype = o["value"]
    api_bin = os.path.join(a.build_dir, "daemons", "api", "dibba-api")

    tmp = tempfile.mkdtemp(prefix="dibba-bench-")
    try:
        secret = secrets.token_hex(32)
        with open(os.path.join(tmp, "jwt.secret"), "w") as f:
            f.write(secret + "\n")
        os.chmod(os.path.join(tmp, "jwt.secret"), 0o600)
        with open(os.path.join(tmp, "routing.key"), "w") as f:  # dibba-api refuses to start without it
            f.write(secrets.token_hex(32) + "\n")
        os.chmod(os.path.join(tmp, "routing.key"), 0o600)
        rport, aport, uport = free_port(), free_port(), free_port()
        spawn(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", tmp], stdout=subprocess.DEVNULL)
        cfg = {
            "log": {"level": "warn", "file": os.path.join(tmp, "api.log")},
            "redis": {"url": "redis://127.0.0.1:%d/0" % rport, "prefix": "bench:"},
            "auth": {"jwt_secret_file": os.path.join(tmp, "jwt.secret")},
            "task": {"routing_key_file": os.path.join(tmp, "routing.key")},
            "api": {"listen": "127.0.0.1:%d" % aport, "access_log": False},
        }
        cfg_path = os.path.join(tmp, "dibba.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        subprocess.run([api_bin, "--config", cfg_path, "user", "add", "bench", "--role", "viewer",
                        "--password-stdin"], input="bench-password\n", text=True, check=True, capture_output=True)
        api = spawn([api_bin, "--config", cfg_path], stdout=open(os.path.join(tmp, "api.stderr"), "w"),
                    stderr=subprocess.STDOUT)
        env = dict(os.environ, BENCH_JWT_SECRET=secret)
        spawn(["/usr/bin/python3", PEER, str(uport)], env=env, stdout=subprocess.DEVNULL)
        dibba, uvi = "http://127.0.0.1:%d" % aport, "http://127.0.0.1:%d" % uport
        wait_http(dibba + "/readyz")
        wait_http(uvi + "/healthz")

        r = requests.post(dibba + "/token", data={"username": "bench", "password": "bench-password",
                                                  "grant_type": "password", "scope": ""}, timeout=10)
        r.raise_for_status()
        dtoken = r.json()["access_token"]
        now = int(time.time())
        ptoken = jwt.encode({"sub": "bench", "role": "viewer", "iat": now, "nbf": now, "exp": now + 3600,
                             "jti": secrets.token_hex(8)}, secret, algorithm="HS256")
        for base in (dibba, uvi):  # both tokens are valid on both servers: same secret, same claims
            for t in (dtoken, ptoken):
                me = requests.get(base + "/v1/me", headers={"Authorization": "Bearer " + t}, timeout=10)
                assert me.status_code == 200 and me.json() == {"sub": "bench", "role": "viewer"}, me.text

        results = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                               "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                            if l.startswith("model name")), "?")},
                   "buildtype": buildtype, "routes": {}}
        for route, tok_d, tok_p in (("/healthz", None, None), ("/v1/me", dtoken, ptoken)):
            d = wrk(dibba + route, a.duration, tok_d)
            u = wrk(uvi + route, a.duration, tok_p)
            results["routes"][route] = {"dibba": d, "uvicorn": u, "ratio_rps": d["rps"] / u["rps"]}

        pid = api.pid
        rss0 = rss_kib(pid)
        t0 = time.monotonic()
        idle = hold_idle(aport, a.idle)
        rss_idle = rss_kib(pid)
        wss = hold_ws(aport, a.ws, dtoken)
        rss_ws = rss_kib(pid)
        held = time.monotonic() - t0
        m = requests.get(dibba + "/metrics", timeout=10).text
        open_conns = re.search(r"^dibba_http_open_connections (\d+)", m, re.M)
        still = requests.get(dibba + "/v1/me", headers={"Authorization": "Bearer " + dtoken}, timeout=10)
        results["connections"] = {
            "idle_keepalive": len(idle), "websockets": len(wss), "rss_kib_before": rss0,
            "rss_kib_with_idle": rss_idle, "rss_kib_with_idle_and_ws": rss_ws, "setup_seconds": round(held, 1),
            "open_connections_metric": int(open_conns.group(1)) if open_conns else None,
            "v1_me_while_held": still.status_code}
        for s in idle + wss:
            s.close()

        print("dibba-api (%s build) vs uvicorn+FastAPI, %d CPUs (%s), wrk -t2 -c100 -d%s --latency" % (
            buildtype, results["machine"]["cpus"], results["machine"]["cpu"], a.duration))
        print("%-10s %-8s %12s %9s %9s %8s" % ("route", "server", "req/s", "p50 ms", "p99 ms", "non-2xx"))
        for route, rr in results["routes"].items():
            for name in ("dibba", "uvicorn"):
                x = rr[name]
                print("%-10s %-8s %12.0f %9.2f %9.2f %8d" % (route, name, x["rps"], x["p50_ms"], x["p99_ms"],
                                                             x["non2xx"]))
            print("%-10s ratio dibba/uvicorn req/s: %.1fx" % (route, rr["ratio_rps"]))
        c = results["connections"]
        print("dibba-api RSS: %d KiB before; %d KiB with %d idle keep-alive connections; %d KiB with %d WebSockets "
              "too (open_connections metric %s; /v1/me while held: %d)" % (
                  c["rss_kib_before"], c["rss_kib_with_idle"], c["idle_keepalive"], c["rss_kib_with_idle_and_ws"],
                  c["websockets"], c["open_connections_metric"], c["v1_me_while_held"]))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
