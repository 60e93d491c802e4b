#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The private development stack behind `tools/dev up|down|status`, kept under ./.dibba/.

  .dibba/dibba.json        config (0600)          .dibba/secrets/      jwt.secret, routing.key, redis.password
  .dibba/admin.password    admin password (0600)  .dibba/logs/         <daemon>.log (JSON), *.stderr, redis, containerd
  .dibba/run/              sockets, pidfiles, containerd state, runc root, netns mounts
  .dibba/redis/ .dibba/containerd/ .dibba/cni/ .dibba/images/          data (kept by `down`, removed by --purge)

DIBBA_REDIS_URL / CONTAINERD_SOCKET in the environment point the stack at existing services instead of
private ones. It reuses tests/integration/fixtures.py for the container, mount and iptables clean-up.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
import fixtures  # noqa: E402

DOT = os.path.join(SRC, ".dibba")
RUN = os.path.join(DOT, "run")
LOGS = os.path.join(DOT, "logs")
STATE = os.path.join(DOT, "state.json")
NET_NAME = "dibba"
BRIDGE = "dibbadev0"
NAMESPACE = "k8s.io"
DAEMONS = ("api", "worker", "beat")


def say(msg):
    print("dev: " + msg, flush=True)


def die(msg):
    print("dev: error: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def p(*parts):
    return os.path.join(DOT, *parts)


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def load_state():
    try:
        with open(STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save_state(st):
    write_private(STATE, json.dumps(st, indent=2) + "\n")


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_port(st, key, preferred):
    port = st.get(key)
    if port and port_free(port):
        return port
    for cand in [preferred] + list(range(preferred + 1, preferred + 50)):
        if port_free(cand):
            st[key] = cand
            return cand
    st[key] = fixtures.free_port()
    return st[key]


def pick_subnet(st):
    if st.get("subnet"):
        return st["subnet"]
    used = fixtures.run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
    for x in range(0, 250):
        if "10.89.%d." % x not in used:
            st["subnet"] = "10.89.%d.0/24" % x
            return st["subnet"]
    die("no free subnet in 10.89.0.0/16 for the dev bridge")


def secret(name):
    path = p("secrets", name)
    if not os.path.exists(path):
        fixtures.write_secret(path)
    os.chmod(path, 0o600)
    return path


# ---- pidfiles ----

def write_pid(name, pid):
    write_private(os.path.join(RUN, name + ".pid"), "%d %s\n" % (pid, fixtures.proc_starttime(pid)))


def read_pid(name):
    try:
        with open(os.path.join(RUN, name + ".pid")) as f:
            pid, st = f.read().split()
    except (OSError, ValueError):
        return None
    return int(pid) if fixtures.proc_alive(int(pid), None if st == "None" else st) else None


def stop_pid(name, sig=signal.SIGTERM, timeout=15):
    pid = read_pid(name)
    if pid:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while fixtures.proc_starttime(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if fixtures.proc_starttime(pid) is not None:
            say("%s (pid %d) did not stop in %ds; killing it" % (name, pid, timeout))
            fixtures.kill_pids([pid])
        say("stopped %s (pid %d)" % (name, pid))
    try:
        os.unlink(os.path.join(RUN, name + ".pid"))
    except OSError:
        pass


def spawn(name, cmd, env=None, stdout_path=None):
    out = open(stdout_path or os.path.join(LOGS, name + ".stderr"), "ab")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=DOT)
    out.close()
    write_pid(name, proc.pid)
    return proc


# ---- components ----

def start_redis(st):
    pw = open(secret("redis.password")).read().strip()
    port = pick_port(st, "redis_port", 6390)
    os.makedirs(p("redis"), exist_ok=True)
    conf = "\n".join([
        "bind 127.0.0.1", "port %d" % port, "unixsocket %s" % os.path.join(RUN, "redis.sock"),
        "unixsocketperm 700", "dir %s" % p("redis"), "daemonize no", "logfile %s" % os.path.join(LOGS, "redis.log"),
        "appendonly yes", "save \"\"", "protected-mode yes",
        "user default off", "user dibba on >%s ~* &* +@all" % pw,
    ]) + "\n"
    write_private(p("redis", "redis.conf"), conf)
    proc = spawn("redis", ["redis-server", p("redis", "redis.conf")])
    cli = ["redis-cli", "-s", os.path.join(RUN, "redis.sock"), "--user", "dibba", "--pass", pw, "--no-auth-warning"]
    fixtures.wait_until(lambda: proc.poll() is not None or
                        fixtures.run(cli + ["PING"], check=False).stdout.strip() == "PONG", 20, "redis-server")
    if proc.poll() is not None:
        die("redis-server exited %d; see %s" % (proc.returncode, os.path.join(LOGS, "redis.log")))
    st["redis_url"] = "redis://dibba:%s@127.0.0.1:%d/0" % (pw, port)
    say("redis-server: 127.0.0.1:%d and %s (user dibba)" % (port, os.path.join(RUN, "redis.sock")))
    return st["redis_url"]


def containerd_config():
    conf = fixtures.CONTAINERD_CONFIG.format(d=p("containerd"), pause=fixtures.PAUSE_IMAGE, cni_bin=fixtures.CNI_PATH,
                                             cni_conf=p("cni", "net.d"))
    # Sockets, state and the runc root live under run/; the content store and snapshots under containerd/.
    conf = conf.replace('state = "%s/state"' % p("containerd"), 'state = "%s"' % os.path.join(RUN, "containerd"))
    conf = conf.replace('%s/containerd.sock' % p("containerd"), os.path.join(RUN, "containerd.sock"))
    conf = conf.replace('Root = "%s/runc"' % p("containerd"), 'Root = "%s"' % os.path.join(RUN, "runc"))
    return conf


def start_containerd():
    os.makedirs(p("containerd"), exist_ok=True)
    with open(p("containerd", "config.toml"), "w") as f:
        f.write(containerd_config())
    sock = os.path.join(RUN, "containerd.sock")
    proc = spawn("containerd", ["containerd", "--config", p("containerd", "config.toml")],
                 stdout_path=os.path.join(LOGS, "containerd.log"))
    fixtures.wait_until(lambda: proc.poll() is not None or (os.path.exists(sock) and fixtures.run(
        ["ctr", "-a", sock, "version"], check=False).returncode == 0), 30, "containerd", interval=0.1)
    if proc.poll() is not None:
        die("containerd exited %d; see %s" % (proc.returncode, os.path.join(LOGS, "containerd.log")))
    say("containerd: %s" % sock)
    return "unix://" + sock


def write_cni(st):
    subnet = pick_subnet(st)
    gw = subnet.rsplit(".", 1)[0] + ".1"
    os.makedirs(p("cni", "net.d"), exist_ok=True)
    os.makedirs(p("cni", "ipam"), exist_ok=True)
    conf = {"cniVersion": "1.0.0", "name": NET_NAME, "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": p("cni", "ipam"),
                  "ranges": [[{"subnet": subnet, "gateway": gw}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "loopback"}]}
    with open(p("cni", "net.d", "10-dibba.conflist"), "w") as f:
        json.dump(conf, f, indent=2)
    say("CNI: network %s, bridge %s, subnet %s (%s)" % (NET_NAME, BRIDGE, subnet, p("cni", "net.d")))
    return subnet


def import_images(sock, build):
    os.makedirs(p("images"), exist_ok=True)
    paths = fixtures.build_images(build)
    for name in ("pause", "busybox"):
        fixtures.run(["ctr", "-a", sock.replace("unix://", ""), "-n", NAMESPACE, "images", "import", paths[name]],
                     timeout=300)
    say("images in namespace %s: %s, %s" % (NAMESPACE, fixtures.PAUSE_IMAGE, fixtures.BUSYBOX_IMAGE))


def daemon_env(name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBBA_") or k in ("DIBBA_REDIS_URL",)}
    env.pop("CONTAINERD_SOCKET", None)  # already written into the config
    env["DIBBA_LOG_FILE"] = os.path.join(LOGS, name + ".log")
    return env


def up(a):
    build = os.path.abspath(a.build_dir)
    down(argparse.Namespace(purge=False, quiet=True))  # idempotent: a second `up` restarts cleanly
    for d in (DOT, RUN, LOGS, p("secrets"), p("run", "netns"), p("worker")):
        os.makedirs(d, exist_ok=True)
    os.chmod(DOT, 0o700)
    os.chmod(p("secrets"), 0o700)
    st = load_state()
    external_redis = os.environ.get("DIBBA_REDIS_URL")
    external_ctrd = os.environ.get("CONTAINERD_SOCKET")
    st["private_redis"] = not external_redis
    st["private_containerd"] = not external_ctrd
    redis_url = external_redis or start_redis(st)
    if external_redis:
        say("redis: using DIBBA_REDIS_URL (not starting a private redis-server)")
    ctrd = external_ctrd or start_containerd()
    if external_ctrd:
        say("containerd: using CONTAINERD_SOCKET=%s (not starting a private containerd)" % ctrd)
    if not ctrd.startswith("unix://") and ctrd.startswith("/"):
        ctrd = "unix://" + ctrd
    subnet = write_cni(st)
    st["bridge"] = BRIDGE
    import_images(ctrd, build)
    api_port = pick_port(st, "api_port", 8080)
    cfg = {
        "log": {"level": "info"},
        "redis": {"url": redis_url, "prefix": "dibba:"},
        "auth": {"jwt_secret_file": secret("jwt.secret")},
        "task": {"routing_key_file": secret("routing.key")},
        "api": {"listen": "127.0.0.1:%d" % api_port, "ui_dir": os.path.join(SRC, "ui")},
        "worker": {"hostname": socket.gethostname(), "roles": "control", "state_dir": p("worker"),
                   "netns_dir": p("run", "netns"), "plugin_dir": os.path.join(build, "plugins"),
                   "plugins": ["node", "pods"]},
        "containerd": {"socket": ctrd, "namespace": NAMESPACE, "snapshotter": "overlayfs"},
        "cni": {"path": fixtures.CNI_PATH, "conf_dir": p("cni", "net.d"), "net_name": NET_NAME, "ifname": "eth0"},
    }
    # The pods plugin sees only plugins.pods (+ redis): the same containerd and CNI network, its directories.
    cfg["plugins"] = {"pods": fixtures.pods_plugin_config(
        cfg, p("pods"), logger=os.path.join(build, "tools", "logger", "dibba-logger"))}
    write_private(p("dibba.json"), json.dumps(cfg, indent=2) + "\n")
    save_state(st)

    # The admin user: the password is generated once and kept in .dibba/admin.password (0600).
    pw_path = p("admin.password")
    existed = os.path.exists(pw_path)
    if not existed:
        write_private(pw_path, fixtures.secrets.token_urlsafe(18) + "\n")
    password = open(pw_path).read().strip()
    api_bin = os.path.join(build, "daemons", "api", "dibba-api")
    r = subprocess.run([api_bin, "--config", p("dibba.json"), "user", "add", "admin", "--role", "admin",
                        "--password-stdin"], input=password + "\n", capture_output=True, text=True,
                       env=daemon_env("admin"), timeout=60)
    if r.returncode != 0 and not (existed and "exist" in (r.stdout + r.stderr).lower()):
        die("creating the admin user failed (exit %d): %s" % (r.returncode, (r.stderr or r.stdout).strip()))
    say("admin user ready")

    for name in DAEMONS:
        spawn(name, [os.path.join(build, "daemons", name, "dibba-" + name), "--config", p("dibba.json")],
              env=daemon_env(name))
    time.sleep(1.0)
    for name in DAEMONS:
        if not read_pid(name):
            err = open(os.path.join(LOGS, name + ".stderr"), errors="replace").read().strip().splitlines()[-5:]
            die("dibba-%s exited at start-up: %s" % (name, " | ".join(err)))
        say("dibba-%s running (pid %d), log %s" % (name, read_pid(name), os.path.join(LOGS, name + ".log")))

    url = "http://127.0.0.1:%d/healthz" % api_port
    deadline = time.monotonic() + a.health_timeout
    ok = False
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                ok = 200 <= r.status < 300
        except OSError:
            pass
        if ok:
            break
        time.sleep(0.5)
    if not ok:
        die("%s did not answer within %ds; the daemons are still running (see %s, stop with `tools/dev down`)" %
            (url, a.health_timeout, LOGS))
    print()
    print("Dibba dev stack is up.")
    print("  API        http://127.0.0.1:%d   (health: curl %s)" % (api_port, url))
    print("  dashboard  http://127.0.0.1:%d/ui/   (sign in as admin)" % api_port)
    print("  Redis      %s" % (redis_url.split("@")[-1] if "@" in redis_url else redis_url))
    print("  containerd %s   namespace %s" % (ctrd, NAMESPACE))
    print("  CNI        %s bridge %s subnet %s" % (NET_NAME, BRIDGE, subnet))
    print("  config     %s   logs %s" % (p("dibba.json"), LOGS))
    print("  admin      password %s (stored in %s)" % (password, pw_path))
    # POST /token is an OAuth2 password grant (form-encoded); the answer's access_token goes in a Bearer header.
    print("  log in:    TOKEN=$(curl -sf -d grant_type=password -d username=admin -d 'password=%s' "
          "http://127.0.0.1:%d/token | jq -r .access_token)" % (password, api_port))
    print("  use it:    curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:%d/v1/me" % api_port)
    print("  stop:      tools/dev down   (tools/dev down --purge also deletes the data)")
    if not a.no_demo:
        demo_pod(api_port, password)


def api_call(port, method, path, body=None, token=None, form=None, timeout=30):
    data, headers = None, {}
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def demo_pod(port, password, timeout=90):
    """POST /v1/pods as admin: busybox httpd serving /www, wait until Running, print how to reach it."""
    st, tok = api_call(port, "POST", "/token", form={"grant_type": "password", "username": "admin",
                                                     "password": password})
    if st != 200:
        die("demo pod: login failed (%d): %s" % (st, tok))
    token = tok["access_token"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "demo-web", "namespace": "default",
                                                           "labels": {"app": "demo-web"}},
           "spec": {"containers": [{"name": "httpd", "image": fixtures.BUSYBOX_IMAGE,
                                    "command": ["httpd", "-f", "-p", "80", "-h", "/www"]}]}}
    deadline = time.monotonic() + 15
    while True:  # the worker's first heartbeat may still be on its way
        st, res = api_call(port, "POST", "/v1/pods", pod, token)
        if st not in (503,) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if st not in (200, 202):
        die("demo pod: POST /v1/pods answered %d: %s" % (st, res))
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        st, res = api_call(port, "GET", "/v1/pods/default/demo-web", token=token)
        status = (res or {}).get("status", {}) if st == 200 else {}
        if status.get("phase") == "Running" and status.get("podIP"):
            break
        time.sleep(0.5)
    else:
        die("demo pod: not Running after %ds (status %s; see %s)" % (timeout, status, LOGS))
    ip = status["podIP"]
    print()
    print("Demo pod default/demo-web is Running on %s, IP %s (busybox httpd on port 80)." % (status.get("hostName", ""), ip))
    print("  try it:    curl http://%s/" % ip)
    print("  its pod:   curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:%d/v1/pods/default/demo-web" % port)


def down(a):
    st = load_state()
    if not os.path.isdir(DOT):
        if not a.quiet:
            say("nothing to stop (no .dibba/)")
        return
    for name in reversed(DAEMONS):
        stop_pid(name)
    sock = os.path.join(RUN, "containerd.sock")
    if read_pid("containerd"):
        # Stop the containers the private containerd runs, then containerd and its shims.
        cli = ["ctr", "-a", sock]
        for ns in fixtures.run(cli + ["namespaces", "ls", "-q"], check=False).stdout.split():
            for t in fixtures.run(cli + ["-n", ns, "tasks", "ls", "-q"], check=False).stdout.split():
                fixtures.quiet(cli + ["-n", ns, "tasks", "kill", "-s", "KILL", t])
                fixtures.quiet(cli + ["-n", ns, "tasks", "delete", "-f", t])
        stop_pid("containerd")
    for runc_root in (os.path.join(RUN, "runc"),):
        if os.path.isdir(runc_root):
            for ns_dir in [runc_root] + [os.path.join(runc_root, x) for x in os.listdir(runc_root)]:
                lst = fixtures.quiet(["runc", "--root", ns_dir, "list", "-q"])
                for cid in (lst.stdout.split() if lst and lst.returncode == 0 else []):
                    fixtures.quiet(["runc", "--root", ns_dir, "kill", "-a", cid, "KILL"])
                    fixtures.quiet(["runc", "--root", ns_dir, "delete", "--force", cid])
    fixtures.kill_pids(fixtures.pids_matching(sock))
    if read_pid("redis"):
        stop_pid("redis")
    fixtures.delete_link(st.get("bridge", BRIDGE))
    if st.get("subnet"):
        fixtures.iptables_cleanup([st["subnet"]], [NET_NAME])
    fixtures.umount_under(DOT)
    shutil.rmtree(p("cni", "ipam"), ignore_errors=True)  # no container is left, so no address is in use
    shutil.rmtree(RUN, ignore_errors=True)
    if fixtures.mounts_under(DOT):
        die("mounts still under %s: %s" % (DOT, fixtures.mounts_under(DOT)))
    if a.purge:
        shutil.rmtree(DOT)
        say("purged %s" % DOT)
    elif not a.quiet:
        say("stopped; data kept in %s (tools/dev down --purge removes it)" % DOT)


def status(a):
    st = load_state()
    if not os.path.isdir(DOT):
        print("not set up (run tools/dev up)")
        return 1
    rc = 0
    for name in ("redis", "containerd") + DAEMONS:
        pid = read_pid(name)
        private = {"redis": st.get("private_redis", True), "containerd": st.get("private_containerd", True)}
        if name in private and not private[name]:
            print("%-11s external" % name)
            continue
        print("%-11s %s" % (name, "running (pid %d)" % pid if pid else "stopped"))
        rc |= 0 if pid else 1
    if st.get("api_port"):
        url = "http://127.0.0.1:%d/healthz" % st["api_port"]
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                print("healthz     %s -> %d" % (url, r.status))
        except OSError as e:
            print("healthz     %s -> %s" % (url, e))
            rc = 1
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("--build-dir", default=os.path.join(SRC, "build"))
    u.add_argument("--health-timeout", type=int, default=30)
    u.add_argument("--no-demo", action="store_true", help="do not create the demo pod")
    d = sub.add_parser("down")
    d.add_argument("--purge", action="store_true")
    d.set_defaults(quiet=False)
    sub.add_parser("status")
    a = ap.parse_args()
    if os.geteuid() != 0:
        die("the dev stack needs root (containerd, bridges, iptables)")
    if a.cmd == "up":
        up(a)
    elif a.cmd == "down":
        down(a)
    else:
        sys.exit(status(a))


if __name__ == "__main__":
    main()
