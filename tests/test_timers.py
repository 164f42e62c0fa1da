"""txapns._timers: one helper owns every callLater of a client or connection."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txapns._timers import Timers


class TimerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.timers = Timers(self.clock)
        self.fired: list[str] = []

    def test_fires_once_and_disarms_before_the_callback(self) -> None:
        seen: list[bool] = []
        t = self.timers.timer(lambda: seen.append(t.armed))
        t.start(5)
        self.assertTrue(t.armed)
        self.assertEqual(t.when(), 5)
        self.clock.advance(5)
        self.assertEqual(seen, [False])
        self.assertFalse(t.armed)
        self.assertIsNone(t.when())

    def test_start_replaces_start_unless_armed_keeps(self) -> None:
        t = self.timers.timer(lambda: self.fired.append("t"))
        t.start(10)
        t.start_unless_armed(1)
        self.assertEqual(t.when(), 10)
        t.start(2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.assertEqual(self.fired, ["t"])
        self.clock.advance(10)
        self.assertEqual(self.fired, ["t"])

    def test_a_callback_may_arm_its_timer_again(self) -> None:
        def again() -> None:
            self.fired.append("again")
            if len(self.fired) < 3:
                t.start(1)

        t = self.timers.timer(again)
        t.start(1)
        self.clock.advance(1)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.fired, ["again"] * 3)
        self.assertFalse(t.armed)

    def test_cancel_all_leaves_nothing_pending(self) -> None:
        a = self.timers.timer(lambda: self.fired.append("a"))
        b = self.timers.timer(lambda: self.fired.append("b"))
        self.timers.timer(lambda: self.fired.append("c"))  # never armed
        a.start(1)
        b.start(2)
        self.assertEqual(self.timers.armed(), 2)
        self.timers.cancel_all()
        self.assertEqual(self.timers.armed(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        a.cancel()  # cancelling a disarmed timer is harmless
