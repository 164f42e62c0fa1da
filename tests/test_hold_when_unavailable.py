"""``hold_when_unavailable``: a client that keeps its queue when APNs refuses the credential or TLS
keeps failing, instead of rejecting durable work after a short glitch (the service's mode).
The default (reject, for callers who must learn at once) is covered in the clients' own tests.
"""

from __future__ import annotations

import random

from OpenSSL import SSL
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from txapns.binary import BinaryClient
from txapns.core.backoff import Backoff
from txapns.core.result import Outcome, Result
from txapns.credentials import ProviderToken
from txapns.http2 import HTTP2Client

from .helpers_binary import StubEndpoint
from .helpers_binary import note as binary_note
from .helpers_http2 import BUNDLE, KEY, KEY_ID, TEAM_ID, ALPNEndpoint, ClientTestCase, note


class HTTP2HoldTests(ClientTestCase):
    def test_refused_credential_holds_the_queue_and_the_probe_sends_it(self) -> None:
        # No queue-time limit: it would end the held notifications at the very moment the
        # breaker half-opens (both 300 s), which is what the service wants but not what
        # this test isolates.
        client = self.make_client(
            circuit_reset=300.0, hold_when_unavailable=True, max_queue_time=None
        )
        self.server.wrong_environment_keys.add(KEY_ID)
        ds = [self.send(client, note(i)) for i in range(5)]
        self.pump()
        self.assertEqual(client.breaker, "open")
        self.assertFalse(any(d.called for d in ds))  # nothing rejected: all held
        self.assertIn("BadEnvironmentKeyIdInToken", client.unavailable or "")
        self.assertEqual(client.health()["unavailable"], client.unavailable)
        late = self.send(client, note(9))  # taken while open, not refused
        self.advance(299.0, step=60.0)
        self.assertFalse(late.called)
        self.server.wrong_environment_keys.clear()
        self.advance(1.0)
        self.pump()
        results = [self.result_of(d) for d in [*ds, late]]
        self.assertEqual({r.outcome for r in results}, {Outcome.ACCEPTED})
        self.assertEqual(client.breaker, "closed")
        self.assertIsNone(client.unavailable)
        self.assertEqual(client.counters.rejected, 0)

    def test_probe_refused_again_is_held_again(self) -> None:
        # No queue-time limit: it would end the held notifications at the very moment the
        # breaker half-opens (both 300 s), which is what the service wants but not what
        # this test isolates.
        client = self.make_client(
            circuit_reset=300.0, hold_when_unavailable=True, max_queue_time=None
        )
        self.server.wrong_environment_keys.add(KEY_ID)
        d = self.send(client, note(0))
        self.pump()
        self.advance(300.0)  # half-open: the held notification is the probe; refused again
        self.pump()
        self.assertEqual(client.breaker, "open")
        self.assertFalse(d.called)
        self.assertEqual(self.server.stats.statuses[403], 2)
        self.stop(client)
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.local), (Outcome.REJECTED, "stopped"))

    def test_tls_failures_hold_the_queue_and_keep_reconnecting(self) -> None:
        endpoint = ALPNEndpoint(b"http/1.1")
        client = HTTP2Client(
            self.clock,
            endpoint,
            bundle_id=BUNDLE,
            token=ProviderToken(KEY, KEY_ID, TEAM_ID),
            backoff=Backoff(initial=1.0, cap=8.0, jitter=0.0),
            hold_when_unavailable=True,
        )
        self.clients.append(client)
        client.start()
        ds = [client.send(note(i)) for i in range(3)]
        for _ in range(60):
            self.clock.advance(1.0)
            self.check()
        self.assertFalse(any(d.called for d in ds))
        self.assertIn("ALPN", client.unavailable or "")
        self.assertGreater(len(endpoint.protocols), 6)  # still trying, with backoff
        self.assertLess(len(endpoint.protocols), 20)
        # Unlike the default, which rejects after 3 (local="tls"):
        self.assertEqual(client.counters.rejected, 0)
        stopped = client.stop(timeout=1.0)
        self.clock.advance(1.0)
        self.assertEqual({self.successResultOf(d).local for d in ds}, {"stopped"})
        self.clock.advance(10.0)
        self.successResultOf(stopped)


class BinaryHoldTests(ClientTestCase):
    def test_tls_failures_hold_the_queue(self) -> None:
        reactor = MemoryReactorClock()
        endpoint = StubEndpoint()
        client = BinaryClient(
            reactor,
            endpoint,
            backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
            rng=random.Random(1),
            hold_when_unavailable=True,
        )
        client.start()
        results: list[Result] = []
        for i in range(2):
            client.send(binary_note(i)).addCallback(results.append)
        for _attempt in range(5):
            proto, _ = endpoint.accept(handshake=False)
            proto.connectionLost(Failure(SSL.Error("certificate verify failed")))
            reactor.advance(10)
        self.assertEqual(results, [])
        self.assertIn("certificate verify failed", client.unavailable or "")
        self.assertEqual(client.health()["unavailable"], client.unavailable)
        self.assertEqual(len(endpoint.attempts), 6)  # still trying
        # TLS works again: the held notifications are sent, and the client is available.
        proto, _ = endpoint.accept()
        reactor.advance(0)
        reactor.advance(2.0)  # the quiet window confirms them
        self.assertEqual([r.outcome for r in results], [Outcome.ACCEPTED] * 2)
        self.assertIsNone(client.unavailable)
        client.counters.check(client.pending())
