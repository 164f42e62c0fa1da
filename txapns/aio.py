"""Sending from ``async def``: txapns for asyncio applications.

An asyncio application (sygnal-style) runs Twisted on the asyncio reactor, so Twisted and
asyncio share one event loop. This module turns that into a small, safe face:

* :func:`start_reactor` installs Twisted's asyncio reactor on the running event loop (if no
  reactor is installed yet) and starts it; :func:`stop_reactor` runs Twisted's shutdown at
  the end, without stopping the loop; ``async with`` :func:`running_reactor` does both. A
  reactor that is installed but not started accepts work and never does it (name
  resolution waits on a thread pool that only starts with the reactor): :class:`AsyncClient`
  refuses it with :class:`ReactorNotRunningError` instead of waiting for ever.
* :class:`AsyncClient` wraps a client (:class:`~txapns.http2.HTTP2Client` or
  :class:`~txapns.binary.BinaryClient`): ``await client.send(n)`` returns the
  :class:`~txapns.core.result.Result`, and ``async with`` starts and stops it.
* Cancelling an ``await client.send(n)`` (``task.cancel()``, ``asyncio.timeout``,
  ``wait_for``) withdraws the notification when it is not yet written to APNs: it is never
  sent, and the :class:`asyncio.CancelledError` says ``withdrawn: … was never sent``. When
  it is too late (in flight, or possibly delivered by an earlier attempt) the error says
  ``too late to withdraw …`` and a warning is logged: the notification may still be
  delivered. To learn the outcome either way, use :meth:`AsyncClient.submit`: the
  :class:`PendingSend` it returns has :meth:`~PendingSend.withdraw` (True or False) and
  stays awaitable for the result.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator
from types import TracebackType
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .core.notification import Notification, shorten
from .core.result import Result

log = Logger(namespace="txapns.aio")

__all__ = [
    "AsyncClient",
    "PendingSend",
    "ReactorNotRunningError",
    "running_reactor",
    "start_reactor",
    "stop_reactor",
]


class ReactorNotRunningError(RuntimeError):
    """Twisted's reactor cannot serve this event loop (not asyncio's, or not started)."""


class _Client(Protocol):
    def send(self, notification: Notification) -> Deferred[Result]: ...

    def stop(self, timeout: float = 10.0) -> Deferred[None]: ...


def start_reactor(loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """Twisted's reactor, running on ``loop`` (default: the running loop).

    Installs :class:`~twisted.internet.asyncioreactor.AsyncioSelectorReactor` on the loop
    when no reactor is installed yet, and starts it (``startRunning``, without signal
    handlers: the asyncio application owns those). Call it from ``async def`` before
    anything imports ``twisted.internet.reactor``. Raises :class:`ReactorNotRunningError`
    when another reactor (or one on another loop) is installed already.
    """
    import sys

    loop = loop if loop is not None else asyncio.get_running_loop()
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        asyncioreactor.install(loop)
    from twisted.internet import reactor

    _check_loop(reactor, loop)
    if not reactor.running:
        reactor.startRunning(installSignalHandlers=False)  # type: ignore[attr-defined]
    return reactor


async def stop_reactor(reactor: Any = None) -> None:
    """Run Twisted's shutdown (its ``shutdown`` triggers: connections closed, the thread pool
    stopped) and return when it is done, leaving the asyncio loop running: call it at the end
    of the ``async def`` that called :func:`start_reactor`, or the process cannot exit while
    the reactor's threads wait for work."""
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    if not getattr(reactor, "running", False):
        return
    from twisted.internet.base import ReactorBase

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        # What crash() does, except stopping the asyncio loop: asyncio.run owns that loop.
        ReactorBase.crash(reactor)
        if not done.done():
            done.set_result(None)

    shutdown = reactor._eventTriggers.get("shutdown")
    if shutdown is not None:
        shutdown.during = [t for t in shutdown.during if t[0] != reactor.crash]
    reactor.addSystemEventTrigger("after", "shutdown", finished)
    reactor.stop()
    await done


@contextlib.asynccontextmanager
async def running_reactor() -> AsyncIterator[Any]:
    """``async with running_reactor() as reactor:`` :func:`start_reactor` on entry,
    :func:`stop_reactor` on the way out, also when the body raises."""
    reactor = start_reactor()
    try:
        yield reactor
    finally:
        await stop_reactor(reactor)


def _check_loop(reactor: Any, loop: asyncio.AbstractEventLoop) -> None:
    reactor_loop = getattr(reactor, "_asyncioEventloop", None)
    if reactor_loop is None:
        raise ReactorNotRunningError(
            f"the installed reactor is {type(reactor).__name__}, not Twisted's asyncio "
            "reactor: call txapns.aio.start_reactor() (or "
            "twisted.internet.asyncioreactor.install()) before anything imports "
            "twisted.internet.reactor"
        )
    if reactor_loop is not loop:
        raise ReactorNotRunningError(
            "Twisted's asyncio reactor runs on another event loop than this one: install "
            "it from the loop that awaits the sends (txapns.aio.start_reactor())"
        )


class PendingSend:
    """One notification handed to the client: await it for its
    :class:`~txapns.core.result.Result`, or :meth:`withdraw` it."""

    def __init__(
        self, client: _Client, notification: Notification, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.client = client
        self.notification = notification
        #: The result, once it has arrived (also after a cancellation).
        self.result: Result | None = None
        self._future: asyncio.Future[Result] = loop.create_future()
        client.send(notification).addCallback(self._arrived)

    def _arrived(self, result: Result) -> Result:
        self.result = result
        if not self._future.done():
            self._future.set_result(result)
        return result

    def done(self) -> bool:
        return self.result is not None

    def withdraw(self) -> bool:
        """Take the notification back if it is not yet written to APNs: True (its result,
        rejected with ``local="withdrawn"``, is in :attr:`result`); False when it is too
        late or the client cannot withdraw (:class:`~txapns.binary.BinaryClient`)."""
        if self.result is not None:
            return False
        withdraw = getattr(self.client, "withdraw", None)
        return bool(withdraw(self.notification)) if withdraw is not None else False

    def __await__(self) -> Generator[Any, None, Result]:
        return self._wait().__await__()

    async def _wait(self) -> Result:
        try:
            return await asyncio.shield(self._future)
        except asyncio.CancelledError as e:
            token = shorten(self.notification.token)
            withdrawn = self.withdraw() or (
                self.result is not None and self.result.local == "withdrawn"
            )
            if withdrawn:
                raise asyncio.CancelledError(f"withdrawn: {token} was never sent") from e
            if self.result is not None:
                why = "its result had arrived already"
            elif getattr(self.client, "withdraw", None) is None:
                why = f"{type(self.client).__name__} cannot withdraw; it may still be sent"
            else:
                why = (
                    "it is written to APNs (or may have been delivered by an earlier "
                    "attempt) and may still be delivered"
                )
            log.warn("send of {token} cancelled too late to withdraw: {why}", token=token, why=why)
            # A plain CancelledError: asyncio.timeout() and wait_for() turn only that one
            # into TimeoutError.
            raise asyncio.CancelledError(f"too late to withdraw {token}: {why}") from e


class AsyncClient:
    """An asyncio face for a txapns client on Twisted's asyncio reactor.

    ``reactor`` defaults to the client's own (``client.clock`` or ``client.reactor``). The
    reactor must be Twisted's asyncio reactor on the running loop, started
    (:func:`start_reactor`); otherwise :class:`ReactorNotRunningError` is raised at once.
    """

    def __init__(self, client: _Client, *, reactor: Any = None) -> None:
        self.client = client
        self.reactor = (
            reactor
            if reactor is not None
            else getattr(client, "clock", None) or getattr(client, "reactor", None)
        )

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        _check_loop(self.reactor, loop)
        if not getattr(self.reactor, "running", False):
            raise ReactorNotRunningError(
                "Twisted's reactor is installed but not running, so nothing would ever be "
                "sent (not even the DNS lookup): call txapns.aio.start_reactor() in your "
                "async main, or reactor.startRunning()"
            )
        return loop

    def submit(self, notification: Notification) -> PendingSend:
        """Hand the notification to the client; raises what the client's ``send`` raises
        (:class:`~txapns.core.errors.ValidationError`, ``QueueFullError``…)."""
        return PendingSend(self.client, notification, self._loop())

    async def send(self, notification: Notification) -> Result:
        """Send one notification and return its :class:`~txapns.core.result.Result`.
        Cancellation withdraws it if it is not yet written (see the module's text)."""
        return await self.submit(notification)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the client: what it holds is finished within ``timeout`` seconds."""
        self._loop()
        await self.client.stop(timeout).asFuture(asyncio.get_running_loop())

    async def __aenter__(self) -> AsyncClient:
        self._loop()
        start = getattr(self.client, "start", None)
        if start is not None:
            start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
