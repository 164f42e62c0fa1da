"""txapns: Apple Push Notifications for Twisted, over the binary and the HTTP/2 protocols."""

from .core import (
    Alert,
    APNsError,
    CriticalSound,
    Notification,
    Outcome,
    PushType,
    Result,
    ValidationError,
    build_payload,
)

__version__ = "0.1.0"

__all__ = [
    "APNsError",
    "Alert",
    "CriticalSound",
    "Notification",
    "Outcome",
    "PushType",
    "Result",
    "ValidationError",
    "__version__",
    "build_payload",
]
