"""Building the JSON payload: the ``aps`` dictionary plus custom keys.

The builder only produces a dictionary; :func:`encode_payload` makes the compact UTF-8 JSON
both protocols send (no spaces, no ASCII escaping: every byte counts against the limit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import PayloadError

__all__ = [
    "INTERRUPTION_LEVELS",
    "LIVE_ACTIVITY_EVENTS",
    "Alert",
    "CriticalSound",
    "build_payload",
    "encode_payload",
]

INTERRUPTION_LEVELS = ("passive", "active", "time-sensitive", "critical")
LIVE_ACTIVITY_EVENTS = ("start", "update", "end")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string_list(name: str, value: Sequence[str]) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise PayloadError(f"{name} must be a sequence of strings, not {value!r}")
    return list(value)


def _mapping(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PayloadError(f"{name} must be a mapping, not {type(value).__name__}")
    return dict(value)


@dataclass(frozen=True, slots=True)
class Alert:
    """The ``alert`` dictionary, with Apple's localisation keys."""

    title: str | None = None
    subtitle: str | None = None
    body: str | None = None
    launch_image: str | None = None
    title_loc_key: str | None = None
    title_loc_args: Sequence[str] | None = None
    subtitle_loc_key: str | None = None
    subtitle_loc_args: Sequence[str] | None = None
    loc_key: str | None = None
    loc_args: Sequence[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None:
                key = name.replace("_", "-")
                out[key] = _string_list(key, value) if name.endswith("args") else value
        return out


@dataclass(frozen=True, slots=True)
class CriticalSound:
    """The critical-alert ``sound`` dictionary (needs Apple's entitlement)."""

    name: str = "default"
    volume: float = 1.0
    critical: bool = True

    def to_dict(self) -> dict[str, Any]:
        if not _is_number(self.volume) or not 0.0 <= self.volume <= 1.0:
            raise PayloadError(f"critical sound volume must be within 0..1, not {self.volume}")
        return {"critical": 1 if self.critical else 0, "name": self.name, "volume": self.volume}


def build_payload(
    alert: str | Alert | Mapping[str, Any] | None = None,
    *,
    badge: int | None = None,
    sound: str | CriticalSound | Mapping[str, Any] | None = None,
    content_available: bool = False,
    mutable_content: bool = False,
    thread_id: str | None = None,
    category: str | None = None,
    interruption_level: str | None = None,
    relevance_score: float | None = None,
    target_content_id: str | None = None,
    filter_criteria: str | None = None,
    url_args: Sequence[str] | None = None,
    # Live Activities
    timestamp: int | None = None,
    event: str | None = None,
    content_state: Mapping[str, Any] | None = None,
    stale_date: int | None = None,
    dismissal_date: int | None = None,
    attributes_type: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    input_push_token: bool = False,
    input_push_channel: str | None = None,
    custom: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a payload dictionary ``{"aps": {...}, **custom}``.

    Only keys that are set appear, so the payload stays as small as possible.
    """
    aps: dict[str, Any] = {}
    if alert is not None:
        if isinstance(alert, Alert):
            aps["alert"] = alert.to_dict()
        elif isinstance(alert, str):
            aps["alert"] = alert
        else:
            aps["alert"] = _mapping("alert", alert)
    if badge is not None:
        if isinstance(badge, bool) or not isinstance(badge, int) or badge < 0:
            raise PayloadError(f"badge must be a non-negative integer, not {badge!r}")
        aps["badge"] = badge
    if sound is not None:
        aps["sound"] = (
            sound.to_dict()
            if isinstance(sound, CriticalSound)
            else sound
            if isinstance(sound, str)
            else _mapping("sound", sound)
        )
    if content_available:
        aps["content-available"] = 1
    if mutable_content:
        aps["mutable-content"] = 1
    for key, value in (
        ("thread-id", thread_id),
        ("category", category),
        ("target-content-id", target_content_id),
        ("filter-criteria", filter_criteria),
    ):
        if value is not None:
            aps[key] = value
    if url_args is not None:
        aps["url-args"] = _string_list("url-args", url_args)
    if interruption_level is not None:
        if interruption_level not in INTERRUPTION_LEVELS:
            raise PayloadError(
                f"interruption-level must be one of {', '.join(INTERRUPTION_LEVELS)}, "
                f"not {interruption_level!r}"
            )
        aps["interruption-level"] = interruption_level
    if relevance_score is not None:
        if not _is_number(relevance_score) or not 0.0 <= relevance_score <= 1.0:
            raise PayloadError(f"relevance-score must be within 0..1, not {relevance_score}")
        aps["relevance-score"] = relevance_score
    if event is not None and event not in LIVE_ACTIVITY_EVENTS:
        raise PayloadError(f"event must be one of start, update, end, not {event!r}")
    for date_key, date in (
        ("timestamp", timestamp),
        ("stale-date", stale_date),
        ("dismissal-date", dismissal_date),
    ):
        if date is not None and (isinstance(date, bool) or not isinstance(date, int) or date < 0):
            raise PayloadError(f"{date_key} must be UNIX seconds (an integer), not {date!r}")
    la_fields: tuple[tuple[str, object], ...] = (
        ("timestamp", timestamp),
        ("event", event),
        ("stale-date", stale_date),
        ("dismissal-date", dismissal_date),
        ("attributes-type", attributes_type),
        ("input-push-channel", input_push_channel),
    )
    for la_key, la_value in la_fields:
        if la_value is not None:
            aps[la_key] = la_value
    if content_state is not None:
        aps["content-state"] = _mapping("content-state", content_state)
    if attributes is not None:
        aps["attributes"] = _mapping("attributes", attributes)
    if input_push_token:
        aps["input-push-token"] = 1
    payload: dict[str, Any] = {"aps": aps}
    for key, value in (custom or {}).items():
        if key == "aps":
            raise PayloadError("custom keys may not replace 'aps'")
        payload[key] = value
    return payload


def encode_payload(payload: Mapping[str, Any] | bytes | str) -> bytes:
    """Compact UTF-8 JSON for a payload dictionary; bytes/str are checked to be a JSON object."""
    if isinstance(payload, (bytes, str)):
        try:
            # Decoded strictly: json.loads(bytes) would also take UTF-16/32 and a BOM.
            raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
            value = json.loads(
                payload if isinstance(payload, str) else raw.decode("utf-8"),
                parse_constant=_reject_constant,
            )
        except (ValueError, RecursionError) as e:  # Unicode errors are ValueErrors
            raise PayloadError(f"payload is not valid UTF-8 JSON: {e}") from None
        if not isinstance(value, dict):
            raise PayloadError("payload must be a JSON object")
        return raw
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be a mapping, bytes or str, not {type(payload).__name__}")
    try:
        return json.dumps(
            payload,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=_json_default,
        ).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        raise PayloadError(f"payload cannot be encoded as JSON: {e}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_default(value: object) -> Any:
    if isinstance(value, Mapping):  # json.dumps takes dicts only
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
