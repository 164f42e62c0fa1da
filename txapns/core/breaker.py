"""The circuit breaker of a credential, as a sans-IO state machine.

When APNs refuses the credential itself (a 403 such as ``InvalidProviderToken``, or a GOAWAY
saying so), sending more with it only earns more refusals (and, for tokens, may get the key
throttled). The breaker *opens*: nothing is sent for ``reset`` seconds. Then it is
*half-open*: one notification goes out as a probe. An answer that proves the credential
works *closes* it; another refusal opens it again for ``reset`` seconds.

The glue owns the timer: after :meth:`CircuitBreaker.open` it calls
:meth:`CircuitBreaker.half_open` once :attr:`CircuitBreaker.half_open_at` has come (the time
is passed in; nothing here reads a clock).
"""

from __future__ import annotations

import enum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.StrEnum):
    """A :class:`str` subclass: ``state == "open"`` holds and it serialises as its value."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """closed → open (credential refused) → half-open (after ``reset`` s) → closed (a probe
    answered) or open again (refused again)."""

    __slots__ = ("half_open_at", "reason", "reset", "state", "status")

    def __init__(self, reset: float) -> None:
        if reset <= 0:
            raise ValueError("reset must be positive")
        #: Seconds the breaker stays open before it lets a probe through.
        self.reset = reset
        self.state = BreakerState.CLOSED
        #: Why it opened (Apple's reason), while not closed.
        self.reason: str | None = None
        #: The HTTP status that opened it, if a response did (``None`` for a GOAWAY).
        self.status: int | None = None
        #: When (the caller's clock) it may half-open, while open.
        self.half_open_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self.state is BreakerState.OPEN

    @property
    def is_half_open(self) -> bool:
        return self.state is BreakerState.HALF_OPEN

    def open(self, status: int | None, reason: str, now: float) -> bool:
        """The credential was refused at ``now``. True when this opened the breaker (it was
        closed or half-open): the caller arms a timer for :attr:`half_open_at`; False when
        it was open already (nothing changes, the first reason stays)."""
        if self.state is BreakerState.OPEN:
            return False
        self.state = BreakerState.OPEN
        self.reason = reason
        self.status = status
        self.half_open_at = now + self.reset
        return True

    def half_open(self, now: float) -> bool:
        """The reset time has come: let one probe through. True when the state changed
        (open and due at ``now``); a call that comes early or when not open changes nothing."""
        due = self.half_open_at
        if self.state is not BreakerState.OPEN or due is None or now + 1e-6 < due:
            return False
        self.state = BreakerState.HALF_OPEN
        self.half_open_at = None
        return True

    def probe_answered(self) -> bool:
        """A probe was answered without refusing the credential: True when that closed the
        breaker (it was half-open)."""
        if self.state is not BreakerState.HALF_OPEN:
            return False
        self.state = BreakerState.CLOSED
        self.reason = None
        self.status = None
        return True
