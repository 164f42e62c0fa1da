"""The proxy from the environment (issue 9 item 21): ``HTTPS_PROXY`` and ``NO_PROXY``.

The sans-IO rules (``txapns.core.proxy``: which variable wins, curl's ``NO_PROXY`` matching,
loopback never proxied, errors that name the variable and never the password) with examples
and hypothesis properties; then the wiring: the configuration key ``proxy_from_env``, the
``--no-env-proxy`` flags, the endpoint's choice per target, and real TLS through the fake
proxy for both protocols when only the environment names it.
"""

from __future__ import annotations

import ipaddress
import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.helpers import temp_dir
from txapns.binary import BinaryClient
from txapns.core.notification import Notification
from txapns.core.proxy import (
    EnvironmentProxy,
    ProxyCredentials,
    ProxyURL,
    ProxyURLError,
    is_loopback,
    no_proxy_matches,
    proxy_from_environment,
)
from txapns.endpoints import tls_endpoint
from txapns.http2 import HTTP2Client
from txapns.proxy import HTTPConnectEndpoint
from txapns.service.config import (
    AppConfig,
    CertificateCredentials,
    ConfigError,
    TokenCredentials,
    parse_app,
)
from txapns.service.senders import make_sender
from txapns.testing.http2_server import FakeAPNsServer, listen_http2
from txapns.testing.pki import make_test_pki, server_tls_options
from txapns.testing.proxy import FakeConnectProxy, listen_proxy

from .helpers_binary import tls_gateway

PKI = make_test_pki()
APNS = "api.sandbox.push.apple.com"
GATEWAY = "gateway.sandbox.push.apple.com"
USER, PASSWORD = "pusher", "hunter2-env-secret"

# --- NO_PROXY ----------------------------------------------------------------------------

_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
names = (
    st.lists(_label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda n: not n.replace(".", "").isdigit() and n != "localhost")
)
ports = st.integers(1, 65535)


class NoProxyTests(SynchronousTestCase):
    def test_examples(self) -> None:
        """curl's rules, with ports as Go and urllib take them."""
        for host, port, no_proxy, expected in [
            ("api.push.apple.com", 443, "", False),
            ("api.push.apple.com", 443, "*", True),
            ("api.push.apple.com", 443, "example.com, *", True),
            ("api.push.apple.com", 443, "apple.com", True),
            ("api.push.apple.com", 443, ".apple.com", True),
            ("apple.com", 443, ".apple.com", True),  # curl: a leading dot is ignored
            ("api.push.apple.com", 443, "*.apple.com", True),
            ("api.push.apple.com", 443, "push.apple.com", True),
            ("api.push.apple.com", 443, "api.push.apple.com", True),
            ("api.push.apple.com", 443, "ple.com", False),  # suffix, but not a domain
            ("badapple.com", 443, "apple.com", False),
            ("apple.com", 443, "api.apple.com", False),
            ("API.Push.Apple.COM.", 443, "apple.com.", True),  # case, trailing dots
            ("api.push.apple.com", 443, "APPLE.COM", True),
            ("api.push.apple.com", 443, "example.com,apple.com", True),
            ("api.push.apple.com", 443, " example.com  apple.com ", True),  # white space
            ("api.push.apple.com", 443, ",,example.com,,", False),
            ("api.push.apple.com", 443, "apple.com:443", True),
            ("api.push.apple.com", 2197, "apple.com:443", False),
            ("api.push.apple.com", 443, "apple.com:x", False),  # a bad port: ignored
            ("api.push.apple.com", 443, "apple.com:0", False),
            ("api.push.apple.com", 443, "apple.com:99999", False),
            ("10.1.2.3", 443, "10.1.2.3", True),
            ("10.1.2.3", 443, "10.1.2.4", False),
            ("10.1.2.3", 443, "10.0.0.0/8", True),
            ("10.1.2.3", 443, "10.1.2.0/24", True),
            ("10.1.2.3", 443, "10.1.3.0/24", False),
            ("10.1.2.3", 443, "10.1.2.3:443", True),
            ("10.1.2.3", 443, "10.1.2.3:80", False),
            ("10.1.2.3", 443, "2.3", False),  # an address is not a name
            ("10.1.2.3", 443, "10.0.0.0/33", False),  # a bad range: ignored
            ("2001:db8::1", 443, "2001:db8::1", True),
            ("2001:db8::1", 443, "2001:0db8:0::1", True),  # the same address
            ("[2001:db8::1]", 443, "[2001:db8::1]", True),
            ("2001:db8::1", 443, "[2001:db8::1]:443", True),
            ("2001:db8::1", 443, "[2001:db8::1]:80", False),
            ("2001:db8::1", 443, "[2001:db8::1]x", False),
            ("2001:db8::1", 443, "[2001:db8::1", False),
            ("2001:db8::1", 443, "2001:db8::/32", True),
            ("2001:db8::1", 443, "10.0.0.0/8", False),
            ("10.1.2.3", 443, "::/0", False),
            ("proxy.example", 443, "10.0.0.0/8", False),  # names are never resolved
            ("proxy.example", 443, "10.1.2.3", False),
        ]:
            self.assertEqual(
                no_proxy_matches(host, port, no_proxy), expected, (host, port, no_proxy)
            )

    @given(names, ports, st.sampled_from(["{}", ".{}", "*.{}", "{}.", "{}:{port}"]))
    def test_a_name_matches_itself_and_what_is_under_it(
        self, name: str, port: int, form: str
    ) -> None:
        entry = form.format(name, port=port)
        self.assertTrue(no_proxy_matches(name, port, entry))
        self.assertTrue(no_proxy_matches(f"api.{name}", port, entry))
        self.assertTrue(no_proxy_matches(name.upper(), port, entry.upper()))
        self.assertFalse(no_proxy_matches(f"x{name}", port, entry))
        self.assertFalse(no_proxy_matches(f"{name}x", port, entry))

    @given(names, ports, ports)
    def test_a_port_restricts_the_entry(self, name: str, port: int, other: int) -> None:
        assume(port != other)
        self.assertFalse(no_proxy_matches(name, other, f"{name}:{port}"))
        self.assertTrue(no_proxy_matches(name, other, f"{name}:{port},{name}"))

    @given(names, ports, st.lists(names, max_size=5), st.randoms())
    def test_order_and_separators_do_not_matter(
        self, name: str, port: int, others: list[str], rnd: random.Random
    ) -> None:
        entries = [*others, "*"]
        rnd.shuffle(entries)
        self.assertTrue(no_proxy_matches(name, port, " , ".join(entries)))
        entries.remove("*")
        expected = any(name == o or name.endswith("." + o) for o in entries)
        rnd.shuffle(entries)
        for sep in (",", " ", ", ", "\t,\n"):
            self.assertEqual(no_proxy_matches(name, port, sep.join(entries)), expected)

    @given(st.ip_addresses(), st.ip_addresses(), st.integers(0, 128), ports)
    def test_addresses_and_ranges_agree_with_ipaddress(
        self,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        base: ipaddress.IPv4Address | ipaddress.IPv6Address,
        prefix: int,
        port: int,
    ) -> None:
        network = ipaddress.ip_network(f"{base}/{min(prefix, base.max_prefixlen)}", strict=False)
        inside = address.version == network.version and address in network
        host = f"[{address}]" if address.version == 6 else str(address)
        self.assertEqual(no_proxy_matches(host, port, str(network)), inside)
        self.assertEqual(no_proxy_matches(str(address), port, network.exploded), inside)
        self.assertTrue(no_proxy_matches(host, port, address.exploded))
        self.assertEqual(no_proxy_matches(host, port, str(base)), address == base)

    @given(st.text(max_size=40), st.text(max_size=40), ports)
    def test_any_input_is_an_answer_never_an_error(
        self, host: str, no_proxy: str, port: int
    ) -> None:
        self.assertIsInstance(no_proxy_matches(host, port, no_proxy), bool)


class LoopbackTests(SynchronousTestCase):
    def test_loopback(self) -> None:
        for host in ["localhost", "LOCALHOST.", "a.localhost", "127.0.0.1", "127.8.9.10"]:
            self.assertTrue(is_loopback(host), host)
        for host in ["::1", "[::1]", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"]:
            self.assertTrue(is_loopback(host), host)
        for host in ["api.push.apple.com", "localhost.example", "10.0.0.1", "::2", "128.0.0.1"]:
            self.assertFalse(is_loopback(host), host)


# --- the environment -------------------------------------------------------------------------

PROXY = ProxyURL("proxy.corp", 3128, ProxyCredentials(USER, PASSWORD))
ENV_URL = f"http://{USER}:{PASSWORD}@proxy.corp:3128"


class EnvironmentTests(SynchronousTestCase):
    def test_nothing_set_means_no_proxy(self) -> None:
        self.assertEqual(EnvironmentProxy.from_environ({}), EnvironmentProxy())
        self.assertIsNone(proxy_from_environment({}, APNS, 443))
        self.assertIsNone(proxy_from_environment({"HTTP_PROXY": ENV_URL}, APNS, 443))

    def test_https_proxy_either_case(self) -> None:
        for variable in ("HTTPS_PROXY", "https_proxy"):
            env = EnvironmentProxy.from_environ({variable: ENV_URL})
            self.assertEqual((env.proxy, env.variable), (PROXY, variable))
            self.assertEqual(proxy_from_environment({variable: ENV_URL}, APNS, 443), PROXY)

    def test_the_lower_case_variables_win_even_when_empty(self) -> None:
        other = "http://other:8080"
        env = EnvironmentProxy.from_environ({"https_proxy": ENV_URL, "HTTPS_PROXY": other})
        self.assertEqual(env.proxy, PROXY)
        env = EnvironmentProxy.from_environ({"https_proxy": " ", "HTTPS_PROXY": other})
        self.assertIsNone(env.proxy)
        environ = {"HTTPS_PROXY": ENV_URL, "no_proxy": "", "NO_PROXY": "*"}
        self.assertEqual(proxy_from_environment(environ, APNS, 443), PROXY)
        environ = {"HTTPS_PROXY": ENV_URL, "no_proxy": "apple.com", "NO_PROXY": ""}
        self.assertIsNone(proxy_from_environment(environ, APNS, 443))

    def test_scheme_may_be_left_out(self) -> None:
        env = EnvironmentProxy.from_environ({"HTTPS_PROXY": f"{USER}:{PASSWORD}@proxy.corp:3128"})
        self.assertEqual(env.proxy, PROXY)
        env = EnvironmentProxy.from_environ({"HTTPS_PROXY": " http://proxy.corp:3128/ "})
        self.assertEqual(env.proxy, ProxyURL("proxy.corp", 3128))

    def test_no_proxy_and_loopback_go_direct(self) -> None:
        env = EnvironmentProxy.from_environ({"HTTPS_PROXY": ENV_URL, "NO_PROXY": ".example.com"})
        self.assertEqual(env.for_target(APNS, 443), PROXY)
        self.assertIsNone(env.for_target("push.example.com", 443))
        for host in ("127.0.0.1", "localhost", "::1"):
            self.assertIsNone(env.for_target(host, 443), host)

    @given(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789!$&'()*+,;=-._~", min_size=1, max_size=20),
        st.sampled_from(
            [
                "https://{cred}@proxy:3128",
                "http://{cred}@proxy",
                "socks5://{cred}@proxy:1080",
                "http://{cred}@proxy:99999",
                "http://{cred}@proxy:3128/path",
                "{cred}@proxy",
            ]
        ),
    )
    def test_an_unusable_url_names_the_variable_never_the_password(
        self, secret: str, form: str
    ) -> None:
        password = f"pw{secret}pw"
        value = form.format(cred=f"{USER}:{password}")
        with self.assertRaises(ProxyURLError) as cm:
            EnvironmentProxy.from_environ({"HTTPS_PROXY": value})
        message = str(cm.exception)
        self.assertTrue(message.startswith("HTTPS_PROXY (from the environment): "), message)
        self.assertIn("--no-env-proxy", message)
        self.assertNotIn(password, message)

    @given(
        st.text(min_size=1, max_size=20).filter(lambda s: ":" not in s),
        st.text(max_size=20),
        ports,
    )
    def test_credentials_are_percent_decoded(self, user: str, secret: str, port: int) -> None:
        from urllib.parse import quote

        password = f"pw<{secret}>pw"
        value = f"http://{quote(user, safe='')}:{quote(password, safe='')}@proxy.corp:{port}"
        env = EnvironmentProxy.from_environ({"https_proxy": value})
        self.assertEqual(env.proxy, ProxyURL("proxy.corp", port, ProxyCredentials(user, password)))
        self.assertNotIn(password, repr(env))
        self.assertNotIn(quote(password, safe=""), repr(env))


# --- configuration and flags -----------------------------------------------------------------


def app_entry(**extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "shop",
        "bundle_id": "com.example.shop",
        "key_file": "/k.p8",
        "key_id": "ABC123DEFG",
        "team_id": "DEF123GHIJ",
    }
    entry.update(extra)
    return entry


class ConfigTests(SynchronousTestCase):
    def test_on_by_default_and_can_be_turned_off(self) -> None:
        self.assertTrue(parse_app(app_entry(), base_dir=Path("/etc")).proxy_from_env)
        app = parse_app(app_entry(proxy_from_env=False), base_dir=Path("/etc"))
        self.assertFalse(app.proxy_from_env)

    def test_must_be_a_boolean(self) -> None:
        for value in ("false", 0, None):
            with self.assertRaises(ConfigError) as cm:
                parse_app(app_entry(proxy_from_env=value), base_dir=Path("/etc"))
            self.assertIn("app 'shop': proxy_from_env must be true or false", str(cm.exception))

    def test_twistd_flag(self) -> None:
        from txapns.tap import Options

        options = Options()
        options.environ = {}
        options.parseOptions(["--fake", "--no-env-proxy"])
        self.assertTrue(options["no-env-proxy"])
        options = Options()
        options.environ = {}
        options.parseOptions(["--fake"])
        self.assertFalse(options["no-env-proxy"])

    def test_cli_flag_turns_it_off_for_every_app(self) -> None:
        from txapns.cli import _load_apps, _parser

        files = PKI.write(temp_dir(self))
        flags = [
            "--bundle-id", PKI.topic, "--key-file", files["token_key_p8"],
            "--key-id", PKI.token_key_id, "--team-id", PKI.team_id,
        ]  # fmt: skip
        for extra, expected in (([], True), (["--no-env-proxy"], False)):
            args = _parser().parse_args(["doctor", *flags, *extra])
            [app] = _load_apps(args)
            self.assertIs(app.proxy_from_env, expected)

    def test_twistd_refuses_an_unusable_environment_proxy_in_one_line(self) -> None:
        from txapns.tap import Options, makeService

        files = PKI.write(temp_dir(self))
        options = Options()
        options.environ = {}
        options.parseOptions(
            [
                "--bundle-id", PKI.topic, "--key-file", files["token_key_p8"],
                "--key-id", PKI.token_key_id, "--team-id", PKI.team_id,
                "--api-key-file", files["token_key_p8"], "--spool", files["token_key_p8"] + ".db",
            ]
        )  # fmt: skip
        bad = {"HTTPS_PROXY": f"http://{USER}:{PASSWORD}@proxy"}
        with (
            mock.patch.dict(os.environ, bad),
            mock.patch("sys.stderr") as stderr,
            self.assertRaises(SystemExit) as cm,
        ):
            makeService(options)
        self.assertEqual(cm.exception.code, 1)
        [[line], _] = stderr.write.call_args
        self.assertIn("HTTPS_PROXY (from the environment)", line)
        self.assertNotIn(PASSWORD, line)


# --- the endpoint's choice -------------------------------------------------------------------


def chosen(endpoint: Any) -> Any:
    """The endpoint under the TLS wrapper that ``tls_endpoint`` resolves to now."""
    return endpoint._resolve()._wrappedEndpoint


class EndpointTests(SynchronousTestCase):
    def make(self, host: str = APNS, **options: Any) -> Any:
        return tls_endpoint(
            MemoryReactorClock(),
            APNS,
            lambda: (host, 443),
            certificate=None,
            ca_pem=PKI.ca_cert,
            **options,
        )

    def test_through_the_environment_proxy_unless_no_proxy_says_otherwise(self) -> None:
        environ = {"HTTPS_PROXY": ENV_URL, "NO_PROXY": "example.com"}
        via = chosen(self.make(proxy_from_env=True, environ=environ))
        self.assertIsInstance(via, HTTPConnectEndpoint)
        self.assertEqual((via.target, via.proxy_name), (f"{APNS}:443", PROXY.redacted()))
        self.assertIn(b"Proxy-Authorization: Basic", via._request)
        for host in ("push.example.com", "127.0.0.1"):
            endpoint = self.make(host, proxy_from_env=True, environ=environ)
            self.assertFalse(isinstance(chosen(endpoint), HTTPConnectEndpoint), host)

    def test_opt_out_and_explicit_proxy_ignore_the_environment(self) -> None:
        environ = {"HTTPS_PROXY": ENV_URL}
        self.assertNotIsInstance(chosen(self.make(environ=environ)), HTTPConnectEndpoint)
        explicit = "http://other.corp:8080"
        via = chosen(self.make(proxy=explicit, proxy_from_env=True, environ=environ))
        self.assertEqual(via.proxy_name, explicit)
        environ["NO_PROXY"] = "*"  # NO_PROXY is about the environment's proxy only
        via = chosen(self.make(proxy=explicit, proxy_from_env=True, environ=environ))
        self.assertEqual(via.proxy_name, explicit)

    def test_os_environ_by_default_read_when_built(self) -> None:
        with mock.patch.dict(os.environ, {"https_proxy": ENV_URL}):
            endpoint = self.make(proxy_from_env=True)
        self.assertIsInstance(chosen(endpoint), HTTPConnectEndpoint)

    def test_the_proxy_is_logged_without_its_password(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.make(proxy_from_env=True, environ={"HTTPS_PROXY": ENV_URL})
        text = [formatEvent(e) for e in events]
        self.assertTrue(
            any("http://pusher:***@proxy.corp:3128 from HTTPS_PROXY" in t for t in text)
        )
        self.assertFalse(
            any(PASSWORD in t or PASSWORD in repr(e) for t, e in zip(text, events, strict=True))
        )

    def test_make_sender_follows_the_app(self) -> None:
        files = PKI.write(temp_dir(self))
        app = binary_app(files)
        with mock.patch.dict(os.environ, {"HTTPS_PROXY": ENV_URL}):
            on = make_sender(app, MemoryReactorClock())
            off = make_sender(replace(app, proxy_from_env=False), MemoryReactorClock())
        assert isinstance(on, BinaryClient) and isinstance(off, BinaryClient)
        self.assertIsInstance(chosen(on.factories[0].endpoint), HTTPConnectEndpoint)
        self.assertNotIsInstance(chosen(off.factories[0].endpoint), HTTPConnectEndpoint)


def binary_app(files: dict[str, str]) -> AppConfig:
    return AppConfig(
        name="legacy",
        bundle_id=PKI.topic,
        environment="sandbox",
        protocol="binary",
        credentials=CertificateCredentials(
            cert_file=Path(files["client_cert"]), key_file=Path(files["client_key"])
        ),
        ca_file=Path(files["ca_cert"]),
    )


# --- real TLS through the fake proxy, named only by the environment ---------------------------


def token(i: int) -> bytes:
    return bytes([i]) * 32


class RealTLSTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.proxy = FakeConnectProxy(reactor, credentials=(USER, PASSWORD))
        port = listen_proxy(reactor, self.proxy)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.proxy.when_no_connections)
        self.environ = {
            "HTTPS_PROXY": f"http://{USER}:{PASSWORD}@127.0.0.1:{port.getHost().port}",
            "NO_PROXY": "example.com",
        }

    @defer.inlineCallbacks
    def test_http2_sender_goes_through_the_environment_proxy(self) -> Any:
        server = FakeAPNsServer(clock=self.reactor, sandbox=True, rng=random.Random(3))
        server.add_token_key(PKI.token_key_id, PKI.team_id, PKI.token_public_key)
        apns = listen_http2(
            self.reactor,
            server,
            tls_options=server_tls_options(PKI, require_client_cert=False, alpn=[b"h2"]),
        )
        self.addCleanup(apns.stopListening)
        self.addCleanup(server.when_no_connections)
        self.proxy.route(APNS, 443, to=("127.0.0.1", apns.getHost().port))
        files = PKI.write(temp_dir(self))
        app = AppConfig(
            name="app",
            bundle_id=PKI.topic,
            environment="sandbox",
            protocol="http2",
            credentials=TokenCredentials(
                Path(files["token_key_p8"]), PKI.token_key_id, PKI.team_id
            ),
            ca_file=Path(files["ca_cert"]),
        )
        with mock.patch.dict(os.environ, self.environ):
            sender = make_sender(app, self.reactor)  # to Apple's host name: no address given
        assert isinstance(sender, HTTP2Client)
        self.addCleanup(sender.stop)
        sender.start()
        result = yield sender.send(Notification.create(token(7), {"aps": {"alert": "x"}}))
        self.assertTrue(result.accepted)
        self.assertEqual(server.accepted_tokens(), [token(7).hex()])
        self.assertEqual(self.proxy.targets, [f"{APNS}:443"])
        self.assertEqual([(r.username, r.authorized) for r in self.proxy.requests], [(USER, True)])
        yield sender.stop()

    @defer.inlineCallbacks
    def test_binary_sender_goes_through_the_environment_proxy(self) -> Any:
        gateway, listening = tls_gateway(self, self.reactor, PKI)
        self.proxy.route(GATEWAY, 2195, to=("127.0.0.1", listening.getHost().port))
        app = binary_app(PKI.write(temp_dir(self)))
        with mock.patch.dict(os.environ, self.environ):
            sender = make_sender(app, self.reactor)
        assert isinstance(sender, BinaryClient)
        self.addCleanup(sender.stop, 5.0)
        sender.start()
        d = sender.send(Notification.create(token(9), {"aps": {"alert": "x"}}))
        yield sender.drain()
        result = yield d
        self.assertTrue(result.accepted)
        self.assertIn(token(9), [n.token for n in gateway.delivered])
        self.assertEqual(self.proxy.targets[0], f"{GATEWAY}:2195")
        yield sender.stop(5.0)
