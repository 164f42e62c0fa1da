"""The running service (``twistd apns --fake``) driven through its HTTP API by a real client.

Each test builds the service exactly as ``twistd apns --fake --listen tcp:0:...`` does
(:func:`txapns.tap.makeService`), starts it on the trial reactor, and talks to it with
:class:`twisted.web.client.Agent` over loopback. Notifications go through the real engine,
the SQLite spool (in its thread pool) and the real client, over TLS, to the embedded fake
APNs, whose delivery record the tests read. The binary class runs everything; the HTTP/2
class runs the same tests against the embedded HTTP/2 fake.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txapns.service.config import ConfigError
from txapns.tap import Options
from txapns.testing.embedded import FAKE_APP

from . import helpers_running
from .helpers import deferred_test, metric, temp_dir, token
from .helpers_running import KEY, RunningServiceMixin

INVALID = "ff" * 32  # the embedded fakes refuse tokens starting with ff


class BinaryRunningServiceTests(RunningServiceMixin, TestCase):
    timeout = 30

    # -- auth --

    @deferred_test
    async def test_every_route_needs_the_key(self) -> None:
        await self.start_service()
        routes = [
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/v1/jobs/x"),
            ("GET", f"/v1/apps/{FAKE_APP}/invalid-tokens"),
            ("POST", f"/v1/apps/{FAKE_APP}/notifications"),
        ]
        for method, path in routes:
            for auth in (False, b"not-the-key-0123456789abcdef", KEY[:-1]):
                body = {"token": token(1), "alert": "x"} if method == "POST" else None
                reply = await self.api.call(method, path, body, auth=auth)
                self.assertEqual(reply.code, 401, (method, path, reply.raw))
                self.assertEqual(reply.json["error"]["code"], "unauthorized")
                self.assertEqual(reply.header("WWW-Authenticate"), 'Bearer realm="txapns"')
        self.assertEqual((await self.api.call("GET", "/healthz")).code, 200)
        self.assertEqual(self.delivered(), [])
        text = (await self.api.call("GET", "/metrics")).raw.decode()
        self.assertEqual(metric(text, "txapns_notifications_submitted_total", app=FAKE_APP), 0)

    # -- sending --

    @deferred_test
    async def test_single_notification_end_to_end(self) -> None:
        await self.start_service()
        reply = await self.api.post(
            FAKE_APP, {"token": token(7), "title": "Hi", "body": "there", "badge": 3}
        )
        self.assertEqual(reply.code, 200, reply.raw)
        job = reply.json
        self.assertEqual((job["status"], job["total"], job["async"]), ("done", 1, False))
        (result,) = job["results"]
        self.assertEqual((result["index"], result["token"]), (0, token(7)))
        self.assertEqual(result["outcome"], "accepted")
        self.assertFalse(result["may_duplicate"])
        delivered = self.delivered()
        self.assertEqual([t for t, _ in delivered], [token(7)])
        self.assertEqual(
            json.loads(delivered[0][1]),
            {"aps": {"alert": {"title": "Hi", "body": "there"}, "badge": 3}},
        )

    @deferred_test
    async def test_batch_with_an_invalid_token_answers_per_recipient(self) -> None:
        await self.start_service()
        tokens = [token(1), token(2), INVALID, token(4), token(5)]
        reply = await self.api.post(FAKE_APP, {"tokens": tokens, "alert": "batch"})
        self.assertEqual(reply.code, 200, reply.raw)
        results = reply.json["results"]
        self.assertEqual([r["index"] for r in results], list(range(5)))
        self.assertEqual([r["token"] for r in results], tokens)
        status, reason = self.invalid_answer
        self.assertEqual(
            [(r["outcome"], r["status"], r["reason"]) for r in results if r["token"] == INVALID],
            [("rejected", status, reason)],
        )
        self.assertEqual(
            [r["outcome"] for r in results], ["accepted"] * 2 + ["rejected"] + ["accepted"] * 2
        )
        self.assertEqual(
            reply.json["counts"],
            {"queued": 0, "inflight": 0, "accepted": 4, "rejected": 1, "unknown": 0},
        )
        # The fake got the four good ones (those after the bad one were replayed, once each).
        self.assertEqual(sorted(t for t, _ in self.delivered()), sorted(set(tokens) - {INVALID}))

    @deferred_test
    async def test_async_job_then_poll(self) -> None:
        await self.start_service()
        tokens = [token(i) for i in range(1, 51)]
        reply = await self.api.post(
            FAKE_APP, {"tokens": tokens, "payload": {"aps": {"alert": "async"}}, "async": True}
        )
        self.assertEqual(reply.code, 202, reply.raw)
        job_id = reply.json["job_id"]
        self.assertEqual(reply.json["status_url"], f"/v1/jobs/{job_id}")
        self.assertFalse(reply.json["duplicate"])
        job = await self.api.wait_job(job_id)
        self.assertTrue(job["async"])
        self.assertEqual(job["total"], 50)
        self.assertEqual(job["counts"]["accepted"], 50)
        self.assertIsNotNone(job["finished"])
        self.assertEqual([r["token"] for r in job["results"]], tokens)
        self.assertEqual(sorted(t for t, _ in self.delivered()), tokens)
        missing = await self.api.call("GET", "/v1/jobs/no-such-job")
        self.assertEqual(missing.code, 404)
        self.assertEqual(missing.json["error"]["code"], "unknown_job")

    @deferred_test
    async def test_invalid_tokens_feed(self) -> None:
        await self.start_service()
        empty = await self.api.call("GET", f"/v1/apps/{FAKE_APP}/invalid-tokens")
        self.assertEqual((empty.code, empty.json["tokens"]), (200, []))
        # Enough good answers around it for the BadDeviceToken/InvalidToken answer to mean a
        # dead token, not a wrong environment (the detector needs 10 answers by default).
        tokens = [token(i) for i in range(1, 11)] + [INVALID]
        reply = await self.api.post(FAKE_APP, {"tokens": tokens, "alert": "x"})
        self.assertEqual(reply.code, 200, reply.raw)
        feed = await self.api.call("GET", f"/v1/apps/{FAKE_APP}/invalid-tokens")
        self.assertEqual(feed.code, 200)
        self.assertEqual(feed.json["app"], FAKE_APP)
        status, reason = self.invalid_answer
        kind = "invalid_token" if status == 8 else "bad_token"
        self.assertEqual(
            [
                (t["token"], t["status"], t["reason"], t["source"], t["kind"])
                for t in feed.json["tokens"]
            ],
            [(INVALID, status, reason, "apns", kind)],
        )
        later = feed.json["next_since"] + 1
        after = await self.api.call("GET", f"/v1/apps/{FAKE_APP}/invalid-tokens?since={later}")
        self.assertEqual((after.code, after.json["tokens"]), (200, []))
        text = (await self.api.call("GET", "/metrics")).raw.decode()
        self.assertEqual(metric(text, "txapns_invalid_tokens_total", app=FAKE_APP), 1)

    # -- operations --

    @deferred_test
    async def test_healthz_and_metrics(self) -> None:
        await self.start_service()
        health = await self.api.call("GET", "/healthz")
        self.assertEqual(health.code, 200)
        self.assertEqual(health.header("Content-Type"), "application/json")
        self.assertEqual(health.json["status"], "ok")
        self.assertEqual(health.json["apps"][FAKE_APP]["protocol"], self.protocol)
        reply = await self.api.post(FAKE_APP, {"tokens": [token(1), token(2)], "alert": "m"})
        self.assertEqual(reply.code, 200, reply.raw)
        health = (await self.api.call("GET", "/healthz")).json["apps"][FAKE_APP]
        self.assertGreaterEqual(health["connections_made"], 1)
        self.assertEqual((health["queued"], health["inflight"]), (0, 0))
        # The client's own state: connections, and the HTTP/2 circuit breaker.
        client = health["client"]
        self.assertEqual(client["protocol"], self.protocol)
        self.assertGreaterEqual(client["connections"], 1)
        if self.protocol == "http2":
            self.assertEqual((client["breaker"], client["breaker_reason"]), ("closed", None))
        reply = await self.api.post(FAKE_APP, {"token": INVALID, "alert": "m"})
        self.assertEqual(reply.json["results"][0]["outcome"], "rejected")
        metrics = await self.api.call("GET", "/metrics")
        self.assertEqual(metrics.code, 200)
        self.assertIn("text/plain", metrics.header("Content-Type") or "")
        text = metrics.raw.decode()
        self.assertIn("# TYPE txapns_notifications_accepted_total counter", text)
        self.assertEqual(metric(text, "txapns_notifications_submitted_total", app=FAKE_APP), 3)
        self.assertEqual(metric(text, "txapns_notifications_sent_total", app=FAKE_APP), 3)
        self.assertEqual(metric(text, "txapns_notifications_accepted_total", app=FAKE_APP), 2)
        _, reason = self.invalid_answer
        self.assertEqual(
            metric(text, "txapns_notifications_rejected_total", app=FAKE_APP, reason=reason), 1
        )
        self.assertEqual(metric(text, "txapns_resumed_maybe_duplicate_total", app=FAKE_APP), 0)
        self.assertEqual(metric(text, "txapns_delivery_latency_seconds_count", app=FAKE_APP), 3)
        self.assertGreaterEqual(metric(text, "txapns_connections_made_total", app=FAKE_APP), 1)
        self.assertEqual(
            metric(text, "txapns_http_responses_total", route="notifications", code="200"), 2
        )
        self.assertNotIn(INVALID, text)  # tokens never appear in metrics

    # -- bad input --

    @deferred_test
    async def test_each_bad_input_gets_a_precise_4xx_and_stores_nothing(self) -> None:
        await self.start_service()
        app = FAKE_APP
        big_alert = "x" * 5000
        limit = 8 * 1024 * 1024
        cases: list[tuple[str, str, object, int, str, str]] = [
            ("POST", "/v1/apps/nope/notifications", {"token": token(1), "alert": "x"},
             404, "unknown_app", "'nope'"),
            ("POST", f"/v1/apps/{app}/notifications", {"token": "abc", "alert": "x"},
             400, "invalid_token", "tokens[0]"),
            ("POST", f"/v1/apps/{app}/notifications",
             {"tokens": [token(1), "zz" * 32], "alert": "x"}, 400, "invalid_token", "tokens[1]"),
            ("POST", f"/v1/apps/{app}/notifications", {"token": token(1), "alert": big_alert},
             413, "payload_too_large", "bytes"),
            ("POST", f"/v1/apps/{app}/notifications", b'{"token": "ab", ',
             400, "malformed_json", "not valid JSON"),
            ("POST", f"/v1/apps/{app}/notifications", b"\xff\xfe{}",
             400, "malformed_json", "UTF-8"),
            ("POST", f"/v1/apps/{app}/notifications", b"[1, 2]",
             400, "malformed_json", "an array"),
            ("POST", f"/v1/apps/{app}/notifications", b"x" * (limit + 1),
             413, "body_too_large", str(limit)),
            ("POST", f"/v1/apps/{app}/notifications",
             {"tokens": [token(i) for i in range(10_001)], "alert": "x"},
             400, "too_many_recipients", "10001"),
            ("POST", f"/v1/apps/{app}/notifications", {"tokens": [], "alert": "x"},
             400, "no_recipients", "empty"),
            ("POST", f"/v1/apps/{app}/notifications", {"token": token(1)},
             400, "invalid_request", "no content"),
            ("POST", f"/v1/apps/{app}/notifications", {"token": token(1), "alrt": "x"},
             400, "unknown_field", "'alrt'"),
            ("POST", f"/v1/apps/{app}/notifications",
             {"token": token(1), "alert": "x", "push_type": "telepathy"},
             400, "invalid_notification", "telepathy"),
            ("GET", f"/v1/apps/{app}/notifications", None,
             405, "method_not_allowed", "use POST"),
            ("GET", "/v2/nothing", None, 404, "not_found", "no such endpoint"),
            ("GET", f"/v1/apps/{app}/invalid-tokens?since=soon", None,
             400, "invalid_request", "since"),
        ]  # fmt: skip
        for method, path, body, code, kind, fragment in cases:
            reply = await self.api.call(method, path, body)
            self.assertEqual(reply.code, code, (path, kind, reply.raw[:300]))
            err = reply.json["error"]
            self.assertEqual(err["code"], kind, reply.raw[:300])
            self.assertIn(fragment, err["message"])
            if kind == "payload_too_large":
                self.assertGreater(err["size"], err["limit"])
                self.assertEqual(err["limit"], 2048 if self.protocol == "binary" else 4096)
            if kind == "body_too_large":
                self.assertEqual(err["limit"], limit)
            if kind == "too_many_recipients":
                self.assertEqual((err["count"], err["limit"]), (10_001, 10_000))
        self.assertEqual(self.delivered(), [])
        text = (await self.api.call("GET", "/metrics")).raw.decode()
        self.assertEqual(metric(text, "txapns_notifications_submitted_total", app=app), 0)
        self.assertEqual(metric(text, "txapns_queue_depth", app=app, state="queued"), 0)
        # Nothing in the spool (read in the spool's own one-thread pool).
        counts = await deferToThreadPool(
            self.reactor, self.engine_service.threadpool, self.engine.spool.store.counts
        )
        self.assertEqual(counts, {})
        # And the service still works.
        ok = await self.api.post(app, {"token": token(9), "alert": "still fine"})
        self.assertEqual(ok.json["results"][0]["outcome"], "accepted")

    # -- idempotency --

    @deferred_test
    async def test_idempotency_key_replays_the_first_answer_and_sends_nothing(self) -> None:
        await self.start_service()
        body = {"token": token(1), "alert": "once"}
        first = await self.api.post(FAKE_APP, body, headers={"Idempotency-Key": "order-17"})
        self.assertEqual(first.code, 200, first.raw)
        self.assertIsNone(first.header("Idempotent-Replayed"))
        again = await self.api.post(FAKE_APP, body, headers={"Idempotency-Key": "order-17"})
        self.assertEqual(again.code, 200, again.raw)
        self.assertEqual(again.header("Idempotent-Replayed"), "true")
        self.assertEqual(again.json, first.json)
        # Async, key in the body: the same body replays; another body with the key is
        # refused (422) and sends nothing new.
        batch = {"tokens": [token(2), token(3)], "alert": "a", "async": True,
                 "idempotency_key": "batch-9"}  # fmt: skip
        a1 = await self.api.post(FAKE_APP, batch)
        a2 = await self.api.post(FAKE_APP, batch)
        other = await self.api.post(
            FAKE_APP, {"tokens": [token(4)], "alert": "b", "async": True,
                       "idempotency_key": "batch-9"}
        )  # fmt: skip
        self.assertEqual((a1.code, a2.code, other.code), (202, 202, 422))
        self.assertEqual(a2.json["job_id"], a1.json["job_id"])
        self.assertEqual(other.json["error"]["job_id"], a1.json["job_id"])
        self.assertEqual((a1.json["duplicate"], a2.json["duplicate"]), (False, True))
        self.assertEqual(a2.header("Idempotent-Replayed"), "true")
        job = await self.api.wait_job(a1.json["job_id"])
        self.assertEqual([r["token"] for r in job["results"]], [token(2), token(3)])
        self.assertEqual(sorted(t for t, _ in self.delivered()), [token(1), token(2), token(3)])
        text = (await self.api.call("GET", "/metrics")).raw.decode()
        self.assertEqual(metric(text, "txapns_notifications_submitted_total", app=FAKE_APP), 3)

    @deferred_test
    async def test_the_fake_runs_temporary_directory_is_removed_at_stop(self) -> None:
        await self.start_service()
        (workdir,) = [p for p in self.dir.iterdir() if p.name.startswith("txapns-")]
        self.assertTrue((workdir / "spool.sqlite3").exists())
        await self.service.stopService()
        self.assertFalse(workdir.exists())

    @deferred_test
    async def test_livez_without_key(self) -> None:
        await self.start_service()
        reply = await self.api.call("GET", "/livez", auth=False)
        self.assertEqual((reply.code, reply.json), (200, {"status": "alive"}))


class HTTP2RunningServiceTests(BinaryRunningServiceTests):
    """The same, with the embedded HTTP/2 fake and client."""

    protocol = "http2"
    invalid_answer = (400, "BadDeviceToken")


class PerAppInflightTests(SynchronousTestCase):
    """The engine's in-flight bound is per app, and binary apps get a large one: a binary
    result only comes after the client's quiet window, so the bound caps the app's rate."""

    def test_binary_apps_get_the_binary_bound(self) -> None:
        from txapns.service.config import (
            AppConfig,
            CertificateCredentials,
            ServiceConfig,
            TokenCredentials,
        )
        from txapns.service.engine import BINARY_MAX_INFLIGHT, engine_apps
        from txapns.service.testing import FakeSender

        def app(name: str, protocol: str) -> AppConfig:
            creds: Any = (
                CertificateCredentials(cert_file=Path("c.pem"))
                if protocol == "binary"
                else TokenCredentials(Path("AuthKey_ABCDE12345.p8"), "ABCDE12345", "TEAM012345")
            )
            return AppConfig(name, "com.example.app", "sandbox", protocol, creds)  # type: ignore[arg-type]

        config = ServiceConfig(apps=(app("bin", "binary"), app("h2", "http2")))
        apps = engine_apps(config, {"bin": FakeSender(), "h2": FakeSender()})
        self.assertEqual(apps["bin"].max_inflight, BINARY_MAX_INFLIGHT)
        self.assertGreaterEqual(BINARY_MAX_INFLIGHT, 20_000)
        self.assertIsNone(apps["h2"].max_inflight)

    def test_http2_apps_get_a_connections_worth_of_streams_per_connection(self) -> None:
        # The bound is what the client can have on the wire: a single 1,000 held an app to
        # one connection's worth of streams however many connections its client opens.
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.testing import MemoryReactorClock

        from txapns.http2 import HTTP2Client
        from txapns.service.config import AppConfig, ServiceConfig, TokenCredentials
        from txapns.service.engine import HTTP2_INFLIGHT_PER_CONNECTION, engine_apps

        reactor = MemoryReactorClock()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", 443)
        creds = TokenCredentials(Path("AuthKey_ABCDE12345.p8"), "ABCDE12345", "TEAM012345")
        config = ServiceConfig(
            apps=tuple(
                AppConfig(name, "com.example.app", "sandbox", "http2", creds)
                for name in ("three", "default")
            )
        )
        senders = {
            "three": HTTP2Client(reactor, endpoint, max_connections=3),
            "default": HTTP2Client(reactor, endpoint),
        }
        apps = engine_apps(config, senders)
        self.assertEqual(HTTP2_INFLIGHT_PER_CONNECTION, 1000)
        self.assertEqual(apps["three"].max_inflight, 3000)
        default = senders["default"].max_connections
        self.assertGreater(default, 1)
        self.assertEqual(apps["default"].max_inflight, 1000 * default)

    def test_each_app_is_bounded_by_its_own_limit(self) -> None:
        from twisted.internet.task import Clock

        from txapns.service.engine import Engine, EngineApp, Template
        from txapns.service.spool import Spool, SpoolStore, inline_runner
        from txapns.service.testing import FakeSender

        clock = Clock()
        clock.advance(1_000_000)
        store = SpoolStore(temp_dir(self) / "spool.sqlite3")
        self.addCleanup(store.close)
        wide, narrow = FakeSender(), FakeSender()
        engine = Engine(
            {"wide": EngineApp(wide, max_inflight=3), "narrow": EngineApp(narrow)},
            Spool(store, clock, inline_runner),
            clock,
            max_inflight=1,
            purge_interval=0,
        )
        started = engine.start()
        clock.advance(0)
        self.successResultOf(started)
        template = Template(payload={"aps": {"alert": "x"}}, topic="com.example.app")
        for name in ("wide", "narrow"):
            notifications = engine.prepare(name, template, [token(i) for i in range(5)])
            engine.submit(name, notifications)
        for _ in range(5):
            clock.advance(0)
        self.assertEqual((len(wide.sent), len(narrow.sent)), (3, 1))
        wide.answer(0)
        for _ in range(5):
            clock.advance(0)
        self.assertEqual((len(wide.sent), len(narrow.sent)), (4, 1))


class BrokenWiringFailsTests(RunningServiceMixin, TestCase):
    """A service that cannot be built fails the running-service tests: it never skips them
    (a skipped class would hide a protocol whose wiring broke)."""

    protocol = "http2"

    @deferred_test
    async def test_errors_from_make_service_propagate(self) -> None:
        for error in (ConfigError("wiring broke"), ImportError("wiring broke")):

            def broken(options: Options, error: Exception = error) -> MultiService:
                raise error

            self.patch(helpers_running, "makeService", broken)
            try:
                await self.start_service()
            except SkipTest:
                self.fail(f"{type(error).__name__} from makeService skipped the test")
            except type(error) as e:
                self.assertIs(e, error)
            else:
                self.fail("start_service succeeded with a broken makeService")
