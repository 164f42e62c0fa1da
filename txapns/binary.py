"""The legacy binary provider for Twisted: :class:`APNsProtocol`, :class:`APNsClientFactory`
and the public :class:`BinaryClient`.

This module is glue. The delivery logic (window, replay, outcomes) is the sans-IO
:class:`~txapns.core.binary_channel.BinaryChannel`; here we feed it bytes, connection events and
the reactor's time, write what it returns (coalesced: one ``transport.write`` per reactor turn
up to a size threshold), run its quiet-window timer and reconnect with backoff.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._feeder import BulkFeeder, ResultCallback
from ._timers import Dial, Phase, Phased, Timers
from ._twisted import deliver, set_no_delay
from .core._deprecate import renamed
from .core.backoff import Backoff
from .core.binary_channel import BinaryChannel, ChannelConfig, Pending, Resolution
from .core.counters import Counters
from .core.errors import ClientStoppedError, QueueFullError, TLSFailureError
from .core.notification import Notification, validate_binary
from .core.proxy import ProxyAuthenticationError
from .core.queue_time import DEFAULT_MAX_QUEUE_TIME, ConnectFailures, QueueTimeLimit
from .core.result import Result, UnknownPolicy
from .credentials import is_tls_failure

log = Logger(namespace="txapns.binary")

#: Closing this soon after the handshake, with nothing said, is what Apple's gateway did to a
#: certificate of the other environment.
WRONG_ENVIRONMENT_WINDOW = 0.1


_CLOSED = Failure(ConnectionDone())


class _Transport(TypingProtocol):
    """The parts of a TCP/TLS transport the glue uses."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


@implementer(IHandshakeListener, IPushProducer)
class APNsProtocol(Protocol):
    """One connection to a binary gateway: feeds error frames to the factory's channel and
    stops writing while the transport's buffer is full."""

    def __init__(self, factory: APNsClientFactory) -> None:
        self.factory = factory
        self.paused = False
        self.handshake_at: float | None = None
        self.received = 0
        self.closed = False
        self.closing = False
        self.out: _Transport

    def connectionMade(self) -> None:
        self.out = cast(_Transport, self.transport)
        set_no_delay(self.transport)
        self.out.registerProducer(self, True)
        self.factory._protocol_connected(self)

    def handshakeCompleted(self) -> None:
        self.handshake_at = self.factory.clock.seconds()

    def close(self) -> None:
        """Close gracefully. The TLS layer will not shut down while a producer is registered,
        so unregister first (otherwise the close waits forever)."""
        if not self.closed and not self.closing:
            self.closing = True
            self.out.unregisterProducer()
            self.out.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.factory._data_received(self, data)

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        self.closed = True
        self.factory._protocol_lost(self, reason)

    # IPushProducer: the transport tells us when its write buffer is full or drained.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.factory._schedule_flush()

    def stopProducing(self) -> None:
        self.paused = True


class APNsClientFactory(ClientFactory, Phased):
    """A reconnecting factory for one connection slot; it owns that slot's queue.

    On every new connection the channel replays what was not confirmed at the head of the
    queue, in the original order. It reconnects at once after a close that followed an error
    response, with exponential backoff after failed attempts, gives up (failing the queue) after
    ``max_tls_failures`` TLS failures in a row, and reports a close right after the handshake as
    a probable wrong-environment certificate.
    """

    protocol = APNsProtocol
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        *,
        config: ChannelConfig | None = None,
        counters: Counters | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        max_tls_failures: int = 3,
        write_chunk: int = 1 << 20,
        initial_chunk: int = 16 << 10,
        sentinel_on_drain: bool = True,
        name: str = "binary",
        on_room: Callable[[], None] | None = None,
        hold_when_unavailable: bool = False,
        max_queue_time: float | None = DEFAULT_MAX_QUEUE_TIME,
    ) -> None:
        self.clock = clock
        self.hold_when_unavailable = hold_when_unavailable
        #: Why nothing can be sent (TLS kept failing), until a notification is confirmed.
        self.unavailable: str | None = None
        self.endpoint = endpoint
        self.counters = counters if counters is not None else Counters()
        self.channel = BinaryChannel(config, self.counters)
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.max_tls_failures = max_tls_failures
        self.write_chunk = write_chunk
        self.initial_chunk = min(initial_chunk, write_chunk)
        self._chunk = self.initial_chunk
        self.sentinel_on_drain = sentinel_on_drain
        self.name = name
        self.on_room = on_room
        self.queue_time = None if max_queue_time is None else QueueTimeLimit(max_queue_time)
        self.connect_failures = ConnectFailures()
        self.proto: APNsProtocol | None = None
        self.failures = 0
        self.tls_failures = 0
        #: OPEN; DRAINING once stop() was called (new submissions are refused); CLOSED once
        #: draining is over (no more connections are made).
        self.phase = Phase.OPEN
        # UNSTARTED until start(); CONNECTING while an attempt is in flight; else STANDBY.
        self._dial = Dial.UNSTARTED
        self._ever_connected = False
        self._timers = timers = Timers(clock)
        self._flush_timer = timers.timer(self._flush)
        #: The channel's quiet window: what was written is confirmed when it passes.
        self._quiet_timer = timers.timer(self._quiet_fired)
        self._retry_timer = timers.timer(self._connect)
        self._drain_timer = timers.timer(self._give_up_draining)
        self._queue_time_timer = timers.timer(self._queue_time_check)
        self._connect_attempt: Deferred[IProtocol] | None = None
        self._drained: list[Deferred[None]] = []
        self._closed: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> APNsProtocol:
        return APNsProtocol(self)

    @property
    def started(self) -> bool:
        """``start`` was called."""
        return self._dial is not Dial.UNSTARTED

    @property
    def connecting(self) -> bool:
        """A connection attempt is in flight."""
        return self._dial is Dial.CONNECTING

    @property
    def draining(self) -> bool:
        """Someone waits for the queue to empty (:meth:`drain`): the tail is confirmed with a
        sentinel."""
        return bool(self._drained)

    # --- public ------------------------------------------------------------------------

    def start(self) -> None:
        if self._dial is Dial.UNSTARTED:
            self._dial = Dial.STANDBY
        self._connect()

    def submit(self, notification: Notification, handle: Any) -> Pending:
        if not self.accepting:
            raise ClientStoppedError("the client is stopping; it takes no new notifications")
        item = self.channel.submit(notification, handle, self.clock.seconds())
        if self.queue_time is not None:
            self._queue_time_timer.start_unless_armed(self.queue_time.limit)
        if self.proto is None:
            if self._dial is Dial.STANDBY and not self._retry_timer.armed:
                self._connect()
        else:
            self._schedule_flush()
        return item

    def drain(self) -> Deferred[None]:
        """Fires once nothing is pending (sending a sentinel to confirm the tail early)."""
        if self.channel.pending() == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        self._schedule_flush()
        return d

    def stop(self, timeout: float = 10.0) -> Deferred[None]:
        """Stop taking notifications, drain for up to ``timeout`` seconds, then finish what is
        left (unknown if it may have been delivered, rejected otherwise), cancel every timer
        and close the connection. Fires when the connection is closed."""
        if self.phase is Phase.OPEN:
            self.phase = Phase.DRAINING
        if not self._drain_timer.armed and not self.closing:
            self._drain_timer.start(timeout)
        return self.drain().addCallback(self._close)

    # --- connection lifecycle -----------------------------------------------------------

    def _connect(self) -> None:
        self._retry_timer.cancel()
        if self.closing or self._dial is Dial.CONNECTING or self.proto is not None:
            return
        self._dial = Dial.CONNECTING
        d = self.endpoint.connect(self)
        self._connect_attempt = d
        d.addCallbacks(self._connect_succeeded, self._connect_failed)

    def _connect_succeeded(self, proto: object) -> None:
        self._connect_attempt = None
        self._dial = Dial.STANDBY

    def _connect_failed(self, reason: Failure) -> None:
        self._connect_attempt = None
        self._dial = Dial.STANDBY
        if self.closing:
            return
        self.failures += 1
        self.counters.connection_failures += 1
        self.connect_failures.failed(reason.getErrorMessage())
        if reason.check(ProxyAuthenticationError):
            # The proxy wants other credentials: retrying cannot help. Reject what is held
            # now; the next submit tries again.
            log.error("{name}: {why}", name=self.name, why=str(reason.value))
            self.failures = 0
            self._fail_queue(str(reason.value), "proxy-auth")
            return
        log.warn(
            "{name}: connection attempt {n} failed: {why}",
            name=self.name,
            n=self.failures,
            why=reason.getErrorMessage(),
        )
        self._schedule_reconnect()

    def _protocol_connected(self, proto: APNsProtocol) -> None:
        self.proto = proto
        self._dial = Dial.STANDBY
        self.counters.connections_made += 1
        if self._ever_connected:
            self.counters.reconnects += 1
        self._ever_connected = True
        self.channel.connection_made()
        self._chunk = self.initial_chunk
        log.debug("{name}: connected", name=self.name)
        self._schedule_flush()

    def _protocol_lost(self, proto: APNsProtocol, reason: Failure) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self._flush_timer.cancel()
        now = self.clock.seconds()
        after_error = self.channel.error is not None
        handshake = proto.handshake_at
        # With TLS 1.3 a refused client certificate surfaces after handshakeCompleted, so
        # the reason is classified whatever the handshake state.
        tls_failed = is_tls_failure(reason)
        # A deliberate close (clean, like Apple's to a certificate of the other environment),
        # not a reset: a connection cut mid-stream can also end within the window on a fast
        # network, and must not count towards giving up on the certificate.
        wrong_env = (
            not after_error
            and reason.check(ConnectionDone) is not None
            and handshake is not None
            and proto.received == 0
            and now - handshake <= WRONG_ENVIRONMENT_WINDOW
        )
        why = "connection closed with no error response"
        if tls_failed:
            why = f"TLS failure: {reason.getErrorMessage()}"
        elif wrong_env:
            why = "gateway closed right after the handshake (wrong-environment certificate?)"
        # A refused TLS session delivered nothing (unless something was confirmed on it
        # already): what was written goes back to the queue, to be failed as rejected if
        # the certificate keeps failing, rather than becoming unknown.
        undelivered = tls_failed and self.channel.accepted_here == 0
        self._deliver(self.channel.connection_lost(now, why, undelivered=undelivered))
        self._rearm_quiet()
        if self.closing:
            self._fire_closed()
            return
        if tls_failed or wrong_env:
            self.connect_failures.failed(why)
            self.tls_failures += 1
            self.failures += 1
            self.counters.connection_failures += 1
            log.error("{name}: {why}", name=self.name, why=why)
            if self.tls_failures >= self.max_tls_failures:
                err = TLSFailureError(f"{why}; gave up after {self.tls_failures} attempts")
                self.tls_failures = 0
                if self.hold_when_unavailable:
                    # Keep the queue; reconnect with a growing backoff.
                    self.unavailable = str(err)
                    self._schedule_reconnect()
                    return
                self._fail_queue(str(err), "tls")
                self.failures = 0
                return
            self._schedule_reconnect()
            return
        self.tls_failures = 0
        self.failures = 0
        self.connect_failures.succeeded()
        if after_error:
            log.debug("{name}: closed after an error response; reconnecting", name=self.name)
            self._connect()
        elif self.channel.pending():
            log.info("{name}: {why}; reconnecting", name=self.name, why=why)
            self._connect()
        # else: idle close; reconnect when something is submitted.

    def _schedule_reconnect(self) -> None:
        if self.closing:
            return
        delay = self.backoff.delay(self.failures, self.rng.random())
        self._retry_timer.start(delay)

    def _queue_time_check(self) -> None:
        """Finish what waited ``max_queue_time`` without being written; check again when the
        oldest of the rest is due (or after ``max_queue_time``, while anything is held)."""
        limit = self.queue_time
        if limit is None or self.closing:
            return
        now = self.clock.seconds()
        local, reason = limit.outcome(self.connect_failures, self.proto is not None)
        resolved = self.channel.expire_queued(now, limit, local, reason)
        if resolved:
            log.warn(
                "{name}: {n} notifications not sent within {limit} s ({local}); finishing them",
                name=self.name,
                n=len(resolved),
                limit=limit.limit,
                local=local,
            )
            self._deliver(resolved)
        if self.channel.pending():
            self._queue_time_timer.start(limit.next_check(self.channel.waiting(), now))

    def _fail_queue(self, reason: str, local: str) -> None:
        self._deliver(self.channel.fail_all(reason, local, self.clock.seconds()))
        self._rearm_quiet()

    # --- writing ------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self.proto is not None:
            self._flush_timer.start_unless_armed(0)

    def _flush(self) -> None:
        proto = self.proto
        if proto is None or proto.paused or proto.closed:
            return
        channel = self.channel
        now = self.clock.seconds()
        data = channel.take_frames(now, self._chunk)
        # Slow start: a connection begins with small writes and doubles them each turn, so a
        # stream that hits an early error (then every later frame is discarded and replayed)
        # wastes little; a clean stream reaches full-size writes within a few turns.
        self._chunk = min(self._chunk * 2, self.write_chunk)
        if self._drained and self.sentinel_on_drain and not channel.queue:
            # Confirm the tail now rather than after the quiet window.
            data += channel.take_sentinel(now)
        if data:
            proto.out.write(data)
            if channel.writable():
                self._schedule_flush()
            if self.on_room is not None:
                self.on_room()  # the queue has room again: bulk senders may pull more
        self._rearm_quiet()

    def _data_received(self, proto: APNsProtocol, data: bytes) -> None:
        channel = self.channel
        resolved = channel.data_received(data, self.clock.seconds())
        if channel.broken is not None:
            log.error("{name}: dropping connection: {why}", name=self.name, why=channel.broken)
            proto.out.abortConnection()
        elif channel.error is not None:
            err = channel.error
            log.info(
                "{name}: error response {status} ({status_name}) for identifier {ident}",
                name=self.name,
                status=err.status,
                status_name=err.name,
                ident=err.identifier,
            )
            # Apple closes after an error; close our side too so a gateway that doesn't
            # cannot wedge the connection.
            proto.close()
        self._deliver(resolved)
        self._rearm_quiet()

    # --- confirmation timer -------------------------------------------------------------

    def _rearm_quiet(self) -> None:
        deadline = self.channel.next_deadline()
        timer = self._quiet_timer
        if deadline is None:
            timer.cancel()
            return
        when = timer.when()
        if when is not None and when <= deadline + 0.001:
            return
        timer.start(max(0.0, deadline - self.clock.seconds()) + 0.001)

    def _quiet_fired(self) -> None:
        was_full = self.channel.window_full()
        self._deliver(self.channel.confirm_quiet(self.clock.seconds()))
        if was_full or self.channel.queue or self.channel.isolating:
            self._schedule_flush()
        self._rearm_quiet()

    # --- results ------------------------------------------------------------------------

    def _deliver(self, resolved: list[Resolution]) -> None:
        if self.unavailable is not None and self.channel.accepted_here:
            self.unavailable = None  # the gateway confirmed something: TLS works again
        name = self.name
        for item, result in resolved:
            deliver(item.handle, result, name)
        if resolved:
            if self.on_room is not None:
                self.on_room()
            self._check_drained()
            if not self.channel.pending():
                self._queue_time_timer.cancel()

    def _check_drained(self) -> None:
        if self._drained and self.channel.pending() == 0:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def _give_up_draining(self) -> None:
        log.warn(
            "{name}: stop timeout with {n} notifications pending; finishing them",
            name=self.name,
            n=self.channel.pending(),
        )
        self._deliver(self.channel.fail_all("client stopped", "stopped", self.clock.seconds()))
        self._check_drained()

    def _close(self, _: object = None) -> Deferred[None]:
        self.phase = Phase.CLOSED
        self._timers.cancel_all()
        attempt, self._connect_attempt = self._connect_attempt, None
        if attempt is not None and self.proto is None:
            # Still connecting (e.g. stopped on timeout before the gateway answered): cancel
            # the attempt, or a connection would open after stop() has fired.
            attempt.cancel()
        if self.proto is None:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed.append(closed)
        self.proto.close()
        return closed

    def _fire_closed(self) -> None:
        waiting, self._closed = self._closed, []
        for d in waiting:
            d.callback(None)


class BinaryClient:
    """Send notifications over the legacy binary protocol, on one or more connections.

    ``send`` validates before queueing (raising a typed
    :class:`~txapns.core.errors.ValidationError` or :class:`QueueFullError`) and returns a
    Deferred that fires exactly once with a :class:`Result`. Notifications are sharded by
    device token, so the order of notifications to one device is kept.

    A notification not written within ``max_queue_time`` seconds of ``send`` (no connection
    can be made, or the connection never got to it) is finished rejected with
    ``local="unreachable"`` (the reason gives the failed connection attempts and the last
    error) or ``"queue-time"``, unknown if an earlier attempt may have delivered it; ``None``
    sets no limit.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        *,
        connections: int = 1,
        config: ChannelConfig | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        max_tls_failures: int = 3,
        sentinel_on_drain: bool = True,
        hold_when_unavailable: bool = False,
        max_queue_time: float | None = DEFAULT_MAX_QUEUE_TIME,
    ) -> None:
        """``hold_when_unavailable``: when TLS fails ``max_tls_failures`` times in a row, keep
        the queue and reconnect with backoff (:attr:`unavailable` says why) instead of
        rejecting it (``local="tls"``), as :class:`~txapns.http2.HTTP2Client` does."""
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.clock = clock
        self.counters = Counters()
        self.config = config or ChannelConfig()
        rng = rng or random.Random()
        self.factories = [
            APNsClientFactory(
                clock,
                endpoint,
                config=self.config,
                counters=self.counters,
                backoff=backoff,
                rng=rng,
                max_tls_failures=max_tls_failures,
                sentinel_on_drain=sentinel_on_drain,
                name=f"binary[{i}]",
                on_room=self._room_freed,
                hold_when_unavailable=hold_when_unavailable,
                max_queue_time=max_queue_time,
            )
            for i in range(connections)
        ]
        self._feeders: list[_BulkFeeder] = []
        self.stopped = False

    @classmethod
    def unknown_policy(cls, policy: str) -> UnknownPolicy:
        return UnknownPolicy(policy)

    @property
    def started(self) -> bool:
        """``start`` was called (its connection slots hold that state)."""
        return self.factories[0].started

    def start(self) -> None:
        for f in self.factories:
            f.start()

    def _shard(self, notification: Notification) -> APNsClientFactory:
        factories = self.factories
        if len(factories) == 1:
            return factories[0]
        return factories[int.from_bytes(notification.token[-4:], "big") % len(factories)]

    def send(self, notification: Notification) -> Deferred[Result]:
        d: Deferred[Result] = Deferred()
        self._submit(notification, d)
        return d

    def send_to(self, notification: Notification, on_result: ResultCallback) -> None:
        """Like :meth:`send` (same errors), but the result goes to ``on_result`` instead of
        a Deferred; an exception it raises is logged, not propagated."""
        self._submit(notification, on_result)

    def _submit(
        self, notification: Notification, handle: Deferred[Result] | ResultCallback
    ) -> None:
        validate_binary(notification)
        if self.stopped:
            raise ClientStoppedError("the client was stopped")
        self._shard(notification).submit(notification, handle)

    def send_many(
        self,
        notifications: Iterable[Notification],
        on_result: ResultCallback | None = None,
        *,
        confirm_tail: bool = True,
    ) -> Deferred[Counters]:
        """Stream an iterable through the client without holding all of it.

        Notifications are pulled from the iterable only while the queues have room, and each
        result goes to ``on_result`` as it arrives (no Deferred per notification). Fires with
        this run's counters once every pulled notification has a result. An invalid
        notification is finished as rejected (``local="invalid"``) rather than stopping the run.
        With ``confirm_tail`` the client drains once the iterable is exhausted, so the last
        notifications are confirmed by the sentinel instead of waiting out the quiet window.
        """
        feeder = _BulkFeeder(self, iter(notifications), on_result, confirm_tail)
        self._feeders.append(feeder)
        feeder.pump()
        return feeder.done

    sendMany = send_many

    def pending(self) -> int:
        return sum(f.channel.pending() for f in self.factories)

    def health(self) -> dict[str, object]:
        """Connection state, for ``/healthz`` (as :meth:`HTTP2Client.health
        <txapns.http2.HTTP2Client.health>`)."""
        factories = self.factories
        return {
            "protocol": "binary",
            "connections": sum(1 for f in factories if f.proto is not None),
            "connections_total": len(factories),
            "connecting": sum(1 for f in factories if f.connecting),
            "pending": self.pending(),
            "tls_failures": sum(f.tls_failures for f in factories),
            "unavailable": self.unavailable,
            "stopped": self.stopped,
        }

    @property
    def unavailable(self) -> str | None:
        """Why a connection cannot send now (TLS keeps failing), or ``None``."""
        return next((f.unavailable for f in self.factories if f.unavailable), None)

    def drain(self) -> Deferred[None]:
        from twisted.internet.defer import gatherResults

        return gatherResults([f.drain() for f in self.factories]).addCallback(lambda _: None)

    def stop(self, timeout: float = 10.0) -> Deferred[None]:
        from twisted.internet.defer import gatherResults

        self.stopped = True
        return gatherResults([f.stop(timeout) for f in self.factories]).addCallback(lambda _: None)

    def _room_freed(self) -> None:
        for feeder in list(self._feeders):
            feeder.pump()

    def _feeder_done(self, feeder: _BulkFeeder) -> None:
        self._feeders.remove(feeder)


class _BulkFeeder(BulkFeeder):
    """Pulls from an iterator into the client while there is queue room (producer/consumer)."""

    client: BinaryClient

    def __init__(
        self,
        client: BinaryClient,
        source: Iterator[Notification],
        on_result: ResultCallback | None,
        confirm_tail: bool = False,
    ) -> None:
        super().__init__(client, source, on_result)
        self.confirm_tail = confirm_tail
        self._held: Notification | None = None

    def _pump(self) -> None:
        client = self.client
        factories = client.factories
        single = factories[0] if len(factories) == 1 else None
        handle = self._result
        source = self.source
        while True:
            n = self._held
            if n is None:
                n = next(source, None)
                if n is None:
                    self.exhausted = True
                    if self.confirm_tail and self.outstanding:
                        self.client.drain()
                    return
            else:
                self._held = None
            factory = single or client._shard(n)
            try:
                validate_binary(n)
                factory.submit(n, handle)
            except QueueFullError:
                self._held = n
                return
            except ClientStoppedError as e:
                self._local_failure(n, str(e), "stopped")
                continue
            except Exception as e:
                self._local_failure(n, str(e), "invalid")
                continue
            self.counters.submitted += 1
            self.outstanding += 1


__all__ = [
    "APNsClientFactory",
    "APNsProtocol",
    "BinaryClient",
    "ChannelConfig",
    "UnknownPolicy",
]

if TYPE_CHECKING:  # the old spellings, kept working (deprecated); see txapns.core._deprecate
    APNSProtocol = APNsProtocol
    APNSClientFactory = APNsClientFactory
else:
    __getattr__ = renamed(
        __name__, {"APNSProtocol": APNsProtocol, "APNSClientFactory": APNsClientFactory}
    )
