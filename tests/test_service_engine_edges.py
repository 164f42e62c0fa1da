"""The engine with a spool whose writes complete only when the test says (issue 13).

Production runs the spool in a thread, so a ``mark_inflight`` write is pending for a while
after the engine reserved a batch; :func:`~txapns.service.spool.inline_runner` closes that
window at once. A held runner opens it, so the per-app in-flight bound is tested where it
can be broken: slots freed while a batch is being marked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txapns.service.engine import Engine, EngineApp
from txapns.service.spool import Spool, SpoolStore
from txapns.service.testing import FakeSender

from .helpers import temp_dir, token
from .helpers_service import ALERT, BUNDLE

_T = TypeVar("_T")


class HeldRunner:
    """A spool runner that holds each batch until :meth:`release`."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, fn: Callable[[], _T], /) -> Deferred[_T]:
        d: Deferred[_T] = Deferred()
        self.held.append((fn, d))
        return d

    def release(self) -> int:
        """Run the batches held so far, in order; returns how many."""
        batches, self.held = self.held, []
        for fn, d in batches:
            try:
                value = fn()
            except Exception:
                fail(Failure()).chainDeferred(d)
            else:
                succeed(value).chainDeferred(d)
        return len(batches)


class HeldSpoolInflightTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(self.store.close)
        self.runner = HeldRunner()
        self.sender = FakeSender()
        spool = Spool(self.store, self.clock, self.runner)
        spool.inline_sync_limit = 0  # every fsync held by the runner, however quick
        self.engine = Engine(
            {"a": EngineApp(self.sender, bundle_id=BUNDLE, max_inflight=2)},
            spool,
            self.clock,
            purge_interval=0,
        )
        self.high_water = 0
        d = self.engine.start()
        self.settle()
        self.successResultOf(d)

    def turn(self) -> None:
        self.clock.advance(0)
        self.high_water = max(self.high_water, self.sender.pending())

    def settle(self) -> None:
        """Release spool writes and run due calls until nothing is left to do."""
        self.turn()
        while self.runner.release():
            self.turn()

    def test_slots_freed_while_a_batch_is_being_marked_are_not_given_twice(self) -> None:
        ns = self.engine.prepare("a", ALERT, [token(i) for i in range(6)])
        self.engine.submit("a", ns)
        self.settle()
        self.assertEqual(self.sender.pending(), 2)
        # One answer frees a slot: one more is reserved, and its mark_inflight write is held.
        self.sender.answer(0)
        self.turn()
        self.assertEqual(len(self.runner.held), 1)
        self.assertEqual(self.engine.gauges()["a"].queued, 4)  # 3 ready + 1 reserved
        # The other answer frees the second slot while the first is still being marked:
        # only that one slot may be filled.
        self.sender.answer(0)
        self.turn()
        self.settle()
        self.assertEqual(self.high_water, 2)
        self.assertEqual(self.sender.pending(), 2)
        self.assertEqual(self.engine.gauges()["a"].inflight, 2)
        while self.sender.pending():
            self.sender.answer_all()
            self.settle()
            self.assertLessEqual(self.high_water, 2)
        self.assertEqual(len(self.sender.sent), 6)
        self.assertEqual(self.engine.metrics.app("a").accepted, 6)
        stopped = self.engine.stop()
        self.settle()
        self.successResultOf(stopped)
