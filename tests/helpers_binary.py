"""Shared by the binary-protocol and feedback test modules: notifications, frames
parsed independently of the product, the channel harness and hand-driven endpoints."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txapns.binary import APNsProtocol
from txapns.core.binary_channel import SENTINEL_TOKEN, BinaryChannel, ChannelConfig
from txapns.core.notification import Notification
from txapns.core.result import Outcome, Result
from txapns.testing.binary_gateway import FakeGateway, listen_gateway
from txapns.testing.pki import TestPKI, server_tls_options


def note(i: int) -> Notification:
    return Notification.create(i.to_bytes(32, "big"), {"aps": {"alert": f"n{i}"}, "i": i})


def parse_frames(data: bytes) -> list[tuple[int, int]]:
    """(identifier, notification index) of each command-2 frame, parsed independently."""
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos] == 2
        (length,) = struct.unpack_from(">I", data, pos + 1)
        body = data[pos + 5 : pos + 5 + length]
        items = {}
        j = 0
        while j < len(body):
            item_id, item_len = struct.unpack_from(">BH", body, j)
            items[item_id] = body[j + 3 : j + 3 + item_len]
            j += 3 + item_len
        ident = struct.unpack(">I", items[3])[0]
        token = items[1]
        out.append((ident, -1 if token == SENTINEL_TOKEN else int.from_bytes(token, "big")))
        pos += 5 + length
    return out


def error(status: int, ident: int) -> bytes:
    return struct.pack(">BBI", 8, status, ident)


class Harness:
    def __init__(self, **config: object) -> None:
        self.channel = BinaryChannel(ChannelConfig(**config))  # type: ignore[arg-type]
        self.results: dict[int, list[Result]] = {}
        self.now = 0.0

    def submit(self, *indexes: int) -> None:
        for i in indexes:
            self.channel.submit(note(i), i, self.now)

    def record(self, resolved: list[tuple[object, Result]]) -> None:
        for item, result in resolved:
            handle = item.handle  # type: ignore[attr-defined]
            self.results.setdefault(handle, []).append(result)

    def connect_and_write(self) -> list[tuple[int, int]]:
        self.channel.connection_made()
        return self.write()

    def write(self) -> list[tuple[int, int]]:
        return parse_frames(self.channel.take_frames(self.now))

    def feed(self, data: bytes) -> None:
        self.record(self.channel.data_received(data, self.now))

    def lose(self) -> None:
        self.record(self.channel.connection_lost(self.now, "test close"))

    def outcome(self, i: int) -> Outcome:
        [result] = self.results[i]
        return result.outcome

    def check(self) -> None:
        self.channel.counters.check(self.channel.pending())


@implementer(IStreamClientEndpoint)
class StubEndpoint:
    """Records connection attempts; the test decides how each one ends."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[Protocol]]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Protocol]:
        d: Deferred[Protocol] = Deferred()
        self.attempts.append((factory, d))
        return d

    def accept(self, handshake: bool = True) -> tuple[APNsProtocol, StringTransport]:
        factory, d = self.attempts[-1]
        proto = factory.buildProtocol(None)
        assert isinstance(proto, APNsProtocol)
        transport = StringTransport()
        proto.makeConnection(transport)
        if handshake:
            proto.handshakeCompleted()
        d.callback(proto)
        return proto, transport

    def refuse(self) -> None:
        self.attempts[-1][1].errback(ConnectionRefusedError())


class RawServer(Protocol):
    """Writes fixed bytes, then closes."""

    data = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)
        self.transport.loseConnection()


def raw_server(data: bytes) -> Factory:
    return Factory.forProtocol(type("Raw", (RawServer,), {"data": data}))


@implementer(IStreamClientEndpoint)
class ManualEndpoint:
    """Connection attempts that the test completes by hand (a slow feedback service)."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[Protocol]]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Protocol]:
        d: Deferred[Protocol] = Deferred()
        self.attempts.append((factory, d))
        return d

    def serve(self, index: int, data: bytes) -> None:
        """Connect attempt ``index`` to a server that writes ``data`` and closes."""
        factory, d = self.attempts[index]
        client = factory.buildProtocol(iosim.FakeAddress())
        server = raw_server(data).buildProtocol(iosim.FakeAddress())
        assert client is not None and server is not None
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False
        )
        d.callback(client)
        pump.flush()


def tls_gateway(
    case: SynchronousTestCase, reactor: Any, pki: TestPKI
) -> tuple[FakeGateway, IListeningPort]:
    """A fake binary gateway on a free loopback port with ``pki``'s server certificate,
    stopped (connections closed) after the test."""
    gateway = FakeGateway(reactor)
    listening = listen_gateway(reactor, gateway, tls_options=server_tls_options(pki))
    case.addCleanup(listening.stopListening)
    case.addCleanup(gateway.stop)
    case.addCleanup(gateway.when_all_closed)
    return gateway, listening
