"""Third-party APNs clients against ``python -m txapns.testing http2`` (real TLS on
loopback, subprocesses): aioapns from PyPI (a test dependency) and @parse/node-apn from npm.

node-apn needs Node.js and npm: the tests skip only when either is missing. Its package is
taken from ``tests/interop/node_modules`` (``npm ci --prefix tests/interop``, which ``.ci/run``
does), or installed there by the first test that needs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from .helpers_process import ENV, FakeProcess

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interop")
N = 1000


def token_auth(fake: FakeProcess, node: bool) -> dict[str, Any]:
    if node:
        return {
            "key": fake.key_file(),
            "keyId": fake.token["key_id"],
            "teamId": fake.token["team_id"],
        }
    return {
        "key": fake.key_file(),
        "key_id": fake.token["key_id"],
        "team_id": fake.token["team_id"],
    }


def drive(command: list[str], fake: FakeProcess, **spec: Any) -> dict[str, Any]:
    spec = {
        "port": fake.port,
        "ca": os.path.join(fake.pki, "ca.pem"),
        "n": N,
        "topic": fake.token["topic"],
        "timeout": 120,
        **spec,
    }
    done = subprocess.run(
        [*command, json.dumps(spec)], capture_output=True, text=True, timeout=300, env=ENV
    )
    if done.returncode != 0:
        raise AssertionError(f"{command[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


class AioapnsTests(TestCase):
    """aioapns 1,000 of 1,000, token and certificate auth (it follows the one-stream start)."""

    def drive(self, fake: FakeProcess, **spec: Any) -> dict[str, Any]:
        return drive([sys.executable, os.path.join(HERE, "aioapns_send.py")], fake, **spec)

    def test_token_auth(self) -> None:
        fake = FakeProcess(self)
        answer = self.drive(fake, token=token_auth(fake, node=False))
        self.assertEqual(answer, {"sent": N, "failed": 0, "reasons": {}})

    def test_certificate_auth(self) -> None:
        fake = FakeProcess(self)
        answer = self.drive(fake, cert_bundle=os.path.join(fake.pki, "client-bundle.pem"))
        self.assertEqual(answer, {"sent": N, "failed": 0, "reasons": {}})


class NodeApnTests(TestCase):
    """@parse/node-apn sends its burst before it has read the server's SETTINGS."""

    def setUp(self) -> None:
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            raise SkipTest("node-apn needs Node.js and npm (apt-get install nodejs npm)")
        self.node = node
        if not os.path.isdir(os.path.join(HERE, "node_modules", "@parse", "node-apn")):
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--prefix", HERE],
                capture_output=True,
                text=True,
                timeout=600,
            )
            self.assertEqual(done.returncode, 0, f"npm ci failed: {done.stderr[-2000:]}")

    def drive(self, fake: FakeProcess, **spec: Any) -> dict[str, Any]:
        return drive([self.node, os.path.join(HERE, "node_apn_send.js")], fake, **spec)

    def test_certificate_auth_has_no_one_stream_start(self) -> None:
        # Apple starts with one stream for token auth only: all 1,000 go through.
        fake = FakeProcess(self)
        cert, key = (os.path.join(fake.pki, n) for n in ("client.pem", "client-key.pem"))
        answer = self.drive(fake, cert=cert, key=key)
        self.assertEqual(answer, {"sent": N, "failed": 0, "reasons": {}})

    def test_token_auth_with_no_ramp(self) -> None:
        fake = FakeProcess(self, "--no-ramp")
        answer = self.drive(fake, token=token_auth(fake, node=True))
        self.assertEqual(answer, {"sent": N, "failed": 0, "reasons": {}})

    def test_token_auth_burst_is_refused_stream_by_stream_not_killed(self) -> None:
        # With the one-stream start, the streams node-apn opens before it has read the
        # server's SETTINGS are refused with REFUSED_STREAM (node-apn reports them failed);
        # the connection lives on and delivers the rest (before: GOAWAY, 0 of 1,000).
        fake = FakeProcess(self)
        answer = self.drive(fake, token=token_auth(fake, node=True))
        self.assertEqual(answer["sent"] + answer["failed"], N)
        self.assertGreater(answer["sent"], 0)
        for reason in answer["reasons"]:
            self.assertIn("REFUSED_STREAM", reason)
