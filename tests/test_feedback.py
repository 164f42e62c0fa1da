"""The feedback client and poller against the fake feedback service: in memory (iosim and a
Clock) and over real TLS on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txapns.core.binary import FeedbackTuple
from txapns.core.errors import ProtocolError, TLSFailureError
from txapns.credentials import ClientCertificate, client_tls_options
from txapns.feedback import FeedbackClient, FeedbackPoller
from txapns.testing.binary_gateway import (
    FakeFeedbackService,
    encode_feedback_tuple,
    listen_feedback,
)
from txapns.testing.memory import MemoryEndpoint
from txapns.testing.pki import TestPKI, make_test_pki, server_tls_options

from .helpers_binary import ManualEndpoint, raw_server


def tok(i: int, length: int = 32) -> bytes:
    return bytes([i % 256]) * length


class FetchInMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def fetch(
        self, server: IProtocolFactory
    ) -> tuple[Deferred[list[FeedbackTuple]], list[FeedbackTuple], MemoryEndpoint]:
        endpoint = MemoryEndpoint(server, self.clock)
        seen: list[FeedbackTuple] = []
        d = FeedbackClient(endpoint).fetch(seen.append)
        endpoint.pump()
        return d, seen, endpoint

    def test_tuples_in_order_with_the_callback_and_the_list_cleared(self) -> None:
        service = FakeFeedbackService(self.clock, split_writes=True, chunk_size=5)
        service.add(tok(1), 1_700_000_001)
        service.add(tok(2, 64), 1_700_000_002)  # the length is read, not assumed to be 32
        service.add(tok(3, 100), 1_700_000_003)
        service.add(tok(4), 7)
        d, seen, _ = self.fetch(service)
        expected = [
            FeedbackTuple(1_700_000_001, tok(1)),
            FeedbackTuple(1_700_000_002, tok(2, 64)),
            FeedbackTuple(1_700_000_003, tok(3, 100)),
            FeedbackTuple(7, tok(4)),
        ]
        self.assertEqual(self.successResultOf(d), expected)
        self.assertEqual(seen, expected)
        self.assertEqual(service.tuples, [])
        d2, seen2, _ = self.fetch(service)
        self.assertEqual(self.successResultOf(d2), [])
        self.assertEqual(seen2, [])
        self.assertEqual(service.connections, 2)

    def test_each_tuple_reaches_the_callback_as_it_arrives(self) -> None:
        service = FakeFeedbackService(
            self.clock, split_writes=True, chunk_size=38, split_interval=1
        )
        for i in range(3):
            service.add(tok(i), 100 + i)
        d, seen, endpoint = self.fetch(service)
        self.assertEqual([t.timestamp for t in seen], [100])
        self.assertNoResult(d)
        self.clock.advance(1)
        endpoint.pump()
        self.assertEqual([t.timestamp for t in seen], [100, 101])
        self.clock.advance(1)
        endpoint.pump()
        self.assertEqual([t.timestamp for t in self.successResultOf(d)], [100, 101, 102])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_callback_that_raises_does_not_stop_the_read(self) -> None:
        service = FakeFeedbackService(self.clock)
        service.add(tok(1), 1)
        service.add(tok(2), 2)
        endpoint = MemoryEndpoint(service, self.clock)
        calls: list[int] = []

        def boom(t: FeedbackTuple) -> None:
            calls.append(t.timestamp)
            raise RuntimeError("caller bug")

        d = FeedbackClient(endpoint).fetch(boom)
        endpoint.pump()
        self.assertEqual(len(self.successResultOf(d)), 2)
        self.assertEqual(calls, [1, 2])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def malformed(self, split: bool) -> None:
        service = FakeFeedbackService(self.clock, split_writes=split, chunk_size=5)
        service.add(tok(1), 1)
        service.add(tok(2), 2)
        service.add(b"", 3)  # token length 0: not a feedback stream
        service.add(tok(4), 4)
        d, seen, _ = self.fetch(service)
        failure = self.failureResultOf(d, ProtocolError)
        self.assertIn("token length 0", failure.getErrorMessage())
        self.assertEqual([t.timestamp for t in seen], [1, 2])  # delivered before the error

    def test_malformed_stream_in_one_read(self) -> None:
        self.malformed(split=False)

    def test_malformed_stream_in_pieces(self) -> None:
        self.malformed(split=True)

    def test_stream_cut_inside_a_tuple(self) -> None:
        data = encode_feedback_tuple(1, tok(1)) + encode_feedback_tuple(2, tok(2))[:-3]
        d, seen, _ = self.fetch(raw_server(data))
        failure = self.failureResultOf(d, ProtocolError)
        self.assertIn("inside a tuple", failure.getErrorMessage())
        self.assertEqual([t.timestamp for t in seen], [1])


class PollerTests(SynchronousTestCase):
    def test_polls_every_interval_over_iosim(self) -> None:
        clock = Clock()
        service = FakeFeedbackService(clock)
        endpoint = MemoryEndpoint(service, clock)
        seen: list[FeedbackTuple] = []
        poller = FeedbackPoller(clock, FeedbackClient(endpoint), seen.append, interval=60)
        service.add(tok(1), 1)
        poller.start()
        endpoint.pump()
        self.assertEqual([t.timestamp for t in seen], [1])
        service.add(tok(2), 2)
        clock.advance(59)
        endpoint.pump()
        self.assertEqual(service.connections, 1)
        clock.advance(1)
        endpoint.pump()
        self.assertEqual(service.connections, 2)
        self.assertEqual([t.timestamp for t in seen], [1, 2])
        self.assertEqual(poller.polls, 2)
        poller.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(600)
        self.assertEqual(service.connections, 2)

    def test_a_slow_fetch_delays_the_next_poll_and_never_overlaps(self) -> None:
        clock = Clock()
        endpoint = ManualEndpoint()
        seen: list[FeedbackTuple] = []
        poller = FeedbackPoller(clock, FeedbackClient(endpoint), seen.append, interval=10)
        poller.start()
        self.assertEqual(len(endpoint.attempts), 1)
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing scheduled while reading
        clock.advance(35)  # the read takes longer than several intervals
        self.assertEqual(len(endpoint.attempts), 1)
        endpoint.serve(0, encode_feedback_tuple(5, tok(5)))
        self.assertEqual([t.timestamp for t in seen], [5])
        (call,) = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 45)  # the interval counts from the end of the read
        clock.advance(9.9)
        self.assertEqual(len(endpoint.attempts), 1)
        clock.advance(0.1)
        self.assertEqual(len(endpoint.attempts), 2)
        poller.stop()
        endpoint.serve(1, b"")  # finishes after stop(): no new timer
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(poller.polls, 2)

    def test_a_failed_poll_is_counted_and_the_next_one_still_happens(self) -> None:
        clock = Clock()
        endpoint = ManualEndpoint()
        poller = FeedbackPoller(clock, FeedbackClient(endpoint), lambda t: None, interval=10)
        poller.start()
        endpoint.serve(0, b"\x00\x00\x00\x01\x00\x00")  # token length 0
        self.assertEqual(poller.failures, 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        clock.advance(10)
        self.assertEqual(len(endpoint.attempts), 2)
        poller.stop()
        endpoint.serve(1, b"")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_start_later(self) -> None:
        clock = Clock()
        endpoint = ManualEndpoint()
        poller = FeedbackPoller(clock, FeedbackClient(endpoint), lambda t: None, interval=10)
        poller.start(now=False)
        self.assertEqual(endpoint.attempts, [])
        clock.advance(10)
        self.assertEqual(len(endpoint.attempts), 1)
        poller.stop()
        endpoint.serve(0, b"")
        self.assertEqual(clock.getDelayedCalls(), [])


class FetchOverTLSTests(TestCase):
    """Real sockets on 127.0.0.1; the service requires and verifies the client certificate."""

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor

    def listen(self, service: FakeFeedbackService, pki: TestPKI | None = None) -> int:
        tls = server_tls_options(pki or make_test_pki())
        port = listen_feedback(self.reactor, service, tls_options=tls)
        self.addCleanup(port.stopListening)
        self.addCleanup(service.stop)
        return int(port.getHost().port)

    def client(
        self, port: int, pki: TestPKI | None = None, ca_pem: bytes | None = None
    ) -> FeedbackClient:
        pki = pki or make_test_pki()
        tls = client_tls_options(
            "localhost",
            certificate=ClientCertificate.from_pem(pki.client_cert, pki.client_key),
            ca_pem=ca_pem or pki.ca_cert,
        )
        return FeedbackClient(wrapClientTLS(tls, HostnameEndpoint(self.reactor, "127.0.0.1", port)))

    async def test_fetch_over_tls(self) -> None:
        service = FakeFeedbackService(split_writes=True, chunk_size=3)
        tuples = [(1_700_000_000 + i, tok(i, 32 + i)) for i in range(50)]
        for timestamp, token in tuples:
            service.add(token, timestamp)
        client = self.client(self.listen(service))
        seen: list[FeedbackTuple] = []
        got = await client.fetch(seen.append)
        expected = [FeedbackTuple(t, token) for t, token in tuples]
        self.assertEqual(got, expected)
        self.assertEqual(seen, expected)
        self.assertEqual(service.tuples, [])
        self.assertEqual(await client.fetch(), [])  # the list was cleared by the first read
        self.assertEqual(service.connections, 2)

    async def test_malformed_stream_over_tls(self) -> None:
        service = FakeFeedbackService()
        service.add(tok(1), 1)
        service.add(tok(2, 101), 2)  # longer than any device token: not a feedback stream
        service.add(tok(3), 3)
        client = self.client(self.listen(service))
        seen: list[FeedbackTuple] = []
        with self.assertRaises(ProtocolError):
            await client.fetch(seen.append)
        self.assertEqual([t.timestamp for t in seen], [1])

    async def test_expired_client_certificate_is_an_error_not_an_empty_list(self) -> None:
        pki = make_test_pki(expired_client=True)
        service = FakeFeedbackService()
        service.add(tok(1), 1)
        client = self.client(self.listen(service, pki), pki)
        with self.assertRaises(TLSFailureError):
            await client.fetch()
        self.assertEqual(service.tuples, [(1, tok(1))])  # nothing was read

    async def test_untrusted_service_certificate_is_an_error(self) -> None:
        service = FakeFeedbackService()
        service.add(tok(1), 1)
        other_ca = make_test_pki("com.example.other").ca_cert
        client = self.client(self.listen(service), ca_pem=other_ca)
        with self.assertRaises(TLSFailureError):
            await client.fetch()
        self.assertEqual(service.tuples, [(1, tok(1))])
