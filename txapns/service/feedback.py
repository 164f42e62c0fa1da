"""Reading the binary feedback service for the service's binary apps.

Apple's legacy feedback service (``feedback.push.apple.com:2196``, sandbox
``feedback.sandbox.push.apple.com:2196``) lists the device tokens whose app was removed, and
forgets them once read. For every app with ``protocol = "binary"`` the service reads it with
the app's certificate every ``feedback_interval`` seconds (3600 by default; 0: never), the
first time at start, and records what it read with
:meth:`Engine.add_feedback <txapns.service.engine.Engine.add_feedback>`: the tokens appear in
the invalid-token feed with ``source: "feedback"`` and are posted to the webhook.

A read never overlaps the previous one (which would split Apple's one-shot list between two
readers): the next one is scheduled only once the previous one was read *and* recorded. A
read that takes longer than ``timeout`` is cut (what it read so far is still recorded). On
stop, the timer is cancelled, a connection attempt is cancelled, and a read in progress gets
up to ``stop_timeout`` seconds to finish before it is cut; :meth:`FeedbackPolling.stop` fires
once its tokens are recorded, so the engine can close the spool after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._timers import Timer
from ..core.binary import FeedbackTuple
from ..endpoints import tls_endpoint
from ..feedback import FeedbackProtocol
from .config import AppConfig, CertificateCredentials, ConfigError, ServiceConfig
from .senders import load_certificate

log = Logger()

#: ``(token hex, feedback time)`` pairs, as :meth:`Engine.add_feedback` takes them.
Entries = Sequence[tuple[str, float | None]]
#: Where the tokens go: ``sink(app, entries)``, e.g. ``engine.add_feedback``.
FeedbackSink = Callable[[str, Entries], "Deferred[None] | None"]


class FeedbackPolling:
    """Reads one app's feedback service every ``interval`` seconds, never two reads at once."""

    def __init__(
        self,
        clock: IReactorTime,
        app: str,
        endpoint: IStreamClientEndpoint,
        *,
        interval: float = 3600.0,
        timeout: float = 60.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive (0 means: do not make a poller)")
        self.clock = clock
        self.app = app
        self.endpoint = endpoint
        self.interval = interval
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.running = False
        #: Reads started, reads that failed, tokens recorded.
        self.polls = 0
        self.failures = 0
        self.tokens = 0
        #: When the last read finished (clock seconds), and why it failed if it did.
        self.last_poll: float | None = None
        self.last_error: str | None = None
        self._sink: FeedbackSink | None = None
        #: The next read, armed once the current one is over.
        self._next = Timer(clock, self._poll)
        #: A read's time limit (``timeout``; ``stop_timeout`` once stopping).
        self._cut_timer = Timer(clock, self._cut)
        self._current: Deferred[None] | None = None
        self._connecting: Deferred[Any] | None = None
        self._proto: FeedbackProtocol | None = None
        self._stop_waiters: list[Deferred[None]] = []

    @property
    def polling(self) -> bool:
        """A read (or the recording of its tokens) is in progress."""
        return self._current is not None

    def start(self, sink: FeedbackSink, *, now: bool = True) -> None:
        """Read now (or after one interval), then every ``interval`` seconds; give the
        tokens of each read to ``sink(app, entries)``."""
        self._sink = sink
        self.running = True
        if now:
            self._poll()
        else:
            self._schedule()

    def stop(self) -> Deferred[None]:
        """Cancel the timer; fires once a read in progress is over and recorded."""
        self.running = False
        self._next.cancel()
        if self._current is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if self._connecting is not None:
            self._connecting.cancel()  # not connected yet: nothing was read
        elif self._proto is not None:  # reading (else: recording what was read)
            deadline = self.clock.seconds() + self.stop_timeout
            cut_at = self._cut_timer.when()
            if cut_at is None or cut_at > deadline:
                self._arm_cut(self.stop_timeout)
        return d

    def health(self) -> dict[str, object]:
        return {
            "interval": self.interval,
            "polls": self.polls,
            "failures": self.failures,
            "tokens": self.tokens,
            "polling": self.polling,
            "last_poll": self.last_poll,
            "last_error": self.last_error,
        }

    # -- one read --

    def _schedule(self) -> None:
        if self.running:
            self._next.start_unless_armed(self.interval)

    def _poll(self) -> None:
        if self._current is not None or not self.running:
            return
        self.polls += 1
        entries: list[tuple[str, float | None]] = []

        def on_tuple(t: FeedbackTuple) -> None:
            entries.append((t.token.hex(), float(t.timestamp)))

        proto = FeedbackProtocol(on_tuple)
        self._proto = proto
        try:
            connecting: Deferred[Any] = self.endpoint.connect(Factory.forProtocol(lambda: proto))
        except Exception:
            connecting = fail()
        self._connecting = connecting
        done: Deferred[None] = Deferred()
        self._current = done
        self._arm_cut(self.timeout)
        connecting.addCallback(self._connected, proto)
        connecting.addCallbacks(self._read, self._read_failed)
        connecting.addCallback(lambda _: self._record(entries))
        connecting.addErrback(self._record_failed)
        connecting.addBoth(self._finished, done)

    def _connected(self, _: object, proto: FeedbackProtocol) -> Deferred[list[FeedbackTuple]]:
        self._connecting = None
        return proto.done

    def _arm_cut(self, delay: float) -> None:
        self._cut_timer.start(delay)

    def _cancel_cut(self) -> None:
        self._cut_timer.cancel()

    def _cut(self) -> None:
        """The read took too long (or the service is stopping): close it; what was read
        so far is still recorded."""
        if self._connecting is not None:
            self._connecting.cancel()
        elif self._proto is not None and self._proto.transport is not None:
            log.warn("feedback for {app}: cutting the read short", app=self.app)
            transport = self._proto.transport
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()

    def _read(self, tuples: list[FeedbackTuple]) -> None:
        self._cancel_cut()
        self._proto = None
        self.last_error = None
        log.info("feedback for {app}: {count} dead tokens", app=self.app, count=len(tuples))

    def _read_failed(self, failure: Failure) -> None:
        self._cancel_cut()
        self._connecting = None
        self._proto = None
        self.failures += 1
        self.last_error = failure.getErrorMessage() or type(failure.value).__name__
        log.warn(
            "feedback for {app}: the read failed ({why}); tokens read before are kept",
            app=self.app,
            why=self.last_error,
        )

    def _record(self, entries: Entries) -> Deferred[None] | None:
        if not entries or self._sink is None:
            return None
        d = maybeDeferred(self._sink, self.app, entries)

        def recorded(_: object) -> None:
            self.tokens += len(entries)

        return d.addCallback(recorded)

    def _record_failed(self, failure: Failure) -> None:
        log.failure(
            "feedback for {app}: could not record the dead tokens read", failure, app=self.app
        )

    def _finished(self, _: object, done: Deferred[None]) -> None:
        self._cancel_cut()
        self._connecting = None
        self._proto = None
        self._current = None
        self.last_poll = self.clock.seconds()
        self._schedule()
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)
        done.callback(None)


def feedback_pollers(
    config: ServiceConfig,
    reactor: Any,
    *,
    address: Callable[[], tuple[str, int]] | None = None,
    hostname: str | None = None,
) -> dict[str, FeedbackPolling]:
    """A :class:`FeedbackPolling` per binary app (none if ``feedback_interval`` is 0), over
    TLS with the app's certificate to :meth:`AppConfig.feedback_endpoint`, or to
    ``address()`` while verifying the server certificate for ``hostname`` (the embedded fake)."""
    if config.feedback_interval <= 0:
        return {}
    return {
        app.name: FeedbackPolling(
            reactor,
            app.name,
            feedback_endpoint(app, reactor, address=address, hostname=hostname),
            interval=config.feedback_interval,
        )
        for app in config.apps
        if app.protocol == "binary"
    }


def feedback_endpoint(
    app: AppConfig,
    reactor: Any,
    *,
    address: Callable[[], tuple[str, int]] | None = None,
    hostname: str | None = None,
) -> IStreamClientEndpoint:
    """The TLS endpoint of ``app``'s feedback service, with its certificate (through the
    app's ``proxy`` if it has one, as its gateway connections)."""
    if not isinstance(app.credentials, CertificateCredentials):
        raise ConfigError(f"app {app.name!r}: the feedback service needs a certificate")
    host, port = app.feedback_endpoint()
    ca_pem = app.ca_file.read_bytes() if app.ca_file is not None else None
    return tls_endpoint(
        reactor,
        hostname or host,
        address or (lambda: (host, port)),
        certificate=load_certificate(app.credentials),
        ca_pem=ca_pem,
        proxy=app.proxy,
        proxy_from_env=app.proxy_from_env,
    )
