"""Shared by the tests that run real processes (``txapns`` CLI, ``twistd apns``, the fake
gateways): a child-process protocol that waits for output, and a mixin that starts the fake
gateway and the service (the crash and Redis cluster tests)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from .helpers import sleep
from .helpers_running import ApiClient

TOKEN = "ab" * 32


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txapns.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


class FakeProcess:
    """``python -m txapns.testing http2`` in a subprocess; the port from stdout's first line."""

    def __init__(self, test: TestCase, *args: str, pki: str | None = None) -> None:
        self.dir = tempfile.mkdtemp()
        self.pki = pki or os.path.join(self.dir, "pki")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "txapns.testing", "http2", "--pki-dir", self.pki, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        test.addCleanup(self.stop)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise AssertionError(f"fake printed {line!r} first; stderr: {self.stderr}")
        self.port = int(line)
        with open(os.path.join(self.pki, "token.json")) as f:
            self.token = json.load(f)
        self.stderr = ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                _, self.stderr = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()

    def key_file(self) -> str:
        return os.path.join(self.pki, f"AuthKey_{self.token['key_id']}.p8")

    def one_off(self, **overrides: str) -> list[str]:
        """``txapns send`` credential flags for this fake's token key."""
        flags = {
            "bundle-id": self.token["topic"],
            "environment": "sandbox",
            "key-file": self.key_file(),
            "key-id": self.token["key_id"],
            "team-id": self.token["team_id"],
            "host": "127.0.0.1",
            "port": str(self.port),
            "ca-file": os.path.join(self.pki, "ca.pem"),
        }
        flags.update(overrides)
        return [part for k, v in flags.items() if v for part in (f"--{k}", v)]

    def config(self, apps: Sequence[dict[str, str]]) -> str:
        """A TOML configuration with these apps (token auth against this fake)."""
        path = os.path.join(self.dir, "apns.toml")
        with open(path, "w") as f:
            for app in apps:
                entry = {
                    "bundle_id": self.token["topic"],
                    "environment": "sandbox",
                    "key_file": self.key_file(),
                    "key_id": self.token["key_id"],
                    "team_id": self.token["team_id"],
                    "host": "127.0.0.1",
                    "port": self.port,
                    "ca_file": os.path.join(self.pki, "ca.pem"),
                    **app,
                }
                f.write("[[app]]\n")
                for k, v in entry.items():
                    f.write(f"{k} = {json.dumps(v)}\n")
        return path


KEY = b"crash-test-api-key-0123456789"


class Child(ProcessProtocol):
    """A child process: stdout kept (and copied to a log file), stderr kept, end awaited."""

    def __init__(self, reactor: Any, name: str, log_path: Path) -> None:
        self.reactor = reactor
        self.name = name
        self.out = ""
        self.err = ""
        self.log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
        #: Fires with the exception that ended the process (ProcessDone, ProcessTerminated).
        self.ended: Deferred[BaseException] = Deferred()
        self.exit: BaseException | None = None
        self._waiters: list[tuple[re.Pattern[str], Deferred[re.Match[str]], IDelayedCall]] = []

    def outReceived(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        self.log.write(text)
        self.out = (self.out + text)[-200_000:]
        self._check()

    def errReceived(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        self.log.write(text)
        self.err = (self.err + text)[-20_000:]

    def processEnded(self, reason: Failure) -> None:
        self.exit = reason.value
        self.log.close()
        waiters, self._waiters = self._waiters, []
        for _, d, timer in waiters:
            timer.cancel()
            d.errback(AssertionError(f"{self.name} exited: {reason.value}\n{self.tail()}"))
        self.ended.callback(reason.value)

    @property
    def running(self) -> bool:
        return self.exit is None

    def tail(self) -> str:
        return f"--- {self.name} stdout ---\n{self.out[-3000:]}\n--- stderr ---\n{self.err[-3000:]}"

    def wait_for(self, pattern: str, timeout: float = 120.0) -> Deferred[re.Match[str]]:
        """Fires with the first match of ``pattern`` in stdout (bounded by ``timeout``).

        A liveness limit, not a speed assertion: three ``twistd apns`` starting at once under
        README's coverage run on a loaded 2-core machine printed nothing for more than 30 s.
        """
        regex = re.compile(pattern)
        d: Deferred[re.Match[str]] = Deferred()
        m = regex.search(self.out)
        if m is not None:
            d.callback(m)
            return d
        if not self.running:
            d.errback(AssertionError(f"{self.name} is not running\n{self.tail()}"))
            return d

        def expire() -> None:
            self._waiters = [w for w in self._waiters if w[1] is not d]
            d.errback(AssertionError(f"{self.name}: no {pattern!r} in {timeout}s\n{self.tail()}"))

        self._waiters.append((regex, d, self.reactor.callLater(timeout, expire)))
        return d

    def _check(self) -> None:
        for entry in list(self._waiters):
            regex, d, timer = entry
            m = regex.search(self.out)
            if m is not None:
                self._waiters.remove(entry)
                timer.cancel()
                d.callback(m)

    def signal(self, name: str) -> Deferred[BaseException]:
        """Send a signal (if still running); fires when the process has ended."""
        if self.running:
            self.transport.signalProcess(name)
        d: Deferred[BaseException] = Deferred()
        if not self.running:
            assert self.exit is not None
            d.callback(self.exit)
        else:
            self.ended.addBoth(lambda r: (d.callback(r), r)[1])
        return d


class ProcessServiceMixin:
    """Start the fake gateway and ``twistd apns`` as real processes (for a ``TestCase``).

    The test sets ``self.dir`` (the processes' working directory), ``self.children`` (every
    spawned :class:`Child`, killed by :meth:`kill_leftovers`), ``self.config`` (the service
    config file) and ``self.protocol``; the API key file holds :data:`KEY`.
    """

    dir: Path
    children: list[Child]
    config: Path
    protocol: str
    #: Whether the children are measured when the suite runs under coverage (README's
    #: command, ``--cov``): coverage's ``patch = ["subprocess"]`` starts it in every child
    #: Python that inherits ``COVERAGE_PROCESS_CONFIG``. A test about volume under load sets
    #: it false: measuring multiplies the children's CPU, and what they run is measured by
    #: the smaller real-process tests and the in-process ones.
    measured = True

    def app_credentials(self, pki: Path) -> list[str]:
        if self.protocol == "binary":
            return [
                'cert_file = "pki/client.pem"',
                'key_file = "pki/client-key.pem"',
            ]
        ids = json.loads((pki / "token.json").read_text())
        return [
            f'key_file = "pki/AuthKey_{ids["key_id"]}.p8"',
            f'key_id = "{ids["key_id"]}"',
            f'team_id = "{ids["team_id"]}"',
        ]

    def spawn(self, name: str, argv: list[str]) -> Child:
        from twisted.internet import reactor

        child = Child(reactor, name, self.dir / f"{name}.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not self.measured:
            env.pop("COVERAGE_PROCESS_CONFIG", None)
        reactor.spawnProcess(child, argv[0], argv, env=env, path=str(self.dir))
        self.children.append(child)
        return child

    async def kill_leftovers(self) -> None:
        for child in self.children:
            if child.running:
                await child.signal("KILL")

    def twistd(self) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        if twistd.exists():
            return [str(twistd)]
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

    async def start_service(self, name: str, config: Path | None = None) -> tuple[Child, ApiClient]:
        """``twistd apns`` with ``config`` (default: ``self.config``), once it answers."""
        from twisted.internet import reactor

        service = self.spawn(
            name,
            [
                *self.twistd(),
                "-n",
                "--pidfile=",
                "apns",
                "--config",
                str(config or self.config),
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ],
        )
        match = await service.wait_for(r"Api(?:Site|Factory) starting on (\d+)")
        api = ApiClient(reactor, f"http://127.0.0.1:{match.group(1)}", KEY, persistent=True)
        self.addCleanup(api.close)
        for _ in range(200):  # bounded: the engine opens the spool before it accepts
            health = await api.call("GET", "/healthz")
            if health.code == 200:
                break
            await sleep(reactor, 0.05)
        self.assertEqual(health.code, 200, service.tail())
        return service, api
