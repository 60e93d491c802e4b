# SPDX-License-Identifier: Apache-2.0
"""Smoke test of the fixtures themselves: private redis-server and containerd, locally built images, one
container run from the busybox image, the pause image as PID 1, a CNI network, and a clean teardown."""
import os
import signal
import subprocess
import time
import unittest
import urllib.request

import fixtures


def setUpModule():
    fixtures.cleanup_stale()


class RedisTest(unittest.TestCase):
    def test_ping_unix_and_tcp_and_restart_keeps_data(self):
        with fixtures.RedisServer(aof=True) as r:
            self.assertEqual(r.cli("PING"), "PONG")
            out = fixtures.run(["redis-cli", "-h", "127.0.0.1", "-p", str(r.port), "PING"]).stdout.strip()
            self.assertEqual(out, "PONG")
            r.cli("SET", "dibba:it", "kept")
            r.restart()
            self.assertEqual(r.cli("GET", "dibba:it"), "kept")

    def test_acl_user(self):
        with fixtures.RedisServer(user="dibba", password="s3cret-s3cret") as r:
            self.assertEqual(r.cli("PING"), "PONG")
            anon = fixtures.run(["redis-cli", "-s", r.socket, "PING"], check=False)
            self.assertNotEqual(anon.stdout.strip(), "PONG")
            self.assertIn("dibba:s3cret-s3cret@", r.url)


class ContainerdTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ctrd = fixtures.Containerd()

    @classmethod
    def tearDownClass(cls):
        cls.ctrd.close()

    def test_busybox_container_prints_marker(self):
        ns = self.ctrd.namespace()
        images = fixtures.import_images(self.ctrd, ns, which=("busybox",))
        marker = "dibba-smoke-%d" % os.getpid()
        p = self.ctrd.run_container(ns, images["busybox"], "smoke1", "sh", "-c", "echo %s; id -u" % marker)
        self.assertEqual(p.stdout.split(), [marker, "0"])
        # As the unprivileged user that the image defines (ctr 1.6 has no --user; su needs /etc/passwd).
        p = self.ctrd.run_container(ns, images["busybox"], "smoke2", "su", "nobody", "-c", "id; touch /tmp/x")
        self.assertIn("uid=65534(nobody) gid=65534(nogroup)", p.stdout)
        # A failing command is reported as a failure (the fixture can fail).
        p = self.ctrd.run_container(ns, images["busybox"], "smoke3", "sh", "-c", "exit 7", check=False)
        self.assertNotEqual(p.returncode, 0)
        after_runs = self.ctrd.contents(ns)
        self.assertEqual(after_runs["containers"], [])
        self.assertEqual(after_runs["tasks"], [])
        self.ctrd.clear_namespace(ns)
        left = self.ctrd.ctr("namespaces", "ls", "-q").stdout.split()
        self.assertNotIn(ns, left)

    def test_pause_image_exits_zero_on_sigterm(self):
        ns = self.ctrd.namespace()
        images = fixtures.import_images(self.ctrd, ns, which=("pause",))
        # Attached `ctr run` exits with the task's exit status.
        proc = subprocess.Popen(["ctr", "-a", self.ctrd.socket, "-n", ns, "run", "--rm", "--runc-root",
                                 self.ctrd.runc_root, images["pause"], "pause1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            fixtures.wait_until(lambda: "RUNNING" in self.ctrd.ctr("tasks", "ls", ns=ns).stdout, 20, "pause to run")
            pid = self.ctrd.ctr("tasks", "ls", ns=ns).stdout.splitlines()[1].split()[1]
            self.assertIn("/pause", fixtures.proc_cmdline(int(pid)))
            self.ctrd.ctr("tasks", "kill", "-s", "SIGTERM", "pause1", ns=ns)
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 0, out)
        self.ctrd.clear_namespace(ns)

    def test_busybox_httpd_on_cni_bridge(self):
        """CNI ADD into a netns on a test bridge, httpd in a container in that netns, fetch from the host."""
        net = fixtures.CniNet()
        try:
            ns = self.ctrd.namespace()
            images = fixtures.import_images(self.ctrd, ns, which=("busybox",))
            netns = net.netns()
            res = net.add(netns, "web1")
            ip = res["ips"][0]["address"].split("/")[0]
            self.assertTrue(ip.startswith(net.subnet.rsplit(".", 2)[0]), (ip, net.subnet))
            self.ctrd.ctr("run", "-d", "--runc-root", self.ctrd.runc_root, "--with-ns", "network:" + netns,
                          images["busybox"], "web1", "httpd", "-f", "-p", "8080", "-h", "/www", ns=ns)
            body = fixtures.wait_until(lambda: _get("http://%s:8080/" % ip), 20, "httpd in the container")
            self.assertIn("hello from dibba busybox", body)
            self.ctrd.ctr("tasks", "kill", "-s", "SIGKILL", "web1", ns=ns)
            fixtures.wait_until(lambda: "RUNNING" not in self.ctrd.ctr("tasks", "ls", ns=ns).stdout, 20, "kill")
            self.ctrd.ctr("tasks", "delete", "web1", ns=ns)
            self.ctrd.ctr("containers", "delete", "web1", ns=ns)
            net.delete(netns, "web1")
            self.ctrd.clear_namespace(ns)
        finally:
            net.close()
        self.assertFalse(fixtures.link_exists(net.bridge))
        save = fixtures.run(["iptables-save", "-t", "nat"]).stdout
        self.assertNotIn(net.subnet.rsplit(".", 1)[0] + ".", save)


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


class NoLeftoversTest(unittest.TestCase):
    def test_zz_session_teardown_leaves_nothing(self):
        """A child session that starts redis + containerd + a container and is then SIGKILLed is cleared by
        cleanup_stale(), the way the next run clears a killed one."""
        import subprocess
        import sys
        code = r"""
import fixtures, sys
r = fixtures.RedisServer()
c = fixtures.Containerd()
n = fixtures.CniNet()
ns = c.namespace()
fixtures.import_images(c, ns, which=("busybox",))
netns = n.netns()
n.add(netns, "victim")
c.ctr("run", "-d", "--runc-root", c.runc_root, "--with-ns", "network:" + netns, fixtures.BUSYBOX_IMAGE,
      "victim", "sleep", "1000", ns=ns)
print(fixtures.session().dir, flush=True)
sys.stdin.read()
"""
        env = dict(os.environ)
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 env=env, text=True)
        sdir = child.stdout.readline().strip()
        self.assertTrue(sdir.startswith(fixtures.RUN_ROOT), sdir)
        self.assertTrue(fixtures.pids_matching(sdir + "/"))
        self.assertTrue(fixtures.mounts_under(sdir))
        child.send_signal(signal.SIGKILL)
        child.wait()
        self.assertTrue(os.path.isdir(sdir))
        fixtures.cleanup_stale()
        self.assertFalse(os.path.exists(sdir))
        self.assertEqual(fixtures.pids_matching(sdir + "/"), [])
        self.assertEqual(fixtures.mounts_under(sdir), [])
        left = fixtures.leftovers(ignore_live=True)  # our own session and concurrent runs are alive
        self.assertEqual(left, [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
