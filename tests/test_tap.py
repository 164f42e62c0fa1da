"""``twistd apns`` options and service construction, without running a reactor."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.application.service import IService, IServiceCollection
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txapns.service.application import build_service
from txapns.service.config import ConfigError
from txapns.service.wiring import EngineService
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

    def test_listen_help_is_one_clean_line(self) -> None:
        doc = Options().docs["listen"]
        self.assertEqual(
            doc,
            "Listen for the HTTP API on this strports description (repeatable); "
            "default tcp:8325:interface=127.0.0.1.",
        )
        usage_text = " ".join(str(Options()).split("\n"))
        self.assertNotIn(";  ", usage_text)


class MakeServiceTests(SynchronousTestCase):
    def test_fake_service_has_fake_clients_engine_and_api(self) -> None:
        options = Options()
        options.parseOptions(["--fake", "--listen", "tcp:0:interface=127.0.0.1"])
        service = makeService(options)
        self.assertTrue(IService.providedBy(service))
        names = [type(s).__name__ for s in IServiceCollection(service)]
        self.assertEqual(names, ["EmbeddedAPNs", "StartSenders", "EngineService", "Listener"])
        self.assertFalse(service.running)

    def test_single_app_needs_an_api_key(self) -> None:
        options = Options()
        options.parseOptions(
            ["--bundle-id", "com.example.app", "--protocol", "binary", "--cert-file", "/no/such"]
        )
        self.assertRaises(ConfigError, build_service, options)

    def keep_work_files_in_a_temp_dir(self) -> None:
        directory = tempfile.mkdtemp(prefix="txapns-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.patch(tempfile, "tempdir", directory)

    def test_fake_binary_service_polls_feedback_and_reports_client_health(self) -> None:
        self.keep_work_files_in_a_temp_dir()
        options = Options()
        options.parseOptions(
            ["--fake", "--fake-protocol", "binary", "--listen", "tcp:0:interface=127.0.0.1"]
        )
        engine_service = next(
            s for s in IServiceCollection(makeService(options)) if isinstance(s, EngineService)
        )
        (poller,) = engine_service.feedback
        self.assertEqual(poller.app, "demo")
        self.assertEqual(poller.interval, 3600)
        health = engine_service.engine.health()["apps"]["demo"]
        self.assertEqual(health["client"]["protocol"], "binary")
        self.assertEqual(health["client"]["connections"], 0)
        self.assertEqual(health["feedback"]["polls"], 0)

    def test_fake_http2_service_reports_the_breaker(self) -> None:
        self.keep_work_files_in_a_temp_dir()
        options = Options()
        options.parseOptions(
            ["--fake", "--fake-protocol", "http2", "--listen", "tcp:0:interface=127.0.0.1"]
        )
        engine_service = next(
            s for s in IServiceCollection(makeService(options)) if isinstance(s, EngineService)
        )
        self.assertEqual(engine_service.feedback, [])
        health = engine_service.engine.health()["apps"]["demo"]
        self.assertEqual(health["client"]["breaker"], "closed")
        self.assertEqual(health["client"]["protocol"], "http2")
        self.assertNotIn("feedback", health)
        self.assertEqual(health["queued"], 0)  # the engine's own field, not the client's


class ConfigErrorTests(SynchronousTestCase):
    """``twistd apns`` reports a configuration it cannot use in one line, exit status 1."""

    def bad_config(self) -> str:
        directory = Path(tempfile.mkdtemp(prefix="txapns-test-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = directory / "bad.toml"
        path.write_text('[[app]]\nname = "shop"\nbundle_id = "com.example.shop"\n')
        return str(path)

    def test_make_service_prints_one_line_and_exits_1(self) -> None:
        options = Options()
        options.parseOptions(["--config", self.bad_config()])
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as cm:
            makeService(options)
        self.assertEqual(cm.exception.code, 1)
        self.assertEqual(
            stderr.getvalue(),
            "twistd apns: app 'shop': no credential: give key_file + key_id + team_id (token "
            "auth), cert_file (+ key_file) or p12_file (certificate auth)\n",
        )

    def test_a_multi_line_message_is_one_line(self) -> None:
        def broken(options: Options) -> IService:
            raise ConfigError("first\n  second\tthird")

        self.patch(sys.modules["txapns.tap"], "build_service", broken)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertRaises(SystemExit, makeService, Options())
        self.assertEqual(stderr.getvalue(), "twistd apns: first second third\n")

    def test_twistd_prints_no_traceback(self) -> None:
        twistd = Path(sys.executable).with_name("twistd")
        result = subprocess.run(
            [str(twistd), "-n", "--pidfile=", "apns", "--config", self.bad_config()],
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            timeout=120,
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        self.assertEqual(
            result.stderr.splitlines(),
            [
                "twistd apns: app 'shop': no credential: give key_file + key_id + team_id "
                "(token auth), cert_file (+ key_file) or p12_file (certificate auth)"
            ],
        )


class StartupFailureTests(SynchronousTestCase):
    """Issue 9, item 13: a spool in use by another instance, a corrupt or truncated spool,
    a port in use: one line on stderr, exit status 1, no traceback."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="txapns-test-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        twistd = Path(sys.executable).with_name("twistd")
        return subprocess.run(
            [str(twistd), "-n", "--pidfile=", "apns", "--fake", *args],
            capture_output=True,
            text=True,
            cwd=self.dir,
            env={**os.environ, "PYTHONWARNINGS": "ignore", "TMPDIR": str(self.dir)},
            timeout=120,
        )

    def assertOneLineExit(self, result: subprocess.CompletedProcess[str], *fragments: str) -> None:
        self.assertEqual(result.returncode, 1, result.stderr + result.stdout)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        last = result.stderr.splitlines()[-1]
        self.assertTrue(last.startswith("twistd apns: "), result.stderr)
        for fragment in fragments:
            self.assertIn(fragment, last)
        # Only the fake's own "embedded fake APNs" line may come before it.
        self.assertLessEqual(len(result.stderr.splitlines()), 2, result.stderr)

    def test_spool_in_use_by_another_instance(self) -> None:
        from txapns.service.spool import SpoolStore

        path = self.dir / "spool.sqlite3"
        holder = SpoolStore(path)
        self.addCleanup(holder.close)
        result = self.twistd("--listen", "tcp:0:interface=127.0.0.1", "--spool", str(path))
        self.assertOneLineExit(result, "in use by another process")

    def test_corrupt_and_truncated_spools(self) -> None:
        from txapns.service.spool import SpoolStore

        garbage = self.dir / "garbage.sqlite3"
        garbage.write_bytes(b"this is no database" * 300)
        result = self.twistd("--listen", "tcp:0:interface=127.0.0.1", "--spool", str(garbage))
        self.assertOneLineExit(result, "cannot open spool", "not a database")
        truncated = self.dir / "truncated.sqlite3"
        store = SpoolStore(truncated)
        store.close()
        with open(truncated, "r+b") as f:
            f.truncate(50)
        result = self.twistd("--listen", "tcp:0:interface=127.0.0.1", "--spool", str(truncated))
        self.assertOneLineExit(result, "cannot open spool")

    def test_port_in_use(self) -> None:
        import socket

        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = self.twistd("--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertOneLineExit(result, f"cannot listen on tcp:{port}:interface=127.0.0.1")
        # The fake's temporary directory is not left behind either.
        self.assertEqual([p.name for p in self.dir.iterdir() if p.name.startswith("txapns-")], [])
