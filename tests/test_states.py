"""States held as enums (issue 10 item 4): each transition of the binary slot's
:class:`Dial` and its waiting-for-drain, of the HTTP/2 pool's :class:`Reach` and
:class:`Retry`, and the engine's :class:`EngineState`, with what it changes in behaviour."""

from __future__ import annotations

import random

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txapns._timers import Dial, Reach, Retry
from txapns.binary import APNsClientFactory, APNsProtocol
from txapns.core.backoff import Backoff
from txapns.core.binary_channel import ChannelConfig
from txapns.core.result import Outcome, Result
from txapns.service.engine import EngineState, NotAcceptingError

from .helpers import token
from .helpers_binary import StubEndpoint, error, note, parse_frames
from .helpers_http2 import ClientTestCase
from .helpers_http2 import note as h2_note
from .helpers_service import ALERT, Harness


class SlotFixture:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = StubEndpoint()
        self.factory = APNsClientFactory(
            self.reactor,
            self.endpoint,
            config=ChannelConfig(quiet=30.0),
            backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
            rng=random.Random(1),
        )
        self.results: list[Result] = []

    def submit(self, i: int) -> Deferred[Result]:
        d: Deferred[Result] = Deferred()
        d.addCallback(self.results.append)
        self.factory.submit(note(i), d)
        return d


class BinaryDialTests(SynchronousTestCase):
    def test_unstarted_queues_and_start_connects(self) -> None:
        f = SlotFixture()
        self.assertIs(f.factory._dial, Dial.UNSTARTED)
        self.assertFalse(f.factory.started)
        f.submit(0)
        self.assertEqual(f.endpoint.attempts, [])  # queued, no connection before start()
        f.factory.start()
        self.assertIs(f.factory._dial, Dial.CONNECTING)
        self.assertTrue(f.factory.started)
        self.assertTrue(f.factory.connecting)
        self.assertEqual(len(f.endpoint.attempts), 1)

    def test_one_attempt_at_a_time_then_standby_once_connected(self) -> None:
        f = SlotFixture()
        f.factory.start()
        f.submit(0)
        f.factory.start()  # again: still the one attempt
        self.assertEqual(len(f.endpoint.attempts), 1)
        f.endpoint.accept()
        self.assertIs(f.factory._dial, Dial.STANDBY)
        self.assertFalse(f.factory.connecting)
        self.assertIsNotNone(f.factory.proto)

    def test_an_attempt_that_succeeds_before_the_protocol_connects_is_over(self) -> None:
        """An endpoint may fire its Deferred before the protocol's connectionMade: the
        attempt is over, and the protocol's connectionMade later finds no attempt."""
        f = SlotFixture()
        f.factory.start()
        factory, d = f.endpoint.attempts[-1]
        proto = factory.buildProtocol(None)
        assert isinstance(proto, APNsProtocol)
        d.callback(proto)
        self.assertIs(f.factory._dial, Dial.STANDBY)
        proto.makeConnection(StringTransport())
        self.assertIs(f.factory._dial, Dial.STANDBY)
        self.assertIs(f.factory.proto, proto)

    def test_a_protocol_connected_before_its_attempt_fires_is_not_connecting(self) -> None:
        f = SlotFixture()
        f.factory.start()
        factory, _d = f.endpoint.attempts[-1]
        factory.buildProtocol(None).makeConnection(StringTransport())
        self.assertIs(f.factory._dial, Dial.STANDBY)
        self.assertFalse(f.factory.connecting)

    def test_start_after_stop_connects_nothing(self) -> None:
        f = SlotFixture()
        self.successResultOf(f.factory.stop())
        f.factory.start()
        self.assertIs(f.factory._dial, Dial.STANDBY)
        self.assertTrue(f.factory.started)
        self.assertEqual(f.endpoint.attempts, [])

    def test_a_failed_attempt_waits_on_standby_then_connects_again(self) -> None:
        f = SlotFixture()
        f.factory.start()
        f.endpoint.refuse()
        self.assertIs(f.factory._dial, Dial.STANDBY)
        f.submit(0)  # the backoff is armed: a submission does not connect early
        self.assertEqual(len(f.endpoint.attempts), 1)
        f.reactor.advance(1.0)
        self.assertIs(f.factory._dial, Dial.CONNECTING)
        self.assertEqual(len(f.endpoint.attempts), 2)

    def test_health_counts_the_slots_connecting(self) -> None:
        from txapns.binary import BinaryClient

        reactor = MemoryReactorClock()
        endpoint = StubEndpoint()
        client = BinaryClient(reactor, endpoint, connections=2)
        self.assertFalse(client.started)
        self.assertEqual(client.health()["connecting"], 0)
        client.start()
        self.assertTrue(client.started)
        self.assertEqual(client.health()["connecting"], 2)
        endpoint.accept()
        self.assertEqual(client.health()["connecting"], 1)

    def test_stop_while_connecting_cancels_the_attempt_and_makes_no_other(self) -> None:
        f = SlotFixture()
        f.factory.start()
        f.submit(0)
        stopped = f.factory.stop(timeout=1.0)
        self.assertIs(f.factory._dial, Dial.CONNECTING)
        f.reactor.advance(1.0)
        self.successResultOf(stopped)
        self.assertIs(f.factory._dial, Dial.STANDBY)  # the cancelled attempt is over
        self.assertEqual([r.local for r in f.results], ["stopped"])
        f.reactor.advance(100.0)
        self.assertEqual(len(f.endpoint.attempts), 1)
        self.assertEqual(f.reactor.getDelayedCalls(), [])


class BinaryDrainingTests(SynchronousTestCase):
    def test_drain_with_nothing_pending_fires_at_once(self) -> None:
        f = SlotFixture()
        self.successResultOf(f.factory.drain())
        self.assertFalse(f.factory.draining)

    def test_drain_sends_the_sentinel_and_ends_with_the_last_result(self) -> None:
        f = SlotFixture()
        f.factory.start()
        proto, transport = f.endpoint.accept()
        f.submit(0)
        f.submit(1)
        f.reactor.advance(0)
        transport.clear()
        self.assertFalse(f.factory.draining)
        drained = f.factory.drain()
        self.assertTrue(f.factory.draining)
        f.reactor.advance(0)
        self.assertEqual(parse_frames(transport.value()), [(3, -1)])  # the sentinel
        self.assertNoResult(drained)
        proto.dataReceived(error(8, 3))  # the gateway refuses the sentinel: both confirmed
        self.successResultOf(drained)
        self.assertFalse(f.factory.draining)
        self.assertEqual([r.outcome for r in f.results], [Outcome.ACCEPTED] * 2)

    def test_without_drain_no_sentinel_is_written(self) -> None:
        f = SlotFixture()
        f.factory.start()
        _proto, transport = f.endpoint.accept()
        f.submit(0)
        f.reactor.advance(0)
        self.assertEqual([i for _, i in parse_frames(transport.value())], [0])

    def test_the_stop_timeout_ends_the_wait(self) -> None:
        f = SlotFixture()
        f.factory.start()
        f.endpoint.refuse()
        f.submit(0)
        stopped = f.factory.stop(timeout=2.0)
        self.assertTrue(f.factory.draining)
        f.reactor.advance(2.0)
        self.successResultOf(stopped)
        self.assertFalse(f.factory.draining)
        self.assertEqual([r.local for r in f.results], ["stopped"])


class HTTP2ReachTests(ClientTestCase):
    def test_gave_up_after_tls_failures_then_a_working_connection_keeps_the_minimum(
        self,
    ) -> None:
        self.endpoint.fail_with = SSL.Error("certificate verify failed")
        client = self.make_client()
        self.assertIs(client._reach, Reach.KEEP)
        self.advance(10.0, step=0.5)
        self.assertEqual(self.endpoint.attempts, 3)  # max_tls_failures
        self.assertIs(client._reach, Reach.GAVE_UP)
        self.assertIn("gave up after 3 attempts", client.unavailable or "")
        self.advance(100.0, step=10.0)
        self.assertEqual(self.endpoint.attempts, 3)  # no min_connections while given up
        self.endpoint.fail_with = None
        d = self.send(client, h2_note(1))  # work: one connection, which proves TLS works
        self.pump()
        self.assertTrue(self.result_of(d).accepted)
        self.assertIs(client._reach, Reach.KEEP)
        self.assertIsNone(client.unavailable)
        self.server.drop_connections()  # now an idle connection lost is replaced at once
        self.pump()
        self.assertEqual(self.endpoint.attempts, 5)
        self.assertEqual(len(client.connections), 1)
        self.stop(client)

    def test_a_refused_proxy_gives_up_without_saying_unavailable(self) -> None:
        """A 407 gives up connecting (the next send tries again) but leaves ``unavailable``
        as it was: what was held is rejected at once, so nothing waits."""
        from txapns.core.proxy import TunnelRefused

        refused = TunnelRefused(407, "Proxy Authentication Required", ())
        self.endpoint.fail_with = refused.error("api.push.apple.com:443", "http://proxy:3128")
        client = self.make_client()
        self.assertIs(client._reach, Reach.GAVE_UP)
        self.assertIsNone(client.unavailable)
        self.assertIsNone(client.health()["unavailable"])
        self.stop(client)


class HTTP2RetryTests(ClientTestCase):
    def test_the_backoff_waited_is_kept_for_the_next_attempt(self) -> None:
        """The retry timer fired while nothing needed a connection (given up, work ended by
        its queue time): the backoff was waited, so the next send connects at once."""
        self.endpoint.fail_with = SSL.Error("certificate verify failed")
        client = self.make_client(hold_when_unavailable=True, max_queue_time=10.0)
        d = self.send(client, h2_note(1))
        self.advance(40.0, step=0.5)
        self.assertEqual(self.result_of(d).local, "unreachable")
        self.assertIs(client._reach, Reach.GAVE_UP)
        self.assertIs(client._retry, Retry.DUE)
        self.assertFalse(client._retry_timer.armed)
        self.assertGreater(client._failures, 0)
        attempts = self.endpoint.attempts
        self.send(client, h2_note(2))
        self.pump()
        self.assertEqual(self.endpoint.attempts, attempts + 1)  # no second backoff
        self.assertIs(client._retry, Retry.WAIT)
        self.assertTrue(client._retry_timer.armed)  # it failed again: wait next time
        self.stop(client)

    def test_a_connection_that_proves_itself_resets_the_wait(self) -> None:
        """What a working connection resets: the failures in a row, the TLS give-up, and a
        backoff already waited (the next failure waits its own)."""
        self.endpoint.fail_with = SSL.Error("certificate verify failed")
        client = self.make_client(hold_when_unavailable=True, max_queue_time=10.0)
        self.send(client, h2_note(1))
        self.advance(40.0, step=0.5)
        self.assertIs(client._retry, Retry.DUE)
        # As a connection reports its first answer (the glue's ConnectionOwner event).
        client._events.connection_proven(client._build_protocol())
        self.assertIs(client._retry, Retry.WAIT)
        self.assertIs(client._reach, Reach.KEEP)
        self.assertEqual(client._failures, 0)
        self.assertIsNone(client.unavailable)
        self.stop(client)

    def test_after_a_failure_the_next_attempt_waits(self) -> None:
        self.endpoint.refuse = 1
        client = self.make_client(min_connections=1)
        self.assertIs(client._retry, Retry.WAIT)
        self.assertTrue(client._retry_timer.armed)
        self.assertEqual(self.endpoint.attempts, 1)
        self.send(client, h2_note(1))
        self.pump()
        self.assertEqual(self.endpoint.attempts, 1)  # a send does not skip the backoff
        self.advance(1.0)
        self.assertEqual(self.endpoint.attempts, 2)
        self.assertIs(client._retry, Retry.WAIT)  # consumed by the attempt
        self.stop(client)


class EngineStateTests(Harness):
    def test_new_recovering_running_stopping_stopped(self) -> None:
        engine = self.engine
        self.assertIs(engine.state, EngineState.NEW)
        self.assertEqual(engine.health()["status"], "new")
        ns = engine.prepare("a", ALERT, [token(1)])
        self.assertRaises(NotAcceptingError, engine.submit, "a", ns)
        started = engine.start()
        self.assertIs(engine.state, EngineState.RECOVERING)
        self.assertEqual(engine.health()["status"], "recovering")
        self.assertRaises(RuntimeError, engine.start)
        self.turn()
        self.successResultOf(started)
        self.assertIs(engine.state, EngineState.RUNNING)
        self.assertEqual(engine.health()["status"], "ok")
        self.submit(1)
        self.turn()  # handed to the FakeSender, which holds it: in flight
        stopped = engine.stop(timeout=5.0)
        self.assertIs(engine.state, EngineState.STOPPING)
        self.assertEqual(engine.health()["status"], "stopping")
        self.assertRaises(RuntimeError, engine.stop)
        self.sender.answer_all()
        self.turn()
        self.successResultOf(stopped)
        self.assertIs(engine.state, EngineState.STOPPED)
        self.assertEqual(engine.health()["status"], "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])
