"""The legacy feedback service: tokens APNs reported as no longer valid.

Connect with the provider certificate, send nothing, read tuples until the service closes.
Apple clears the list once read, so each tuple is handed to the caller as it is parsed, and
a poller never runs two reads at once.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._timers import Timer
from .core.binary import FeedbackDecoder, FeedbackTuple
from .core.errors import APNsError, ProtocolError
from .credentials import as_connection_error, is_tls_failure

__all__ = ["FeedbackClient", "FeedbackPoller", "FeedbackProtocol"]

log = Logger(namespace="txapns.feedback")

TupleCallback = Callable[[FeedbackTuple], object]


class FeedbackProtocol(Protocol):
    def __init__(self, on_tuple: TupleCallback | None) -> None:
        self.decoder = FeedbackDecoder()
        self.on_tuple = on_tuple
        self.tuples: list[FeedbackTuple] = []
        self.done: Deferred[list[FeedbackTuple]] = Deferred()
        self.error: APNsError | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            tuples = self.decoder.feed(data)
        except ProtocolError as e:
            tuples = list(getattr(e, "records", []))
            self.error = e
        for t in tuples:
            self._emit(t)
        if self.error is not None:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _emit(self, t: FeedbackTuple) -> None:
        self.tuples.append(t)
        if self.on_tuple is not None:
            try:
                self.on_tuple(t)
            except Exception:
                log.failure("feedback tuple callback raised")

    def connectionLost(self, reason: Failure = Failure(Exception("closed"))) -> None:  # noqa: B008
        if self.error is None and is_tls_failure(reason):
            # The handshake or a certificate failed (an expired or revoked provider
            # certificate, say): that is not an empty feedback list.
            self.error = as_connection_error(reason)
        if self.error is None:
            try:
                self.decoder.eof()
            except ProtocolError as e:
                self.error = e
        if self.error is not None:
            self.done.errback(Failure(self.error))
        else:
            self.done.callback(self.tuples)


class FeedbackClient:
    """Reads the feedback service once per :meth:`fetch`."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def fetch(self, on_tuple: TupleCallback | None = None) -> Deferred[list[FeedbackTuple]]:
        """Fires with every tuple read (each also passed to ``on_tuple`` as it arrives); fails
        with :class:`ProtocolError` on a malformed stream (tuples before it were delivered),
        and with :class:`~txapns.core.errors.TLSFailureError` when the TLS handshake or a
        certificate fails."""
        proto = FeedbackProtocol(on_tuple)
        connected = self.endpoint.connect(Factory.forProtocol(lambda: proto))

        def read(_: object) -> Deferred[list[FeedbackTuple]]:
            return proto.done

        return connected.addCallback(read)


class FeedbackPoller:
    """Polls the feedback service every ``interval`` seconds; never overlaps itself.

    The next poll is scheduled only after the current one finished, so a slow read cannot
    start a second reader (which would split Apple's one-shot list between them).
    """

    def __init__(
        self,
        clock: IReactorTime,
        client: FeedbackClient,
        on_tuple: TupleCallback,
        interval: float = 3600.0,
    ) -> None:
        self.clock = clock
        self.client = client
        self.on_tuple = on_tuple
        self.interval = interval
        self.running = False
        self.polls = 0
        self.failures = 0
        #: The next poll, armed once the current one has finished.
        self._next = Timer(clock, self._poll)
        self._current: Deferred[list[FeedbackTuple]] | None = None

    def start(self, now: bool = True) -> None:
        self.running = True
        if now:
            self._poll()
        else:
            self._schedule()

    def stop(self) -> None:
        self.running = False
        self._next.cancel()

    def _schedule(self) -> None:
        if self.running:
            self._next.start(self.interval)

    def _poll(self) -> None:
        if self._current is not None:
            return
        self.polls += 1
        d = self.client.fetch(self.on_tuple)
        self._current = d

        def failed(f: Failure) -> None:
            self.failures += 1
            log.warn("feedback poll failed: {why}", why=f.getErrorMessage())

        def finished(_: object) -> None:
            self._current = None
            self._schedule()

        d.addCallbacks(lambda tuples: log.info("feedback: {n} tokens", n=len(tuples)), failed)
        d.addBoth(finished)
