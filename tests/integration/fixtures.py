# SPDX-License-Identifier: Apache-2.0
"""Integration fixtures: private redis-server, containerd, CNI networks, OCI images and Dibba daemons.

Every resource lives under one *session* directory, RUN_ROOT/<tag>/, owned by the test process. What a fixture
creates outside that directory (processes, bridges, netns, iptables rules, containerd namespaces, cgroups) is
written down in the session directory *before* it is created. Teardown runs from context managers, atexit
and SIGTERM/SIGINT/SIGHUP handlers; `cleanup_stale()` clears every session whose owner is dead, so a run that
was SIGKILLed leaves nothing behind after the next one starts.

Stdlib only. Tests use it like this:

    import fixtures
    fixtures.cleanup_stale()
    with fixtures.RedisServer() as redis, fixtures.Containerd() as ctrd:
        ...
"""
import atexit
import fcntl
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

RUN_ROOT = os.environ.get("DIBBA_IT_ROOT", "/tmp/dibba-it")
SOURCE_DIR = os.environ.get("DIBBA_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
BUILD_DIR = os.environ.get("DIBBA_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
CNI_PATH = os.environ.get("DIBBA_IT_CNI_PATH", "/usr/lib/cni")
NETNS_DIR = "/var/run/netns"
TEST_PREFIX = "dbt"  # bridges dbt<N>, netns dbt-<tag>-*, containerd namespaces dbt-<tag>-*
TEST_SUBNET_BASE = "10.244"  # test subnets are 10.244.X.0/24
BUSYBOX_IMAGE = "docker.io/library/busybox:latest"
PAUSE_IMAGE = "registry.local/dibba/pause:1"


def log(msg):
    sys.stderr.write("[fixtures] %s\n" % msg)
    sys.stderr.flush()


def run(cmd, check=True, timeout=60, **kw):
    """subprocess.run with captured text output; raises with stderr included on failure."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run(cmd, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError("%s exited %d: %s%s" % (" ".join(map(str, cmd)), p.returncode, p.stdout or "",
                                                   p.stderr or ""))
    return p


def quiet(cmd, timeout=30):
    """Run a cleanup command; never raises."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except Exception:
        return None


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what, interval=0.05):
    """Poll pred() until it returns a true value; raise TimeoutError naming what."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def wait_port(port, timeout=20, host="127.0.0.1"):
    def ok():
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False
    return wait_until(ok, timeout, "%s:%d to accept" % (host, port))


# ---- process identity: a pid plus its start time, so a reused pid is never killed ----

def proc_starttime(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def proc_alive(pid, starttime):
    st = proc_starttime(pid)
    return st is not None and (starttime is None or st == starttime)


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_matching(needle):
    """Pids whose command line mentions needle (a session path)."""
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me and needle in proc_cmdline(int(d)):
            out.append(int(d))
    return out


def kill_pids(pids, sig=signal.SIGKILL, wait=5.0):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + wait
    for pid in pids:
        while proc_starttime(pid) is not None and time.monotonic() < deadline:
            try:  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.02)


# ---- mounts, netns, links, iptables ----

def mounts_under(path):
    """Mount points at or below path, deepest first."""
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].replace("\\040", " ")
                if mp == path or mp.startswith(path + "/"):
                    found.append(mp)
    except OSError:
        pass
    return sorted(set(found), key=lambda m: (-m.count("/"), m))


def umount_under(path):
    for _ in range(3):
        mps = mounts_under(path)
        if not mps:
            return
        for mp in mps:
            quiet(["umount", "-l", mp])


def link_exists(name):
    return os.path.exists("/sys/class/net/%s" % name)


def delete_link(name):
    if link_exists(name):
        quiet(["ip", "link", "del", name])


def delete_netns(name):
    path = os.path.join(NETNS_DIR, name)
    if os.path.exists(path):
        # Kill whatever still runs inside, so the namespace (and its veths) really goes away.
        pids = quiet(["ip", "netns", "pids", name])
        if pids and pids.stdout.strip():
            kill_pids([int(p) for p in pids.stdout.split()])
        quiet(["umount", "-l", path])
        quiet(["ip", "netns", "del", name])
        try:
            os.unlink(path)
        except OSError:
            pass


def iptables_cleanup(subnets, net_names=()):
    """Remove nat/filter rules that mention one of subnets (or a CNI comment naming one of net_names), and
    the per-container CNI chains they jump to. Shared CNI chains are removed only when empty and unused."""
    nets = [ipaddress.ip_network(s) for s in subnets]

    def mentions(rule):
        for ip in re.findall(r"(\d+\.\d+\.\d+\.\d+)(?:/\d+)?", rule):
            try:
                a = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if any(a in n for n in nets):
                return True
        return any(('name: \\"%s\\"' % n) in rule or ('name: "%s"' % n) in rule for n in net_names)

    for table in ("nat", "filter"):
        for _ in range(4):  # rules in a chain can reference chains created by other rules
            save = quiet(["iptables-save", "-t", table])
            if save is None or save.returncode != 0:
                break
            lines = save.stdout.splitlines()
            chains = [l[1:].split()[0] for l in lines if l.startswith(":")]
            rules = [l for l in lines if l.startswith("-A ")]
            doomed_chains = set()
            changed = False
            for r in rules:
                if not mentions(r):
                    continue
                m = re.search(r" -j (CNI-[A-Za-z0-9-]+)", r)
                if m and not m.group(1).startswith("CNI-HOSTPORT-") and m.group(1) != "CNI-FORWARD":
                    doomed_chains.add(m.group(1))
                if quiet(["sh", "-c", "iptables -t %s %s" % (table, r.replace("-A ", "-D ", 1))]):
                    changed = True
            # A per-container chain whose own rules mention the subnet but whose jump is already gone.
            for c in chains:
                if c.startswith("CNI-") and not c.startswith("CNI-HOSTPORT-") and c != "CNI-FORWARD":
                    body = [r for r in rules if r.startswith("-A %s " % c)]
                    referenced = any((" -j %s" % c) in r or (" -g %s" % c) in r for r in rules
                                     if not r.startswith("-A %s " % c))
                    if body and not referenced and all(mentions(r) or "224.0.0.0/4" in r for r in body):
                        doomed_chains.add(c)
            for c in doomed_chains:
                for r in rules:
                    if (" -j %s" % c) in r:
                        quiet(["sh", "-c", "iptables -t %s %s" % (table, r.replace("-A ", "-D ", 1))])
                quiet(["iptables", "-t", table, "-F", c])
                quiet(["iptables", "-t", table, "-X", c])
                changed = True
            if not changed:
                break
    # portmap's shared chains (CNI-HOSTPORT-*): drop them only when no port mapping is active anywhere on the
    # machine (no rule in CNI-HOSTPORT-DNAT, no per-container CNI-DN-* chain); portmap recreates them on demand.
    save = quiet(["iptables-save", "-t", "nat"])
    if save and save.returncode == 0:
        lines = save.stdout.splitlines()
        shared = [l[1:].split()[0] for l in lines if l.startswith(":CNI-HOSTPORT-")]
        active = any(l.startswith("-A CNI-HOSTPORT-DNAT ") or l.startswith(":CNI-DN-") for l in lines)
        if shared and not active:
            for l in lines:
                if l.startswith("-A ") and not l.startswith("-A CNI-HOSTPORT-") and \
                        any((" -j %s" % c) in l for c in shared):
                    quiet(["sh", "-c", "iptables -t nat %s" % l.replace("-A ", "-D ", 1)])
            for c in shared:
                quiet(["iptables", "-t", "nat", "-F", c])
            for c in shared:
                quiet(["iptables", "-t", "nat", "-X", c])


def cgroup_cleanup(ns_name):
    """Kill the processes in, and remove, every cgroup that containerd made for namespace ns_name."""
    base = "/sys/fs/cgroup"
    dirs = []
    roots = [base] + [os.path.join(base, c) for c in (os.listdir(base) if os.path.isdir(base) else [])]
    for root in roots:
        d = os.path.join(root, ns_name)
        if os.path.isdir(d):
            dirs.append(d)
    for d in dirs:
        for dirpath, _, files in os.walk(d):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        kill_pids([int(x) for x in f.read().split()], wait=2)
                except (OSError, ValueError):
                    pass
    for d in dirs:
        for dirpath, _, _ in sorted(os.walk(d), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


# ---- sessions ----

def _read_lines(path):
    try:
        with open(path) as f:
            return [l.strip() for l in f if l.strip()]
    except OSError:
        return []


class Session:
    """The run directory of one test process, and the ledger of what it created outside it."""

    def __init__(self):
        os.makedirs(RUN_ROOT, mode=0o755, exist_ok=True)
        self.tag = "%x%s" % (os.getpid(), secrets.token_hex(2))
        self.dir = os.path.join(RUN_ROOT, self.tag)
        os.makedirs(self.dir, mode=0o700)
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write("%d %s\n" % (os.getpid(), proc_starttime(os.getpid())))
        self.fixtures = []
        self.closed = False

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def record(self, kind, value):
        """Write down a resource before creating it (kinds: proc, bridge, netns, subnet, netname, ctrns)."""
        with open(self.path("ledger"), "a") as f:
            f.write("%s %s\n" % (kind, value))
            f.flush()
            os.fsync(f.fileno())

    def record_proc(self, pid):
        self.record("proc", "%d %s" % (pid, proc_starttime(pid)))

    def unique(self, prefix):
        return "%s-%s-%s" % (prefix, self.tag, secrets.token_hex(2))

    def close(self):
        if self.closed:
            return
        self.closed = True
        for fx in reversed(self.fixtures):
            try:
                fx.close()
            except Exception as e:  # teardown continues; clean_session below is the backstop
                log("teardown of %s failed: %s" % (type(fx).__name__, e))
        clean_session(self.dir)


_session = None


def session():
    """The current test process's Session (created on first use, torn down at exit or on a signal)."""
    global _session
    if _session is None:
        if os.geteuid() != 0:
            print("integration tests need root (network namespaces, containerd, iptables); skipping")
            sys.exit(77)
        _session = Session()
        atexit.register(_session.close)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _on_signal)
    return _session


def _on_signal(signum, frame):
    # Raise in the main thread so that context managers and atexit handlers run the teardown.
    signal.signal(signum, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def clean_session(d):
    """Remove everything the ledger in session directory d lists, then the directory itself."""
    ledger = [l.split(" ", 1) for l in _read_lines(os.path.join(d, "ledger"))]
    get = lambda kind: [v for k, v in ledger if k == kind]
    # 1. Containers: runc state kept under the session dir, plus cgroups of the session's namespaces.
    for runc_root in [os.path.join(d, "containerd", "runc")] + ["/run/containerd/runc/" + n for n in get("ctrns")]:
        if os.path.isdir(runc_root):
            for ns_dir in [runc_root] + [os.path.join(runc_root, x) for x in os.listdir(runc_root)]:
                lst = quiet(["runc", "--root", ns_dir, "list", "-q"])
                for cid in (lst.stdout.split() if lst and lst.returncode == 0 else []):
                    quiet(["runc", "--root", ns_dir, "kill", "-a", cid, "KILL"])
                    quiet(["runc", "--root", ns_dir, "delete", "--force", cid])
    for ns in get("ctrns"):
        cgroup_cleanup(ns)
        shutil.rmtree("/run/containerd/runc/" + ns, ignore_errors=True)
    # 2. Processes: recorded ones (pid + start time) and anything naming the session dir (containerd shims).
    procs = []
    for v in get("proc"):
        pid, st = v.split()
        if proc_alive(int(pid), None if st == "None" else st):
            procs.append(int(pid))
    procs += [p for p in pids_matching(d + "/") if p not in procs]
    kill_pids(procs)
    # 3. Network: netns, links, iptables.
    for ns in get("netns"):
        delete_netns(ns)
    for br in get("bridge"):
        delete_link(br)
    if get("subnet") or get("netname"):
        iptables_cleanup(get("subnet"), get("netname"))
    # 4. Mounts under the directory (overlay rootfs, shm, tmpmounts), then the directory.
    umount_under(d)
    if not mounts_under(d):
        shutil.rmtree(d, ignore_errors=True)
    else:
        log("mounts still under %s: %s" % (d, mounts_under(d)))


def _owner_alive(d):
    line = _read_lines(os.path.join(d, "owner"))
    if not line:
        # A session being created right now has no owner file for a moment: give it a grace period.
        try:
            return time.time() - os.stat(d).st_mtime < 10
        except OSError:
            return False
    pid, st = line[0].split()
    return pid != str(os.getpid()) and proc_alive(int(pid), st) or (
        pid == str(os.getpid()) and _session is not None and _session.dir == d)


def live_sessions():
    if not os.path.isdir(RUN_ROOT):
        return []
    return [os.path.join(RUN_ROOT, x) for x in os.listdir(RUN_ROOT)
            if os.path.isdir(os.path.join(RUN_ROOT, x)) and _owner_alive(os.path.join(RUN_ROOT, x))]


def cleanup_stale():
    """Clear whatever test runs that are no longer alive left behind. Safe while other runs are active."""
    if os.geteuid() != 0:
        return
    os.makedirs(RUN_ROOT, exist_ok=True)
    with open(os.path.join(RUN_ROOT, ".lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        live = live_sessions()
        for x in sorted(os.listdir(RUN_ROOT)):
            d = os.path.join(RUN_ROOT, x)
            if os.path.isdir(d) and d not in live:
                log("cleaning stale session %s" % d)
                clean_session(d)
        live_tags = [os.path.basename(d) for d in live]
        live_ledgers = [l for d in live for l in _read_lines(os.path.join(d, "ledger"))]
        # Sweep what a session created but did not manage to write down, by name.
        for name in (os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []):
            if name.startswith(TEST_PREFIX + "-") and not any("-%s-" % t in name for t in live_tags):
                delete_netns(name)
        for name in os.listdir("/sys/class/net"):
            if re.fullmatch(TEST_PREFIX + r"\d+", name) and ("bridge " + name) not in live_ledgers:
                delete_link(name)
        live_subnets = {l.split()[1] for l in live_ledgers if l.startswith("subnet ")}
        stale = ["%s.%d.0/24" % (TEST_SUBNET_BASE, x) for x in range(256)]
        stale = [s for s in stale if s not in live_subnets]
        iptables_cleanup(stale, ())


# ---- Redis ----

class RedisServer:
    """A private redis-server on a unix socket and a loopback TCP port.

    RedisServer(aof=False, user=None, password=None): user/password add an ACL user with all rights and
    turn the default user off. .url (TCP), .unix_url, .socket, .port; cli(*args); restart(); stop().
    """

    def __init__(self, aof=False, user=None, password=None, name="redis"):
        self.s = session()
        self.dir = self.s.path(self.s.unique(name))
        os.makedirs(self.dir)
        self.socket = os.path.join(self.dir, "redis.sock")
        self.port = free_port()
        self.aof = aof
        self.user, self.password = user, password
        self.proc = None
        self.s.fixtures.append(self)
        self._write_conf()
        self.start()

    def _write_conf(self):
        conf = [
            "bind 127.0.0.1", "port %d" % self.port, "unixsocket %s" % self.socket, "unixsocketperm 700",
            "dir %s" % self.dir, "daemonize no", "logfile %s/redis.log" % self.dir, "save \"\"",
            "dbfilename dump.rdb", "appendonly %s" % ("yes" if self.aof else "no"), "appendfsync everysec",
            "protected-mode no",
        ]
        if self.user:
            conf.append("user %s on >%s ~* &* +@all" % (self.user, self.password))
            conf.append("user default off")
        with open(os.path.join(self.dir, "redis.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")

    @property
    def url(self):
        auth = "%s:%s@" % (self.user, self.password) if self.user else ""
        return "redis://%s127.0.0.1:%d/0" % (auth, self.port)

    @property
    def unix_url(self):
        return "unix://%s" % self.socket

    def start(self, timeout=20):
        self.proc = subprocess.Popen(["redis-server", os.path.join(self.dir, "redis.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.s.record_proc(self.proc.pid)
        wait_until(lambda: self.proc.poll() is not None or self.ping(), timeout, "redis-server to answer PING")
        if self.proc.poll() is not None:
            raise RuntimeError("redis-server exited %d; see %s/redis.log" % (self.proc.returncode, self.dir))

    def cli(self, *args, check=True):
        cmd = ["redis-cli", "-s", self.socket]
        if self.user:
            cmd += ["--user", self.user, "--pass", self.password, "--no-auth-warning"]
        return run(cmd + [str(a) for a in args], check=check, timeout=30).stdout.strip()

    def ping(self):
        try:
            return self.cli("PING", check=False) == "PONG"
        except Exception:
            return False

    def restart(self):
        """Stop (saving the data set) and start again on the same socket and port."""
        if self.proc and self.proc.poll() is None:
            self.cli("SHUTDOWN", "SAVE", check=False)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.start()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    close = stop

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---- containerd ----

CONTAINERD_CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "{pause}"
  enable_selinux = false
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  Root = "{d}/runc"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
"""


class Containerd:
    """A private containerd: root, state, sockets, runc root and opt dir under the session.

    .dir, .socket, .address ("unix://..."); namespace() makes a fresh namespace (cleaned at teardown);
    ctr(*args, ns=None); run_container(ns, image, cid, *cmd) runs to completion and returns the CompletedProcess;
    stop(), kill(), restart(); contents(ns) lists containers/tasks/snapshots/images.
    """

    def __init__(self, cni_conf_dir=None, name="containerd", dir=None):
        self.s = session()
        self.dir = dir or self.s.path("containerd" if name == "containerd" else self.s.unique(name))
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "containerd.sock")
        self.address = "unix://" + self.socket
        self.runc_root = os.path.join(self.dir, "runc")
        self.cni_conf_dir = cni_conf_dir or os.path.join(self.dir, "cni")
        os.makedirs(self.cni_conf_dir, exist_ok=True)
        with open(os.path.join(self.dir, "config.toml"), "w") as f:
            f.write(CONTAINERD_CONFIG.format(d=self.dir, pause=PAUSE_IMAGE, cni_bin=CNI_PATH,
                                             cni_conf=self.cni_conf_dir))
        self.proc = None
        self.s.fixtures.append(self)
        self.start()

    def start(self, timeout=30):
        self.logf = open(os.path.join(self.dir, "containerd.log"), "ab")
        self.proc = subprocess.Popen(["containerd", "--config", os.path.join(self.dir, "config.toml")],
                                     stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        self.s.record_proc(self.proc.pid)

        def ready():
            if self.proc.poll() is not None:
                return True
            return os.path.exists(self.socket) and self.ctr("version", check=False).returncode == 0
        wait_until(ready, timeout, "containerd to answer on %s" % self.socket, interval=0.1)
        if self.proc.poll() is not None:
            raise RuntimeError("containerd exited %d; see %s/containerd.log" % (self.proc.returncode, self.dir))

    def ctr(self, *args, ns=None, check=True, timeout=120, input=None):
        cmd = ["ctr", "-a", self.socket]
        if ns:
            cmd += ["-n", ns]
        return run(cmd + [str(a) for a in args], check=check, timeout=timeout, input=input)

    def namespace(self, prefix="dbt"):
        ns = self.s.unique(prefix)
        self.s.record("ctrns", ns)
        return ns

    def run_container(self, ns, image, cid, *cmd, extra=(), check=True, timeout=120):
        """`ctr run --rm` with the session's runc root; returns the CompletedProcess."""
        return self.ctr("run", "--rm", "--runc-root", self.runc_root, *extra, image, cid, *cmd, ns=ns,
                        check=check, timeout=timeout)

    def import_image(self, ns, archive):
        return self.ctr("images", "import", archive, ns=ns, timeout=300)

    def contents(self, ns):
        """{'containers': [...], 'tasks': [...], 'snapshots': [...], 'images': [...]} for namespace ns."""
        out = {}
        for what, args in (("containers", ["containers", "ls", "-q"]), ("tasks", ["tasks", "ls", "-q"]),
                           ("snapshots", ["snapshots", "ls"]), ("images", ["images", "ls", "-q"])):
            lines = self.ctr(*args, ns=ns).stdout.splitlines()
            if what == "snapshots":
                lines = [l.split()[0] for l in lines[1:] if l.strip()]
            out[what] = [l for l in lines if l.strip()]
        return out

    def clear_namespace(self, ns):
        """Kill tasks, delete containers, images and snapshots, then the namespace itself."""
        for t in self.ctr("tasks", "ls", "-q", ns=ns, check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "KILL", t, ns=ns, check=False)
            self.ctr("tasks", "delete", "-f", t, ns=ns, check=False)
        for c in self.ctr("containers", "ls", "-q", ns=ns, check=False).stdout.split():
            self.ctr("containers", "delete", c, ns=ns, check=False)
        imgs = self.ctr("images", "ls", "-q", ns=ns, check=False).stdout.split()
        if imgs:
            self.ctr("images", "rm", "--sync", *imgs, ns=ns, check=False)
        for _ in range(5):  # snapshots go leaf first
            snaps = [l.split()[0] for l in self.ctr("snapshots", "ls", ns=ns, check=False).stdout.splitlines()[1:]
                     if l.strip()]
            if not snaps:
                break
            for sn in snaps:
                self.ctr("snapshots", "rm", sn, ns=ns, check=False)
        self.ctr("content", "prune", "references", ns=ns, check=False)
        self.ctr("namespaces", "remove", ns, check=False)

    def shims(self):
        return pids_matching("-address %s" % self.socket)

    def stop(self, timeout=15):
        """SIGTERM containerd and wait; shims of running containers stay (as with a real restart)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None
        return self.proc.returncode if self.proc else None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self):
        self.stop()
        self.start()

    def close(self):
        self.stop()
        kill_pids(self.shims())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- CNI ----

class CniNet:
    """A bridge + host-local + portmap + loopback conflist for a fresh test bridge and /24 subnet.

    .name (network name), .bridge (dbt<N>), .subnet, .gateway, .conf_dir (CNI_CONF_DIR), .conflist_path,
    .data_dir (host-local state); netns() makes a named netns (cleaned at teardown) and returns its path;
    add(netns_path, cid, ifname="eth0", port_mappings=None) / delete(...) exec the plugin chain like libcni.
    """

    def __init__(self, name=None):
        self.s = session()
        # The default name is unique per network: teardown removes iptables rules by CNI's "name:" comment, and
        # a name shared by concurrent runs would take the other runs' rules with it.
        self.name = name
        with open(os.path.join(RUN_ROOT, ".lock-net"), "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            used = set()
            for d in live_sessions():
                for l in _read_lines(os.path.join(d, "ledger")):
                    if l.startswith("subnet ") or l.startswith("bridge "):
                        used.add(l.split()[1])
            routes = run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
            addrs = run(["ip", "-4", "addr"], check=False).stdout
            cands = [x for x in range(10, 250)
                     if "%s.%d.0/24" % (TEST_SUBNET_BASE, x) not in used
                     and "%s.%d." % (TEST_SUBNET_BASE, x) not in routes + addrs]
            if not cands:
                raise RuntimeError("no free test subnet in %s.0.0/16" % TEST_SUBNET_BASE)
            x = random.choice(cands)
            self.subnet = "%s.%d.0/24" % (TEST_SUBNET_BASE, x)
            self.gateway = "%s.%d.1" % (TEST_SUBNET_BASE, x)
            n = next(i for i in range(100000) if "%s%d" % (TEST_PREFIX, i) not in used
                     and not link_exists("%s%d" % (TEST_PREFIX, i)))
            self.bridge = "%s%d" % (TEST_PREFIX, n)
            self.name = self.name or "dibba-test-" + self.bridge
            self.s.record("subnet", self.subnet)
            self.s.record("bridge", self.bridge)
            self.s.record("netname", self.name)
        base = self.s.path("cni-" + self.bridge)
        self.conf_dir = os.path.join(base, "net.d")
        self.data_dir = os.path.join(base, "ipam")
        os.makedirs(self.conf_dir)
        os.makedirs(self.data_dir)
        self.conflist = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": self.data_dir,
                          "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        }
        self.conflist_path = os.path.join(self.conf_dir, "10-%s.conflist" % self.name)
        with open(self.conflist_path, "w") as f:
            json.dump(self.conflist, f, indent=2)
        self.netns_names = []
        self.s.fixtures.append(self)

    def netns(self):
        name = self.s.unique(TEST_PREFIX)
        self.s.record("netns", name)
        run(["ip", "netns", "add", name])
        self.netns_names.append(name)
        return os.path.join(NETNS_DIR, name)

    def _exec(self, command, plugin, netns, cid, ifname, prev=None, port_mappings=None):
        conf = dict(plugin)
        conf["name"] = self.name
        conf["cniVersion"] = self.conflist["cniVersion"]
        if prev is not None:
            conf["prevResult"] = prev
        if port_mappings and plugin.get("capabilities", {}).get("portMappings"):
            conf["runtimeConfig"] = {"portMappings": port_mappings}
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns, CNI_IFNAME=ifname,
                   CNI_PATH=CNI_PATH)
        p = subprocess.run([os.path.join(CNI_PATH, plugin["type"])], input=json.dumps(conf), env=env,
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError("CNI %s %s failed: %s %s" % (command, plugin["type"], p.stdout, p.stderr))
        return json.loads(p.stdout) if p.stdout.strip() else prev

    def add(self, netns, cid, ifname="eth0", port_mappings=None):
        """CNI ADD through the chain; returns the final result (with .ips)."""
        prev = None
        for plugin in self.conflist["plugins"]:
            prev = self._exec("ADD", plugin, netns, cid, ifname, prev, port_mappings)
        return prev

    def delete(self, netns, cid, ifname="eth0", port_mappings=None):
        for plugin in reversed(self.conflist["plugins"]):
            self._exec("DEL", plugin, netns, cid, ifname, None, port_mappings)

    def close(self):
        for ns in self.netns_names:
            delete_netns(ns)
        delete_link(self.bridge)
        iptables_cleanup([self.subnet], [self.name])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- images ----

def pause_binary():
    return os.path.join(BUILD_DIR, "tools", "pause", "dibba-pause")


def build_images(build_dir=None):
    """Build the busybox and pause OCI archives once (cached in BUILD/it-images, rebuilt when an input
    changes). Returns {"busybox": path, "pause": path}."""
    build_dir = build_dir or BUILD_DIR
    out = os.path.join(build_dir, "it-images")
    os.makedirs(out, exist_ok=True)
    tool = os.path.join(SOURCE_DIR, "tools", "image", "build-oci.py")
    inputs = {"busybox": ["/bin/busybox", tool],
              "pause": [os.path.join(build_dir, "tools", "pause", "dibba-pause"), tool]}
    paths = {}
    with open(os.path.join(out, ".lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        for name, deps in inputs.items():
            path = os.path.join(out, name + ".tar")
            paths[name] = path
            if os.path.exists(path) and all(os.stat(path).st_mtime >= os.stat(d).st_mtime for d in deps):
                continue
            cmd = ["/usr/bin/python3", tool, name, "--out", path]
            if name == "pause":
                cmd += ["--pause-bin", deps[0]]
            run(cmd, timeout=120)
    return paths


def import_images(containerd, ns, which=("busybox", "pause")):
    paths = build_images()
    for w in which:
        containerd.import_image(ns, paths[w])
    return {"busybox": BUSYBOX_IMAGE, "pause": PAUSE_IMAGE}


# ---- secrets, config, daemons ----

def write_secret(path, nbytes=32):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(nbytes) + "\n")
    return path


def make_secrets(dir=None):
    """jwt.secret and routing.key (0600, 64 hex chars each) in dir; returns their paths."""
    d = dir or session().path("secrets")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return {"jwt_secret_file": write_secret(os.path.join(d, "jwt.secret")),
            "routing_key_file": write_secret(os.path.join(d, "routing.key"))}


def daemon_config(redis=None, containerd=None, cni=None, secrets_paths=None, api_port=None, **overrides):
    """A complete config dict for the daemons. overrides: dotted paths, e.g. {"log.level": "debug"}."""
    s = session()
    sp = secrets_paths or make_secrets()
    cfg = {
        "log": {"level": "debug"},
        "redis": {"url": redis.url if redis else "redis://127.0.0.1:1/0", "prefix": "dibba:%s:" % s.tag},
        "auth": {"jwt_secret_file": sp["jwt_secret_file"]},
        "task": {"routing_key_file": sp["routing_key_file"]},
        "api": {"listen": "127.0.0.1:%d" % (api_port or free_port()), "ui_dir": os.path.join(SOURCE_DIR, "ui")},
        "worker": {"hostname": socket.gethostname(), "state_dir": s.path("worker-state"),
                   "plugin_dir": os.path.join(BUILD_DIR, "plugins"),
                   "netns_dir": NETNS_DIR},
        "containerd": {"socket": containerd.address if containerd else "unix://" + s.path("no-containerd.sock"),
                       "namespace": "k8s.io", "snapshotter": "overlayfs"},
        "cni": {"path": CNI_PATH},
    }
    if cni:
        cfg["cni"].update({"conf_dir": cni.conf_dir, "net_name": cni.name, "ifname": "eth0"})
    for k, v in overrides.items():
        node = cfg
        parts = k.replace("__", ".").split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if v is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = v
    # The pods plugin reads only plugins.pods (+ redis): the same containerd and CNI, and its own directories
    # (after the overrides, so it sees theirs; plugins.pods.* overrides win). Its pod manager (create_pod & co.)
    # exists only with a cni section, so only when a CNI network is given.
    pods = pods_plugin_config(cfg, s.path("pods"), with_cni=bool(cni))
    pods.update(cfg.setdefault("plugins", {}).get("pods", {}))
    cfg["plugins"]["pods"] = pods
    return cfg


def pods_plugin_config(cfg, state, with_cni=True, logger=None):
    """plugins.pods for a daemon config: containerd and cni copied from the daemon's sections, worker.state_dir
    (CNI cache) and netns_dir, the pause image, dibba-logger, container logs and exec FIFOs under state."""
    out = {
        "containerd": dict(cfg["containerd"]),
        "worker": {"state_dir": cfg["worker"]["state_dir"], "netns_dir": cfg["worker"]["netns_dir"]},
        "pod": {"pause_image": PAUSE_IMAGE, "dir": os.path.join(state, "pods")},
        "logger": logger or os.path.join(BUILD_DIR, "tools", "logger", "dibba-logger"),
        "log_dir": os.path.join(state, "logs"),
        "state_dir": os.path.join(state, "exec"),
    }
    if with_cni:
        out["cni"] = dict(cfg["cni"])
    return out


def binary(name):
    """Path of a built daemon: binary("api") -> BUILD/daemons/api/dibba-api."""
    return os.path.join(BUILD_DIR, "daemons", name, "dibba-" + name)


class Daemon:
    """One Dibba daemon with a generated config file; JSON log in .log_path, stderr in .stderr_path.

    Daemon("api", cfg, env=None, args=()); start(wait_log=regex|None, port=int|None); log_lines();
    wait_log(regex); stop(sig=SIGTERM, expect=0) -> exit code; kill(); run_once(*args) -> CompletedProcess.
    """

    def __init__(self, name, config=None, env=None, args=()):
        self.s = session()
        self.name = name
        self.dir = self.s.path(self.s.unique(name))
        os.makedirs(self.dir)
        self.config_path = os.path.join(self.dir, "dibba.json")
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.config = dict(config) if config is not None else daemon_config()
        self.config.setdefault("log", {})["file"] = self.log_path
        with open(self.config_path, "w") as f:
            json.dump(self.config, f, indent=2)
        self.env = dict(os.environ)
        # The environment overrides the file (config.c); tests must not inherit a developer's settings.
        for k in list(self.env):
            if k.startswith("DIBBA_") and k not in ("DIBBA_BUILD_DIR", "DIBBA_SOURCE_DIR") or \
                    k.startswith("CONTAINERD_") or k.startswith("CNI_"):
                del self.env[k]
        self.env.update(env or {})
        self.args = list(args)
        self.proc = None
        self.s.fixtures.append(self)

    def cmd(self, *extra):
        return [binary(self.name), "--config", self.config_path] + self.args + list(extra)

    def run_once(self, *args, input=None, timeout=60):
        """Run the binary to completion (sub-commands, --version); returns the CompletedProcess."""
        return subprocess.run(self.cmd(*args), env=self.env, input=input, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, wait_log=r"\bstarted\b", port=None, timeout=30):
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.cmd(), env=self.env, stdin=subprocess.DEVNULL, stdout=self.stderr,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.s.record_proc(self.proc.pid)
        if wait_log:
            self.wait_log(wait_log, timeout)
        if port:
            wait_port(port, timeout)
        return self

    def log_lines(self):
        """Parsed JSON log records (non-JSON lines come back as {"raw": line})."""
        out = []
        try:
            with open(self.log_path) as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        out.append({"raw": line})
        except OSError:
            pass
        return out

    def stderr_text(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=30):
        rx = re.compile(pattern)

        def found():
            for rec in self.log_lines():
                if rx.search(rec.get("msg", rec.get("raw", ""))):
                    return rec
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError("dibba-%s exited %d before logging /%s/; stderr: %s; log: %s" % (
                    self.name, self.proc.returncode, pattern, self.stderr_text(), self.log_lines()[-5:]))
            return None
        return wait_until(found, timeout, "dibba-%s to log /%s/" % (self.name, pattern))

    def stop(self, sig=signal.SIGTERM, expect=0, timeout=20):
        """Send sig, wait, and return the exit code; raise if it differs from expect (None: don't check)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("dibba-%s did not stop within %ds of signal %d" % (self.name, timeout, sig))
        rc = self.proc.returncode
        if expect is not None and rc != expect:
            raise RuntimeError("dibba-%s exited %d, expected %d; stderr: %s" % (self.name, rc, expect,
                                                                                  self.stderr_text()[-2000:]))
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        self.kill()
        if getattr(self, "stderr", None):
            self.stderr.close()
            self.stderr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- leftovers check (used by tests and by tools/dev) ----

def leftovers(ignore_live=False):
    """Things a test run could leave behind on this machine. Empty when clean.

    With ignore_live, whatever belongs to a run that is still alive (another test run on the same machine, the
    caller's own session) is not counted: only what dead runs left behind is. CNI's per-container iptables
    chains cannot be attributed to a run, so they are not counted while any run is alive."""
    found = []
    live = live_sessions() if ignore_live else []
    live_dirs = [d + "/" for d in live]
    live_tags = [os.path.basename(d) for d in live]
    live_ledgers = [l for d in live for l in _read_lines(os.path.join(d, "ledger"))]
    live_subnets = {l.split()[1] for l in live_ledgers if l.startswith("subnet ")}
    for pid in pids_matching(RUN_ROOT + "/"):
        cmd = proc_cmdline(pid)
        if not any(d in cmd for d in live_dirs):
            found.append("process %d: %s" % (pid, cmd[:200]))
    for mp in mounts_under(RUN_ROOT):
        if not any((mp + "/").startswith(d) for d in live_dirs):
            found.append("mount %s" % mp)
    for name in (os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []):
        if name.startswith(TEST_PREFIX + "-") and not any("-%s-" % t in name for t in live_tags):
            found.append("netns %s" % name)
    for name in os.listdir("/sys/class/net"):
        if re.fullmatch(TEST_PREFIX + r"\d+", name) and ("bridge " + name) not in live_ledgers:
            found.append("link %s" % name)
    for table in ("nat", "filter"):
        save = quiet(["iptables-save", "-t", table])
        for l in (save.stdout.splitlines() if save else []):
            if any(sn.rsplit(".", 1)[0] + "." in l for sn in live_subnets):
                continue
            if TEST_SUBNET_BASE + "." in l or (l.startswith(":CNI-") and table == "nat" and not live):
                found.append("iptables %s: %s" % (table, l))
    return found


if __name__ == "__main__":
    # `python3 fixtures.py cleanup` clears stale sessions; `python3 fixtures.py leftovers` lists leftovers.
    what = sys.argv[1] if len(sys.argv) > 1 else "cleanup"
    if what == "cleanup":
        cleanup_stale()
    elif what == "leftovers":
        left = leftovers()
        print("\n".join(left))
        sys.exit(1 if left else 0)
    else:
        sys.exit("usage: fixtures.py cleanup|leftovers")
