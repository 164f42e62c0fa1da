"""Broadcast push (iOS 18): the channel model and the broadcast value type (sans-IO).

A Live Activity can subscribe to a *channel* instead of handing its push token to the
provider; one request to ``POST /4/broadcasts/apps/<bundle id>`` with ``apns-channel-id``
reaches every subscriber (the docs' :ref:`apns-broadcast`). Channels are made,
read, listed and deleted on a separate management host (:data:`MANAGEMENT_HOSTS`).

This module holds what can be decided without a network:

* :class:`Broadcast` — one broadcast, validated when it is built (channel id shape, payload
  size and Live Activity keys, priority, expiration). It is a
  :class:`~txapns.core.notification.Notification` whose ``token`` is empty, so a broadcast
  travels through a client's queue, retry policy and counters like any notification and ends
  in the same :class:`~txapns.core.result.Result` (``result.notification`` is the broadcast);
* :func:`validate_channel_id`, :class:`StoragePolicy`, :class:`ChannelInfo`;
* the request paths and bodies of the management API and the parsers of its answers.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import (
    InvalidChannelIdError,
    InvalidFieldError,
    InvalidPriorityError,
    MissingTopicError,
    PayloadError,
    PayloadTooLargeError,
    ProtocolError,
)

#: Channel management hosts by environment: ``(host, port)`` (the table is in .hosts).
from .hosts import MANAGEMENT_HOSTS as MANAGEMENT_HOSTS
from .notification import HTTP2_PAYLOAD_LIMIT, MAX_UINT32, Notification, PushType
from .payload import LIVE_ACTIVITY_EVENTS, encode_payload

__all__ = [
    "BROADCAST_PRIORITIES",
    "CHANNEL_ID_MAX_BYTES",
    "CHANNEL_PUSH_TYPE",
    "MANAGEMENT_HOSTS",
    "Broadcast",
    "ChannelInfo",
    "StoragePolicy",
    "all_channels_path",
    "broadcast_path",
    "channel_create_body",
    "channels_path",
    "parse_channel_info",
    "parse_channel_list",
    "validate_broadcast",
    "validate_bundle_id",
    "validate_channel_id",
    "validate_storage_policy",
]


#: A channel id is canonical base64 text of at most this many bytes. Apple documents no
#: length (the ids in its examples decode to 11 and 13 bytes), so only a sanity bound.
CHANNEL_ID_MAX_BYTES = 64
#: The ``push-type`` of a channel (the only one Apple has).
CHANNEL_PUSH_TYPE = "LiveActivity"
BROADCAST_PRIORITIES = (1, 5, 10)

_BASE64 = re.compile(r"\A[A-Za-z0-9+/]+={0,2}\Z")
#: What may stand in a path segment: a bundle id (letters, digits, ``-``, ``.``, ``_``).
_BUNDLE_ID = re.compile(r"\A[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


class StoragePolicy(enum.IntEnum):
    """A channel's ``message-storage-policy``."""

    #: Nothing is stored: a broadcast reaches only devices online now (expiration must be 0).
    NO_STORAGE = 0
    #: The most recent broadcast is stored for devices offline now.
    MOST_RECENT_MESSAGE = 1


def validate_channel_id(channel_id: str) -> str:
    """Return ``channel_id`` if it is canonical, padded base64 text of 1 to
    :data:`CHANNEL_ID_MAX_BYTES` bytes, else raise
    :class:`~txapns.core.errors.InvalidChannelIdError`."""
    if not isinstance(channel_id, str):
        raise InvalidChannelIdError(f"channel id must be str, not {type(channel_id).__name__}")
    if not _BASE64.match(channel_id):
        raise InvalidChannelIdError(f"channel id {channel_id[:40]!r} is not base64 text")
    try:
        raw = base64.b64decode(channel_id, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidChannelIdError(f"channel id {channel_id[:40]!r} is not base64 text") from None
    if not 1 <= len(raw) <= CHANNEL_ID_MAX_BYTES:
        raise InvalidChannelIdError(
            f"channel id {channel_id[:40]!r} decodes to {len(raw)} bytes; the limit is "
            f"{CHANNEL_ID_MAX_BYTES}"
        )
    if base64.b64encode(raw).decode("ascii") != channel_id:
        raise InvalidChannelIdError(f"channel id {channel_id!r} is not canonical base64 text")
    return channel_id


def validate_storage_policy(policy: int) -> StoragePolicy:
    """``policy`` (0 or 1, or a :class:`StoragePolicy`) as a :class:`StoragePolicy`."""
    if isinstance(policy, bool) or not isinstance(policy, int):
        raise InvalidFieldError(f"message storage policy must be 0 or 1, not {policy!r}")
    try:
        return StoragePolicy(policy)
    except ValueError:
        raise InvalidFieldError(f"message storage policy must be 0 or 1, not {policy!r}") from None


def validate_bundle_id(bundle_id: str | None) -> str:
    """The bundle id that names the app in broadcast and management paths."""
    if not bundle_id:
        raise MissingTopicError(
            "broadcast push names the app in the path: give the client a bundle_id"
        )
    if not _BUNDLE_ID.match(bundle_id):
        raise InvalidFieldError(f"bundle id {bundle_id!r} cannot stand in a request path")
    return bundle_id


def _canonical_uuid(value: str | uuid.UUID) -> str:
    try:
        text = str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidFieldError(f"apns-id must be a UUID, not {value!r}") from None
    return text.upper() if isinstance(value, str) and value.isupper() else text


def _validate_expiration(expiration: int | None) -> None:
    if expiration is not None and (
        isinstance(expiration, bool)
        or not isinstance(expiration, int)
        or not 0 <= expiration <= MAX_UINT32
    ):
        raise InvalidFieldError(
            f"expiration must be UNIX seconds within 0..2**32-1, not {expiration!r}"
        )


@dataclass(frozen=True, slots=True, repr=False)
class Broadcast(Notification):
    """One broadcast to a channel's subscribers. Build it with :meth:`for_channel`.

    A :class:`~txapns.core.notification.Notification` with an empty ``token``, ``push_type``
    :attr:`~txapns.core.notification.PushType.LIVEACTIVITY`, no topic and no collapse id;
    ``expiry`` is sent as ``apns-expiration``. Every construction is validated
    (:func:`validate_broadcast`).
    """

    #: The channel (base64 text, as APNs gave it), sent as ``apns-channel-id``.
    channel_id: str = ""

    def __post_init__(self) -> None:
        validate_broadcast(self)

    @classmethod
    def for_channel(
        cls,
        channel_id: str,
        payload: Mapping[str, Any] | bytes | str,
        *,
        priority: int | None = 10,
        expiration: int | None = 0,
        apns_id: str | uuid.UUID | None = None,
    ) -> Broadcast:
        """Validate and build; raises a :class:`~txapns.core.errors.ValidationError`.

        ``expiration`` 0 (the default) is valid on every channel: APNs tries once and stores
        nothing. A later time (UNIX seconds) is only accepted on a channel created with
        :attr:`StoragePolicy.MOST_RECENT_MESSAGE`. ``None`` sends no ``apns-expiration``.
        """
        body = encode_payload(payload)
        ident = None if apns_id is None else _canonical_uuid(apns_id)
        return cls(
            b"", body, expiration, priority, None, PushType.LIVEACTIVITY, None, ident, channel_id
        )

    def __repr__(self) -> str:
        return (
            f"<Broadcast channel={self.channel_id} payload={len(self.payload)}B"
            f" priority={self.priority} expiration={self.expiry} apns_id={self.apns_id}>"
        )


def validate_broadcast(b: Broadcast) -> None:
    """The rules a broadcast must meet before it is sent."""
    if b.token:
        raise InvalidFieldError("a broadcast has no device token: use Broadcast.for_channel")
    validate_channel_id(b.channel_id)
    if b.push_type is not PushType.LIVEACTIVITY:
        raise InvalidFieldError("broadcasts are Live Activity pushes (push type liveactivity)")
    if b.topic is not None or b.collapse_id is not None:
        raise InvalidFieldError("a broadcast has no topic and no collapse id")
    if b.priority is not None and (
        isinstance(b.priority, bool) or b.priority not in BROADCAST_PRIORITIES
    ):
        raise InvalidPriorityError(f"priority must be 10, 5 or 1, not {b.priority!r}")
    _validate_expiration(b.expiry)
    if b.apns_id is not None:
        _canonical_uuid(b.apns_id)
    size = len(b.payload)
    if size > HTTP2_PAYLOAD_LIMIT:
        raise PayloadTooLargeError(size, HTTP2_PAYLOAD_LIMIT, "broadcast")
    if not size or b.payload == b"{}":
        raise PayloadError("APNs rejects an empty payload (PayloadEmpty)")
    try:
        data = json.loads(b.payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise PayloadError(f"payload is not valid UTF-8 JSON: {e}") from None
    aps = data.get("aps") if isinstance(data, dict) else None
    if not isinstance(aps, dict):
        raise PayloadError("a Live Activity payload needs an aps dictionary")
    if "timestamp" not in aps:
        raise PayloadError("a Live Activity payload needs aps.timestamp")
    event = aps.get("event")
    if event is None:
        raise PayloadError("a Live Activity payload needs aps.event (start, update, end)")
    if event not in LIVE_ACTIVITY_EVENTS:
        raise PayloadError(f"aps.event must be one of start, update, end, not {event!r}")


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What ``GET /1/apps/<bundle>/channels`` says of a channel."""

    channel_id: str
    storage_policy: StoragePolicy
    push_type: str = CHANNEL_PUSH_TYPE


# --- the management API --------------------------------------------------------------------


def channels_path(bundle_id: str) -> bytes:
    """``:path`` of channel create, read and delete."""
    return f"/1/apps/{validate_bundle_id(bundle_id)}/channels".encode("ascii")


def all_channels_path(bundle_id: str) -> bytes:
    """``:path`` of the channel list."""
    return f"/1/apps/{validate_bundle_id(bundle_id)}/all-channels".encode("ascii")


def broadcast_path(bundle_id: str) -> bytes:
    """``:path`` of a broadcast."""
    return f"/4/broadcasts/apps/{validate_bundle_id(bundle_id)}".encode("ascii")


def channel_create_body(policy: StoragePolicy) -> bytes:
    """The JSON body of ``POST /1/apps/<bundle>/channels``."""
    return json.dumps(
        {"message-storage-policy": int(policy), "push-type": CHANNEL_PUSH_TYPE},
        separators=(",", ":"),
    ).encode("ascii")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise ProtocolError(f"the {what} answer is not a JSON object")
    return data


def parse_channel_info(channel_id: str, body: bytes) -> ChannelInfo:
    """The body of a channel read: ``{"message-storage-policy": 0|1, "push-type": …}``."""
    data = _json_object(body, "channel read")
    policy = data.get("message-storage-policy")
    if isinstance(policy, bool) or policy not in (0, 1):
        raise ProtocolError(f"the channel read answer has message-storage-policy {policy!r}")
    push_type = data.get("push-type", CHANNEL_PUSH_TYPE)
    if not isinstance(push_type, str):
        raise ProtocolError(f"the channel read answer has push-type {push_type!r}")
    return ChannelInfo(channel_id, StoragePolicy(policy), push_type)


def parse_channel_list(body: bytes) -> list[str]:
    """The body of ``GET /1/apps/<bundle>/all-channels``: ``{"channels": […]}``."""
    data = _json_object(body, "channel list")
    channels = data.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ProtocolError("the channel list answer has no list of channel ids")
    return list(channels)
