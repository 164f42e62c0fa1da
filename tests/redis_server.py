"""A real ``redis-server`` for tests: a free loopback port, a temporary directory, AOF on.

``redis-server`` must be installed (Debian's package; ``.ci/run`` installs it). Tests that
need it are skipped with a clear reason when it is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
SKIP = None if REDIS_SERVER and REDIS_CLI else "redis-server is not installed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; :meth:`kill` and :meth:`start` again keep port and data.

    With ``tls`` (a directory holding ``server.pem``, ``server-key.pem`` and ``ca.pem``, as
    :meth:`~txapns.testing.pki.TestPKI.write` writes them) it speaks only TLS on its port.
    """

    def __init__(
        self,
        directory: Path,
        *,
        appendfsync: str = "always",
        tls: Path | None = None,
        password: str | None = None,
        replica_of: RedisServer | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.tls = tls
        #: ``requirepass``: clients must AUTH first.
        self.password = password
        #: Started as a replica of this server (``replicaof``).
        self.replica_of = replica_of
        #: More ``--name value`` arguments for ``redis-server``.
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def command(self, log: Path) -> list[str]:
        assert REDIS_SERVER is not None
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls / "server.pem"),
                "--tls-key-file", str(self.tls / "server-key.pem"),
                "--tls-ca-cert-file", str(self.tls / "ca.pem"),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        if self.password is not None:
            listen += ["--requirepass", self.password]
        if self.replica_of is not None:
            listen += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        listen += self.options
        return [
            REDIS_SERVER,
            *listen,
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(log),
        ]  # fmt: skip

    ready = "Ready to accept connections"

    def start(self, timeout: float = 10.0) -> None:
        self.starts += 1
        log = self.dir / f"redis-{self.starts}.log"
        self.process = subprocess.Popen(self.command(log), stdin=subprocess.DEVNULL)
        # Bounded wait for the server to load its AOF and listen.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:]}")
            if log.exists() and self.ready in log.read_text():
                return
            time.sleep(0.01)
        raise RuntimeError(f"redis-server did not start in {timeout}s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF rewrite."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def cli(self, *args: str) -> str:
        """Run one command with ``redis-cli`` (raw output)."""
        assert REDIS_CLI is not None
        tls: list[str] = []
        if self.tls is not None:
            tls = ["--tls", "--cacert", str(self.tls / "ca.pem")]
        if self.password is not None:
            tls += ["-a", self.password, "--no-auth-warning"]
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *tls, "--raw", *args],
            check=True,
            capture_output=True,
            timeout=10,
        )
        return out.stdout.decode().strip()

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` as a dict."""
        out = self.cli("INFO", section)
        return dict(
            line.split(":", 1) for line in out.splitlines() if ":" in line and line[0] != "#"
        )


class RedisSentinel(RedisServer):
    """``redis-server --sentinel`` watching ``master`` under the name ``name``; it takes the
    master for down after ``down_after_ms`` without an answer (and, alone, fails over)."""

    def __init__(
        self, directory: Path, master: RedisServer, name: str, *, down_after_ms: int = 60000
    ) -> None:
        super().__init__(directory)
        self.master = master
        self.name = name
        self.down_after_ms = down_after_ms

    def command(self, log: Path) -> list[str]:
        assert REDIS_SERVER is not None
        config = self.dir / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {self.dir}",
                    f"logfile {log}",
                    f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1",
                    f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.name} 10000",
                    "",
                ]
            )
        )
        return [REDIS_SERVER, str(config), "--sentinel"]

    ready = "+monitor master"


class _RelayIn(Protocol):
    """A client's connection to the relay; its data goes to Redis once that is connected."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.early: list[bytes] = []
        self.out: _RelayOut | None = None

    def connectionMade(self) -> None:
        self.relay.open.add(self)
        endpoint = TCP4ClientEndpoint(self.relay.reactor, "127.0.0.1", self.relay.target, 5)
        connectProtocol(endpoint, _RelayOut(self)).addCallbacks(self._up, self._no_redis)

    def _up(self, out: _RelayOut) -> None:
        assert out.transport is not None
        if self not in self.relay.open:  # the client went away meanwhile
            out.transport.loseConnection()
            return
        self.out = out
        for data in self.early:
            out.transport.write(data)
        self.early.clear()

    def _no_redis(self, failure: Failure) -> None:
        self.relay.cut += 1
        assert self.transport is not None
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.out is not None and self.out.transport is not None:
            self.out.transport.write(data)
        else:
            self.early.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.relay.open.discard(self)
        if self.out is not None and self.out.transport is not None:
            self.out.transport.loseConnection()


class _RelayOut(Protocol):
    def __init__(self, inside: _RelayIn) -> None:
        self.inside = inside

    def dataReceived(self, data: bytes) -> None:
        assert self.inside.transport is not None
        self.inside.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inside.transport is not None:
            self.inside.transport.loseConnection()


class Relay(Factory):
    """A TCP relay on a free loopback port in front of Redis on ``target``, as HAProxy or a
    cloud load balancer would be: it accepts every connection at once and closes it when
    Redis does not answer, so while Redis is down a client's connection opens and is lost
    during its set-up (AUTH, SELECT). ``cut`` counts those."""

    def __init__(self, reactor: Any, target: int) -> None:
        self.reactor = reactor
        self.target = target
        self.cut = 0
        self.open: set[_RelayIn] = set()
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.port: int = self.listening.getHost().port

    def buildProtocol(self, addr: Any) -> _RelayIn:
        return _RelayIn(self)

    def stop(self) -> Deferred[Any]:
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.abortConnection()  # type: ignore[attr-defined]
        d: Deferred[Any] = self.listening.stopListening()
        return d


async def wait_until(reactor: Any, check: Any, timeout: float = 10.0, what: str = "") -> None:
    """Poll ``check()`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await deferLater(reactor, 0.02, lambda: None)


def as_deferred(coro: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coro)
