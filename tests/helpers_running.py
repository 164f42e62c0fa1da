"""Shared by the tests of a running service (in-process ``twistd apns --fake``, or real
processes): a JSON client for the service API over an Agent, and the in-process harness."""

from __future__ import annotations

import json
import tempfile
from typing import Any

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from txapns.service.webhook import BytesProducer
from txapns.tap import Options, makeService
from txapns.testing.embedded import EmbeddedAPNs

from .helpers import sleep, temp_dir
from .helpers_api import Reply

KEY = b"running-service-key-0123456789"


class _Collect(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


class ApiClient:
    """A small JSON client for the service API over an :class:`Agent`."""

    def __init__(self, reactor: Any, base: str, key: bytes, *, persistent: bool = False) -> None:
        self.reactor = reactor
        self.base = base
        self.key = key
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.agent = Agent(reactor, pool=self.pool)

    def close(self) -> Deferred[None]:
        d: Deferred[None] = self.pool.closeCachedConnections()
        return d

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        auth: bytes | bool | None = True,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        h = Headers()
        if auth is True:
            h.addRawHeader("Authorization", b"Bearer " + self.key)
        elif isinstance(auth, bytes):
            h.addRawHeader("Authorization", b"Bearer " + auth)
        for k, v in (headers or {}).items():
            h.addRawHeader(k, v)
        producer = None
        if body is not None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.addRawHeader("Content-Type", "application/json")
            producer = BytesProducer(raw)
        response = await self.agent.request(
            method.encode(), (self.base + path).encode(), h, producer
        )
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_Collect(done))
        return Reply(response, await done)

    async def post(self, app: str, body: object, **kw: Any) -> Reply:
        return await self.call("POST", f"/v1/apps/{app}/notifications", body, **kw)

    async def wait_job(self, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll ``GET /v1/jobs/{id}`` until the job is done (bounded)."""
        deadline = self.reactor.seconds() + timeout
        while True:
            reply = await self.call("GET", f"/v1/jobs/{job_id}")
            if reply.code != 200:
                raise AssertionError(f"GET job answered {reply.code}: {reply.raw[:200]!r}")
            job: dict[str, Any] = reply.json
            if job["status"] == "done":
                return job
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"job not done after {timeout}s: {job['counts']}")
            await sleep(self.reactor, 0.05)


class RunningServiceMixin:
    """Start ``twistd apns --fake`` in-process; ``self.api`` talks to it."""

    protocol = "binary"
    #: (status, reason) the embedded fake gives a token starting with ff.
    invalid_answer: tuple[int, str] = (8, "InvalidToken")

    async def start_service(self: Any) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.dir = temp_dir(self)
        # makeService keeps its work files (PKI, spool, key) in a mkdtemp(): put it in ours.
        self.patch(tempfile, "tempdir", str(self.dir))
        key_file = self.dir / "api.key"
        key_file.write_bytes(KEY + b"\n")
        options = Options()
        options.parseOptions(
            [
                "--fake",
                "--fake-protocol",
                self.protocol,
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--api-key-file",
                str(key_file),
            ]
        )
        # A ConfigError or ImportError from makeService fails the test: broken wiring of a
        # protocol must never turn into a skipped class.
        service = makeService(options)
        assert isinstance(service, MultiService)
        self.service = service
        children = list(IServiceCollection(service))
        self.fake = next(s for s in children if isinstance(s, EmbeddedAPNs))
        self.engine_service = next(s for s in children if type(s).__name__ == "EngineService")
        listener = next(s for s in children if hasattr(s, "_waitingForPort"))
        service.startService()
        self.addCleanup(self.stop_service)
        port = await listener._waitingForPort
        await self.engine_service.started
        self.api = ApiClient(reactor, f"http://127.0.0.1:{port.getHost().port}", KEY)
        self.addCleanup(self.api.close)

    def stop_service(self: Any) -> Deferred[None] | None:
        if self.service.running:
            d: Deferred[None] = self.service.stopService()
            return d
        return None

    @property
    def engine(self: Any) -> Any:
        return self.engine_service.engine

    def delivered(self: Any) -> list[tuple[str, bytes]]:
        """(token hex, payload) of everything the embedded fake accepted, in order."""
        server = self.fake.server
        if self.protocol == "binary":
            return [(n.token.hex(), n.payload) for n in server.delivered]
        return [(n.token_hex, n.payload) for n in server.accepted]
