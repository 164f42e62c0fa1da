"""What :meth:`H2ClientConnection.receive_data <.connection.H2ClientConnection.receive_data>`
reports.

Every request (stream id returned by ``send_request``) ends in **exactly one** of:

* :class:`ResponseReceived` — the complete response (END_STREAM seen);
* :class:`StreamReset` — reset by the server (``remote=True``) or by us because the server
  broke a stream-level rule (``remote=False``); a stream the *caller* resets with
  ``reset_stream`` gets no event;
* listed in :attr:`GoAwayReceived.unprocessed_stream_ids` — never processed, safe to re-send;
* listed in :attr:`ConnectionTerminated.unanswered_stream_ids` — outcome unknown;
* still in ``open_stream_ids`` when the transport is lost (or after an abortive ``close``,
  which returns them) — outcome unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import H2ProtocolError
from .frames import ErrorCode, error_code_name

__all__ = [
    "ConnectionTerminated",
    "GoAwayReceived",
    "PingAcknowledged",
    "ResponseReceived",
    "SettingsChanged",
    "StreamReset",
]


@dataclass(slots=True)
class ResponseReceived:
    """A complete response. ``headers`` excludes ``:status``; names are lower-case bytes.

    Not frozen, unlike the other events: one is made per notification, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) cost three times as much.
    Its lists made it unhashable anyway; treat it as read-only."""

    stream_id: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: Trailing header fields, if the server sent any (APNs does not).
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream ended without a complete response."""

    stream_id: int
    error_code: int
    #: ``True``: the server sent RST_STREAM. ``False``: we reset it (the server broke a rule
    #: for this stream, e.g. a malformed response or a stream flow-control overflow).
    remote: bool
    #: Why we reset it (``remote=False`` only).
    reason: str = ""

    @property
    def retry_safe(self) -> bool:
        """REFUSED_STREAM from the server guarantees the request was not processed."""
        return self.remote and self.error_code == ErrorCode.REFUSED_STREAM

    @property
    def error_name(self) -> str:
        return error_code_name(self.error_code)


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The server will accept no new streams.

    Streams with ids above ``last_stream_id`` were never processed: they are listed in
    ``unprocessed_stream_ids`` (ascending), are closed, and will get no other event. Streams at
    or below it may still complete.
    """

    last_stream_id: int
    error_code: int
    #: Opaque; APNs puts a JSON ``{"reason": …}`` here.
    debug_data: bytes
    unprocessed_stream_ids: list[int]

    @property
    def error_name(self) -> str:
        return error_code_name(self.error_code)


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The server sent SETTINGS (already acknowledged). Values are the ones now in force."""

    max_concurrent_streams: int
    initial_window_size: int
    max_frame_size: int
    header_table_size: int
    max_header_list_size: int | None
    #: The raw (identifier, value) pairs of this frame, in order.
    changed: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The server answered a PING carrying ``opaque``."""

    opaque: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """We found a protocol violation, queued GOAWAY(``error_code``) and the connection is dead.

    ``unanswered_stream_ids`` lists the streams that were still waiting for a response: their
    outcome is unknown. Write out ``data_to_send()`` (the GOAWAY) and close the transport.
    """

    error_code: int
    reason: str
    unanswered_stream_ids: list[int]

    @property
    def error_name(self) -> str:
        return error_code_name(self.error_code)

    def as_error(self) -> H2ProtocolError:
        return H2ProtocolError(self.error_code, self.reason)


Event = (
    ResponseReceived
    | StreamReset
    | GoAwayReceived
    | SettingsChanged
    | PingAcknowledged
    | ConnectionTerminated
)
