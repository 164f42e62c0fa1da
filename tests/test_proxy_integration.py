"""``HTTPConnectEndpoint``: in memory (every path of an attempt, with a fake clock), then over
real TLS on 127.0.0.1 through the fake CONNECT proxy to the fake HTTP/2 APNs and the fake
binary gateway.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import service_identity
from twisted.internet import defer
from twisted.internet.address import HostnameAddress, IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from txapns.binary import BinaryClient
from txapns.core.jwt import load_signing_key
from txapns.core.notification import Notification
from txapns.core.proxy import (
    ProxyClosedError,
    ProxyCredentials,
    ProxyError,
    ProxyRefusedError,
    ProxyResponseError,
    ProxyTimeoutError,
    parse_proxy_url,
)
from txapns.credentials import ProviderToken, client_tls_options, is_tls_failure
from txapns.http2 import HTTP2Client
from txapns.proxy import HTTPConnectEndpoint
from txapns.service.config import AppConfig, CertificateCredentials, TokenCredentials
from txapns.service.senders import make_sender
from txapns.testing.http2_server import FakeAPNsServer, listen_http2
from txapns.testing.pki import make_test_pki, server_tls_options
from txapns.testing.proxy import FakeConnectProxy, listen_proxy

from .helpers_binary import tls_gateway

PKI = make_test_pki()
KEY = load_signing_key(PKI.token_key_p8)
APNS = "api.sandbox.push.apple.com"
USER, PASSWORD = "pusher", "hunter2:@ secret"
REQUEST = b"CONNECT api.push.apple.com:443 HTTP/1.1\r\nHost: api.push.apple.com:443\r\n\r\n"


def token(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


# --- in memory ----------------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class PendingEndpoint:
    """Stands for the proxy's endpoint: each connection attempt waits for :meth:`complete`
    (or :meth:`fail`); the connection is a ``StringTransport``."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []
        self.cancelled = 0

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def cancel(d: Deferred[IProtocol]) -> None:
            self.cancelled += 1

        d: Deferred[IProtocol] = Deferred(cancel)
        self.attempts.append((protocolFactory, d))
        return d

    def complete(self) -> tuple[IProtocol, StringTransport]:
        factory, d = self.attempts[-1]
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3128))
        assert proto is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 3128))
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport

    def fail(self, error: Exception) -> None:
        self.attempts[-1][1].errback(error)


class Recorder(Protocol):
    """The wrapped protocol: records what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def connectionMade(self) -> None:
        self.events.append(("made", self.transport))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.events.append(("lost", reason.type))


class Broken(Recorder):
    """A protocol with a bug in ``connectionMade``."""

    def connectionMade(self) -> None:
        super().connectionMade()
        raise ZeroDivisionError("bug")


class RecordingFactory(Factory):
    def __init__(self, *, none: bool = False, kind: type[Recorder] = Recorder) -> None:
        self.none = none
        self.kind = kind
        self.addresses: list[IAddress | None] = []
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: IAddress | None) -> Recorder | None:
        self.addresses.append(addr)
        if self.none:
            return None
        proto = self.kind()
        self.built.append(proto)
        return proto


class MemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy = PendingEndpoint()
        self.factory = RecordingFactory()

    def endpoint(self, **options: Any) -> HTTPConnectEndpoint:
        options.setdefault("clock", self.clock)
        return HTTPConnectEndpoint(self.proxy, "api.push.apple.com", 443, **options)

    def start(self, **options: Any) -> tuple[Deferred[IProtocol], IProtocol, StringTransport]:
        d = self.endpoint(**options).connect(self.factory)
        tunnel, transport = self.proxy.complete()
        self.assertNoResult(d)
        return d, tunnel, transport

    def test_request_then_tunnel_then_leftover_then_relay(self) -> None:
        d, tunnel, transport = self.start(auth=ProxyCredentials("user", "pass"))
        self.assertEqual(
            transport.value(),
            b"CONNECT api.push.apple.com:443 HTTP/1.1\r\nHost: api.push.apple.com:443\r\n"
            b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
        )
        transport.clear()
        for piece in (b"HTTP/1.1 200 Connection", b" established\r\n", b"\r", b"\n\x16\x03"):
            self.assertNoResult(d)
            self.assertEqual(self.factory.built, [])
            tunnel.dataReceived(piece)
        [proto] = self.factory.built
        self.assertIs(self.successResultOf(d), proto)
        # Built for the target, connected to the proxy connection, then the leftover.
        self.assertEqual(self.factory.addresses, [HostnameAddress(b"api.push.apple.com", 443)])
        self.assertEqual(proto.events, [("made", transport), ("data", b"\x16\x03")])
        tunnel.dataReceived(b"more")
        assert proto.transport is not None
        proto.transport.write(b"to the target")
        self.assertEqual(transport.value(), b"to the target")
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(proto.events[2:], [("data", b"more"), ("lost", ConnectionDone)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_leftover_no_data_event(self) -> None:
        d, tunnel, _ = self.start()
        tunnel.dataReceived(b"HTTP/1.0 200 OK\r\n\r\n")
        proto = self.successResultOf(d)
        assert isinstance(proto, Recorder)
        self.assertEqual([e[0] for e in proto.events], ["made"])

    def test_refused(self) -> None:
        d, tunnel, transport = self.start()
        tunnel.dataReceived(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 3\r\n\r\nno!'
        )
        error = self.failureResultOf(d, ProxyRefusedError).value
        assert isinstance(error, ProxyRefusedError)
        self.assertEqual((error.status, error.authenticate), (407, 'Basic realm="corp"'))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.built, [])
        tunnel.dataReceived(b"ignored")
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closed_before_the_head(self) -> None:
        d, tunnel, _ = self.start()
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n")
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ProxyClosedError)
        self.assertEqual(self.factory.built, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage_aborts(self) -> None:
        d, tunnel, transport = self.start()
        tunnel.dataReceived(b"\x15\x03\x03\x00\x02\x02\x28")  # a TLS alert
        self.failureResultOf(d, ProxyResponseError)
        self.assertTrue(transport.disconnecting)

    def test_oversized_head_aborts(self) -> None:
        d, tunnel, transport = self.start(max_head=64)
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 100)
        self.failureResultOf(d, ProxyResponseError)
        self.assertTrue(transport.disconnecting)

    def test_timeout_while_waiting_for_the_answer(self) -> None:
        d, tunnel, transport = self.start(timeout=5.0)
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, ProxyTimeoutError)
        self.assertTrue(transport.disconnecting)
        tunnel.dataReceived(b"\r\n")  # too late: never built
        self.assertEqual(self.factory.built, [])

    def test_timeout_while_connecting_to_the_proxy(self) -> None:
        d = self.endpoint(timeout=5.0).connect(self.factory)
        self.clock.advance(5.0)
        self.failureResultOf(d, ProxyTimeoutError)
        self.assertEqual(self.proxy.cancelled, 1)

    def test_cancel_while_connecting_to_the_proxy(self) -> None:
        d = self.endpoint().connect(self.factory)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.proxy.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_while_waiting_for_the_answer_aborts(self) -> None:
        d, tunnel, transport = self.start()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.built, [])

    def test_cancel_after_the_tunnel_does_nothing(self) -> None:
        d, tunnel, transport = self.start()
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        d.cancel()
        self.successResultOf(d)
        self.assertFalse(transport.disconnecting)

    def test_proxy_unreachable(self) -> None:
        d = self.endpoint().connect(self.factory)
        self.proxy.fail(ConnectionRefusedError("127.0.0.1", 3128))
        error = self.failureResultOf(d, ProxyError).value
        self.assertIsInstance(error.__cause__, ConnectionRefusedError)
        self.assertIn("cannot connect to the proxy", str(error))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_factory_building_nothing(self) -> None:
        self.factory = RecordingFactory(none=True)
        d, tunnel, transport = self.start()
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.failureResultOf(d, NoProtocol)
        self.assertTrue(transport.disconnecting)

    def test_protocol_failing_to_start(self) -> None:
        self.factory = RecordingFactory(kind=Broken)
        d, tunnel, transport = self.start()
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.failureResultOf(d, ZeroDivisionError)
        self.assertTrue(transport.disconnecting)
        tunnel.connectionLost(Failure(ConnectionDone()))
        [proto] = self.factory.built
        self.assertEqual([e[0] for e in proto.events], ["made", "lost"])

    def test_no_timeout(self) -> None:
        d, tunnel, _ = self.start(timeout=None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.successResultOf(d)

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, self.endpoint, timeout=0)
        self.assertRaises(
            ValueError, HTTPConnectEndpoint, self.proxy, "api.push.apple.com\r\n", 443
        )

    def test_credentials_are_never_logged_nor_shown(self) -> None:
        events: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            events.append(formatEvent(event) + repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        auth = ProxyCredentials(USER, PASSWORD)
        endpoint = self.endpoint(auth=auth)
        shown = [repr(endpoint)]

        def keep(failure: Failure) -> None:
            shown.append(str(failure.value))

        for answer in (b"HTTP/1.1 407 No\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"junk"):
            d = endpoint.connect(self.factory)
            tunnel, transport = self.proxy.complete()
            self.assertIn(b"Proxy-Authorization: Basic ", transport.value())
            tunnel.dataReceived(answer)
            d.addErrback(keep)
        d = endpoint.connect(self.factory)
        self.clock.advance(60)
        d.addErrback(keep)
        self.assertGreater(len(events), 3)
        for text in events + shown:
            self.assertNotIn("hunter2", text)
            self.assertNotIn("Basic cHVzaGVy", text)


# --- real TLS through the fake proxy ------------------------------------------------------


@implementer(IHandshakeListener)
class Probe(Protocol):
    """Completes the TLS handshake (or not), then closes."""

    def __init__(self) -> None:
        self.handshake = False
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        self.handshake = True
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


class RealTLSTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.server = FakeAPNsServer(clock=reactor, sandbox=True, rng=random.Random(3))
        self.server.add_token_key(PKI.token_key_id, PKI.team_id, PKI.token_public_key)
        apns = listen_http2(
            reactor,
            self.server,
            tls_options=server_tls_options(PKI, require_client_cert=False, alpn=[b"h2"]),
        )
        self.apns_port = apns.getHost().port
        self.proxy = FakeConnectProxy(reactor, credentials=(USER, PASSWORD))
        self.proxy.route(APNS, 443, to=("127.0.0.1", self.apns_port))
        port = listen_proxy(reactor, self.proxy)
        self.proxy_port = port.getHost().port
        # Cleanups run last-in first-out: wait for the connections to end, then stop.
        self.addCleanup(apns.stopListening)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.server.when_no_connections)
        self.addCleanup(self.proxy.when_no_connections)

    def tunnel(
        self, auth: ProxyCredentials | None = None, host: str = APNS, port: int = 443
    ) -> HTTPConnectEndpoint:
        return HTTPConnectEndpoint(
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.proxy_port),
            host,
            port,
            auth=auth,
            clock=self.reactor,
        )

    def tls(self, name: str = APNS, auth: ProxyCredentials | None = None) -> Any:
        options = client_tls_options(name, ca_pem=PKI.ca_cert, alpn=[b"h2"])
        return wrapClientTLS(options, self.tunnel(auth))

    @defer.inlineCallbacks
    def test_notification_accepted_through_the_proxy(self) -> Any:
        client = HTTP2Client(
            self.reactor,
            self.tls(auth=ProxyCredentials(USER, PASSWORD)),
            authority=APNS,
            bundle_id=PKI.topic,
            token=ProviderToken(KEY, PKI.token_key_id, PKI.team_id),
            rng=random.Random(5),
        )
        self.addCleanup(client.stop)
        client.start()
        results = yield defer.gatherResults(
            [client.send(Notification.create(token(i), {"aps": {"alert": "hi"}})) for i in (1, 2)]
        )
        self.assertEqual([r.status for r in results], [200, 200])
        self.assertEqual(sorted(self.server.accepted_tokens()), [token(1).hex(), token(2).hex()])
        self.assertEqual(self.proxy.targets, [f"{APNS}:443"])
        [record] = self.proxy.requests
        self.assertEqual((record.method, record.host_header), ("CONNECT", f"{APNS}:443"))
        self.assertEqual((record.username, record.authorized), (USER, True))
        yield client.stop()

    @defer.inlineCallbacks
    def test_407_without_or_with_wrong_credentials(self) -> Any:
        for auth in (None, ProxyCredentials(USER, "wrong")):
            d = self.tls(auth=auth).connect(Factory.forProtocol(Probe))
            error = yield self.assertFailure(d, ProxyRefusedError)
            self.assertEqual(error.status, 407)
            self.assertIn("Basic", error.authenticate or "")
        self.assertEqual(
            [(r.status, r.authorized) for r in self.proxy.requests], [(407, False)] * 2
        )
        self.assertEqual(self.proxy.targets, [])
        self.assertEqual(self.server.connections, [])

    @defer.inlineCallbacks
    def test_refusing_proxy(self) -> Any:
        self.proxy.refuse(403, "Forbidden")
        d = self.tls(auth=ProxyCredentials(USER, PASSWORD)).connect(Factory.forProtocol(Probe))
        error = yield self.assertFailure(d, ProxyRefusedError)
        self.assertEqual((error.status, error.reason), (403, "Forbidden"))

    @defer.inlineCallbacks
    def test_unreachable_target_is_a_502(self) -> Any:
        from twisted.internet.protocol import ServerFactory

        # A port that was open and is closed now: connecting to it is refused.
        closed = self.reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        where = closed.getHost().port
        yield closed.stopListening()
        self.proxy.route("gone.example.com", 443, to=("127.0.0.1", where))
        tunnel = self.tunnel(ProxyCredentials(USER, PASSWORD), host="gone.example.com")
        error = yield self.assertFailure(
            tunnel.connect(Factory.forProtocol(Probe)), ProxyRefusedError
        )
        self.assertEqual(error.status, 502)

    @defer.inlineCallbacks
    def test_host_name_is_verified_against_the_apns_name(self) -> Any:
        auth = ProxyCredentials(USER, PASSWORD)
        # The right name: the handshake completes through the tunnel.
        probe = yield self.tls(APNS, auth).connect(Factory.forProtocol(Probe))
        yield probe.lost
        reason = probe.reason
        assert reason is not None
        self.assertTrue(probe.handshake)
        self.assertTrue(reason.check(ConnectionDone))
        # A name the server's certificate is not valid for: the tunnel is up (the proxy
        # did its part), the TLS handshake fails on the host name.
        # (Twisted 26.4 refuses the name inside the handshake; earlier releases check it when
        # the handshake is done, call handshakeCompleted, then abort before any data goes out;
        # so whether ``probe.handshake`` is set depends on the release: the reason does not.)
        probe = yield self.tls("push.example.net", auth).connect(Factory.forProtocol(Probe))
        yield probe.lost
        reason = probe.reason
        assert reason is not None
        self.assertTrue(is_tls_failure(reason), reason)
        self.assertTrue(reason.check(service_identity.VerificationError), reason)
        self.assertEqual(self.proxy.targets, [f"{APNS}:443"] * 2)

    @defer.inlineCallbacks
    def test_for_app_and_make_sender_pass_the_proxy_on(self) -> Any:
        files = PKI.write(Path(self.mktemp()))
        app = AppConfig(
            name="app",
            bundle_id=PKI.topic,
            environment="sandbox",
            protocol="http2",
            credentials=TokenCredentials(
                Path(files["token_key_p8"]), PKI.token_key_id, PKI.team_id
            ),
            ca_file=Path(files["ca_cert"]),
            proxy=parse_proxy_url(
                f"http://{USER}:hunter2%3A%40%20secret@127.0.0.1:{self.proxy_port}"
            ),
        )
        port = self.apns_port
        sender = make_sender(
            app, self.reactor, address=lambda: ("127.0.0.1", port), hostname="localhost"
        )
        assert isinstance(sender, HTTP2Client)
        self.addCleanup(sender.stop)
        sender.start()
        result = yield sender.send(Notification.create(token(7), {"aps": {"alert": "x"}}))
        self.assertTrue(result.accepted)
        self.assertEqual(self.proxy.targets, [f"127.0.0.1:{port}"])
        yield sender.stop()

    @defer.inlineCallbacks
    def test_wrong_proxy_password_fails_fast_naming_the_proxy(self) -> Any:
        """Issue 9 item 2, end to end: the service's sender gets a 407, rejects the
        notification at once with a message naming the proxy (never the password), and does
        not retry."""
        files = PKI.write(Path(self.mktemp()))
        app = AppConfig(
            name="app",
            bundle_id=PKI.topic,
            environment="sandbox",
            protocol="http2",
            credentials=TokenCredentials(
                Path(files["token_key_p8"]), PKI.token_key_id, PKI.team_id
            ),
            ca_file=Path(files["ca_cert"]),
            proxy=parse_proxy_url(f"http://{USER}:hunter2-wrong@127.0.0.1:{self.proxy_port}"),
        )
        port = self.apns_port
        sender = make_sender(
            app, self.reactor, address=lambda: ("127.0.0.1", port), hostname="localhost"
        )
        assert isinstance(sender, HTTP2Client)
        self.addCleanup(sender.stop)
        sender.start()
        result = yield sender.send(Notification.create(token(7), {"aps": {"alert": "x"}}))
        self.assertEqual((result.outcome.value, result.local), ("rejected", "proxy-auth"))
        reason = result.reason or ""
        self.assertIn(f"http://{USER}:***@127.0.0.1:{self.proxy_port}", reason)
        self.assertIn("407", reason)
        self.assertNotIn("hunter2", reason)
        attempts = len(self.proxy.requests)
        self.assertLessEqual(attempts, 2)  # the start's connection and the send's
        yield sender.stop()
        self.assertEqual(len(self.proxy.requests), attempts)
        self.assertEqual(self.server.connections, [])

    @defer.inlineCallbacks
    def test_binary_sender_through_the_proxy(self) -> Any:
        gateway, listening = tls_gateway(self, self.reactor, PKI)
        files = PKI.write(Path(self.mktemp()))
        app = AppConfig(
            name="legacy",
            bundle_id=PKI.topic,
            environment="sandbox",
            protocol="binary",
            credentials=CertificateCredentials(
                cert_file=Path(files["client_cert"]), key_file=Path(files["client_key"])
            ),
            ca_file=Path(files["ca_cert"]),
            proxy=parse_proxy_url(
                f"http://{USER}:hunter2%3A%40%20secret@127.0.0.1:{self.proxy_port}"
            ),
        )
        gport = listening.getHost().port
        sender = make_sender(
            app, self.reactor, address=lambda: ("127.0.0.1", gport), hostname="localhost"
        )
        assert isinstance(sender, BinaryClient)
        self.addCleanup(sender.stop, 5.0)
        sender.start()
        d = sender.send(Notification.create(token(9), {"aps": {"alert": "x"}}))
        yield sender.drain()
        result = yield d
        self.assertTrue(result.accepted)
        self.assertIn(token(9), [n.token for n in gateway.delivered])
        self.assertEqual(self.proxy.targets[0], f"127.0.0.1:{gport}")
        yield sender.stop(5.0)
