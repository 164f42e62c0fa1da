"""Small pieces of Twisted glue the clients and the service share."""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet.interfaces import IDelayedCall


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
