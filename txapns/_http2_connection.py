"""One HTTP/2 connection of an :class:`~txapns.http2.HTTP2Client`: :class:`APNsHTTP2Protocol`
and its factory.

The protocol owns its connection's state (:class:`ConnectionState`), the sans-IO
:class:`~txapns.core.http2.H2ClientConnection`, the provider token of the connection, the
cached header templates, the map stream id → item, the deadline timer (one per connection: it
watches the oldest open stream), the TLS handshake limit and the health pings. It decides
nothing about what a result means: it reports to its owner (the client) through the few
events of :class:`ConnectionOwner`, and the owner talks to it through its public methods
(``send_item``, ``retire``, ``close``…), never its attributes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IHandshakeListener, INegotiated, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._timers import Timers
from ._twisted import set_no_delay
from .core.errors import InvalidFieldError
from .core.http2 import (
    ConnectionTerminated,
    ErrorCode,
    GoAwayReceived,
    H2ClientConnection,
    H2UsageError,
    HeaderBlockTemplate,
    PingAcknowledged,
    ResponseReceived,
    StreamReset,
    encode_header_block,
)
from .core.http2_policy import CIRCUIT_REASONS, goaway_reason
from .core.jwt import TOKEN_MAX_AGE, ProviderTokenSource, clock_skew_warning, parse_http_date
from .core.notification import Notification, PushType
from .core.result import (
    UNKNOWN_CONNECTION_LOST,
    UNKNOWN_PROTOCOL_ERROR,
    UNKNOWN_RETIRED,
    UNKNOWN_STREAM_RESET,
)

__all__ = [
    "APNsHTTP2Protocol",
    "ConnectionFactory",
    "ConnectionOwner",
    "ConnectionSettings",
    "ConnectionState",
    "Item",
    "Request",
]

log = Logger(namespace="txapns.http2")

_CANCEL = ErrorCode.CANCEL
_NO_ERROR = ErrorCode.NO_ERROR
_CLOSED = Failure(ConnectionDone())
_PING = struct.Struct(">Q")
#: The last client stream id HTTP/2 allows (2**31 - 1): a connection that used it retires.
_LAST_STREAM_ID = 2**31 - 1
#: Float slack when comparing a deadline with the clock.
_EPSILON = 1e-6


class ConnectionState(enum.IntEnum):
    """A connection's life, in order (an :class:`int`: ``state <= READY`` means live)."""

    #: Transport up, TLS handshake (and the ALPN check) pending.
    HANDSHAKE = 0
    #: Takes new streams.
    READY = 1
    #: No new streams; closed once its streams have finished.
    DRAINING = 2
    #: Transport closing.
    CLOSING = 3
    #: ``connectionLost`` seen.
    CLOSED = 4


_HANDSHAKE = ConnectionState.HANDSHAKE
_READY = ConnectionState.READY
_DRAINING = ConnectionState.DRAINING
_CLOSING = ConnectionState.CLOSING
_CLOSED_STATE = ConnectionState.CLOSED


class Request(NamedTuple):
    """A request other than ``POST /3/device/…``: a broadcast, or a channel-management call.

    The item's ``apns_id`` is sent in ``id_header``; ``headers`` are checked when admitted."""

    method: bytes
    path: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    id_header: bytes
    #: Re-send it when its outcome is unknown (``policy.unknown_policy`` permitting): false for
    #: requests that must not take effect twice (creating a channel).
    resend_unknown: bool


class Item:
    """One notification (or request) held by the client."""

    __slots__ = (
        "apns_id",
        "avoid",
        "duplicate",
        "failures",
        "handle",
        "maybe_delivered",
        "notification",
        "replays",
        "request",
        "response",
        "sent_at",
        "submitted_at",
        "topic",
        "writes",
    )

    def __init__(
        self,
        notification: Notification,
        handle: Any,
        topic: str | None,
        apns_id: str,
        now: float,
    ) -> None:
        self.notification = notification
        self.handle = handle
        self.topic = topic
        self.apns_id = apns_id
        self.submitted_at = now
        self.sent_at = 0.0
        #: Times written to a connection (``Result.attempts``).
        self.writes = 0
        #: Failed attempts: retryable answers and unknown outcomes (for ``max_attempts``).
        self.failures = 0
        #: Re-sends of requests APNs never processed (GOAWAY, REFUSED_STREAM).
        self.replays = 0
        #: A connection to avoid for the next attempt (after 500/503), if any.
        self.avoid: APNsHTTP2Protocol | None = None
        #: It was in flight when its outcome became unknown: it may have been delivered.
        self.maybe_delivered = False
        #: Written again after that: APNs may deliver it twice (``Result.may_duplicate``).
        self.duplicate = False
        #: Not a device notification: how to send it.
        self.request: Request | None = None
        #: For a request: the last answer received.
        self.response: ResponseReceived | None = None


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What every connection of one client is told (the client's options)."""

    name: str
    authority: str
    deadline: float
    ping_interval: float
    ping_timeout: float
    connect_timeout: float
    max_silent_timeouts: int


class ConnectionOwner(Protocol):
    """The events a connection raises to the client that owns it."""

    def connection_made(self, conn: APNsHTTP2Protocol) -> None:
        """The transport is up (the TLS handshake may still be pending)."""

    def connection_ready(self, conn: APNsHTTP2Protocol) -> None:
        """HTTP/2 started: it takes streams (see ``capacity``)."""

    def connection_proven(self, conn: APNsHTTP2Protocol) -> None:
        """The first answer (to a request or a PING): connecting works."""

    def item_accepted(self, item: Item, apns_id: str, unique_id: str | None, now: float) -> None:
        """Status 200."""

    def item_answered(
        self, conn: APNsHTTP2Protocol, item: Item, event: ResponseReceived, now: float
    ) -> None:
        """Any other status: the owner's policy decides."""

    def items_unprocessed(self, items: list[Item]) -> None:
        """APNs never processed them (above a GOAWAY's last-stream-id, REFUSED_STREAM)."""

    def items_unknown(self, items: list[Item], why: str) -> None:
        """In flight when their stream or the connection broke: they may have been delivered."""

    def items_timed_out(self, items: list[Item], now: float) -> None:
        """Their deadline passed; their streams were reset (CANCEL)."""

    def credential_refused(self, reason: str, now: float) -> None:
        """A GOAWAY blamed the credential (one of the circuit breaker's reasons)."""

    def wants_flush(self) -> None:
        """The connection has frames to write (a PING): write them this turn."""

    def input_handled(self, conn: APNsHTTP2Protocol) -> None:
        """Events have been handled (results delivered): the owner may send more."""

    def connection_lost(
        self,
        conn: APNsHTTP2Protocol,
        reason: Failure,
        items: list[Item],
        previous: ConnectionState,
    ) -> None:
        """The transport is gone; ``items`` were still in flight."""


@implementer(IHandshakeListener)
class APNsHTTP2Protocol(TwistedProtocol):
    """One HTTP/2 connection of an :class:`~txapns.http2.HTTP2Client`.

    Owns the :class:`~txapns.core.http2.H2ClientConnection`, the provider token of this
    connection, the cached header templates, the map stream id → notification, the deadline
    timer (one for the connection: it watches the oldest open stream) and the health pings.
    The client decides what to send and what results mean.
    """

    def __init__(
        self,
        owner: ConnectionOwner,
        clock: IReactorTime,
        settings: ConnectionSettings,
        number: int,
        tokens: ProviderTokenSource | None,
    ) -> None:
        self.owner = owner
        self.clock = clock
        self.settings = settings
        self.number = number
        self.h2 = H2ClientConnection()
        self.tokens = tokens
        self.state = _HANDSHAKE
        #: stream id → item, in the order sent (dicts keep insertion order): the first is the
        #: oldest, which is what the deadline timer watches.
        self.streams: dict[int, Item] = {}
        #: With token auth APNs allows one stream until it has seen a valid token.
        self.ramped = tokens is None
        self.answered = 0
        self.last_received = 0.0
        #: When a stream was last opened or finished (the pool's idle timeout starts then).
        self.last_stream_at = 0.0
        #: The highest stream id answered: a stream below it timing out does not mean the
        #: connection is dead.
        self.last_answered = 0
        #: Deadline expiries in a row while nothing was answered after the stream was sent.
        self.silent_timeouts = 0
        self.alpn_failed = False
        self.retire_reason: str | None = None
        #: It answered a request or a PING: connecting works.
        self.worked = False
        #: We closed it on purpose (circuit open, client stopping): not a failed attempt.
        self.deliberate = False
        self._expired_token_seen = False
        self._templates: dict[
            tuple[str | None, PushType | None, int | None], HeaderBlockTemplate
        ] = {}
        self._authorization: str | None = None
        self._generation = 0
        self._token_refresh_at = float("-inf")
        self._timers = timers = Timers(clock)
        self._deadline_timer = timers.timer(self._check_deadlines)
        self._ping_timer = timers.timer(self._ping_check)
        self._ping_timeout_timer = timers.timer(self._ping_expired)
        self._handshake_timer = timers.timer(self._handshake_expired)
        self._ping_opaque: bytes | None = None
        self._pings = 0
        self._write: Callable[[bytes], object] | None = None

    def __repr__(self) -> str:
        return (
            f"<APNsHTTP2Protocol #{self.number} {self.state.name.lower()} "
            f"streams={len(self.streams)}>"
        )

    # --- Twisted ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self._write = transport.write
        set_no_delay(transport)
        self.last_received = self.clock.seconds()
        self.owner.connection_made(self)
        if not INegotiated.providedBy(transport):
            # Plain TCP (HTTP/2 with prior knowledge, tests): nothing to negotiate.
            self._ready()
        elif self.state == _HANDSHAKE:
            self._handshake_timer.start(self.settings.connect_timeout)

    def _handshake_expired(self) -> None:
        if self.state != _HANDSHAKE:
            return
        log.warn(
            "{name}: connection {number}: TLS handshake not done after {timeout} s; dropping it",
            name=self.settings.name,
            number=self.number,
            timeout=self.settings.connect_timeout,
        )
        self.abort()

    def handshakeCompleted(self) -> None:
        if self.state != _HANDSHAKE:
            return
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated != b"h2":
            self.alpn_failed = True
            log.error(
                "{name}: connection {number}: the server did not negotiate HTTP/2 with ALPN "
                "(got {alpn}); closing",
                name=self.settings.name,
                number=self.number,
                alpn=negotiated.decode("ascii", "replace") if negotiated else "none",
            )
            self.abort()
            return
        self._ready()

    def _ready(self) -> None:
        self._handshake_timer.cancel()
        self.state = _READY
        self.h2.initiate()
        self.last_received = self.last_stream_at = self.clock.seconds()
        self._arm_ping_check()
        self.owner.connection_ready(self)

    def dataReceived(self, data: bytes) -> None:
        if self.state >= _CLOSING or self.state == _HANDSHAKE:
            return
        owner = self.owner
        now = self.clock.seconds()
        self.last_received = now
        if self.streams:
            self.last_stream_at = now
        events = self.h2.receive_data(data)
        streams = self.streams
        accepted = owner.item_accepted
        for event in events:
            if isinstance(event, ResponseReceived):
                item = streams.pop(event.stream_id, None)
                if item is None:
                    continue
                if not self.worked:
                    self._proven()
                    self._check_clock(event, now)
                self.answered += 1
                if event.stream_id > self.last_answered:
                    self.last_answered = event.stream_id
                self.silent_timeouts = 0
                status = event.status
                if status == 200:
                    apns_id = unique = None
                    for name, value in event.headers:
                        if name == b"apns-id":
                            apns_id = value.decode("ascii", "replace")
                        elif name == b"apns-unique-id":
                            unique = value.decode("ascii", "replace")
                    if item.request is not None:
                        item.response = event
                    accepted(item, apns_id or item.apns_id, unique, now)
                    if not self.ramped:
                        self._ramp()
                else:
                    if not self.ramped and status != 403:
                        self._ramp()
                    owner.item_answered(self, item, event, now)
            elif isinstance(event, StreamReset):
                item = streams.pop(event.stream_id, None)
                if item is not None:
                    if event.retry_safe:
                        owner.items_unprocessed([item])
                    else:
                        owner.items_unknown([item], UNKNOWN_STREAM_RESET)
            elif isinstance(event, GoAwayReceived):
                self._goaway(event, now)
            elif isinstance(event, PingAcknowledged):
                if event.opaque == self._ping_opaque:
                    self._ping_answered()
                    if not self.worked:
                        self._proven()
            elif isinstance(event, ConnectionTerminated):
                log.warn(
                    "{name}: connection {number}: the server broke HTTP/2 "
                    "({error}: {reason}); closing",
                    name=self.settings.name,
                    number=self.number,
                    error=event.error_name,
                    reason=event.reason,
                )
                self.abort(UNKNOWN_PROTOCOL_ERROR)
            # SettingsChanged: capacity is read from the connection when dispatching.
        self._input_handled()

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        previous = self.state
        self.state = _CLOSED_STATE
        self._timers.cancel_all()
        items = list(self.streams.values())
        self.streams.clear()
        self.owner.connection_lost(self, reason, items, previous)

    def _input_handled(self) -> None:
        self.maybe_close()
        self.owner.input_handled(self)

    # --- what answers say about the connection --------------------------------------------

    def _proven(self) -> None:
        self.worked = True
        self.owner.connection_proven(self)

    def _check_clock(self, event: ResponseReceived, now: float) -> None:
        """Once per connection: warn when the server's ``Date`` says our clock is off (it
        dates the provider tokens)."""
        warning = clock_skew_warning(now, parse_http_date(event.header(b"date")))
        if warning is not None:
            log.warn(
                "{name}: connection {number}: {warning}",
                name=self.settings.name,
                number=self.number,
                warning=warning,
            )

    def _goaway(self, event: GoAwayReceived, now: float) -> None:
        streams = self.streams
        unprocessed = [streams.pop(sid) for sid in event.unprocessed_stream_ids if sid in streams]
        reason = goaway_reason(event.debug_data)
        log.info(
            "{name}: connection {number}: GOAWAY {error} last-stream-id {last} ({reason}); "
            "{n} unprocessed requests re-sent, {open} still open",
            name=self.settings.name,
            number=self.number,
            error=event.error_name,
            last=event.last_stream_id,
            reason=reason or "no reason",
            n=len(unprocessed),
            open=len(streams),
        )
        if self.state == _READY:
            self.state = _DRAINING
            self.retire_reason = f"GOAWAY {reason or event.error_name}"
        if unprocessed:
            self.owner.items_unprocessed(unprocessed)
        if reason in CIRCUIT_REASONS:
            assert reason is not None
            self.owner.credential_refused(reason, now)
        self.maybe_close()

    def token_expired(self, event: ResponseReceived, now: float) -> None:
        """APNs said this connection's provider token expired: say why, once (a wrong local
        clock is the usual cause of an early expiry)."""
        if self._expired_token_seen:
            return
        self._expired_token_seen = True
        tokens = self.tokens
        age = None
        if tokens is not None and tokens.issued_at is not None:
            age = now - tokens.issued_at
        name = self.settings.name
        log.warn(
            "{name}: connection {number}: APNs says the provider token (issued {age} s ago) "
            "expired; re-sending on a new connection with a new token",
            name=name,
            number=self.number,
            age="?" if age is None else f"{age:.0f}",
        )
        warning = clock_skew_warning(now, parse_http_date(event.header(b"date")))
        if warning is None and age is not None and age < TOKEN_MAX_AGE - 300:
            warning = (
                f"a token issued {age:.0f} s ago by the local clock was rejected as expired: "
                "the local clock is probably wrong (behind Apple's); fix it (NTP)"
            )
        if warning is not None:
            log.error("{name}: {warning}", name=name, warning=warning)

    # --- sending --------------------------------------------------------------------------

    def capacity(self) -> int:
        """How many more requests this connection takes now."""
        if self.state != _READY:
            return 0
        available = self.h2.available_streams
        if self.ramped:
            return available
        return 1 if available and not self.streams else 0

    def prepare(self, now: float) -> None:
        """Before sending in this turn: refresh the provider token when it is due."""
        tokens = self.tokens
        if tokens is not None and now >= self._token_refresh_at:
            token = tokens.token(now)
            if tokens.generation != self._generation:
                self._generation = tokens.generation
                self._authorization = "bearer " + token
                self._templates.clear()
            refresh_at = tokens.refresh_at
            self._token_refresh_at = refresh_at if refresh_at is not None else now

    def _template(self, key: tuple[str | None, PushType | None, int | None]) -> HeaderBlockTemplate:
        topic, push_type, priority = key
        template = HeaderBlockTemplate(
            self.settings.authority,
            topic=topic,
            push_type=push_type,
            priority=priority,
            authorization=self._authorization,
        )
        self._templates[key] = template
        return template

    def send_item(self, item: Item, now: float) -> bool | None:
        """Open a stream for ``item``: True. False (nothing sent) if the request cannot be
        encoded: the caller finishes the item. None (nothing sent) if the connection takes no
        more streams after all: the caller puts the item back."""
        n = item.notification
        request = item.request
        try:
            if request is not None:
                block = self._request_block(item.apns_id, request)
                body = request.body
            else:
                key = (item.topic, n.push_type, n.priority)
                template = self._templates.get(key)
                if template is None:
                    template = self._template(key)
                block = template.encode(
                    b"/3/device/" + n.token.hex().encode("ascii"),
                    apns_id=item.apns_id,
                    expiration=n.expiry,
                    collapse_id=n.collapse_id,
                )
                body = n.payload
        except (InvalidFieldError, UnicodeError):
            # Only this item's headers are bad (a notification built without create()'s
            # checks): it alone is finished, the rest of the turn's dispatch goes on.
            return False
        try:
            stream_id = self.h2.send_request(block, body)
        except H2UsageError:
            return None
        self.streams[stream_id] = item
        self.last_stream_at = now
        item.sent_at = now
        item.writes += 1
        if item.maybe_delivered:
            item.duplicate = True
        if stream_id >= _LAST_STREAM_ID:
            self.retire("stream ids exhausted")
        self._deadline_timer.start_unless_armed(self.settings.deadline)
        return True

    def _request_block(self, apns_id: str, request: Request) -> bytes:
        """The header block of a broadcast or management request (stateless HPACK, like the
        templates; these requests are few, so nothing is cached)."""
        fields: list[tuple[bytes, bytes]] = [
            (b":method", request.method),
            (b":scheme", b"https"),
            (b":authority", self.settings.authority.encode("ascii")),
            (b":path", request.path),
            *request.headers,
            (request.id_header, apns_id.encode("ascii")),
        ]
        if self._authorization is not None:
            fields.append((b"authorization", self._authorization.encode("ascii")))
        return encode_header_block(fields)

    def write_out(self) -> None:
        """Write whatever the connection has queued, as one write."""
        if self.state >= _CLOSING or self._write is None:
            return
        data = self.h2.data_to_send()
        if data:
            self._write(data)

    def _ramp(self) -> None:
        self.ramped = True
        log.debug(
            "{name}: connection {number}: provider token accepted",
            name=self.settings.name,
            number=self.number,
        )

    # --- retiring -------------------------------------------------------------------------

    def retire(self, reason: str, *, deliberate: bool = False) -> None:
        """No new streams; close (GOAWAY NO_ERROR) once the open ones have finished.
        ``deliberate``: the client's choice (circuit open), not a failed attempt.

        The GOAWAY waits for the open streams: some servers (``h2`` among them) stop
        answering once they have received a client's GOAWAY."""
        if deliberate:
            self.deliberate = True
        if self.state not in (_READY, _HANDSHAKE):
            return
        self.retire_reason = reason
        if self.state == _HANDSHAKE:
            self.abort()
            return
        self.state = _DRAINING
        log.info(
            "{name}: connection {number}: retired ({reason}); {n} streams still open",
            name=self.settings.name,
            number=self.number,
            reason=reason,
            n=len(self.streams),
        )
        self.maybe_close()

    def maybe_close(self) -> None:
        """Close a draining connection once it has no open stream."""
        if self.state == _DRAINING and not self.streams:
            self.state = _CLOSING
            if not self.h2.is_closing:
                self.h2.close(_NO_ERROR)
            self._write_final()
            self._timers.cancel_all()
            transport = self.transport
            if transport is not None:
                transport.loseConnection()

    def _write_final(self) -> None:
        if self._write is not None:
            data = self.h2.data_to_send()
            if data:
                self._write(data)

    def abort(self, unknown_reason: str = UNKNOWN_CONNECTION_LOST) -> None:
        """Drop the connection now; its open streams get an unknown outcome."""
        if self.state >= _CLOSING:
            return
        handshake = self.state == _HANDSHAKE
        self.state = _CLOSING
        self._timers.cancel_all()
        if handshake:
            pass  # HTTP/2 never started: nothing to say
        elif self.h2.is_dead:
            self._write_final()  # the GOAWAY of a protocol error
        else:
            self.h2.close(_CANCEL)
            self._write_final()
        items = list(self.streams.values())
        self.streams.clear()
        self.abort_transport()
        if items:
            self.owner.items_unknown(items, unknown_reason)

    def abort_transport(self) -> None:
        """Drop the transport at once (``abortConnection`` where there is one)."""
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()

    def close(self) -> None:
        """Close for good (the client stops): GOAWAY, then close the transport. Deliberate:
        not a failed attempt."""
        self.deliberate = True
        if self.state >= _CLOSING:
            return
        if self.state == _HANDSHAKE:
            self.abort()
            return
        self.state = _CLOSING
        self._timers.cancel_all()
        self.h2.close(_NO_ERROR)
        self._write_final()
        transport = self.transport
        if transport is not None:
            transport.loseConnection()

    def cancel_streams(self) -> list[Item]:
        """Reset every open stream (CANCEL) and hand back their items (the client stops)."""
        items = list(self.streams.values())
        for stream_id in list(self.streams):
            self.h2.reset_stream(stream_id, _CANCEL)
        self.streams.clear()
        return items

    # --- deadlines ------------------------------------------------------------------------

    def _check_deadlines(self) -> None:
        if self.state >= _CLOSING:
            return
        deadline = self.settings.deadline
        now = self.clock.seconds()
        limit = now - deadline + _EPSILON
        expired: list[tuple[int, Item]] = []
        next_at: float | None = None
        for stream_id, item in self.streams.items():
            if item.sent_at > limit:
                next_at = item.sent_at + deadline
                break
            expired.append((stream_id, item))
        if next_at is not None:
            self._deadline_timer.start(max(0.0, next_at - now))
        if not expired:
            return
        self.last_stream_at = now
        streams = self.streams
        h2 = self.h2
        silent = 0
        for stream_id, _item in expired:
            del streams[stream_id]
            h2.reset_stream(stream_id, _CANCEL)
            if stream_id > self.last_answered:
                silent += 1
            else:
                self.silent_timeouts = 0
        self.silent_timeouts += silent
        log.warn(
            "{name}: connection {number}: {n} requests passed their {deadline} s deadline; reset",
            name=self.settings.name,
            number=self.number,
            n=len(expired),
            deadline=deadline,
        )
        self.owner.items_timed_out([item for _, item in expired], now)
        if self.silent_timeouts >= self.settings.max_silent_timeouts:
            log.warn(
                "{name}: connection {number}: {n} timeouts in a row with no answer; replacing it",
                name=self.settings.name,
                number=self.number,
                n=self.silent_timeouts,
            )
            self.abort(UNKNOWN_RETIRED)
        elif not self._ping_timeout_timer.armed and self.state == _READY:
            self.send_ping(now)  # is it still alive?
        self._input_handled()

    # --- health pings ---------------------------------------------------------------------

    def _arm_ping_check(self, delay: float | None = None) -> None:
        interval = self.settings.ping_interval
        if interval <= 0:
            return
        self._ping_timer.start(interval if delay is None else delay)

    def _ping_check(self) -> None:
        if self.state >= _CLOSING:
            return
        interval = self.settings.ping_interval
        now = self.clock.seconds()
        idle = now - self.last_received
        if idle + _EPSILON >= interval:
            if not self._ping_timeout_timer.armed:
                self.send_ping(now)
                self.owner.wants_flush()
            self._arm_ping_check()
        else:
            self._arm_ping_check(interval - idle)

    def send_ping(self, now: float) -> None:
        if self.state >= _CLOSING or self.h2.is_dead:
            return
        self._pings += 1
        opaque = _PING.pack(self._pings)
        self._ping_opaque = opaque
        self.h2.ping(opaque)
        self._ping_timeout_timer.start(self.settings.ping_timeout)

    def _ping_answered(self) -> None:
        self._ping_opaque = None
        self._ping_timeout_timer.cancel()

    def _ping_expired(self) -> None:
        if self.state >= _CLOSING:
            return
        log.warn(
            "{name}: connection {number}: no answer to PING within {timeout} s; replacing it",
            name=self.settings.name,
            number=self.number,
            timeout=self.settings.ping_timeout,
        )
        self.abort(UNKNOWN_RETIRED)
        self.owner.input_handled(self)

    def info(self) -> dict[str, object]:
        return {
            "number": self.number,
            "state": self.state.name.lower(),
            "open_streams": len(self.streams),
            "max_streams": self.h2.max_concurrent_streams,
            "ramped": self.ramped,
        }


class ConnectionFactory(Factory):
    """Builds each new connection with ``build`` (the client numbers them and gives each its
    own provider token source)."""

    noisy = False

    def __init__(self, build: Callable[[], APNsHTTP2Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> APNsHTTP2Protocol:
        return self._build()
