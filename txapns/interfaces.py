"""What the service and applications need from a client, whichever protocol it speaks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred

from .core.counters import Counters
from .core.notification import Notification
from .core.result import Result

__all__ = ["Sender"]


class Sender(Protocol):
    """A started client: the binary :class:`~txapns.binary.BinaryClient` or the HTTP/2 client.

    ``send`` validates synchronously (raising a :class:`~txapns.core.errors.ValidationError`
    or :class:`~txapns.core.errors.QueueFullError` before anything is queued) and returns a
    Deferred that fires exactly once, always with a :class:`Result` (never an errback): the
    outcome is in the result.
    """

    counters: Counters

    def send(self, notification: Notification) -> Deferred[Result]: ...

    def send_to(self, notification: Notification, on_result: Callable[[Result], object]) -> None:
        """Like :meth:`send`, raising the same errors, but the result goes to ``on_result``
        (called exactly once) instead of a Deferred: for callers that hand over thousands of
        notifications a second and need no Deferred each (the service's engine)."""
        ...

    def pending(self) -> int:
        """Notifications taken but not yet finished (queued or in flight)."""
        ...

    def stop(self, timeout: float = 10.0) -> Deferred[None]:
        """Stop taking notifications; finish or resolve what is held, waiting up to
        ``timeout`` seconds for it; cancel every timer."""
        ...
