"""What an HTTP/2 response means and what to do about it, as data (sans-IO).

Apple's table (the docs' :ref:`apns-responses`) is encoded here once:

* :func:`parse_response` turns a response's status, headers and JSON body into an
  :class:`APNsResponse` (``apns-id``, ``apns-unique-id``, ``reason``, and the 410
  ``timestamp`` as an aware UTC :class:`~datetime.datetime`);
* :func:`classify` maps ``(status, reason)`` to an :class:`Action` — accepted, rejected for
  good, retried (at once on a new connection, later, or with backoff on another connection), or
  a credential failure that opens the circuit breaker;
* :class:`RetryPolicy` decides, from that action and how many attempts already failed, whether
  a notification is finished (and how) or re-sent (after which delay, on which connection). It
  also applies the :class:`~txapns.core.result.UnknownPolicy` to notifications whose
  outcome is unknown (a reset stream, a lost connection, a stream at or below a GOAWAY's
  last-stream-id that was never answered).

Nothing here reads a clock or draws randomness: jitter comes in as ``rnd`` (uniform in
[0, 1)). The Twisted client (:mod:`txapns.http2`) acts on the decisions.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from ._deprecate import renamed
from .backoff import Backoff
from .result import Outcome, UnknownPolicy

__all__ = [
    "CIRCUIT_REASONS",
    "NEW_CONNECTION_REASONS",
    "APNsResponse",
    "Action",
    "Decision",
    "RetryPolicy",
    "UnknownPolicy",
    "classify",
    "goaway_reason",
    "parse_response",
    "refreshes_token",
]


class Action(enum.Enum):
    """What a response asks of the client."""

    #: 2xx: APNs took the notification.
    ACCEPTED = "accepted"
    #: Don't retry: a caller bug (most 400s, 404, 405, 413) or a dead device token (400
    #: BadDeviceToken / DeviceTokenNotForTopic, 410).
    REJECTED = "rejected"
    #: Re-send at once on a *new* connection; this one is retired (400 IdleTimeout, 403
    #: ExpiredProviderToken — with a new token —, 403 UnrelatedKeyIdInToken, 429
    #: TooManyProviderTokenUpdates).
    RETRY_NEW_CONNECTION = "retry-new-connection"
    #: Re-send after a delay (429 TooManyRequests: that device gets too many).
    RETRY_LATER = "retry-later"
    #: Re-send with exponential backoff, preferably on another connection (500, 503).
    RETRY_BACKOFF_OTHER_CONNECTION = "retry-backoff-other-connection"
    #: The credential is refused (403 family): stop sending with it (circuit breaker).
    CIRCUIT_OPEN = "circuit-open"


#: 403 reasons that mean the credential itself is refused.
CIRCUIT_REASONS = frozenset(
    {
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
        "InvalidProviderToken",
        "MissingProviderToken",
        "BadEnvironmentKeyIdInToken",
        "BadEnvironmentKeyInToken",
    }
)

#: Reasons answered by retiring the connection and re-sending on a new one.
NEW_CONNECTION_REASONS = frozenset(
    {
        "IdleTimeout",
        "ExpiredProviderToken",
        "UnrelatedKeyIdInToken",
        "TooManyProviderTokenUpdates",
    }
)

#: ``(status, reason)`` pairs with an action of their own; anything else is decided by status.
_BY_REASON: dict[tuple[int, str], Action] = {
    (400, "IdleTimeout"): Action.RETRY_NEW_CONNECTION,
    (403, "ExpiredProviderToken"): Action.RETRY_NEW_CONNECTION,
    (403, "UnrelatedKeyIdInToken"): Action.RETRY_NEW_CONNECTION,
    (429, "TooManyProviderTokenUpdates"): Action.RETRY_NEW_CONNECTION,
    (429, "TooManyRequests"): Action.RETRY_LATER,
    **{(403, reason): Action.CIRCUIT_OPEN for reason in CIRCUIT_REASONS},
}

_BY_STATUS: dict[int, Action] = {
    200: Action.ACCEPTED,
    # 429 with an unknown reason: throttling all the same.
    429: Action.RETRY_LATER,
    500: Action.RETRY_BACKOFF_OTHER_CONNECTION,
    503: Action.RETRY_BACKOFF_OTHER_CONNECTION,
}


def classify(status: int, reason: str | None) -> Action:
    """The :class:`Action` for a response (see the module docstring).

    Statuses Apple does not document: 2xx accepted, 5xx retried with backoff, anything else
    rejected (never retried blindly). A 403 with an unknown reason is rejected, not a circuit
    opener: only the documented credential reasons stop a whole credential.
    """
    if reason is not None:
        action = _BY_REASON.get((status, reason))
        if action is not None:
            return action
    action = _BY_STATUS.get(status)
    if action is not None:
        return action
    if 200 <= status < 300:
        return Action.ACCEPTED
    if 500 <= status < 600:
        return Action.RETRY_BACKOFF_OTHER_CONNECTION
    return Action.REJECTED


def refreshes_token(status: int, reason: str | None) -> bool:
    """True when the answer means the provider token must be replaced (ExpiredProviderToken):
    a new token, used on a new connection."""
    return status == 403 and reason == "ExpiredProviderToken"


class APNsResponse(NamedTuple):
    """A parsed APNs response."""

    status: int
    #: Apple's ``reason`` (``None`` on success or when the body has none).
    reason: str | None = None
    apns_id: str | None = None
    #: ``apns-unique-id`` (development environment only).
    apns_unique_id: str | None = None
    #: For 410: when APNs learned the token stopped being valid (UTC).
    timestamp: datetime | None = None


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode("ascii", "replace")


def parse_response(
    status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> APNsResponse:
    """Parse a response: headers are lower-case ``(name, value)`` bytes pairs.

    A body that is not a JSON object, or a ``timestamp`` that is not a number of milliseconds,
    is ignored rather than raised: the status still decides what happens.
    """
    apns_id = unique = None
    for name, value in headers:
        if name == b"apns-id":
            if apns_id is None:
                apns_id = value
        elif name == b"apns-unique-id" and unique is None:
            unique = value
    reason: str | None = None
    timestamp: datetime | None = None
    if body:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            raw_reason = data.get("reason")
            if isinstance(raw_reason, str):
                reason = raw_reason
            raw_ts = data.get("timestamp")
            if isinstance(raw_ts, (int, float)) and not isinstance(raw_ts, bool):
                try:
                    timestamp = datetime.fromtimestamp(raw_ts / 1000.0, tz=UTC)
                except (OverflowError, OSError, ValueError):
                    timestamp = None
    return APNsResponse(status, reason, _text(apns_id), _text(unique), timestamp)


class Decision(NamedTuple):
    """What happens to one notification after an answer (or an unknown outcome)."""

    #: Re-send it (``outcome`` is then ``None``).
    retry: bool
    #: The final outcome when not retried.
    outcome: Outcome | None = None
    #: Seconds to wait before the re-send.
    delay: float = 0.0
    #: Retire the connection that answered and re-send on a new one.
    new_connection: bool = False
    #: Prefer another connection for the re-send.
    other_connection: bool = False
    #: Open the circuit breaker of this credential.
    open_circuit: bool = False
    #: Mint a new provider token for the next connection.
    refresh_token: bool = False
    #: ``Result.local`` for a final outcome the client decided itself (``"attempts"``).
    local: str | None = None


_ACCEPT = Decision(False, Outcome.ACCEPTED)
_REJECT = Decision(False, Outcome.REJECTED)
_CIRCUIT = Decision(False, Outcome.REJECTED, open_circuit=True)
_GIVE_UP = Decision(False, Outcome.REJECTED, local="attempts")
_GIVE_UP_NEW_CONNECTION = Decision(False, Outcome.REJECTED, new_connection=True, local="attempts")
_UNKNOWN = Decision(False, Outcome.UNKNOWN)
_RESEND = Decision(True)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Apple's retry table as data.

    :param max_attempts: failed attempts (retryable answers and unknown outcomes) after which
        a notification is finished: rejected (``local="attempts"``, Apple's status and reason)
        or unknown. Re-sends of streams APNs never processed (above a GOAWAY's last-stream-id,
        REFUSED_STREAM) do not count.
    :param backoff: delays for 500/503, by failed attempts so far.
    :param too_many_requests_delay: seconds before re-sending after 429 TooManyRequests
        (multiplied by the number of 429s that notification got: 1×, 2×, …).
    :param unknown_policy: what to do when the outcome is unknown: re-send with the same
        apns-id (may deliver twice; counted in ``resent_unknown``) or finish as unknown.
    """

    max_attempts: int = 3
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, factor=2.0, cap=30.0))
    too_many_requests_delay: float = 5.0
    unknown_policy: UnknownPolicy = UnknownPolicy.RESEND

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.too_many_requests_delay < 0:
            raise ValueError("too_many_requests_delay must not be negative")

    def decide(self, action: Action, failures: int, rnd: float = 0.5) -> Decision:
        """The decision for ``action`` when the notification has now failed ``failures``
        times, this answer included (ignored for final actions)."""
        if action is Action.ACCEPTED:
            return _ACCEPT
        if action is Action.REJECTED:
            return _REJECT
        if action is Action.CIRCUIT_OPEN:
            return _CIRCUIT
        if action is Action.RETRY_NEW_CONNECTION:
            if failures >= self.max_attempts:
                return _GIVE_UP_NEW_CONNECTION
            return Decision(True, new_connection=True)
        if failures >= self.max_attempts:
            return _GIVE_UP
        if action is Action.RETRY_LATER:
            return Decision(True, delay=self.too_many_requests_delay * failures)
        # RETRY_BACKOFF_OTHER_CONNECTION
        return Decision(True, delay=self.backoff.delay(failures, rnd), other_connection=True)

    def decide_response(
        self, status: int, reason: str | None, failures: int, rnd: float = 0.5
    ) -> Decision:
        """:meth:`decide` for a response, with :func:`refreshes_token` folded in.

        ``failures`` counts the earlier failed attempts; this answer is added when it is a
        retryable one.
        """
        action = classify(status, reason)
        if action is Action.ACCEPTED or action is Action.REJECTED:
            return _ACCEPT if action is Action.ACCEPTED else _REJECT
        if action is Action.CIRCUIT_OPEN:
            return _CIRCUIT
        decision = self.decide(action, failures + 1, rnd)
        if refreshes_token(status, reason):
            decision = decision._replace(refresh_token=True)
        return decision

    def decide_unknown(self, failures: int) -> Decision:
        """The decision for a notification whose outcome just became unknown, having now
        failed ``failures`` times (this one included)."""
        if self.unknown_policy is UnknownPolicy.RESEND and failures < self.max_attempts:
            return _RESEND
        return _UNKNOWN


def goaway_reason(debug: bytes) -> str | None:
    """Apple's ``reason`` from a GOAWAY's debug data (``{"reason": …}``), if any."""
    if not debug:
        return None
    try:
        data = json.loads(debug)
    except (ValueError, UnicodeDecodeError):
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) else None


if TYPE_CHECKING:  # the old spelling, kept working (deprecated); see txapns.core._deprecate
    ApnsResponse = APNsResponse
else:
    __getattr__ = renamed(__name__, {"ApnsResponse": APNsResponse})
