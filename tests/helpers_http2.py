"""Shared by the HTTP/2 test modules: server frames written by hand (independent of the
product's frame encoder; golden bytes from RFC 9113 and RFC 7541), the test PKI and token
key, and the in-memory client test case (iosim and one Clock)."""

from __future__ import annotations

import random
import struct
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import INegotiated, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txapns.core.backoff import Backoff
from txapns.core.http2 import (
    ConnectionTerminated,
    H2ClientConnection,
    SettingsChanged,
)
from txapns.core.http2_policy import RetryPolicy
from txapns.core.jwt import load_signing_key
from txapns.core.notification import Notification
from txapns.core.result import Result
from txapns.credentials import ProviderToken
from txapns.http2 import APNsHTTP2Protocol, HTTP2Client
from txapns.testing.http2_server import FakeAPNsServer
from txapns.testing.memory import MemoryEndpoint
from txapns.testing.pki import make_test_pki

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)


CONTINUATION = 9


END_STREAM = ACK = 0x1


END_HEADERS = 0x4


PADDED = 0x8


PRIORITY_FLAG = 0x20


STATUS_200 = b"\x88"  # indexed :status 200 (static index 8)


STATUS_400 = b"\x8c"  # indexed :status 400 (static index 12)


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((frame_type, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def settings_frame(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, short strings (RFC 7541 §6.2.2)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


def response(stream_id: int, block: bytes = STATUS_200, *, end_stream: bool = True) -> bytes:
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream_id, block)


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) for each frame of client output (after the preface)."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        out.append((ftype, flags, sid, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data), "trailing partial frame"
    return out


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


BLOCK = b"\x83\x87\x84"  # :method POST, :scheme https, :path / — a minimal valid request


def connected(max_streams: int = 100, **kwargs: int) -> H2ClientConnection:
    """A client past the handshake: the server's SETTINGS processed, output drained."""
    conn = H2ClientConnection(**kwargs)
    conn.initiate()
    conn.data_to_send()
    events = conn.receive_data(settings_frame((3, max_streams)))
    assert [type(e) for e in events] == [SettingsChanged]
    conn.data_to_send()
    return conn


def terminated(events: list[object]) -> ConnectionTerminated:
    assert events and isinstance(events[-1], ConnectionTerminated), events
    return events[-1]


PKI = make_test_pki()


KEY = load_signing_key(PKI.token_key_p8)


KEY_ID = PKI.token_key_id


TEAM_ID = PKI.team_id


START = 1_700_000_000.0


BUNDLE = "com.example.app"


PAYLOAD = {"aps": {"alert": "hi"}}


def token(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def note(i: int, **kwargs: Any) -> Notification:
    return Notification.create(token(i), PAYLOAD, **kwargs)


class ClientTestCase(SynchronousTestCase):
    token_auth = True
    sandbox = True

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.server = FakeAPNsServer(clock=self.clock, sandbox=self.sandbox, rng=random.Random(3))
        self.server.add_token_key(KEY_ID, TEAM_ID, PKI.token_public_key)
        self.endpoint = MemoryEndpoint(self.server.factory(), self.clock)
        self.results: list[Result] = []
        self.clients: list[HTTP2Client] = []

    def make_client(self, **kwargs: Any) -> HTTP2Client:
        options: dict[str, Any] = {
            "bundle_id": BUNDLE,
            "token": ProviderToken(KEY, KEY_ID, TEAM_ID) if self.token_auth else None,
            "rng": random.Random(7),
            "backoff": Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
            "policy": RetryPolicy(
                backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
                too_many_requests_delay=5.0,
            ),
        }
        options.update(kwargs)
        client = HTTP2Client(self.clock, self.endpoint, **options)
        self.clients.append(client)
        client.start()
        self.pump()
        return client

    def check(self) -> None:
        for client in self.clients:
            client.counters.check(client.pending())
            self.assertEqual(client.pending(), client._structural_pending())

    def pump(self) -> None:
        self.endpoint.pump(self.check)

    def advance(self, seconds: float, step: float | None = None) -> None:
        """Advance the clock (in steps), pumping after each."""
        if step is None:
            step = seconds
        remaining = seconds
        self.pump()  # what is due now happens now, not after the jump
        while remaining > 1e-9:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta
            self.pump()

    def send(self, client: HTTP2Client, n: Notification) -> Deferred[Result]:
        d = client.send(n)
        d.addCallback(self._record)
        return d

    def _record(self, result: Result) -> Result:
        self.results.append(result)
        return result

    def result_of(self, d: Deferred[Result]) -> Result:
        return self.successResultOf(d)

    def stop(self, client: HTTP2Client, timeout: float = 10.0) -> None:
        d = client.stop(timeout)
        self.pump()
        for _ in range(100):
            if d.called:
                break
            self.advance(1.0)
        self.successResultOf(d)
        self.assertEqual(client.pending(), 0)
        client.counters.check(0)

    def assertNoDelayedCalls(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def accepted_ids(self) -> list[str]:
        return [a.apns_id.lower() for a in self.server.accepted]


@implementer(INegotiated)
class NegotiatedTransport(StringTransport):
    def __init__(self, protocol: bytes | None) -> None:
        super().__init__()
        self.negotiatedProtocol = protocol


@implementer(IStreamClientEndpoint)
class ALPNEndpoint:
    """A TLS-looking transport that negotiated ``alpn``; the handshake completes at once."""

    def __init__(self, alpn: bytes | None, *, complete: bool = True) -> None:
        self.alpn = alpn
        self.complete = complete
        self.protocols: list[APNsHTTP2Protocol] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        proto = protocolFactory.buildProtocol(None)
        assert isinstance(proto, APNsHTTP2Protocol)
        transport = NegotiatedTransport(self.alpn)
        proto.makeConnection(transport)
        self.protocols.append(proto)
        if self.complete:
            proto.handshakeCompleted()
        if transport.disconnecting:
            proto.connectionLost(Failure(ConnectionRefusedError("closed")))
        return succeed(proto)
