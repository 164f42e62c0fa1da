"""How the clients hold their state and their timers: enums (:class:`Phase` for the
lifecycle, :class:`Dial` for a binary connection slot, :class:`Reach` and :class:`Retry` for
the HTTP/2 pool), and one small helper for timers: each :class:`Timer` owns at most one
``callLater`` handle, and :meth:`Timers.cancel_all` cancels every one of them on stop.

It replaces the pattern of an ``IDelayedCall | None`` attribute per timer, reset to ``None`` at
the top of each callback and cancelled in a hand-written tuple on stop: a timer added here
cannot be forgotten there.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Dial", "Phase", "Phased", "Reach", "Retry", "Timer", "Timers"]


class Phase(enum.Enum):
    """A client's life after ``start``: it takes notifications (``OPEN``); ``stop`` was
    called and what it holds may still finish (``DRAINING``); it closes its connections and
    sends nothing more (``CLOSED``)."""

    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class Dial(enum.Enum):
    """A binary connection slot's connection attempts (its connection itself is its
    protocol, or ``None``)."""

    #: ``start`` not called: submissions queue, nothing connects.
    UNSTARTED = "unstarted"
    #: No attempt in flight: connected, waiting out a backoff, or idle until a submission.
    STANDBY = "standby"
    #: An ``endpoint.connect`` in flight, until it fails or the protocol is connected.
    CONNECTING = "connecting"


class Reach(enum.Enum):
    """Whether the HTTP/2 pool keeps its ``min_connections`` open."""

    #: It does (and opens more for work).
    KEEP = "keep"
    #: It gave up: ``max_tls_failures`` TLS failures in a row, or the proxy refused its
    #: credentials. It connects only for work, until a connection proves itself.
    GAVE_UP = "gave-up"


class Retry(enum.Enum):
    """Whether the HTTP/2 pool's next connection attempt after a failure waits a backoff."""

    #: It waits: the retry timer is armed first.
    WAIT = "wait"
    #: The backoff passed (the retry timer fired): the next attempt goes at once.
    DUE = "due"


class Phased:
    """What the clients' code asks of their :class:`Phase`."""

    phase: Phase

    @property
    def accepting(self) -> bool:
        """It takes new notifications: ``stop`` was not called."""
        return self.phase is Phase.OPEN

    @property
    def closing(self) -> bool:
        """Closing or closed: no connection is made or written to, every timer is cancelled."""
        return self.phase is Phase.CLOSED


class Timer:
    """A named ``callLater`` slot: armed or not; firing disarms it before the callback runs
    (so the callback may arm it again)."""

    __slots__ = ("_call", "_clock", "_function")

    def __init__(self, clock: IReactorTime, function: Callable[[], object]) -> None:
        self._clock = clock
        self._function = function
        self._call: IDelayedCall | None = None

    @property
    def armed(self) -> bool:
        return self._call is not None

    def when(self) -> float | None:
        """When it fires (the clock's time), if armed."""
        call = self._call
        return None if call is None else call.getTime()

    def start(self, delay: float) -> None:
        """Fire after ``delay`` seconds, replacing an earlier arming."""
        call = self._call
        if call is not None and call.active():
            call.cancel()
        self._call = self._clock.callLater(delay, self._fire)

    def start_unless_armed(self, delay: float) -> None:
        """Fire after ``delay`` seconds unless it is already armed (then nothing changes)."""
        if self._call is None:
            self._call = self._clock.callLater(delay, self._fire)

    def cancel(self) -> None:
        call = self._call
        self._call = None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        self._function()


class Timers:
    """The timers of one object: made with :meth:`timer`, cancelled together by
    :meth:`cancel_all`."""

    __slots__ = ("_clock", "_timers")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._timers: list[Timer] = []

    def timer(self, function: Callable[[], object]) -> Timer:
        timer = Timer(self._clock, function)
        self._timers.append(timer)
        return timer

    def cancel_all(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def armed(self) -> int:
        """How many are armed (tests: nothing is left pending after a stop)."""
        return sum(1 for timer in self._timers if timer.armed)
