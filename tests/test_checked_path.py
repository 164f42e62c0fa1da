"""Validation once (issue 11): what the engine's ``prepare`` validated reaches the HTTP/2
client as :class:`~txapns.core.notification.CheckedHTTP2` and is not validated again; anything
else (a plain list, a resumed notification, a binary app, other rules) is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.errors import PayloadTooLargeError
from txapns.core.jwt import ProviderToken
from txapns.core.notification import CheckedHTTP2, Notification, check_http2
from txapns.core.result import Result
from txapns.http2 import HTTP2Client
from txapns.service.engine import Engine, EngineApp, Prepared, Template
from txapns.service.spool import Spool, SpoolStore, inline_runner
from txapns.service.testing import FakeSender, accept
from txapns.testing.pki import make_test_pki

from .helpers import temp_dir

BUNDLE = "com.example.shop"
TOKEN = bytes.fromhex("ab" * 32)
#: Over the HTTP/2 limit (4096 bytes): only a validation can tell.
OVERSIZED = Notification(TOKEN, b'{"aps":{"alert":"' + b"x" * 5000 + b'"}}', topic=BUNDLE)


class _Never:
    """An endpoint whose connections never come: the client only queues."""

    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred()


class SendCheckedTests(SynchronousTestCase):
    def client(self, token_auth: bool = True) -> HTTP2Client:
        pki = make_test_pki()
        token = ProviderToken.from_p8(pki.token_key_p8, pki.token_key_id, pki.team_id)
        client = HTTP2Client(
            Clock(), _Never(), bundle_id=BUNDLE, token=token if token_auth else None
        )
        client.start()
        return client

    def test_a_checked_notification_is_not_validated_again(self) -> None:
        client = self.client()
        results: list[Result] = []
        client.send_checked(CheckedHTTP2(OVERSIZED, True), results.append)
        self.assertEqual(client.pending(), 1)
        # The same notification through send_to is validated.
        with self.assertRaises(PayloadTooLargeError):
            client.send_to(OVERSIZED, results.append)
        self.assertEqual(client.pending(), 1)

    def test_checked_for_other_rules_is_validated(self) -> None:
        results: list[Result] = []
        with self.assertRaises(PayloadTooLargeError):
            self.client(token_auth=True).send_checked(CheckedHTTP2(OVERSIZED, False), print)
        no_topic = Notification(OVERSIZED.token, OVERSIZED.payload)
        with self.assertRaises(PayloadTooLargeError):
            self.client().send_checked(CheckedHTTP2(no_topic, True), results.append)

    def test_check_http2_is_the_proof(self) -> None:
        with self.assertRaises(PayloadTooLargeError):
            check_http2(OVERSIZED, token_auth=True)
        fine = Notification(TOKEN, b'{"aps":{"alert":"x"}}', topic=BUNDLE)
        self.assertEqual(check_http2(fine, token_auth=True), CheckedHTTP2(fine, True))


class _Recording(FakeSender):
    """Records which path each notification came by."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.checked: list[Notification] = []
        self.plain: list[Notification] = []

    def send_to(self, notification: Notification, on_result: Callable[[Result], object]) -> None:
        self.plain.append(notification)
        super().send_to(notification, on_result)

    def send_checked(self, checked: CheckedHTTP2, on_result: Callable[[Result], object]) -> None:
        self.checked.append(checked.notification)
        self.send(checked.notification).addCallback(on_result)


class EngineTests(SynchronousTestCase):
    def setUp(self, protocol: str = "http2") -> None:
        self.clock = Clock()
        self.store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(self.store.close)
        self.sender = _Recording(auto=accept)
        self.engine = Engine(
            {
                "a": EngineApp(self.sender, bundle_id=BUNDLE, protocol=protocol),
                "b": EngineApp(FakeSender(auto=accept), bundle_id=BUNDLE),
            },
            Spool(self.store, self.clock, inline_runner),
            self.clock,
            purge_interval=0,
        )

    def start(self) -> None:
        self.engine.start()
        self.turns()

    def turns(self) -> None:
        for _ in range(5):
            self.clock.advance(0)

    def prepared(self, app: str = "a") -> Prepared:
        return self.engine.prepare(app, Template(payload={"aps": {"alert": "x"}}), ["ab" * 32])

    def test_what_prepare_validated_reaches_the_client_checked(self) -> None:
        self.start()
        batch = self.prepared()
        self.assertIsInstance(batch, Prepared)
        direct = self.engine.submit("a", batch)  # stored in flight, sent at once
        queued = self.engine.submit("a", self.prepared(), send_at=0.0)  # queued, then pumped
        self.turns()
        self.successResultOf(direct)
        self.successResultOf(queued)
        self.assertEqual(len(self.sender.checked), 2)
        self.assertEqual(self.sender.plain, [])

    def test_anything_else_is_validated_by_the_client(self) -> None:
        self.start()
        plain = [Notification.create(TOKEN, {"aps": {"alert": "x"}}, topic=BUNDLE)]
        done = [
            self.engine.submit("a", plain),
            self.engine.submit("a", self.prepared("b")),  # another app's
        ]
        self.turns()
        for d in done:
            self.successResultOf(d)
        self.assertEqual(len(self.sender.plain), 2)
        self.assertEqual(self.sender.checked, [])

    def test_resumed_notifications_are_validated_by_the_client(self) -> None:
        # Validated by an earlier process, perhaps under another configuration.
        self.store.add_job("a", list(self.prepared()), now=0.0)
        self.start()
        self.assertEqual(len(self.sender.plain), 1)
        self.assertEqual(self.sender.checked, [])

    def test_binary_apps_validate_in_their_client(self) -> None:
        self.setUp(protocol="binary")
        self.start()
        d = self.engine.submit("a", self.prepared())
        self.turns()
        self.successResultOf(d)
        self.assertEqual((len(self.sender.plain), self.sender.checked), (1, []))
