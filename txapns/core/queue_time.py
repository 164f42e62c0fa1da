"""How long a notification may wait to be written, and what to say when it waited too long
(sans-IO).

A client's per-request ``deadline`` starts when a request is written. Before that a
notification waits in the client's queue: while no connection can be made (APNs or the proxy
unreachable, a closed port, DNS failing) it would wait for ever. :class:`QueueTimeLimit` bounds
that wait: a notification not written within ``limit`` seconds of ``send`` is finished
``rejected`` with ``local="unreachable"`` (no connection was up at that moment) or
``local="queue-time"`` (connected, but it was never reached), and a reason that gives the
number of failed connection attempts and the last error. One that may already have been
delivered by an earlier attempt is finished ``unknown`` instead, with the same reason.

:class:`ConnectFailures` keeps what that reason needs: failed connection attempts since the
last connection that worked, and the last error. The clients feed both with their reactor's
time; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = [
    "DEFAULT_MAX_QUEUE_TIME",
    "NOT_SENT",
    "QUEUE_TIME",
    "UNREACHABLE",
    "ConnectFailures",
    "QueueTimeLimit",
]

#: Seconds a notification may wait to be written, by default.
DEFAULT_MAX_QUEUE_TIME = 300.0
#: ``Result.local`` of a notification that waited too long while no connection was up.
UNREACHABLE = "unreachable"
#: ``Result.local`` of one that waited too long although a connection was up.
QUEUE_TIME = "queue-time"
#: The ``local`` kinds of rejections that certainly never reached APNs for lack of a
#: connection or of a turn: the service keeps such work in its spool (up to its expiration).
NOT_SENT = frozenset({UNREACHABLE, QUEUE_TIME})

#: Float slack when comparing times.
_EPSILON = 1e-6


class _Waiting(Protocol):
    @property
    def submitted_at(self) -> float: ...


W = TypeVar("W", bound=_Waiting)


class ConnectFailures:
    """Failed connection attempts since the last connection that worked, and the last error."""

    __slots__ = ("count", "last")

    def __init__(self) -> None:
        self.count = 0
        self.last: str | None = None

    def failed(self, why: str) -> None:
        self.count += 1
        self.last = why

    def succeeded(self) -> None:
        self.count = 0
        self.last = None


@dataclass(frozen=True, slots=True)
class QueueTimeLimit:
    """At most ``limit`` seconds from ``send`` to the first write."""

    limit: float = DEFAULT_MAX_QUEUE_TIME

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise ValueError(f"max_queue_time must be positive, not {self.limit!r}")

    def split(self, items: Iterable[W], now: float) -> tuple[list[W], list[W]]:
        """``(expired, kept)``, each in the order given."""
        cutoff = now - self.limit + _EPSILON
        expired: list[W] = []
        kept: list[W] = []
        for item in items:
            (expired if item.submitted_at <= cutoff else kept).append(item)
        return expired, kept

    def next_check(self, waiting: Iterable[W], now: float) -> float:
        """Seconds from ``now`` until the oldest of ``waiting`` passes the limit; ``limit``
        when nothing waits (what is in flight may come back to the queue)."""
        oldest = min((item.submitted_at for item in waiting), default=None)
        if oldest is None:
            return self.limit
        return max(0.0, oldest + self.limit - now)

    def outcome(self, failures: ConnectFailures, connected: bool) -> tuple[str, str]:
        """``(local, reason)`` for a notification that passed the limit."""
        if connected:
            return QUEUE_TIME, f"not sent within {self.limit:g} s (queued behind others)"
        attempts = failures.count
        detail = f"{attempts} failed connection attempt{'' if attempts == 1 else 's'}"
        if failures.last:
            detail += f"; last: {failures.last}"
        return UNREACHABLE, f"not sent within {self.limit:g} s: APNs unreachable ({detail})"
