"""A trial test of code that sends through BinaryClient, against FakeGateway over real TLS.

Run with ``python -m twisted.trial docs/examples/test_binary_fake.py`` (or pytest).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.trial.unittest import TestCase

from txapns import Notification
from txapns.binary import BinaryClient
from txapns.core.binary_channel import ChannelConfig
from txapns.credentials import ClientCertificate, client_tls_options
from txapns.testing.binary_gateway import STATUS_INVALID_TOKEN, FakeGateway, listen_gateway
from txapns.testing.pki import make_test_pki, server_tls_options

PAYLOAD = {"aps": {"alert": "hi"}}


class ReplayTests(TestCase):
    def setUp(self) -> None:
        pki = make_test_pki()  # made once per process, shared
        self.gateway = FakeGateway()  # listen_gateway gives it the reactor as its clock
        port = listen_gateway(reactor, self.gateway, tls_options=server_tls_options(pki))
        self.addCleanup(port.stopListening)
        self.addCleanup(self.gateway.stop)
        tls = client_tls_options(
            "localhost",
            certificate=ClientCertificate.from_pem(pki.client_cert, pki.client_key),
            ca_pem=pki.ca_cert,
        )
        endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, "127.0.0.1", port.getHost().port))
        self.client = BinaryClient(reactor, endpoint, config=ChannelConfig(quiet=0.2))
        self.client.start()
        self.addCleanup(self.client.stop)

    async def test_invalid_token_is_rejected_and_the_rest_replayed(self) -> None:
        bad = bytes([0xEE]) * 32
        self.gateway.reject_token(bad, STATUS_INVALID_TOKEN)
        self.gateway.shutdown_after = 50  # status 10 after 50 notifications per connection
        tokens = [i.to_bytes(2, "big") * 16 for i in range(1, 201)]
        tokens.insert(100, bad)
        results = await gatherResults(
            [self.client.send(Notification.create(t, PAYLOAD)) for t in tokens]
        )

        rejected = [r for r in results if r.rejected]
        self.assertEqual([(r.status, r.reason) for r in rejected], [(8, "InvalidToken")])
        self.assertTrue(rejected[0].token_invalid)
        # Every other notification was delivered exactly once, in order, across reconnects.
        self.assertEqual([n.token for n in self.gateway.delivered], [t for t in tokens if t != bad])
        self.assertGreater(self.gateway.connections, 1)
        self.client.counters.check(self.client.pending())
