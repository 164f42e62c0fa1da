"""The one result type shared by the binary and the HTTP/2 clients.

Every notification handed to a client ends in exactly one :class:`Result`, whose
:class:`Outcome` is one of:

* ``ACCEPTED`` – APNs took it (binary: confirmed by a later error, status 10 or a quiet window;
  HTTP/2: status 200);
* ``REJECTED`` – APNs (or the client, before sending, e.g. attempts exhausted or a TLS failure)
  refused it; ``reason`` says why and ``status`` carries the binary status or HTTP status;
* ``UNKNOWN`` – it may or may not have been delivered; ``reason`` says why (silent close,
  timeout, GOAWAY at or below last-stream-id…).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .notification import Notification

__all__ = ["Outcome", "Result"]


__all__ = [
    "UNKNOWN_CONNECTION_LOST",
    "UNKNOWN_PROTOCOL_ERROR",
    "UNKNOWN_RETIRED",
    "UNKNOWN_STOPPED",
    "UNKNOWN_STREAM_RESET",
    "UNKNOWN_TIMEOUT",
    "Outcome",
    "Result",
    "UnknownPolicy",
    "counter_key",
]

#: Why an outcome is unknown (``Result.reason`` of an unknown result, and its counter label).
UNKNOWN_TIMEOUT = "timeout"
UNKNOWN_CONNECTION_LOST = "connection-lost"
UNKNOWN_STREAM_RESET = "stream-reset"
UNKNOWN_PROTOCOL_ERROR = "protocol-error"
UNKNOWN_RETIRED = "connection-retired"
UNKNOWN_STOPPED = "stopped"


class UnknownPolicy(enum.Enum):
    """What to do with notifications whose fate is unknown (a silent close, a reset stream,
    a lost connection): both protocols apply it."""

    #: Re-send them (they may be delivered twice; counted in ``resent_unknown``).
    RESEND = "resend"
    #: Finish them with outcome ``UNKNOWN``.
    FAIL = "fail"


class Outcome(enum.StrEnum):
    """A notification's fate. A :class:`str` subclass: ``outcome == "accepted"`` holds, and it
    prints, formats and serialises (JSON) as its value."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


class Result(NamedTuple):
    """What happened to one notification.

    A named tuple rather than a dataclass: one is made per notification on the hot path, and
    tuple construction costs a fraction of a frozen dataclass's ``__init__``.
    """

    notification: Notification
    outcome: Outcome
    #: Binary status byte (1–255) or HTTP status (200, 400, 410…); ``None`` when APNs said nothing.
    status: int | None = None
    #: Binary status name, APNs ``reason`` string, or why the outcome is unknown / local failure.
    reason: str | None = None
    apns_id: str | None = None
    apns_unique_id: str | None = None
    #: For HTTP 410: when APNs learned the token was no longer valid.
    timestamp: datetime | None = None
    #: How many times the notification was written to a connection.
    attempts: int = 0
    #: Seconds from ``send`` to the outcome, when the client measured it.
    latency: float | None = None
    #: Local failure kind (e.g. ``"tls"``, ``"stopped"``, ``"attempts"``) for rejections the
    #: client decided without APNs; ``None`` when APNs itself answered.
    local: str | None = None
    #: It was written again after an attempt whose outcome was unknown (a silent close, a
    #: reset, an unattributed binary error): APNs may have delivered it more than once.
    may_duplicate: bool = False

    # --- the named constructors: how every client makes its results ----------------------

    @classmethod
    def accepted_for(
        cls,
        notification: Notification,
        attempts: int,
        latency: float | None,
        may_duplicate: bool = False,
        *,
        status: int | None = None,
        apns_id: str | None = None,
        apns_unique_id: str | None = None,
    ) -> Result:
        """APNs took it (HTTP/2: ``status`` 200 and the ids it answered with)."""
        return cls(
            notification,
            Outcome.ACCEPTED,
            status,
            None,
            apns_id,
            apns_unique_id,
            None,
            attempts,
            latency,
            None,
            may_duplicate,
        )

    @classmethod
    def rejected_for(
        cls,
        notification: Notification,
        reason: str | None,
        *,
        status: int | None = None,
        local: str | None = None,
        apns_id: str | None = None,
        apns_unique_id: str | None = None,
        timestamp: datetime | None = None,
        attempts: int = 0,
        latency: float | None = None,
        may_duplicate: bool = False,
    ) -> Result:
        """Refused: by APNs (``status``, Apple's ``reason``), or by the client before or
        instead of sending (``local`` says why: ``"tls"``, ``"stopped"``, ``"attempts"``…)."""
        return cls(
            notification,
            Outcome.REJECTED,
            status,
            reason,
            apns_id,
            apns_unique_id,
            timestamp,
            attempts,
            latency,
            local,
            may_duplicate,
        )

    @classmethod
    def unknown_for(
        cls,
        notification: Notification,
        reason: str | None,
        *,
        local: str | None = None,
        status: int | None = None,
        apns_id: str | None = None,
        attempts: int = 0,
        latency: float | None = None,
        may_duplicate: bool = False,
    ) -> Result:
        """It may or may not have been delivered: ``reason`` says why it is unknown (one of
        the ``UNKNOWN_*`` labels), or ``local`` gives the label and ``reason`` the detail."""
        return cls(
            notification,
            Outcome.UNKNOWN,
            status,
            reason,
            apns_id,
            None,
            None,
            attempts,
            latency,
            local,
            may_duplicate,
        )

    # --- what it says ------------------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED

    @property
    def rejected(self) -> bool:
        return self.outcome is Outcome.REJECTED

    @property
    def unknown(self) -> bool:
        return self.outcome is Outcome.UNKNOWN

    @property
    def token_invalid(self) -> bool:
        """True when APNs said the device token is dead and the caller should prune it."""
        if self.outcome is not Outcome.REJECTED or self.local is not None:
            return False
        return (
            (self.status == 8 and self.reason == "InvalidToken")
            or self.status == 410
            or (self.reason in ("BadDeviceToken", "Unregistered", "ExpiredToken"))
        )

    def __str__(self) -> str:
        parts = [self.outcome.value]
        if self.status is not None:
            parts.append(str(self.status))
        if self.reason:
            parts.append(self.reason)
        return " ".join(parts)


def counter_key(result: Result) -> str:
    """The label a final result is counted under in ``rejected_by_reason`` /
    ``unknown_by_reason``: the local failure kind (``"tls"``, ``"circuit-open"``,
    ``"stopped"``, ``"invalid"``), else Apple's reason (or the HTTP status), else why the
    outcome is unknown."""
    local = result.local
    if local is not None and local != "attempts":
        return local
    if result.reason:
        return result.reason
    return str(result.status) if result.status is not None else "unknown"
