"""The immutable notification shared by both protocols, and its validation.

:func:`Notification.create` checks what holds for every protocol; the protocol-specific
rules (payload limits, priority/push-type combinations, auth-dependent push types) live in
:func:`validate_binary` and :func:`validate_http2`, which clients call before anything is
written.
"""

from __future__ import annotations

import enum
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import (
    InvalidFieldError,
    InvalidPriorityError,
    InvalidTokenError,
    MissingTopicError,
    PayloadError,
    PayloadTooLargeError,
)
from .payload import encode_payload

__all__ = [
    "BINARY_PAYLOAD_LIMIT",
    "COLLAPSE_ID_LIMIT",
    "HTTP2_PAYLOAD_LIMIT",
    "HTTP2_VOIP_PAYLOAD_LIMIT",
    "MAX_TOKEN_BYTES",
    "MAX_UINT32",
    "MIN_TOKEN_BYTES",
    "CheckedHTTP2",
    "Notification",
    "PushType",
    "check_http2",
    "header_value",
    "http2_payload_limit",
    "new_apns_id",
    "parse_token",
    "shorten",
    "validate_binary",
    "validate_http2",
]

#: Apple documents 32-byte tokens; its 2018 binary page allowed up to 100.
MIN_TOKEN_BYTES = 32
MAX_TOKEN_BYTES = 100
BINARY_PAYLOAD_LIMIT = 2048
HTTP2_PAYLOAD_LIMIT = 4096
HTTP2_VOIP_PAYLOAD_LIMIT = 5120
COLLAPSE_ID_LIMIT = 64
MAX_UINT32 = 0xFFFFFFFF


class PushType(enum.Enum):
    """``apns-push-type`` values, each with the topic suffix Apple requires."""

    ALERT = "alert"
    BACKGROUND = "background"
    VOIP = "voip"
    COMPLICATION = "complication"
    FILEPROVIDER = "fileprovider"
    LOCATION = "location"
    LIVEACTIVITY = "liveactivity"
    PUSHTOTALK = "pushtotalk"
    WIDGETS = "widgets"
    CONTROLS = "controls"
    MDM = "mdm"

    @property
    def topic_suffix(self) -> str:
        return _TOPIC_SUFFIX.get(self, "")

    def topic_for(self, bundle_id: str) -> str:
        """The ``apns-topic`` for this push type given the app's bundle id."""
        suffix = self.topic_suffix
        return bundle_id if not suffix or bundle_id.endswith(suffix) else bundle_id + suffix


_TOPIC_SUFFIX = {
    PushType.VOIP: ".voip",
    PushType.COMPLICATION: ".complication",
    PushType.FILEPROVIDER: ".pushkit.fileprovider",
    PushType.LOCATION: ".location-query",
    PushType.LIVEACTIVITY: ".push-type.liveactivity",
    PushType.PUSHTOTALK: ".voip-ptt",
    PushType.WIDGETS: ".push-type.widgets",
    PushType.CONTROLS: ".push-type.controls",
}

_HEX = re.compile(r"\A[0-9a-fA-F]+\Z")


_VARIANT = {f"{i:x}": f"{i & 3 | 8:x}" for i in range(16)}


def new_apns_id() -> str:
    """A random (version 4) UUID in canonical text, as ``apns-id``; about three times
    cheaper than ``str(uuid.uuid4())``, which matters once per notification."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def _parse_token_text(token: str) -> bytes:
    text = token.strip().strip("<>").replace(" ", "")
    if not text or not _HEX.match(text) or len(text) % 2:
        raise InvalidTokenError(
            f"device token must be an even number of hex digits, got {shorten(text)!r}"
        )
    return bytes.fromhex(text)


def parse_token(token: str | bytes) -> bytes:
    """Device token as bytes, from hex text (spaces and ``<>`` tolerated) or raw bytes."""
    if type(token) is str and token.isalnum():
        # The common case (plain hex text) in one C call: for letters and digits only,
        # fromhex accepts exactly what the general path below does (even-length hex).
        try:
            raw = bytes.fromhex(token)
        except ValueError:
            raw = _parse_token_text(token)
    elif isinstance(token, (bytes, bytearray, memoryview)):
        raw = bytes(token)
    elif isinstance(token, str):
        raw = _parse_token_text(token)
    else:
        raise InvalidTokenError(f"device token must be str or bytes, not {type(token).__name__}")
    if not MIN_TOKEN_BYTES <= len(raw) <= MAX_TOKEN_BYTES:
        raise InvalidTokenError(
            f"device token is {len(raw)} bytes; APNs tokens are {MIN_TOKEN_BYTES}"
            f"–{MAX_TOKEN_BYTES} bytes ({2 * MIN_TOKEN_BYTES}+ hex digits)"
        )
    return raw


_FORBIDDEN_IN_HEADER = re.compile(r"[\r\n\x00]")


def header_value(what: str, value: str) -> bytes:
    """``value`` as the bytes of an HTTP/2 header field, or :class:`InvalidFieldError`.

    Checked when a notification is built, so that a value that could never be sent (a lone
    UTF-16 surrogate, CR, LF or NUL, surrounding whitespace: RFC 9113 §8.2.1) is refused
    before anything is stored or queued, instead of failing later on the wire.
    """
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidFieldError(
            f"{what} is not valid Unicode text (character {e.start} is a lone surrogate)"
        ) from None
    if _FORBIDDEN_IN_HEADER.search(value):
        raise InvalidFieldError(f"{what} must not contain CR, LF or NUL")
    if value != value.strip(" \t"):
        raise InvalidFieldError(f"{what} must not begin or end with a space or tab")
    return raw


def shorten(token: str | bytes, keep: int = 8) -> str:
    """A device token safe for logs: the first ``keep`` hex digits and an ellipsis."""
    text = token.hex() if isinstance(token, (bytes, bytearray)) else str(token)
    return text if len(text) <= keep else text[:keep] + "…"


@dataclass(frozen=True, slots=True, repr=False)
class Notification:
    """One push notification to one device. Build it with :meth:`create`."""

    token: bytes
    payload: bytes
    #: UNIX seconds after which APNs may drop it; 0 = try once; ``None`` = not set.
    expiry: int | None = None
    #: 10 (now), 5 (power-conserving), 1 (HTTP/2 only, lowest); ``None`` = APNs default (10).
    priority: int | None = None
    topic: str | None = None
    push_type: PushType | None = None
    collapse_id: str | None = None
    #: Canonical UUID text; HTTP/2 sends it as ``apns-id``.
    apns_id: str | None = None

    @classmethod
    def create(
        cls,
        token: str | bytes,
        payload: Mapping[str, Any] | bytes | str,
        *,
        expiry: int | None = None,
        priority: int | None = None,
        topic: str | None = None,
        push_type: PushType | str | None = None,
        collapse_id: str | None = None,
        apns_id: str | uuid.UUID | None = None,
    ) -> Notification:
        """Validate and build; raises a :class:`~txapns.core.errors.ValidationError`."""
        raw_token = parse_token(token)
        body = encode_payload(payload)
        if expiry is not None and (
            isinstance(expiry, bool) or not isinstance(expiry, int) or not 0 <= expiry <= MAX_UINT32
        ):
            raise InvalidFieldError(
                f"expiry must be UNIX seconds within 0..2**32-1, not {expiry!r}"
            )
        if priority is not None and (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or priority not in (1, 5, 10)
        ):
            raise InvalidPriorityError(f"priority must be 10, 5 or 1, not {priority!r}")
        pt: PushType | None
        if push_type is None or isinstance(push_type, PushType):
            pt = push_type
        else:
            try:
                pt = PushType(push_type)
            except ValueError:
                raise InvalidFieldError(f"unknown push type {push_type!r}") from None
        if collapse_id is not None and not isinstance(collapse_id, str):
            raise InvalidFieldError(f"collapse id must be a string, not {collapse_id!r}")
        if collapse_id is not None:
            size = len(header_value("collapse id", collapse_id))
            if size > COLLAPSE_ID_LIMIT:
                raise InvalidFieldError(
                    f"collapse id is {size} bytes; the limit is {COLLAPSE_ID_LIMIT}"
                )
        ident: str | None = None
        if apns_id is not None:
            try:
                ident = str(apns_id if isinstance(apns_id, uuid.UUID) else uuid.UUID(apns_id))
            except (ValueError, TypeError, AttributeError):
                raise InvalidFieldError(f"apns-id must be a UUID, not {apns_id!r}") from None
            if isinstance(apns_id, str) and apns_id.isupper():
                ident = ident.upper()
        if topic is not None and not isinstance(topic, str):
            raise InvalidFieldError(f"topic must be a string, not {topic!r}")
        if topic is not None and not topic:
            raise MissingTopicError("topic must not be empty")
        if topic is not None:
            header_value("topic", topic)
        return cls(raw_token, body, expiry, priority, topic, pt, collapse_id, ident)

    def _readdressed(self, token: bytes, apns_id: str | None) -> Notification:
        """This notification for another device (``token`` already parsed by
        :func:`parse_token`) with another apns-id (None or canonical UUID text): a batch's
        recipients share everything else, validated once. Sets the slots directly: a frozen
        dataclass's ``__init__`` (``object.__setattr__`` per field) cost 2–3 times this, for
        every recipient of every batch."""
        n: Notification = _new(Notification)
        _SET_TOKEN(n, token)
        _SET_PAYLOAD(n, self.payload)
        _SET_EXPIRY(n, self.expiry)
        _SET_PRIORITY(n, self.priority)
        _SET_TOPIC(n, self.topic)
        _SET_PUSH_TYPE(n, self.push_type)
        _SET_COLLAPSE_ID(n, self.collapse_id)
        _SET_APNS_ID(n, apns_id)
        return n

    def __repr__(self) -> str:
        # Never the full token: reprs end up in logs and tracebacks.
        return (
            f"<Notification token={self.short_token} payload={len(self.payload)}B"
            f" priority={self.priority} push_type={self.push_type and self.push_type.value}"
            f" apns_id={self.apns_id}>"
        )

    @property
    def token_hex(self) -> str:
        return self.token.hex()

    @property
    def short_token(self) -> str:
        return shorten(self.token)

    def aps(self) -> dict[str, Any]:
        value = json.loads(self.payload).get("aps", {})
        return value if isinstance(value, dict) else {}


_new = object.__new__
_SLOT = {f.name: Notification.__dict__[f.name].__set__ for f in fields(Notification)}
# _readdressed sets every field: a new one must be added there (and here) before this imports.
assert set(_SLOT) == {
    "token",
    "payload",
    "expiry",
    "priority",
    "topic",
    "push_type",
    "collapse_id",
    "apns_id",
}, "Notification's fields changed: update Notification._readdressed"
_SET_TOKEN = _SLOT["token"]
_SET_PAYLOAD = _SLOT["payload"]
_SET_EXPIRY = _SLOT["expiry"]
_SET_PRIORITY = _SLOT["priority"]
_SET_TOPIC = _SLOT["topic"]
_SET_PUSH_TYPE = _SLOT["push_type"]
_SET_COLLAPSE_ID = _SLOT["collapse_id"]
_SET_APNS_ID = _SLOT["apns_id"]


def _check_priority_against_payload(n: Notification, aps: Mapping[str, Any] | None) -> None:
    if n.priority != 10 or (b"content-available" not in n.payload and b"\\u" not in n.payload):
        return  # the common case costs no JSON parse (a \u escape may spell the key)
    if aps is None:
        aps = n.aps()
    if aps.get("content-available") == 1 and not (
        "alert" in aps or "sound" in aps or "badge" in aps
    ):
        raise InvalidPriorityError(
            "priority 10 with content-available only is rejected by APNs; use priority 5 "
            "for background updates"
        )


def validate_binary(n: Notification) -> None:
    """Rules of the legacy binary protocol (2048-byte payload, priority 10 or 5)."""
    if not n.token:
        raise InvalidTokenError("the binary protocol sends to device tokens only (no broadcasts)")
    if len(n.payload) > BINARY_PAYLOAD_LIMIT:
        raise PayloadTooLargeError(len(n.payload), BINARY_PAYLOAD_LIMIT, "binary")
    if n.priority is not None and n.priority not in (5, 10):
        raise InvalidPriorityError(f"the binary protocol takes priority 10 or 5, not {n.priority}")
    _check_priority_against_payload(n, None)


def http2_payload_limit(n: Notification) -> int:
    return HTTP2_VOIP_PAYLOAD_LIMIT if n.push_type is PushType.VOIP else HTTP2_PAYLOAD_LIMIT


#: Push types whose rules look inside the payload.
_PARSED_PUSH_TYPES = frozenset({PushType.BACKGROUND, PushType.LOCATION, PushType.LIVEACTIVITY})


def validate_http2(n: Notification, *, token_auth: bool) -> None:
    """Rules of the HTTP/2 provider API that can be checked before sending."""
    limit = http2_payload_limit(n)
    if len(n.payload) > limit:
        raise PayloadTooLargeError(len(n.payload), limit, "HTTP/2")
    if not n.payload.strip(b" \t\r\n{}"):  # "{}", also with whitespace (a JSON object)
        raise PayloadError("APNs rejects an empty payload (PayloadEmpty)")
    _check_priority_against_payload(n, None)
    if token_auth and not n.topic:
        raise MissingTopicError("token authentication needs a topic (the app's bundle id)")
    pt = n.push_type
    if pt not in _PARSED_PUSH_TYPES:
        return  # the common case (alerts) needs no JSON parse: this runs for every notification
    aps = n.aps()
    if pt is PushType.BACKGROUND:
        if "alert" in aps:
            raise PayloadError("background notifications may not carry an alert")
        if n.priority != 5:  # unset means APNs' default, 10
            raise InvalidPriorityError("background notifications must use priority 5")
    if pt in (PushType.LOCATION, PushType.LIVEACTIVITY) and not token_auth:
        raise InvalidFieldError(f"push type {pt.value} needs token (JWT) authentication")
    if pt is PushType.LIVEACTIVITY:
        if "timestamp" not in aps:
            raise PayloadError("a Live Activity payload needs aps.timestamp")
        if "event" not in aps:
            raise PayloadError("a Live Activity payload needs aps.event (start, update, end)")


@dataclass(frozen=True, slots=True)
class CheckedHTTP2:
    """A notification that passed :func:`validate_http2` with ``token_auth``.

    :meth:`txapns.http2.HTTP2Client.send_checked` takes it without validating again (one
    checked for the other ``token_auth``, or without a topic, is validated as usual). The
    service's engine validates a batch's shared fields once, and each recipient differs only
    in its token and apns-id, which :func:`validate_http2` does not look at: checking every
    notification again in the client cost as much as the rest of its admission. Make it with
    :func:`check_http2`, or only from fields validated the same way."""

    notification: Notification
    token_auth: bool


def check_http2(n: Notification, *, token_auth: bool) -> CheckedHTTP2:
    """:func:`validate_http2`, and the proof of it."""
    validate_http2(n, token_auth=token_auth)
    return CheckedHTTP2(n, token_auth)
