"""A fake of Apple's HTTP/2 provider API, for testing APNs clients.

:class:`FakeAPNsServer` speaks HTTP/2 through the ``h2`` package in server mode, so it shares
no code with txapns' own client codec, and checks requests the way APNs does (see
the docs' :ref:`apns-http2`):

* **Token auth**: ``authorization: bearer <JWT>`` is verified for real (ES256 signature with
  the public key registered by :meth:`FakeAPNsServer.add_token_key`, ``iss`` equal to that
  key's team, ``iat`` at most :attr:`~FakeAPNsServer.token_max_age` old by the injected
  clock). Answers ``403 InvalidProviderToken`` / ``ExpiredProviderToken``, and
  ``403 MissingProviderToken`` when a request has neither a token nor a client certificate.
* **Per-connection token rules**: a connection is bound to the key (and so the team) of its
  first valid token; another key gets ``403 UnrelatedKeyIdInToken``. A token with new claims
  sooner than :attr:`~FakeAPNsServer.token_update_interval` (20 min) after the previous one
  was adopted gets ``429 TooManyProviderTokenUpdates``. After an ``ExpiredProviderToken`` the
  connection stays wedged (every later request gets the same answer) while
  :attr:`~FakeAPNsServer.wedge_after_expired` is true, as reported from the field: clients
  must open a new connection.
* **Ramp**: with :attr:`~FakeAPNsServer.ramp` (the default) a token-auth connection
  advertises ``SETTINGS_MAX_CONCURRENT_STREAMS`` 1 until its first authenticated request,
  then :attr:`~FakeAPNsServer.max_streams` (1000), as Apple documents for token auth. A
  connection that presented a client certificate gets ``max_streams`` in the server's first
  SETTINGS (the server's preface waits for the TLS handshake so it knows). A stream over the
  advertised limit is refused with ``RST_STREAM(REFUSED_STREAM)`` (never processed, safe to
  retry; counted in ``stats.streams_refused``); the connection lives on.
* **Client GOAWAY**: ``NO_ERROR`` is a graceful close: the streams already received are
  answered, then the server closes. Any other error code closes at once.
* **Certificate auth**: over TLS, the client certificate's subject UID is its topic, plus the
  topics listed in Apple's topic extension (1.2.840.113635.100.6.3.6) if present; the UID is
  the default topic. A certificate that carries only the other environment's Apple OID gets
  ``403 BadCertificateEnvironment``. Over plain TCP (in-memory tests),
  :attr:`~FakeAPNsServer.plaintext_client_cert` pretends every connection presented that
  certificate.
* **Request checks**, in this order, on ``/3/device/<token>``: method (``405
  MethodNotAllowed``), repeated ``apns-*`` headers (``400 DuplicateHeaders``), ``apns-id``
  (``400 BadMessageId``), authentication (above), device token (``400 MissingDeviceToken`` /
  ``BadDeviceToken``: 64 to 200 hex digits), topic (``400 MissingTopic``; ``BadTopic`` if not
  bundle-id-like; ``TopicDisallowed`` if not one of the certificate's topics or, with token
  auth, of :attr:`~FakeAPNsServer.topics` when set), push type (``400 InvalidPushType``: an
  unknown value, or a topic without the push type's suffix), priority (``400 BadPriority``:
  10, 5 or 1; background needs 5, and no header means 10), ``apns-expiration`` (``400
  BadExpirationDate``),
  ``apns-collapse-id`` over 64 bytes (``400 BadCollapseId``), empty body (``400
  PayloadEmpty``), body over 4096 bytes, 5120 for voip (``413 PayloadTooLarge``), body not a
  JSON object (``400 BadPayload``: the fake's own reason, Apple documents none). Any other
  path is ``404 BadPath``.
* **Responses** carry ``apns-id`` (the request's, or a generated upper-case UUID as Apple
  does) and, with :attr:`~FakeAPNsServer.sandbox`, ``apns-unique-id``. Errors have the body
  ``{"reason": …}`` (plus ``"timestamp"`` in ms for 410 Unregistered).

Every accepted notification is recorded in :attr:`FakeAPNsServer.accepted` as an
:class:`AcceptedNotification`, at the moment the server decides to accept it (so with
:attr:`~FakeAPNsServer.latency` a notification can be accepted although its response never
reaches the client: an *unknown* outcome for the client). Counters are in
:attr:`FakeAPNsServer.stats`.

Scripting (attributes and methods of :class:`FakeAPNsServer`, all changeable while running;
token keys are lower-case hex). Scripted outcomes apply only to requests that passed every
check above, in this order:

* :attr:`~FakeAPNsServer.never_answer_tokens`, :attr:`~FakeAPNsServer.never_answer_prefix`:
  the stream is never answered (tests per-request deadlines).
* :meth:`~FakeAPNsServer.fail_next`: the next *n* requests get *status*/*reason* (e.g. a burst
  of ``503 ServiceUnavailable``).
* :attr:`~FakeAPNsServer.bad_tokens`: ``400 BadDeviceToken``.
* :attr:`~FakeAPNsServer.token_responses`: any ``(status, reason)`` per token (e.g.
  ``(400, "DeviceTokenNotForTopic")``, ``(410, "ExpiredToken")``).
* :attr:`~FakeAPNsServer.unregistered_tokens`: ``410 Unregistered`` with that timestamp (ms).
* :attr:`~FakeAPNsServer.throttled_tokens`: ``429 TooManyRequests``; the value is how many
  more times (``None``: always).
* :attr:`~FakeAPNsServer.goaway_after`: after that many accepted notifications on a
  connection, send GOAWAY (``NO_ERROR``, debug data ``{"reason": "Shutdown"}``) whose
  last-stream-id is the highest stream processed so far (the one that reached the count,
  or a higher one already answered). Streams up to it are still answered; every stream
  above it, even one already received whose request was not complete, is ignored (never
  processed, never answered, counted in ``stats.streams_ignored``); the server closes the
  connection once everything up to last-stream-id is answered. :meth:`~FakeAPNsServer.goaway`
  does the same at once on every connection.
* :attr:`~FakeAPNsServer.latency`: seconds (by the injected clock) before each response.
* :attr:`~FakeAPNsServer.blackhole`: connections read and discard everything, answering
  nothing, not even PING (tests health pings and deadlines). A connection that has seen
  it stays a black hole (its HTTP/2 state is lost); connections made after it is switched
  off are served normally.
* Connection settings: :attr:`~FakeAPNsServer.max_streams` (:meth:`~FakeAPNsServer.
  set_max_streams` also updates live connections), :attr:`~FakeAPNsServer.ramp`,
  :attr:`~FakeAPNsServer.initial_window` (``SETTINGS_INITIAL_WINDOW_SIZE``: the client's
  per-stream send window), :attr:`~FakeAPNsServer.conn_window` (the connection window the
  client gets: above 65,535 a WINDOW_UPDATE at connect, below it the first ``65535 -
  conn_window`` bytes are never credited back). Received DATA is otherwise credited back at
  once, frame by frame.
* :meth:`~FakeAPNsServer.reset` clears records and counters; :meth:`~FakeAPNsServer.
  clear_script` the scripted outcomes.

Broadcast push (kept compact; reasons as we read Apple's documentation): channel management
``POST /1/apps/<bundle>/channels`` (body ``{"message-storage-policy": 0|1, "push-type":
"LiveActivity"}``, answers ``201`` with ``apns-channel-id``), ``GET`` and ``DELETE`` on the
same path with ``apns-channel-id``, ``GET /1/apps/<bundle>/all-channels`` (``{"channels":
[…]}``); sending ``POST /4/broadcasts/apps/<bundle>`` with ``apns-channel-id`` and
``apns-push-type: liveactivity`` (expiration must be 0 on a no-storage channel). Accepted
broadcasts go to :attr:`FakeAPNsServer.broadcasts`. Unknown channels are ``400
BadChannelId``. All hosts are served by one fake.

Serve it with :func:`listen_http2` (TLS with ALPN ``h2`` via
:func:`txapns.testing.pki.server_tls_options`, or plain TCP), or connect
``server.factory().buildProtocol(None)`` in memory with :mod:`twisted.test.iosim`. Nothing
here reads the reactor: the clock is injected.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import random
import re
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hyperframe.frame import GoAwayFrame, HeadersFrame
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IListeningPort,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txapns.core.jwt import (
    EXPIRED_PROVIDER_TOKEN,
    INVALID_PROVIDER_TOKEN,
    MISSING_PROVIDER_TOKEN,
    TOKEN_MAX_AGE,
    TOKEN_MIN_REFRESH,
    TokenRejected,
    VerifiedToken,
    load_verifying_key,
    verify_provider_token,
)
from txapns.core.notification import (
    COLLAPSE_ID_LIMIT,
    HTTP2_PAYLOAD_LIMIT,
    HTTP2_VOIP_PAYLOAD_LIMIT,
    PushType,
)
from txapns.testing._idle import IdleWaiters

__all__ = [
    "AcceptedBroadcast",
    "AcceptedNotification",
    "Channel",
    "FakeAPNsProtocol",
    "FakeAPNsServer",
    "FakeServerStats",
    "listen_http2",
]

log = Logger(namespace="txapns.testing.http2_server")

_APNS_DEVELOPMENT_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
_APNS_PRODUCTION_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")
_APNS_TOPICS_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.6")

_DEVICE_PREFIX = "/3/device/"
_TOKEN = re.compile(r"\A(?:[0-9a-fA-F]{2}){32,100}\Z")
_TOPIC = re.compile(r"\A[A-Za-z0-9-]+(?:\.[A-Za-z0-9_-]+)+\Z")
_UUID = re.compile(
    r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
_DIGITS = re.compile(r"\A[0-9]{1,10}\Z")
_CHANNELS = re.compile(r"\A/1/apps/([^/]+)/channels\Z")
_ALL_CHANNELS = re.compile(r"\A/1/apps/([^/]+)/all-channels\Z")
_BROADCAST = re.compile(r"\A/4/broadcasts/apps/([^/]+)\Z")
_SUFFIXES = tuple(sorted({pt.topic_suffix for pt in PushType if pt.topic_suffix}))
_PUSH_TYPES = {pt.value: pt for pt in PushType}
_DEFAULT_WINDOW = 65535
#: Bodies larger than this are counted but not kept (they are rejected anyway).
_BODY_KEEP = 64 * 1024


@dataclass(frozen=True, slots=True)
class AcceptedNotification:
    """One notification the fake accepted (answered, or about to answer, 200)."""

    token_hex: str
    payload: bytes
    #: The ``apns-id`` of the response: the request's, or the one the server made.
    apns_id: str
    topic: str
    push_type: PushType | None
    priority: int | None
    expiration: int | None
    collapse_id: str | None
    #: Number of the connection (1, 2, … in the order they were made).
    connection: int
    stream_id: int
    apns_unique_id: str | None = None
    #: ``"token"`` or ``"certificate"``.
    auth: str = "token"
    #: Clock time of acceptance.
    accepted_at: float = 0.0


@dataclass(frozen=True, slots=True)
class AcceptedBroadcast:
    """One broadcast the fake accepted on ``/4/broadcasts/apps/<bundle>``."""

    bundle_id: str
    channel_id: str
    payload: bytes
    apns_id: str
    priority: int | None
    expiration: int | None
    connection: int
    stream_id: int


@dataclass(frozen=True, slots=True)
class Channel:
    """A broadcast channel made with ``POST /1/apps/<bundle>/channels``."""

    channel_id: str
    bundle_id: str
    #: 0 = no storage (expiration must be 0), 1 = most recent message stored.
    storage_policy: int
    push_type: str = "LiveActivity"


@dataclass
class FakeServerStats:
    """Counters of a :class:`FakeAPNsServer` (cleared by :meth:`FakeAPNsServer.reset`)."""

    #: Completed requests (all paths, answered or not).
    requests: int = 0
    #: Responses decided, by HTTP status and by reason (``"ok"`` for 200).
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    connections: int = 0
    connections_lost: int = 0
    #: GOAWAY frames the server sent (scripted or for protocol errors).
    goaways: int = 0
    #: Streams the client opened but never finished (reset or connection lost first).
    streams_abandoned: int = 0
    #: RST_STREAM from the client, on any stream.
    streams_reset: int = 0
    #: Streams above a GOAWAY's last-stream-id: ignored.
    streams_ignored: int = 0
    #: Streams left unanswered on purpose (never_answer scripting).
    never_answered: int = 0
    pings: int = 0
    #: Streams over the advertised concurrency limit, refused with RST_STREAM(REFUSED_STREAM).
    streams_refused: int = 0
    #: Connections ended because the client broke HTTP/2 (``h2`` raised).
    protocol_errors: int = 0
    #: Full signature checks done (a connection's current token is checked once).
    token_verifications: int = 0
    #: Times a connection adopted a new token after its first.
    token_updates: int = 0
    #: Negotiated ALPN per connection (``"none"`` for plain TCP or no ALPN).
    alpn: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(slots=True)
class _Response:
    status: int
    reason: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class _Stream:
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    ended: bool = False


@dataclass(frozen=True, slots=True)
class _CertInfo:
    topics: tuple[str, ...]
    environments: frozenset[str]


class FakeAPNsServer:
    """Shared state, configuration and script of the fake; see the module docstring.

    :param clock: the time source for token ages, token-update spacing and latency.
    :param sandbox: development environment: responses carry ``apns-unique-id``.
    :param max_streams: ``SETTINGS_MAX_CONCURRENT_STREAMS`` once a connection is ramped.
    :param ramp: advertise 1 stream until a connection's first authenticated request.
    :param initial_window: ``SETTINGS_INITIAL_WINDOW_SIZE`` advertised (``None``: 65,535).
    :param conn_window: connection receive window (``None``: 65,535).
    :param rng: source of generated ids (``apns-id``, ``apns-unique-id``, channel ids).
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        sandbox: bool = False,
        max_streams: int = 1000,
        ramp: bool = True,
        initial_window: int | None = None,
        conn_window: int | None = None,
        topics: Collection[str] | None = None,
        plaintext_client_cert: bytes | x509.Certificate | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        #: Development environment: responses carry ``apns-unique-id``.
        self.sandbox = sandbox
        self.max_streams = max_streams
        self.ramp = ramp
        self.initial_window = initial_window
        self.conn_window = conn_window
        #: Bundle ids that token auth may push to (suffixed topics included); ``None``: any.
        self.topics: set[str] | None = None if topics is None else set(topics)
        #: For plain-TCP tests: the client certificate (PEM or object) every plain
        #: connection is taken to have presented; ``None``: none.
        self.plaintext_client_cert = plaintext_client_cert
        self.rng = rng if rng is not None else random.Random()
        #: Apple's limits, adjustable for tests.
        self.token_max_age: float = TOKEN_MAX_AGE
        self.token_update_interval: float = TOKEN_MIN_REFRESH
        #: Reject tokens whose ``iat`` is this far in the future (``None``: no check).
        self.token_max_future: float | None = None
        self.wedge_after_expired = True
        #: Key ids answered with ``403 BadEnvironmentKeyIdInToken``.
        self.wrong_environment_keys: set[str] = set()
        self.max_channels = 10_000
        self._token_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._key_teams: dict[str, str] = {}

        self.accepted: list[AcceptedNotification] = []
        self.broadcasts: list[AcceptedBroadcast] = []
        self.channels: dict[str, dict[str, Channel]] = {}
        self.stats = FakeServerStats()
        #: Live connections.
        self.connections: list[FakeAPNsProtocol] = []
        self._idle = IdleWaiters()
        self._connection_numbers = 0

        self.bad_tokens: set[str] = set()
        #: Tokens (hex) starting with this are answered ``400 BadDeviceToken`` (the shared
        #: bench mocks use ``"ff"``).
        self.bad_token_prefix: str | None = None
        self.unregistered_tokens: dict[str, int] = {}
        self.throttled_tokens: dict[str, int | None] = {}
        self.token_responses: dict[str, tuple[int, str]] = {}
        self.never_answer_tokens: set[str] = set()
        self.never_answer_prefix: str | None = None
        self.goaway_after: int | None = None
        self.latency: float = 0.0
        self.blackhole = False
        self._failures: collections.deque[tuple[int, str]] = collections.deque()

    # --- configuration --------------------------------------------------------------------

    def add_token_key(
        self,
        key_id: str,
        team_id: str,
        public_key: bytes | ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey,
    ) -> None:
        """Accept provider tokens signed by this key (PEM public key, or a key object) for
        this team."""
        self._token_keys[key_id] = load_verifying_key(public_key)
        self._key_teams[key_id] = team_id

    def set_max_streams(self, max_streams: int) -> None:
        """Change ``max_streams``; ramped live connections advertise it at once."""
        self.max_streams = max_streams
        for proto in list(self.connections):
            proto.advertise_max_streams()

    def fail_next(self, n: int, status: int = 503, reason: str = "ServiceUnavailable") -> None:
        """Answer the next ``n`` otherwise-acceptable notifications with status/reason."""
        self._failures.extend([(status, reason)] * n)

    def goaway(self, reason: str = "Shutdown", error_code: int = 0) -> None:
        """Send GOAWAY now on every live connection (see :attr:`goaway_after`)."""
        for proto in list(self.connections):
            proto.send_goaway(reason, error_code)

    def drop_connections(self) -> None:
        """Abort every live connection, without GOAWAY (a reset: in-flight outcomes unknown)."""
        for proto in list(self.connections):
            proto.abort()

    def when_no_connections(self) -> Deferred[None]:
        """A Deferred that fires once no connection is open (at once if none is)."""
        return self._idle.wait(not self.connections)

    def _connection_closed(self, proto: FakeAPNsProtocol) -> None:
        if proto in self.connections:
            self.connections.remove(proto)
        if not self.connections:
            self._idle.fire()

    def reset(self) -> None:
        """Clear the records (accepted notifications, broadcasts) and the counters."""
        self.accepted.clear()
        self.broadcasts.clear()
        self.stats = FakeServerStats()

    def clear_script(self) -> None:
        """Forget every scripted outcome (bad, unregistered, throttled, … tokens; failures;
        GOAWAY; latency; blackhole)."""
        self.bad_tokens.clear()
        self.bad_token_prefix = None
        self.unregistered_tokens.clear()
        self.throttled_tokens.clear()
        self.token_responses.clear()
        self.never_answer_tokens.clear()
        self.never_answer_prefix = None
        self.goaway_after = None
        self.latency = 0.0
        self.blackhole = False
        self._failures.clear()

    def factory(self) -> ServerFactory:
        """A protocol factory for ``listenTCP``/``listenSSL`` or in-memory connections."""
        return _FakeAPNsFactory(self)

    def accepted_tokens(self) -> list[str]:
        """Tokens of the accepted notifications, in order of acceptance."""
        return [a.token_hex for a in self.accepted]

    # --- helpers for the protocol ---------------------------------------------------------

    def _next_connection(self) -> int:
        self._connection_numbers += 1
        return self._connection_numbers

    def _new_uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _verify(self, token: str, now: float) -> VerifiedToken:
        self.stats.token_verifications += 1
        verified = verify_provider_token(
            token,
            self._token_keys,
            now=now,
            max_age=self.token_max_age,
            max_future=self.token_max_future,
        )
        if self._key_teams.get(verified.key_id) != verified.team_id:
            raise TokenRejected(
                INVALID_PROVIDER_TOKEN, f"team {verified.team_id} does not own the key"
            )
        return verified

    def _scripted(self, token: str) -> _Response | None:
        """A scripted answer for a valid notification; ``_NO_ANSWER`` to never answer."""
        if token in self.never_answer_tokens or (
            self.never_answer_prefix is not None and token.startswith(self.never_answer_prefix)
        ):
            return _NO_ANSWER
        if self._failures:
            status, reason = self._failures.popleft()
            return _error(status, reason)
        if token in self.bad_tokens or (
            self.bad_token_prefix is not None and token.startswith(self.bad_token_prefix)
        ):
            return _error(400, "BadDeviceToken")
        scripted = self.token_responses.get(token)
        if scripted is not None:
            return _error(*scripted)
        if token in self.unregistered_tokens:
            return _error(410, "Unregistered", timestamp=self.unregistered_tokens[token])
        if token in self.throttled_tokens:
            remaining = self.throttled_tokens[token]
            if remaining is None or remaining > 0:
                if remaining is not None:
                    if remaining <= 1:
                        del self.throttled_tokens[token]
                    else:
                        self.throttled_tokens[token] = remaining - 1
                return _error(429, "TooManyRequests")
        return None


_NO_ANSWER = _Response(0, "never answered")


def _error(status: int, reason: str, *, timestamp: int | None = None) -> _Response:
    body: dict[str, Any] = {"reason": reason}
    if timestamp is not None:
        body["timestamp"] = timestamp
    return _Response(status, reason, body=json.dumps(body, separators=(",", ":")).encode())


class _FakeAPNsFactory(ServerFactory):
    def __init__(self, server: FakeAPNsServer) -> None:
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> FakeAPNsProtocol:
        return FakeAPNsProtocol(self.server)


class _ServerH2Connection(h2.connection.H2Connection):
    """``h2`` in server mode, with two departures from its defaults that APNs clients need.

    * ``h2`` answers a stream over the advertised ``SETTINGS_MAX_CONCURRENT_STREAMS`` with a
      connection error (GOAWAY ``PROTOCOL_ERROR``), which kills every other stream too.
      RFC 9113 §5.1.2 lets a server refuse just that stream; here the stream is taken in (so
      the connection's HPACK state stays right) and noted in :attr:`refused`, and the
      protocol resets it with ``REFUSED_STREAM``.
    * ``h2`` closes its state machine on any GOAWAY it receives, after which it refuses to
      send the answers of streams already received. A client's ``NO_ERROR`` GOAWAY is a
      graceful close, so it is reported (``ConnectionTerminated``) without closing.
    """

    def __init__(self) -> None:
        super().__init__(h2.config.H2Configuration(client_side=False, header_encoding=None))
        #: Streams over the limit, to be reset with REFUSED_STREAM.
        self.refused: set[int] = set()
        self._lift_limit = False

    @property
    def open_inbound_streams(self) -> int:
        return 0 if self._lift_limit else super().open_inbound_streams

    def _receive_headers_frame(self, frame: HeadersFrame) -> Any:
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.TooManyStreamsError:
            pass  # raised before anything was decoded: take the stream in, then refuse it
        self.refused.add(frame.stream_id)
        self._lift_limit = True
        try:
            return super()._receive_headers_frame(frame)
        finally:
            self._lift_limit = False

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> Any:
        if frame.error_code != h2.errors.ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


@implementer(IHandshakeListener)
class FakeAPNsProtocol(Protocol):
    """One HTTP/2 connection of a :class:`FakeAPNsServer`."""

    def __init__(self, server: FakeAPNsServer) -> None:
        self.server = server
        self.number = 0
        self.h2 = _ServerH2Connection()
        self._started = False
        #: The client sent GOAWAY (NO_ERROR): close once its streams are answered.
        self._client_leaving = False
        self._streams: dict[int, _Stream] = {}
        #: Streams completed by the client and waiting for their (delayed or flow-controlled)
        #: answer.
        self._awaiting: set[int] = set()
        self._timers: dict[int, IDelayedCall] = {}
        self._pending_bodies: dict[int, bytes] = {}
        self._withheld = 0
        self.ramped = False
        #: ``(team_id, key_id)`` this connection is bound to by its first valid token.
        self.bound_key: tuple[str, str] | None = None
        self._token: str | None = None
        self._claims: VerifiedToken | None = None
        self._adopted_at = 0.0
        self._wedged = False
        self._cert: _CertInfo | None = None
        self.accepted_count = 0
        self._max_processed = 0
        #: last-stream-id of the GOAWAY this connection sent, if any.
        self.goaway_last_stream_id: int | None = None
        self._closed = False
        self._closing = False
        self._broken = False
        self._blackholed = False

    # --- Twisted --------------------------------------------------------------------------

    def connectionMade(self) -> None:
        server = self.server
        self.number = server._next_connection()
        server.stats.connections += 1
        server.connections.append(self)
        if not ISSLTransport.providedBy(self.transport):
            self._start()
        # Over TLS the client certificate (and so the ramp) is known only after the
        # handshake: handshakeCompleted (or the first bytes, whichever comes first) starts.

    def handshakeCompleted(self) -> None:
        if not self._closed:
            self._start()

    def _start(self) -> None:
        """Send the server's preface, once the connection's certificate is known."""
        if self._started:
            return
        self._started = True
        server = self.server
        self._connection_facts()
        # Apple starts token connections with one stream; certificate ones get the limit.
        self.ramped = not server.ramp or self._cert is not None
        initial: dict[h2.settings.SettingCodes, int] = {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: (
                server.max_streams if self.ramped else 1
            ),
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        }
        if server.initial_window is not None:
            initial[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = server.initial_window
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=initial)
        self.h2.initiate_connection()
        if server.conn_window is not None:
            if server.conn_window > _DEFAULT_WINDOW:
                self.h2.increment_flow_control_window(server.conn_window - _DEFAULT_WINDOW)
            else:
                self._withheld = _DEFAULT_WINDOW - server.conn_window
        log.debug("fake APNs: connection {number} made", number=self.number)
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        if self.server.blackhole:
            self._blackholed = True
        if self._blackholed or self._closed or self._broken:
            return
        self._start()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # h2 has queued a GOAWAY with the right error code.
            self.server.stats.protocol_errors += 1
            self.server.stats.goaways += 1
            log.warn(
                "fake APNs: connection {number}: client broke HTTP/2 ({error}); closing",
                number=self.number,
                error=type(e).__name__,
            )
            self._flush()
            self._close(broken=True)
            return
        for event in events:
            self._dispatch(event)
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self.server.stats.connections_lost += 1
        self.server.stats.streams_abandoned += sum(1 for s in self._streams.values() if not s.ended)
        self._streams.clear()
        self._awaiting.clear()
        log.debug("fake APNs: connection {number} lost", number=self.number)
        self.server._connection_closed(self)

    # --- public helpers -------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the connection without GOAWAY."""
        if self.transport is None:
            return
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def advertise_max_streams(self) -> None:
        """Advertise the server's ``max_streams`` if this connection is ramped."""
        if self.ramped and not self._closed:
            self.h2.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams}
            )
            self._flush()

    def send_goaway(self, reason: str = "Shutdown", error_code: int = 0) -> None:
        """GOAWAY whose last-stream-id is the highest stream already processed (decided).

        Streams up to it that are still in progress are finished and answered; streams
        above it, including ones already received but not yet complete, are ignored: they
        were never processed, and a client must re-send them on a new connection. The
        frame is written directly (not through ``h2.close_connection``, after which ``h2``
        refuses to send anything) so that the streams up to last-stream-id can still be
        answered, as a graceful shutdown allows.
        """
        if self._closed or self.goaway_last_stream_id is not None:
            return
        last = self._max_processed
        self.goaway_last_stream_id = last
        self.server.stats.goaways += 1
        for stream_id in [s for s in self._streams if s > last]:
            del self._streams[stream_id]
            self.server.stats.streams_ignored += 1
        self._flush()
        frame = GoAwayFrame(
            stream_id=0,
            last_stream_id=last,
            error_code=error_code,
            additional_data=json.dumps({"reason": reason}).encode(),
        )
        self._write(frame.serialize())
        log.info(
            "fake APNs: connection {number}: GOAWAY last-stream-id {last} ({reason})",
            number=self.number,
            last=last,
            reason=reason,
        )
        self._maybe_close_after_goaway()

    # --- HTTP/2 events --------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if self._broken:
            return  # the client ended the connection earlier in this batch
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event.stream_id, event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_stream_ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._on_reset(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id in list(self._pending_bodies):
                self._send_body(stream_id)
        elif isinstance(event, h2.events.PingReceived):
            self.server.stats.pings += 1
        elif isinstance(event, h2.events.ConnectionTerminated):
            if event.error_code == h2.errors.ErrorCodes.NO_ERROR:
                self._client_leaving = True
                self._maybe_close_after_goaway()
            else:
                self._flush()
                self._close(broken=True)

    def _on_request(self, stream_id: int, headers: list[Any]) -> None:
        if stream_id in self.h2.refused:
            self.h2.refused.discard(stream_id)
            self.server.stats.streams_refused += 1
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if self.goaway_last_stream_id is not None and stream_id > self.goaway_last_stream_id:
            self.server.stats.streams_ignored += 1
            return
        self._streams[stream_id] = _Stream([(bytes(k), bytes(v)) for k, v in headers])

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.size += len(event.data)
            if len(stream.body) < _BODY_KEEP:
                stream.body += event.data
        self._credit(event.stream_id, event.flow_controlled_length, event.stream_ended is None)

    def _credit(self, stream_id: int, size: int, stream_open: bool) -> None:
        if size <= 0:
            return
        if stream_open:
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.h2.increment_flow_control_window(size, stream_id=stream_id)
        withheld = min(self._withheld, size)
        self._withheld -= withheld
        if size - withheld > 0:
            # The client's GOAWAY may have closed h2's connection in this same read.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.increment_flow_control_window(size - withheld)

    def _on_stream_ended(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # ignored after GOAWAY
        stream.ended = True
        self.server.stats.requests += 1
        self._max_processed = max(self._max_processed, stream_id)
        response = self._decide(stream_id, stream)
        del self._streams[stream_id]
        if response is _NO_ANSWER:
            self.server.stats.never_answered += 1
            self._maybe_close_after_goaway()
            return
        self.server.stats.statuses[response.status] += 1
        self.server.stats.reasons[response.reason or "ok"] += 1
        self._awaiting.add(stream_id)
        if self.server.latency > 0:
            self._timers[stream_id] = self.server.clock.callLater(
                self.server.latency, self._respond_later, stream_id, response
            )
        else:
            self._respond(stream_id, response)
        if (
            response.status == 200
            and self.server.goaway_after is not None
            and self.accepted_count >= self.server.goaway_after
        ):
            self.send_goaway()

    def _on_reset(self, stream_id: int) -> None:
        self.server.stats.streams_reset += 1
        stream = self._streams.pop(stream_id, None)
        if stream is not None and not stream.ended:
            self.server.stats.streams_abandoned += 1
        self._awaiting.discard(stream_id)
        self._pending_bodies.pop(stream_id, None)
        timer = self._timers.pop(stream_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._maybe_close_after_goaway()

    # --- answering ------------------------------------------------------------------------

    def _respond_later(self, stream_id: int, response: _Response) -> None:
        self._timers.pop(stream_id, None)
        self._respond(stream_id, response)
        self._flush()

    def _respond(self, stream_id: int, response: _Response) -> None:
        if self._closed or stream_id not in self._awaiting:
            return
        headers = [(b":status", str(response.status).encode()), *response.headers]
        if response.body:
            headers.append((b"content-type", b"application/json"))
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not response.body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._awaiting.discard(stream_id)
            return
        if response.body:
            self._pending_bodies[stream_id] = response.body
            self._send_body(stream_id)
        else:
            self._awaiting.discard(stream_id)
            self._maybe_close_after_goaway()

    def _send_body(self, stream_id: int) -> None:
        body = self._pending_bodies.get(stream_id)
        if body is None:
            return
        try:
            while body:
                window = min(
                    self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
                )
                if window <= 0:
                    self._pending_bodies[stream_id] = body
                    return
                chunk, body = body[:window], body[window:]
                self.h2.send_data(stream_id, chunk, end_stream=not body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self._pending_bodies.pop(stream_id, None)
        self._awaiting.discard(stream_id)
        self._maybe_close_after_goaway()

    def _maybe_close_after_goaway(self) -> None:
        if (
            (self.goaway_last_stream_id is not None or self._client_leaving)
            and not self._closed
            and not self._awaiting
            and not self._streams
        ):
            self._flush()
            self._close()

    def _close(self, *, broken: bool = False) -> None:
        if broken:
            self._broken = True  # h2 is closed: parse nothing more
        if self.transport is not None and not self._closed and not self._closing:
            self._closing = True
            self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def _flush(self) -> None:
        self._write(self.h2.data_to_send())

    # --- connection facts -----------------------------------------------------------------

    def _connection_facts(self) -> None:
        """ALPN and client certificate: known once the first bytes arrive (after TLS)."""
        protocol = getattr(self.transport, "negotiatedProtocol", None)
        name = protocol.decode("ascii", "replace") if isinstance(protocol, bytes) else "none"
        self.server.stats.alpn[name] += 1
        self._cert = self._read_client_cert()

    def _read_client_cert(self) -> _CertInfo | None:
        if ISSLTransport.providedBy(self.transport):
            try:
                peer: Any = self.transport.getPeerCertificate()
            except Exception:  # no TLS connection yet, or none presented
                peer = None
            if peer is not None:
                cert = peer if isinstance(peer, x509.Certificate) else peer.to_cryptography()
                return _cert_info(cert)
        pretend = self.server.plaintext_client_cert
        if pretend is not None and not ISSLTransport.providedBy(self.transport):
            if not isinstance(pretend, x509.Certificate):
                pretend = x509.load_pem_x509_certificate(pretend)
            return _cert_info(pretend)
        return None

    # --- deciding -------------------------------------------------------------------------

    def _decide(self, stream_id: int, stream: _Stream) -> _Response:
        server = self.server
        fields: dict[bytes, bytes] = {}
        for name, value in stream.headers:
            fields.setdefault(name, value)
        method = fields.get(b":method", b"")
        path = fields.get(b":path", b"").decode("latin-1").split("?", 1)[0]

        raw_id = fields.get(b"apns-id")
        id_text = raw_id.decode("latin-1") if raw_id is not None else ""
        apns_id = id_text if _UUID.match(id_text) else str(server._new_uuid()).upper()
        unique = None
        if server.sandbox and path.startswith(_DEVICE_PREFIX):
            unique = str(server._new_uuid())
        response = self._route(stream_id, stream, fields, method, path, apns_id, unique)
        response.headers.insert(0, (b"apns-id", apns_id.encode()))
        if unique is not None:
            response.headers.append((b"apns-unique-id", unique.encode()))
        return response

    def _route(
        self,
        stream_id: int,
        stream: _Stream,
        fields: dict[bytes, bytes],
        method: bytes,
        path: str,
        apns_id: str,
        unique: str | None,
    ) -> _Response:
        if path.startswith(_DEVICE_PREFIX):
            if method != b"POST":
                return _error(405, "MethodNotAllowed")
            if any(name.startswith(b"apns-") for name in _repeated(stream.headers)):
                return _error(400, "DuplicateHeaders")
            raw_id = fields.get(b"apns-id")
            if raw_id is not None and not _UUID.match(raw_id.decode("latin-1")):
                return _error(400, "BadMessageId")
            token = path[len(_DEVICE_PREFIX) :]
            return self._device(stream_id, stream, fields, token, apns_id, unique)
        match = _CHANNELS.match(path)
        if match is not None:
            return self._channels(fields, method, match.group(1), stream)
        match = _ALL_CHANNELS.match(path)
        if match is not None:
            if method != b"GET":
                return _error(405, "MethodNotAllowed")
            denied = self._authenticate(fields)
            if denied is not None:
                return denied
            ids = sorted(self.server.channels.get(match.group(1), {}))
            return _json(200, {"channels": ids}, _request_id(fields, self.server))
        match = _BROADCAST.match(path)
        if match is not None:
            return self._broadcast(stream_id, stream, fields, method, match.group(1), apns_id)
        return _error(404, "BadPath")

    def _authenticate(self, fields: Mapping[bytes, bytes]) -> _Response | None:
        """``None`` when the request is authenticated, else the error response."""
        server = self.server
        if self._wedged:
            return _error(403, EXPIRED_PROVIDER_TOKEN)
        authorization = fields.get(b"authorization")
        if authorization is None:
            cert = self._cert
            if cert is None:
                return _error(403, MISSING_PROVIDER_TOKEN)
            env = "development" if server.sandbox else "production"
            if cert.environments and env not in cert.environments:
                return _error(403, "BadCertificateEnvironment")
            self._authenticated()
            return None
        text = authorization.decode("latin-1")
        if text[:7].lower() != "bearer ":
            return _error(403, INVALID_PROVIDER_TOKEN)
        token = text[7:].strip()
        now = server.clock.seconds()
        if token == self._token and self._claims is not None:
            claims = self._claims
            if now - claims.issued_at > server.token_max_age:
                return self._expired()
        else:
            try:
                claims = server._verify(token, now)
            except TokenRejected as e:
                if e.reason == EXPIRED_PROVIDER_TOKEN:
                    return self._expired()
                return _error(403, e.reason)
            if claims.key_id in server.wrong_environment_keys:
                return _error(403, "BadEnvironmentKeyIdInToken")
            if self.bound_key is not None and self.bound_key != (claims.team_id, claims.key_id):
                return _error(403, "UnrelatedKeyIdInToken")
            if self._claims is None:
                self.bound_key = (claims.team_id, claims.key_id)
                self._adopted_at = now
            elif claims != self._claims:
                if now - self._adopted_at < server.token_update_interval:
                    return _error(429, "TooManyProviderTokenUpdates")
                self._adopted_at = now
                server.stats.token_updates += 1
            self._claims = claims
            self._token = token
        self._authenticated()
        return None

    def _expired(self) -> _Response:
        if self.server.wedge_after_expired:
            self._wedged = True
        return _error(403, EXPIRED_PROVIDER_TOKEN)

    def _authenticated(self) -> None:
        if not self.ramped:
            self.ramped = True
            self.advertise_max_streams()

    def _auth_kind(self, fields: Mapping[bytes, bytes]) -> str:
        return "token" if b"authorization" in fields else "certificate"

    def _device(
        self,
        stream_id: int,
        stream: _Stream,
        fields: dict[bytes, bytes],
        token_text: str,
        apns_id: str,
        unique: str | None,
    ) -> _Response:
        server = self.server
        denied = self._authenticate(fields)
        if denied is not None:
            return denied
        auth = self._auth_kind(fields)
        if not token_text:
            return _error(400, "MissingDeviceToken")
        if not _TOKEN.match(token_text):
            return _error(400, "BadDeviceToken")
        token = token_text.lower()

        raw_topic = fields.get(b"apns-topic")
        cert = self._cert if auth == "certificate" else None
        if raw_topic is None:
            if cert is None or not cert.topics:
                return _error(400, "MissingTopic")
            topic = cert.topics[0]
        else:
            topic = raw_topic.decode("latin-1")
        if not _TOPIC.match(topic):
            return _error(400, "BadTopic")
        if cert is not None:
            if topic not in cert.topics:
                return _error(400, "TopicDisallowed")
        elif server.topics is not None and _bundle_of(topic) not in server.topics:
            return _error(400, "TopicDisallowed")

        push_type: PushType | None = None
        raw_type = fields.get(b"apns-push-type")
        if raw_type is not None:
            push_type = _PUSH_TYPES.get(raw_type.decode("latin-1"))
            if push_type is None:
                return _error(400, "InvalidPushType")
            if push_type.topic_suffix and not topic.endswith(push_type.topic_suffix):
                return _error(400, "InvalidPushType")

        priority = _int_header(fields.get(b"apns-priority"))
        if (priority is not None and priority not in (1, 5, 10)) or (
            push_type is PushType.BACKGROUND and priority != 5  # no header means 10
        ):
            return _error(400, "BadPriority")
        expiration = _int_header(fields.get(b"apns-expiration"))
        if expiration == -1:
            return _error(400, "BadExpirationDate")
        raw_collapse = fields.get(b"apns-collapse-id")
        if raw_collapse is not None and len(raw_collapse) > COLLAPSE_ID_LIMIT:
            return _error(400, "BadCollapseId")
        body_error = _check_body(stream, push_type is PushType.VOIP)
        if body_error is not None:
            return body_error

        scripted = server._scripted(token)
        if scripted is not None:
            return scripted
        self.accepted_count += 1
        server.accepted.append(
            AcceptedNotification(
                token_hex=token,
                payload=bytes(stream.body),
                apns_id=apns_id,
                topic=topic,
                push_type=push_type,
                priority=priority,
                expiration=expiration,
                collapse_id=raw_collapse.decode("utf-8", "replace") if raw_collapse else None,
                connection=self.number,
                stream_id=stream_id,
                apns_unique_id=unique,
                auth=auth,
                accepted_at=server.clock.seconds(),
            )
        )
        return _Response(200)

    # --- broadcast ------------------------------------------------------------------------

    def _channels(
        self, fields: dict[bytes, bytes], method: bytes, bundle: str, stream: _Stream
    ) -> _Response:
        server = self.server
        if method not in (b"POST", b"GET", b"DELETE"):
            return _error(405, "MethodNotAllowed")
        denied = self._authenticate(fields)
        if denied is not None:
            return denied
        headers = _request_id(fields, server)
        channels = server.channels.setdefault(bundle, {})
        if method == b"POST":
            try:
                body = json.loads(bytes(stream.body) or b"null")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return _error(400, "BadPayload")
            policy = body.get("message-storage-policy")
            if policy not in (0, 1) or isinstance(policy, bool):
                return _error(400, "BadMessageStoragePolicy")
            if body.get("push-type") != "LiveActivity":
                return _error(400, "InvalidPushType")
            if len(channels) >= server.max_channels:
                return _error(400, "CannotCreateChannelConfig")
            channel_id = base64.b64encode(server.rng.randbytes(16)).decode("ascii")
            channels[channel_id] = Channel(channel_id, bundle, policy)
            headers.append((b"apns-channel-id", channel_id.encode()))
            return _Response(201, None, headers)
        raw = fields.get(b"apns-channel-id")
        if raw is None:
            return _error(400, "MissingChannelId")
        channel = channels.get(raw.decode("latin-1"))
        if channel is None:
            return _error(400, "BadChannelId")
        headers.append((b"apns-channel-id", raw))
        if method == b"DELETE":
            del channels[channel.channel_id]
            return _Response(204, None, headers)
        return _json(
            200,
            {"message-storage-policy": channel.storage_policy, "push-type": channel.push_type},
            headers,
        )

    def _broadcast(
        self,
        stream_id: int,
        stream: _Stream,
        fields: dict[bytes, bytes],
        method: bytes,
        bundle: str,
        apns_id: str,
    ) -> _Response:
        server = self.server
        if method != b"POST":
            return _error(405, "MethodNotAllowed")
        denied = self._authenticate(fields)
        if denied is not None:
            return denied
        raw = fields.get(b"apns-channel-id")
        if raw is None:
            return _error(400, "MissingChannelId")
        channel = server.channels.get(bundle, {}).get(raw.decode("latin-1"))
        if channel is None:
            return _error(400, "BadChannelId")
        if fields.get(b"apns-push-type") != b"liveactivity":
            return _error(400, "InvalidPushType")
        priority = _int_header(fields.get(b"apns-priority"))
        if priority is not None and priority not in (1, 5, 10):
            return _error(400, "BadPriority")
        expiration = _int_header(fields.get(b"apns-expiration"))
        if expiration == -1 or (channel.storage_policy == 0 and expiration not in (None, 0)):
            return _error(400, "BadExpirationDate")
        body_error = _check_body(stream, voip=False)
        if body_error is not None:
            return body_error
        server.broadcasts.append(
            AcceptedBroadcast(
                bundle_id=bundle,
                channel_id=channel.channel_id,
                payload=bytes(stream.body),
                apns_id=apns_id,
                priority=priority,
                expiration=expiration,
                connection=self.number,
                stream_id=stream_id,
            )
        )
        return _Response(200, None, _request_id(fields, server))


def _repeated(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    seen: set[bytes] = set()
    repeated: set[bytes] = set()
    for name, _ in headers:
        (repeated if name in seen else seen).add(name)
    return repeated


def _json(status: int, obj: object, headers: list[tuple[bytes, bytes]]) -> _Response:
    return _Response(status, None, headers, json.dumps(obj, separators=(",", ":")).encode())


def _request_id(fields: Mapping[bytes, bytes], server: FakeAPNsServer) -> list[tuple[bytes, bytes]]:
    raw = fields.get(b"apns-request-id")
    if raw is None or not _UUID.match(raw.decode("latin-1")):
        raw = str(server._new_uuid()).encode()
    return [(b"apns-request-id", raw)]


def _int_header(raw: bytes | None) -> int | None:
    """The header's integer; ``None`` if absent; -1 if not a non-negative integer."""
    if raw is None:
        return None
    text = raw.decode("latin-1")
    return int(text) if _DIGITS.match(text) else -1


def _check_body(stream: _Stream, voip: bool) -> _Response | None:
    if stream.size == 0:
        return _error(400, "PayloadEmpty")
    if stream.size > (HTTP2_VOIP_PAYLOAD_LIMIT if voip else HTTP2_PAYLOAD_LIMIT):
        return _error(413, "PayloadTooLarge")
    try:
        value = json.loads(bytes(stream.body))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return _error(400, "BadPayload")
    return None


def _bundle_of(topic: str) -> str:
    for suffix in _SUFFIXES:
        if topic.endswith(suffix) and len(topic) > len(suffix):
            return topic[: -len(suffix)]
    return topic


def _cert_info(cert: x509.Certificate) -> _CertInfo:
    topics: list[str] = []
    for attribute in cert.subject.get_attributes_for_oid(NameOID.USER_ID):
        value = attribute.value
        topics.append(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    environments: set[str] = set()
    try:
        extensions = list(cert.extensions)
    except ValueError:
        extensions = []
    for ext in extensions:
        if ext.oid == _APNS_DEVELOPMENT_OID:
            environments.add("development")
        elif ext.oid == _APNS_PRODUCTION_OID:
            environments.add("production")
        elif ext.oid == _APNS_TOPICS_OID and isinstance(ext.value, x509.UnrecognizedExtension):
            topics.extend(t for t in _der_top_level_utf8(ext.value.value) if t not in topics)
    return _CertInfo(tuple(topics), frozenset(environments))


def _der_top_level_utf8(data: bytes) -> list[str]:
    """The UTF8String elements directly inside a DER SEQUENCE (Apple's topic extension:
    ``SEQUENCE { UTF8String topic, SEQUENCE { UTF8String kind }, … }``)."""

    def read(buf: bytes, pos: int) -> tuple[int, int, int]:
        tag = buf[pos]
        length = buf[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(buf[pos : pos + n], "big")
            pos += n
        return tag, pos, length

    try:
        tag, pos, length = read(data, 0)
        if tag != 0x30:
            return []
        end = pos + length
        found: list[str] = []
        while pos < end:
            tag, start, length = read(data, pos)
            if tag == 0x0C:
                found.append(data[start : start + length].decode("utf-8"))
            pos = start + length
        return found
    except (IndexError, UnicodeDecodeError):
        return []


def listen_http2(
    reactor: IReactorTCP,
    server: FakeAPNsServer,
    *,
    port: int = 0,
    interface: str = "127.0.0.1",
    tls_options: Any = None,
) -> IListeningPort:
    """Serve ``server`` on ``interface:port`` (0 = any free port; see ``getHost().port``).

    With ``tls_options`` (e.g. :func:`txapns.testing.pki.server_tls_options` with
    ``alpn=[b"h2"]``) it listens with TLS, otherwise plain TCP (HTTP/2 with prior knowledge).
    """
    factory = server.factory()
    if tls_options is None:
        return reactor.listenTCP(port, factory, interface=interface)
    return IReactorSSL(reactor).listenSSL(port, factory, tls_options, interface=interface)
