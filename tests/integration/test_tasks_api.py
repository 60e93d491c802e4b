# SPDX-License-Identifier: Apache-2.0
"""dibba-api's task routes with real workers: node data from the right host, 404 for unknown hosts and tasks,
generic submit, nodes view, and a WebSocket watcher that survives a redis-server restart (AOF on)."""
import asyncio
import json
import unittest

import requests
import websockets

import fixtures
import taskkit


def setUpModule():
    fixtures.cleanup_stale()


class ApiTest(unittest.TestCase):
    def setUp(self):
        self.redis = fixtures.RedisServer(aof=True)
        self.st = taskkit.Stack(self.redis)
        self.st.worker("host-a")
        self.st.worker("host-b")
        self.st.start_api()

    def tearDown(self):
        self.st.close()
        self.redis.stop()

    def get(self, path, **kw):
        return requests.get(self.st.url + path, headers=self.st.h, timeout=10, **kw)

    def wait_task(self, tid):
        def done():
            r = self.get("/task/" + tid)
            return r.status_code == 200 and r.json()["status"] in ("SUCCESS", "FAILURE") and r.json()
        return fixtures.wait_until(done, 30, "task " + tid)

    def test_node_data_from_the_right_host(self):
        for host in ("host-a", "host-b"):
            r = self.get("/get_worker_node_data?host_name=" + host)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertEqual(r.json()["message"], "Task submitted successfully")
            rec = self.wait_task(r.json()["task_id"])
            self.assertEqual(rec["status"], "SUCCESS")
            self.assertEqual(rec["worker"], host)
            self.assertEqual(rec["result"]["hostname"], host)
            self.assertGreater(rec["result"]["logicalCpus"], 0)
        r = requests.get(self.st.url + "/get_worker_node_ip", headers=self.st.h, timeout=10,
                         data=json.dumps({"host_name": "host-a"}))
        self.assertEqual(r.status_code, 200, r.text)
        rec = self.wait_task(r.json()["task_id"])
        self.assertIn("addresses", rec["result"])
        r = self.get("/get_worker_usage_data?host_name=host-b")
        rec = self.wait_task(r.json()["task_id"])
        self.assertIn("cpuPercent", rec["result"])

    def test_unknown_host_and_task(self):
        self.assertEqual(self.get("/get_worker_node_data?host_name=nosuchhost").status_code, 404)
        self.assertEqual(self.get("/task/00000000-0000-4000-8000-000000000000").status_code, 404)
        self.assertEqual(requests.get(self.st.url + "/task/00000000-0000-4000-8000-000000000000",
                                      timeout=10).status_code, 401)
        nodes = self.get("/v1/nodes").json()["nodes"]
        self.assertEqual(sorted(n["hostname"] for n in nodes if n["online"]), ["host-a", "host-b"])
        self.assertTrue(self.get("/v1/nodes/host-a").json()["online"])
        self.assertEqual(self.get("/v1/nodes/nosuchhost").status_code, 404)

    def test_watch_across_redis_restart(self):
        r = requests.post(self.st.url + "/v1/tasks", headers=self.st.h, timeout=10,
                          json={"name": "sleep", "host": "host-a", "args": {"ms": 4000}})
        self.assertEqual(r.status_code, 202, r.text)
        tid = r.json()["task_id"]
        ids = self.st.submit("noop", host="host-b", count=1000)

        async def watch():
            uri = self.st.url.replace("http", "ws") + "/v1/tasks/%s/watch" % tid
            async with websockets.connect(uri, subprotocols=["dibba.bearer", self.st.token]) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
                await asyncio.get_running_loop().run_in_executor(None, self.redis.restart)
                seen = [first]
                async for msg in ws:
                    seen.append(json.loads(msg))
                return seen, ws.close_code
        seen, code = asyncio.run(asyncio.wait_for(watch(), 60))
        self.assertEqual(code, 1000)
        self.assertEqual(seen[-1]["status"], "SUCCESS")
        seqs = [m["seq"] for m in seen]
        self.assertEqual(seqs, sorted(set(seqs)))
        self.st.wait_states(ids, timeout=60)


if __name__ == "__main__":
    unittest.main(verbosity=2)
