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
from twisted.internet.task import deferLater

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
SKIP = None if REDIS_SERVER and REDIS_CLI else "redis-server is not installed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; :meth:`kill` and :meth:`start` again keep port and data."""

    def __init__(self, directory: Path, *, appendfsync: str = "always") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None
        self.starts += 1
        log = self.dir / f"redis-{self.starts}.log"
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(log),
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        # Bounded wait for the server to load its AOF and listen.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:]}")
            if log.exists() and "Ready to accept connections" in log.read_text():
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
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), "--raw", *args],
            check=True,
            capture_output=True,
            timeout=10,
        )
        return out.stdout.decode().strip()


async def wait_until(reactor: Any, check: Any, timeout: float = 10.0, what: str = "") -> None:
    """Poll ``check()`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await deferLater(reactor, 0.02, lambda: None)


def as_deferred(coro: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coro)
