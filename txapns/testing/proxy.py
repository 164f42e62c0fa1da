"""A fake HTTP CONNECT proxy for tests: :class:`FakeConnectProxy`.

It accepts ``CONNECT host:port``, optionally requires ``Proxy-Authorization: Basic`` (407
with a ``Proxy-Authenticate`` challenge otherwise), records every request, connects to the
target (or to where :meth:`FakeConnectProxy.route` sends it) and relays bytes both ways until
either side closes. It can be told to refuse (:meth:`FakeConnectProxy.refuse`). It never
looks inside the tunnel: TLS runs between the client and the target.

::

    proxy = FakeConnectProxy(reactor, credentials=("user", "secret"))
    proxy.route("api.sandbox.push.apple.com", 443, to=("127.0.0.1", apns_port))
    port = listen_proxy(reactor, proxy)
    ...
    assert proxy.targets == ["api.sandbox.push.apple.com:443"]
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IReactorTCP,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._idle import IdleWaiters

__all__ = ["ConnectRecord", "FakeConnectProxy", "listen_proxy"]

log = Logger()

_MAX_HEAD = 16 * 1024
_REQUEST_LINE = re.compile(rb"\A([A-Z]+) (\S+) HTTP/1\.[0-9]\Z")
_TARGET = re.compile(r"\A(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]+)):([0-9]{1,5})\Z")


@dataclass
class ConnectRecord:
    """One request the proxy received, and what it answered."""

    method: str
    #: The request target as sent (``host:port`` for CONNECT).
    target: str
    #: The ``Host`` header, if any.
    host_header: str | None
    #: The user name of a ``Proxy-Authorization: Basic`` header (never the password).
    username: str | None
    #: Whether the credentials were right (``True`` when none are required).
    authorized: bool
    #: The status answered; 200 once the tunnel is up.
    status: int = 0


class FakeConnectProxy:
    """Shared state and configuration of the fake proxy; see the module docstring.

    :param reactor: makes the connections to the targets (unless ``connect`` is given).
    :param credentials: ``(user, password)`` every CONNECT must present; ``None``: none.
    :param connect: makes the endpoint for a target ``(host, port)``; default a
        ``HostnameEndpoint`` (targets are only ever on loopback in the tests).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        credentials: tuple[str, str] | None = None,
        connect: Callable[[str, int], IStreamClientEndpoint] | None = None,
    ) -> None:
        self.reactor = reactor
        self.credentials = credentials
        self._connect = connect
        #: Every request received, in order.
        self.requests: list[ConnectRecord] = []
        #: ``(status, reason)`` answered to every CONNECT while set (see :meth:`refuse`).
        self.refusal: tuple[int, str] | None = None
        self.routes: dict[tuple[str, int], tuple[str, int]] = {}
        #: Open connections (client and target sides).
        self.connections: set[Protocol] = set()
        self._idle = IdleWaiters()

    # --- configuration ------------------------------------------------------------------

    def route(self, host: str, port: int, *, to: tuple[str, int]) -> None:
        """Connect tunnels asked for ``host:port`` to ``to`` instead (e.g. a loopback port)."""
        self.routes[(host.lower(), port)] = to

    def refuse(self, status: int = 403, reason: str = "Forbidden") -> None:
        """Answer every CONNECT with ``status`` from now on (until :meth:`accept`)."""
        self.refusal = (status, reason)

    def accept(self) -> None:
        """Stop refusing (see :meth:`refuse`)."""
        self.refusal = None

    # --- records ------------------------------------------------------------------------

    @property
    def targets(self) -> list[str]:
        """The targets of the tunnels established, in order (``host:port`` as requested)."""
        return [r.target for r in self.requests if r.status == 200]

    def factory(self) -> ServerFactory:
        """A protocol factory for ``listenTCP`` or in-memory connections."""
        return _ProxyFactory(self)

    def drop_connections(self) -> None:
        """Abort every open connection."""
        for proto in list(self.connections):
            transport: Any = proto.transport
            if transport is not None:
                transport.abortConnection()

    def when_no_connections(self) -> Deferred[None]:
        """A Deferred that fires once no connection is open (at once if none is)."""
        return self._idle.wait(not self.connections)

    # --- helpers for the protocols ------------------------------------------------------

    def _opened(self, proto: Protocol) -> None:
        self.connections.add(proto)

    def _closed(self, proto: Protocol) -> None:
        self.connections.discard(proto)
        if not self.connections:
            self._idle.fire()

    def _endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        host, port = self.routes.get((host.lower(), port), (host, port))
        if self._connect is not None:
            return self._connect(host, port)
        from twisted.internet.endpoints import HostnameEndpoint

        return HostnameEndpoint(self.reactor, host, port)

    def _authorize(self, header: str | None) -> tuple[bool, str | None]:
        """Whether ``Proxy-Authorization: header`` is right, and the user name it gives."""
        username = None
        password = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    decoded = ""
                if ":" in decoded:
                    username, password = decoded.split(":", 1)
        if self.credentials is None:
            return True, username
        return (username, password) == self.credentials, username


class _ProxyFactory(ServerFactory):
    def __init__(self, proxy: FakeConnectProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: IAddress | None) -> _ClientSide:
        return _ClientSide(self.proxy)


class _ClientSide(Protocol):
    """The proxy's side of a client connection: reads the request head, then relays."""

    def __init__(self, proxy: FakeConnectProxy) -> None:
        self.proxy = proxy
        self.buffer = b""
        self.state = "head"  # head → connecting → relaying, or → closed
        self.peer: _TargetSide | None = None
        self._record: ConnectRecord | None = None

    def connectionMade(self) -> None:
        self.proxy._opened(self)

    def dataReceived(self, data: bytes) -> None:
        if self.state == "relaying":
            assert self.peer is not None and self.peer.transport is not None
            self.peer.transport.write(data)
            return
        if self.state == "closed":
            return
        self.buffer += data
        if self.state == "head":
            self._read_head()

    def _read_head(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD:
                self._answer(431, "Request Header Fields Too Large")
            return
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        lines = head.split(b"\r\n")
        m = _REQUEST_LINE.match(lines[0])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                m = None
                break
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        if m is None:
            self._answer(400, "Bad Request")
            return
        method, target = m.group(1).decode("ascii"), m.group(2).decode("latin-1")
        authorized, username = self.proxy._authorize(headers.get("proxy-authorization"))
        record = ConnectRecord(method, target, headers.get("host"), username, authorized)
        self.proxy.requests.append(record)
        t = _TARGET.match(target)
        if method != "CONNECT":
            self._answer(405, "Method Not Allowed", record, b"Allow: CONNECT\r\n")
        elif not authorized:
            challenge = b'Proxy-Authenticate: Basic realm="txapns fake proxy"\r\n'
            self._answer(407, "Proxy Authentication Required", record, challenge)
        elif self.proxy.refusal is not None:
            self._answer(*self.proxy.refusal, record)
        elif t is None or not 0 < int(t.group(3)) < 65536:
            self._answer(400, "Bad Request", record)
        else:
            self._open(record, t.group(1) or t.group(2), int(t.group(3)))

    def _open(self, record: ConnectRecord, host: str, port: int) -> None:
        self.state = "connecting"
        client: Any = self.transport
        client.pauseProducing()  # until the target answers
        log.debug("fake proxy: CONNECT {target}", target=record.target)
        self._record = record

        def failed(reason: Failure) -> None:
            log.debug(
                "fake proxy: {target} unreachable: {why}",
                target=record.target,
                why=reason.getErrorMessage(),
            )
            if self.state == "connecting":
                self._answer(502, "Bad Gateway", record)

        self.proxy._endpoint(host, port).connect(_TargetFactory(self)).addErrback(failed)

    def target_connected(self, peer: _TargetSide) -> None:
        if self.state != "connecting" or self.transport is None:
            assert peer.transport is not None
            peer.transport.loseConnection()
            return
        self.peer = peer
        assert self._record is not None
        self._record.status = 200
        self.state = "relaying"
        client: Any = self.transport
        target: Any = peer.transport
        client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        # Flow control both ways: a side that cannot write fast enough pauses the other.
        client.registerProducer(target, True)
        target.registerProducer(client, True)
        early, self.buffer = self.buffer, b""
        if early:
            target.write(early)
        client.resumeProducing()

    def target_lost(self) -> None:
        if self.transport is not None and self.state != "closed":
            _close(self.transport)

    def _answer(
        self, status: int, reason: str, record: ConnectRecord | None = None, extra: bytes = b""
    ) -> None:
        if record is not None:
            record.status = status
        self.state = "closed"
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n"
            % (status, reason.encode("latin-1"), extra)
        )
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.state = "closed"
        peer, self.peer = self.peer, None
        if peer is not None and peer.transport is not None:
            _close(peer.transport)
        self.proxy._closed(self)


def _close(transport: Any) -> None:
    # A transport with a registered producer closes only once the producer is unregistered.
    transport.unregisterProducer()
    transport.loseConnection()


class _TargetSide(Protocol):
    """The proxy's connection to a target."""

    def __init__(self, client: _ClientSide) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.proxy._opened(self)
        self.client.target_connected(self)

    def dataReceived(self, data: bytes) -> None:
        transport = self.client.transport
        if transport is not None and self.client.state == "relaying":
            transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.target_lost()
        self.client.proxy._closed(self)


class _TargetFactory(Factory):
    def __init__(self, client: _ClientSide) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> _TargetSide:
        return _TargetSide(self.client)


def listen_proxy(
    reactor: IReactorTCP,
    proxy: FakeConnectProxy,
    *,
    port: int = 0,
    interface: str = "127.0.0.1",
) -> IListeningPort:
    """Serve ``proxy`` on ``interface:port`` (0 = any free port; see ``getHost().port``)."""
    return reactor.listenTCP(port, proxy.factory(), interface=interface)
