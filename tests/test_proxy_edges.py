"""HTTP CONNECT proxies, sans-IO: the edges mutation testing found unpinned (``tools/mutation.py
core/proxy.py``): the exact messages of a refusal and of a proxy that closes early, the
fields errors carry, headers of an established tunnel, and how a proxy URL is shown.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.proxy import (
    ConnectResponseParser,
    EnvironmentProxy,
    ProxyAuthenticationError,
    ProxyClosedError,
    ProxyCredentials,
    ProxyRefusedError,
    ProxyURL,
    TunnelEstablished,
    TunnelRefused,
    format_authority,
    proxy_from_environment,
)


class RefusalTests(SynchronousTestCase):
    def test_refused_messages_and_fields(self) -> None:
        bare = TunnelRefused(403, "", ()).error("api.push.apple.com:443")
        self.assertEqual(str(bare), "the proxy refused CONNECT api.push.apple.com:443: 403")
        self.assertEqual((bare.status, bare.reason, bare.authenticate), (403, "", None))
        self.assertNotIsInstance(bare, ProxyAuthenticationError)
        challenge = (("Proxy-Authenticate", 'Basic realm="x"'),)
        named = TunnelRefused(502, "Bad Gateway", challenge).error("t:1", "proxy.corp:3128")
        self.assertIsInstance(named, ProxyRefusedError)
        self.assertEqual(
            str(named), "the proxy proxy.corp:3128 refused CONNECT t:1: 502 Bad Gateway"
        )
        self.assertEqual(
            (named.status, named.reason, named.authenticate),
            (502, "Bad Gateway", 'Basic realm="x"'),
        )

    def test_407(self) -> None:
        answer = TunnelRefused(
            407, "Proxy Authentication Required", (("proxy-authenticate", "Basic"),)
        )
        error = answer.error("t:1", "http://u:***@p:1")
        assert isinstance(error, ProxyAuthenticationError)
        self.assertEqual(
            str(error),
            "the proxy http://u:***@p:1 refused CONNECT t:1: 407 Proxy Authentication Required "
            "(missing or wrong credentials: give them in the proxy URL, "
            "http://user:password@host:port)",
        )
        self.assertEqual(
            (error.status, error.reason, error.authenticate, error.proxy),
            (407, "Proxy Authentication Required", "Basic", "http://u:***@p:1"),
        )
        self.assertEqual(str(answer.error("t:1")).split(" refused")[0], "the proxy")


class ParserEdgesTests(SynchronousTestCase):
    def test_eof_messages(self) -> None:
        parser = ConnectResponseParser()
        with self.assertRaises(ProxyClosedError) as cm:
            parser.eof()
        self.assertEqual(
            str(cm.exception),
            "the proxy closed the connection before answering CONNECT (0 bytes of answer received)",
        )
        parser.feed(b"HTTP/1.1 200")
        with self.assertRaises(ProxyClosedError) as cm:
            parser.eof("Connection was closed cleanly.")
        self.assertEqual(
            str(cm.exception),
            "the proxy closed the connection before answering CONNECT "
            "(12 bytes of answer received): Connection was closed cleanly.",
        )

    def test_established_headers(self) -> None:
        answer = ConnectResponseParser().feed(
            b"HTTP/1.1 200 OK\r\nVia: 1.1 squid\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
        )
        assert isinstance(answer, TunnelEstablished)
        self.assertEqual(answer.header("VIA"), "1.1 squid")
        self.assertEqual(answer.header("x-A"), "1")
        self.assertIsNone(answer.header("Server"))


class RedactedTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(ProxyURL("proxy.corp", 3128).redacted(), "http://proxy.corp:3128")
        url = ProxyURL("::1", 8080, ProxyCredentials("a b/c@d", "secret"))
        self.assertEqual(url.redacted(), "http://a%20b%2Fc%40d:***@[::1]:8080")
        self.assertEqual(str(url), url.redacted())


class AuthorityAndEnvironmentTests(SynchronousTestCase):
    def test_ports_must_be_integers(self) -> None:
        for port in (True, "443", 0, 65536, 443.0):
            with self.assertRaises(ValueError):
                format_authority("api.push.apple.com", port)  # type: ignore[arg-type]
        self.assertEqual(format_authority("api.push.apple.com", 65535), "api.push.apple.com:65535")

    def test_no_proxy_ports_are_compared_with_the_target_port(self) -> None:
        environ = {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "apple.com:443"}
        self.assertIsNone(proxy_from_environment(environ, "api.push.apple.com", 443))
        self.assertIsNotNone(proxy_from_environment(environ, "api.push.apple.com", 2197))
        env = EnvironmentProxy.from_environ(environ)
        self.assertIsNone(env.for_target("api.push.apple.com", 443))
        self.assertEqual(env.for_target("api.push.apple.com", 2197), ProxyURL("proxy.corp", 3128))
