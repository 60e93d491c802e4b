# SPDX-License-Identifier: Apache-2.0
"""The pod API end to end: dibba-api + dibba-worker (node + pods plugins) on a private redis-server, a private
containerd with runc and a bridge CNI network. Create (two containers: httpd + a fetcher over localhost), the
pod IP answers from the host, logs and exec through the API, list filters, idempotent create, 409, 422s naming
the field, 404 for an unknown host, 403 for an operator's runtime overrides, a worker restart that re-adopts
the pod without duplicates, delete leaving nothing behind, and the seed's POST /create-pods."""
import json
import os
import time
import unittest
import urllib.request
import uuid

import jwt
import redis
import requests

import fixtures

HTTPD = ["httpd", "-f", "-p", "80", "-h", "/www"]
FETCH = ["sh", "-c", "while true; do wget -q -O - http://127.0.0.1/; sleep 1; done"]
PAGE = "hello from dibba busybox"
# dibba-beat's task id namespace (daemons/beat/fire.c): task id = uuid5(NS, "<prefix>beat:<job>:<slot_ms>").
BEAT_NS = uuid.UUID(bytes=bytes([0x5b, 0x0e, 0x6d, 0x3a, 0x2c, 0x41, 0x4f, 0x8e,
                                 0x9a, 0x57, 0x1d, 0x2f, 0x3c, 0x4b, 0x5a, 0x69]))


def setUpModule():
    fixtures.cleanup_stale()


class PodsApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        c = cls
        c.redis = fixtures.RedisServer()
        c.ctrd = fixtures.Containerd()
        c.net = fixtures.CniNet()
        c.ns = c.ctrd.namespace()
        fixtures.import_images(c.ctrd, c.ns)
        c.secrets = fixtures.make_secrets()
        c.host = "podhost-" + fixtures.session().tag
        c.port = fixtures.free_port()
        base = {"worker.plugins": ["node", "pods"], "worker.heartbeat_seconds": 1, "worker.hostname": c.host,
                "containerd.namespace": c.ns, "log.level": "info", "plugins.pods.pod.desired_reconcile_ms": 2000}
        c.wcfg = fixtures.daemon_config(redis=c.redis, containerd=c.ctrd, cni=c.net, secrets_paths=c.secrets, **base)
        c.acfg = fixtures.daemon_config(redis=c.redis, containerd=c.ctrd, cni=c.net, secrets_paths=c.secrets,
                                        api_port=c.port, **base)
        c.prefix = c.wcfg["redis"]["prefix"]
        c.r = redis.Redis(unix_socket_path=c.redis.socket, decode_responses=True)
        c.worker = fixtures.Daemon("worker", c.wcfg).start(wait_log=r"consuming")
        c.api = fixtures.Daemon("api", c.acfg)
        for user, role in (("op", "operator"), ("boss", "admin")):
            p = c.api.run_once("user", "add", user, "--role", role, "--password-stdin",
                               input="correct horse battery staple\n")
            assert p.returncode == 0, p.stderr
        c.api.start(port=c.port)
        c.url = "http://127.0.0.1:%d" % c.port
        with open(c.secrets["jwt_secret_file"]) as f:
            key = f.read().strip()
        now = int(time.time())

        def tok(user, role):
            return {"Authorization": "Bearer " + jwt.encode(
                {"sub": user, "role": role, "iat": now, "nbf": now, "exp": now + 3600, "jti": uuid.uuid4().hex},
                key, algorithm="HS256")}
        c.op, c.admin = tok("op", "operator"), tok("boss", "admin")
        fixtures.wait_until(lambda: "pods" in (c.r.hget(c.prefix + "node:" + c.host, "plugins") or ""), 15,
                            "the worker's heartbeat with the pods plugin")

    @classmethod
    def tearDownClass(cls):
        c = cls
        try:
            c.api.stop()     # exit 0 on SIGTERM (leaks fail it under the asan setup)
            c.worker.stop()
        finally:
            c.api.close()
            c.worker.close()
            c.ctrd.clear_namespace(c.ns)
            c.ctrd.close()
            c.net.close()
            c.redis.stop()

    # ---- helpers ----

    def call(self, method, path, h=None, **kw):
        return requests.request(method, self.url + path, headers=h or self.op, timeout=60, **kw)

    def pod(self, name, containers, labels=None, node=None, **spec):
        p = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": name, "namespace": "demo", "labels": labels or {}},
             "spec": dict({"containers": containers}, **spec)}
        if node is not None:
            p["spec"]["nodeName"] = node
        return p

    def worker_warnings(self):
        """The worker's warn/error log lines: what a failed task step said."""
        return [l for l in self.worker.log_lines() if l.get("level") in ("warn", "error")][-20:]

    def wait_task(self, tid, timeout=120):
        def done():
            r = self.call("GET", "/v1/tasks/" + tid)
            return r.status_code == 200 and r.json()["status"] in ("SUCCESS", "FAILURE") and r.json()
        return fixtures.wait_until(done, timeout, "task " + tid, interval=0.2)

    def wait_running(self, ns, name, timeout=120):
        def running():
            r = self.call("GET", "/v1/pods/%s/%s" % (ns, name))
            return r.status_code == 200 and r.json()["status"].get("phase") == "Running" and \
                r.json()["status"].get("podIP") and r.json()
        return fixtures.wait_until(running, timeout, "pod %s/%s Running" % (ns, name), interval=0.3)

    def app_containers(self):
        return [c for c in self.ctrd.ctr("containers", "ls", "-q", ns=self.ns).stdout.split() if c]

    def assert_422(self, r, loc):
        self.assertEqual(r.status_code, 422, r.text)
        self.assertEqual(r.json()["detail"][0]["loc"], loc, r.text)

    # ---- tests (in name order: one pod goes through its life) ----

    def test_1_create_run_logs_exec_list(self):
        body = self.pod("web", [{"name": "httpd", "image": fixtures.BUSYBOX_IMAGE, "command": HTTPD},
                                {"name": "fetch", "image": fixtures.BUSYBOX_IMAGE, "command": FETCH}],
                        labels={"app": "web", "tier": "front"}, node=self.host)
        r = self.call("POST", "/v1/pods", json=body)
        self.assertEqual(r.status_code, 202, r.text)
        self.assertEqual(r.json()["host"], self.host)
        rec = self.wait_task(r.json()["task_id"])
        self.assertEqual(rec["status"], "SUCCESS", (rec, self.worker_warnings()))
        pod = self.wait_running("demo", "web")
        self.assertEqual(pod["spec"]["nodeName"], self.host)
        self.assertEqual([c["name"] for c in pod["status"]["containerStatuses"]], ["httpd", "fetch"])
        ip = pod["status"]["podIP"]
        with urllib.request.urlopen("http://%s/" % ip, timeout=10) as resp:
            self.assertIn(PAGE, resp.read().decode())
        # the fetcher reached httpd over the pod's localhost: its log has the page
        fixtures.wait_until(lambda: PAGE in self.call("GET", "/v1/pods/demo/web/logs?container=fetch").text, 30,
                            "the fetcher's log to show the page", interval=0.5)
        r = self.call("GET", "/v1/pods/demo/web/logs?container=fetch&tailLines=1")
        self.assertEqual(r.status_code, 200)
        self.assertTrue(r.headers["Content-Type"].startswith("text/plain"))
        self.assertEqual(len(r.text.splitlines()), 1)
        # follow: chunked, new lines keep coming
        with requests.get(self.url + "/v1/pods/demo/web/logs?container=fetch&tailLines=1&follow=true",
                          headers=self.op, stream=True, timeout=30) as s:
            self.assertEqual(s.status_code, 200)
            self.assertEqual(s.headers.get("Transfer-Encoding"), "chunked")
            got, t0 = "", time.monotonic()
            for chunk in s.iter_content(chunk_size=None, decode_unicode=True):
                got += chunk
                if got.count(PAGE) >= 3 or time.monotonic() - t0 > 20:
                    break
            self.assertGreaterEqual(got.count(PAGE), 3, got)
        r = self.call("POST", "/v1/pods/demo/web/exec", json={"container": "httpd", "command": ["cat", "/www/index.html"]})
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["exit_code"], 0)
        self.assertIn(PAGE, r.json()["stdout"])
        r = self.call("POST", "/v1/pods/demo/web/exec", json={"command": ["sh", "-c", "echo oops >&2; exit 3"]})
        self.assertEqual((r.json()["exit_code"], r.json()["stderr"]), (3, "oops\n"), r.text)
        self.assertEqual(self.call("POST", "/v1/pods/demo/nope/exec", json={"command": ["true"]}).status_code, 404)
        self.assertEqual(self.call("GET", "/v1/pods/demo/nope/logs").status_code, 404)
        self.assertEqual(self.call("GET", "/v1/pods/demo/nope").status_code, 404)
        # list filters
        names = lambda q: [(p["metadata"]["namespace"], p["metadata"]["name"])
                           for p in self.call("GET", "/v1/pods" + q).json()["items"]]
        self.assertIn(("demo", "web"), names(""))
        self.assertEqual(names("?namespace=demo"), [("demo", "web")])
        self.assertEqual(names("?namespace=other"), [])
        self.assertEqual(names("?host=" + self.host), [("demo", "web")])
        self.assertEqual(names("?host=nosuchhost"), [])
        self.assertEqual(names("?labelSelector=app%3Dweb,tier!%3Dback"), [("demo", "web")])
        self.assertEqual(names("?labelSelector=app%3Ddb"), [])
        self.assert_422(self.call("GET", "/v1/pods?labelSelector=%3D%3D"), ["query", "labelSelector"])
        # viewer-level read of the record: status is in Redis, with the host
        h = self.r.hgetall(self.prefix + "pod:demo/web")
        self.assertEqual(h["host"], self.host)
        self.assertEqual(json.loads(h["status"])["phase"], "Running")
        # same spec again: idempotent, no new task; a different spec: 409
        r = self.call("POST", "/v1/pods", json=body)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(len(self.app_containers()), 3)  # pause + 2
        body2 = json.loads(json.dumps(body))
        body2["spec"]["containers"][1]["command"] = ["sleep", "1000"]
        r = self.call("POST", "/v1/pods", json=body2)
        self.assertEqual(r.status_code, 409, r.text)
        self.assertIn("detail", r.json())

    def test_2_validation_and_roles(self):
        ok = {"name": "c", "image": fixtures.BUSYBOX_IMAGE, "command": ["sleep", "100"]}
        self.assert_422(self.call("POST", "/v1/pods", json=dict(self.pod("x", [ok]), bogus=1)), ["body", "bogus"])
        self.assert_422(self.call("POST", "/v1/pods", json=self.pod("x", [dict(ok, imagee="y")])),
                        ["body", "spec", "containers", 0, "imagee"])
        self.assert_422(self.call("POST", "/v1/pods", json=self.pod("x", [{"name": "c"}])),
                        ["body", "spec", "containers", 0, "image"])
        self.assert_422(self.call("POST", "/v1/pods", json=self.pod("Bad_Name", [ok])), ["body", "metadata", "name"])
        self.assert_422(self.call("POST", "/v1/pods", json=self.pod("x", [])), ["body", "spec", "containers"])
        self.assert_422(self.call("POST", "/v1/pods", json=self.pod("x", [ok, ok])),
                        ["body", "spec", "containers", 1, "name"])
        r = self.call("POST", "/v1/pods", json=self.pod("x", [ok], node="nosuchhost"))
        self.assertEqual(r.status_code, 404, r.text)
        self.assertIn("detail", r.json())
        rt = dict(self.pod("rt", [ok], node=self.host), runtime={"cniNetwork": self.net.name})
        r = self.call("POST", "/v1/pods", json=rt)
        self.assertEqual(r.status_code, 403, r.text)
        self.assertEqual(self.call("POST", "/create-pods", json={"host_name": self.host, "containers": [ok],
                                                                 "runtime": {"cniIfname": "eth0"}}).status_code, 403)
        self.assertEqual(requests.post(self.url + "/v1/pods", json=rt, timeout=10).status_code, 401)
        self.assertFalse(self.r.exists(self.prefix + "pod:demo/rt"))
        # an admin may: the pod runs on the network it names (the same one here)
        r = self.call("POST", "/v1/pods", h=self.admin, json=rt)
        self.assertEqual(r.status_code, 202, r.text)
        self.wait_running("demo", "rt")
        r = self.call("DELETE", "/v1/pods/demo/rt")
        self.assertEqual(r.status_code, 202, r.text)
        rec = self.wait_task(r.json()["task_id"])
        self.assertEqual(rec["status"], "SUCCESS", (rec, self.worker_warnings()))

    def test_3_worker_restart_readopts(self):
        before = sorted(self.app_containers())
        ip = self.call("GET", "/v1/pods/demo/web").json()["status"]["podIP"]
        self.worker.stop()  # exit 0
        self.__class__.worker = fixtures.Daemon("worker", self.wcfg).start(wait_log=r"consuming")
        time.sleep(5)  # a few desired-set reconciles (every 2 s)
        pod = self.wait_running("demo", "web")
        self.assertEqual(pod["status"]["podIP"], ip)
        self.assertEqual(sorted(self.app_containers()), before)  # re-adopted, nothing duplicated
        with urllib.request.urlopen("http://%s/" % ip, timeout=10) as resp:
            self.assertIn(PAGE, resp.read().decode())

    def test_4_delete_leaves_nothing(self):
        pod = self.call("GET", "/v1/pods/demo/web").json()
        ip = pod["status"]["podIP"]
        key = [c for c in self.app_containers() if c.count("-") == 1][0][3:]  # the sandbox dp-<key>
        self.assertTrue(os.path.exists(os.path.join(fixtures.NETNS_DIR, "dibba-" + key)))
        r = self.call("DELETE", "/v1/pods/demo/web")
        self.assertEqual(r.status_code, 202, r.text)
        rec = self.wait_task(r.json()["task_id"])
        self.assertEqual(rec["status"], "SUCCESS", (rec, self.worker_warnings()))
        self.assertFalse(self.r.exists(self.prefix + "pod:demo/web"))
        self.assertFalse(self.r.sismember(self.prefix + "pods", "demo/web"))
        self.assertEqual(self.call("GET", "/v1/pods/demo/web").status_code, 404)
        c = self.ctrd.contents(self.ns)
        self.assertEqual((c["containers"], c["tasks"]), ([], []))
        self.assertEqual([s for s in c["snapshots"] if s.startswith("dp-")], [])
        self.assertFalse(os.path.exists(os.path.join(fixtures.NETNS_DIR, "dibba-" + key)))
        cache = os.path.join(self.wcfg["worker"]["state_dir"], "cni")
        self.assertEqual([f for f in (os.listdir(cache) if os.path.isdir(cache) else []) if key in f], [])
        ipam = os.path.join(self.net.data_dir, self.net.name)
        self.assertNotIn(ip, os.listdir(ipam) if os.path.isdir(ipam) else [])
        veths = fixtures.run(["ip", "-o", "link", "show", "master", self.net.bridge], check=False).stdout
        self.assertEqual(veths.strip(), "")
        r = self.call("DELETE", "/v1/pods/demo/web")
        self.assertEqual(r.status_code, 200, r.text)

    def test_5_seed_create_pods(self):
        r = self.call("POST", "/create-pods", json={
            "host_name": self.host, "namespace": "seed",
            "containers": [{"name": "seedweb", "image": fixtures.BUSYBOX_IMAGE, "command": ["sleep", "1000"], "args": [],
                            "env": {"GREETING": "hi"}, "mounts": [],
                            "resources": {"cpu_millicores": 250, "memory": 64 << 20}}]})
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["message"], "Task submitted successfully")
        rec = self.wait_task(r.json()["task_id"])
        self.assertEqual(rec["status"], "SUCCESS", (rec, self.worker_warnings()))
        pod = self.wait_running("seed", "seedweb")
        self.assertEqual(pod["spec"]["containers"][0]["resources"]["limits"], {"cpu": "250m", "memory": "67108864"})
        r = self.call("POST", "/v1/pods/seed/seedweb/exec", json={"command": ["sh", "-c", "for f in /proc/[0-9]*/environ; do tr '\\000' '\\n' <$f; done"]})
        self.assertIn("GREETING=hi\n", r.json()["stdout"], r.text)  # pid 1 is pause (shared pid namespace): any process
        self.assert_422(self.call("POST", "/create-pods", json={"host_name": self.host, "containers": [
            {"name": "a", "image": "x", "gpu": 1}]}), ["body", "containers", 0, "gpu"])
        self.assert_422(self.call("POST", "/create-pods", json={"containers": []}), ["body", "host_name"])
        r = self.call("DELETE", "/v1/pods/seed/seedweb")
        rec = self.wait_task(r.json()["task_id"])
        self.assertEqual(rec["status"], "SUCCESS", (rec, self.worker_warnings()))
        self.assertEqual(self.app_containers(), [])

    def test_6_placement_and_default_namespace(self):
        # no nodeName, no namespace: placed on the one online pods host, in "default" (unset protobuf strings)
        body = {"metadata": {"name": "placed"},
                "spec": {"containers": [{"name": "c", "image": fixtures.BUSYBOX_IMAGE, "command": ["sleep", "1000"]}]}}
        r = self.call("POST", "/v1/pods", json=body)
        self.assertEqual(r.status_code, 202, r.text)
        self.assertEqual((r.json()["host"], r.json()["namespace"]), (self.host, "default"))
        self.assertEqual(self.wait_running("default", "placed")["spec"]["nodeName"], self.host)
        self.assertEqual(self.call("POST", "/v1/pods", json=body).status_code, 200)
        r = self.call("DELETE", "/v1/pods/default/placed")
        rec = self.wait_task(r.json()["task_id"])
        self.assertEqual(rec["status"], "SUCCESS", (rec, self.worker_warnings()))

    def test_7_beat_pod_reconcile(self):
        # dibba-beat's built-in beat.pod-reconcile asks every online pods host for a reconcile_pods task.
        body = self.pod("kept", [{"name": "c", "image": fixtures.BUSYBOX_IMAGE, "command": ["sleep", "1000"]}],
                        node=self.host)
        self.assertEqual(self.wait_task(self.call("POST", "/v1/pods", json=body).json()["task_id"])["status"],
                         "SUCCESS")
        self.wait_running("demo", "kept")
        bcfg = fixtures.daemon_config(redis=self.redis, secrets_paths=self.secrets, **{
            "worker.heartbeat_seconds": 1, "log.level": "info", "beat.builtin.node_offline.enabled": False,
            "beat.builtin.task_purge.enabled": False, "beat.builtin.pod_reconcile.every": "2s"})

        def reconciles():
            return [k[len(self.prefix) + 5:] for k in self.r.scan_iter(self.prefix + "task:*", count=1000)
                    if k.count(":") == self.prefix.count(":") + 1 and self.r.hget(k, "name") == "reconcile_pods"]
        beat = fixtures.Daemon("beat", bcfg)
        try:
            beat.start(wait_log=r"jobs loaded")
            try:
                done = fixtures.wait_until(lambda: [t for t in reconciles() if self.r.hget(
                    self.prefix + "task:" + t, "state") == "SUCCESS"], 20, "a reconcile_pods task to succeed")
            except TimeoutError:
                self.fail(([self.r.hgetall(self.prefix + "task:" + t) for t in reconciles()][:3],
                           [l for l in beat.log_lines() if l.get("level") != "debug"][-10:], self.worker_warnings()))
            rec = self.wait_task(done[0])
            self.assertEqual(rec["status"], "SUCCESS", (rec, self.worker_warnings()))
            res = rec["result"]
            self.assertEqual((res["reconciled"], res["host"], res["desired"], res["deleting"]),
                             (True, self.host, 1, 0), rec)
            self.assertGreaterEqual(res["pods"], 1, rec)
            # The id is deterministic per host and slot (a retried or competing firing resubmits the same task).
            slot_ms = int(self.r.hget(self.prefix + "beat:job:beat.pod-reconcile", "last_slot_ms"))
            ids = {str(uuid.uuid5(BEAT_NS, "%sbeat:beat.pod-reconcile/%s:%d" % (self.prefix, self.host, s)))
                   for s in range(slot_ms - 20000, slot_ms + 1, 2000)}
            self.assertTrue(set(reconciles()) <= ids, (reconciles(), slot_ms))
            self.assertEqual(self.wait_running("demo", "kept")["spec"]["nodeName"], self.host)  # untouched
            beat.stop()
        finally:
            beat.close()
        # Disabled: the job is not loaded and no more tasks come.
        bcfg["beat"]["builtin"]["pod_reconcile"]["enabled"] = False
        beat = fixtures.Daemon("beat", bcfg)
        try:
            beat.start(wait_log=r"jobs loaded")
            fixtures.wait_until(lambda: all(self.r.hget(self.prefix + "task:" + t, "state") in
                                            ("SUCCESS", "FAILURE") for t in reconciles()), 20, "reconciles to end")
            before = set(reconciles())
            time.sleep(5)
            self.assertEqual(set(reconciles()), before)
            self.assertNotIn("beat.pod-reconcile", self.r.hkeys(self.prefix + "beat:jobs"))
            beat.stop()
        finally:
            beat.close()
        r = self.call("DELETE", "/v1/pods/demo/kept")
        self.assertEqual(self.wait_task(r.json()["task_id"])["status"], "SUCCESS")


if __name__ == "__main__":
    unittest.main(verbosity=2)
