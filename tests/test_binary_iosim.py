"""The binary client against the fake gateway, in memory: ``twisted.test.iosim`` and a Clock.

No TLS and no sockets: :class:`Net` is an :class:`IStreamClientEndpoint` whose ``connect``
builds the client's protocol and a new :class:`FakeGateway` protocol, joins them with a pair of
in-memory transports and pumps bytes between them. The transports add what ``iosim`` lacks and
the client depends on: TCP-like flow control (a side that stops reading leaves the bytes in the
writer's buffer, and a full buffer pauses the writer's streaming producer), and an abort
that the peer sees as a non-clean loss. :class:`TurnClock` runs one reactor turn at a time, so
the client's one-write-per-turn output interleaves with I/O as on a real reactor.

Every run checks, at every step, the counters invariant ``submitted = accepted + rejected +
unknown + pending``; every Deferred must fire exactly once; every test stops its client and
ends with no delayed call left on the clock.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txapns.binary import BinaryClient
from txapns.core.backoff import Backoff
from txapns.core.binary_channel import SENTINEL_TOKEN, ChannelConfig, UnknownPolicy
from txapns.core.notification import Notification
from txapns.core.result import Outcome, Result
from txapns.testing.binary_gateway import FakeGateway

from .helpers import TurnClock

# --- the in-memory network -------------------------------------------------------------------


class SimTransport(iosim.FakeTransport):  # type: ignore[misc]
    """An iosim transport with flow control.

    * The protocol that owns it pauses *reading* with ``pauseProducing`` (as the fake
      gateway's ``stall`` does): the peer's writes then stay in the peer's buffer.
    * Writes accumulate in ``buffered``; above ``high_water`` bytes a registered streaming
      producer (the client's :class:`APNsProtocol`) is paused, and resumed once the buffer
      has been taken by the peer — as a TCP transport does.
    """

    def __init__(self, protocol: Any, is_server: bool, high_water: int) -> None:
        super().__init__(protocol, is_server)
        self.peer: SimTransport | None = None
        self.high_water = high_water
        self.reading_paused = False
        self.buffered = 0
        self.producer_paused = False
        #: How often the producer was paused.
        self.pauses = 0
        #: Sizes of the chunks handed to the peer, in order.
        self.chunks: list[int] = []

    def write(self, data: bytes) -> None:
        if self.disconnecting:
            return
        self.stream.append(data)
        self.buffered += len(data)
        producer = self.producer
        if (
            producer is not None
            and self.streamingProducer
            and not self.producer_paused
            and self.buffered > self.high_water
        ):
            self.producer_paused = True
            self.pauses += 1
            producer.pauseProducing()

    def getOutBuffer(self) -> Any:
        assert self.peer is not None
        if self.peer.reading_paused or not self.stream:
            return None
        data = b"".join(self.stream)
        self.stream = []
        self.buffered = 0
        self.chunks.append(len(data))
        if self.producer_paused:
            self.producer_paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data

    def abortConnection(self) -> None:
        # A reset: the peer sees a non-clean loss (iosim reports ConnectionDone either way).
        if self.peer is not None and not self.disconnecting:
            self.peer.disconnectReason = ConnectionLost()
        self.disconnecting = True

    def pauseProducing(self) -> None:
        self.reading_paused = True

    def resumeProducing(self) -> None:
        self.reading_paused = False


class Link:
    """One connection: the client's protocol, the gateway's, and the pump between them."""

    def __init__(self, pump: iosim.IOPump, client_io: SimTransport, server_io: SimTransport):
        self.pump = pump
        self.client_io = client_io
        self.server_io = server_io

    @property
    def closed(self) -> bool:
        return bool(self.client_io.disconnected and self.server_io.disconnected)


@implementer(IStreamClientEndpoint)
class Net:
    """A Clock, a :class:`FakeGateway` on it, and an endpoint connecting to that gateway.

    ``connect`` returns at once; the connection is made on the next :meth:`run` step (like a
    real endpoint, which answers on a later reactor turn). ``handshake`` simulates the TLS
    handshake for the client (``handshakeCompleted`` right after ``connectionMade``), which
    arms the client's wrong-environment detection. ``hold`` leaves connection attempts
    unanswered; ``refuse`` refuses that many of them.
    """

    def __init__(self, *, handshake: bool = False, high_water: int = 1 << 30) -> None:
        self.clock = TurnClock()
        self.gateway = FakeGateway(self.clock)
        # Apple rejects the all-0xff drain sentinel with status 8; make the fake do the same.
        self.gateway.reject_tokens_with_prefix(b"\xff")
        self.handshake = handshake
        self.high_water = high_water
        self.hold = False
        self.refuse = 0
        #: Server protocols for the next connections, before the gateway's.
        self.servers: list[Callable[[], Protocol]] = []
        #: When set, every connection fails like a refused TLS session, with this error.
        self.tls_failure: Exception | None = None
        self.attempts = 0
        self.cancelled = 0
        self.links: list[Link] = []
        self.all_links: list[Link] = []
        self.waiting: list[tuple[IProtocolFactory, Deferred[Protocol]]] = []
        self.checks: list[Callable[[], None]] = []

    # IStreamClientEndpoint
    def connect(self, factory: IProtocolFactory) -> Deferred[Protocol]:
        self.attempts += 1

        def cancel(d: Deferred[Protocol]) -> None:
            # Like a real endpoint: a cancelled attempt never connects.
            self.waiting.remove((factory, d))
            self.cancelled += 1
            d.errback(Failure(ConnectingCancelledError(iosim.FakeAddress())))

        d: Deferred[Protocol] = Deferred(cancel)
        self.waiting.append((factory, d))
        return d

    def _complete(self) -> bool:
        if self.hold or not self.waiting:
            return False
        waiting, self.waiting = self.waiting, []
        for factory, d in waiting:
            if self.refuse:
                self.refuse -= 1
                d.errback(Failure(ConnectionRefusedError()))
                continue
            client = factory.buildProtocol(iosim.FakeAddress())
            server: Protocol = (
                self.servers.pop(0)()
                if self.servers
                else self.gateway.buildProtocol(iosim.FakeAddress())
            )
            if self.tls_failure is not None:
                server = Protocol()  # the session is refused: the gateway never sees it
            assert client is not None
            client_io = SimTransport(client, False, self.high_water)
            server_io = SimTransport(server, True, 1 << 30)
            client_io.peer, server_io.peer = server_io, client_io
            pump = iosim.connect(
                server, server_io, client, client_io, greet=False, clock=self.clock
            )
            link = Link(pump, client_io, server_io)
            self.links.append(link)
            self.all_links.append(link)
            if self.handshake and IHandshakeListener.providedBy(client):
                client.handshakeCompleted()
            if self.tls_failure is not None:
                client_io.disconnectReason = self.tls_failure
                server_io.loseConnection()
            d.callback(client)
        return True

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Move bytes, connection events and due calls until nothing moves (or ``until()``)."""
        for _ in range(1_000_000):
            moved = self._complete()
            self.clock.turn()
            for link in list(self.links):
                if link.pump.pump(advanceClock=False):
                    moved = True
                if link.closed:
                    self.links.remove(link)
            for check in self.checks:
                check()
            if until is not None and until():
                return
            due = any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls())
            if not moved and not due and (self.hold or not self.waiting):
                return
        raise AssertionError("the in-memory network never settled")

    def elapse(
        self, seconds: float, step: float = 0.05, until: Callable[[], bool] | None = None
    ) -> None:
        """Let ``seconds`` pass on the clock in steps of ``step``, running the network."""
        end = self.clock.seconds() + seconds
        self.run(until)
        while self.clock.seconds() < end - 1e-9:
            if until is not None and until():
                return
            self.clock.forward(min(step, end - self.clock.seconds()))
            self.run(until)


# --- notifications and bookkeeping ------------------------------------------------------------


def token(i: int, *, bad: bool = False) -> bytes:
    """A 32-byte token for notification ``i``: starts with 0xff (rejected) when ``bad``."""
    return (b"\xff" if bad else b"\x01") + i.to_bytes(31, "big")


def note(i: int, *, bad: bool = False, device: int | None = None) -> Notification:
    tok = token(i if device is None else device, bad=bad)
    return Notification.create(tok, {"aps": {"alert": f"n{i}"}, "i": i})


def index_of(payload: bytes) -> int:
    value = json.loads(payload)["i"]
    assert isinstance(value, int)
    return value


class Run:
    """A client on a :class:`Net`, with every Deferred it returned and what it fired with."""

    def __init__(
        self,
        test: SynchronousTestCase,
        net: Net,
        *,
        connections: int = 1,
        max_tls_failures: int = 3,
        **config: Any,
    ) -> None:
        self.test = test
        self.net = net
        self.gateway = net.gateway
        self.client = BinaryClient(
            net.clock,
            net,
            connections=connections,
            config=ChannelConfig(**config),
            backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
            max_tls_failures=max_tls_failures,
        )
        self.sent: list[Notification] = []
        self.results: dict[int, Result] = {}
        self.deferreds: list[Deferred[Result]] = []
        net.checks.append(self.check)

    def check(self) -> None:
        self.client.counters.check(self.client.pending())

    def send(self, notifications: Iterable[Notification]) -> None:
        for n in notifications:
            i = index_of(n.payload)
            d = self.client.send(n)
            self.sent.append(n)
            self.deferreds.append(d)
            d.addCallback(self._got, i)

    def _got(self, result: Result, i: int) -> None:
        if i in self.results:
            raise AssertionError(f"notification {i} got a second result: {result}")
        self.results[i] = result

    def outcome(self, i: int) -> Outcome:
        return self.results[i].outcome

    def delivered(self) -> list[int]:
        """Indexes of what the gateway delivered, in order (the sentinel left out)."""
        return [index_of(n.payload) for n in self.gateway.delivered if n.token != SENTINEL_TOKEN]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the client, close everything, and check nothing is left behind."""
        stopped = self.client.stop(timeout)
        self.net.elapse(timeout + 1, step=0.25, until=lambda: stopped.called)
        self.test.successResultOf(stopped)
        self.net.run()
        self.test.assertEqual(self.gateway.open_connections, 0)
        self.gateway.stop()
        self.test.assertEqual(self.net.clock.getDelayedCalls(), [])
        self.test.assertEqual(self.client.pending(), 0)
        self.check()
        self.test.assertTrue(all(d.called for d in self.deferreds))
        self.test.assertEqual(len(self.results), len(self.sent))


# --- scenarios -------------------------------------------------------------------------------


class ErrorResponseTests(SynchronousTestCase):
    def test_invalid_tokens_mid_stream(self) -> None:
        """Rejected with status 8; everything else delivered exactly once, in order."""
        net = Net()
        r = Run(self, net, quiet=1.0)
        total = 2000
        bad = {3, 150, 151, 420, 1234, total - 1}
        r.client.start()
        r.send(note(i, bad=i in bad) for i in range(total))
        net.elapse(2.0)
        valid = [i for i in range(total) if i not in bad]
        self.assertEqual(r.delivered(), valid)
        for i in range(total):
            if i in bad:
                self.assertEqual(r.outcome(i), Outcome.REJECTED)
                self.assertEqual((r.results[i].status, r.results[i].reason), (8, "InvalidToken"))
                self.assertTrue(r.results[i].token_invalid)
            else:
                self.assertEqual(r.outcome(i), Outcome.ACCEPTED, i)
        self.assertEqual(net.gateway.rejected_tokens, [token(i, bad=True) for i in sorted(bad)])
        c = r.client.counters
        self.assertEqual((c.accepted, c.rejected, c.unknown), (total - 6, 6, 0))
        self.assertEqual(c.rejected_by_reason, Counter({"InvalidToken": 6}))
        self.assertEqual(net.gateway.connections, 7)  # one more after each error
        self.assertEqual(c.reconnects, 6)
        self.assertGreater(c.replayed, 0)
        r.stop()

    def test_transient_status_is_retried_then_delivered(self) -> None:
        net = Net()
        net.gateway.reject_nth(5, 1)  # the 5th frame handled: processing error
        r = Run(self, net, quiet=1.0)
        r.client.start()
        r.send(note(i) for i in range(10))
        net.elapse(2.0)
        self.assertEqual(r.delivered(), list(range(10)))
        self.assertEqual({r.outcome(i) for i in range(10)}, {Outcome.ACCEPTED})
        self.assertEqual(r.results[4].attempts, 2)
        self.assertEqual(net.gateway.errors_sent, [(1, 5)])
        self.assertEqual(r.client.counters.retried, 1)
        r.stop()

    def test_transient_status_gives_up_after_max_attempts(self) -> None:
        net = Net()
        for n in (5, 6, 7):  # notification 4 is the 5th, 6th and 7th frame handled
            net.gateway.reject_nth(n, 255)
        r = Run(self, net, quiet=1.0, max_attempts=3)
        r.client.start()
        r.send(note(i) for i in range(10))
        net.elapse(2.0)
        self.assertEqual(r.delivered(), [i for i in range(10) if i != 4])
        self.assertEqual(r.outcome(4), Outcome.REJECTED)
        self.assertEqual((r.results[4].reason, r.results[4].local), ("Unknown", "attempts"))
        self.assertEqual(r.results[4].attempts, 3)
        self.assertEqual(net.gateway.connections, 4)
        r.stop()

    def test_shutdown_counts_the_named_one_as_delivered(self) -> None:
        """Status 10 every 4 notifications: the named one was delivered and is not re-sent."""
        net = Net()
        net.gateway.shutdown_after = 4
        r = Run(self, net, quiet=1.0)
        r.client.start()
        r.send(note(i) for i in range(14))
        net.elapse(2.0)
        self.assertEqual(r.delivered(), list(range(14)))
        self.assertEqual({r.outcome(i) for i in range(14)}, {Outcome.ACCEPTED})
        self.assertEqual([s for s, _ in net.gateway.errors_sent], [10, 10, 10])
        self.assertEqual(r.client.counters.retried, 0)
        self.assertEqual(r.client.counters.rejected, 0)
        # Each connection wrote everything left; only what followed the named one came back.
        attempts = [r.results[i].attempts for i in range(14)]
        self.assertEqual(attempts, [1] * 4 + [2] * 4 + [3] * 4 + [4] * 2)
        r.stop()

    def test_error_split_byte_by_byte(self) -> None:
        net = Net()
        net.gateway.split_error = True
        net.gateway.split_error_interval = 0.01
        r = Run(self, net, quiet=5.0)
        r.client.start()
        r.send(note(i, bad=i == 6) for i in range(20))
        net.elapse(1.0, step=0.01)
        link = net.all_links[0]
        self.assertEqual(link.server_io.chunks, [1] * 6)  # six reads of one byte each
        self.assertEqual(r.delivered(), [i for i in range(20) if i != 6])
        self.assertEqual(r.outcome(6), Outcome.REJECTED)
        self.assertEqual(r.results[6].status, 8)
        self.assertEqual([r.outcome(i) for i in range(6)], [Outcome.ACCEPTED] * 6)
        r.stop()

    def test_error_response_followed_by_garbage_in_the_same_read(self) -> None:
        """The connection is dropped, but the error response that came first still decides
        the window: no unknowns, no needless duplicates."""

        class ErrorThenGarbage(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(struct.pack(">BBI", 8, 8, 2) + b"\x99garbage")
                self.dataReceived = lambda data: None  # type: ignore[method-assign]

        net = Net()
        net.servers.append(ErrorThenGarbage)
        r = Run(self, net, quiet=1.0)
        r.client.start()
        r.send(note(i) for i in range(5))
        net.elapse(2.0)
        self.assertEqual(r.outcome(0), Outcome.ACCEPTED)
        self.assertEqual((r.outcome(1), r.results[1].status), (Outcome.REJECTED, 8))
        self.assertEqual(r.delivered(), [2, 3, 4])  # the replay, on the next connection
        self.assertEqual({r.outcome(i) for i in (2, 3, 4)}, {Outcome.ACCEPTED})
        c = r.client.counters
        self.assertEqual((c.unknown, c.resent_unknown, c.replayed), (0, 0, 3))
        r.stop()

    def test_identifier_zero_isolates_the_bad_notification(self) -> None:
        """Issue 9 item 5, against the fake gateway naming identifier 0 in every error: one
        bad token among six no longer spoils the window (before: all six unknown after three
        attempts, #0–1 delivered three times each). The bad one is rejected with status 8,
        the others accepted; the two delivered before it are re-sent once and flagged."""
        net = Net()
        net.gateway.report_id_zero = True
        r = Run(self, net, quiet=1.0, max_attempts=3)
        r.client.start()
        r.send(note(i, bad=i == 2) for i in range(6))
        net.elapse(30.0)
        self.assertEqual(len(r.results), 6)
        self.assertEqual((r.outcome(2), r.results[2].status), (Outcome.REJECTED, 8))
        self.assertEqual({r.outcome(i) for i in (0, 1, 3, 4, 5)}, {Outcome.ACCEPTED})
        self.assertEqual(sorted(r.delivered()), [0, 0, 1, 1, 1, 3, 4, 5])
        self.assertEqual([r.results[i].may_duplicate for i in range(6)], [True, True] + [False] * 4)
        c = r.client.counters
        self.assertEqual((c.unknown, c.may_duplicate), (0, 2))
        r.stop()


class CloseTests(SynchronousTestCase):
    def silent_close(self, policy: UnknownPolicy) -> Run:
        """1–3 confirmed; then 4–8 sent and the gateway cuts after the 5th frame."""
        net = Net()
        r = Run(self, net, quiet=1.0, unknown_policy=policy)
        r.client.start()
        r.send(note(i) for i in range(1, 4))
        net.elapse(2.0)
        self.assertEqual({r.outcome(i) for i in (1, 2, 3)}, {Outcome.ACCEPTED})
        net.gateway.silent_close_after = 5
        r.send(note(i) for i in range(4, 9))
        net.run(until=lambda: net.gateway.closes != [])
        self.assertEqual(net.gateway.closes, [(1, "silent")])
        net.gateway.silent_close_after = None
        net.elapse(2.0)
        return r

    def test_silent_close_resends_the_unknown_ones(self) -> None:
        r = self.silent_close(UnknownPolicy.RESEND)
        self.assertEqual({r.outcome(i) for i in range(1, 9)}, {Outcome.ACCEPTED})
        delivered = r.delivered()
        self.assertEqual(delivered, [1, 2, 3, 4, 5, 4, 5, 6, 7, 8])
        duplicates = sum(n - 1 for n in Counter(delivered).values())
        c = r.client.counters
        self.assertEqual(c.resent_unknown, 5)  # 4–8 were in flight: their fate was unknown
        self.assertLessEqual(duplicates, c.resent_unknown)
        self.assertEqual(c.unknown, 0)
        self.assertEqual(r.results[1].attempts, 1)
        self.assertEqual(r.results[4].attempts, 2)
        r.stop()

    def test_silent_close_with_fail_policy(self) -> None:
        r = self.silent_close(UnknownPolicy.FAIL)
        self.assertEqual([r.outcome(i) for i in range(1, 4)], [Outcome.ACCEPTED] * 3)
        self.assertEqual([r.outcome(i) for i in range(4, 9)], [Outcome.UNKNOWN] * 5)
        self.assertIn("no error response", r.results[4].reason or "")
        c = r.client.counters
        self.assertEqual(c.unknown_by_reason, Counter({"silent-close": 5}))
        self.assertEqual(c.resent_unknown, 0)
        self.assertEqual(r.delivered(), [1, 2, 3, 4, 5])
        self.assertEqual(r.gateway.connections, 1)  # nothing pending: no reconnect
        r.stop()

    def test_close_right_after_handshake_is_a_wrong_environment(self) -> None:
        net = Net(handshake=True)
        net.gateway.close_after_handshake = True
        r = Run(self, net, quiet=1.0, max_attempts=10)
        r.client.start()
        r.send(note(i) for i in range(3))
        net.elapse(60.0, step=0.5)
        self.assertEqual({r.outcome(i) for i in range(3)}, {Outcome.UNKNOWN})
        self.assertIn("wrong-environment", r.results[0].reason or "")
        self.assertEqual(net.gateway.connections, 3)  # max_tls_failures, then it gave up
        self.assertEqual(net.gateway.delivered, [])
        self.assertEqual(r.client.counters.unknown_by_reason, Counter({"tls": 3}))
        r.stop()

    def test_resets_right_after_the_handshake_are_not_a_wrong_environment(self) -> None:
        """On a fast network a connection cut mid-stream can end within the wrong-environment
        window; a reset (unlike a clean close) does not count against the certificate."""
        net = Net(handshake=True)
        net.gateway.silent_close_after = 3  # reset every connection after 3 frames
        r = Run(self, net, quiet=1.0, max_attempts=10)
        r.client.start()
        r.send(note(i) for i in range(6))
        net.run(until=lambda: len(net.gateway.closes) == 3)
        net.gateway.silent_close_after = None
        net.run()
        self.assertEqual(net.clock.seconds(), 0.0)  # reconnected at once, no backoff
        self.assertEqual(net.gateway.connections, 4)
        net.elapse(2.0)
        self.assertEqual({r.outcome(i) for i in range(6)}, {Outcome.ACCEPTED})
        self.assertEqual(r.delivered(), [0, 1, 2] * 3 + list(range(6)))
        c = r.client.counters
        self.assertEqual(c.connection_failures, 0)
        self.assertEqual(c.resent_unknown, 18)
        r.stop()

    def test_tls_failures_fail_the_queue_as_rejected(self) -> None:
        """A refused TLS session delivered nothing: after max_tls_failures what was written
        is rejected (local "tls"), not unknown, and the client stops retrying."""
        net = Net()
        net.tls_failure = SSL.Error([("SSL routines", "", "certificate verify failed")])
        r = Run(self, net, quiet=1.0)
        r.client.start()
        r.send(note(i) for i in range(4))
        net.elapse(60.0, step=0.5)
        self.assertEqual(net.attempts, 3)
        for i in range(4):
            self.assertEqual((r.outcome(i), r.results[i].local), (Outcome.REJECTED, "tls"))
            self.assertIn("certificate verify failed", r.results[i].reason or "")
        c = r.client.counters
        self.assertEqual(c.rejected_by_reason, Counter({"tls": 4}))
        self.assertEqual((c.resent_unknown, c.unknown), (0, 0))
        self.assertEqual(c.connection_failures, 3)
        r.stop()

    def test_idle_drop_then_reconnect_on_next_send(self) -> None:
        net = Net()
        net.gateway.idle_timeout = 30.0
        r = Run(self, net, quiet=1.0)
        r.client.start()
        r.send(note(i) for i in range(2))
        net.elapse(40.0, step=1.0)
        self.assertEqual(net.gateway.closes, [(1, "idle")])
        self.assertEqual(net.gateway.open_connections, 0)
        self.assertEqual(net.attempts, 1)  # idle and nothing pending: no reconnect yet
        r.send([note(2)])
        net.elapse(2.0)
        self.assertEqual(net.gateway.connections, 2)
        self.assertEqual(r.delivered(), [0, 1, 2])
        self.assertEqual({r.outcome(i) for i in range(3)}, {Outcome.ACCEPTED})
        self.assertEqual(r.client.counters.reconnects, 1)
        r.stop()

    def test_refused_connections_back_off_then_deliver(self) -> None:
        net = Net()
        net.refuse = 2
        r = Run(self, net, quiet=1.0)
        r.client.start()
        r.send(note(i) for i in range(3))
        net.elapse(0.95)
        self.assertEqual(net.attempts, 1)
        net.elapse(0.1)
        self.assertEqual(net.attempts, 2)  # the first refusal is retried after 1 s
        net.elapse(1.9)
        self.assertEqual(net.attempts, 2)
        net.elapse(0.1)
        self.assertEqual(net.attempts, 3)  # the second after 2 s more
        net.elapse(2.0)
        self.assertEqual(r.delivered(), [0, 1, 2])
        self.assertEqual(r.client.counters.connection_failures, 2)
        r.stop()


class BoundsTests(SynchronousTestCase):
    def test_stalled_gateway_window_is_bounded_and_nothing_evicted(self) -> None:
        net = Net()
        r = Run(self, net, quiet=10.0, max_window=50)
        net.gateway.stall_reads(5.0)
        r.client.start()
        r.send(note(i) for i in range(200))
        net.elapse(4.0)
        link = net.all_links[0]
        self.assertEqual(len(link.client_io.stream), 1)  # written, unread by the gateway
        self.assertEqual(r.client.counters.window_high_water, 50)
        self.assertEqual(r.results, {})  # nothing evicted, nothing decided
        self.assertEqual(r.client.pending(), 200)
        net.elapse(60.0, step=0.5)
        self.assertEqual(r.delivered(), list(range(200)))
        self.assertEqual({r.outcome(i) for i in range(200)}, {Outcome.ACCEPTED})
        self.assertEqual(r.client.counters.window_high_water, 50)
        r.stop()

    def test_transport_back_pressure_stops_writing(self) -> None:
        net = Net(high_water=4096)
        r = Run(self, net, quiet=10.0)
        net.gateway.stall_reads(5.0)
        r.client.start()
        r.send(note(i) for i in range(1000))
        net.elapse(4.0)
        link = net.all_links[0]
        first_write = 16 << 10  # the client's slow-start chunk
        self.assertGreater(link.client_io.buffered, 4096)
        self.assertLess(link.client_io.buffered, first_write + 200)
        self.assertEqual(len(link.client_io.stream), 1)  # paused after its first write
        self.assertLess(r.client.counters.window_high_water, 300)
        net.elapse(20.0)
        self.assertEqual(r.delivered(), list(range(1000)))
        self.assertEqual({r.outcome(i) for i in range(1000)}, {Outcome.ACCEPTED})
        self.assertGreaterEqual(link.client_io.pauses, 3)  # paused again after each resume
        r.stop()

    def test_send_many_pulls_lazily(self) -> None:
        net = Net()
        r = Run(self, net, quiet=1.0, max_queue=10, max_window=10)
        pulled: list[int] = []
        seen: list[Result] = []
        most_held = 0

        def source() -> Iterator[Notification]:
            for i in range(300):
                pulled.append(i)
                yield note(i, bad=i in (37, 250))

        def on_result(result: Result) -> None:
            seen.append(result)

        def held() -> None:
            nonlocal most_held
            most_held = max(most_held, len(pulled) - len(seen))

        net.checks.append(held)
        r.client.start()
        done = r.client.send_many(source(), on_result)
        self.assertLessEqual(len(pulled), 11)  # only what the queue takes, plus one held
        net.elapse(120.0, step=0.25, until=lambda: done.called)
        counters = self.successResultOf(done)
        self.assertEqual(len(pulled), 300)
        self.assertLessEqual(most_held, 21)  # queue + window + the one held back
        self.assertEqual((counters.accepted, counters.rejected, counters.unknown), (298, 2, 0))
        self.assertEqual(len(seen), 300)
        self.assertEqual(r.delivered(), [i for i in range(300) if i not in (37, 250)])
        self.assertEqual(r.client.counters.window_high_water, 10)
        r.stop()


class StopTests(SynchronousTestCase):
    def test_stop_confirms_the_tail_with_the_sentinel(self) -> None:
        net = Net()
        r = Run(self, net, quiet=30.0)
        r.client.start()
        r.send(note(i) for i in range(5))
        net.run()
        self.assertEqual(r.results, {})  # 30 s quiet window: nothing confirmed yet
        stopped = r.client.stop(timeout=5.0)
        net.run()
        self.assertEqual(net.clock.seconds(), 0.0)
        self.assertEqual({r.outcome(i) for i in range(5)}, {Outcome.ACCEPTED})
        self.successResultOf(stopped)
        self.assertEqual([t.token for t in net.gateway.rejected], [SENTINEL_TOKEN])
        self.assertEqual(net.gateway.connections, 1)  # no reconnect after the sentinel
        r.stop()

    def test_stop_deadline_finishes_what_is_left(self) -> None:
        net = Net()
        net.gateway.stall = True  # never reads: the sentinel never gets an answer
        r = Run(self, net, quiet=30.0, max_window=3)
        r.client.start()
        r.send(note(i) for i in range(5))
        net.run()
        stopped = r.client.stop(timeout=2.0)
        net.elapse(1.9)
        self.assertNoResult(stopped)
        net.elapse(0.2)
        self.successResultOf(stopped)
        self.assertEqual([r.outcome(i) for i in range(3)], [Outcome.UNKNOWN] * 3)
        self.assertEqual([r.outcome(i) for i in (3, 4)], [Outcome.REJECTED] * 2)
        self.assertEqual({r.results[i].local for i in (3, 4)}, {"stopped"})
        self.assertEqual(r.client.counters.unknown_by_reason, Counter({"stopped": 3}))
        net.gateway.stall = False
        r.stop()
        self.assertEqual(net.gateway.delivered, [])

    def test_stop_while_connecting(self) -> None:
        """A connection attempt still under way when stop() gives up must not leave a
        connection open once it completes."""
        net = Net()
        net.hold = True
        r = Run(self, net, quiet=1.0)
        r.client.start()
        r.send(note(i) for i in range(2))
        stopped = r.client.stop(timeout=2.0)
        net.elapse(2.5)
        self.successResultOf(stopped)
        self.assertEqual({r.results[i].local for i in range(2)}, {"stopped"})
        self.assertEqual(net.cancelled, 1)  # the attempt under way was cancelled
        net.hold = False
        net.run()
        self.assertEqual(net.gateway.connections, 0)
        self.assertEqual(net.gateway.delivered, [])
        r.stop()


class ShardingTests(SynchronousTestCase):
    def test_three_connections_keep_per_device_order(self) -> None:
        net = Net()
        r = Run(self, net, connections=3, quiet=1.0)
        r.client.start()
        devices = 10
        bad_at = {40, 41, 77}
        notes = [note(i, device=i % devices, bad=i in bad_at) for i in range(240)]
        r.send(notes)
        net.elapse(2.0)
        by_device: dict[bytes, list[int]] = {}
        for n in net.gateway.delivered:
            by_device.setdefault(n.token, []).append(index_of(n.payload))
        expected: dict[bytes, list[int]] = {}
        for n in notes:
            if n.token[0] != 0xFF:
                expected.setdefault(n.token, []).append(index_of(n.payload))
        self.assertEqual(by_device, expected)
        self.assertEqual(sorted(r.delivered()), [i for i in range(240) if i not in bad_at])
        self.assertEqual({i for i in range(240) if r.outcome(i) is Outcome.REJECTED}, bad_at)
        self.assertEqual(r.client.counters.connections_made, 3 + len(bad_at))
        r.stop()
