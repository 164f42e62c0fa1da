"""Waiters for "no connection open any more", shared by the fake servers."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed


class IdleWaiters:
    def __init__(self) -> None:
        self._waiters: list[Deferred[None]] = []

    def wait(self, idle: bool) -> Deferred[None]:
        """Fires at once if ``idle``, else at the next :meth:`fire`."""
        if idle:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
