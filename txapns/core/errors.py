"""One exception tree for everything txapns raises.

Input errors are raised *before* anything is written to the network, so a caller can tell a
bug in its own data from a delivery problem. Delivery outcomes are never exceptions: they are
:class:`txapns.core.result.Result` values.
"""

from __future__ import annotations

__all__ = [
    "TLS_HINTS",
    "APNsError",
    "ChannelError",
    "CircuitOpenError",
    "ClientStoppedError",
    "ConnectionFailedError",
    "CredentialError",
    "InvalidChannelIdError",
    "InvalidFieldError",
    "InvalidPriorityError",
    "InvalidTokenError",
    "MissingTopicError",
    "PayloadError",
    "PayloadTooLargeError",
    "ProtocolError",
    "QueueFullError",
    "RequestError",
    "TLSFailureError",
    "ValidationError",
    "tls_hint",
]


class APNsError(Exception):
    """Base class of every txapns exception."""


# --- bad input: raised before sending -------------------------------------------------------


class ValidationError(APNsError, ValueError):
    """A notification (or a part of one) breaks a rule of APNs; nothing was sent."""


class InvalidTokenError(ValidationError):
    """The device token is not hex, or has the wrong length."""


class PayloadError(ValidationError):
    """The payload is not a JSON object, or uses a key wrongly."""


class PayloadTooLargeError(PayloadError):
    """The encoded payload exceeds the protocol's limit."""

    def __init__(self, size: int, limit: int, protocol: str) -> None:
        super().__init__(
            f"payload is {size} bytes; the {protocol} limit is {limit} bytes "
            f"({size - limit} bytes too many)"
        )
        self.size = size
        self.limit = limit
        self.protocol = protocol


class InvalidPriorityError(ValidationError):
    """Priority is not one APNs accepts for this notification."""


class MissingTopicError(ValidationError):
    """HTTP/2 with token auth needs a topic (the app's bundle id)."""


class InvalidFieldError(ValidationError):
    """Another field (expiry, collapse id, apns-id, push type…) is out of range."""


class InvalidChannelIdError(InvalidFieldError):
    """A broadcast channel id is not canonical base64 text (of at most 64 bytes)."""


# --- the peer said something we cannot parse -------------------------------------------------


class ProtocolError(APNsError):
    """The other side sent bytes that break the protocol; the connection is unusable."""


# --- the client cannot take or send the notification ----------------------------------------


class QueueFullError(APNsError):
    """The client's pending queue is at its bound; ``send`` refuses instead of growing."""


class ClientStoppedError(APNsError):
    """The client was stopped; it takes no new notifications."""


class ConnectionFailedError(APNsError):
    """A connection to APNs could not be made or was lost."""


#: (what OpenSSL says, what to do): appended to a :class:`TLSFailureError`'s message, which
#: becomes a result's ``reason`` and a log line, where a newcomer meets it.
TLS_HINTS: tuple[tuple[str, str], ...] = (
    (
        "certificate verify failed",
        "the server's certificate is not trusted: for APNs itself install the system's CA "
        "certificates (ca-certificates); for a test server or a TLS-inspecting proxy set the "
        "app's ca_file to the CA certificate that signed it",
    ),
)


def tls_hint(text: str) -> str | None:
    """What to do about a TLS error whose text holds a known phrase, or ``None``."""
    for phrase, hint in TLS_HINTS:
        if phrase in text:
            return hint
    return None


class TLSFailureError(ConnectionFailedError):
    """TLS handshake or certificate verification failed; retrying will not help. The
    message ends with ``(hint: …)`` for a cause with a known remedy."""

    def __init__(self, message: str = "", *args: object) -> None:
        hint = tls_hint(message)
        if hint is not None and "(hint:" not in message:
            message = f"{message} (hint: {hint})"
        super().__init__(message, *args)


class CredentialError(APNsError):
    """A certificate, key or token-signing key is missing, unreadable or wrong."""


class CircuitOpenError(APNsError):
    """APNs rejected this credential; sends fail fast until an operator fixes it."""


# --- requests other than notifications (broadcast channel management) ----------------------


class RequestError(APNsError):
    """A request other than a notification did not get a usable answer.

    ``status`` and ``reason`` are APNs' (``None`` when it did not answer); ``local`` names a
    failure the client decided itself (``"timeout"`` is in ``reason``; ``"circuit-open"``,
    ``"stopped"``, ``"tls"``, ``"attempts"`` in ``local``); ``unknown`` is true when the
    request may have taken effect although no answer came.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        local: str | None = None,
        unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.local = local
        self.unknown = unknown


class ChannelError(RequestError):
    """A broadcast channel could not be created, read, deleted or listed: APNs answered with
    an error (``status``, Apple's ``reason``, e.g. ``400 BadChannelId``) or did not answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        local: str | None = None,
        unknown: bool = False,
        channel_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=reason, local=local, unknown=unknown)
        self.channel_id = channel_id
