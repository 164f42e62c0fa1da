"""The sans-IO core: models, codecs, state machines and policies.

Nothing here imports Twisted, touches a socket or reads a clock (``tests/test_sans_io.py``
enforces it); the Twisted modules feed it bytes and time.
"""

from .counters import Counters
from .errors import (
    APNsError,
    CircuitOpenError,
    ClientStoppedError,
    ConnectionFailedError,
    CredentialError,
    InvalidFieldError,
    InvalidPriorityError,
    InvalidTokenError,
    MissingTopicError,
    PayloadError,
    PayloadTooLargeError,
    ProtocolError,
    QueueFullError,
    TLSFailureError,
    ValidationError,
)
from .notification import Notification, PushType, parse_token, shorten
from .payload import Alert, CriticalSound, build_payload, encode_payload
from .result import Outcome, Result

__all__ = [
    "APNsError",
    "Alert",
    "CircuitOpenError",
    "ClientStoppedError",
    "ConnectionFailedError",
    "Counters",
    "CredentialError",
    "CriticalSound",
    "InvalidFieldError",
    "InvalidPriorityError",
    "InvalidTokenError",
    "MissingTopicError",
    "Notification",
    "Outcome",
    "PayloadError",
    "PayloadTooLargeError",
    "ProtocolError",
    "PushType",
    "QueueFullError",
    "Result",
    "TLSFailureError",
    "ValidationError",
    "build_payload",
    "encode_payload",
    "parse_token",
    "shorten",
]
