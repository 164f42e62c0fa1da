"""A :class:`~txapns.interfaces.Sender` test double whose Deferreds the test controls.

It speaks no protocol: ``send`` queues the notification and returns a Deferred that fires when
the test calls :meth:`FakeSender.answer` (or at once, or on the next reactor turn, with an
``auto`` responder). Counters follow the Sender invariant.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from ..core.counters import Counters
from ..core.errors import QueueFullError
from ..core.notification import Notification
from ..core.result import Outcome, Result

__all__ = ["FakeSender", "ReportingFakeSender", "accept"]


def accept(n: Notification) -> Result:
    """An ``auto`` responder: APNs took it (status 200, its ``apns-id``)."""
    return Result.accepted_for(n, 1, None, status=200, apns_id=n.apns_id)


class FakeSender:
    def __init__(
        self,
        *,
        capacity: int | None = None,
        auto: Callable[[Notification], Result] | None = None,
        clock: IReactorTime | None = None,
        validate: Callable[[Notification], None] | None = None,
        stop_outcome: Outcome = Outcome.REJECTED,
    ) -> None:
        self.counters = Counters()
        self.capacity = capacity
        self.auto = auto
        self.clock = clock
        self.validate = validate
        self.stop_outcome = stop_outcome
        #: Every notification ever taken, in order.
        self.sent: list[Notification] = []
        self._waiting: dict[int, tuple[Notification, Deferred[Result]]] = {}
        self._seq = 0
        self.stopped = False
        self.stop_calls = 0
        #: The ``timeout`` of each ``stop`` call.
        self.stop_timeouts: list[float] = []
        #: What a real client reports: why it cannot send (circuit open, TLS failing), and
        #: its ready connections (``None``: not reported).
        self.unavailable: str | None = None
        self.connections: int | None = None

    def send(self, notification: Notification) -> Deferred[Result]:
        if self.validate is not None:
            self.validate(notification)
        if self.stopped:
            self.counters.submitted += 1
            result = Result(
                notification, Outcome.REJECTED, reason="client stopped", local="stopped"
            )
            self._count(result)
            return succeed(result)
        if self.capacity is not None and len(self._waiting) >= self.capacity:
            raise QueueFullError(f"fake sender holds {self.capacity}")
        self.counters.submitted += 1
        self.sent.append(notification)
        d: Deferred[Result] = Deferred()
        self._seq += 1
        key = self._seq
        self._waiting[key] = (notification, d)
        if self.auto is not None:
            result = self.auto(notification)
            if self.clock is None:
                self._fire(key, result)
            else:
                self.clock.callLater(0, self._fire, key, result)
        return d

    def send_to(self, notification: Notification, on_result: Callable[[Result], object]) -> None:
        self.send(notification).addCallback(on_result)

    def pending(self) -> int:
        return len(self._waiting)

    @property
    def waiting(self) -> list[Notification]:
        return [n for n, _ in self._waiting.values()]

    def _count(self, result: Result) -> None:
        self.counters.record(result)

    def _fire(self, key: int, result: Result) -> None:
        entry = self._waiting.pop(key, None)
        if entry is not None:
            self._count(result)
            entry[1].callback(result)

    def answer(
        self,
        index: int = 0,
        outcome: Outcome = Outcome.ACCEPTED,
        *,
        status: int | None = None,
        reason: str | None = None,
        timestamp: datetime | None = None,
        local: str | None = None,
    ) -> Result:
        """Fire the ``index``-th waiting notification's Deferred with a result."""
        key = list(self._waiting)[index]
        n, _ = self._waiting[key]
        if status is None and outcome is Outcome.ACCEPTED:
            status = 200
        result = Result(
            n,
            outcome,
            status=status,
            reason=reason,
            apns_id=n.apns_id,
            timestamp=timestamp,
            attempts=1,
            local=local,
        )
        self._fire(key, result)
        return result

    def answer_all(self, outcome: Outcome = Outcome.ACCEPTED, **kw: object) -> int:
        count = 0
        while self._waiting:
            self.answer(0, outcome, **kw)  # type: ignore[arg-type]
            count += 1
        return count

    def stop(self, timeout: float = 10.0) -> Deferred[None]:
        """Resolve what is held (as never sent, by default) and take nothing more."""
        self.stop_calls += 1
        self.stop_timeouts.append(timeout)
        self.stopped = True
        while self._waiting:
            if self.stop_outcome is Outcome.REJECTED:
                self.answer(0, Outcome.REJECTED, reason="client stopped", local="stopped")
            else:
                self.answer(0, self.stop_outcome, reason="connection closed at stop")
        return succeed(None)


class ReportingFakeSender(FakeSender):
    """A :class:`FakeSender` with a ``health()`` as the real clients have (connections)."""

    def health(self) -> dict[str, object]:
        return {"connections": self.connections, "unavailable": self.unavailable}
