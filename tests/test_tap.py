"""``twistd apns`` options and service construction, without running a reactor."""

from __future__ import annotations

from twisted.application.service import IService, IServiceCollection
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txapns.service.config import ConfigError
from txapns.tap import Options, makeService


class OptionsTests(SynchronousTestCase):
    def test_no_app_means_fake(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertTrue(options["fake"])
        self.assertEqual(options["listen"], [])

    def test_listen_is_repeatable(self) -> None:
        options = Options()
        options.parseOptions(["--listen", "tcp:1:interface=127.0.0.1", "--listen", "unix:/x"])
        self.assertEqual(options["listen"], ["tcp:1:interface=127.0.0.1", "unix:/x"])

    def test_config_and_single_app_flags_exclude_each_other(self) -> None:
        options = Options()
        self.assertRaises(
            usage.UsageError, options.parseOptions, ["--config", "x.toml", "--bundle-id", "a.b"]
        )

    def test_single_app_flag_without_bundle_id_is_refused(self) -> None:
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--key-id", "ABC1234567"])

    def test_demo_count_must_be_positive(self) -> None:
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--demo", "0"])

    def test_bad_fake_protocol(self) -> None:
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--fake-protocol", "spdy"])


class MakeServiceTests(SynchronousTestCase):
    def test_fake_service_has_fake_clients_engine_and_api(self) -> None:
        options = Options()
        options.parseOptions(["--fake", "--listen", "tcp:0:interface=127.0.0.1"])
        service = makeService(options)
        self.assertTrue(IService.providedBy(service))
        names = [type(s).__name__ for s in IServiceCollection(service)]
        self.assertEqual(
            names, ["_FakeAPNs", "_StartSenders", "EngineService", "StreamServerEndpointService"]
        )
        self.assertFalse(service.running)

    def test_single_app_needs_an_api_key(self) -> None:
        options = Options()
        options.parseOptions(
            ["--bundle-id", "com.example.app", "--protocol", "binary", "--cert-file", "/no/such"]
        )
        self.assertRaises(ConfigError, makeService, options)
