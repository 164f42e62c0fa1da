"""The Twisted glue of the binary client, with StringTransport and a Clock-driven reactor."""

from __future__ import annotations

import random

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txapns.binary import BinaryClient
from txapns.core.backoff import Backoff
from txapns.core.binary_channel import ChannelConfig, UnknownPolicy
from txapns.core.errors import ClientStoppedError, PayloadTooLargeError, QueueFullError
from txapns.core.notification import Notification
from txapns.core.proxy import TunnelRefused
from txapns.core.result import Outcome, Result

from .helpers_binary import StubEndpoint, error, note, parse_frames


class Fixture:
    def __init__(self, **config: object) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = StubEndpoint()
        self.client = BinaryClient(
            self.reactor,
            self.endpoint,
            config=ChannelConfig(**config),  # type: ignore[arg-type]
            backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
            rng=random.Random(1),
        )
        self.results: list[Result] = []

    def send(self, *indexes: int) -> list[Deferred[Result]]:
        ds = [self.client.send(note(i)) for i in indexes]
        for d in ds:
            d.addCallback(self.results.append)
        return ds

    def turn(self, seconds: float = 0.0) -> None:
        self.reactor.advance(seconds)


def tls_failure(f: Fixture) -> None:
    """The next connection attempt fails its TLS handshake (a certificate APNs refuses)."""
    proto, _ = f.endpoint.accept(handshake=False)
    proto.connectionLost(Failure(SSL.Error("certificate verify failed")))


class ClientTests(SynchronousTestCase):
    def test_writes_are_coalesced_into_one_write_per_turn(self) -> None:
        f = Fixture()
        f.client.start()
        _proto, transport = f.endpoint.accept()
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        f.send(*range(50))
        self.assertEqual(writes, [])
        f.turn()
        self.assertEqual(len(writes), 1)
        self.assertEqual([i for _, i in parse_frames(writes[0])], list(range(50)))

    def test_send_to_calls_back_once_and_raises_like_send(self) -> None:
        f = Fixture(quiet=1.0)
        f.client.start()
        proto, _transport = f.endpoint.accept()
        got: list[Result] = []
        f.client.send_to(note(0), got.append)
        f.client.send_to(note(1), got.append)
        self.assertRaises(
            PayloadTooLargeError,
            f.client.send_to,
            Notification(note(2).token, b'{"x":"' + b"a" * 3000 + b'"}'),
            got.append,
        )
        f.turn()
        proto.dataReceived(error(8, 2))  # identifiers start at 1: the second is refused
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([r.outcome for r in got], [Outcome.ACCEPTED, Outcome.REJECTED])
        self.assertEqual(got[1].status, 8)
        f.client.counters.check(f.client.pending())

    def test_error_then_close_replays_and_reconnects_at_once(self) -> None:
        f = Fixture(quiet=1.0)
        f.client.start()
        proto, transport = f.endpoint.accept()
        ds = f.send(*range(6))
        f.turn()
        proto.dataReceived(error(8, 3))
        self.assertTrue(transport.disconnecting)  # we close our side after an error
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(f.endpoint.attempts), 2)  # at once, no backoff
        _proto2, transport2 = f.endpoint.accept()
        f.turn()
        self.assertEqual([i for _, i in parse_frames(transport2.value())], [3, 4, 5])
        f.turn(1.01)
        outcomes = [r.outcome for r in f.results]
        self.assertEqual(outcomes.count(Outcome.ACCEPTED), 5)
        self.assertEqual(outcomes.count(Outcome.REJECTED), 1)
        self.assertTrue(all(d.called for d in ds))
        self.assertEqual(f.client.counters.reconnects, 1)
        f.client.counters.check(f.client.pending())

    def test_failed_connection_attempts_back_off(self) -> None:
        f = Fixture()
        f.client.start()
        f.endpoint.refuse()
        self.assertEqual(len(f.endpoint.attempts), 1)
        f.turn(0.99)
        self.assertEqual(len(f.endpoint.attempts), 1)
        f.turn(0.02)
        self.assertEqual(len(f.endpoint.attempts), 2)
        f.endpoint.refuse()
        f.turn(1.99)
        self.assertEqual(len(f.endpoint.attempts), 2)
        f.turn(0.02)
        self.assertEqual(len(f.endpoint.attempts), 3)
        self.assertEqual(f.client.counters.connection_failures, 2)

    def test_tls_failures_are_not_retried_forever(self) -> None:
        f = Fixture()
        f.client.start()
        ds = f.send(0, 1)
        for _attempt in range(3):
            tls_failure(f)
            f.turn(10)
        self.assertTrue(all(d.called for d in ds))
        self.assertEqual({r.outcome for r in f.results}, {Outcome.REJECTED})
        self.assertEqual(f.results[0].local, "tls")
        self.assertIn("TLS failure", f.results[0].reason or "")
        f.client.counters.check(f.client.pending())

    def test_proxy_407_fails_fast_with_an_error_naming_the_proxy(self) -> None:
        """Issue 9 item 2: no retries after a 407; the queue is rejected at once."""
        f = Fixture()
        f.client.start()
        ds = f.send(0, 1)
        refused = TunnelRefused(407, "Proxy Authentication Required", ())
        error = refused.error("gateway.push.apple.com:2195", "http://u:***@proxy.example:3128")
        f.endpoint.attempts[-1][1].errback(error)
        self.assertEqual([d.called for d in ds], [True, True])
        results = f.results
        self.assertEqual(
            {(r.outcome, r.local) for r in results}, {(Outcome.REJECTED, "proxy-auth")}
        )
        self.assertIn("http://u:***@proxy.example:3128", results[0].reason or "")
        f.turn(120.0)
        self.assertEqual(len(f.endpoint.attempts), 1)
        self.assertEqual(f.reactor.getDelayedCalls(), [])
        f.send(2)
        self.assertEqual(len(f.endpoint.attempts), 2)  # a new send tries again
        f.client.counters.check(f.client.pending())

    def refuse_for(self, f: Fixture, seconds: int) -> None:
        """Refuse every connection attempt for ``seconds`` (one-second steps)."""
        for _ in range(seconds):
            for _factory, d in f.endpoint.attempts:
                if not d.called:
                    d.errback(ConnectionRefusedError("closed port"))
            f.turn(1.0)

    def test_unreachable_ends_after_the_default_queue_time(self) -> None:
        """Issue 9 item 1: no connection can be made; the send still ends, after
        ``max_queue_time`` (300 s by default): rejected ``unreachable`` with the attempts."""
        f = Fixture()
        f.client.start()
        [d] = f.send(0)
        self.refuse_for(f, 299)
        self.assertFalse(d.called)
        self.refuse_for(f, 1)
        [result] = f.results
        self.assertEqual((result.outcome, result.local), (Outcome.REJECTED, "unreachable"))
        reason = result.reason or ""
        self.assertIn("not sent within 300 s: APNs unreachable", reason)
        self.assertIn(f"({len(f.endpoint.attempts)} failed connection attempts", reason)
        self.assertIn("closed port", reason)
        f.client.counters.check(f.client.pending())
        self.assertEqual(f.client.counters.rejected_by_reason["unreachable"], 1)
        d = f.client.stop()
        self.refuse_for(f, 1)
        self.successResultOf(d)
        self.assertEqual(f.reactor.getDelayedCalls(), [])

    def test_queue_time_is_configurable_and_leaves_the_window_alone(self) -> None:
        f = Fixture(quiet=100.0)
        f.client = BinaryClient(f.reactor, f.endpoint, max_queue_time=5.0, config=f.client.config)
        f.client.start()
        _proto, _transport = f.endpoint.accept()
        [written] = f.send(0)
        f.turn()  # written: in flight, waiting for the quiet window
        f.client.factories[0].proto.pauseProducing()  # type: ignore[union-attr]
        f.send(1)  # not written: the transport is full
        f.turn(5.0)
        self.assertFalse(written.called)
        [result] = f.results
        self.assertEqual((result.notification, result.local), (note(1), "queue-time"))
        f.client.counters.check(f.client.pending())

    def test_close_right_after_handshake_is_reported_as_wrong_environment(self) -> None:
        f = Fixture(max_attempts=5)
        f.client.start()
        f.send(0)
        for _ in range(3):
            proto, _ = f.endpoint.accept()
            f.turn()
            proto.connectionLost(Failure(ConnectionDone()))
            f.turn(10)
        [result] = f.results
        self.assertIn("wrong-environment", result.reason or "")

    def test_silent_close_resends_by_default(self) -> None:
        f = Fixture()
        f.client.start()
        proto, _ = f.endpoint.accept()
        f.turn(1.0)  # not "right after the handshake"
        f.send(0, 1)
        f.turn()
        proto.received = 1
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(f.results, [])
        _, transport2 = f.endpoint.accept()
        f.turn()
        self.assertEqual([i for _, i in parse_frames(transport2.value())], [0, 1])
        self.assertEqual(f.client.counters.resent_unknown, 2)

    def test_silent_close_with_fail_policy(self) -> None:
        f = Fixture(unknown_policy=UnknownPolicy.FAIL)
        f.client.start()
        proto, _ = f.endpoint.accept()
        f.turn(1.0)
        f.send(0)
        f.turn()
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual([r.outcome for r in f.results], [Outcome.UNKNOWN])

    def test_back_pressure_from_the_transport(self) -> None:
        f = Fixture()
        f.client.start()
        proto, transport = f.endpoint.accept()
        proto.pauseProducing()
        f.send(0)
        f.turn()
        self.assertEqual(transport.value(), b"")
        proto.resumeProducing()
        f.turn()
        self.assertEqual(len(parse_frames(transport.value())), 1)

    def test_validation_happens_before_anything_is_queued(self) -> None:
        f = Fixture()
        big = Notification.create(b"\x01" * 32, {"aps": {}, "x": "y" * 3000})
        self.assertRaises(PayloadTooLargeError, f.client.send, big)
        self.assertEqual(f.client.counters.submitted, 0)

    def test_queue_full_fails_fast(self) -> None:
        f = Fixture(max_queue=2)
        f.send(0, 1)
        self.assertRaises(QueueFullError, f.client.send, note(2))

    def test_stop_drains_with_a_sentinel_then_closes_and_cancels_timers(self) -> None:
        f = Fixture(quiet=30.0)
        f.client.start()
        proto, transport = f.endpoint.accept()
        f.send(0, 1)
        f.turn()
        transport.clear()
        stopped = f.client.stop(timeout=5.0)
        self.assertRaises(ClientStoppedError, f.client.send, note(9))
        f.turn()
        frames = parse_frames(transport.value())
        self.assertEqual(frames, [(3, -1)])  # the sentinel
        proto.dataReceived(error(8, 3))
        self.assertEqual([r.outcome for r in f.results], [Outcome.ACCEPTED] * 2)
        self.assertFalse(stopped.called)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(stopped.called)
        self.assertEqual(f.reactor.getDelayedCalls(), [])
        self.assertEqual(len(f.endpoint.attempts), 1)  # no reconnect after stop

    def test_stop_timeout_finishes_what_is_left(self) -> None:
        f = Fixture(quiet=30.0)
        f.client.start()
        f.endpoint.refuse()
        ds = f.send(0)
        stopped = f.client.stop(timeout=2.0)
        f.turn(2.0)
        self.assertTrue(stopped.called)
        self.assertTrue(ds[0].called)
        self.assertEqual(f.results[0].outcome, Outcome.REJECTED)
        self.assertEqual(f.results[0].local, "stopped")
        self.assertEqual(f.reactor.getDelayedCalls(), [])


class BulkTests(SynchronousTestCase):
    def test_send_many_streams_within_the_queue_bound(self) -> None:
        f = Fixture(max_queue=10, max_window=10, quiet=1.0)
        f.client.start()
        _proto, transport = f.endpoint.accept()
        pulled: list[int] = []

        def source():  # type: ignore[no-untyped-def]
            for i in range(100):
                pulled.append(i)
                yield note(i)

        seen: list[Result] = []
        done = f.client.send_many(source(), seen.append)
        self.assertLessEqual(len(pulled), 11)
        for _ in range(30):
            f.turn()
            f.turn(1.01)
        self.assertTrue(done.called)
        counters = self.successResultOf(done)
        self.assertEqual(counters.accepted, 100)
        self.assertEqual(len(seen), 100)
        frames = parse_frames(transport.value())
        self.assertEqual([i for _, i in frames if i >= 0], list(range(100)))
        self.assertEqual(frames[-1][1], -1)  # the tail was confirmed by a sentinel

    def test_send_many_reports_invalid_ones_without_stopping(self) -> None:
        f = Fixture(quiet=1.0)
        f.client.start()
        f.endpoint.accept()
        bad = Notification(b"\x01" * 32, b"{" + b" " * 3000 + b"}")
        seen: list[Result] = []
        done = f.client.send_many([note(0), bad, note(1)], seen.append)
        f.turn()
        f.turn(1.01)
        counters = self.successResultOf(done)
        self.assertEqual((counters.accepted, counters.rejected), (2, 1))
        self.assertEqual(counters.rejected_by_reason["invalid"], 1)


class ShardingTests(SynchronousTestCase):
    def test_same_device_same_connection(self) -> None:
        reactor = MemoryReactorClock()
        client = BinaryClient(reactor, StubEndpoint(), connections=4)
        n = note(7)
        self.assertIs(client._shard(n), client._shard(Notification.create(n.token, {"aps": {}})))
        used = {id(client._shard(note(i))) for i in range(64)}
        self.assertEqual(len(used), 4)


class ReconnectEdgeTests(SynchronousTestCase):
    """What a sample of binary.py's mutants showed untested (issue 13)."""

    def test_tls_failures_back_off_like_refused_connections(self) -> None:
        f = Fixture()
        f.client.start()
        f.send(0)
        for delay in (1.0, 2.0):  # the backoff's 1 s, then 2 s
            attempts = len(f.endpoint.attempts)
            tls_failure(f)
            f.turn(delay - 0.01)
            self.assertEqual(len(f.endpoint.attempts), attempts)
            f.turn(0.02)
            self.assertEqual(len(f.endpoint.attempts), attempts + 1)
        self.assertEqual(f.client.counters.connection_failures, 2)

    def test_a_good_connection_starts_the_tls_failure_count_again(self) -> None:
        # Two TLS failures, a connection that works and closes, two more: still trying
        # (3 in a row give up); the third in a row gives up.
        f = Fixture()
        f.client.start()
        ds = f.send(0)
        for _ in range(2):
            tls_failure(f)
            f.turn(10)
        proto, _ = f.endpoint.accept()
        f.turn(1.0)  # not "right after the handshake"
        proto.received = 1
        proto.connectionLost(Failure(ConnectionLost()))
        f.turn(10)
        for _ in range(2):
            tls_failure(f)
            f.turn(10)
        self.assertFalse(ds[0].called)
        tls_failure(f)
        self.assertEqual([r.local for r in f.results], ["tls"])

    def test_a_close_exactly_at_the_wrong_environment_window_counts(self) -> None:
        # Handshake at 0 s, a clean close at 0.1 s (WRONG_ENVIRONMENT_WINDOW): still "right
        # after the handshake", a failed connection; 0.1 s later it would not be.
        for close_at, failures in ((0.1, 1), (0.2, 0)):
            f = Fixture()
            f.client.start()
            f.send(0)
            proto, _ = f.endpoint.accept()
            f.turn(close_at)
            proto.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(f.client.counters.connection_failures, failures, close_at)


class BinaryLogTests(SynchronousTestCase):
    """What an operator reads about a binary connection, word for word, and the reason a
    stop that timed out gives its notifications."""

    def test_error_response_log(self) -> None:
        f = Fixture()
        f.client.start()
        proto, _ = f.endpoint.accept()
        f.send(0, 1)
        f.turn()
        name = f.client.factories[0].name
        with capturedLogs() as events:
            proto.dataReceived(error(8, 1))
        self.assertIn(
            f"{name}: error response 8 (InvalidToken) for identifier 1",
            [formatEvent(e) for e in events],
        )

    def test_stop_timeout_log_and_reason(self) -> None:
        f = Fixture(quiet=100.0)
        f.client.start()
        f.endpoint.accept()
        ds = f.send(0, 1)
        f.turn()
        name = f.client.factories[0].name
        with capturedLogs() as events:
            f.client.stop(timeout=5.0)
            f.turn(5.0)
        self.assertIn(
            f"{name}: stop timeout with 2 notifications pending; finishing them",
            [formatEvent(e) for e in events],
        )
        self.assertTrue(all(d.called for d in ds))
        self.assertEqual(
            {(r.outcome, r.reason, r.local) for r in f.results},
            {(Outcome.UNKNOWN, "client stopped", "stopped")},
        )

    def test_connection_loss_logs(self) -> None:
        f = Fixture()
        f.client.start()
        name = f.client.factories[0].name
        with capturedLogs() as events:
            tls_failure(f)
            f.turn(10)
            proto, _ = f.endpoint.accept()
            f.turn(1.0)
            f.send(0)
            f.turn()
            proto.received = 1
            proto.connectionLost(Failure(ConnectionLost()))  # silent close: resent
            proto, _ = f.endpoint.accept()
            f.turn()
            proto.dataReceived(error(8, 0))
            proto.connectionLost(Failure(ConnectionDone()))
        texts = [formatEvent(e) for e in events]
        [tls] = [t for t in texts if "TLS failure" in t]
        self.assertTrue(tls.startswith(f"{name}: TLS failure: "), tls)
        self.assertIn("certificate verify failed", tls)
        self.assertIn(f"{name}: connection closed with no error response; reconnecting", texts)
        self.assertIn(f"{name}: closed after an error response; reconnecting", texts)
