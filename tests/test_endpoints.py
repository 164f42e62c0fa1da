"""txapns.endpoints: Apple's host table (one, shared with the service's configuration) and
the TLS endpoints both clients connect with."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txapns import endpoints
from txapns.core import broadcast
from txapns.endpoints import LateEndpoint, apns_endpoint, apns_host, tls_endpoint
from txapns.service import config


@implementer(IStreamClientEndpoint)
class Recorder:
    def __init__(self) -> None:
        self.factories: list[IProtocolFactory] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        self.factories.append(protocolFactory)
        return succeed(None)


class HostTableTests(SynchronousTestCase):
    def test_apples_hosts(self) -> None:
        self.assertEqual(apns_host(), ("api.push.apple.com", 443))
        self.assertEqual(apns_host("http2", "sandbox"), ("api.sandbox.push.apple.com", 443))
        self.assertEqual(apns_host("binary", "production"), ("gateway.push.apple.com", 2195))
        self.assertEqual(
            apns_host("feedback", "sandbox"), ("feedback.sandbox.push.apple.com", 2196)
        )
        self.assertEqual(
            apns_host("manage", "production"), ("api-manage-broadcast.push.apple.com", 2196)
        )
        with self.assertRaises(ValueError) as cm:
            apns_host("http3", "production")
        self.assertEqual(
            str(cm.exception), "no APNs host for service 'http3', environment 'production'"
        )
        self.assertRaises(ValueError, apns_host, "http2", "staging")

    def test_one_table_for_the_library_and_the_service(self) -> None:
        self.assertIs(config.HOSTS, endpoints.APNS_HOSTS)
        self.assertIs(config.FEEDBACK_HOSTS, endpoints.FEEDBACK_HOSTS)
        self.assertIs(broadcast.MANAGEMENT_HOSTS, endpoints.MANAGEMENT_HOSTS)
        app = config.AppConfig(
            name="a",
            bundle_id="com.example.app",
            environment="sandbox",
            protocol="binary",
            credentials=config.CertificateCredentials(cert_file=None, key_file=None),
        )
        self.assertEqual(app.endpoint(), apns_host("binary", "sandbox"))
        self.assertEqual(app.feedback_endpoint(), apns_host("feedback", "sandbox"))


class EndpointTests(SynchronousTestCase):
    def test_late_endpoint_resolves_at_each_connect(self) -> None:
        targets = [Recorder(), Recorder()]
        late = LateEndpoint(lambda: targets[len(targets[0].factories) and 1])
        factory: Any = object()
        late.connect(factory)
        late.connect(factory)
        self.assertEqual([len(t.factories) for t in targets], [1, 1])

    def test_tls_endpoint_asks_the_address_when_it_connects(self) -> None:
        reactor = MemoryReactorClock()
        asked: list[int] = []

        def address() -> tuple[str, int]:
            asked.append(1)
            return ("127.0.0.1", 4433)

        endpoint = tls_endpoint(reactor, "localhost", address, certificate=None, ca_pem=None)
        self.assertEqual(asked, [])
        self.assertIsInstance(endpoint, LateEndpoint)
        from twisted.internet.protocol import Factory, Protocol

        endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(asked, [1])
        self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [("127.0.0.1", 4433)])

    def test_apns_endpoint_is_tls_to_apples_host(self) -> None:
        calls: list[tuple[Any, ...]] = []

        def spy(reactor: Any, hostname: str, address: Any, **kw: Any) -> Any:
            calls.append((hostname, address(), kw["alpn"]))
            return Recorder()

        self.patch(endpoints, "tls_endpoint", spy)
        apns_endpoint(object(), "http2", "sandbox")
        apns_endpoint(object(), "binary", "production")
        apns_endpoint(object(), "manage", "production")
        self.assertEqual(
            calls,
            [
                ("api.sandbox.push.apple.com", ("api.sandbox.push.apple.com", 443), (b"h2",)),
                ("gateway.push.apple.com", ("gateway.push.apple.com", 2195), ()),
                (
                    "api-manage-broadcast.push.apple.com",
                    ("api-manage-broadcast.push.apple.com", 2196),
                    (b"h2",),
                ),
            ],
        )
