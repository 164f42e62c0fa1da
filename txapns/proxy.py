"""Connecting through an HTTP CONNECT proxy: :class:`HTTPConnectEndpoint`.

The endpoint connects to the proxy with another endpoint, asks it for a tunnel to the
target (``CONNECT host:port``, with ``Proxy-Authorization: Basic`` when credentials are
given) and, once the proxy answers 2xx, builds the caller's protocol on the tunnel. Wrapped
with :func:`twisted.internet.endpoints.wrapClientTLS`, TLS runs end to end through the
tunnel: the certificate and host name checked are the target's (APNs'), never the proxy's::

    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    from txapns.core.proxy import parse_proxy_url
    from txapns.proxy import HTTPConnectEndpoint

    proxy = parse_proxy_url("http://user:secret@proxy.example.com:3128")
    tunnel = HTTPConnectEndpoint(
        HostnameEndpoint(reactor, proxy.host, proxy.port),
        "api.push.apple.com", 443,
        auth=proxy.credentials, clock=reactor,
    )
    endpoint = wrapClientTLS(client_tls_options("api.push.apple.com", alpn=[b"h2"]), tunnel)

The request and the parsing of the answer are sans-IO, in :mod:`txapns.core.proxy`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import HostnameAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._timers import Timer
from .core.proxy import (
    DEFAULT_MAX_HEAD,
    ConnectResponseParser,
    ProxyCredentials,
    ProxyError,
    ProxyTimeoutError,
    TunnelRefused,
    build_connect_request,
    format_authority,
)

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "HTTPConnectEndpoint"]

log = Logger()

#: Seconds to reach the proxy and get its answer to CONNECT, by default.
DEFAULT_CONNECT_TIMEOUT = 30.0


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    """An endpoint to ``host:port`` through the HTTP proxy that ``proxy_endpoint`` reaches.

    :param proxy_endpoint: connects to the proxy (e.g. a ``HostnameEndpoint``).
    :param host: the target's host name (or IP address): the proxy resolves it.
    :param port: the target's port.
    :param auth: credentials for ``Proxy-Authorization: Basic``; never logged.
    :param timeout: seconds to reach the proxy and get its answer; ``None`` for no limit.
    :param clock: schedules the timeout; the global reactor (imported when needed) if
        ``None``.
    :param max_head: the largest answer head accepted from the proxy.
    :param proxy_name: how errors name the proxy (``host:port``, or its URL with the password
        masked: :meth:`~txapns.core.proxy.ProxyURL.redacted`); never give the password.

    ``connect(factory)`` fires with the protocol ``factory`` built, once the tunnel is
    established; the protocol's transport is the connection to the proxy, which carries the
    target's bytes from then on (any bytes that came right after the proxy's answer are
    delivered to the protocol first). It fails with a :class:`~txapns.core.proxy.ProxyError`:
    :class:`~txapns.core.proxy.ProxyRefusedError` for a non-2xx answer
    (:class:`~txapns.core.proxy.ProxyAuthenticationError` for 407: credentials missing or
    wrong), :class:`~txapns.core.proxy.ProxyResponseError` for an answer
    that is not HTTP, :class:`~txapns.core.proxy.ProxyClosedError`,
    :class:`~txapns.core.proxy.ProxyTimeoutError`, or a plain ``ProxyError`` when the proxy
    cannot be reached. Cancelling the ``Deferred`` cancels the connection attempt or aborts
    the connection to the proxy.
    """

    def __init__(
        self,
        proxy_endpoint: IStreamClientEndpoint,
        host: str,
        port: int,
        *,
        auth: ProxyCredentials | None = None,
        timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        clock: IReactorTime | None = None,
        max_head: int = DEFAULT_MAX_HEAD,
        proxy_name: str | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive (or None)")
        self.proxy_endpoint = proxy_endpoint
        self.host = host
        self.port = port
        self.target = format_authority(host, port)
        self.timeout = timeout
        self.max_head = max_head
        self.proxy_name = proxy_name
        self._clock = clock
        self._request = build_connect_request(host, port, credentials=auth)

    def __repr__(self) -> str:
        return f"<HTTPConnectEndpoint to {self.target} via {self.proxy_endpoint!r}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect to the proxy, ask for the tunnel and connect ``protocolFactory``'s
        protocol through it."""
        clock = self._clock
        if clock is None and self.timeout is not None:
            from twisted.internet import reactor

            clock = reactor
        return _Attempt(self, protocolFactory, clock).start()


class _Attempt:
    """One connection attempt: proxy connection, CONNECT, answer."""

    def __init__(
        self,
        endpoint: HTTPConnectEndpoint,
        factory: IProtocolFactory,
        clock: IReactorTime | None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.clock = clock
        self.result: Deferred[IProtocol] = Deferred(self._cancel)
        self.finished = False
        self.connecting: Deferred[Any] | None = None
        self.tunnel: _TunnelProtocol | None = None
        #: The tunnel's time limit (``endpoint.timeout``), when there is a clock.
        self.timer = None if clock is None else Timer(clock, self._timed_out)

    def start(self) -> Deferred[IProtocol]:
        endpoint = self.endpoint
        if endpoint.timeout is not None and self.timer is not None:
            self.timer.start(endpoint.timeout)
        log.debug("CONNECT {target}: connecting to the proxy", target=endpoint.target)
        try:
            d = endpoint.proxy_endpoint.connect(_TunnelFactory(self))
        except Exception as e:
            self._fail(ProxyError(f"cannot connect to the proxy: {e}"))
            return self.result
        if not d.called:
            self.connecting = d
        d.addCallbacks(self._proxy_connected, self._proxy_failed)
        return self.result

    # --- outcomes ----------------------------------------------------------------------

    def _finish(self) -> bool:
        """Mark the attempt finished; false if it already was."""
        if self.finished:
            return False
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        return True

    def _fail(self, error: BaseException) -> None:
        if self._finish():
            self.result.errback(Failure(error))

    def _teardown(self) -> None:
        """Stop connecting to the proxy, or drop the connection to it."""
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.cancel()
        tunnel = self.tunnel
        if tunnel is not None and tunnel.transport is not None:
            _abort(tunnel.transport)

    def _cancel(self, d: Deferred[IProtocol]) -> None:
        # The Deferred then fails with CancelledError on its own.
        if self._finish():
            log.debug("CONNECT {target}: cancelled", target=self.endpoint.target)
            self._teardown()

    def _timed_out(self) -> None:
        if self.finished:
            return
        error = ProxyTimeoutError(
            f"no tunnel to {self.endpoint.target} through the proxy within "
            f"{self.endpoint.timeout:g} s"
        )
        self._finish()
        self._teardown()
        self.result.errback(Failure(error))

    def _proxy_connected(self, protocol: object) -> None:
        self.connecting = None

    def _proxy_failed(self, reason: Failure) -> None:
        self.connecting = None
        if self.finished:
            return  # cancelled or timed out: the result has failed already
        error = ProxyError(f"cannot connect to the proxy: {reason.getErrorMessage()}")
        error.__cause__ = reason.value
        self._fail(error)

    def refused(self, answer: TunnelRefused) -> None:
        error = answer.error(self.endpoint.target, self.endpoint.proxy_name)
        log.debug(
            "CONNECT {target}: refused by the proxy ({status} {reason})",
            target=self.endpoint.target,
            status=answer.status,
            reason=answer.reason,
        )
        self._fail(error)

    def established(self, tunnel: _TunnelProtocol, leftover: bytes) -> None:
        """The proxy answered 2xx: build the caller's protocol on the tunnel."""
        if not self._finish():
            return
        transport = tunnel.transport
        assert transport is not None
        endpoint = self.endpoint
        log.debug("CONNECT {target}: tunnel established", target=endpoint.target)
        address = HostnameAddress(endpoint.host.encode("ascii"), endpoint.port)
        try:
            protocol = self.factory.buildProtocol(address)
            if protocol is None:
                raise NoProtocol()
            # Connected from now on: it is told when the connection is lost, whatever happens.
            tunnel.wrapped = protocol
            protocol.makeConnection(transport)
        except Exception:
            failure = Failure()
            _abort(transport)
            self.result.errback(failure)
            return
        self.result.callback(protocol)
        if leftover and not tunnel.lost:
            protocol.dataReceived(leftover)


def _abort(transport: Any) -> None:
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


class _TunnelProtocol(Protocol):
    """Speaks CONNECT to the proxy, then passes everything to and from the wrapped protocol.

    The wrapped protocol writes to the connection's transport directly.
    """

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        self.parser = ConnectResponseParser(attempt.endpoint.max_head)
        self.wrapped: IProtocol | None = None
        self.lost = False

    def connectionMade(self) -> None:
        attempt = self.attempt
        attempt.tunnel = self
        assert self.transport is not None
        if attempt.finished:
            _abort(self.transport)  # cancelled or timed out while connecting
            return
        self.transport.write(attempt.endpoint._request)

    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        attempt = self.attempt
        if attempt.finished:
            return  # refused, cancelled, timed out: the connection is being closed
        try:
            answer = self.parser.feed(data)
        except ProxyError as e:
            assert self.transport is not None
            _abort(self.transport)
            attempt._fail(e)
            return
        if answer is None:
            return
        if isinstance(answer, TunnelRefused):
            assert self.transport is not None
            self.transport.loseConnection()
            attempt.refused(answer)
            return
        attempt.established(self, answer.leftover)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        wrapped, self.wrapped = self.wrapped, None
        if wrapped is not None:
            wrapped.connectionLost(reason)
            return
        try:
            self.parser.eof(reason.getErrorMessage())
        except ProxyError as e:
            self.attempt._fail(e)


class _TunnelFactory(ClientFactory):
    """Builds the one :class:`_TunnelProtocol` of an attempt; start and stop notifications go
    to the caller's factory, as with any endpoint."""

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt

    def doStart(self) -> None:
        self.attempt.factory.doStart()

    def doStop(self) -> None:
        self.attempt.factory.doStop()

    def buildProtocol(self, addr: IAddress | None) -> _TunnelProtocol:
        return _TunnelProtocol(self.attempt)
