"""``drain_timeout`` bounds the whole stop, clients included (issue 12, item 7): SIGTERM with
an unreachable app used to take the engine's drain (10 s) and then the client's own stop
timeout (another 10 s), longer than a container's stop grace period."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from txapns.http2 import HTTP2Client
from txapns.service.config import DEFAULT_DRAIN_TIMEOUT
from txapns.service.engine import EngineApp
from txapns.service.spool import SpoolStore

from .helpers_service import BUNDLE, Harness


@implementer(IStreamClientEndpoint)
class Unreachable:
    """An endpoint whose connection attempts never complete (a black-holed address)."""

    def __init__(self) -> None:
        self.attempts: list[Deferred[Any]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append(d)
        return d


class StopBudgetTests(Harness):
    def test_default_leaves_room_in_a_ten_second_grace_period(self) -> None:
        self.assertLess(DEFAULT_DRAIN_TIMEOUT, 10.0)

    def test_unreachable_app_stops_within_drain_timeout(self) -> None:
        client = HTTP2Client(
            self.clock, Unreachable(), bundle_id=BUNDLE, name="a", connect_timeout=60.0
        )
        client.start()
        self.engine = self.fresh(
            {"a": EngineApp(client, bundle_id=BUNDLE)}, drain_timeout=DEFAULT_DRAIN_TIMEOUT
        )
        self.start()
        job = self.submit_and_turn(3)
        self.assertEqual(client.pending(), 3)
        stopped = self.engine.stop()
        self.clock.advance(DEFAULT_DRAIN_TIMEOUT)
        self.turn()
        self.successResultOf(stopped)
        self.assertEqual(client.pending(), 0)
        # Never written: back in the spool as queued, for the next start.
        del job
        store = SpoolStore(self.path)
        self.addCleanup(store.close)
        self.assertEqual({state: n for (_, state), n in store.counts().items()}, {"queued": 3})

    def test_senders_get_what_is_left_of_the_budget(self) -> None:
        self.engine = self.fresh(drain_timeout=6.0)
        self.start()
        self.submit_and_turn(1)
        stopped = self.engine.stop()
        self.clock.advance(2.0)
        self.sender.answer_all()
        self.turn()
        self.successResultOf(stopped)
        self.assertEqual(self.sender.stop_timeouts, [4.0])


class FeedbackInTheBudgetTests(Harness):
    def test_a_feedback_read_cut_short_counts_against_drain_timeout(self) -> None:
        from txapns.service.wiring import EngineService

        class SlowPoller:
            def __init__(self, clock: Any) -> None:
                self.clock = clock

            def start(self, sink: Any) -> None:
                pass

            def stop(self) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                self.clock.callLater(5.0, d.callback, None)  # the read is cut after 5 s
                return d

        self.engine = self.fresh(drain_timeout=8.0)
        service = EngineService(self.engine, feedback=[SlowPoller(self.clock)])  # type: ignore[list-item]
        service.startService()
        self.turn()
        self.submit_and_turn(1)
        stopped = service.stopService()
        self.clock.advance(5.0)
        self.assertNoResult(stopped)
        self.clock.advance(3.0)  # 8 s in all, not 5 + 8
        self.turn()
        self.successResultOf(stopped)
        self.assertEqual(self.sender.stop_timeouts, [0.0])
