# SPDX-License-Identifier: Apache-2.0
"""dibba-api's control-plane surface against a real private redis-server: OAuth2 password login at POST /token
driven exactly as a stock FastAPI/`requests` client does it, bearer tokens on protected routes, roles, users CRUD
with immediate revocation, login rate limits, /readyz following Redis, /metrics, the audit stream, the users file
watch, /openapi.json, the echo WebSocket, and a clean SIGTERM."""
import base64
import json
import os
import signal
import socket
import struct
import time
import unittest

import jwt
import requests

import fixtures

ADMIN_PW = "admin-password-1"


def setUpModule():
    global REDIS, API, BASE, CFG
    fixtures.cleanup_stale()
    REDIS = fixtures.RedisServer()
    CFG = fixtures.daemon_config(redis=REDIS, **{"auth.login_addr_failures": 1000, "log.level": "info"})
    API = fixtures.Daemon("api", CFG)
    p = API.run_once("user", "add", "admin", "--role", "admin", "--password-stdin", input=ADMIN_PW + "\n")
    assert p.returncode == 0, p.stderr
    API.start(wait_log=r"\blistening\b")
    BASE = "http://%s" % CFG["api"]["listen"]
    fixtures.wait_port(int(CFG["api"]["listen"].rsplit(":", 1)[1]))


def tearDownModule():
    API.close()
    REDIS.stop()


def login(username, password, base=None):
    # What FastAPI's OAuth2PasswordRequestForm clients send.
    return requests.post((base or BASE) + "/token",
                         data={"username": username, "password": password, "grant_type": "password", "scope": ""},
                         timeout=10)


def token_for(username, password):
    r = login(username, password)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()["access_token"]


def bearer(tok):
    return {"Authorization": "Bearer %s" % tok}


def admin_headers():
    return bearer(token_for("admin", ADMIN_PW))


def users_file():
    return os.path.join(API.dir, "users.json")


def ws_echo(port, tok, message):
    """A minimal RFC 6455 client: upgrade with the bearer token, send one masked text frame, read the echo."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /v1/ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
               % (key, tok)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        s.close()
        return status, None
    payload = message.encode()
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    rest = head.split(b"\r\n\r\n", 1)[1]
    while len(rest) < 2 + len(payload):
        rest += s.recv(4096)
    s.close()
    return status, rest[2:2 + (rest[1] & 0x7F)].decode()


class ApiAuthTest(unittest.TestCase):
    def test_a_oauth2_password_client(self):
        r = login("admin", ADMIN_PW)
        self.assertEqual(r.status_code, 200, r.text)
        body = r.json()
        self.assertEqual(body["token_type"], "bearer")
        self.assertGreater(body["expires_in"], 0)
        self.assertEqual(r.headers.get("Cache-Control"), "no-store")
        me = requests.get(BASE + "/v1/me", headers=bearer(body["access_token"]), timeout=10)
        self.assertEqual(me.status_code, 200, me.text)
        self.assertEqual(me.json(), {"sub": "admin", "role": "admin"})
        # No token, a garbage token: 401 with the Bearer challenge.
        for h in ({}, bearer("not.a.token")):
            r = requests.get(BASE + "/v1/me", headers=h, timeout=10)
            self.assertEqual(r.status_code, 401)
            self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer")

    def test_b_wrong_password_and_bad_forms(self):
        r = login("admin", "wrong-password")
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.json(), {"detail": "Incorrect username or password"})
        self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer")
        r = login("nobody-here", "whatever-pw")
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.json(), {"detail": "Incorrect username or password"})
        r = requests.post(BASE + "/token", data={"username": "admin", "password": ADMIN_PW,
                                                 "grant_type": "client_credentials"}, timeout=10)
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"], "unsupported_grant_type")
        r = requests.post(BASE + "/token", data={"username": "admin"}, timeout=10)
        self.assertEqual(r.status_code, 422)
        self.assertEqual(r.json()["detail"][0]["loc"], ["body", "password"])
        r = requests.post(BASE + "/token", data={"username": "admin", "password": "x" * 5000}, timeout=10)
        self.assertEqual(r.status_code, 400)
        self.assertIn("detail", r.json())
        r = requests.post(BASE + "/token", data=b"username=%zz", timeout=10,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(r.status_code, 400)
        r = requests.post(BASE + "/token", json={"username": "admin", "password": ADMIN_PW}, timeout=10)
        self.assertEqual(r.status_code, 415)

    def test_c_rate_limit(self):
        codes = [login("victim", "bad-password-%d" % i).status_code for i in range(5)]
        self.assertEqual(codes, [401] * 5)
        r = login("victim", "bad-password-6")
        self.assertEqual(r.status_code, 429, r.text)
        self.assertGreaterEqual(int(r.headers["Retry-After"]), 1)
        # Only that user is limited.
        self.assertEqual(login("admin", ADMIN_PW).status_code, 200)

    def test_d_roles_and_users_crud(self):
        adm = admin_headers()
        r = requests.post(BASE + "/v1/users", json={"name": "vera", "password": "vera-password", "role": "viewer"},
                          headers=adm, timeout=30)
        self.assertEqual(r.status_code, 201, r.text)
        self.assertEqual(r.json()["role"], "viewer")
        self.assertNotIn("password_hash", r.json())
        vtok = token_for("vera", "vera-password")
        self.assertEqual(requests.get(BASE + "/v1/me", headers=bearer(vtok), timeout=10).json(),
                         {"sub": "vera", "role": "viewer"})
        r = requests.post(BASE + "/v1/users", json={"name": "x1", "password": "x1-password", "role": "viewer"},
                          headers=bearer(vtok), timeout=10)
        self.assertEqual(r.status_code, 403)
        r = requests.post(BASE + "/v1/users", json={"name": "vera", "password": "vera-password", "role": "viewer"},
                          headers=adm, timeout=30)
        self.assertEqual(r.status_code, 409)
        for bad, field in (({"name": "a b", "password": "p" * 10, "role": "viewer"}, "name"),
                           ({"name": "ok1", "password": "short", "role": "viewer"}, "password"),
                           ({"name": "ok1", "password": "p" * 10, "role": "root"}, "role"),
                           ({"name": "ok1", "password": "p" * 10}, "role"),
                           ({"name": "ok1", "password": "p" * 10, "role": "viewer", "enabled": "yes"}, "enabled")):
            r = requests.post(BASE + "/v1/users", json=bad, headers=adm, timeout=10)
            self.assertEqual(r.status_code, 422, (bad, r.text))
            self.assertEqual(r.json()["detail"][0]["loc"], ["body", field])
        users = requests.get(BASE + "/v1/users", headers=adm, timeout=10).json()
        self.assertEqual(sorted(u["name"] for u in users if u["name"] in ("admin", "vera")), ["admin", "vera"])
        self.assertFalse(any("password_hash" in u for u in users))
        self.assertEqual(requests.get(BASE + "/v1/users/vera", headers=adm, timeout=10).json()["name"], "vera")
        self.assertEqual(requests.get(BASE + "/v1/users/nope", headers=adm, timeout=10).status_code, 404)
        # Promote: the old viewer token names the old role, so it stops working at once.
        r = requests.patch(BASE + "/v1/users/vera", json={"role": "operator"}, headers=adm, timeout=10)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["role"], "operator")
        self.assertEqual(requests.get(BASE + "/v1/me", headers=bearer(vtok), timeout=10).status_code, 401)
        r = requests.patch(BASE + "/v1/users/vera", json={"password": "vera-password-2"}, headers=adm, timeout=30)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(login("vera", "vera-password").status_code, 401)
        otok = token_for("vera", "vera-password-2")
        self.assertEqual(requests.get(BASE + "/v1/me", headers=bearer(otok), timeout=10).status_code, 200)
        # Delete: the existing token fails with 401 immediately.
        r = requests.delete(BASE + "/v1/users/vera", headers=adm, timeout=10)
        self.assertEqual(r.status_code, 204)
        r = requests.get(BASE + "/v1/me", headers=bearer(otok), timeout=10)
        self.assertEqual(r.status_code, 401)
        self.assertEqual(requests.delete(BASE + "/v1/users/vera", headers=adm, timeout=10).status_code, 404)
        # The last enabled admin can be neither deleted, demoted nor disabled.
        self.assertEqual(requests.delete(BASE + "/v1/users/admin", headers=adm, timeout=10).status_code, 409)
        self.assertEqual(requests.patch(BASE + "/v1/users/admin", json={"role": "viewer"}, headers=adm,
                                        timeout=10).status_code, 409)
        self.assertEqual(requests.patch(BASE + "/v1/users/admin", json={"enabled": False}, headers=adm,
                                        timeout=10).status_code, 409)
        self.assertEqual(requests.get(BASE + "/v1/me", headers=adm, timeout=10).status_code, 200)
        # The users file on disk follows.
        with open(users_file()) as f:
            names = [u["name"] for u in json.load(f)["users"]]
        self.assertNotIn("vera", names)

    def test_e_foreign_secret_and_alg(self):
        now = int(time.time())
        claims = {"sub": "admin", "role": "admin", "iat": now, "nbf": now, "exp": now + 600, "jti": "x"}
        forged = jwt.encode(claims, "another-secret-of-enough-length-0123456789", algorithm="HS256")
        r = requests.get(BASE + "/v1/me", headers=bearer(forged), timeout=10)
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer")
        with open(CFG["auth"]["jwt_secret_file"]) as f:
            secret = f.read().strip()
        good = jwt.encode(claims, secret, algorithm="HS256")
        self.assertEqual(requests.get(BASE + "/v1/me", headers=bearer(good), timeout=10).status_code, 200)
        none_alg = jwt.encode(claims, None, algorithm="none")
        self.assertEqual(requests.get(BASE + "/v1/me", headers=bearer(none_alg), timeout=10).status_code, 401)
        strs = dict(claims, exp=str(now + 600))
        self.assertEqual(requests.get(BASE + "/v1/me", headers=bearer(jwt.encode(strs, secret, algorithm="HS256")),
                                      timeout=10).status_code, 401)

    def test_f_users_file_watch_and_bad_file(self):
        adm = admin_headers()
        # A user added by the CLI (atomic rename into the directory) can log in without a SIGHUP.
        p = API.run_once("user", "add", "cli-user", "--role", "operator", "--password-stdin",
                         input="cli-user-password\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        fixtures.wait_until(lambda: login("cli-user", "cli-user-password").status_code == 200, 10,
                            "the watched users file to be reloaded")
        # A broken file keeps the old users (also on SIGHUP).
        with open(users_file()) as f:
            good = f.read()
        tmp = users_file() + ".tmp-test"
        with open(tmp, "w") as f:
            f.write("{not json")
        os.rename(tmp, users_file())
        API.wait_log(r"users file reload failed")
        API.proc.send_signal(signal.SIGHUP)
        API.wait_log(r"reload failed; keeping the old state")
        self.assertEqual(requests.get(BASE + "/v1/me", headers=adm, timeout=10).status_code, 200)
        with open(tmp, "w") as f:
            f.write(good)
        os.rename(tmp, users_file())
        API.proc.send_signal(signal.SIGHUP)
        API.wait_log(r"^reloaded$")
        self.assertEqual(requests.get(BASE + "/v1/me", headers=adm, timeout=10).status_code, 200)

    def test_g_readyz_follows_redis(self):
        self.assertEqual(requests.get(BASE + "/healthz", timeout=10).json(), {"status": "ok"})
        r = requests.get(BASE + "/readyz", timeout=10)
        self.assertEqual((r.status_code, r.json()), (200, {"status": "ready"}))
        REDIS.stop()
        try:
            fixtures.wait_until(lambda: requests.get(BASE + "/readyz", timeout=10).status_code == 503, 10,
                                "/readyz to fail without Redis")
            r = requests.get(BASE + "/readyz", timeout=10)
            self.assertEqual(r.json(), {"detail": "redis unavailable"})
            self.assertEqual(requests.get(BASE + "/healthz", timeout=10).status_code, 200)
            m = requests.get(BASE + "/metrics", timeout=10).text
            self.assertIn("dibba_redis_connected 0\n", m)
        finally:
            REDIS.start()
        fixtures.wait_until(lambda: requests.get(BASE + "/readyz", timeout=10).status_code == 200, 15,
                            "/readyz to recover")
        m = requests.get(BASE + "/metrics", timeout=10).text
        self.assertIn("dibba_redis_connected 1\n", m)
        self.assertRegex(m, r"\ndibba_redis_reconnects_total [1-9]")

    def test_h_metrics(self):
        m = requests.get(BASE + "/metrics", timeout=10).text
        for name in ("dibba_redis_reconnects_total", "dibba_redis_connected", "dibba_auth_login_failures_total",
                     "dibba_auth_login_rate_limited_total", "dibba_http_requests_total"):
            self.assertIn("\n%s" % name, m)

    def test_i_websocket_echo(self):
        port = int(CFG["api"]["listen"].rsplit(":", 1)[1])
        tok = token_for("admin", ADMIN_PW)
        self.assertEqual(ws_echo(port, tok, "hello dibba"), (101, "hello dibba"))
        self.assertEqual(ws_echo(port, "bad", "x")[0], 401)

    def test_j_openapi_lists_every_route(self):
        doc = requests.get(BASE + "/openapi.json", timeout=10).json()
        want = {("post", "/token"), ("get", "/v1/me"), ("get", "/v1/users"), ("post", "/v1/users"),
                ("get", "/v1/users/{name}"), ("patch", "/v1/users/{name}"), ("delete", "/v1/users/{name}"),
                ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/openapi.json"),
                ("get", "/v1/ws/echo")}
        have = {(m, p) for p, ops in doc["paths"].items() for m in ops}
        self.assertEqual(want - have, set())
        for m, p in want:
            self.assertTrue(doc["paths"][p][m].get("summary"), (m, p))
        self.assertTrue(doc["paths"]["/v1/users"]["post"].get("security"))

    def test_k_audit_stream(self):
        adm = admin_headers()
        requests.post(BASE + "/v1/users", json={"name": "audited", "password": "audited-secret-pw",
                                                "role": "viewer"}, headers=adm, timeout=30)
        vtok = token_for("audited", "audited-secret-pw")
        r = requests.post(BASE + "/v1/users", json={"name": "x2", "password": "x2-password", "role": "viewer"},
                          headers=bearer(vtok), timeout=10)
        self.assertEqual(r.status_code, 403)
        codes = [login("audited", "audited-wrong-pw").status_code for _ in range(6)]
        self.assertEqual(codes[-1], 429)
        requests.delete(BASE + "/v1/users/audited", headers=adm, timeout=10)
        key = CFG["redis"]["prefix"] + "audit"

        def parsed():
            # redis-cli prints XRANGE as lines: an entry id, then field and value lines.
            entries, cur, lines, i = [], None, REDIS.cli("XRANGE", key, "-", "+").splitlines(), 0
            while i < len(lines):
                if lines[i].replace("-", "").isdigit() and "-" in lines[i]:
                    cur = {"id": lines[i]}
                    entries.append(cur)
                    i += 1
                    continue
                cur[lines[i]] = lines[i + 1]
                i += 2
            return entries

        def has_delete():
            return any(e.get("method") == "DELETE" and e.get("target") == "/v1/users/audited" for e in parsed())
        fixtures.wait_until(has_delete, 10, "the audit record of the DELETE")
        entries = parsed()
        create = [e for e in entries if e.get("method") == "POST" and e.get("route") == "/v1/users"
                  and e.get("status") == "201"]
        self.assertTrue(create)
        self.assertEqual(create[-1]["user"], "admin")
        self.assertEqual(create[-1]["role"], "admin")
        for f in ("remote", "request_id", "time", "target"):
            self.assertTrue(create[-1][f])
        tokens = [e for e in entries if e.get("route") == "/token"]
        self.assertTrue(any(e["user"] == "audited" and e["status"] == "401" for e in tokens))
        self.assertTrue(any(e["status"] == "429" for e in tokens))
        self.assertTrue(any(e.get("status") == "403" and e.get("user") == "audited" for e in entries))
        self.assertTrue(any(e.get("status") == "204" and e.get("method") == "DELETE" for e in entries))
        self.assertFalse(any(e.get("method") in ("GET", "HEAD") for e in entries))
        dump = REDIS.cli("XRANGE", key, "-", "+")
        for secret in (ADMIN_PW, "audited-secret-pw", "audited-wrong-pw", "vera-password", "bad-password"):
            self.assertNotIn(secret, dump)
        self.assertNotIn("eyJ", dump)  # no JWT
        # Nor in the log.
        with open(API.log_path) as f:
            log = f.read()
        for secret in (ADMIN_PW, "audited-secret-pw", "audited-wrong-pw", "vera-password-2"):
            self.assertNotIn(secret, log)

    def test_z_addr_limit_and_sigterm(self):
        cfg = fixtures.daemon_config(redis=REDIS, **{"auth.login_addr_failures": 3, "auth.login_user_failures": 100})
        d = fixtures.Daemon("api", cfg)
        d.start(wait_log=r"\blistening\b")
        base = "http://%s" % cfg["api"]["listen"]
        fixtures.wait_port(int(cfg["api"]["listen"].rsplit(":", 1)[1]))
        codes = [login("user%d" % i, "bad-password", base=base).status_code for i in range(4)]
        self.assertEqual(codes, [401, 401, 401, 429])
        # A login in flight when SIGTERM arrives still gets its answer, then the daemon exits 0.
        rc = d.stop(signal.SIGTERM, expect=None)
        self.assertEqual(rc, 0, d.stderr_text())
        msgs = [r.get("msg") for r in d.log_lines()]
        self.assertIn("stopped cleanly", msgs)
        self.assertIn("api stopped", msgs)
        rc = API.stop(signal.SIGTERM, expect=None)
        self.assertEqual(rc, 0, API.stderr_text())
        self.assertIn("stopped cleanly", [r.get("msg") for r in API.log_lines()])


if __name__ == "__main__":
    unittest.main(verbosity=2)
