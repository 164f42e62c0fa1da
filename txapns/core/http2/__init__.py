"""A client-only, sans-IO HTTP/2 connection specialised for APNs.

* :class:`H2ClientConnection` — bytes in, events out, bytes to send (:mod:`.connection` says
  why this is not built on the ``h2`` package: CPU per request);
* :class:`HeaderBlockTemplate` — the stateless HPACK encoding of a request, its constant part
  computed once (:mod:`.headers`);
* the events (:mod:`.events`), the errors (:mod:`.errors`) and the wire constants
  (:mod:`.frames`).
"""

from .connection import H2ClientConnection
from .errors import (
    ConnectionClosingError,
    H2ProtocolError,
    H2UsageError,
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
from .frames import ErrorCode, SettingCode, error_code_name
from .headers import HeaderBlockTemplate, device_path, encode_header_block

__all__ = [
    "ConnectionClosingError",
    "ConnectionTerminated",
    "ErrorCode",
    "Event",
    "GoAwayReceived",
    "H2ClientConnection",
    "H2ProtocolError",
    "H2UsageError",
    "HeaderBlockTemplate",
    "PingAcknowledged",
    "ResponseReceived",
    "SettingCode",
    "SettingsChanged",
    "StreamClosedError",
    "StreamLimitError",
    "StreamReset",
    "device_path",
    "encode_header_block",
    "error_code_name",
]
