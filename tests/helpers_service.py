"""Shared by the service test modules: the engine harness and fake webhook agent, and the
config test constants."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from txapns.core import Notification
from txapns.service.config import (
    AppConfig,
    TokenCredentials,
)
from txapns.service.engine import (
    Engine,
    EngineApp,
    Template,
)
from txapns.service.spool import OutcomeRecord, Spool, SpoolStore, inline_runner
from txapns.service.testing import FakeSender, accept

from .helpers import temp_dir, token

BUNDLE = "com.example.a"


ALERT = Template(payload={"aps": {"alert": "hi"}})


class Harness(SynchronousTestCase):
    """Builds an engine over a real SQLite spool run inline, and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.path = temp_dir(self) / "spool.db"
        self.sender = FakeSender()
        self.engine = self.make_engine()

    def make_engine(self, senders: dict[str, EngineApp] | None = None, **kw: Any) -> Engine:
        self.store = SpoolStore(self.path)
        self.addCleanup(lambda: self.store.close())
        self.spool = Spool(self.store, self.clock, inline_runner)
        apps = senders or {"a": EngineApp(self.sender, bundle_id=BUNDLE)}
        kw.setdefault("purge_interval", 0)
        kw.setdefault("watch_interval", 0)
        return Engine(apps, self.spool, self.clock, **kw)

    def start(self) -> None:
        d = self.engine.start()
        self.turn()
        self.successResultOf(d)

    def turn(self) -> None:
        self.clock.advance(0)

    def submit(self, n: int = 1, first: int = 0, **kw: Any) -> Deferred[Any]:
        ns = self.engine.prepare(
            "a", kw.pop("template", ALERT), [token(first + i) for i in range(n)]
        )
        return self.engine.submit("a", ns, **kw)

    def result(self, d: Deferred[Any]) -> Any:
        self.turn()
        return self.successResultOf(d)

    def submit_and_turn(self, n: int = 1, **kw: Any) -> Deferred[Any]:
        d = self.submit(n, **kw)
        self.turn()
        return d

    def fresh(self, senders: dict[str, EngineApp] | None = None, **kw: Any) -> Engine:
        """A second engine over a new spool file (the first store stays open)."""
        self.path = temp_dir(self) / "spool.db"
        return self.make_engine(senders, **kw)

    def states(self) -> dict[str, int]:
        return {state: n for (_, state), n in self.store.counts().items()}


class FakeResponse:
    """An answer whose body is ``chunks`` then ``end`` (``None``: the body never ends)."""

    def __init__(
        self,
        code: int,
        chunks: Sequence[bytes] = (b"ok",),
        end: type[Exception] | None = ResponseDone,
    ) -> None:
        self.code = code
        self.phrase = b"Whatever"
        self.chunks = chunks
        self.end = end
        self.transport = StringTransport()

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(self.transport)
        for chunk in self.chunks:
            protocol.dataReceived(chunk)
        if self.end is not None:
            protocol.connectionLost(Failure(self.end()))


@implementer(IAgent)
class FakeAgent:
    """Records each request as (method, uri, headers, body) and answers ``response``: a
    :class:`FakeResponse`, a status code (a short body that ends), or ``None`` (never)."""

    def __init__(self, response: FakeResponse | int | None = 200) -> None:
        if isinstance(response, int):
            response = FakeResponse(response)
        self.response = response
        self.requests: list[tuple[bytes, bytes, Headers, bytes]] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        written = StringTransport()
        assert bodyProducer is not None and headers is not None
        bodyProducer.startProducing(written)
        self.requests.append((method, uri, headers, written.value()))
        return Deferred() if self.response is None else succeed(self.response)


NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


KEY_ID = "ABC1234567"


TEAM_ID = "TEAM987654"


def write_p8(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))


def note(i: int, **kw: object) -> Notification:
    """A notification for the spool's tests: token ``i``, alert ``hello i``."""
    return Notification.create(token(i), {"aps": {"alert": f"hello {i}"}}, **kw)  # type: ignore[arg-type]


def outcome(
    store_id: int, job_id: str, i: int, state: str = "accepted", **kw: object
) -> OutcomeRecord:
    """Spool row ``store_id``'s outcome (job ``job_id``, app ``a``, token ``i``)."""
    return OutcomeRecord(id=store_id, job_id=job_id, app="a", token=token(i), state=state, **kw)  # type: ignore[arg-type]


def app_config(name: str) -> AppConfig:
    return AppConfig(
        name=name,
        bundle_id="com.example.shop",
        environment="sandbox",
        protocol="http2",
        credentials=TokenCredentials(Path("AuthKey_ABC1234567.p8"), "ABC1234567", "T1"),
    )


def accepting_engine(
    case: SynchronousTestCase, clock: Clock
) -> tuple[Engine, SpoolStore, FakeSender]:
    """A started engine with one app, ``a``, whose :class:`FakeSender` accepts everything,
    over a SQLite spool in a temp dir run inline: what the API tests put behind the API."""
    store = SpoolStore(temp_dir(case) / "spool.db")
    case.addCleanup(store.close)
    sender = FakeSender(auto=accept)
    engine = Engine(
        {"a": EngineApp(sender, bundle_id="com.example.a")},
        Spool(store, clock, inline_runner),
        clock,
        purge_interval=0,
    )
    engine.start()
    clock.advance(0)
    return engine, store, sender
