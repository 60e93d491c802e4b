# SPDX-License-Identifier: Apache-2.0
"""Start-up contract of dibba-api, dibba-worker and dibba-beat: --version/--help, one readable line and a
non-zero exit on a missing secret or a bad config file, and a clean (exit 0) stop on SIGTERM and SIGINT."""
import os
import signal
import unittest

import fixtures

DAEMONS = ("api", "worker", "beat")
# The secret each daemon cannot start without.
SECRET = {"api": "auth.jwt_secret_file", "worker": "task.routing_key_file", "beat": "task.routing_key_file"}


def setUpModule():
    global REDIS, CTRD
    fixtures.cleanup_stale()
    REDIS = fixtures.RedisServer()
    CTRD = fixtures.Containerd()


def tearDownModule():
    CTRD.close()
    REDIS.stop()


def one_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    return len(lines) == 1 and lines[0]


class DaemonTest(unittest.TestCase):
    def config(self, **overrides):
        return fixtures.daemon_config(redis=REDIS, containerd=CTRD, **overrides)

    def test_version_and_help(self):
        for name in DAEMONS:
            with self.subTest(daemon=name):
                d = fixtures.Daemon(name, self.config())
                p = d.run_once("--version")
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertRegex(p.stdout.strip(), r"^dibba-%s \d+\.\d+\.\d+" % name)
                p = d.run_once("--help")
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertIn("--config", p.stdout)
                p = d.run_once("--no-such-flag")
                self.assertNotEqual(p.returncode, 0)
                self.assertTrue(one_line(p.stderr), p.stderr)

    def test_missing_secret_is_one_line_error(self):
        for name in DAEMONS:
            with self.subTest(daemon=name):
                key = SECRET[name]
                d = fixtures.Daemon(name, self.config(**{key: None}))
                p = d.run_once(timeout=30)
                self.assertNotEqual(p.returncode, 0)
                line = one_line(p.stderr)
                self.assertTrue(line, "expected one line on stderr, got %r" % p.stderr)
                self.assertTrue(line.startswith("dibba-%s: " % name), line)
                self.assertIn(key.split(".")[0], line)
                # A secret file that does not exist, and one that is too short.
                d = fixtures.Daemon(name, self.config(**{key: "/nonexistent/dibba.secret"}))
                p = d.run_once(timeout=30)
                self.assertNotEqual(p.returncode, 0)
                self.assertTrue(one_line(p.stderr), p.stderr)
                short = fixtures.session().path("short-%s.secret" % name)
                with open(short, "w") as f:
                    f.write("abc\n")
                d = fixtures.Daemon(name, self.config(**{key: short}))
                p = d.run_once(timeout=30)
                self.assertNotEqual(p.returncode, 0)
                self.assertTrue(one_line(p.stderr), p.stderr)

    def test_invalid_config_is_one_line_error(self):
        bad = {
            "syntax": "{\"log\": {\"level\": \"info\",}",
            "not an object": "[1, 2, 3]",
            "wrong type": "{\"log\": {\"level\": 5}}",
            "bad level": "{\"log\": {\"level\": \"chatty\"}}",
        }
        for name in DAEMONS:
            for what, text in bad.items():
                with self.subTest(daemon=name, case=what):
                    d = fixtures.Daemon(name, self.config())
                    with open(d.config_path, "w") as f:
                        f.write(text)
                    p = d.run_once(timeout=30)
                    self.assertNotEqual(p.returncode, 0)
                    line = one_line(p.stderr)
                    self.assertTrue(line, "expected one line on stderr, got %r" % p.stderr)
                    self.assertTrue(line.startswith("dibba-%s: " % name), line)
            with self.subTest(daemon=name, case="missing file"):
                d = fixtures.Daemon(name, self.config())
                os.unlink(d.config_path)
                p = d.run_once(timeout=30)
                self.assertNotEqual(p.returncode, 0)
                self.assertIn(d.config_path, one_line(p.stderr) or p.stderr)

    def test_clean_stop_on_sigterm_and_sigint(self):
        for name in DAEMONS:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with self.subTest(daemon=name, signal=sig.name):
                    d = fixtures.Daemon(name, self.config())
                    d.start(wait_log=r"\bstarted\b")
                    self.assertIsNone(d.proc.poll())
                    rc = d.stop(sig, expect=None)
                    self.assertEqual(rc, 0, "exit %d; stderr: %s" % (rc, d.stderr_text()))
                    msgs = [r.get("msg") for r in d.log_lines()]
                    self.assertIn("stopped cleanly", msgs)
                    self.assertNotIn("handle left open at exit", msgs)
                    for rec in d.log_lines():
                        self.assertNotIn("raw", rec, "non-JSON line in the log: %r" % rec)


if __name__ == "__main__":
    unittest.main(verbosity=2)
