"""The HTTP/2 provider client for Twisted: :class:`HTTP2Client`.

This module is glue around the sans-IO pieces:

* :class:`~txapns.core.http2.H2ClientConnection` speaks HTTP/2 (one per connection);
* :class:`~txapns.core.http2.HeaderBlockTemplate` encodes a request's headers (one template per
  (topic, push type, priority) and token generation, cached per connection);
* :class:`~txapns.core.jwt.ProviderTokenSource` mints the provider token (one per connection,
  refreshed between 20 and 50 minutes with jitter);
* :mod:`txapns.core.http2_policy` says what a response means and whether to retry.

Here we run a pool of connections (least-loaded dispatch, more connections when all are full,
``min_connections`` kept and pinged), feed them notifications once per reactor turn (so each
connection gets **one** ``transport.write`` per turn), enforce per-request deadlines with one
timer per connection, replace connections that stop answering, follow GOAWAY, and keep a
circuit breaker per credential. Every notification ends in exactly one
:class:`~txapns.core.result.Result`; the counters invariant
``submitted == accepted + rejected + unknown + pending()`` holds at every instant.

What happens to a notification, by cause:

+-------------------------------------+----------------------------------------------------+
| answer or event                     | what happens                                       |
+=====================================+====================================================+
| 200                                 | accepted (``apns_id``, ``apns_unique_id``)         |
+-------------------------------------+----------------------------------------------------+
| 400/404/405/410/413 and other 4xx   | rejected (Apple's reason; 410 with its timestamp)  |
+-------------------------------------+----------------------------------------------------+
| 429 TooManyRequests                 | re-sent after ``policy.too_many_requests_delay``   |
+-------------------------------------+----------------------------------------------------+
| 500 / 503                           | re-sent with backoff, on another connection        |
+-------------------------------------+----------------------------------------------------+
| 403 ExpiredProviderToken,           | the connection is retired (no new streams, closed  |
| 400 IdleTimeout,                    | when idle); re-sent at once on a new connection    |
| 403 UnrelatedKeyIdInToken,          | (after ExpiredProviderToken, with a new token)     |
| 429 TooManyProviderTokenUpdates     |                                                    |
+-------------------------------------+----------------------------------------------------+
| 403 credential reasons              | rejected; the circuit breaker opens: what is       |
|                                     | queued is rejected (``local="circuit-open"``) and  |
|                                     | ``send`` raises :class:`CircuitOpenError` until a  |
|                                     | probe after ``circuit_reset`` seconds is answered  |
|                                     | (``hold_when_unavailable``: all of it is held,     |
|                                     | the probe included, and sent once it is accepted)  |
+-------------------------------------+----------------------------------------------------+
| above a GOAWAY's last-stream-id,    | never processed: re-sent (``counters.replayed``)   |
| RST_STREAM(REFUSED_STREAM)          |                                                    |
+-------------------------------------+----------------------------------------------------+
| other resets, lost connections,     | unknown; ``policy.unknown_policy``: re-send with   |
| protocol errors, dead connections   | the same apns-id (``counters.resent_unknown``) or  |
|                                     | finish as unknown                                  |
+-------------------------------------+----------------------------------------------------+
| deadline passed                     | RST_STREAM(CANCEL), finished unknown ``"timeout"`` |
+-------------------------------------+----------------------------------------------------+
| not written within                  | rejected ``local="unreachable"`` (no connection)   |
| ``max_queue_time`` of ``send``      | or ``"queue-time"``; unknown if maybe delivered    |
+-------------------------------------+----------------------------------------------------+

Retryable failures count against ``policy.max_attempts``; past it a notification is finished
(rejected ``local="attempts"`` with Apple's status and reason, or unknown).

Broadcasts (:meth:`HTTP2Client.broadcast`) and other requests (:meth:`HTTP2Client.request`,
which :mod:`txapns.broadcast` uses for channel management) take the same path and count the
same way; only their header block is built differently (``_Item.request``).
"""

from __future__ import annotations

import heapq
import random
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._feeder import BulkFeeder, ResultCallback
from ._http2_connection import (
    APNsHTTP2Protocol,
    ConnectionFactory,
    ConnectionSettings,
    ConnectionState,
)
from ._http2_connection import Item as _Item
from ._http2_connection import Request as _Request
from ._timers import Phase, Phased, Reach, Retry, Timers
from ._twisted import deliver
from .core.backoff import Backoff
from .core.breaker import BreakerState, CircuitBreaker
from .core.broadcast import Broadcast, broadcast_path, validate_bundle_id
from .core.counters import Counters
from .core.errors import (
    CircuitOpenError,
    ClientStoppedError,
    InvalidFieldError,
    QueueFullError,
    RequestError,
    TLSFailureError,
)
from .core.hosts import APNS_HOSTS
from .core.http2 import ResponseReceived
from .core.http2.headers import check_field
from .core.http2_policy import RetryPolicy, parse_response
from .core.jwt import ProviderToken
from .core.notification import (
    CheckedHTTP2,
    Notification,
    PushType,
    new_apns_id,
    validate_http2,
)
from .core.proxy import ProxyAuthenticationError
from .core.queue_time import DEFAULT_MAX_QUEUE_TIME, ConnectFailures, QueueTimeLimit
from .core.result import (
    UNKNOWN_CONNECTION_LOST,
    UNKNOWN_STOPPED,
    UNKNOWN_TIMEOUT,
    Outcome,
    Result,
    UnknownPolicy,
    counter_key,
)
from .credentials import is_tls_failure

__all__ = [
    "APNsHTTP2Protocol",
    "HTTP2Client",
    "ProviderToken",
    "Response",
    "RetryPolicy",
    "UnknownPolicy",
    "counter_key",
    "new_apns_id",
]

log = Logger(namespace="txapns.http2")


#: The old form of ``token``: ``(signing key, key id, team id)``; deprecated for
#: :class:`~txapns.core.jwt.ProviderToken`.
TokenAuth = tuple[ec.EllipticCurvePrivateKey, str, str]


def _provider_token(token: ProviderToken | TokenAuth | None) -> ProviderToken | None:
    if token is None or isinstance(token, ProviderToken):
        return token
    warnings.warn(
        "HTTP2Client(token=(key, key_id, team_id)) is deprecated: pass "
        "txapns.credentials.ProviderToken(key, key_id, team_id)",
        DeprecationWarning,
        stacklevel=3,
    )
    key, key_id, team_id = token
    return ProviderToken(key, key_id, team_id)


_ACCEPTED = Outcome.ACCEPTED
_REJECTED = Outcome.REJECTED
_UNKNOWN = Outcome.UNKNOWN
_OPEN = BreakerState.OPEN
#: Float slack when comparing a deadline with the clock.
_EPSILON = 1e-6

_HANDSHAKE = ConnectionState.HANDSHAKE
_READY = ConnectionState.READY


@dataclass(frozen=True, slots=True)
class Response:
    """APNs' answer to a request sent with :meth:`HTTP2Client.request`."""

    status: int
    #: Response header fields, lower-case names, as received.
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: The id the request was sent with (``apns-request-id``).
    request_id: str

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), as text, or ``None``."""
        key = name.encode("ascii")
        for field_name, value in self.headers:
            if field_name == key:
                return value.decode("utf-8", "replace")
        return None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def reason(self) -> str | None:
        """Apple's ``reason`` from an error body ``{"reason": …}``, if any."""
        return parse_response(self.status, (), self.body).reason


#: The ``Result.notification`` of requests sent with :meth:`HTTP2Client.request` (their
#: results never reach the caller: they are turned into a :class:`Response`).
_NO_NOTIFICATION = Notification(b"", b"")


#: Request headers that :meth:`HTTP2Client.request` sets itself.
_RESERVED_HEADERS = frozenset({b"authorization", b"apns-request-id"})


class _RequestWaiter:
    """The result handle of a request: turns its :class:`Result` into a :class:`Response`
    (an answer) or a :class:`~txapns.core.errors.RequestError` (no answer)."""

    __slots__ = ("deferred", "item")

    def __init__(self, deferred: Deferred[Response]) -> None:
        self.deferred = deferred
        self.item: _Item | None = None

    def __call__(self, result: Result) -> None:
        item = self.item
        assert item is not None and item.request is not None
        event = item.response
        # A status means the last attempt was answered (a final retried answer included).
        if result.status is not None and event is not None:
            self.deferred.callback(
                Response(event.status, tuple(event.headers), event.body, item.apns_id)
            )
            return
        request = item.request
        why = ": ".join(part for part in (result.local, result.reason) if part)
        self.deferred.errback(
            RequestError(
                f"{request.method.decode()} {request.path.decode('utf-8', 'replace')}: "
                f"not answered ({why or 'no answer'})",
                reason=result.reason,
                local=result.local,
                unknown=result.outcome is _UNKNOWN,
            )
        )


class HTTP2Client(Phased):
    """Send notifications over Apple's HTTP/2 provider API, on a pool of connections.

    :param clock: the reactor (``IReactorTime``; the time also dates provider tokens, so it
        must be UNIX time in production).
    :param endpoint: where to connect; called once per connection. Use TLS with ALPN ``h2``
        (see :mod:`txapns.endpoints` and :func:`txapns.credentials.client_tls_options`): the client
        checks the negotiated protocol. Plain TCP endpoints (HTTP/2 with prior knowledge)
        work for tests.
    :param authority: the ``:authority`` of requests (the APNs host name).
    :param bundle_id: the app's bundle id: the default topic, with the push type's suffix.
    :param token: a :class:`~txapns.credentials.ProviderToken` for token auth (the old
        ``(signing key, key id, team id)`` tuple still works, with a DeprecationWarning);
        ``None`` for certificate
        auth (the certificate is in the endpoint's TLS options).
    :param min_connections: connections kept open (and pinged when idle).
    :param max_connections: the pool opens more connections, up to this, when all are full.
    :param deadline: seconds a request may stay unanswered; then RST_STREAM(CANCEL) and the
        outcome is unknown (``"timeout"``).
    :param max_queue_time: seconds from ``send`` by which a notification must have been
        written (the ``deadline`` only starts then); past it, it is finished rejected with
        ``local="unreachable"`` (no connection could be made; the reason gives the failed
        attempts and the last error) or ``"queue-time"`` (connected, not reached), unknown if
        an earlier attempt may have delivered it. ``None``: no limit.
    :param ping_interval: a connection that received nothing for this long is PINGed.
    :param ping_timeout: an unanswered PING replaces the connection after this long.
    :param max_queue: notifications held at most (queued, delayed and in flight).
    :param policy: the retry policy (:class:`~txapns.core.http2_policy.RetryPolicy`).
    :param circuit_reset: seconds the circuit stays open after a credential failure before
        one notification is let through as a probe.
    :param backoff: delays between failed connection attempts.
    :param max_tls_failures: TLS failures in a row after which what is queued is rejected
        (``local="tls"``).
    :param max_silent_timeouts: request deadlines passed in a row, with nothing answered on
        that connection after them, that replace the connection.
    :param max_replays: re-sends of a never-processed request (GOAWAY, REFUSED_STREAM) after
        which it is rejected (``local="attempts"``).
    :param close_timeout: seconds ``stop`` waits for connections to close before aborting them.
    :param idle_timeout: a connection above ``min_connections`` that carried no request for
        this long is closed (GOAWAY NO_ERROR), so the pool shrinks back after a burst; one
        with requests in flight is never closed for idleness. ``None``: never.
    :param connect_timeout: seconds a TLS handshake may take.
    :param rng: randomness for jitter and token refresh ages.
    :param hold_when_unavailable: when APNs refuses the credential (circuit open) or TLS
        fails ``max_tls_failures`` times in a row, keep what is queued (and the notification
        whose answer opened the circuit) instead of rejecting it, take new notifications
        while the circuit is open, and keep probing (after ``circuit_reset``) or reconnecting
        (with backoff); :attr:`unavailable` says why nothing is sent meanwhile. For callers
        that keep their own durable queue and report the pause themselves (the service);
        the default rejects, so that a plain caller learns of the failure at once.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        *,
        authority: str = APNS_HOSTS["http2", "production"][0],
        bundle_id: str | None = None,
        token: ProviderToken | TokenAuth | None = None,
        min_connections: int = 1,
        max_connections: int = 4,
        deadline: float = 30.0,
        max_queue_time: float | None = DEFAULT_MAX_QUEUE_TIME,
        ping_interval: float = 60.0,
        ping_timeout: float = 10.0,
        max_queue: int = 100_000,
        policy: RetryPolicy | None = None,
        circuit_reset: float = 300.0,
        backoff: Backoff | None = None,
        max_tls_failures: int = 3,
        max_silent_timeouts: int = 3,
        max_replays: int = 10,
        close_timeout: float = 5.0,
        idle_timeout: float | None = 300.0,
        connect_timeout: float = 30.0,
        rng: random.Random | None = None,
        name: str = "http2",
        hold_when_unavailable: bool = False,
    ) -> None:
        if not 0 <= min_connections <= max_connections or max_connections < 1:
            raise ValueError("need 0 <= min_connections <= max_connections, max_connections >= 1")
        if deadline <= 0 or ping_timeout <= 0 or max_queue < 1 or circuit_reset <= 0:
            raise ValueError("deadline, ping_timeout, circuit_reset and max_queue must be positive")
        self.clock = clock
        self.endpoint = endpoint
        self.authority = authority
        self.bundle_id = bundle_id
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.deadline = deadline
        self.queue_time = None if max_queue_time is None else QueueTimeLimit(max_queue_time)
        self.connect_failures = ConnectFailures()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_queue = max_queue
        self.policy = policy or RetryPolicy()
        self.circuit_reset = circuit_reset
        self.backoff = backoff or Backoff()
        self.max_tls_failures = max_tls_failures
        self.max_silent_timeouts = max_silent_timeouts
        self.max_replays = max_replays
        self.close_timeout = close_timeout
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive (or None)")
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.rng = rng or random.Random()
        self.name = name
        self.hold_when_unavailable = hold_when_unavailable
        self._tls_gave_up_why: str | None = None
        self.counters = Counters()
        # Checked now (ids, key type), not on the first connection.
        self._token = _provider_token(token)
        self.token_auth = token is not None
        self._settings = ConnectionSettings(
            name=name,
            authority=authority,
            deadline=deadline,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            connect_timeout=connect_timeout,
            max_silent_timeouts=max_silent_timeouts,
        )
        self._events = _ConnectionEvents(self)
        self._factory = ConnectionFactory(self._build_protocol)

        self._queue: deque[_Item] = deque()
        self._held: list[_Item] = []
        self._delayed: list[tuple[float, int, _Item]] = []
        self._delay_seq = 0
        self._pending = 0
        self._topics: dict[PushType | None, str | None] = {}

        self.connections: list[APNsHTTP2Protocol] = []
        self._numbers = 0
        self._connecting: set[Deferred[Any]] = set()
        self._failures = 0
        self._tls_failures = 0
        self._reach = Reach.KEEP
        self._retry = Retry.WAIT
        self._replaced = 0

        self._breaker = CircuitBreaker(circuit_reset)
        self._probe: _Item | None = None

        self._feeders: list[_BulkFeeder] = []
        self.started = False
        self.phase = Phase.OPEN
        self._stop_waiters: list[Deferred[None]] = []

        self._timers = timers = Timers(clock)
        #: The turn's dispatch and write (``callLater(0)``).
        self._flush_timer = timers.timer(self._flush)
        #: The next connection attempt after a failed one (backoff).
        self._retry_timer = timers.timer(self._retry_fired)
        #: The first due of the delayed (retry-after) items.
        self._delay_timer = timers.timer(self._delay_fired)
        #: The circuit breaker's reset (open → half-open).
        self._breaker_timer = timers.timer(self._half_open)
        #: ``stop``'s timeout.
        self._drain_timer = timers.timer(self._give_up_draining)
        #: Connections still open ``close_timeout`` after the stop are aborted.
        self._abort_timer = timers.timer(self._abort_stragglers)
        #: The oldest unwritten notification's ``max_queue_time``.
        self._queue_time_timer = timers.timer(self._queue_time_check)
        #: The next look for connections above ``min_connections`` idle for ``idle_timeout``.
        self._idle_timer = timers.timer(self._close_idle)

    # --- public ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open ``min_connections`` connections."""
        if self.started or self.closing:
            return
        self.started = True
        self._maintain()

    def send(self, notification: Notification) -> Deferred[Result]:
        """Queue one notification (or a :class:`~txapns.core.broadcast.Broadcast`, see
        :meth:`broadcast`); the Deferred fires once with its :class:`Result`.

        Raises (nothing queued) a :class:`~txapns.core.errors.ValidationError`,
        :class:`QueueFullError`, :class:`ClientStoppedError` or :class:`CircuitOpenError`.
        """
        d: Deferred[Result] = Deferred()
        self._admit(notification, d)
        return d

    def send_to(self, notification: Notification, on_result: Callable[[Result], object]) -> None:
        """Like :meth:`send` (same errors), but the result goes to ``on_result`` instead of
        a Deferred; an exception it raises is logged, not propagated."""
        self._admit(notification, on_result)

    def send_checked(self, checked: CheckedHTTP2, on_result: Callable[[Result], object]) -> None:
        """Like :meth:`send_to` for a notification validated for this client's rules
        (:class:`~txapns.core.notification.CheckedHTTP2`): not validated again."""
        n = checked.notification
        ok = checked.token_auth == self.token_auth and n.topic is not None
        self._admit(n, on_result, checked=ok)

    def withdraw(self, notification: Notification) -> bool:
        """Take back a notification given to :meth:`send` or :meth:`send_to` that is not on
        the wire: still queued, or waiting for a retry after APNs said it was not processed.
        Its result, rejected with ``local="withdrawn"``, is delivered at once; returns True.

        Returns False, and the result comes as usual, when it is too late (in flight, or an
        earlier attempt's outcome was unknown, so it may have been delivered), or when the
        client does not hold it (finished already, or never given)."""
        item: _Item | None = None
        for holder in (self._queue, self._held):
            for candidate in holder:
                if candidate.notification is notification:
                    if candidate.maybe_delivered:
                        return False
                    holder.remove(candidate)
                    item = candidate
                    break
            if item is not None:
                break
        else:
            for i, entry in enumerate(self._delayed):
                if entry[2].notification is notification:
                    if entry[2].maybe_delivered:
                        return False
                    item = entry[2]
                    del self._delayed[i]
                    heapq.heapify(self._delayed)
                    self._arm_delay()
                    break
        if item is None:
            return False
        result = self._result(
            item, _REJECTED, self.clock.seconds(), reason="withdrawn", local="withdrawn"
        )
        self._finish(item, result)
        self._after_results()
        return True

    def broadcast(
        self,
        channel_id: str,
        payload: Mapping[str, Any] | bytes | str,
        *,
        priority: int | None = 10,
        expiration: int | None = 0,
        apns_id: str | uuid.UUID | None = None,
    ) -> Deferred[Result]:
        """Send a Live Activity update to every subscriber of a broadcast channel (iOS 18).

        ``POST /4/broadcasts/apps/<bundle_id>`` with ``apns-channel-id``,
        ``apns-push-type: liveactivity``, ``apns-priority``, ``apns-expiration`` (0 by
        default: the only value a channel without message storage accepts) and ``apns-id``.
        The same as ``send(Broadcast.for_channel(…))``: the same queue, deadlines, retry
        policy, circuit breaker and counters as notifications, one
        :class:`~txapns.core.result.Result` whose ``notification`` is the
        :class:`~txapns.core.broadcast.Broadcast`.

        Raises (nothing queued) a :class:`~txapns.core.errors.ValidationError` (channel id not
        canonical base64, payload over 4096 bytes or without ``aps.timestamp`` and
        ``aps.event``, priority not 10, 5 or 1, no ``bundle_id`` on the client), or what
        :meth:`send` raises.
        """
        return self.send(
            Broadcast.for_channel(
                channel_id, payload, priority=priority, expiration=expiration, apns_id=apns_id
            )
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        idempotent: bool | None = None,
    ) -> Deferred[Response]:
        """Send another request on this pool (the broadcast channel-management API: see
        :class:`txapns.broadcast.ChannelManager`); ``apns-request-id`` and, with token auth,
        ``authorization`` are added.

        A request shares everything with notifications: ``max_queue``, the provider token,
        the deadline, the retry policy (429 and 5xx re-sent; the 403 credential reasons open
        the circuit breaker) and the counters (it counts as submitted, then accepted for a
        2xx, rejected or unknown). The Deferred fires with the :class:`Response` to the last
        attempt, whatever its status; it fails with
        :class:`~txapns.core.errors.RequestError` when no answer came (deadline, lost
        connection, circuit open, client stopped; ``unknown`` is true when the request may
        have taken effect). An unknown outcome is re-sent (as ``policy.unknown_policy``
        says) only when ``idempotent``, which defaults to true for GET, HEAD, PUT and DELETE.

        Raises (nothing queued) :class:`~txapns.core.errors.InvalidFieldError` for a bad
        method, path or header, or what :meth:`send` raises.
        """
        raw_method = method.encode("ascii", "replace")
        if not raw_method.isalpha() or not raw_method.isupper():
            raise InvalidFieldError(f"invalid method {method!r}")
        raw_path = path.encode("utf-8")
        if not raw_path.startswith(b"/"):
            raise InvalidFieldError(f"invalid :path {path!r}")
        check_field(b":path", raw_path)
        fields: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
            if raw_name[:1] == b":" or raw_name in _RESERVED_HEADERS:
                raise InvalidFieldError(f"header {name!r} is set by the client")
            check_field(raw_name, raw_value)
            fields.append((raw_name, raw_value))
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        spec = _Request(
            raw_method, raw_path, tuple(fields), bytes(body), b"apns-request-id", idempotent
        )
        d: Deferred[Response] = Deferred()
        waiter = _RequestWaiter(d)
        waiter.item = self._admit(_NO_NOTIFICATION, waiter, spec)
        return d

    def _broadcast_request(self, b: Broadcast) -> _Request:
        fields = [
            (b"apns-push-type", b"liveactivity"),
            (b"apns-channel-id", b.channel_id.encode("ascii")),
        ]
        if b.priority is not None:
            fields.append((b"apns-priority", b"%d" % b.priority))
        if b.expiry is not None:
            fields.append((b"apns-expiration", b"%d" % b.expiry))
        path = broadcast_path(validate_bundle_id(self.bundle_id))
        return _Request(b"POST", path, tuple(fields), b.payload, b"apns-id", True)

    def send_many(
        self,
        notifications: Iterable[Notification],
        on_result: ResultCallback | None = None,
    ) -> Deferred[Counters]:
        """Stream an iterable through the client without holding all of it.

        Notifications are pulled only while the client holds fewer than ``max_queue``; each
        result goes to ``on_result`` as it comes (no Deferred per notification). Fires with
        this run's counters once every pulled notification has its result. A notification
        that cannot be taken is finished at once as rejected: ``local="invalid"`` (fails
        validation), ``"stopped"`` or ``"circuit-open"``.
        """
        feeder = _BulkFeeder(self, iter(notifications), on_result)
        self._feeders.append(feeder)
        feeder.pump()
        return feeder.done

    sendMany = send_many

    def pending(self) -> int:
        """Notifications held: queued, waiting to be retried, or in flight."""
        return self._pending

    def stop(self, timeout: float = 10.0) -> Deferred[None]:
        """Stop taking notifications; wait up to ``timeout`` seconds for what is held to
        finish, then finish the rest (rejected ``local="stopped"`` if never sent or certainly
        not processed, unknown ``"stopped"`` if in flight), close every connection and cancel
        every timer. Fires once every connection is closed."""
        if self.phase is Phase.OPEN:
            self.phase = Phase.DRAINING
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if self.closing:
            self._check_closed()
            return d
        if self._pending == 0:
            self._close_all()
        elif not self._drain_timer.armed:
            self._drain_timer.start(timeout)
            self._schedule_flush()
        return d

    def health(self) -> dict[str, object]:
        """Connections, streams and breaker state, for ``/healthz``."""
        return {
            "protocol": "http2",
            "connections": sum(1 for c in self.connections if c.state == _READY),
            "connections_total": len(self.connections),
            "connecting": len(self._connecting),
            "open_streams": sum(len(c.streams) for c in self.connections),
            "queued": len(self._queue) + len(self._held),
            "delayed": len(self._delayed),
            "pending": self._pending,
            "breaker": self.breaker,
            "breaker_reason": self.breaker_reason,
            "unavailable": self.unavailable,
            "per_connection": [c.info() for c in self.connections],
        }

    @property
    def breaker(self) -> BreakerState:
        """The circuit breaker's state (a :class:`str`: ``"closed"``, ``"open"``,
        ``"half-open"``)."""
        return self._breaker.state

    @property
    def breaker_reason(self) -> str | None:
        """Why the circuit breaker opened (Apple's reason), while it is not closed."""
        return self._breaker.reason

    @property
    def breaker_status(self) -> int | None:
        return self._breaker.status

    @property
    def unavailable(self) -> str | None:
        """Why nothing can be sent now (circuit open, TLS failing), or ``None``."""
        if self._breaker.state is _OPEN:
            return f"APNs refused the credential ({self.breaker_reason}); circuit open"
        if self._reach is Reach.GAVE_UP:
            return self._tls_gave_up_why
        return None

    # --- admission ------------------------------------------------------------------------

    def _topic_for(self, push_type: PushType | None) -> str | None:
        try:
            return self._topics[push_type]
        except KeyError:
            bundle = self.bundle_id
            topic = None
            if bundle is not None:
                topic = bundle if push_type is None else push_type.topic_for(bundle)
            self._topics[push_type] = topic
            return topic

    def _admit(
        self, n: Notification, handle: Any, request: _Request | None = None, checked: bool = False
    ) -> _Item:
        if not self.accepting:
            raise ClientStoppedError("the client is stopping; it takes no new notifications")
        if self._breaker.state is _OPEN and not self.hold_when_unavailable:
            raise CircuitOpenError(
                f"APNs refused this credential ({self.breaker_reason}); sends fail fast until "
                f"a probe succeeds (every {self.circuit_reset:g} s)"
            )
        topic = n.topic
        if isinstance(n, Broadcast):
            request = self._broadcast_request(n)  # the broadcast was validated when built
        elif request is not None or checked:
            pass  # checked by request(), or by the caller of send_checked()
        elif topic is None:
            topic = self._topic_for(n.push_type)
            if topic is not None and self.token_auth:
                # Validated as it will be sent (token auth needs a topic). Built directly:
                # dataclasses.replace costs twice as much on this hot path.
                validate_http2(
                    Notification(
                        n.token,
                        n.payload,
                        n.expiry,
                        n.priority,
                        topic,
                        n.push_type,
                        n.collapse_id,
                        n.apns_id,
                    ),
                    token_auth=True,
                )
            else:
                validate_http2(n, token_auth=self.token_auth)
        else:
            validate_http2(n, token_auth=self.token_auth)
        if self._pending >= self.max_queue:
            raise QueueFullError(
                f"the client holds {self._pending} notifications (max_queue); wait for "
                "results or raise max_queue"
            )
        item = _Item(n, handle, topic, n.apns_id or new_apns_id(), self.clock.seconds())
        if request is not None:
            item.request = request
        self._pending += 1
        self.counters.submitted += 1
        self._queue.append(item)
        self._flush_timer.start_unless_armed(0)
        if self.queue_time is not None:
            self._queue_time_timer.start_unless_armed(self.queue_time.limit)
        return item

    # --- the turn: dispatch and write -----------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self.closing:
            self._flush_timer.start_unless_armed(0)

    def _flush(self) -> None:
        if self._queue or self._held:
            self._dispatch()
        for conn in self.connections:
            conn.write_out()
        self._maintain()

    def _dispatch(self) -> None:
        queue = self._queue
        if self._held:
            queue.extendleft(reversed(self._held))
            self._held.clear()
        if self._breaker.state is _OPEN:
            return
        ready = [c for c in self.connections if c.state == _READY]
        if not ready:
            return
        now = self.clock.seconds()
        for conn in ready:
            conn.prepare(now)
        if self._breaker.state is BreakerState.HALF_OPEN:
            self._dispatch_probe(ready, now)
            return
        if len(ready) == 1:
            conn = ready[0]
            room = conn.capacity()
            send = conn.send_item
            can_grow = self._can_grow()
            while room > 0 and queue:
                item = queue.popleft()
                avoid = item.avoid
                if avoid is not None:
                    if avoid is conn and can_grow:
                        self._held.append(item)
                        continue
                    item.avoid = None
                sent = send(item, now)
                if sent:
                    room -= 1
                elif sent is None:
                    queue.appendleft(item)
                    break
                else:
                    self._invalid(item, now)
        else:
            self._dispatch_many(ready, now)
        in_flight = 0
        for conn in self.connections:
            in_flight += len(conn.streams)
        self.counters.note_window(in_flight)

    def _dispatch_many(self, ready: list[APNsHTTP2Protocol], now: float) -> None:
        """Least-loaded dispatch over several connections."""
        queue = self._queue
        room = {conn: conn.capacity() for conn in ready}
        open_ = [conn for conn in ready if room[conn] > 0]
        can_grow = None
        while queue and open_:
            item = queue.popleft()
            avoid = item.avoid
            best: APNsHTTP2Protocol | None = None
            best_load = 1 << 62
            for conn in open_:
                if conn is avoid:
                    continue
                load = len(conn.streams)
                if load < best_load:
                    best, best_load = conn, load
            if best is None:  # only the connection to avoid has room
                if can_grow is None:
                    can_grow = self._can_grow()
                if can_grow or any(c is not avoid for c in ready):
                    self._held.append(item)
                    continue
                best = open_[0]
            item.avoid = None
            sent = best.send_item(item, now)
            if sent is None:
                queue.appendleft(item)
                open_.remove(best)
                continue
            if not sent:
                self._invalid(item, now)
                continue
            room[best] -= 1
            if room[best] <= 0:
                open_.remove(best)

    def _dispatch_probe(self, ready: list[APNsHTTP2Protocol], now: float) -> None:
        """Half-open breaker: one notification at a time, until one is answered."""
        probe = self._probe
        queue = self._queue
        if not queue or (probe is not None and queue[0] is not probe):
            return
        for conn in ready:
            if conn.capacity() > 0:
                item = queue.popleft()
                item.avoid = None
                self._probe = item
                sent = conn.send_item(item, now)
                if sent is None:
                    self._probe = None
                    queue.appendleft(item)
                    continue
                if not sent:
                    self._probe = None
                    self._invalid(item, now)
                return

    def _can_grow(self) -> bool:
        """A new connection can be opened now (room in the pool, no failures in a row)."""
        live = sum(1 for c in self.connections if c.state <= _READY) + len(self._connecting)
        return live < self.max_connections and self._failures == 0 and not self.closing

    # --- the pool -------------------------------------------------------------------------

    def _maintain(self) -> None:
        """Open connections when wanted: ``min_connections``; one when there is work and
        none is open; one more when every connection is full (not while one is still
        connecting or ramping); one for notifications that must avoid the only connection."""
        if not self.started or self.closing or self._retry_timer.armed:
            return
        if self._breaker.state is _OPEN:
            return
        live_conns = [c for c in self.connections if c.state <= _READY]
        live = len(live_conns) + len(self._connecting)
        work = bool(self._queue) or bool(self._held)
        want = 0 if self._reach is Reach.GAVE_UP else self.min_connections
        if work and want < 1:
            want = 1
        if live < want:
            need = want - live
        elif live >= self.max_connections or self._connecting or not work:
            return
        elif live_conns and all(
            c.state == _READY and c.ramped and c.answered and c.capacity() == 0 for c in live_conns
        ):
            need = 1  # every connection is full
        elif self._held and all(c.state == _READY for c in live_conns):
            need = 1  # notifications to re-send elsewhere than on the only connection
        else:
            return
        if self._failures and self._retry is Retry.WAIT:
            delay = self.backoff.delay(self._failures, self.rng.random())
            self._retry_timer.start(delay)
            return
        self._retry = Retry.WAIT
        for _ in range(need):
            self._open_connection()

    def _retry_fired(self) -> None:
        self._retry = Retry.DUE
        self._maintain()

    def _open_connection(self) -> None:
        d = self.endpoint.connect(self._factory)
        if d.called:
            # Synchronous endpoints (tests): the protocol is already registered.
            d.addErrback(self._connect_failed)
            return
        self._connecting.add(d)

        def done(result: object) -> object:
            self._connecting.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(self._connect_failed)

    def _connect_failed(self, reason: Failure) -> None:
        if self.closing:
            return  # cancelled by stop()
        self._failures += 1
        self.counters.connection_failures += 1
        self.connect_failures.failed(reason.getErrorMessage())
        tls = is_tls_failure(reason)
        log.warn(
            "{name}: connection attempt failed ({n} in a row): {why}",
            name=self.name,
            n=self._failures,
            why=reason.getErrorMessage(),
        )
        if tls:
            self._tls_failure(reason.getErrorMessage())
        elif reason.check(ProxyAuthenticationError):
            self._proxy_refused(str(reason.value))
        self._maintain()

    def _proxy_refused(self, why: str) -> None:
        """The proxy wants other credentials (407): retrying cannot help, so what is held is
        rejected now (``local="proxy-auth"``) and no connection is attempted until the next
        send, as after ``max_tls_failures`` TLS failures."""
        log.error("{name}: {why}", name=self.name, why=why)
        self._failures = 0
        self._reach = Reach.GAVE_UP
        self._fail_held(why, "proxy-auth", self.clock.seconds())

    def _build_protocol(self) -> APNsHTTP2Protocol:
        self._numbers += 1
        tokens = None
        if self._token is not None:
            tokens = self._token.source(self.rng)
        return APNsHTTP2Protocol(self._events, self.clock, self._settings, self._numbers, tokens)

    def _connection_made(self, conn: APNsHTTP2Protocol) -> None:
        if self.closing:
            self.connections.append(conn)
            conn.abort()
            return
        # A reconnect replaces a connection that went away (lost, retired, GOAWAY): one made
        # while fewer are live than were ever made, beyond those already replaced.
        live = sum(1 for c in self.connections if c.state <= _READY)
        departed = self.counters.connections_made - live
        if departed > self._replaced:
            self._replaced += 1
            self.counters.reconnects += 1
        self.connections.append(conn)
        self.counters.connections_made += 1
        log.debug("{name}: connection {number} made", name=self.name, number=conn.number)

    def _connection_ready(self, conn: APNsHTTP2Protocol) -> None:
        log.info("{name}: connection {number} ready", name=self.name, number=conn.number)
        self._schedule_flush()
        self._arm_idle_check(self.clock.seconds())

    def _arm_idle_check(self, now: float) -> None:
        """While more connections are live than ``min_connections``: look again when the
        first of them may have been idle for ``idle_timeout``."""
        timeout = self.idle_timeout
        if timeout is None or self.closing:
            return
        live = [c for c in self.connections if c.state <= _READY]
        if len(live) <= self.min_connections:
            self._idle_timer.cancel()
            return
        idle = [c.last_stream_at for c in live if c.state is _READY and not c.streams]
        due = min(idle) + timeout if idle else now + timeout
        self._idle_timer.start(max(0.0, due - now))

    def _close_idle(self) -> None:
        """Close connections above ``min_connections`` that carried no request for
        ``idle_timeout`` (the longest idle first); never one with a request in flight."""
        timeout = self.idle_timeout
        if timeout is None or self.closing:
            return
        now = self.clock.seconds()
        live = [c for c in self.connections if c.state <= _READY]
        excess = len(live) - self.min_connections
        idle = sorted(
            (
                c
                for c in live
                if c.state is _READY
                and not c.streams
                and now - c.last_stream_at + _EPSILON >= timeout
            ),
            key=lambda c: c.last_stream_at,
        )
        for conn in idle[: max(0, excess)]:
            log.info(
                "{name}: connection {number} idle for {idle:.0f} s above min_connections "
                "({min}); closing it",
                name=self.name,
                number=conn.number,
                idle=now - conn.last_stream_at,
                min=self.min_connections,
            )
            conn.retire("idle", deliberate=True)
        self._arm_idle_check(now)

    def _connection_proven(self, conn: APNsHTTP2Protocol) -> None:
        """The connection answered a request or a PING: connecting works again."""
        self._failures = 0
        self.connect_failures.succeeded()
        self._tls_failures = 0
        self._reach = Reach.KEEP
        self._tls_gave_up_why = None
        self._retry = Retry.WAIT

    def _connection_lost(
        self,
        conn: APNsHTTP2Protocol,
        reason: Failure,
        items: list[_Item],
        previous_state: ConnectionState,
    ) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        if self.closing:
            now = self.clock.seconds()
            for item in items:  # normally none: stop() finished everything first
                self._finish(item, self._result(item, _UNKNOWN, now, reason=UNKNOWN_STOPPED))
            self._after_results()
            self._check_closed()
            return
        tls = conn.alpn_failed or is_tls_failure(reason)
        why = reason.getErrorMessage()
        if tls or (not conn.worked and not conn.deliberate):
            self.connect_failures.failed("ALPN did not select h2" if conn.alpn_failed else why)
        if tls:
            self._failures += 1
            self.counters.connection_failures += 1
            log.error(
                "{name}: connection {number}: TLS failure: {why}",
                name=self.name,
                number=conn.number,
                why="ALPN did not select h2" if conn.alpn_failed else why,
            )
            self._tls_failure("ALPN did not select h2" if conn.alpn_failed else why)
        elif not conn.worked and not conn.deliberate:
            # Lost (or given up, or sent away) before it answered anything: a failed attempt,
            # so the next one waits (backoff) instead of looping.
            self._failures += 1
            self.counters.connection_failures += 1
            log.warn(
                "{name}: connection {number} lost before any answer ({n} in a row): {why}",
                name=self.name,
                number=conn.number,
                n=self._failures,
                why=why,
            )
        elif items or previous_state <= _READY:
            log.info(
                "{name}: connection {number} lost with {n} requests in flight: {why}",
                name=self.name,
                number=conn.number,
                n=len(items),
                why=why,
            )
        if items:
            self._streams_unknown(items, UNKNOWN_CONNECTION_LOST)
        self._after_results()
        self._schedule_flush()

    def _tls_failure(self, why: str) -> None:
        self._tls_failures += 1
        if self._tls_failures < self.max_tls_failures:
            return
        error = TLSFailureError(f"{why}; gave up after {self._tls_failures} attempts in a row")
        log.error("{name}: {error}", name=self.name, error=str(error))
        self._tls_failures = 0
        self._reach = Reach.GAVE_UP
        self._tls_gave_up_why = str(error)
        if self.hold_when_unavailable:
            return  # keep the queue; reconnect with a growing backoff
        self._failures = 0
        self._fail_held(str(error), "tls", self.clock.seconds())

    # --- answers --------------------------------------------------------------------------

    def _finish_accepted(self, item: _Item, apns_id: str, unique: str | None, now: float) -> None:
        """Status 200 (the hot path: one per notification)."""
        self._finish(
            item,
            Result.accepted_for(
                item.notification,
                item.writes,
                now - item.submitted_at,
                item.duplicate,
                status=200,
                apns_id=apns_id,
                apns_unique_id=unique,
            ),
        )

    def _finish(self, item: _Item, result: Result) -> None:
        """The one way a notification ends: counted, the probe (if it was one) settled, the
        result delivered to its handle."""
        self._pending -= 1
        self.counters.record(result)
        if item is self._probe:
            if result.outcome is _ACCEPTED:
                self._probe_answered(True)
            else:
                self._probe = None
        deliver(item.handle, result, self.name)

    def _on_error_response(
        self, conn: APNsHTTP2Protocol, item: _Item, event: ResponseReceived, now: float
    ) -> None:
        if item.request is not None:
            item.response = event
        response = parse_response(event.status, event.headers, event.body)
        status, reason = response.status, response.reason
        decision = self.policy.decide_response(status, reason, item.failures, self.rng.random())
        if decision.refresh_token:
            conn.token_expired(event, now)
        if decision.new_connection:
            conn.retire(reason or str(status))
        if decision.retry:
            item.failures += 1
            self.counters.retried += 1
            item.avoid = conn if (decision.other_connection or decision.new_connection) else None
            self._requeue(item, decision.delay, now)
            return
        apns_id = response.apns_id or item.apns_id
        latency = now - item.submitted_at
        if decision.outcome is _ACCEPTED:  # another 2xx (a channel created)
            result = Result.accepted_for(
                item.notification,
                item.writes,
                latency,
                item.duplicate,
                status=status,
                apns_id=apns_id,
                apns_unique_id=response.apns_unique_id,
            )
        else:
            result = Result.rejected_for(
                item.notification,
                reason,
                status=status,
                local=decision.local,
                apns_id=apns_id,
                apns_unique_id=response.apns_unique_id,
                timestamp=response.timestamp,
                attempts=item.writes,
                latency=latency,
                may_duplicate=item.duplicate,
            )
        probe = item is self._probe
        if decision.open_circuit and self.hold_when_unavailable:
            # The credential's fault, not the notification's: keep it for the next probe.
            self._open_circuit(status, reason or str(status), now)
            self._queue.appendleft(item)
            return
        self._finish(item, result)
        if decision.open_circuit:
            self._open_circuit(status, reason or str(status), now)
        elif probe:
            self._probe_answered(True)

    def _credential_refused(self, reason: str, now: float) -> None:
        """A GOAWAY blamed the credential."""
        self._open_circuit(None, reason, now)

    def _replay(self, items: list[_Item]) -> None:
        """Re-send requests APNs never processed (above a GOAWAY's last-stream-id, or
        REFUSED_STREAM), at the front of the queue, in their order. They do not count as
        failed attempts, but a notification refused ``max_replays`` times is rejected
        (``local="attempts"``) rather than cycling forever."""
        now = self.clock.seconds()
        replay: list[_Item] = []
        for item in items:
            item.replays += 1
            if item.replays > self.max_replays:
                reason = f"never processed by APNs in {item.replays} attempts"
                result = self._result(item, _REJECTED, now, reason=reason, local="attempts")
                self._finish(item, result)
            else:
                replay.append(item)
        if not replay:
            return
        self.counters.replayed += len(replay)
        if self._breaker.state is _OPEN and not self.hold_when_unavailable:
            for item in replay:
                self._finish_circuit_open(item, now)
            return
        self._queue.extendleft(reversed(replay))
        self._schedule_flush()

    def _streams_unknown(self, items: list[_Item], why: str) -> None:
        """Their outcome is unknown: re-send (same apns-id) or finish, per the policy."""
        decide = self.policy.decide_unknown
        now = self.clock.seconds()
        resend: list[_Item] = []
        for item in items:
            item.failures += 1
            item.maybe_delivered = True
            request = item.request
            if (
                decide(item.failures).retry
                and (self._breaker.state is not _OPEN or self.hold_when_unavailable)
                and (request is None or request.resend_unknown)
            ):
                resend.append(item)
            else:
                self._finish(item, self._result(item, _UNKNOWN, now, reason=why))
        if resend:
            self.counters.resent_unknown += len(resend)
            self._queue.extendleft(reversed(resend))
            self._schedule_flush()

    def _timed_out(self, items: list[_Item], now: float) -> None:
        for item in items:
            item.maybe_delivered = True
            self._finish(item, self._result(item, _UNKNOWN, now, reason=UNKNOWN_TIMEOUT))

    def _invalid(self, item: _Item, now: float) -> None:
        reason = (
            "the request headers could not be encoded (topic, apns-id or collapse id is not "
            "UTF-8 text, or has CR, LF, NUL or surrounding whitespace)"
        )
        self._finish(item, self._result(item, _REJECTED, now, reason=reason, local="invalid"))

    @staticmethod
    def _result(
        item: _Item,
        outcome: Outcome,
        now: float,
        *,
        status: int | None = None,
        reason: str | None = None,
        local: str | None = None,
    ) -> Result:
        """A result the client decides itself: rejected, or unknown (``reason`` says why)."""
        make = Result.unknown_for if outcome is _UNKNOWN else Result.rejected_for
        return make(
            item.notification,
            reason,
            status=status,
            local=local,
            apns_id=item.apns_id,
            attempts=item.writes,
            latency=now - item.submitted_at,
            may_duplicate=item.duplicate,
        )

    def _requeue(self, item: _Item, delay: float, now: float, *, front: bool = True) -> None:
        """Back into the queue (at the front: it is older than what is queued), or into the
        delayed set."""
        if self._breaker.state is _OPEN and not self.hold_when_unavailable:
            self._finish_circuit_open(item, now)
            return
        if delay > 0:
            self._delay_seq += 1
            due = now + delay
            heapq.heappush(self._delayed, (due, self._delay_seq, item))
            if self._delayed[0][2] is item:
                self._arm_delay()
            return
        if front:
            self._queue.appendleft(item)
        else:
            self._queue.append(item)
        self._schedule_flush()

    def _arm_delay(self) -> None:
        self._delay_timer.cancel()
        if self._delayed and not self.closing:
            due = self._delayed[0][0]
            self._delay_timer.start(max(0.0, due - self.clock.seconds()))

    def _delay_fired(self) -> None:
        now = self.clock.seconds() + _EPSILON
        ready: list[_Item] = []
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            ready.append(heapq.heappop(delayed)[2])
        if ready:
            # Older than what is queued: to the front, in due order.
            self._queue.extendleft(reversed(ready))
            self._schedule_flush()
        self._arm_delay()

    # --- queue time -----------------------------------------------------------------------

    def _queue_time_check(self) -> None:
        """Finish what waited ``max_queue_time`` without being written (in flight is left to
        its deadline); check again when the oldest of the rest is due."""
        limit = self.queue_time
        if limit is None or self.closing:
            return
        now = self.clock.seconds()
        expired, queue = limit.split(self._queue, now)
        held_expired, held = limit.split(self._held, now)
        delayed_expired, delayed = limit.split(self._delayed_items(), now)
        expired += held_expired + delayed_expired
        if expired:
            self._queue = deque(queue)
            self._held = held
            keep = set(delayed)
            self._delayed = [entry for entry in self._delayed if entry[2] in keep]
            heapq.heapify(self._delayed)
            self._arm_delay()
            connected = any(c.state == _READY for c in self.connections)
            local, reason = limit.outcome(self.connect_failures, connected)
            log.warn(
                "{name}: {n} notifications not sent within {limit} s ({local}); finishing them",
                name=self.name,
                n=len(expired),
                limit=limit.limit,
                local=local,
            )
            for item in expired:
                outcome = _UNKNOWN if item.maybe_delivered else _REJECTED
                self._finish(item, self._result(item, outcome, now, reason=reason, local=local))
            self._after_results()
        if self._pending and not self.closing:
            waiting = [*self._queue, *self._held, *self._delayed_items()]
            self._queue_time_timer.start(limit.next_check(waiting, now))

    def _delayed_items(self) -> list[_Item]:
        return [entry[2] for entry in self._delayed]

    # --- circuit breaker ------------------------------------------------------------------

    def _open_circuit(self, status: int | None, reason: str, now: float) -> None:
        self._probe = None
        breaker = self._breaker
        if not breaker.open(status, reason, now):
            return
        log.error(
            "{name}: APNs refused the credential ({reason}); circuit open: queued "
            "notifications are {fate} for {reset} s",
            name=self.name,
            reason=reason,
            fate="held" if self.hold_when_unavailable else "rejected and sends fail",
            reset=self.circuit_reset,
        )
        self._breaker_timer.start(self.circuit_reset)
        if not self.hold_when_unavailable:
            self._fail_held(reason, "circuit-open", now)
        # The probe gets a fresh connection (and, with token auth, a fresh token).
        for conn in list(self.connections):
            conn.retire("circuit open", deliberate=True)

    def _half_open(self) -> None:
        breaker = self._breaker
        now = self.clock.seconds()
        if not breaker.half_open(now):
            due = breaker.half_open_at
            if breaker.is_open and due is not None:  # early (a clock that jumped back)
                self._breaker_timer.start(due - now)
            return
        log.info("{name}: circuit half-open: the next notification is a probe", name=self.name)
        self._schedule_flush()

    def _probe_answered(self, ok: bool) -> None:
        self._probe = None
        if ok and self._breaker.probe_answered():
            log.info("{name}: circuit closed: the credential is accepted again", name=self.name)
            self._schedule_flush()

    def _finish_circuit_open(self, item: _Item, now: float) -> None:
        outcome = _UNKNOWN if item.maybe_delivered else _REJECTED
        reason = self._breaker.reason
        self._finish(item, self._result(item, outcome, now, reason=reason, local="circuit-open"))

    def _fail_held(self, reason: str, local: str, now: float) -> None:
        """Finish everything not in flight: queued, held and delayed notifications."""
        items = list(self._held) + list(self._queue) + [entry[2] for entry in sorted(self._delayed)]
        self._held.clear()
        self._queue.clear()
        self._delayed.clear()
        self._arm_delay()
        for item in items:
            outcome = _UNKNOWN if item.maybe_delivered else _REJECTED
            self._finish(item, self._result(item, outcome, now, reason=reason, local=local))

    # --- after results --------------------------------------------------------------------

    def _after_input(self, conn: APNsHTTP2Protocol) -> None:
        self._after_results()
        self._schedule_flush()

    def _after_results(self) -> None:
        if self._feeders and self._pending < self.max_queue:
            for feeder in list(self._feeders):
                feeder.pump()
        if self._pending == 0:
            self._queue_time_timer.cancel()
        if self.phase is Phase.DRAINING and self._pending == 0:
            self._close_all()

    # --- stopping -------------------------------------------------------------------------

    def _give_up_draining(self) -> None:
        if self.closing:
            return
        now = self.clock.seconds()
        log.warn(
            "{name}: stop timeout with {n} notifications pending; finishing them",
            name=self.name,
            n=self._pending,
        )
        self._fail_held("client stopped", "stopped", now)
        for conn in list(self.connections):
            for item in conn.cancel_streams():
                self._finish(item, self._result(item, _UNKNOWN, now, reason=UNKNOWN_STOPPED))
        self._close_all()

    def _close_all(self) -> None:
        if self.closing:
            return
        self.phase = Phase.CLOSED
        self._timers.cancel_all()
        for d in list(self._connecting):
            d.cancel()
        self._connecting.clear()
        for conn in list(self.connections):
            conn.close()
        if self.connections:
            self._abort_timer.start(self.close_timeout)
        self._check_closed()

    def _abort_stragglers(self) -> None:
        for conn in list(self.connections):
            conn.abort_transport()

    def _check_closed(self) -> None:
        if not self.closing or self.connections or self._connecting:
            return
        self._abort_timer.cancel()
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)
        if waiters:
            log.info("{name}: stopped", name=self.name)

    def _feeder_done(self, feeder: _BulkFeeder) -> None:
        if feeder in self._feeders:
            self._feeders.remove(feeder)

    def _structural_pending(self) -> int:
        """:meth:`pending` counted from the structures (tests compare the two)."""
        return (
            len(self._queue)
            + len(self._held)
            + len(self._delayed)
            + sum(len(c.streams) for c in self.connections)
        )


class _ConnectionEvents:
    """The client's side of :class:`~txapns._http2_connection.ConnectionOwner`: each event
    is the client's (private) method itself, so raising one costs no extra call."""

    __slots__ = (
        "connection_lost",
        "connection_made",
        "connection_proven",
        "connection_ready",
        "credential_refused",
        "input_handled",
        "item_accepted",
        "item_answered",
        "items_timed_out",
        "items_unknown",
        "items_unprocessed",
        "wants_flush",
    )

    def __init__(self, client: HTTP2Client) -> None:
        self.connection_made = client._connection_made
        self.connection_ready = client._connection_ready
        self.connection_proven = client._connection_proven
        self.item_accepted = client._finish_accepted
        self.item_answered = client._on_error_response
        self.items_unprocessed = client._replay
        self.items_unknown = client._streams_unknown
        self.items_timed_out = client._timed_out
        self.credential_refused = client._credential_refused
        self.wants_flush = client._schedule_flush
        self.input_handled = client._after_input
        self.connection_lost = client._connection_lost


class _BulkFeeder(BulkFeeder):
    """Pulls from an iterator into the client while it holds fewer than ``max_queue``."""

    client: HTTP2Client

    def _pump(self) -> None:
        client = self.client
        admit = client._admit
        handle = self._result
        source = self.source
        counters = self.counters
        max_queue = client.max_queue
        while client._pending < max_queue:
            n = next(source, None)
            if n is None:
                self.exhausted = True
                return
            try:
                admit(n, handle)
            except ClientStoppedError as e:
                self._local_failure(n, str(e), "stopped")
                continue
            except CircuitOpenError:
                self._local_failure(n, client.breaker_reason or "circuit open", "circuit-open")
                continue
            except QueueFullError:  # pragma: no cover - guarded by the loop condition
                raise
            except Exception as e:
                self._local_failure(n, str(e), "invalid")
                continue
            counters.submitted += 1
            self.outstanding += 1
