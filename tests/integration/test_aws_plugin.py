# SPDX-License-Identifier: Apache-2.0
"""plugins/aws through the dibba_task_run driver (build/plugins/aws/dibba-aws-run) against tests/integration/
fake_ec2.py, which checks every SigV4 signature on its own, and a real private redis-server: create, idempotent
re-run, throttling retries, capacity errors, a wrong secret refused, terminate, and no credential in any log or in
Redis."""
import base64
import json
import os
import subprocess
import sys
import unittest
import urllib.request

import fixtures

AKID = "AKIDDIBBATEST0000001"
SECRET = "dibbaTestSecret/0123456789+abcdefghijKLMN"
RUN = os.path.join(fixtures.BUILD_DIR, "plugins", "aws", "dibba-aws-run")
PLUGIN = os.path.join(fixtures.BUILD_DIR, "plugins", "aws", "aws.so")
FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_ec2.py")

LAUNCH = {"namespace": "ns1", "instance_type": "t3.micro", "ami_id": "ami-0123456789abcdef0", "key_name": "ops",
          "security_group_ids": ["sg-1", "sg-2"], "subnet_id": "subnet-9", "min_count": 2, "max_count": 2,
          "tags": {"team": "infra"}, "iam_instance_profile": "dibba-worker",
          "bootstrap": {"redis_url": "redis://10.0.0.2:6379/0", "routing_key": "routing-key-0123456789abcdef"}}


def setUpModule():
    global REDIS, FAKE_PROC, PORT, DIR, LOGS
    if not os.path.exists(RUN):
        raise unittest.SkipTest("built without the aws feature")
    fixtures.cleanup_stale()
    REDIS = fixtures.RedisServer()
    s = fixtures.session()
    DIR = s.path(s.unique("aws"))
    os.makedirs(DIR)
    FAKE_PROC = subprocess.Popen([sys.executable, FAKE, "--port", "0", "--access-key", AKID, "--secret", SECRET,
                                  "--region", "eu-west-1", "--pending-polls", "2", "--notfound", "1"],
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
    s.record_proc(FAKE_PROC.pid)
    PORT = int(FAKE_PROC.stdout.readline().split()[1])
    LOGS = []


def tearDownModule():
    FAKE_PROC.terminate()
    FAKE_PROC.wait(timeout=10)
    REDIS.stop()


def fake(path, body=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (PORT, path),
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def run_task(task, task_id, args, secret=SECRET):
    """Run one task; returns (done line, progress lines). Logs (file and stderr) are kept for the scrub test."""
    log = os.path.join(DIR, "%s-%d.log" % (task_id, len(LOGS)))
    cfg = os.path.join(DIR, "cfg.json")
    with open(cfg, "w") as f:
        json.dump({"log": {"file": log, "level": "debug"},
                   "aws": {"poll_base_ms": 50, "poll_cap_ms": 200, "retry_base_ms": 20, "retry_cap_ms": 200,
                           "notfound_window_ms": 10000, "wait_timeout_ms": 20000}}, f)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=AKID, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION="eu-west-1",
               DIBBA_EC2_ENDPOINT="http://127.0.0.1:%d" % PORT, DIBBA_REDIS_URL=REDIS.unix_url)
    env.pop("AWS_DEFAULT_REGION", None)
    env.pop("AWS_SESSION_TOKEN", None)
    p = subprocess.run([RUN, "--plugin", PLUGIN, "--config", cfg, "--task", task, "--id", task_id,
                        "--args", json.dumps(args)], env=env, capture_output=True, text=True, timeout=60)
    LOGS.append(log)
    with open(log + ".stderr", "w") as f:
        f.write(p.stderr)
    LOGS.append(log + ".stderr")
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    assert lines and lines[-1]["event"] == "done", (p.returncode, p.stdout, p.stderr)
    assert p.returncode in (0, 1), (p.returncode, p.stderr)  # 3 would mean handles left on the loop
    return lines[-1], [l for l in lines if l["event"] == "progress"]


def ns_instances(ns):
    st = fake("/_state")
    return {k: v for k, v in st["instances"].items() if v["tags"].get("Namespace") == ns}


class AwsPluginTest(unittest.TestCase):
    def test_1_create_is_idempotent_and_recorded(self):
        done, progress = run_task("create_worker_nodes", "task-create-1", LAUNCH)
        self.assertEqual(done["state"], "SUCCESS", done)
        got = {i["instanceId"]: i for i in done["result"]["instances"]}
        self.assertEqual(len(got), 2)
        for i in got.values():
            self.assertEqual(i["state"], "running")
            self.assertTrue(i["privateIP"].startswith("10.0."))
            self.assertTrue(i["privateDns"].endswith(".ec2.internal"))
        msgs = [p.get("message", "") for p in progress]
        self.assertTrue(any("launched 2 instances" in m for m in msgs), msgs)
        self.assertTrue(any(m == "2/2 instances running" for m in msgs), msgs)

        # Redis: one hash entry per instance with its address.
        h = REDIS.cli("HGETALL", "dibba:ns:ns1:instances").splitlines()
        rec = dict(zip(h[0::2], (json.loads(v) for v in h[1::2])))
        self.assertEqual(set(rec), set(got))
        for iid, v in rec.items():
            self.assertEqual(v["state"], "running")
            self.assertEqual(v["private_ip"], got[iid]["privateIP"])
            self.assertEqual(v["private_dns"], got[iid]["privateDns"])
            self.assertTrue(v["launched_at"])

        # What EC2 was asked for.
        inst = ns_instances("ns1")
        self.assertEqual(set(inst), set(got))
        one = next(iter(inst.values()))
        self.assertEqual(one["tags"], {"Namespace": "ns1", "Name": "dibba-ns1", "dibba:managed": "true",
                                       "team": "infra"})
        self.assertEqual(one["security_groups"], ["sg-1", "sg-2"])
        self.assertEqual((one["key_name"], one["subnet_id"], one["iam_instance_profile"]),
                         ("ops", "subnet-9", "dibba-worker"))
        self.assertTrue(one["client_token"].startswith("dibba-"))
        ud = base64.b64decode(one["user_data"]).decode()
        self.assertTrue(ud.startswith("#cloud-config\n"))
        self.assertIn("DIBBA_REDIS_URL=redis://10.0.0.2:6379/0", ud)
        self.assertIn("dibba-worker", ud)

        # The same task id again (a redelivery): no new instance.
        done2, _ = run_task("create_worker_nodes", "task-create-1", LAUNCH)
        self.assertEqual(done2["state"], "SUCCESS", done2)
        self.assertEqual({i["instanceId"] for i in done2["result"]["instances"]}, set(got))
        self.assertEqual(set(ns_instances("ns1")), set(got))

    def test_2_throttling_is_retried(self):
        fake("/_fault", {"action": "RunInstances", "code": "RequestLimitExceeded",
                         "message": "Request limit exceeded.", "count": 3})
        calls_before = len(fake("/_state")["calls"])
        done, _ = run_task("create_worker_nodes", "task-throttle", dict(LAUNCH, namespace="ns2", min_count=1,
                                                                        max_count=1, bootstrap=None))
        self.assertEqual(done["state"], "SUCCESS", done)
        calls = fake("/_state")["calls"][calls_before:]
        self.assertEqual(calls[:4], ["RunInstances"] * 4)
        self.assertEqual(len(ns_instances("ns2")), 1)

    def test_3_capacity_error_fails_with_code_and_message(self):
        fake("/_fault", {"action": "RunInstances", "code": "InsufficientInstanceCapacity",
                         "message": "We currently do not have sufficient t3.micro capacity.", "count": 1})
        done, _ = run_task("create_worker_nodes", "task-capacity", dict(LAUNCH, namespace="ns3"))
        self.assertEqual(done["state"], "FAILURE")
        self.assertEqual(done["error_code"], "InsufficientInstanceCapacity")
        self.assertIn("sufficient t3.micro capacity", done["error_message"])
        self.assertEqual(ns_instances("ns3"), {})

    def test_4_wrong_secret_is_refused_by_the_fake(self):
        before = fake("/_state")["auth_failures"]
        done, _ = run_task("get_ec2_instances", "task-badsig", {"namespace": "ns1"},
                           secret="not-the-right-secret-0123456789")
        self.assertEqual(done["state"], "FAILURE")
        self.assertEqual(done["error_code"], "SignatureDoesNotMatch")
        self.assertEqual(fake("/_state")["auth_failures"], before + 1)
        # ... and the right one is accepted.
        done, _ = run_task("get_ec2_instances", "task-goodsig", {"namespace": "ns1"})
        self.assertEqual(done["state"], "SUCCESS", done)
        self.assertEqual(len(done["result"]["instances"]), 2)

    def test_5_terminate_removes_everywhere(self):
        done, progress = run_task("terminate_worker_node", "task-term-1", {"namespace": "ns1"})
        self.assertEqual(done["state"], "SUCCESS", done)
        self.assertEqual(len(done["result"]["instances"]), 2)
        for i in ns_instances("ns1").values():
            self.assertIn(i["state"], ("shutting-down", "terminated"))
        self.assertEqual(REDIS.cli("EXISTS", "dibba:ns:ns1:instances"), "0")
        self.assertTrue(progress)
        # Again: nothing left to do, still a success.
        done, _ = run_task("terminate_worker_node", "task-term-2", {"namespace": "ns1"})
        self.assertEqual(done["state"], "SUCCESS", done)

    def test_6_partial_terminate_failure_is_reported_per_instance(self):
        fake("/_fault", {"action": "TerminateInstances", "code": "UnauthorizedOperation",
                         "message": "You are not authorized to perform this operation.", "count": 1})
        done, _ = run_task("terminate_worker_node", "task-term-ns2", {"namespace": "ns2"})
        self.assertEqual(done["state"], "FAILURE")
        self.assertEqual(done["error_code"], "UnauthorizedOperation")
        self.assertIn("1 of 1 instances not terminated", done["error_message"])
        self.assertEqual(REDIS.cli("HLEN", "dibba:ns:ns2:instances"), "1")  # still known

    def test_9_no_credentials_in_logs_or_redis(self):
        # LZF compression would hide a match in the RDB file: save it uncompressed.
        REDIS.cli("CONFIG", "SET", "rdbcompression", "no")
        REDIS.cli("SAVE")
        blobs = []
        for path in LOGS:
            with open(path, "rb") as f:
                blobs.append((path, f.read()))
        self.assertTrue(any(b for _, b in blobs))
        for key in REDIS.cli("--scan").splitlines():
            t = REDIS.cli("TYPE", key)
            dump = REDIS.cli("HGETALL", key) if t == "hash" else REDIS.cli("DUMP", key)
            blobs.append((key, dump.encode()))
        with open(os.path.join(REDIS.dir, "dump.rdb"), "rb") as f:
            blobs.append(("dump.rdb", f.read()))
        for name, blob in blobs:
            for needle in (AKID, SECRET, "not-the-right-secret-0123456789"):
                self.assertNotIn(needle.encode(), blob, "%s found in %s" % (needle, name))


if __name__ == "__main__":
    unittest.main(verbosity=2)
