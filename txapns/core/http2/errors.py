"""The exceptions of the HTTP/2 connection, as part of the txapns exception tree."""

from __future__ import annotations

from ..errors import APNsError, ProtocolError
from .frames import error_code_name


class H2ProtocolError(ProtocolError):
    """The server broke HTTP/2; the connection has sent GOAWAY with ``error_code`` and is dead.

    :meth:`~.connection.H2ClientConnection.receive_data` never raises it: it reports a
    :class:`~.events.ConnectionTerminated` event, whose :meth:`~.events.ConnectionTerminated.
    as_error` gives this exception for errbacks.
    """

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(f"{error_code_name(error_code)}: {reason}")
        self.error_code = error_code
        self.reason = reason


class H2UsageError(APNsError):
    """The connection cannot do what was asked; nothing was queued."""


class StreamLimitError(H2UsageError):
    """No stream slot: the server's SETTINGS_MAX_CONCURRENT_STREAMS are all in use."""


class ConnectionClosingError(H2UsageError):
    """No new streams on this connection: GOAWAY was sent or received, the connection failed,
    or its stream ids are exhausted. Use another connection."""


class StreamClosedError(H2UsageError):
    """The stream is not open (it finished, was reset, or never existed)."""


__all__ = [
    "ConnectionClosingError",
    "H2ProtocolError",
    "H2UsageError",
    "StreamClosedError",
    "StreamLimitError",
]
