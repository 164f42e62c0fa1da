"""Sans-IO codec for the legacy binary APNs protocol (gateway :2195, feedback :2196).

Encoders turn notifications into the bytes of commands 0, 1 and 2; decoders turn whatever
chunks ``dataReceived`` delivers into error responses and feedback tuples. Everything is
big-endian and built from precompiled :class:`struct.Struct` objects because
:func:`encode_frame` runs once per notification at thousands of notifications per second.

Decoders never lose a record: when a stream turns bad after some valid records, the
:class:`DecodeError` raised carries the records decoded before the bad byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

from .errors import ProtocolError
from .notification import MAX_TOKEN_BYTES, MAX_UINT32, Notification, shorten

__all__ = [
    "ERROR_RESPONSE_COMMAND",
    "ERROR_RESPONSE_SIZE",
    "FEEDBACK_HEADER_SIZE",
    "SHUTDOWN",
    "STATUS_NAMES",
    "TRANSIENT_STATUSES",
    "DecodeError",
    "ErrorResponse",
    "ErrorResponseDecoder",
    "FeedbackDecoder",
    "FeedbackTuple",
    "StatusClass",
    "classify_status",
    "encode_enhanced",
    "encode_error_response",
    "encode_feedback_tuple",
    "encode_frame",
    "encode_notification",
    "encode_simple",
    "next_identifier",
    "status_name",
]

# --- status bytes of the error response ---------------------------------------------------

STATUS_NAMES: Final[dict[int, str]] = {
    0: "NoErrorsEncountered",
    1: "ProcessingError",
    2: "MissingDeviceToken",
    3: "MissingTopic",
    4: "MissingPayload",
    5: "InvalidTokenSize",
    6: "InvalidTopicSize",
    7: "InvalidPayloadSize",
    8: "InvalidToken",
    10: "Shutdown",
    128: "ProtocolError",
    255: "Unknown",
}

#: The gateway is going away; the identifier names the last notification it *delivered*.
SHUTDOWN: Final = 10
#: The identified notification may succeed if re-sent (with an attempt limit). Status 0 is
#: seen in the field and is as uninformative as 255.
TRANSIENT_STATUSES: Final[frozenset[int]] = frozenset({0, 1, 255})

StatusClass = Literal["delivered", "transient", "rejected"]


def status_name(status: int) -> str:
    """Readable name for logs and ``Result.reason``; unlisted statuses stay distinguishable."""
    return STATUS_NAMES.get(status) or f"Status{status}"


def classify_status(status: int) -> StatusClass:
    """Fate of the *identified* notification; anything unlisted is a rejection, never a loop."""
    if status == SHUTDOWN:
        return "delivered"
    if status in TRANSIENT_STATUSES:
        return "transient"
    return "rejected"


# --- encoders -----------------------------------------------------------------------------

MAX_UINT16: Final = 0xFFFF

_SIMPLE_HEAD = struct.Struct(">BH")  # command 0, token length
_ENHANCED_HEAD = struct.Struct(">BIIH")  # command 1, identifier, expiry, token length
_LEN16 = struct.Struct(">H")
#: command 2, frame length, then the token item's id and length: the fixed start of a frame.
_FRAME_HEAD = struct.Struct(">BIBH")
_ITEM_HEAD = struct.Struct(">BH")  # the payload item's id and length
# One tail per (expiry set?, priority set?): identifier item, then the optional items.
# The priority item is 1 byte long; writing 4 there gets every notification rejected.
_TAIL_ID = struct.Struct(">BHI")
_TAIL_ID_EXP = struct.Struct(">BHIBHI")
_TAIL_ID_PRIO = struct.Struct(">BHIBHB")
_TAIL_ID_EXP_PRIO = struct.Struct(">BHIBHIBHB")
_ITEM_OVERHEAD: Final = 3  # id:1 + len:2
_TOKEN_ITEM, _PAYLOAD_ITEM, _ID_ITEM, _EXPIRY_ITEM, _PRIORITY_ITEM = 1, 2, 3, 4, 5


def _check_identifier(identifier: int) -> None:
    if not 0 < identifier <= MAX_UINT32:
        raise ValueError(
            f"notification identifier must be within 1..2**32-1, not {identifier!r} "
            "(gateways report 0 for 'nothing identified')"
        )


def _explain(
    error: struct.error, token: bytes, payload: bytes, expiry: int | None, priority: int | None
) -> ValueError:
    """Turn struct's terse error into one naming the field, off the hot path."""
    if len(token) > MAX_UINT16:
        return ValueError(f"token is {len(token)} bytes; a 2-byte length field holds 65535")
    if len(payload) > MAX_UINT16:
        return ValueError(f"payload is {len(payload)} bytes; a 2-byte length field holds 65535")
    if expiry is not None and not 0 <= expiry <= MAX_UINT32:
        return ValueError(f"expiry must be within 0..2**32-1, not {expiry!r}")
    if priority is not None and not 0 <= priority <= 0xFF:
        return ValueError(f"priority must fit one byte (0..255), not {priority!r}")
    return ValueError(f"cannot encode notification: {error}")


def encode_simple(token: bytes, payload: bytes) -> bytes:
    """Command 0: no identifier, so the gateway cannot say which notification failed."""
    try:
        return b"".join(
            (_SIMPLE_HEAD.pack(0, len(token)), token, _LEN16.pack(len(payload)), payload)
        )
    except struct.error as e:
        raise _explain(e, token, payload, None, None) from None


def encode_enhanced(identifier: int, expiry: int, token: bytes, payload: bytes) -> bytes:
    """Command 1, for gateways that predate frames; the identifier rules match command 2."""
    _check_identifier(identifier)
    try:
        head = _ENHANCED_HEAD.pack(1, identifier, expiry, len(token))
        return b"".join((head, token, _LEN16.pack(len(payload)), payload))
    except struct.error as e:
        raise _explain(e, token, payload, expiry, None) from None


def encode_frame(
    identifier: int,
    token: bytes,
    payload: bytes,
    expiry: int | None = None,
    priority: int | None = None,
) -> bytes:
    """Command 2 with items 1–5 in order; items 4 and 5 are left out when ``None``.

    Only the wire format is checked here (ranges that fit the fields); APNs rules such as the
    payload limit live in :func:`txapns.core.notification.validate_binary`.
    """
    _check_identifier(identifier)
    token_len = len(token)
    payload_len = len(payload)
    try:
        if expiry is None:
            if priority is None:
                tail = _TAIL_ID.pack(_ID_ITEM, 4, identifier)
            else:
                tail = _TAIL_ID_PRIO.pack(_ID_ITEM, 4, identifier, _PRIORITY_ITEM, 1, priority)
        elif priority is None:
            tail = _TAIL_ID_EXP.pack(_ID_ITEM, 4, identifier, _EXPIRY_ITEM, 4, expiry)
        else:
            tail = _TAIL_ID_EXP_PRIO.pack(
                _ID_ITEM, 4, identifier, _EXPIRY_ITEM, 4, expiry, _PRIORITY_ITEM, 1, priority
            )
        frame_len = 2 * _ITEM_OVERHEAD + token_len + payload_len + len(tail)
        return b"".join(
            (
                _FRAME_HEAD.pack(2, frame_len, _TOKEN_ITEM, token_len),
                token,
                _ITEM_HEAD.pack(_PAYLOAD_ITEM, payload_len),
                payload,
                tail,
            )
        )
    except struct.error as e:
        raise _explain(e, token, payload, expiry, priority) from None


def encode_notification(identifier: int, n: Notification) -> bytes:
    """Command 2 for a :class:`Notification`; call ``validate_binary`` first."""
    return encode_frame(identifier, n.token, n.payload, n.expiry, n.priority)


def next_identifier(current: int) -> int:
    """The identifier after ``current`` (start from 0 to get 1): wraps to 1, never yields 0."""
    if not 0 <= current <= MAX_UINT32:
        raise ValueError(f"identifier must be within 0..2**32-1, not {current!r}")
    return 1 if current == MAX_UINT32 else current + 1


# --- decoders -----------------------------------------------------------------------------

ERROR_RESPONSE_COMMAND: Final = 8
ERROR_RESPONSE_SIZE: Final = 6
FEEDBACK_HEADER_SIZE: Final = 6

_ERROR_RESPONSE = struct.Struct(">BBI")
_FEEDBACK_HEAD = struct.Struct(">IH")

_R = TypeVar("_R")


class DecodeError(ProtocolError, Generic[_R]):
    """A :class:`ProtocolError` that keeps the records decoded in the same ``feed`` before the
    bad byte: an error response is the only word the gateway says, so it must not be lost."""

    def __init__(self, message: str, records: list[_R] | None = None) -> None:
        super().__init__(message)
        self.records: list[_R] = records if records is not None else []


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """``8 | status | identifier``: the fate of ``identifier``, then the gateway closes."""

    status: int
    identifier: int

    @property
    def name(self) -> str:
        return status_name(self.status)

    @property
    def kind(self) -> StatusClass:
        return classify_status(self.status)


class ErrorResponseDecoder:
    """Incremental parser of the gateway's error responses, for any chunking.

    A bad command byte is reported as soon as it arrives, and the decoder then stays failed:
    after garbage, nothing later on that stream can be trusted.
    """

    __slots__ = ("_buf", "_failure", "_offset")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failure: str | None = None
        self._offset = 0  # stream offset of _buf[0], for error messages

    @property
    def buffered(self) -> int:
        """Bytes of a partial record held back until the rest arrives."""
        return len(self._buf)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def _fail(self, message: str, records: list[ErrorResponse]) -> DecodeError[ErrorResponse]:
        self._failure = message
        self._buf.clear()
        return DecodeError(message, records)

    def feed(self, data: bytes) -> list[ErrorResponse]:
        """Return the records completed by ``data``; raise :class:`DecodeError` on garbage."""
        if self._failure is not None:
            raise DecodeError(f"error-response decoder already failed: {self._failure}")
        buf = self._buf
        buf += data
        out: list[ErrorResponse] = []
        pos = 0
        end = len(buf)
        while pos < end:
            command = buf[pos]
            if command != ERROR_RESPONSE_COMMAND:
                raise self._fail(
                    f"expected error-response command 8, got byte 0x{command:02x} at stream "
                    f"offset {self._offset + pos}",
                    out,
                )
            if end - pos < ERROR_RESPONSE_SIZE:
                break
            _, status, identifier = _ERROR_RESPONSE.unpack_from(buf, pos)
            out.append(ErrorResponse(status, identifier))
            pos += ERROR_RESPONSE_SIZE
        if pos:
            del buf[:pos]
            self._offset += pos
        return out

    def eof(self) -> None:
        """The stream ended: raise :class:`ProtocolError` if it cut a record short."""
        if self._failure is not None:
            raise DecodeError(f"error-response decoder already failed: {self._failure}")
        if self._buf:
            raise ProtocolError(
                f"connection closed inside an error response: got {len(self._buf)} of "
                f"{ERROR_RESPONSE_SIZE} bytes ({bytes(self._buf).hex()})"
            )


@dataclass(frozen=True, slots=True, repr=False)
class FeedbackTuple:
    """A token the feedback service reports as gone, and when APNs learned it (UNIX s)."""

    timestamp: int
    token: bytes

    @property
    def token_hex(self) -> str:
        return self.token.hex()

    def __repr__(self) -> str:
        # Never the full token: reprs end up in logs.
        return f"<FeedbackTuple timestamp={self.timestamp} token={shorten(self.token)}>"


class FeedbackDecoder:
    """Incremental parser of the feedback stream ``time:4 | tokenLen:2 | token``.

    The token length is read from the stream (Apple allowed up to 100 bytes); 0 or more than
    100 means we are not reading a feedback stream, and the decoder stays failed.
    """

    __slots__ = ("_buf", "_failure", "_offset")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failure: str | None = None
        self._offset = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def feed(self, data: bytes) -> list[FeedbackTuple]:
        """Return the tuples completed by ``data``; raise :class:`DecodeError` on a bad length."""
        if self._failure is not None:
            raise DecodeError(f"feedback decoder already failed: {self._failure}")
        buf = self._buf
        buf += data
        out: list[FeedbackTuple] = []
        pos = 0
        end = len(buf)
        while end - pos >= FEEDBACK_HEADER_SIZE:
            timestamp, token_len = _FEEDBACK_HEAD.unpack_from(buf, pos)
            if not 0 < token_len <= MAX_TOKEN_BYTES:
                message = (
                    f"feedback token length {token_len} at stream offset {self._offset + pos} "
                    f"is outside 1..{MAX_TOKEN_BYTES}"
                )
                self._failure = message
                buf.clear()
                raise DecodeError(message, out)
            start = pos + FEEDBACK_HEADER_SIZE
            stop = start + token_len
            if stop > end:
                break
            out.append(FeedbackTuple(timestamp, bytes(buf[start:stop])))
            pos = stop
        if pos:
            del buf[:pos]
            self._offset += pos
        return out

    def eof(self) -> None:
        """The stream ended: raise :class:`ProtocolError` if it cut a tuple short."""
        if self._failure is not None:
            raise DecodeError(f"feedback decoder already failed: {self._failure}")
        if self._buf:
            raise ProtocolError(
                f"feedback connection closed inside a tuple: {len(self._buf)} bytes pending"
            )


# --- the other side, for tests and fakes --------------------------------------------------


def encode_error_response(status: int, identifier: int) -> bytes:
    """What a gateway writes before closing; identifier 0 is allowed (nothing identified)."""
    if not 0 <= status <= 0xFF:
        raise ValueError(f"status must fit one byte (0..255), not {status!r}")
    if not 0 <= identifier <= MAX_UINT32:
        raise ValueError(f"identifier must be within 0..2**32-1, not {identifier!r}")
    return _ERROR_RESPONSE.pack(ERROR_RESPONSE_COMMAND, status, identifier)


def encode_feedback_tuple(timestamp: int, token: bytes) -> bytes:
    """One feedback tuple; any length that fits is allowed so fakes can send bad ones."""
    if not 0 <= timestamp <= MAX_UINT32:
        raise ValueError(f"timestamp must be within 0..2**32-1, not {timestamp!r}")
    if len(token) > MAX_UINT16:
        raise ValueError(f"token is {len(token)} bytes; a 2-byte length field holds 65535")
    return _FEEDBACK_HEAD.pack(timestamp, len(token)) + token
