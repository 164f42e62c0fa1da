"""What the two clients' ``send_many`` share: pulling from an iterator while there is room,
counting this run's outcomes, and firing once every pulled notification has its result."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .core.counters import Counters
from .core.notification import Notification
from .core.result import Result

log = Logger(namespace="txapns.send_many")

ResultCallback = Callable[[Result], object]


class BulkFeeder:
    """Subclasses implement :meth:`_pump` (hand notifications to the client while it has
    room, setting ``exhausted`` at the end of the source); the client calls :meth:`pump`
    when room frees up and is told ``_feeder_done(feeder)`` at the end."""

    def __init__(
        self, client: Any, source: Iterator[Notification], on_result: ResultCallback | None
    ) -> None:
        self.client = client
        self.source = source
        self.on_result = on_result
        self.counters = Counters()
        self.outstanding = 0
        self.exhausted = False
        self.pumping = False
        self.done: Deferred[Counters] = Deferred()

    def pump(self) -> None:
        if self.pumping or self.exhausted:
            return
        self.pumping = True
        try:
            self._pump()
        finally:
            self.pumping = False
        self._maybe_done()

    def _pump(self) -> None:
        raise NotImplementedError

    def _local_failure(self, n: Notification, reason: str, local: str) -> None:
        """Finish a notification the client refused (never sent) as rejected."""
        self.counters.submitted += 1
        result = Result.rejected_for(n, reason, local=local)
        self.counters.record(result)
        self._emit(result)

    def _result(self, result: Result) -> None:
        self.outstanding -= 1
        self.counters.record(result)
        self._emit(result)
        if self.exhausted and self.outstanding == 0:
            self._maybe_done()

    def _emit(self, result: Result) -> None:
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.failure("send_many result callback raised")

    def _maybe_done(self) -> None:
        if self.exhausted and self.outstanding == 0 and not self.done.called:
            self.client._feeder_done(self)
            self.done.callback(self.counters)
