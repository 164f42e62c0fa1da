"""HTTP CONNECT proxies, sans-IO (``txapns.core.proxy``), and their configuration.

The request is pinned byte for byte; the parser of the proxy's answer must decode a valid
answer the same whatever the chunking, and refuse garbage and oversized heads with a typed
error; proxy URLs parse or fail with a message that never holds the password; the service
configuration and ``twistd apns --proxy`` take a proxy and refuse a bad one at start-up.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.errors import APNsError, ConnectionFailedError, ProtocolError
from txapns.core.proxy import (
    DEFAULT_MAX_HEAD,
    ConnectResponseParser,
    ProxyAnswer,
    ProxyAuthenticationError,
    ProxyClosedError,
    ProxyCredentials,
    ProxyError,
    ProxyRefusedError,
    ProxyResponseError,
    ProxyURL,
    ProxyURLError,
    TunnelEstablished,
    TunnelRefused,
    build_connect_request,
    parse_proxy_url,
)
from txapns.service.application import single_app
from txapns.service.config import ConfigError, parse_app
from txapns.tap import Options
from txapns.testing.pki import make_test_pki

PKI = make_test_pki()
SECRET = "s3cr:et@pa ss"


def feed_all(
    data: bytes, cuts: list[int] | None = None, *, max_head: int = DEFAULT_MAX_HEAD
) -> ProxyAnswer | None:
    """Feed ``data`` cut at ``cuts``; the first answer (and checks later pieces are none)."""
    parser = ConnectResponseParser(max_head)
    bounds = [0, *sorted(set(cuts or [])), len(data)]
    answer = None
    for start, end in pairwise(bounds):
        piece = data[start:end]
        if answer is not None:
            break
        answer = parser.feed(piece)
        if answer is not None and isinstance(answer, TunnelEstablished):
            # What was not fed yet is tunnel data as well.
            answer = TunnelEstablished(
                answer.status, answer.reason, answer.headers, answer.leftover + data[end:]
            )
    return answer


class ConnectRequestTests(SynchronousTestCase):
    def test_golden_bytes(self) -> None:
        self.assertEqual(
            build_connect_request("api.push.apple.com", 443),
            b"CONNECT api.push.apple.com:443 HTTP/1.1\r\nHost: api.push.apple.com:443\r\n\r\n",
        )

    def test_golden_bytes_with_basic_credentials(self) -> None:
        self.assertEqual(
            build_connect_request(
                "api.sandbox.push.apple.com", 443, credentials=ProxyCredentials("user", "pass")
            ),
            b"CONNECT api.sandbox.push.apple.com:443 HTTP/1.1\r\n"
            b"Host: api.sandbox.push.apple.com:443\r\n"
            b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
            b"\r\n",
        )

    def test_credentials_are_utf8(self) -> None:
        # base64("jürgen:pässword" in UTF-8)
        creds = ProxyCredentials("jürgen", "pässword")
        self.assertEqual(creds.authorization(), "Basic asO8cmdlbjpww6Rzc3dvcmQ=")

    def test_ipv6_and_address_targets(self) -> None:
        self.assertEqual(
            build_connect_request("::1", 2195),
            b"CONNECT [::1]:2195 HTTP/1.1\r\nHost: [::1]:2195\r\n\r\n",
        )
        self.assertEqual(
            build_connect_request("127.0.0.1", 443),
            b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n",
        )

    def test_bad_targets_are_refused_before_anything_is_sent(self) -> None:
        for host, port in [
            ("api.push.apple.com\r\nX-Evil: 1", 443),
            ("api push", 443),
            ("", 443),
            ("a/b", 443),
            ("api.push.apple.com", 0),
            ("api.push.apple.com", 65536),
            ("1::2::3", 443),
        ]:
            with self.assertRaises(ValueError, msg=(host, port)):
                build_connect_request(host, port)

    def test_user_name_with_a_colon_is_refused(self) -> None:
        self.assertRaises(ProxyURLError, ProxyCredentials, "a:b", "c")

    def test_password_is_not_in_repr(self) -> None:
        creds = ProxyCredentials("user", SECRET)
        self.assertNotIn(SECRET, repr(creds))
        self.assertNotIn(SECRET, repr(ProxyURL("proxy", 3128, creds)))


class ParserTests(SynchronousTestCase):
    def test_established_with_leftover(self) -> None:
        answer = feed_all(
            b"HTTP/1.1 200 Connection established\r\nVia: 1.1 squid\r\n\r\n\x16\x03\x03tls"
        )
        self.assertEqual(
            answer,
            TunnelEstablished(
                200, "Connection established", (("Via", "1.1 squid"),), b"\x16\x03\x03tls"
            ),
        )

    def test_still_reading_until_the_blank_line(self) -> None:
        parser = ConnectResponseParser()
        self.assertIsNone(parser.feed(b"HTTP/1.0 200 OK\r\n"))
        self.assertIsNone(parser.feed(b"Proxy-Agent: x\r\n\r"))
        self.assertIsNone(parser.answer)
        answer = parser.feed(b"\n")
        self.assertEqual(answer, TunnelEstablished(200, "OK", (("Proxy-Agent", "x"),), b""))
        self.assertIs(parser.answer, answer)

    def test_any_2xx_is_a_tunnel_and_the_reason_may_be_missing(self) -> None:
        self.assertEqual(feed_all(b"HTTP/1.1 204\r\n\r\n"), TunnelEstablished(204, "", (), b""))

    def test_interim_responses_are_skipped(self) -> None:
        answer = feed_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\n"
            b"HTTP/1.1 200 OK\r\n\r\n"
        )
        self.assertEqual(answer, TunnelEstablished(200, "OK", (), b""))

    def test_bare_lf_and_folded_headers(self) -> None:
        answer = feed_all(b"HTTP/1.1 200 OK\nVia: a,\n  b\n\nrest")
        self.assertEqual(answer, TunnelEstablished(200, "OK", (("Via", "a, b"),), b"rest"))

    def test_refused_with_challenge(self) -> None:
        answer = feed_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="corp"\r\n'
            b"Content-Length: 12\r\n\r\nnot for you!"
        )
        assert isinstance(answer, TunnelRefused)
        self.assertEqual((answer.status, answer.reason), (407, "Proxy Authentication Required"))
        self.assertEqual(answer.header("proxy-authenticate"), 'Basic realm="corp"')
        error = answer.error("api.push.apple.com:443")
        self.assertIsInstance(error, ProxyRefusedError)
        self.assertEqual((error.status, error.authenticate), (407, 'Basic realm="corp"'))
        self.assertIn("407 Proxy Authentication Required", str(error))
        self.assertIn("api.push.apple.com:443", str(error))
        # 407 is its own type, naming the proxy as it was given (password masked).
        named = answer.error("api.push.apple.com:443", "http://u:***@proxy.example:3128")
        assert isinstance(named, ProxyAuthenticationError)
        self.assertEqual(named.proxy, "http://u:***@proxy.example:3128")
        self.assertIn("the proxy http://u:***@proxy.example:3128 refused", str(named))
        other = TunnelRefused(403, "Forbidden", ()).error("t:1", "p:2")
        self.assertNotIsInstance(other, ProxyAuthenticationError)

    def test_101_is_not_a_tunnel(self) -> None:
        answer = feed_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        self.assertIsInstance(answer, TunnelRefused)

    def test_no_more_bytes_after_the_answer(self) -> None:
        parser = ConnectResponseParser()
        parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertRaises(RuntimeError, parser.feed, b"x")

    def test_eof_before_the_head_is_a_typed_error(self) -> None:
        parser = ConnectResponseParser()
        parser.feed(b"HTTP/1.1 200 OK\r\n")
        with self.assertRaises(ProxyClosedError) as cm:
            parser.eof("Connection was closed cleanly.")
        self.assertIn("17 bytes", str(cm.exception))
        done = ConnectResponseParser()
        done.feed(b"HTTP/1.1 200 OK\r\n\r\n")
        done.eof()  # after the answer: nothing to say

    def test_garbage_is_a_typed_error(self) -> None:
        for data in [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS server answered
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"X",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"http/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded first\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        ]:
            with self.assertRaises(ProxyResponseError, msg=data):
                feed_all(data)
            with self.assertRaises(ProxyResponseError, msg=data):
                feed_all(data, list(range(len(data))))

    def test_binary_garbage_fails_on_its_first_byte(self) -> None:
        parser = ConnectResponseParser()
        self.assertRaises(ProxyResponseError, parser.feed, b"\x16")

    def test_an_error_sticks(self) -> None:
        parser = ConnectResponseParser()
        self.assertRaises(ProxyResponseError, parser.feed, b"nope")
        self.assertRaises(ProxyResponseError, parser.feed, b"HTTP/1.1 200 OK\r\n\r\n")

    def test_overflow(self) -> None:
        big = b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 200 + b"\r\n\r\n"
        self.assertRaises(ProxyResponseError, feed_all, big, max_head=128)
        # A line that never ends fails as soon as it passes the bound.
        parser = ConnectResponseParser(128)
        parser.feed(b"HTTP/1.1 200 OK\r\nX-Filler: ")
        with self.assertRaises(ProxyResponseError) as cm:
            for _ in range(200):
                parser.feed(b"a")
        self.assertIn("128 bytes", str(cm.exception))
        # Endless interim responses count too.
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" * 10
        self.assertRaises(ProxyResponseError, feed_all, interim, max_head=128)

    def test_a_head_of_exactly_the_bound_passes(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nX: "
        head += b"a" * (128 - len(head) - 4) + b"\r\n\r\n"
        self.assertEqual(len(head), 128)
        answer = feed_all(head + b"tail", max_head=128)
        assert isinstance(answer, TunnelEstablished)
        self.assertEqual(answer.leftover, b"tail")
        self.assertRaises(ProxyResponseError, feed_all, head, max_head=127)

    def test_errors_are_txapns_errors(self) -> None:
        self.assertTrue(issubclass(ProxyError, ConnectionFailedError))
        self.assertTrue(issubclass(ProxyError, APNsError))
        self.assertTrue(issubclass(ProxyResponseError, ProtocolError))
        self.assertTrue(issubclass(ProxyURLError, ValueError))


# --- any chunking decodes the same --------------------------------------------------------

_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=12,
)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
_reason = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
    str.strip
)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, ProxyAnswer]:
    status = draw(st.integers(200, 599).filter(lambda s: s != 101))
    reason = draw(_reason)
    headers = tuple(draw(st.lists(st.tuples(_token, _value), max_size=6)))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    interim = draw(st.integers(0, 2))
    leftover = draw(st.binary(max_size=40))
    head = b"HTTP/1.1 100 Continue" + eol + eol
    head *= interim
    status_line = f"HTTP/1.{draw(st.sampled_from([0, 1]))} {status}"
    if reason:
        status_line += f" {reason}"
    head += status_line.encode() + eol
    for name, value in headers:
        head += f"{name}: {value}".encode() + eol
    head += eol
    expected: ProxyAnswer
    if 200 <= status < 300:
        expected = TunnelEstablished(status, reason, headers, leftover)
    else:
        expected = TunnelRefused(status, reason, headers)
    return head + leftover, expected


class ChunkingTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(responses(), st.data())
    def test_any_split_decodes_the_same(
        self, response: tuple[bytes, ProxyAnswer], data: st.DataObject
    ) -> None:
        raw, expected = response
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=len(raw) + 1))
        self.assertEqual(feed_all(raw), expected)
        self.assertEqual(feed_all(raw, cuts), expected)

    @settings(max_examples=200, deadline=None)
    @given(
        st.binary(min_size=1, max_size=64).filter(lambda b: not b.startswith(b"H")),
        st.data(),
    )
    def test_garbage_fails_typed_whatever_the_split(self, junk: bytes, data: st.DataObject) -> None:
        raw = junk + b"\r\n\r\n"
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
        with self.assertRaises(ProxyResponseError):
            feed_all(raw, cuts)

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 400), st.data())
    def test_overflow_whatever_the_split(self, extra: int, data: st.DataObject) -> None:
        raw = b"HTTP/1.1 200 OK\r\nX: " + b"a" * (100 + extra) + b"\r\n\r\n"
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
        with self.assertRaises(ProxyResponseError):
            feed_all(raw, cuts, max_head=120)


# --- proxy URLs ---------------------------------------------------------------------------


class ProxyURLTests(SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertEqual(parse_proxy_url("http://proxy.corp:3128"), ProxyURL("proxy.corp", 3128))
        self.assertEqual(parse_proxy_url("HTTP://10.0.0.1:8080/"), ProxyURL("10.0.0.1", 8080))
        self.assertEqual(parse_proxy_url("http://[::1]:3128"), ProxyURL("::1", 3128))

    def test_credentials_are_percent_decoded(self) -> None:
        url = parse_proxy_url("http://us%40er:s3cr%3Aet%40pa%20ss@proxy.corp:3128")
        self.assertEqual(url.credentials, ProxyCredentials("us@er", SECRET))
        self.assertEqual(url.redacted(), "http://us%40er:***@proxy.corp:3128")
        self.assertEqual(str(url), url.redacted())
        self.assertNotIn("s3cr", repr(url))

    def test_user_without_password(self) -> None:
        url = parse_proxy_url("http://user@proxy:1")
        self.assertEqual(url.credentials, ProxyCredentials("user", ""))

    def test_refused(self) -> None:
        for url, words in [
            ("https://proxy:3128", "https:// proxies"),
            ("socks5://proxy:1080", "http://[user:password@]host:port"),
            ("proxy:3128", "http://[user:password@]host:port"),
            ("http://proxy", "needs a port"),
            ("http://proxy:0", "needs a port"),
            ("http://proxy:99999", "1..65535"),
            ("http://proxy:port", "1..65535"),
            ("http://proxy:3128/path", "path"),
            ("http://proxy:3128?x=1", "query"),
            ("http://proxy:3128#f", "fragment"),
            ("http://pro xy:3128", "white space"),
            ("http://proxy:3128\n", "white space"),
            ("http://pro_xy!:3128", "not a host name"),
            ("http://:3128", "not a host name"),
            ("http://:pw@proxy:3128", "user name is empty"),
            ("", "http://[user:password@]host:port"),
        ]:
            with self.assertRaises(ProxyURLError, msg=url) as cm:
                parse_proxy_url(url)
            self.assertIn(words, str(cm.exception), url)

    def test_the_password_never_shows_in_errors(self) -> None:
        for url in [
            "https://user:hunter2@proxy:3128",
            "http://user:hunter2@proxy:99999",
            "http://user:hunter2@proxy:3128/x",
            "http://user:hunter2@pro xy:3128",
            "http://user:hunter2@pr!oxy:3128",
            "http://user:hunter2@proxy",
            "ftp://user:hunter2@proxy:21",
            "http://user:hun@ter2@proxy:port",
        ]:
            with self.assertRaises(ProxyURLError) as cm:
                parse_proxy_url(url)
            self.assertNotIn("hunter2", str(cm.exception), url)
            self.assertNotIn("ter2", str(cm.exception), url)


# --- configuration: [[app]] proxy and twistd apns --proxy ---------------------------------


def app_entry(**extra: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "shop",
        "bundle_id": "com.example.shop",
        "key_file": "AuthKey_ABC1234567.p8",
        "key_id": "ABC1234567",
        "team_id": "DEF7654321",
    }
    entry.update(extra)
    return entry


class ConfigTests(SynchronousTestCase):
    def test_no_proxy_by_default(self) -> None:
        self.assertIsNone(parse_app(app_entry(), base_dir=Path("/etc")).proxy)

    def test_proxy_is_parsed(self) -> None:
        app = parse_app(
            app_entry(proxy="http://user:hunter2@proxy.corp:3128"), base_dir=Path("/etc")
        )
        self.assertEqual(
            app.proxy, ProxyURL("proxy.corp", 3128, ProxyCredentials("user", "hunter2"))
        )
        self.assertNotIn("hunter2", repr(app))

    def test_bad_proxy_is_a_config_error_naming_the_app(self) -> None:
        for value, words in [
            ("https://proxy:3128", "https:// proxies"),
            ("http://proxy", "needs a port"),
            (3128, "must be a URL string"),
            ("http://user:hunter2@proxy:3128/p", "path"),
        ]:
            with self.assertRaises(ConfigError, msg=value) as cm:
                parse_app(app_entry(proxy=value), base_dir=Path("/etc"))
            message = str(cm.exception)
            self.assertIn("app 'shop'", message)
            self.assertIn(words, message)
            self.assertNotIn("hunter2", message)

    def test_host_override_must_be_a_tunnel_target(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            parse_app(
                app_entry(proxy="http://proxy:3128", host="gw.example.com/x"),
                base_dir=Path("/etc"),
            )
        self.assertIn("host 'gw.example.com/x'", str(cm.exception))
        app = parse_app(
            app_entry(proxy="http://proxy:3128", host="gw.example.com", port=2195),
            base_dir=Path("/etc"),
        )
        self.assertEqual(app.endpoint(), ("gw.example.com", 2195))


class TapTests(SynchronousTestCase):
    def test_proxy_flag(self) -> None:
        files = PKI.write(Path(self.mktemp()))
        options = Options()
        options.parseOptions(
            [
                "--bundle-id",
                PKI.topic,
                "--key-file",
                files["token_key_p8"],
                "--key-id",
                PKI.token_key_id,
                "--team-id",
                PKI.team_id,
                "--proxy",
                "http://user:hunter2@127.0.0.1:3128",
            ]
        )
        app = single_app(options)
        self.assertEqual(
            app.proxy, ProxyURL("127.0.0.1", 3128, ProxyCredentials("user", "hunter2"))
        )

    def test_bad_proxy_flag_is_a_usage_error(self) -> None:
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(
                ["--bundle-id", "com.example.app", "--proxy", "https://u:hunter2@proxy:1"]
            )
        self.assertIn("--proxy", str(cm.exception))
        self.assertNotIn("hunter2", str(cm.exception))

    def test_proxy_is_a_single_app_flag(self) -> None:
        self.assertRaises(
            usage.UsageError, Options().parseOptions, ["--proxy", "http://proxy:3128"]
        )
        self.assertRaises(
            usage.UsageError,
            Options().parseOptions,
            ["--config", "x.toml", "--proxy", "http://proxy:3128"],
        )
