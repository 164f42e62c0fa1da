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

    def test_only_2xx_establishes_a_tunnel(self) -> None:
        # A 3xx (a redirect, "300 Multiple Choices") is no tunnel: what follows it is not the
        # server's bytes, and TLS to APNs must not start over it.
        for status, kind in [(200, TunnelEstablished), (299, TunnelEstablished)] + [
            (s, TunnelRefused) for s in (101, 300, 301, 302, 307)
        ]:
            parser = ConnectResponseParser()
            answer = parser.feed(b"HTTP/1.1 %d X\r\n\r\n" % status)
            self.assertIsInstance(answer, kind, str(status))
            assert answer is not None
            self.assertEqual(answer.status, status)

    def test_line_refusals(self) -> None:
        from txapns.core.proxy import ProxyResponseError

        for head, message in [
            (
                b"HTTP/1.1 200 OK\r\nVia: a\rb\r\n\r\n",
                "stray CR or NUL in the proxy's answer: b'Via: a\\rb'",
            ),
            (
                b"HTTP/1.1 200 OK\r\nVia: a\x00\r\n\r\n",
                "stray CR or NUL in the proxy's answer: b'Via: a\\x00'",
            ),
            (b"HTTP/1.1 2000 OK\r\n", "the proxy's answer is not HTTP/1.x: b'HTTP/1.1 2000 OK'"),
        ]:
            with self.assertRaises(ProxyResponseError) as cm:
                ConnectResponseParser().feed(head)
            self.assertEqual(str(cm.exception), message)

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


class MaskTests(SynchronousTestCase):
    """How a proxy URL is shown in an error: the password, and only it, masked."""

    def test_exact_forms(self) -> None:
        from txapns.core.proxy import _mask

        for url, shown in [
            ("http://u:pw@h:1", "http://u:***@h:1"),
            ("u:pw@h:1", "u:***@h:1"),
            ("http://u@h:1", "http://u@h:1"),
            ("http://h:1", "http://h:1"),
            ("http://u:p:w@h:1/path?q#f", "http://u:***@h:1/path?q#f"),
            ("http://uX:pw@h:1", "http://uX:***@h:1"),
            ("http://u:pw@h:1/a@b/c", "http://u:***@h:1/a@b/c"),
            ("http://u:pw@h:1/x://y", "http://u:***@h:1/x://y"),
            ("http://u:p@w@h:1", "http://u:***@h:1"),
            ("http://h/a:b@c", "http://h/a:b@c"),  # a path after a one-letter host
        ]:
            self.assertEqual(_mask(url), shown, url)


class FormatAuthorityTests(SynchronousTestCase):
    def test_addresses_in_brackets(self) -> None:
        self.assertEqual(format_authority("[::1]", 443), "[::1]:443")
        self.assertEqual(format_authority("[2001:db8::0:1]", 1), "[2001:db8::1]:1")
        self.assertEqual(format_authority("2001:db8::1", 1), "[2001:db8::1]:1")

    def test_refusals(self) -> None:
        for host in ("[abc", "abc]", "[]", "", "a..b", "[::g]", "a" * 64):
            with self.assertRaises(ValueError) as cm:
                format_authority(host, 443)
            self.assertEqual(str(cm.exception), f"{host!r} is not a host name or IP address")

    def test_the_length_limit(self) -> None:
        name = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters
        self.assertEqual(format_authority(name, 1), f"{name}:1")
        with self.assertRaises(ValueError):
            format_authority(name + "a", 1)


class MessagesTests(SynchronousTestCase):
    def test_answers_that_are_not_http_are_shown_cut_at_60_bytes(self) -> None:
        from txapns.core.proxy import ProxyResponseError

        for junk, shown in [
            (b"Y" * 60, repr(b"Y" * 60)),
            (b"Y" * 61, repr(b"Y" * 60) + "…"),
        ]:
            with self.assertRaises(ProxyResponseError) as cm:
                ConnectResponseParser().feed(junk)
            self.assertEqual(str(cm.exception), f"the proxy's answer is not HTTP/1.x: {shown}")

    def test_url_refusals(self) -> None:
        from txapns.core.proxy import ProxyURLError, parse_proxy_url

        for url, message in [
            (3128, "a proxy URL is a string, not int"),
            (
                "http://u:pw@h:1\x7f",
                "proxy URL 'http://u:***@h:1\\x7f' contains white space or control characters",
            ),
            (
                "https://u:pw@h:1",
                "proxy URL 'https://u:***@h:1': https:// proxies (TLS to the proxy) are not "
                "supported; give the proxy's plain http:// address (the tunnel to APNs is TLS "
                "end to end)",
            ),
        ]:
            with self.assertRaises(ProxyURLError) as cm:
                parse_proxy_url(url)  # type: ignore[arg-type]
            self.assertEqual(str(cm.exception), message)
        with self.assertRaises(ProxyURLError) as cm:
            ProxyCredentials("a:b", "c")
        self.assertEqual(
            str(cm.exception), "a proxy user name cannot contain ':' (Basic authentication)"
        )

    def test_environment_messages_and_fields(self) -> None:
        from txapns.core.proxy import ProxyURLError

        self.assertEqual(
            EnvironmentProxy.from_environ({"NO_PROXY": "x"}), EnvironmentProxy(None, "", "x")
        )
        with self.assertRaises(ProxyURLError) as cm:
            EnvironmentProxy.from_environ({"HTTPS_PROXY": "proxy.corp"})
        self.assertEqual(
            str(cm.exception),
            "HTTPS_PROXY (from the environment): proxy URL 'http://proxy.corp' needs a port "
            "within 1..65535 (host:port); set proxy_from_env = false (--no-env-proxy) to "
            "ignore it",
        )


class SurvivorTests(SynchronousTestCase):
    """What the rest of the proxy module's mutation run found unpinned."""

    def test_half_bracketed_hosts_are_not_unbracketed(self) -> None:
        from txapns.core.proxy import is_loopback, no_proxy_matches

        self.assertFalse(is_loopback("x127.0.0.1]"))
        self.assertFalse(no_proxy_matches("[::1", 443, "::"))
        self.assertTrue(no_proxy_matches("[::1]", 443, "::1"))

    def test_no_proxy_entry_ports_within_1_to_65535(self) -> None:
        from txapns.core.proxy import no_proxy_matches

        self.assertTrue(no_proxy_matches("h", 1, "h:1"))
        self.assertTrue(no_proxy_matches("h", 65535, "h:65535"))
        # An entry with a port outside 1..65535 cannot match: it is ignored, whatever asks.
        self.assertFalse(no_proxy_matches("h", 0, "h:0"))
        self.assertFalse(no_proxy_matches("h", 65536, "h:65536"))

    def test_ranges_with_host_bits_and_entries_after_a_miss(self) -> None:
        from txapns.core.proxy import no_proxy_matches

        self.assertTrue(no_proxy_matches("10.1.2.3", 443, "10.0.0.1/8"))  # as curl: not strict
        for no_proxy in ("10.0.0.0/33 h", "10.0.0.0/8 h", "127.0.0.1 h", "h:80 h"):
            self.assertTrue(no_proxy_matches("h", 443, no_proxy), no_proxy)

    def test_port_message(self) -> None:
        with self.assertRaises(ValueError) as cm:
            format_authority("h", 0)
        self.assertEqual(str(cm.exception), "port must be within 1..65535, not 0")

    def test_max_head(self) -> None:
        self.assertEqual(ConnectResponseParser(16).max_head, 16)
        with self.assertRaises(ValueError) as cm:
            ConnectResponseParser(15)
        self.assertEqual(str(cm.exception), "max_head must be at least 16 bytes")
        # Exactly max_head bytes of an unfinished head are still waited on.
        self.assertIsNone(ConnectResponseParser(16).feed(b"HTTP/1.1 200 OK\r"))

    def test_after_the_answer(self) -> None:
        parser = ConnectResponseParser()
        answer = parser.feed(b"HTTP/1.1 200 OK\r\n\r\nTLS")
        assert isinstance(answer, TunnelEstablished)
        self.assertEqual(parser.received, 19)  # the head; the rest is the tunnel's
        with self.assertRaises(RuntimeError) as cm:
            parser.feed(b"more")
        self.assertEqual(
            str(cm.exception), "the proxy already answered; the bytes belong to the tunnel"
        )

    def test_an_error_is_raised_again(self) -> None:
        from txapns.core.proxy import ProxyResponseError

        parser = ConnectResponseParser()
        with self.assertRaises(ProxyResponseError) as cm:
            parser.feed(b"SSH-2.0")
        with self.assertRaises(ProxyResponseError) as again:
            parser.feed(b"")
        self.assertIs(again.exception, cm.exception)

    def test_folded_lines(self) -> None:
        # Obsolete folding (a line starting with SP or HTAB) continues the previous value;
        # only SP and HTAB are trimmed (RFC 9110 §5.6.3), other bytes are kept.
        answer = ConnectResponseParser().feed(
            b"HTTP/1.1 200 OK\r\nVia: X1X\x0b\r\n \tX2X\x0b \r\nX-A:\r\n\tb\r\n\r\n"
        )
        assert isinstance(answer, TunnelEstablished)
        self.assertEqual(answer.header("via"), "X1X\x0b X2X\x0b")
        self.assertEqual(answer.header("x-a"), "b")

    def test_header_line_refusals(self) -> None:
        from txapns.core.proxy import ProxyResponseError

        for head, message in [
            (b"HTTP/1.1 200 OK\r\n folded\r\n", "folded line before any header: b' folded'"),
            (b"HTTP/1.1 200 OK\r\nnocolon\r\n", "malformed header line from the proxy: b'nocolon'"),
        ]:
            with self.assertRaises(ProxyResponseError) as cm:
                ConnectResponseParser().feed(head)
            self.assertEqual(str(cm.exception), message)

    def test_a_password_after_an_empty_authority_is_masked(self) -> None:
        # "http:///user:secret@proxy:3128" (one slash too many) is refused; its message must
        # not show the password, although by URL grammar it sits in the path.
        from txapns.core.proxy import ProxyURLError, _mask, parse_proxy_url

        with self.assertRaises(ProxyURLError) as cm:
            parse_proxy_url("http:///user:secret@proxy:3128")
        self.assertNotIn("secret", str(cm.exception))
        self.assertEqual(_mask("http:///user:secret@proxy:3128"), "http:///user:***@proxy:3128")
