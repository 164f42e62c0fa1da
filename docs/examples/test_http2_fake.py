"""A trial test of code that sends through HTTP2Client, against FakeAPNsServer in memory.

No sockets and no reactor: MemoryEndpoint joins each connection of the client to the fake
over twisted.test.iosim, and a Clock drives time, so the test is deterministic and fast.
Run with ``python -m twisted.trial docs/examples/test_http2_fake.py`` (or pytest).
"""

from __future__ import annotations

import datetime as dt

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.jwt import load_signing_key
from txapns.core.notification import Notification
from txapns.core.result import Outcome, Result
from txapns.credentials import ProviderToken
from txapns.http2 import HTTP2Client
from txapns.testing.http2_server import FakeAPNsServer
from txapns.testing.memory import MemoryEndpoint
from txapns.testing.pki import make_test_pki

PKI = make_test_pki()  # a throwaway CA, certificates and ES256 token key
GOOD = bytes.fromhex("ab" * 32)
DEAD = bytes.fromhex("cd" * 32)
PAYLOAD = {"aps": {"alert": "hi"}}


class FakeAPNsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.server = FakeAPNsServer(clock=self.clock, sandbox=True)
        self.server.add_token_key(PKI.token_key_id, PKI.team_id, PKI.token_public_key)
        self.endpoint = MemoryEndpoint(self.server.factory(), self.clock)
        key = load_signing_key(PKI.token_key_p8)
        self.client = HTTP2Client(
            self.clock,
            self.endpoint,
            bundle_id=PKI.topic,
            token=ProviderToken(key, PKI.token_key_id, PKI.team_id),
        )
        self.client.start()

    def tearDown(self) -> None:
        stopped = self.client.stop()
        self.endpoint.pump()
        self.successResultOf(stopped)

    def send(self, token: bytes) -> Result:
        d = self.client.send(Notification.create(token, PAYLOAD))
        for _ in range(60):  # at most a minute of the fake clock
            self.endpoint.pump()  # move the bytes until both sides are idle
            if d.called:
                break
            self.clock.advance(1)
        return self.successResultOf(d)

    def test_accepted_then_unregistered(self) -> None:
        self.server.unregistered_tokens[DEAD.hex()] = 1_700_000_000_000  # ms

        ok = self.send(GOOD)
        self.assertEqual(ok.outcome, Outcome.ACCEPTED)
        self.assertIsNotNone(ok.apns_unique_id)  # sandbox=True

        gone = self.send(DEAD)
        self.assertEqual(
            (gone.outcome, gone.status, gone.reason), (Outcome.REJECTED, 410, "Unregistered")
        )
        self.assertEqual(gone.timestamp, dt.datetime.fromtimestamp(1_700_000_000, dt.UTC))
        self.assertEqual(self.server.accepted_tokens(), [GOOD.hex()])

    def test_a_503_is_retried(self) -> None:
        self.server.fail_next(1)  # 503 ServiceUnavailable, then normal answers
        result = self.send(GOOD)  # answered after the client's backoff
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(self.server.stats.statuses[503], 1)
