"""txapns: Apple Push Notifications for Twisted, over the binary and the HTTP/2 protocols.

The package exports what an application needs: the clients, their credentials and options,
the notification and result model, and the exception tree. The sans-IO names come from
:mod:`txapns.core` at import; the Twisted ones (clients, credentials) are imported on first
use, so ``import txapns.core`` stays free of Twisted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .core.backoff import Backoff
from .core.binary_channel import ChannelConfig
from .core.errors import (
    APNsError,
    ChannelError,
    CircuitOpenError,
    ClientStoppedError,
    ConnectionFailedError,
    CredentialError,
    InvalidChannelIdError,
    InvalidFieldError,
    InvalidPriorityError,
    InvalidTokenError,
    MissingTopicError,
    PayloadError,
    PayloadTooLargeError,
    ProtocolError,
    QueueFullError,
    RequestError,
    TLSFailureError,
    ValidationError,
)
from .core.http2_policy import RetryPolicy
from .core.jwt import ProviderToken, load_signing_key
from .core.notification import Notification, PushType
from .core.payload import Alert, CriticalSound, build_payload, encode_payload
from .core.result import Outcome, Result, UnknownPolicy

if TYPE_CHECKING:
    from .binary import BinaryClient
    from .credentials import ClientCertificate, client_tls_options
    from .feedback import FeedbackClient, FeedbackPoller
    from .http2 import HTTP2Client

__version__ = "0.1.0"

#: The names imported on first use (they import Twisted), and their public home.
_LAZY = {
    "BinaryClient": "txapns.binary",
    "ClientCertificate": "txapns.credentials",
    "FeedbackClient": "txapns.feedback",
    "FeedbackPoller": "txapns.feedback",
    "HTTP2Client": "txapns.http2",
    "client_tls_options": "txapns.credentials",
}

__all__ = [
    "APNsError",
    "Alert",
    "Backoff",
    "BinaryClient",
    "ChannelConfig",
    "ChannelError",
    "CircuitOpenError",
    "ClientCertificate",
    "ClientStoppedError",
    "ConnectionFailedError",
    "CredentialError",
    "CriticalSound",
    "FeedbackClient",
    "FeedbackPoller",
    "HTTP2Client",
    "InvalidChannelIdError",
    "InvalidFieldError",
    "InvalidPriorityError",
    "InvalidTokenError",
    "MissingTopicError",
    "Notification",
    "Outcome",
    "PayloadError",
    "PayloadTooLargeError",
    "ProtocolError",
    "ProviderToken",
    "PushType",
    "QueueFullError",
    "RequestError",
    "Result",
    "RetryPolicy",
    "TLSFailureError",
    "UnknownPolicy",
    "ValidationError",
    "__version__",
    "build_payload",
    "client_tls_options",
    "encode_payload",
    "load_signing_key",
]


if not TYPE_CHECKING:  # mypy sees the imports above; a __getattr__ would hide typos from it

    def __getattr__(name: str) -> object:
        home = _LAZY.get(name)
        if home is None:
            raise AttributeError(f"module 'txapns' has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # once: later look-ups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_LAZY))
