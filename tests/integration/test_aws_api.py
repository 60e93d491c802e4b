# SPDX-License-Identifier: Apache-2.0
"""The AWS routes end to end: dibba-api (admin routes, validation, 503 without an aws worker) -> the aws role
stream -> a dibba-worker with worker.roles=aws loading plugins/aws with its root config -> tests/integration/
fake_ec2.py (checks SigV4 itself), with a real private redis-server. Create with progress over the WebSocket,
the namespace mirror, terminate, a redelivery after kill -9 reusing the ClientToken, throttling, a capacity
failure, a wrong secret refused by the fake, and finally no credential or bootstrap key in any log or in Redis."""
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import unittest
import uuid

import jwt
import redis
import requests
import websockets

import fixtures
import taskkit

AKID = "AKIDDIBBAAPITEST0001"
SECRET = "dibbaApiTestSecret/0123456789+abcdefghijKL"
WRONG_SECRET = "wrongApiTestSecret/9876543210+zyxwvutsrqPO"
BOOTSTRAP_KEY = "bootstrapRoutingKey-5f0c2a9e7d1b4c3a"
REGION = "eu-west-1"
FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_ec2.py")
PLUGIN = os.path.join(fixtures.BUILD_DIR, "plugins", "aws", "aws.so")
PASSWORD = "correct horse battery staple\n"

LAUNCH = {"instance_type": "t3.micro", "ami_id": "ami-0123456789abcdef0", "key_name": "ops",
          "security_group_ids": ["sg-0123456789abcdef0", "sg-89abcdef"], "subnet_id": "subnet-0a1b2c3d",
          "namespace": "ns1", "min_count": 2, "max_count": 2, "tags": {"team": "infra"},
          "iam_instance_profile": "dibba-worker",
          "bootstrap": {"redis_url": "redis://10.0.0.2:6379/0", "routing_key": BOOTSTRAP_KEY}}


def setUpModule():
    global REDIS, ST, FAKE_PROC, FAKE_LOG, PORT, API, URL, ADMIN, OPER, WORKERS
    fixtures.cleanup_stale()
    if not os.path.exists(PLUGIN):
        raise unittest.SkipTest("built without the aws feature")
    REDIS = fixtures.RedisServer()
    s = fixtures.session()
    FAKE_LOG = s.path(s.unique("fake-ec2") + ".log")
    with open(FAKE_LOG, "wb") as err:
        FAKE_PROC = subprocess.Popen([sys.executable, FAKE, "--port", "0", "--access-key", AKID, "--secret", SECRET,
                                      "--region", REGION, "--pending-polls", "2", "--notfound", "1", "--verbose"],
                                     stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    s.record_proc(FAKE_PROC.pid)
    PORT = int(FAKE_PROC.stdout.readline().split()[1])
    ST = taskkit.Stack(REDIS, **{"log.level": "debug"})
    WORKERS = []
    port = fixtures.free_port()
    cfg = fixtures.daemon_config(redis=REDIS, secrets_paths=ST.secrets, api_port=port, **ST.base)
    API = fixtures.Daemon("api", cfg)
    for user, role in (("adm", "admin"), ("op", "operator")):
        p = API.run_once("user", "add", user, "--role", role, "--password-stdin", input=PASSWORD)
        assert p.returncode == 0, p.stderr
    API.start(port=port)
    URL = "http://127.0.0.1:%d" % port
    ADMIN, OPER = token("adm", "admin"), token("op", "operator")


def tearDownModule():
    # Graceful stops that must exit 0: under the asan setup a leak or a sanitizer report fails the test here.
    try:
        for w in WORKERS:
            if w.proc and w.proc.poll() is None:
                w.stop()
        API.stop()
    finally:
        for w in WORKERS:
            w.close()
        API.close()
    FAKE_PROC.terminate()
    FAKE_PROC.wait(timeout=10)
    REDIS.stop()


def token(user, role):
    with open(ST.secrets["jwt_secret_file"]) as f:
        key = f.read().strip()
    now = int(time.time())
    return jwt.encode({"sub": user, "role": role, "iat": now, "nbf": now, "exp": now + 3600,
                       "jti": uuid.uuid4().hex}, key, algorithm="HS256")


def call(method, path, tok=None, headers=None, **kw):
    h = dict(headers or {}, Authorization="Bearer " + (tok or ADMIN))
    return requests.request(method, URL + path, headers=h, timeout=10, **kw)


def fake(path, body=None):
    r = requests.post("http://127.0.0.1:%d%s" % (PORT, path), json=body, timeout=10) if body is not None or \
        path != "/_state" else requests.get("http://127.0.0.1:%d%s" % (PORT, path), timeout=10)
    r.raise_for_status()
    return r.json()


def ns_instances(ns):
    return {k: v for k, v in fake("/_state")["instances"].items() if v["tags"].get("Namespace") == ns}


def start_worker(host, roles="aws", secret=SECRET, plugins=("aws",)):
    """A worker with its own config; AWS credentials come from the environment, as in production."""
    o = dict(ST.base)
    o.update({"worker.hostname": host, "worker.roles": roles, "worker.plugins": list(plugins),
              "aws.poll_base_ms": 300, "aws.poll_cap_ms": 600, "aws.retry_base_ms": 20, "aws.retry_cap_ms": 200,
              "aws.notfound_window_ms": 60000, "aws.wait_timeout_ms": 60000})
    cfg = fixtures.daemon_config(redis=REDIS, secrets_paths=ST.secrets, **o)
    env = {"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION,
           "DIBBA_EC2_ENDPOINT": "http://127.0.0.1:%d" % PORT}
    w = fixtures.Daemon("worker", cfg, env=env)
    w.env.pop("AWS_DEFAULT_REGION", None)
    w.env.pop("AWS_SESSION_TOKEN", None)
    w.start(wait_log=r"consuming")
    WORKERS.append(w)
    wait_heartbeat(host)
    return w


def wait_heartbeat(host):
    fixtures.wait_until(lambda: (ST.r.zscore(ST.prefix + "nodes", host) or 0) > time.time() * 1000 - 1500, 10,
                        "a fresh heartbeat of " + host)


def submit_ok(r):
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert body["message"] == "Task submitted successfully", body
    return body["task_id"]


def wait_task(tid, states=("SUCCESS", "FAILURE"), timeout=60):
    def done():
        r = call("GET", "/task/" + tid)
        return r.status_code == 200 and r.json()["status"] in states and r.json()
    return fixtures.wait_until(done, timeout, "task %s to reach %s" % (tid, states), interval=0.1)


def watch(tid, timeout=60):
    """Every message of the task's WebSocket until the server closes it; (messages, close code)."""
    async def run():
        uri = URL.replace("http", "ws") + "/v1/tasks/%s/watch" % tid
        async with websockets.connect(uri, subprotocols=["dibba.bearer", ADMIN]) as ws:
            seen = []
            async for msg in ws:
                seen.append(json.loads(msg))
            return seen, ws.close_code
    return asyncio.run(asyncio.wait_for(run(), timeout))


class AwsApiTest(unittest.TestCase):
    def assert422(self, r, loc, type_=None):
        self.assertEqual(r.status_code, 422, r.text)
        d = r.json()["detail"][0]
        self.assertEqual(d["loc"], loc, r.text)
        if type_:
            self.assertEqual(d["type"], type_, r.text)

    def test_0_roles_validation_and_no_aws_worker(self):
        routes = [("POST", "/create-instances", {"json": LAUNCH}), ("POST", "/terminate-namespace",
                                                                     {"json": {"namespace": "ns1"}}),
                  ("GET", "/v1/namespaces/ns1/instances", {}), ("GET", "/aws/instances", {})]
        for method, path, kw in routes:
            self.assertEqual(call(method, path, OPER, **kw).status_code, 403, path)
            self.assertEqual(requests.request(method, URL + path, timeout=10, **kw).status_code, 401, path)

        # Unknown fields, credentials included, are refused by name and never echoed.
        r = call("POST", "/create-instances", json=dict(LAUNCH, aws_secret_access_key=SECRET))
        self.assert422(r, ["body", "aws_secret_access_key"], "extra_forbidden")
        self.assertNotIn(SECRET, r.text)
        r = call("POST", "/create-instances", json=dict(LAUNCH, bootstrap={"redis_url": "redis://h:1/0",
                                                                           "routing_key": BOOTSTRAP_KEY,
                                                                           "token": "x"}))
        self.assert422(r, ["body", "bootstrap", "token"], "extra_forbidden")
        self.assertNotIn(BOOTSTRAP_KEY, r.text)
        self.assert422(call("POST", "/terminate-namespace", json={"namespace": "ns1", "region": "us-east-1"}),
                       ["body", "region"], "extra_forbidden")
        self.assert422(call("GET", "/aws/instances?namespace=ns1&access_key=AK"), ["query", "access_key"],
                       "extra_forbidden")

        bad = [({"namespace": "NS_1"}, ["body", "namespace"]), ({"namespace": "x" * 64}, ["body", "namespace"]),
               ({"min_count": 3, "max_count": 2}, ["body", "max_count"]), ({"min_count": 0}, ["body", "min_count"]),
               ({"max_count": 101}, ["body", "max_count"]), ({"min_count": "2"}, ["body", "min_count"]),
               ({"min_count": True}, ["body", "min_count"]), ({"min_count": 1.5}, ["body", "min_count"]),
               ({"ami_id": "ami-xyz"}, ["body", "ami_id"]), ({"ami_id": 7}, ["body", "ami_id"]),
               ({"instance_type": "t3 micro"}, ["body", "instance_type"]),
               ({"subnet_id": "sg-0123456789"}, ["body", "subnet_id"]),
               ({"security_group_ids": []}, ["body", "security_group_ids"]),
               ({"security_group_ids": "sg-01234567"}, ["body", "security_group_ids"]),
               ({"security_group_ids": ["sg-01234567", "sg-1"]}, ["body", "security_group_ids", 1]),
               ({"security_group_ids": ["sg-01234567", "sg-01234567"]}, ["body", "security_group_ids", 1]),
               ({"key_name": ""}, ["body", "key_name"]), ({"key_name": "a\nb"}, ["body", "key_name"]),
               ({"tags": {"aws:owner": "x"}}, ["body", "tags", "aws:owner"]),
               ({"tags": {"Namespace": "x"}}, ["body", "tags", "Namespace"]),
               ({"tags": {"team": 1}}, ["body", "tags", "team"]), ({"tags": ["a"]}, ["body", "tags"]),
               ({"tags": {"k%d" % i: "v" for i in range(41)}}, ["body", "tags"]),
               ({"iam_instance_profile": "no spaces"}, ["body", "iam_instance_profile"]),
               ({"user_data": "x" * 16385, "bootstrap": None}, ["body", "user_data"]),
               ({"user_data": "#!/bin/sh\n"}, ["body", "bootstrap"]),
               ({"bootstrap": {"redis_url": "redis://h:1/0"}}, ["body", "bootstrap", "routing_key"]),
               ({"bootstrap": {"redis_url": "http://h/", "routing_key": BOOTSTRAP_KEY}},
                ["body", "bootstrap", "redis_url"]),
               ({"bootstrap": {"redis_url": "redis://h:1/0", "routing_key": "short"}},
                ["body", "bootstrap", "routing_key"]),
               ({"bootstrap": {"redis_url": "redis://h:1/0", "routing_key": BOOTSTRAP_KEY + "$(id)"}},
                ["body", "bootstrap", "routing_key"])]
        for change, loc in bad:
            r = call("POST", "/create-instances", json=dict(LAUNCH, **change))
            self.assert422(r, loc)
            self.assertNotIn(BOOTSTRAP_KEY, r.text)
        for field in ("instance_type", "ami_id", "key_name", "security_group_ids", "subnet_id", "namespace",
                      "min_count", "max_count"):
            body = dict(LAUNCH)
            del body[field]
            self.assert422(call("POST", "/create-instances", json=body), ["body", field], "missing")
        self.assert422(call("POST", "/create-instances", json=[LAUNCH]), ["body"])
        self.assertEqual(call("POST", "/create-instances", data="{", headers={"Content-Type": "application/json"}).status_code, 422)
        self.assert422(call("POST", "/terminate-namespace", json={}), ["body", "namespace"], "missing")
        self.assert422(call("GET", "/v1/namespaces/Bad_NS/instances"), ["path", "ns"])
        r = call("GET", "/v1/namespaces/ns1/instances")
        self.assertEqual((r.status_code, r.json()), (200, {"namespace": "ns1", "instances": []}))

        # A live worker without the aws role does not count: 503 instead of a task pending forever.
        start_worker("plain-1", roles="control", plugins=("node",))
        keys_before = set(ST.r.keys(ST.prefix + "task:*"))
        for method, path, kw in [routes[0], routes[1], routes[3]]:
            r = call(method, path, **kw)
            self.assertEqual(r.status_code, 503, r.text)
            self.assertEqual(r.json(), {"detail": "no worker serves the aws role"})
        self.assertEqual(set(ST.r.keys(ST.prefix + "task:*")), keys_before)

    def test_1_create_two_instances_with_progress(self):
        start_worker("aws-1")
        tid = submit_ok(call("POST", "/create-instances", json=LAUNCH))
        seen, code = watch(tid)
        self.assertEqual(code, 1000)
        self.assertEqual(seen[-1]["status"], "SUCCESS", seen)
        seqs = [m["seq"] for m in seen]
        self.assertEqual(seqs, sorted(set(seqs)))
        progress = [m for m in seen if m["status"] == "PROGRESS"]
        self.assertTrue(progress, seen)
        self.assertTrue(any(m["progress"]["message"] == "2/2 instances running" for m in progress), progress)

        rec = call("GET", "/task/" + tid).json()
        self.assertEqual((rec["status"], rec["worker"], rec["name"]), ("SUCCESS", "aws-1", "create_worker_nodes"))
        got = {i["instanceId"]: i for i in rec["result"]["instances"]}
        self.assertEqual(len(got), 2)

        r = call("GET", "/v1/namespaces/ns1/instances")
        self.assertEqual(r.status_code, 200, r.text)
        listed = r.json()["instances"]
        self.assertEqual([i["instance_id"] for i in listed], sorted(got))
        for i in listed:
            self.assertEqual(i["state"], "running")
            self.assertEqual(i["private_ip"], got[i["instance_id"]]["privateIP"])
            self.assertTrue(i["private_ip"].startswith("10.0."))

        inst = ns_instances("ns1")
        self.assertEqual(set(inst), set(got))
        one = next(iter(inst.values()))
        self.assertEqual(one["tags"], {"Namespace": "ns1", "Name": "dibba-ns1", "dibba:managed": "true",
                                       "team": "infra"})
        self.assertEqual(one["security_groups"], LAUNCH["security_group_ids"])
        self.assertEqual((one["key_name"], one["subnet_id"], one["iam_instance_profile"]),
                         ("ops", "subnet-0a1b2c3d", "dibba-worker"))
        # The caller's bootstrap key reached the plugin (inside the envelope) and EC2 (in the user data) ...
        self.assertIn("DIBBA_ROUTING_KEY=" + BOOTSTRAP_KEY, base64.b64decode(one["user_data"]).decode())
        # ... but the task record never held it, and the stream entry is gone once the result was stored.
        raw = ST.raw.hgetall((ST.prefix + "task:" + tid).encode())
        self.assertFalse(any(BOOTSTRAP_KEY.encode() in v for v in raw.values()))
        self.assertNotIn(b"e", raw)
        streams = [k for k in ST.r.keys(ST.prefix + "q:*")]
        self.assertTrue(streams)
        self.assertEqual(sum(ST.r.xlen(k) for k in streams), 0)

    def test_2_redelivery_after_kill_reuses_the_client_token(self):
        # Hold the task right after RunInstances: DescribeInstances answers NotFound until the faults are cleared.
        fake("/_fault", {"action": "DescribeInstances", "code": "InvalidInstanceID.NotFound",
                         "message": "not yet", "count": 100000, "status": 400})
        tid = submit_ok(call("POST", "/create-instances", json=dict(LAUNCH, namespace="redo", bootstrap=None)))
        key = ST.prefix + "ns:redo:instances"
        fixtures.wait_until(lambda: len(ns_instances("redo")) == 2 and ST.r.hlen(key) == 2, 30,
                            "RunInstances to be answered and recorded")
        w = next(w for w in WORKERS if w.config["worker"]["hostname"] == "aws-1")
        w.close()  # SIGKILL (and its stderr file, which start() opens again)
        runs = fake("/_state")["calls"].count("RunInstances")
        fake("/_clear_faults", {})
        w.start(wait_log=r"consuming")  # same host: it reads its own pending entry again
        rec = wait_task(tid)
        self.assertEqual(rec["status"], "SUCCESS", rec)
        st = fake("/_state")
        self.assertEqual(st["calls"].count("RunInstances"), runs + 1)  # sent again, with the same ClientToken
        self.assertEqual(len(ns_instances("redo")), 2)
        self.assertEqual({i["instanceId"] for i in rec["result"]["instances"]}, set(ns_instances("redo")))
        self.assertEqual(len({i["client_token"] for i in ns_instances("redo").values()}), 1)
        self.assertEqual(ST.r.hlen(key), 2)

    def test_3_throttling_is_retried(self):
        fake("/_fault", {"action": "RunInstances", "code": "RequestLimitExceeded",
                         "message": "Request limit exceeded.", "count": 3})
        before = len(fake("/_state")["calls"])
        tid = submit_ok(call("POST", "/create-instances", json=dict(LAUNCH, namespace="thr", min_count=1,
                                                                    max_count=1, bootstrap=None)))
        rec = wait_task(tid)
        self.assertEqual(rec["status"], "SUCCESS", rec)
        self.assertEqual(fake("/_state")["calls"][before:before + 4], ["RunInstances"] * 4)
        self.assertEqual(len(ns_instances("thr")), 1)

    def test_4_capacity_error_fails_the_task(self):
        fake("/_fault", {"action": "RunInstances", "code": "InsufficientInstanceCapacity",
                         "message": "We currently do not have sufficient t3.micro capacity.", "count": 1})
        tid = submit_ok(call("POST", "/create-instances", json=dict(LAUNCH, namespace="cap")))
        rec = wait_task(tid)
        self.assertEqual(rec["status"], "FAILURE", rec)
        self.assertEqual(rec["error"]["code"], "InsufficientInstanceCapacity")
        self.assertIn("sufficient t3.micro capacity", rec["error"]["message"])
        self.assertEqual(ns_instances("cap"), {})
        self.assertEqual(call("GET", "/v1/namespaces/cap/instances").json()["instances"], [])

    def test_5_wrong_secret_is_refused_by_the_fake(self):
        good = next(w for w in WORKERS if w.config["worker"]["hostname"] == "aws-1")
        good.stop()
        good.close()
        bad = start_worker("aws-bad", secret=WRONG_SECRET)
        before = fake("/_state")["auth_failures"]
        tid = submit_ok(call("GET", "/aws/instances?namespace=ns1"))
        rec = wait_task(tid)
        self.assertEqual(rec["status"], "FAILURE", rec)
        self.assertEqual(rec["error"]["code"], "SignatureDoesNotMatch")
        self.assertEqual(rec["worker"], "aws-bad")
        self.assertEqual(fake("/_state")["auth_failures"], before + 1)
        bad.stop()
        bad.close()
        good.start(wait_log=r"consuming")
        wait_heartbeat("aws-1")
        rec = wait_task(submit_ok(call("GET", "/aws/instances?namespace=ns1")))
        self.assertEqual(rec["status"], "SUCCESS", rec)
        self.assertEqual(rec["worker"], "aws-1")
        self.assertEqual(len(rec["result"]["instances"]), 2)

    def test_6_terminate_namespace(self):
        ids = set(ns_instances("ns1"))
        self.assertEqual(len(ids), 2)
        rec = wait_task(submit_ok(call("POST", "/terminate-namespace", json={"namespace": "ns1"})))
        self.assertEqual(rec["status"], "SUCCESS", rec)
        self.assertEqual({i["instanceId"] for i in rec["result"]["instances"]}, ids)
        for i in ns_instances("ns1").values():
            self.assertIn(i["state"], ("shutting-down", "terminated"))
        self.assertEqual(call("GET", "/v1/namespaces/ns1/instances").json()["instances"], [])
        self.assertEqual(ST.r.exists(ST.prefix + "ns:ns1:instances"), 0)

    def test_9_no_secret_in_logs_or_redis(self):
        # Uncompressed, so that a grep of the RDB file means something (LZF would hide a match).
        REDIS.cli("CONFIG", "SET", "rdbcompression", "no")
        REDIS.cli("SAVE")
        blobs = []
        paths = [API.log_path, API.stderr_path, FAKE_LOG, os.path.join(REDIS.dir, "redis.log")]
        for w in WORKERS:
            paths += [w.log_path, w.stderr_path]
        for path in paths:
            with open(path, "rb") as f:
                blobs.append((path, f.read()))
        worker_log = b"".join(b for p, b in blobs if "worker" in p)
        self.assertIn(b"RunInstances", worker_log)  # the logs are not empty
        for key in ST.raw.scan_iter(count=1000):
            t = ST.raw.type(key)
            if t == b"hash":
                blobs.append((key, repr(ST.raw.hgetall(key)).encode()))
            elif t == b"stream":
                blobs.append((key, repr(ST.raw.xrange(key)).encode()))
            else:
                blobs.append((key, ST.raw.dump(key) or b""))
        with open(os.path.join(REDIS.dir, "dump.rdb"), "rb") as f:
            rdb = f.read()
        blobs.append(("dump.rdb", rdb))
        self.assertIn(b"ec2.internal", rdb)  # the mirror's values are readable in the file
        audit = ST.r.xrange(ST.prefix + "audit")
        self.assertTrue(any(a[1]["route"] == "/create-instances" and a[1]["user"] == "adm" for a in audit))
        for name, blob in blobs:
            for needle in (AKID, SECRET, WRONG_SECRET, BOOTSTRAP_KEY):
                self.assertNotIn(needle.encode(), blob, "%s found in %s" % (needle, name))


if __name__ == "__main__":
    unittest.main(verbosity=2)
