"""The sans-IO HTTP/2 client connection: bytes in, events out, bytes to send.

:class:`H2ClientConnection` speaks the client half of RFC 9113 for one purpose — many small
POST requests to APNs — and nothing else: no server push (disabled in our SETTINGS), no
priorities sent, no dynamic-table HPACK encoding. It owns no socket, timer or clock: the Twisted
layer feeds it the bytes it reads (:meth:`~H2ClientConnection.receive_data`), acts on the
returned events, writes :meth:`~H2ClientConnection.data_to_send` once per reactor turn (so every
frame queued in that turn goes out in one TLS write), and drives everything time-based itself
(request deadlines → :meth:`~H2ClientConnection.reset_stream`, health pings →
:meth:`~H2ClientConnection.ping`).

Why not ``h2``: in an in-memory client↔server loop the ``h2`` package costs 150–250 µs of CPU
per request on the client side, capping an h2-based provider near 4–6k notifications/s per core,
while the budget is ≤ 50 µs per notification. Encoding a request with ``struct``-packed frame
headers and a stateless HPACK block whose constant part is precomputed per (topic, push type,
authorization) combination (:class:`~.headers.HeaderBlockTemplate`) costs ~3 µs, and ``h2``
in server mode — our conformance oracle — accepts every byte of it. Responses are decoded with
:class:`~.decoder.HeaderDecoder` (one per connection, fed every header block in order, including
those of streams we already reset, so its dynamic table never drifts); :mod:`.decoder` says why
it replaced ``hpack``'s decoder, which remains its test oracle.

Usage::

    conn = H2ClientConnection()
    conn.initiate()
    transport.write(conn.data_to_send())
    template = HeaderBlockTemplate("api.push.apple.com", topic="com.example.app",
                                   push_type=PushType.ALERT, authorization="bearer …")
    block = template.encode(device_path(n.token), apns_id=n.apns_id,
                            content_length=len(n.payload))
    stream_id = conn.send_request(block, n.payload)       # StreamLimitError if no slot
    transport.write(conn.data_to_send())
    for event in conn.receive_data(bytes_read):           # in dataReceived
        ...                                               # ResponseReceived, StreamReset, …
    transport.write(conn.data_to_send())                  # ACKs, WINDOW_UPDATEs, flushed DATA

Error handling: a server that breaks a connection-level rule gets GOAWAY with the matching error
code and a :class:`~.events.ConnectionTerminated` event (never an exception, never a hang);
after that the connection ignores input. A stream-level violation resets that stream
(RST_STREAM) and reports :class:`~.events.StreamReset` with ``remote=False``. Frames for
streams that are closed (finished or reset by us) are ignored; their DATA still counts against
the connection window, which we replenish.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from .decoder import HeaderDecoder, HeaderDecodingError, HeaderListTooLargeError
from .errors import (
    ConnectionClosingError,
    H2ProtocolError,
    StreamClosedError,
    StreamLimitError,
)
from .events import (
    ConnectionTerminated,
    Event,
    GoAwayReceived,
    PingAcknowledged,
    ResponseReceived,
    SettingsChanged,
    StreamReset,
)
from .frames import (
    DEFAULT_HEADER_TABLE_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_WINDOW,
    FRAME_HEADER,
    MAX_MAX_FRAME_SIZE,
    MAX_STREAM_ID,
    MAX_WINDOW,
    PREFACE,
    ErrorCode,
    SettingCode,
    goaway_frame,
    iter_settings,
    ping_frame,
    rst_stream_frame,
    settings_frame,
    unpack_u32,
    unpack_u32x2,
    window_update_frame,
)
from .headers import encode_header_block

__all__ = ["H2ClientConnection"]

# Plain ints in the hot paths (IntEnum comparisons are slower).
_DATA = 0x0
_HEADERS = 0x1
_PRIORITY = 0x2
_RST_STREAM = 0x3
_SETTINGS = 0x4
_PUSH_PROMISE = 0x5
_PING = 0x6
_GOAWAY = 0x7
_WINDOW_UPDATE = 0x8
_CONTINUATION = 0x9

_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20

_PROTOCOL_ERROR = ErrorCode.PROTOCOL_ERROR.value
_FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR.value
_FRAME_SIZE_ERROR = ErrorCode.FRAME_SIZE_ERROR.value
_COMPRESSION_ERROR = ErrorCode.COMPRESSION_ERROR.value
_CANCEL = ErrorCode.CANCEL.value

#: A dynamic table size update to 0 (RFC 7541 §6.3), put in front of the first header block
#: we send: from then on our encoder's table is empty by declaration, so no later
#: SETTINGS_HEADER_TABLE_SIZE from the server can require another update.
_TABLE_SIZE_ZERO = b"\x20"

_pack_header = FRAME_HEADER.pack
_unpack_header = FRAME_HEADER.unpack_from

# Connection states.
_IDLE = 0  # initiate() not called yet
_OPEN = 1
_CLOSING = 2  # GOAWAY sent or received: existing streams continue, no new ones
_DEAD = 3  # protocol error or abortive close: nothing more happens


class _Stream:
    """Per-stream state. A stream is in ``H2ClientConnection._streams`` exactly as long as it
    has no outcome yet."""

    __slots__ = (
        "body",
        "body_len",
        "content_length",
        "end_pending",
        "headers",
        "local_closed",
        "offset",
        "pending",
        "queued",
        "recv_unacked",
        "recv_window",
        "send_window",
        "status",
        "stream_id",
        "trailers",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_unacked = 0
        #: Request body not yet sent (flow control), from ``offset`` on.
        self.pending: bytes = b""
        self.offset = 0
        #: END_STREAM goes on the last frame of ``pending``.
        self.end_pending = False
        #: We have sent END_STREAM.
        self.local_closed = False
        #: In ``H2ClientConnection._blocked``.
        self.queued = False
        #: Final response status, once its HEADERS arrived.
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_len = 0
        self.content_length: int | None = None
        self.trailers: list[tuple[bytes, bytes]] = []


class H2ClientConnection:
    """A client-only, sans-IO HTTP/2 connection for APNs.

    :param initial_window: our SETTINGS_INITIAL_WINDOW_SIZE: how much response data the server
        may send on one stream before we replenish.
    :param connection_window: our connection-level receive window (raised from 65,535 by a
        WINDOW_UPDATE right after the preface); replenished when half is consumed.
    :param max_inbound_frame_size: our SETTINGS_MAX_FRAME_SIZE (16,384 is the default and is not
        sent).
    :param header_table_size: our SETTINGS_HEADER_TABLE_SIZE: the largest HPACK dynamic table the
        server's encoder may use; applied to our decoder when the server acknowledges.
    :param max_header_list_size: our SETTINGS_MAX_HEADER_LIST_SIZE, enforced by the decoder.
    :param max_response_body: a response body longer than this resets its stream (CANCEL) and
        reports :class:`StreamReset`; APNs bodies are tiny.
    :param assumed_max_concurrent_streams: stream limit assumed until the server's first
        SETTINGS frame arrives (1 = what APNs allows before it has seen a valid token).
    """

    def __init__(
        self,
        *,
        initial_window: int = 1 << 20,
        connection_window: int = 1 << 24,
        max_inbound_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        header_table_size: int = DEFAULT_HEADER_TABLE_SIZE,
        max_header_list_size: int = 1 << 16,
        max_response_body: int = 1 << 20,
        assumed_max_concurrent_streams: int = 1,
    ) -> None:
        if not 1 <= initial_window <= MAX_WINDOW:
            raise ValueError("initial_window must be within 1..2**31-1")
        if not DEFAULT_WINDOW <= connection_window <= MAX_WINDOW:
            raise ValueError("connection_window must be within 65535..2**31-1")
        if not DEFAULT_MAX_FRAME_SIZE <= max_inbound_frame_size <= MAX_MAX_FRAME_SIZE:
            raise ValueError("max_inbound_frame_size must be within 16384..2**24-1")
        if not 0 <= header_table_size <= 0xFFFFFFFF:
            raise ValueError("header_table_size must be within 0..2**32-1")
        if not 1 <= max_header_list_size <= 0xFFFFFFFF:
            raise ValueError("max_header_list_size must be within 1..2**32-1")
        if max_response_body < 0 or assumed_max_concurrent_streams < 0:
            raise ValueError("limits must not be negative")
        self._local_initial_window = initial_window
        self._connection_window = connection_window
        self._max_inbound_frame = max_inbound_frame_size
        self._header_table_size = header_table_size
        self._max_header_list_size = max_header_list_size
        self._max_body = max_response_body
        self._max_header_block = max_header_list_size + 4096
        self._stream_threshold = max(1, initial_window // 2)
        self._conn_threshold = connection_window // 2

        self._state = _IDLE
        self._out = bytearray()
        self._inbuf = bytearray()
        self._decoder = HeaderDecoder(max_header_list_size=max_header_list_size)
        self._streams: dict[int, _Stream] = {}
        self._blocked: deque[_Stream] = deque()
        self._next_stream_id = 1
        self._last_stream_id_sent = 0
        self._table_size_update_sent = False
        self._pending_local_settings: deque[list[tuple[int, int]]] = deque()

        # Outbound flow control and the server's settings.
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self._peer_max_concurrent = assumed_max_concurrent_streams
        self._peer_header_table_size = DEFAULT_HEADER_TABLE_SIZE
        self._peer_max_header_list: int | None = None
        self._remote_settings_received = False

        # Inbound flow control (connection level).
        self._recv_window = DEFAULT_WINDOW
        self._recv_unacked = 0

        # Header block being assembled from HEADERS + CONTINUATION (stream 0 = none).
        self._cont_stream = 0
        self._cont_buf = bytearray()
        self._cont_end_stream = False
        self._cont_self_dependent = False

        self._goaway_last_stream_id: int | None = None

    # --- properties ---------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams sent and still waiting for their outcome."""
        return len(self._streams)

    @property
    def open_stream_ids(self) -> list[int]:
        """Their ids, ascending. Outcome unknown if the transport is lost now."""
        return list(self._streams)

    @property
    def max_concurrent_streams(self) -> int:
        """The server's SETTINGS_MAX_CONCURRENT_STREAMS (or the assumed value before it)."""
        return self._peer_max_concurrent

    @property
    def available_streams(self) -> int:
        """How many more requests :meth:`send_request` accepts right now."""
        if self._state > _OPEN:
            return 0
        ids_left = max(0, (MAX_STREAM_ID - self._next_stream_id) // 2 + 1)
        return max(0, min(self._peer_max_concurrent, ids_left) - len(self._streams))

    @property
    def is_closing(self) -> bool:
        """No new streams: GOAWAY sent or received, or the connection is dead."""
        return self._state > _OPEN

    @property
    def is_dead(self) -> bool:
        """A protocol error or an abortive :meth:`close` ended the connection."""
        return self._state == _DEAD

    @property
    def last_stream_id_sent(self) -> int:
        """The highest stream id we opened (0 if none)."""
        return self._last_stream_id_sent

    @property
    def goaway_last_stream_id(self) -> int | None:
        """The lowest last-stream-id of the GOAWAY frames received, or ``None``."""
        return self._goaway_last_stream_id

    @property
    def remote_settings_received(self) -> bool:
        """The server's first SETTINGS frame has arrived (its limits are known)."""
        return self._remote_settings_received

    @property
    def outbound_window(self) -> int:
        """Connection-level flow-control window for request bodies."""
        return self._send_window

    @property
    def buffered_body_bytes(self) -> int:
        """Request body bytes queued behind flow control (O(open streams))."""
        return sum(len(st.pending) - st.offset for st in self._streams.values())

    # --- sending ------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the client preface, our SETTINGS and the connection WINDOW_UPDATE.

        The other methods call it implicitly if it has not been called; calling it twice does
        nothing.
        """
        if self._state != _IDLE:
            return
        settings = [
            (SettingCode.HEADER_TABLE_SIZE.value, self._header_table_size),
            (SettingCode.ENABLE_PUSH.value, 0),
            (SettingCode.INITIAL_WINDOW_SIZE.value, self._local_initial_window),
        ]
        if self._max_inbound_frame != DEFAULT_MAX_FRAME_SIZE:
            settings.append((SettingCode.MAX_FRAME_SIZE.value, self._max_inbound_frame))
        settings.append((SettingCode.MAX_HEADER_LIST_SIZE.value, self._max_header_list_size))
        self._out += PREFACE
        self._out += settings_frame(settings)
        self._pending_local_settings.append(settings)
        if self._connection_window > DEFAULT_WINDOW:
            increment = self._connection_window - DEFAULT_WINDOW
            self._out += window_update_frame(0, increment)
            self._recv_window += increment
        self._state = _OPEN

    def send_request(
        self,
        headers: bytes | Sequence[tuple[str | bytes, str | bytes]],
        body: bytes = b"",
        *,
        end_stream: bool = True,
    ) -> int:
        """Open a stream with ``headers`` and ``body``; return its id.

        ``headers`` is a complete header block (from :meth:`HeaderBlockTemplate.encode
        <.headers.HeaderBlockTemplate.encode>`) or a list of fields to encode statelessly.
        The body is split to fit the server's MAX_FRAME_SIZE and both flow-control windows;
        what does not fit is queued on the stream and sent as WINDOW_UPDATEs arrive. With
        ``end_stream=False`` the request stays open for :meth:`send_data`.

        :raises StreamLimitError: no stream slot (see :attr:`available_streams`).
        :raises ConnectionClosingError: GOAWAY sent or received, connection dead, or stream ids
            exhausted.
        :raises ~txapns.core.errors.InvalidFieldError: ``headers`` as a list holds a field
            HTTP/2 forbids.
        """
        if self._state != _OPEN:
            if self._state != _IDLE:
                raise ConnectionClosingError(
                    "the connection is closing (GOAWAY) or dead; use another one"
                )
            self.initiate()
        streams = self._streams
        if len(streams) >= self._peer_max_concurrent:
            raise StreamLimitError(
                f"all {self._peer_max_concurrent} concurrent streams allowed by the server are"
                " in use"
            )
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise ConnectionClosingError("stream ids exhausted; use a new connection")
        if isinstance(headers, bytes):
            block = headers
        elif isinstance(headers, (bytearray, memoryview)):
            block = bytes(headers)
        else:
            block = encode_header_block(headers)
        if not self._table_size_update_sent:
            block = _TABLE_SIZE_ZERO + block
            self._table_size_update_sent = True
        self._next_stream_id = stream_id + 2
        self._last_stream_id_sent = stream_id

        out = self._out
        max_frame = self._peer_max_frame
        size = len(block)
        flags = _END_HEADERS | _END_STREAM if end_stream and not body else _END_HEADERS
        if size <= max_frame:
            out += _pack_header(size << 8 | _HEADERS, flags, stream_id)
            out += block
        else:
            self._write_split_headers(stream_id, block, flags & _END_STREAM)

        stream = _Stream(stream_id, self._peer_initial_window, self._local_initial_window)
        streams[stream_id] = stream
        size = len(body)
        if not size:
            stream.local_closed = end_stream
        elif size <= self._send_window and size <= stream.send_window and size <= max_frame:
            out += _pack_header(size << 8, _END_STREAM if end_stream else 0, stream_id)
            out += body
            self._send_window -= size
            stream.send_window -= size
            stream.local_closed = end_stream
        else:
            stream.pending = bytes(body)
            stream.end_pending = end_stream
            if self._send_window > 0:
                self._send_pending(stream)
            if stream.pending:
                stream.queued = True
                self._blocked.append(stream)
        return stream_id

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """More request body for a stream opened with ``end_stream=False``.

        :raises StreamClosedError: the stream is unknown, finished, or already ended by us.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed or stream.end_pending:
            raise StreamClosedError(f"stream {stream_id} does not take more data")
        if stream.pending:
            stream.pending = stream.pending[stream.offset :] + bytes(data)
            stream.offset = 0
            stream.end_pending = end_stream
            return
        if not data:
            if end_stream:
                self._out += _pack_header(0 << 8 | _DATA, _END_STREAM, stream_id)
                stream.local_closed = True
            return
        stream.pending = bytes(data)
        stream.end_pending = end_stream
        if self._send_window > 0:
            self._send_pending(stream)
        if stream.pending and not stream.queued:
            stream.queued = True
            self._blocked.append(stream)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> bool:
        """Send RST_STREAM (e.g. on a request deadline) and forget the stream; no event
        follows for it. ``False`` if the stream had already ended (nothing sent)."""
        stream = self._streams.pop(stream_id, None)
        if stream is None or self._state == _DEAD:
            return False
        stream.pending = b""
        self._out += rst_stream_frame(stream_id, int(error_code))
        return True

    def ping(self, opaque: bytes = b"\x00" * 8) -> None:
        """Send a PING with 8 opaque bytes; the answer is a :class:`PingAcknowledged` event."""
        if len(opaque) != 8:
            raise ValueError("PING carries exactly 8 opaque bytes")
        if self._state == _DEAD:
            raise ConnectionClosingError("the connection is dead")
        self.initiate()
        self._out += ping_frame(bytes(opaque))

    def close(self, error_code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> list[int]:
        """Send GOAWAY.

        With NO_ERROR the close is graceful: no new streams, the open ones may still complete
        (close the transport once :attr:`open_streams` is 0). With another code the connection
        is dead at once; the ids of the streams left without outcome are returned.
        """
        if self._state == _DEAD:
            return []
        self.initiate()
        self._out += goaway_frame(0, int(error_code), bytes(debug))
        if error_code == ErrorCode.NO_ERROR:
            self._state = _CLOSING
            return []
        return self._die()

    def data_to_send(self) -> bytes:
        """Everything queued since the last call (possibly ``b""``), as one write."""
        out = self._out
        if not out:
            return b""
        data = bytes(out)
        out.clear()
        return data

    def _write_split_headers(self, stream_id: int, block: bytes, end_stream_flag: int) -> None:
        out = self._out
        max_frame = self._peer_max_frame
        out += _pack_header(max_frame << 8 | _HEADERS, end_stream_flag, stream_id)
        out += block[:max_frame]
        offset = max_frame
        size = len(block)
        while offset < size:
            chunk = block[offset : offset + max_frame]
            offset += len(chunk)
            flags = _END_HEADERS if offset >= size else 0
            out += _pack_header(len(chunk) << 8 | _CONTINUATION, flags, stream_id)
            out += chunk

    def _send_pending(self, stream: _Stream) -> None:
        """Send as much of the stream's queued body as both windows and MAX_FRAME_SIZE allow."""
        data = stream.pending
        offset = stream.offset
        remaining = len(data) - offset
        view = memoryview(data)
        out = self._out
        max_frame = self._peer_max_frame
        stream_id = stream.stream_id
        while remaining:
            allowed = min(remaining, self._send_window, stream.send_window, max_frame)
            if allowed <= 0:
                break
            flags = _END_STREAM if allowed == remaining and stream.end_pending else 0
            out += _pack_header(allowed << 8, flags, stream_id)
            out += view[offset : offset + allowed]
            offset += allowed
            remaining -= allowed
            self._send_window -= allowed
            stream.send_window -= allowed
        if remaining:
            stream.offset = offset
        else:
            stream.pending = b""
            stream.offset = 0
            if stream.end_pending:
                stream.end_pending = False
                stream.local_closed = True

    def _flush(self) -> None:
        """Send queued bodies in FIFO order while the connection window lasts.

        Invariant kept: whenever the connection window is open, every queued stream is blocked
        by its own window — so a new request may send its body at once without overtaking.
        """
        blocked = self._blocked
        still: list[_Stream] = []
        while blocked and self._send_window > 0:
            stream = blocked.popleft()
            if not stream.pending:
                stream.queued = False
                continue
            self._send_pending(stream)
            if stream.pending:
                still.append(stream)
            else:
                stream.queued = False
        if still:
            blocked.extendleft(reversed(still))

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse bytes from the server (any chunking) and return the resulting events.

        Never raises for malformed input: a connection-level violation yields a
        :class:`ConnectionTerminated` event (GOAWAY queued); after that, input is ignored and
        an empty list is returned.
        """
        events: list[Event] = []
        if self._state == _DEAD:
            return events
        if self._state == _IDLE:
            self.initiate()
        try:
            inbuf = self._inbuf
            if inbuf:
                inbuf += data
                if len(inbuf) < 9:
                    return events
                length = inbuf[0] << 16 | inbuf[1] << 8 | inbuf[2]
                if length > self._max_inbound_frame:
                    raise H2ProtocolError(
                        _FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds our MAX_FRAME_SIZE"
                    )
                if len(inbuf) < 9 + length:
                    return events
                data = bytes(inbuf)
                inbuf.clear()
            consumed = self._process(data, events)
            if consumed < len(data) and self._state != _DEAD:
                self._inbuf += memoryview(data)[consumed:]
            if self._recv_unacked >= self._conn_threshold and self._state != _DEAD:
                increment = self._recv_unacked
                self._out += window_update_frame(0, increment)
                self._recv_window += increment
                self._recv_unacked = 0
        except H2ProtocolError as exc:
            self._fail(exc.error_code, exc.reason, events)
        except Exception as exc:  # a bug of ours must not escape as an untyped exception
            self._fail(ErrorCode.INTERNAL_ERROR, f"internal error: {exc!r}", events)
        return events

    def _process(self, data: bytes, events: list[Event]) -> int:
        """Handle every complete frame in ``data``; return the bytes consumed."""
        pos = 0
        size = len(data)
        max_frame = self._max_inbound_frame
        while size - pos >= 9:
            word, flags, stream_id = _unpack_header(data, pos)
            length = word >> 8
            if length > max_frame:
                raise H2ProtocolError(
                    _FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds our MAX_FRAME_SIZE"
                )
            end = pos + 9 + length
            if end > size:
                break
            payload = data[pos + 9 : end]
            pos = end
            frame_type = word & 0xFF
            stream_id &= MAX_STREAM_ID
            if not self._remote_settings_received and (frame_type != _SETTINGS or flags & _ACK):
                raise H2ProtocolError(
                    _PROTOCOL_ERROR, "the server's first frame must be SETTINGS (its preface)"
                )
            if self._cont_stream:
                if frame_type != _CONTINUATION:
                    raise H2ProtocolError(
                        _PROTOCOL_ERROR, "header block interrupted by another frame"
                    )
                self._on_continuation(flags, stream_id, payload, events)
            elif frame_type == _HEADERS:
                self._on_headers(flags, stream_id, payload, events)
            elif frame_type == _DATA:
                self._on_data(flags, stream_id, payload, events)
            elif frame_type == _WINDOW_UPDATE:
                self._on_window_update(stream_id, payload, events)
            elif frame_type == _SETTINGS:
                self._on_settings(flags, stream_id, payload, events)
            elif frame_type == _PING:
                self._on_ping(flags, stream_id, payload, events)
            elif frame_type == _RST_STREAM:
                self._on_rst_stream(stream_id, payload, events)
            elif frame_type == _GOAWAY:
                self._on_goaway(stream_id, payload, events)
            elif frame_type == _PRIORITY:
                self._on_priority(stream_id, payload, events)
            elif frame_type == _PUSH_PROMISE:
                raise H2ProtocolError(_PROTOCOL_ERROR, "PUSH_PROMISE received; push is disabled")
            elif frame_type == _CONTINUATION:
                raise H2ProtocolError(_PROTOCOL_ERROR, "CONTINUATION without a header block")
            # Unknown frame types are ignored (RFC 9113 §4.1, §5.5).
        return pos

    def _is_idle(self, stream_id: int) -> bool:
        # Even ids could only come from PUSH_PROMISE, which we refuse: always idle.
        return stream_id > self._last_stream_id_sent or not stream_id & 1

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise H2ProtocolError(_PROTOCOL_ERROR, "HEADERS on stream 0")
        if stream_id not in self._streams and self._is_idle(stream_id):
            raise H2ProtocolError(_PROTOCOL_ERROR, f"HEADERS on idle stream {stream_id}")
        block = payload
        self_dependent = False
        if flags & (_PADDED | _PRIORITY_FLAG):
            start = 0
            end = len(payload)
            if flags & _PADDED:
                if not end:
                    raise H2ProtocolError(_FRAME_SIZE_ERROR, "PADDED HEADERS without pad length")
                end -= payload[0]
                start = 1
            if flags & _PRIORITY_FLAG:
                if len(payload) - start < 5:
                    raise H2ProtocolError(_FRAME_SIZE_ERROR, "HEADERS too short for PRIORITY")
                self_dependent = unpack_u32(payload, start) & MAX_STREAM_ID == stream_id
                start += 5
            if end < start:
                raise H2ProtocolError(_PROTOCOL_ERROR, "HEADERS padding exceeds the payload")
            block = payload[start:end]
        end_stream = bool(flags & _END_STREAM)
        if flags & _END_HEADERS:
            self._on_header_block(stream_id, block, end_stream, self_dependent, events)
        else:
            self._cont_stream = stream_id
            self._cont_buf = bytearray(block)
            self._cont_end_stream = end_stream
            self._cont_self_dependent = self_dependent
            if len(block) > self._max_header_block:
                raise H2ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")

    def _on_continuation(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if stream_id != self._cont_stream:
            raise H2ProtocolError(_PROTOCOL_ERROR, "CONTINUATION on another stream")
        buf = self._cont_buf
        buf += payload
        if len(buf) > self._max_header_block:
            raise H2ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & _END_HEADERS:
            self._cont_stream = 0
            self._cont_buf = bytearray()
            self._on_header_block(
                stream_id, bytes(buf), self._cont_end_stream, self._cont_self_dependent, events
            )

    def _on_header_block(
        self,
        stream_id: int,
        block: bytes,
        end_stream: bool,
        self_dependent: bool,
        events: list[Event],
    ) -> None:
        # Decode first, whatever the stream's state: the dynamic table must stay in sync.
        try:
            fields = self._decoder.decode(block)
        except HeaderListTooLargeError as exc:
            raise H2ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, f"header list: {exc}") from None
        except HeaderDecodingError as exc:
            raise H2ProtocolError(_COMPRESSION_ERROR, f"HPACK: {exc}") from None
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # closed or reset by us: ignored
        if self_dependent:
            self._stream_error(stream, _PROTOCOL_ERROR, "stream depends on itself", events)
            return
        if stream.status is None:
            status_value = None
            regular: list[tuple[bytes, bytes]] = []
            content_length = None
            for name, value in fields:
                if name[:1] == b":":
                    if name != b":status" or status_value is not None or regular:
                        self._stream_error(
                            stream, _PROTOCOL_ERROR, f"bad pseudo-header {name!r}", events
                        )
                        return
                    status_value = value
                else:
                    if name == b"content-length":
                        if not value.isdigit() or (
                            content_length is not None and content_length != int(value)
                        ):
                            self._stream_error(
                                stream, _PROTOCOL_ERROR, "bad content-length", events
                            )
                            return
                        content_length = int(value)
                    regular.append((name, value))
            if status_value is None or len(status_value) != 3 or not status_value.isdigit():
                self._stream_error(stream, _PROTOCOL_ERROR, "missing or bad :status", events)
                return
            status = int(status_value)
            if status < 200:
                if end_stream or status == 101 or status < 100:
                    self._stream_error(
                        stream, _PROTOCOL_ERROR, f"bad informational status {status}", events
                    )
                return  # interim response (100, 103…): the final one follows
            stream.status = status
            stream.headers = regular
            if status != 204 and status != 304:
                stream.content_length = content_length
        else:
            if not end_stream:
                self._stream_error(stream, _PROTOCOL_ERROR, "trailers without END_STREAM", events)
                return
            trailers: list[tuple[bytes, bytes]] = [(name, value) for name, value in fields]
            for name, _value in trailers:
                if name[:1] == b":":
                    self._stream_error(stream, _PROTOCOL_ERROR, "pseudo-header in trailers", events)
                    return
            stream.trailers = trailers
        if end_stream:
            self._end_of_response(stream, events)

    def _end_of_response(self, stream: _Stream, events: list[Event]) -> None:
        body = b"".join(stream.body) if stream.body else b""
        if stream.content_length is not None and stream.content_length != len(body):
            self._stream_error(stream, _PROTOCOL_ERROR, "body length != content-length", events)
            return
        stream_id = stream.stream_id
        del self._streams[stream_id]
        if not stream.local_closed:
            # The response is final although the request body is not all sent: stop sending.
            stream.pending = b""
            self._out += rst_stream_frame(stream_id, _CANCEL)
        status = stream.status
        assert status is not None
        events.append(ResponseReceived(stream_id, status, stream.headers, body, stream.trailers))

    def _stream_error(
        self, stream: _Stream, error_code: int, reason: str, events: list[Event]
    ) -> None:
        """The server broke a rule for this stream only: reset it and report it."""
        del self._streams[stream.stream_id]
        stream.pending = b""
        self._out += rst_stream_frame(stream.stream_id, error_code)
        events.append(StreamReset(stream.stream_id, error_code, False, reason))

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise H2ProtocolError(_PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        data = payload
        if flags & _PADDED:
            if not size or payload[0] >= size:
                raise H2ProtocolError(_PROTOCOL_ERROR, "DATA padding exceeds the payload")
            data = payload[1 : size - payload[0]]
        if size:
            self._recv_window -= size
            if self._recv_window < 0:
                raise H2ProtocolError(
                    _FLOW_CONTROL_ERROR, "DATA exceeds the connection flow-control window"
                )
            self._recv_unacked += size
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise H2ProtocolError(_PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # closed or reset by us; the connection window is accounted for
        if size:
            stream.recv_window -= size
            if stream.recv_window < 0:
                self._stream_error(
                    stream, _FLOW_CONTROL_ERROR, "DATA exceeds the stream window", events
                )
                return
        if stream.status is None:
            self._stream_error(stream, _PROTOCOL_ERROR, "DATA before response HEADERS", events)
            return
        if data:
            stream.body.append(data)
            stream.body_len += len(data)
            if stream.body_len > self._max_body:
                self._stream_error(stream, _CANCEL, "response body too large", events)
                return
        if flags & _END_STREAM:
            self._end_of_response(stream, events)
        elif size:
            stream.recv_unacked += size
            if stream.recv_unacked >= self._stream_threshold:
                self._out += window_update_frame(stream_id, stream.recv_unacked)
                stream.recv_window += stream.recv_unacked
                stream.recv_unacked = 0

    def _on_window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise H2ProtocolError(_FRAME_SIZE_ERROR, "WINDOW_UPDATE length is not 4")
        increment = unpack_u32(payload) & MAX_WINDOW
        if not stream_id:
            if not increment:
                raise H2ProtocolError(_PROTOCOL_ERROR, "WINDOW_UPDATE with increment 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2ProtocolError(
                    _FLOW_CONTROL_ERROR, "connection flow-control window above 2**31-1"
                )
            if self._blocked:
                self._flush()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise H2ProtocolError(_PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return
        if not increment:
            self._stream_error(stream, _PROTOCOL_ERROR, "WINDOW_UPDATE with increment 0", events)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(
                stream, _FLOW_CONTROL_ERROR, "stream flow-control window above 2**31-1", events
            )
            return
        if stream.pending and self._send_window > 0:
            # A stream with a body pending is always in _blocked already (send_request,
            # send_data and _flush keep it there): what is left waits in its place.
            self._send_pending(stream)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise H2ProtocolError(_PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            if payload:
                raise H2ProtocolError(_FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if self._pending_local_settings:
                for ident, value in self._pending_local_settings.popleft():
                    if ident == SettingCode.HEADER_TABLE_SIZE:
                        self._decoder.max_allowed_table_size = value
            return
        if len(payload) % 6:
            raise H2ProtocolError(_FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        pairs = iter_settings(payload)
        window_grew = False
        for ident, value in pairs:
            if ident == SettingCode.HEADER_TABLE_SIZE:
                # Limits *our* encoder, which never indexes (see _TABLE_SIZE_ZERO): recorded.
                self._peer_header_table_size = value
            elif ident == SettingCode.ENABLE_PUSH:
                if value != 0:
                    raise H2ProtocolError(
                        _PROTOCOL_ERROR, f"server sent SETTINGS_ENABLE_PUSH={value}"
                    )
            elif ident == SettingCode.MAX_CONCURRENT_STREAMS:
                self._peer_max_concurrent = value
            elif ident == SettingCode.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ProtocolError(
                        _FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE={value}"
                    )
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                if delta:
                    for stream in self._streams.values():
                        stream.send_window += delta
                        if stream.send_window > MAX_WINDOW:
                            raise H2ProtocolError(
                                _FLOW_CONTROL_ERROR, "stream window above 2**31-1 after SETTINGS"
                            )
                    window_grew = window_grew or delta > 0
            elif ident == SettingCode.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= MAX_MAX_FRAME_SIZE:
                    raise H2ProtocolError(_PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE={value}")
                self._peer_max_frame = value
            elif ident == SettingCode.MAX_HEADER_LIST_SIZE:
                self._peer_max_header_list = value
            elif ident == SettingCode.ENABLE_CONNECT_PROTOCOL and value > 1:
                raise H2ProtocolError(_PROTOCOL_ERROR, f"SETTINGS_ENABLE_CONNECT_PROTOCOL={value}")
            # Unknown settings are ignored (RFC 9113 §6.5.2).
        self._remote_settings_received = True
        self._out += settings_frame(ack=True)
        events.append(
            SettingsChanged(
                self._peer_max_concurrent,
                self._peer_initial_window,
                self._peer_max_frame,
                self._peer_header_table_size,
                self._peer_max_header_list,
                pairs,
            )
        )
        if window_grew and self._blocked:
            self._flush()

    def _on_ping(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise H2ProtocolError(_PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ProtocolError(_FRAME_SIZE_ERROR, "PING length is not 8")
        if flags & _ACK:
            events.append(PingAcknowledged(payload))
        else:
            self._out += ping_frame(payload, ack=True)

    def _on_rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise H2ProtocolError(_PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ProtocolError(_FRAME_SIZE_ERROR, "RST_STREAM length is not 4")
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            if self._is_idle(stream_id):
                raise H2ProtocolError(_PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return
        stream.pending = b""
        events.append(StreamReset(stream_id, unpack_u32(payload), True))

    def _on_goaway(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise H2ProtocolError(_PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2ProtocolError(_FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last_stream_id, error_code = unpack_u32x2(payload)
        last_stream_id &= MAX_STREAM_ID
        if self._state == _OPEN:
            self._state = _CLOSING
        previous = self._goaway_last_stream_id
        if previous is None or last_stream_id < previous:
            self._goaway_last_stream_id = last_stream_id
        unprocessed = [sid for sid in self._streams if sid > last_stream_id]
        for sid in unprocessed:
            self._streams.pop(sid).pending = b""
        events.append(GoAwayReceived(last_stream_id, error_code, payload[8:], unprocessed))

    def _on_priority(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise H2ProtocolError(_PROTOCOL_ERROR, "PRIORITY on stream 0")
        stream = self._streams.get(stream_id)
        if len(payload) != 5:
            if stream is not None:
                self._stream_error(stream, _FRAME_SIZE_ERROR, "PRIORITY length is not 5", events)
            return
        if stream is not None and unpack_u32(payload) & MAX_STREAM_ID == stream_id:
            self._stream_error(stream, _PROTOCOL_ERROR, "stream depends on itself", events)

    # --- failure ------------------------------------------------------------------------

    def _fail(self, error_code: int, reason: str, events: list[Event]) -> None:
        if self._state == _DEAD:
            return
        self._out += goaway_frame(0, int(error_code), reason.encode("utf-8", "replace")[:256])
        unanswered = self._die()
        events.append(ConnectionTerminated(int(error_code), reason, unanswered))

    def _die(self) -> list[int]:
        unanswered = list(self._streams)
        for stream in self._streams.values():
            stream.pending = b""
        self._streams.clear()
        self._blocked.clear()
        self._inbuf.clear()
        self._cont_stream = 0
        self._cont_buf = bytearray()
        self._state = _DEAD
        return unanswered
