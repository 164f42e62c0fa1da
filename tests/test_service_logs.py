"""The service's log output and start-up lines (issue 12, items 7 and 8): info level by
default, no ``Starting factory <… at 0x…>`` lines, one line per app and per listener, JSON
lines on request, hints in errors a newcomer meets, systemd's readiness protocol."""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.application.service import Application, IServiceCollection
from twisted.logger import ILogObserver, Logger, LogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txapns.service.application import GC_THRESHOLDS, TopService, build_service, describe_app
from txapns.service.logs import hint_for, make_observer
from txapns.service.systemd import notify
from txapns.tap import Options

from .helpers_service import KEY_ID, TEAM_ID, write_p8


def emit_samples(observer: ILogObserver) -> None:
    publisher = LogPublisher(observer)
    log = Logger(namespace="txapns.sample", observer=publisher)
    log.debug("a debug line {n}", n=1)
    log.info("Starting factory {factory!r}", factory=object())
    log.info("connection {number} ready", number=2)
    log.error("shop: TLS failure: {why}", why="[('SSL routines', '', 'certificate verify failed')]")


class ObserverTests(SynchronousTestCase):
    def test_info_by_default_without_factory_lines(self) -> None:
        out = io.StringIO()
        emit_samples(make_observer(out=out))
        text = out.getvalue()
        self.assertNotIn("debug line", text)
        self.assertNotIn("Starting factory", text)
        self.assertIn("connection 2 ready", text)

    def test_debug_level_shows_everything(self) -> None:
        out = io.StringIO()
        emit_samples(make_observer(out=out, level="debug"))
        self.assertIn("debug line 1", out.getvalue())
        self.assertIn("Starting factory", out.getvalue())

    def test_warn_level(self) -> None:
        out = io.StringIO()
        emit_samples(make_observer(out=out, level="warn"))
        self.assertEqual(len(out.getvalue().splitlines()), 1)

    def test_json_lines(self) -> None:
        out = io.StringIO()
        emit_samples(make_observer(out=out, fmt="json"))
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([r["level"] for r in records], ["info", "error"])
        ready = records[0]
        self.assertEqual(ready["namespace"], "txapns.sample")
        self.assertEqual(ready["message"], "connection 2 ready")
        self.assertEqual(ready["number"], 2)
        self.assertRegex(ready["time"], r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00\Z")

    def test_certificate_verify_failed_names_ca_file(self) -> None:
        out = io.StringIO()
        emit_samples(make_observer(out=out))
        (line,) = [x for x in out.getvalue().splitlines() if "TLS failure" in x]
        self.assertIn("certificate verify failed", line)
        self.assertIn("(hint: ", line)
        self.assertIn("ca_file", line)
        out = io.StringIO()
        emit_samples(make_observer(out=out, fmt="json"))
        error = json.loads(out.getvalue().splitlines()[-1])
        self.assertIn("ca_file", error["hint"])
        self.assertIn("key_id", hint_for("403 InvalidProviderToken") or "")
        self.assertIsNone(hint_for("connection 1 ready"))


class TwistdObserverTests(SynchronousTestCase):
    def test_installed_on_the_application_for_twistd(self) -> None:
        directory = tempfile.mkdtemp(prefix="txapns-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.patch(tempfile, "tempdir", directory)
        logfile = Path(directory, "service.log")
        options = Options()
        options.environ = {}
        options.parent = {"logfile": str(logfile), "nodaemon": True}  # type: ignore[assignment]
        options.parseOptions(["--fake", "--log-format", "json", "--listen", "tcp:0"])
        application = Application("apns")
        build_service(options).setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        emit_samples(observer)
        lines = logfile.read_text().splitlines()
        self.assertEqual([json.loads(x)["level"] for x in lines], ["info", "error"])

    def test_log_options_from_environment_and_checked(self) -> None:
        options = Options()
        options.environ = {"TXAPNS_LOG_LEVEL": "debug"}
        options.parseOptions(["--fake"])
        self.assertEqual((options["log-level"], options["log-format"]), ("debug", "text"))
        options = Options()
        options.environ = {"TXAPNS_LOG_FORMAT": "xml"}
        e = self.assertRaises(usage.UsageError, options.parseOptions, ["--fake"])
        self.assertEqual(str(e), "TXAPNS_LOG_FORMAT must be one of text, json, not 'xml'")
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--log-level", "loud"])
        self.assertIn("--log-level must be one of debug, info, warn, error, critical", str(e))


class EnvironmentModeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="txapns-test-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        write_p8(self.dir / f"AuthKey_{KEY_ID}.p8")
        (self.dir / "api.key").write_text("k" * 32)
        self.environ = {
            "TXAPNS_API_KEY_FILE": str(self.dir / "api.key"),
            "TXAPNS_SPOOL": str(self.dir / "spool.sqlite3"),
            "TXAPNS_LISTEN": "tcp:0:interface=127.0.0.1",
            "TXAPNS_APP_SHOP_BUNDLE_ID": "com.example.shop",
            "TXAPNS_APP_SHOP_KEY_FILE": str(self.dir / f"AuthKey_{KEY_ID}.p8"),
            "TXAPNS_APP_SHOP_KEY_ID": KEY_ID,
            "TXAPNS_APP_SHOP_TEAM_ID": TEAM_ID,
        }

    def test_apps_from_the_environment_alone(self) -> None:
        options = Options()
        options.environ = self.environ
        options.parseOptions([])
        self.assertFalse(options["fake"])
        service = build_service(options)
        self.assertEqual(service.config.apps[0].name, "shop")  # type: ignore[attr-defined]
        self.assertEqual(service.config.listen, ("tcp:0:interface=127.0.0.1",))  # type: ignore[attr-defined]
        self.assertIn("EngineService", [type(s).__name__ for s in IServiceCollection(service)])

    def test_config_file_from_txapns_config(self) -> None:
        path = self.dir / "apns.toml"
        path.write_text('api_key_file = "api.key"\nspool = "s.sqlite3"\n')
        env = {k: v for k, v in self.environ.items() if k != "TXAPNS_API_KEY_FILE"}
        options = Options()
        options.environ = {**env, "TXAPNS_CONFIG": str(path)}
        options.parseOptions([])
        self.assertEqual(options["config"], str(path))
        config = build_service(options).config  # type: ignore[attr-defined]
        self.assertEqual(config.spool, self.dir / "spool.sqlite3")  # the variable wins
        self.assertEqual(
            describe_app(config.apps[0]),
            {
                "app": "shop",
                "protocol": "http2",
                "target": "api.push.apple.com:443",
                "environment": "production",
                "topic": "com.example.shop",
                "auth": f"token auth (key {KEY_ID}, team {TEAM_ID})",
            },
        )


class SystemdTests(SynchronousTestCase):
    def listen(self) -> tuple[socket.socket, str]:
        directory = tempfile.mkdtemp(prefix="txapns-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        return sock, path

    def test_notify(self) -> None:
        sock, path = self.listen()
        self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(4096), b"READY=1")
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": path + ".gone"}))

    def test_the_collector_is_tuned_only_in_the_services_own_process(self) -> None:
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
        directory = tempfile.mkdtemp(prefix="txapns-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.patch(tempfile, "tempdir", directory)

        def top(twistd: bool) -> TopService:
            options = Options()
            options.environ = {}
            if twistd:
                options.parent = {"logfile": "-", "nodaemon": True}  # type: ignore[assignment]
            options.parseOptions(["--fake", "--listen", "tcp:0"])
            service = build_service(options)
            assert isinstance(service, TopService)
            service.setServiceParent(Application("apns"))
            return service

        embedded = top(twistd=False)
        embedded._ready(None)  # what startService calls once the API listens
        self.assertEqual((gc.get_threshold(), gc.get_freeze_count()), ((700, 10, 10), 0))
        own = top(twistd=True)
        own._ready(None)
        self.assertEqual(gc.get_threshold(), GC_THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), 1000)

    def test_twistd_run_logs_at_info_says_what_it_runs_and_notifies_systemd(self) -> None:
        sock, path = self.listen()
        twistd = Path(sys.executable).with_name("twistd")
        result = subprocess.run(
            [
                str(twistd),
                "-n",
                "--pidfile=",
                "apns",
                "--fake",
                "--demo",
                "2",
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ],
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
            env={**os.environ, "PYTHONWARNINGS": "ignore", "NOTIFY_SOCKET": path},
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout
        self.assertNotIn("Starting factory", out)
        self.assertNotIn("#debug]", out)
        self.assertNotRegex(out, r" at 0x[0-9a-f]+>")
        self.assertIn(
            "app demo: http2 to the embedded fake APNs (sandbox), topic com.example.app, "
            "token auth (key ",
            out,
        )
        self.assertRegex(out, r"API listening on 127\.0\.0\.1:\d+")
        sock.setblocking(False)
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=sending")
        self.assertEqual(sock.recv(4096), b"STOPPING=1")


class TLSHintTests(SynchronousTestCase):
    """The hint travels in the error itself, so an API result's ``reason`` and ``txapns send``
    carry it too, not only the service log."""

    def test_certificate_verify_failed_names_ca_file(self) -> None:
        from OpenSSL import SSL

        from txapns.core.errors import TLSFailureError
        from txapns.credentials import as_connection_error

        error = as_connection_error(SSL.Error([("SSL routines", "", "certificate verify failed")]))
        self.assertIsInstance(error, TLSFailureError)
        self.assertIn("certificate verify failed", str(error))
        self.assertIn("ca_file", str(error))
        gave_up = TLSFailureError(f"{error}; gave up after 3 attempts")
        self.assertEqual(str(gave_up).count("(hint:"), 1)
        self.assertEqual(str(TLSFailureError("handshake timed out")), "handshake timed out")

    def test_log_line_gets_one_hint(self) -> None:
        from txapns.core.errors import TLSFailureError

        out = io.StringIO()
        publisher = LogPublisher(make_observer(out=out))
        log = Logger(namespace="txapns.sample", observer=publisher)
        log.error("{error}", error=str(TLSFailureError("x: certificate verify failed")))
        self.assertEqual(out.getvalue().count("(hint:"), 1)
