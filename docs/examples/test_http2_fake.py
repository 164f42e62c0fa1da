"""A trial test against FakeAPNsServer, in memory (twisted.test.iosim) with a Clock.

The client here is a few lines over txapns' sans-IO ``H2ClientConnection``; put your own
HTTP/2 client in its place. Run with ``python -m twisted.trial docs/examples/test_http2_fake.py``.
"""

from __future__ import annotations

import json

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.http2 import H2ClientConnection, HeaderBlockTemplate, ResponseReceived
from txapns.core.http2.headers import device_path
from txapns.core.jwt import load_signing_key, sign_provider_token
from txapns.core.notification import PushType
from txapns.testing.http2_server import FakeAPNsServer
from txapns.testing.pki import make_test_pki

PKI = make_test_pki()
GOOD = bytes.fromhex("ab" * 32)
DEAD = bytes.fromhex("cd" * 32)


class MiniClient(Protocol):
    def __init__(self) -> None:
        self.conn = H2ClientConnection()
        self.responses: dict[int, ResponseReceived] = {}

    def connectionMade(self) -> None:
        self.conn.initiate()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def post(self, block: bytes, body: bytes) -> int:
        stream_id = self.conn.send_request(block, body)
        self.flush()
        return stream_id

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                self.responses[event.stream_id] = event
        self.flush()


class FakeAPNsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.server = FakeAPNsServer(clock=self.clock, sandbox=True)
        self.server.add_token_key(PKI.token_key_id, PKI.team_id, PKI.token_public_key)
        jwt = sign_provider_token(
            load_signing_key(PKI.token_key_p8),
            PKI.token_key_id,
            PKI.team_id,
            int(self.clock.seconds()),
        )
        self.template = HeaderBlockTemplate(
            "api.sandbox.push.apple.com",
            topic=PKI.topic,
            push_type=PushType.ALERT,
            authorization=f"bearer {jwt}",
        )
        factory = self.server.factory()
        self.client, _, self.pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), MiniClient, clock=self.clock
        )

    def post(self, token: bytes, body: bytes = b'{"aps":{"alert":"hi"}}') -> ResponseReceived:
        block = self.template.encode(device_path(token), content_length=len(body))
        stream_id = self.client.post(block, body)
        self.pump.flush()
        return self.client.responses[stream_id]

    def test_accepted_then_unregistered(self) -> None:
        self.server.unregistered_tokens[DEAD.hex()] = 1_700_000_000_000  # ms

        ok = self.post(GOOD)
        self.assertEqual(ok.status, 200)
        self.assertIsNotNone(ok.header(b"apns-unique-id"))  # sandbox=True

        gone = self.post(DEAD)
        self.assertEqual(gone.status, 410)
        self.assertEqual(
            json.loads(gone.body), {"reason": "Unregistered", "timestamp": 1_700_000_000_000}
        )
        self.assertEqual(self.server.accepted_tokens(), [GOOD.hex()])
        self.assertEqual(self.server.stats.statuses[410], 1)

    def test_expired_token(self) -> None:
        self.clock.advance(3601)  # the JWT is now older than an hour
        response = self.post(GOOD)
        self.assertEqual(response.status, 403)
        self.assertEqual(json.loads(response.body)["reason"], "ExpiredProviderToken")
