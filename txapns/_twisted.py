"""Small pieces of Twisted glue the clients and the service share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .core.result import Result

_log = Logger(namespace="txapns")


def cancel_call(call: IDelayedCall | None) -> None:
    """Cancel a delayed call unless it is absent, has run or was cancelled already."""
    if call is not None and call.active():
        call.cancel()


def set_no_delay(transport: Any) -> None:
    """TCP_NODELAY on the TCP transport under ``transport``: with ``wrapClientTLS`` (or a
    proxy tunnel) the protocol's transport is a layer above it."""
    while transport is not None:
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            with contextlib.suppress(OSError):
                setter(True)
            return
        transport = getattr(transport, "transport", None)


def deliver(handle: object, result: Result, name: str) -> None:
    """Hand a final result to its handle, the one way both clients do: a Deferred fires; a
    callable is called, and an exception it raises is logged, never propagated (one
    caller's bug must not stop the other results)."""
    # type() and callable() first: isinstance(x, Deferred) goes through the ABC machinery
    # (Deferred is an Awaitable), which costs more than the rest of this on the hot path.
    if type(handle) is Deferred:
        handle.callback(result)
    elif callable(handle):
        try:
            handle(result)
        except Exception:
            _log.failure("{name}: result callback raised", name=name)
    elif isinstance(handle, Deferred):
        handle.callback(result)


def in_turns(
    clock: IReactorTime, count: int, per_turn: int, work: Callable[[int, int], None]
) -> Deferred[None]:
    """``work(start, stop)`` over ``range(count)`` in slices of ``per_turn``: the first now,
    each next in a later reactor turn, so that a long job (a big job's view) never keeps
    the reactor from everything else for long. Fires once the last slice is done; errbacks
    with the first exception (no later slice runs). Cancelling it cancels the next slice."""
    next_slice: list[IDelayedCall] = []
    done: Deferred[None] = Deferred(lambda _: cancel_call(next_slice.pop() if next_slice else None))

    def step(start: int) -> None:
        next_slice.clear()
        stop = min(start + per_turn, count)
        try:
            work(start, stop)
        except Exception:
            done.errback()
            return
        if stop < count:
            next_slice.append(clock.callLater(0, step, stop))
        else:
            done.callback(None)

    step(0)
    return done
