"""What the engine and the API need of a spool, whichever backend stores it.

Two backends implement :class:`SpoolBackend`:

* :class:`~txapns.service.spool.Spool` (SQLite, one process): the engine keeps the queue in
  memory, fed by :meth:`SpoolBackend.recover` at start and by its own submissions;
* :class:`~txapns.service.redis_spool.RedisSpool` (Redis Streams, many processes): a
  submission goes to a shared stream and *any* instance may send it, so the engine's queue
  is fed by the spool itself (:meth:`SpoolBackend.start_consuming`), never by
  :meth:`SpoolBackend.add_job`. :attr:`SpoolBackend.shared` tells the engine which is which.

Everything else (job views, outcomes, the invalid-token feed, idempotency) has the same
meaning in both, so the API answers the same way whichever backend runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from ..core.notification import Notification
from .spool import (
    InvalidToken,
    JobView,
    OutcomeRecord,
    OutcomesHeldError,
    Recovery,
    SpooledNotification,
    SpoolUnavailableError,
    StoredJob,
)

__all__ = ["ConsumerHooks", "OutcomesHeldError", "SpoolBackend", "SpoolUnavailableError"]


@dataclass(frozen=True, slots=True)
class ConsumerHooks:
    """How a shared spool hands work to the engine."""

    #: Give ``items`` (read from the shared queue) to the engine to send.
    feed: Callable[[str, Sequence[SpooledNotification]], None]
    #: How many more notifications the engine takes for an app now (0: none).
    room: Callable[[str], int]
    #: Job ids someone waits for (a synchronous API request).
    waiting: Callable[[], Collection[str]]
    #: A job someone waits for is done (possibly finished by another instance).
    finished: Callable[[str], None]


class SpoolBackend(Protocol):
    """The asynchronous spool interface (see :class:`~txapns.service.spool.Spool`)."""

    @property
    def shared(self) -> bool:
        """True when other processes share the queue (the spool feeds the engine)."""
        ...

    @property
    def available(self) -> bool:
        """False while the spool cannot store (the API answers 503, ``/healthz`` fails)."""
        ...

    def add_job(
        self,
        app: str,
        notifications: Sequence[Notification],
        *,
        now: float,
        send_at: float | None = None,
        async_: bool = False,
        idempotency_key: str | None = None,
        inflight: bool = False,
        fingerprint: str | None = None,
    ) -> Deferred[StoredJob]: ...

    def mark_inflight(self, ids: Sequence[int], *, now: float) -> Deferred[None]: ...

    def requeue(self, ids: Sequence[int], *, now: float) -> Deferred[None]: ...

    def record_outcomes(
        self, records: Sequence[OutcomeRecord], *, now: float
    ) -> Deferred[list[str]]: ...

    def add_invalid_tokens(
        self,
        app: str,
        entries: Sequence[tuple[str, float | None]],
        *,
        now: float,
        source: str = "feedback",
    ) -> Deferred[None]: ...

    def recover(self, *, now: float) -> Deferred[Recovery]: ...

    def purge(self, *, before: float) -> Deferred[int]: ...

    def job(self, job_id: str, *, durable: bool = False) -> Deferred[JobView | None]:
        """The job's view, or None. ``durable``: the answer will promise the job, so what
        was stored without being made durable yet (a synchronous job) is made so first."""
        ...

    def find_job(self, app: str, idempotency_key: str) -> Deferred[str | None]: ...

    def invalid_tokens(
        self, app: str, *, since: float | None = None
    ) -> Deferred[list[InvalidToken]]: ...

    def close(self) -> Deferred[None]: ...

    def start_consuming(self, hooks: ConsumerHooks) -> None:
        """Start handing queued work to the engine (a no-op for a non-shared spool)."""
        ...

    def health(self) -> dict[str, object]:
        """The spool's part of ``/healthz``."""
        ...

    def metrics_text(self) -> str:
        """Extra Prometheus families for ``/metrics`` (may be empty)."""
        ...
