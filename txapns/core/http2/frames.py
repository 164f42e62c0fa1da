"""HTTP/2 wire constants (RFC 9113) and the few frame encoders the client needs.

Every frame starts with the same 9 bytes: a 24-bit payload length, an 8-bit type, 8 bits of
flags and a reserved bit followed by the 31-bit stream id. ``FRAME_HEADER`` packs the length
and the type together as one big-endian 32-bit word (``length << 8 | type``), which makes the
header a single ``struct`` call in both directions.
"""

from __future__ import annotations

import enum
import struct

__all__ = [
    "DEFAULT_HEADER_TABLE_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_WINDOW",
    "MAX_MAX_FRAME_SIZE",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "PREFACE",
    "ErrorCode",
    "Flag",
    "FrameType",
    "SettingCode",
    "error_code_name",
    "frame",
    "goaway_frame",
    "iter_settings",
    "ping_frame",
    "rst_stream_frame",
    "settings_frame",
    "unpack_u32",
    "unpack_u32x2",
    "window_update_frame",
]

#: ``struct`` for the 9-byte frame header: (length << 8 | type, flags, stream id).
FRAME_HEADER = struct.Struct(">IBI")
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_SETTING = struct.Struct(">HI")

#: The client connection preface (RFC 9113 §3.4), sent before the first SETTINGS frame.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME_SIZE = 16_384
MAX_MAX_FRAME_SIZE = 2**24 - 1
DEFAULT_HEADER_TABLE_SIZE = 4_096


class FrameType(enum.IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag(enum.IntFlag):
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


class ErrorCode(enum.IntEnum):
    """Error codes of RST_STREAM and GOAWAY (RFC 9113 §7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class SettingCode(enum.IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6
    ENABLE_CONNECT_PROTOCOL = 0x8


def error_code_name(code: int) -> str:
    """``"REFUSED_STREAM"`` for 7; unknown codes as ``"0x…"`` (they mean INTERNAL_ERROR)."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"0x{code:x}"


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One complete frame."""
    return FRAME_HEADER.pack(len(payload) << 8 | frame_type, flags, stream_id) + payload


def settings_frame(settings: list[tuple[int, int]] | None = None, *, ack: bool = False) -> bytes:
    """A SETTINGS frame with ``settings`` in the given order, or an empty ACK."""
    if ack:
        return frame(FrameType.SETTINGS, Flag.ACK, 0)
    payload = b"".join(_SETTING.pack(ident, value) for ident, value in settings or ())
    return frame(FrameType.SETTINGS, 0, 0, payload)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream_frame(stream_id: int, error_code: int) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, _U32.pack(error_code))


def ping_frame(opaque: bytes, *, ack: bool = False) -> bytes:
    return frame(FrameType.PING, Flag.ACK if ack else 0, 0, opaque)


def goaway_frame(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, _U32X2.pack(last_stream_id, error_code) + debug)


def unpack_u32(payload: bytes, offset: int = 0) -> int:
    value: int = _U32.unpack_from(payload, offset)[0]
    return value


def unpack_u32x2(payload: bytes) -> tuple[int, int]:
    first, second = _U32X2.unpack_from(payload)
    return first, second


def iter_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload whose length is a multiple of 6."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]
