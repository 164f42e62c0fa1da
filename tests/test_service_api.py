"""The HTTP API over loopback with a real client (twisted.web.client.Agent)."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from txapns.service.api import Limits
from txapns.service.engine import Engine, EngineApp
from txapns.service.http1 import ABORT_TIMEOUT
from txapns.service.spool import Spool, SpoolStore, inline_runner
from txapns.service.testing import FakeSender
from txapns.service.wiring import make_listener

from .helpers import deferred_test, temp_dir, token
from .helpers_api import BUNDLE, KEY, Collect, Reply, responder


@implementer(IBodyProducer)
class ChunkedProducer:
    """A body of unknown length, so the Agent sends it chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, body: bytes) -> None:
        self.body = body

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for i in range(0, len(self.body), 65536):
            consumer.write(self.body[i : i + 65536])
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class ApiTests(TestCase):
    """The API over the lean HTTP/1.1 layer (the default); :class:`TwistedWebApiTests` runs
    the same tests over twisted.web."""

    server = "lean"

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        path = temp_dir(self) / "spool.db"
        self.store = SpoolStore(path)
        self.addCleanup(self.store.close)
        self.spool = Spool(self.store, reactor, inline_runner)  # type: ignore[arg-type]
        self.sender = FakeSender(auto=responder, clock=reactor)  # type: ignore[arg-type]
        self.engine = Engine(
            {"shop": EngineApp(self.sender, bundle_id=BUNDLE)},
            self.spool,
            reactor,  # type: ignore[arg-type]
            purge_interval=0,
            drain_timeout=1,
        )
        self.engine.start()
        self.addCleanup(self.stop_engine)
        site = make_listener(
            self.engine,
            KEY,
            Limits(max_body_bytes=64 * 1024, max_recipients=50),
            server=self.server,
        )
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.agent = Agent(reactor)

    def stop_engine(self) -> Deferred[None] | None:
        if self.engine.state == "running":
            return self.engine.stop()
        return None

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        auth: bytes | None = KEY,
        headers: dict[str, str] | None = None,
        producer: IBodyProducer | None = None,
    ) -> Reply:
        h = Headers()
        if auth is not None:
            h.addRawHeader("Authorization", b"Bearer " + auth)
        for k, v in (headers or {}).items():
            h.addRawHeader(k, v)
        if producer is None and body is not None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.addRawHeader("Content-Type", "application/json")
            producer = FileBodyProducer(BytesIO(raw))
        response = await self.agent.request(
            method.encode(), (self.base + path).encode(), h, producer
        )
        done: Deferred[bytes] = Deferred()
        response.deliverBody(Collect(done))
        return Reply(response, await done)

    async def post(self, body: object, app: str = "shop", **kw: Any) -> Reply:
        return await self.call("POST", f"/v1/apps/{app}/notifications", body, **kw)

    def assertError(self, reply: Reply, code: int, kind: str, *fragments: str) -> dict[str, Any]:
        self.assertEqual(reply.code, code, reply.raw)
        err: dict[str, Any] = reply.json["error"]
        self.assertEqual(err["code"], kind)
        for f in fragments:
            self.assertIn(f, err["message"])
        return err

    def assertNothingStored(self) -> None:
        self.assertEqual(self.store.counts(), {})
        self.assertEqual(self.sender.sent, [])

    @deferred_test
    async def test_the_body_is_json_whatever_the_content_type_says(self) -> None:
        # twisted.web's form parsing is off: it parsed every POST's Content-Type with the email
        # package, and answered a JSON body labelled as a form with its own bare 400.
        raw = json.dumps({"token": "ab" * 32, "alert": "hi", "async": True}).encode()
        for content_type in ("multipart/form-data; boundary=x", "multipart/form-data"):
            reply = await self.call(
                "POST",
                "/v1/apps/shop/notifications",
                headers={"Content-Type": content_type},
                producer=FileBodyProducer(BytesIO(raw)),
            )
            self.assertEqual(reply.code, 202, reply.raw)

    # -- auth --

    @deferred_test
    async def test_every_route_needs_the_key(self) -> None:
        routes = [
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/v1/jobs/x"),
            ("GET", "/v1/apps/shop/invalid-tokens"),
            ("POST", "/v1/apps/shop/notifications"),
            ("GET", "/nowhere"),
        ]
        for method, path in routes:
            for auth in (None, b"wrong-key-0123456789abcde", KEY + b"x", KEY[:-1]):
                body = {"token": token(1), "alert": "x"} if method == "POST" else None
                reply = await self.call(method, path, body, auth=auth)
                self.assertError(reply, 401, "unauthorized", "Bearer")
                self.assertEqual(reply.header("WWW-Authenticate"), 'Bearer realm="txapns"')
        reply = await self.call("GET", "/healthz", headers={"Authorization": "Basic " + "x" * 20})
        self.assertEqual(reply.code, 401)
        self.assertNothingStored()
        self.assertEqual((await self.call("GET", "/healthz")).code, 200)

    # -- sending --

    @deferred_test
    async def test_single_notification_waits_for_outcome(self) -> None:
        reply = await self.post({"token": token(1), "title": "Hi", "body": "there", "badge": 2})
        self.assertEqual(reply.code, 200, reply.raw)
        job = reply.json
        self.assertEqual(job["status"], "done")
        (r,) = job["results"]
        self.assertEqual(
            (r["index"], r["token"], r["outcome"], r["status"]), (0, token(1), "accepted", 200)
        )
        self.assertEqual(r["apns_id"], self.sender.sent[0].apns_id)
        sent = self.sender.sent[0]
        self.assertEqual(sent.topic, BUNDLE)
        self.assertEqual(
            json.loads(sent.payload),
            {"aps": {"alert": {"title": "Hi", "body": "there"}, "badge": 2}},
        )

    @deferred_test
    async def test_batch_results_per_recipient(self) -> None:
        tokens = [token(1), "f" * 60 + "dead", token(3), "e" * 60 + "bad0"]
        reply = await self.post(
            {
                "tokens": tokens,
                "payload": {"aps": {"alert": "x"}, "k": 1},
                "push_type": "alert",
                "priority": 5,
                "collapse_id": "c1",
                "expiration": 0,
            }
        )
        self.assertEqual(reply.code, 200, reply.raw)
        results = reply.json["results"]
        self.assertEqual([r["token"] for r in results], tokens)
        self.assertEqual(
            [(r["outcome"], r["status"], r["reason"]) for r in results],
            [
                ("accepted", 200, None),
                ("rejected", 410, "Unregistered"),
                ("accepted", 200, None),
                ("rejected", 400, "BadDeviceToken"),
            ],
        )
        self.assertEqual(results[1]["timestamp"], "2025-03-01T00:00:00Z")
        self.assertEqual(reply.json["counts"]["accepted"], 2)
        self.assertEqual({n.priority for n in self.sender.sent}, {5})
        self.assertEqual({n.collapse_id for n in self.sender.sent}, {"c1"})
        # The dead tokens are in the feed.
        feed = await self.call("GET", "/v1/apps/shop/invalid-tokens")
        self.assertEqual(feed.code, 200)
        self.assertEqual(
            [(t["token"], t["status"], t["reason"]) for t in feed.json["tokens"]],
            [(tokens[3], 400, "BadDeviceToken"), (tokens[1], 410, "Unregistered")]
            if feed.json["tokens"][0]["token"] == tokens[3]
            else [(tokens[1], 410, "Unregistered"), (tokens[3], 400, "BadDeviceToken")],
        )
        since = feed.json["next_since"] + 1
        later = await self.call("GET", f"/v1/apps/shop/invalid-tokens?since={since}")
        self.assertEqual(later.json["tokens"], [])
        bad = await self.call("GET", "/v1/apps/shop/invalid-tokens?since=yesterday")
        self.assertError(bad, 400, "invalid_request", "since 'yesterday'")
        iso = await self.call("GET", "/v1/apps/shop/invalid-tokens?since=2000-01-01T00:00:00Z")
        self.assertEqual(len(iso.json["tokens"]), 2)

    @deferred_test
    async def test_async_job(self) -> None:
        reply = await self.post({"tokens": [token(1), token(2)], "alert": "x", "async": True})
        self.assertEqual(reply.code, 202, reply.raw)
        job_id = reply.json["job_id"]
        self.assertEqual(reply.json["status_url"], f"/v1/jobs/{job_id}")
        # Durably stored before the answer.
        self.assertEqual(sum(self.store.counts().values()), 2)
        await self.engine.wait(job_id)
        job = await self.call("GET", f"/v1/jobs/{job_id}")
        self.assertEqual(job.code, 200)
        self.assertEqual(job.json["status"], "done")
        self.assertTrue(job.json["async"])
        self.assertEqual(job.json["counts"]["accepted"], 2)
        missing = await self.call("GET", "/v1/jobs/nope")
        self.assertError(missing, 404, "unknown_job")

    @deferred_test
    async def test_idempotency(self) -> None:
        body = {"token": token(1), "alert": "x"}
        first = await self.post(body, headers={"Idempotency-Key": "abc"})
        second = await self.post(body, headers={"Idempotency-Key": "abc"})
        self.assertEqual(first.code, 200)
        self.assertEqual(second.code, 200)
        self.assertEqual(first.json, second.json)
        self.assertIsNone(first.header("Idempotent-Replayed"))
        self.assertEqual(second.header("Idempotent-Replayed"), "true")
        self.assertEqual(len(self.sender.sent), 1)
        # Same key in the body; and async repeats give the same job.
        a1 = await self.post({**body, "async": True, "idempotency_key": "k2"})
        a2 = await self.post({**body, "async": True, "idempotency_key": "k2"})
        self.assertEqual(a1.json["job_id"], a2.json["job_id"])
        self.assertEqual((a1.code, a2.code), (202, 202))
        self.assertTrue(a2.json["duplicate"])
        await self.engine.wait(a1.json["job_id"])
        self.assertEqual(len(self.sender.sent), 2)
        clash = await self.post({**body, "idempotency_key": "x"}, headers={"Idempotency-Key": "y"})
        self.assertError(clash, 400, "invalid_request", "differ")

    @deferred_test
    async def test_scheduled_send_at(self) -> None:
        when = self.reactor.seconds() + 3600
        reply = await self.post(
            {"token": token(1), "alert": "later", "async": True, "send_at": when}
        )
        self.assertEqual(reply.code, 202)
        job = await self.call("GET", f"/v1/jobs/{reply.json['job_id']}")
        self.assertEqual(job.json["counts"]["queued"], 1)
        self.assertIn("send_at", job.json["results"][0])
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.engine.gauges()["shop"].scheduled, 1)

    @deferred_test
    async def test_synchronous_request_with_a_future_send_at_is_answered_at_once(self) -> None:
        when = self.reactor.seconds() + 3600
        body = {"token": token(1), "alert": "later", "send_at": when}
        # Without the fix the request is held open for an hour: fail fast instead.
        posting = Deferred.fromCoroutine(self.post(body, headers={"Idempotency-Key": "s1"}))
        reply = await posting.addTimeout(10, self.reactor)
        self.assertEqual(reply.code, 202, reply.raw)
        job_id = reply.json["job_id"]
        self.assertEqual(
            reply.json, {"job_id": job_id, "status_url": f"/v1/jobs/{job_id}", "duplicate": False}
        )
        job = await self.call("GET", f"/v1/jobs/{job_id}")
        self.assertTrue(job.json["async"])  # stored as asynchronous
        self.assertEqual((job.json["status"], job.json["counts"]["queued"]), ("pending", 1))
        self.assertEqual(self.engine.gauges()["shop"].scheduled, 1)
        self.assertEqual(self.sender.sent, [])
        # An idempotent repeat is answered the same way, at once.
        again = await Deferred.fromCoroutine(
            self.post(body, headers={"Idempotency-Key": "s1"})
        ).addTimeout(10, self.reactor)
        self.assertEqual((again.code, again.json["job_id"]), (202, job_id))
        self.assertTrue(again.json["duplicate"])
        # A send_at already past is sent now, and a synchronous request still waits for it.
        past = await self.post({"token": token(2), "alert": "now", "send_at": 1})
        self.assertEqual(past.code, 200, past.raw)
        self.assertEqual(past.json["results"][0]["outcome"], "accepted")

    @deferred_test
    async def test_invalid_tokens_since_is_exclusive(self) -> None:
        await self.post({"tokens": [token(1), "f" * 60 + "dead"], "alert": "x"})
        first = await self.call("GET", "/v1/apps/shop/invalid-tokens")
        self.assertEqual([t["token"] for t in first.json["tokens"]], ["f" * 60 + "dead"])
        cursor = first.json["next_since"]
        self.assertEqual(cursor, first.json["tokens"][0]["reported_at"])
        again = await self.call("GET", f"/v1/apps/shop/invalid-tokens?since={cursor!r}")
        self.assertEqual((again.json["tokens"], again.json["next_since"]), ([], cursor))
        await self.post({"token": "e" * 60 + "dead", "alert": "x"})
        later = await self.call("GET", f"/v1/apps/shop/invalid-tokens?since={cursor!r}")
        self.assertEqual([t["token"] for t in later.json["tokens"]], ["e" * 60 + "dead"])

    # -- bad input: 4xx, nothing stored --

    @deferred_test
    async def test_bad_requests(self) -> None:
        ok = {"token": token(1), "alert": "x"}
        cases: list[tuple[Any, int, str, tuple[str, ...]]] = [
            (b"{not json", 400, "malformed_json", ("not valid JSON",)),
            (b"", 400, "malformed_json", ("empty",)),
            (b"[1, 2]", 400, "malformed_json", ("must be a JSON object, not an array",)),
            (b'{"token": NaN}', 400, "malformed_json", ("NaN",)),
            (b"\xff\xfe{}", 400, "malformed_json", ("not UTF-8",)),
            (b"\xef\xbb\xbf{}", 400, "malformed_json", ("not valid JSON", "BOM")),
            (
                {"tokens": [token(1), "abc", token(2)], "alert": "x"},
                400,
                "invalid_token",
                ("tokens[1]",),
            ),
            ({"tokens": [token(1), 7], "alert": "x"}, 400, "invalid_token", ("tokens[1]",)),
            (
                {"tokens": [token(i) for i in range(51)], "alert": "x"},
                400,
                "too_many_recipients",
                ("51", "limit is 50"),
            ),
            ({"tokens": [], "alert": "x"}, 400, "no_recipients", ("empty",)),
            ({"alert": "x"}, 400, "no_recipients", ("exactly one",)),
            ({**ok, "tokens": [token(2)]}, 400, "no_recipients", ("exactly one",)),
            ({"token": token(1)}, 400, "invalid_request", ("no content",)),
            ({**ok, "payload": {"aps": {}}}, 400, "invalid_request", ("not both",)),
            ({**ok, "colour": 1}, 400, "unknown_field", ("'colour'",)),
            ({**ok, "priority": 7}, 400, "invalid_notification", ("priority",)),
            ({**ok, "priority": "10"}, 400, "invalid_request", ("priority must be",)),
            ({**ok, "async": "yes"}, 400, "invalid_request", ("async must be",)),
            ({**ok, "push_type": "shout"}, 400, "invalid_notification", ("unknown push type",)),
            ({**ok, "badge": -1}, 400, "invalid_payload", ("badge",)),
            ({**ok, "send_at": "tomorrow"}, 400, "invalid_request", ("send_at",)),
            ({**ok, "send_at": "2030-01-01T00:00:00"}, 400, "invalid_request", ("UTC offset",)),
            ({**ok, "apns_id": "nope"}, 400, "invalid_notification", ("UUID",)),
            ({**ok, "idempotency_key": ""}, 400, "invalid_request", ("1-255",)),
        ]
        for body, code, kind, fragments in cases:
            reply = await self.post(body)
            self.assertError(reply, code, kind, *fragments)
        self.assertNothingStored()

    @deferred_test
    async def test_unknown_app_and_routes(self) -> None:
        reply = await self.post({"token": token(1), "alert": "x"}, app="nope")
        err = self.assertError(reply, 404, "unknown_app", "'nope'")
        self.assertEqual(err["app"], "nope")
        self.assertError(await self.call("GET", "/v1/apps/nope/invalid-tokens"), 404, "unknown_app")
        self.assertError(await self.call("GET", "/v2/things"), 404, "not_found")
        self.assertError(
            await self.call("GET", "/v1/apps/shop/notifications"), 405, "method_not_allowed", "POST"
        )
        self.assertError(await self.call("DELETE", "/healthz"), 405, "method_not_allowed")
        # RFC 9110: a 405 lists the methods that are allowed.
        self.assertEqual((await self.call("TRACE", "/healthz")).header("Allow"), "GET, HEAD")
        put = await self.call("PUT", "/v1/apps/shop/notifications")
        self.assertEqual(put.header("Allow"), "POST")
        self.assertNothingStored()

    @deferred_test
    async def test_payload_too_large(self) -> None:
        reply = await self.post({"token": token(1), "payload": {"aps": {"alert": "x" * 5000}}})
        err = self.assertError(reply, 413, "payload_too_large", "5020 bytes", "limit is 4096")
        self.assertEqual((err["size"], err["limit"]), (5020, 4096))
        self.assertNothingStored()

    @deferred_test
    async def test_body_over_limit(self) -> None:
        big = json.dumps({"token": token(1), "alert": "x" * 70_000}).encode()
        reply = await self.post(big)
        err = self.assertError(reply, 413, "body_too_large", "limit is 65536")
        self.assertEqual(err["size"], len(big))
        chunked = await self.post(None, producer=ChunkedProducer(big))
        self.assertError(chunked, 413, "body_too_large")
        self.assertNothingStored()

    # -- operations --

    @deferred_test
    async def test_healthz_and_metrics(self) -> None:
        await self.post({"tokens": [token(1), "f" * 60 + "dead"], "alert": "x"})
        health = await self.call("GET", "/healthz")
        self.assertEqual(health.code, 200)
        self.assertEqual(health.json["status"], "ok")
        self.assertIn("shop", health.json["apps"])
        metrics = await self.call("GET", "/metrics")
        self.assertEqual(metrics.code, 200)
        self.assertTrue(metrics.header("Content-Type").startswith("text/plain; version=0.0.4"))  # type: ignore[union-attr]
        text = metrics.raw.decode()
        self.assertIn('txapns_notifications_accepted_total{app="shop"} 1', text)
        self.assertIn(
            'txapns_notifications_rejected_total{app="shop",reason="Unregistered"} 1', text
        )
        self.assertIn('txapns_delivery_latency_seconds_count{app="shop"} 2', text)
        self.assertIn('txapns_http_responses_total{route="notifications",code="200"} 1', text)

    @deferred_test
    async def test_stopping_refuses_with_503(self) -> None:
        await self.engine.stop()
        health = await self.call("GET", "/healthz")
        self.assertEqual(health.code, 503)
        self.assertEqual(health.json["status"], "stopped")
        reply = await self.post({"token": token(1), "alert": "x"})
        self.assertError(reply, 503, "unavailable")
        self.assertEqual(reply.header("Retry-After"), "5")

    @deferred_test
    async def test_send_at_too_far_ahead(self) -> None:
        far = self.reactor.seconds() + 400 * 86400
        reply = await self.post({"token": token(1), "alert": "x", "send_at": far})
        self.assertError(reply, 400, "invalid_notification", "send_at is", "limit is 31622400")
        self.assertNothingStored()

    # -- every string field checked before anything is stored (issue 9, items 7, 11, 12) --

    @deferred_test
    async def test_unsendable_header_values_are_refused_before_storing(self) -> None:
        ok = b'"token": "' + token(1).encode() + b'", "alert": "x"'
        cases = [
            (b'"topic": "com.example.shop\\ud800"', "topic", "surrogate"),
            (b'"collapse_id": "c\\ud800"', "collapse id", "surrogate"),
            (b'"topic": "a\\r\\nb"', "topic", "CR, LF or NUL"),
            (b'"topic": "com.example.shop\\u0000"', "topic", "CR, LF or NUL"),
            (b'"collapse_id": "c\\n1"', "collapse id", "CR, LF or NUL"),
            (b'"topic": " com.example.shop"', "topic", "space or tab"),
        ]
        for field, *fragments in cases:
            reply = await self.post(b"{" + ok + b", " + field + b"}")
            self.assertError(reply, 400, "invalid_notification", *fragments)
        for field, fragment in [
            (b'"idempotency_key": "k\\ud800"', "surrogate"),
            (b'"idempotency_key": "k\\u0000"', "control characters"),
            (b'"idempotency_key": "k\\r\\n"', "control characters"),
        ]:
            reply = await self.post(b"{" + ok + b", " + field + b"}")
            self.assertError(reply, 400, "invalid_request", fragment)
        # Payload strings that are not Unicode text, e.g. a lone surrogate in custom data.
        reply = await self.post(b'{"token": "' + token(1).encode() + b'", "alert": "\\udc00"}')
        self.assertEqual(reply.code, 400, reply.raw)
        reply = await self.post(
            b'{"token": "' + token(1).encode() + b'", "payload": {"aps": {"alert": "\\ud800"}}}'
        )
        self.assertEqual(reply.code, 400, reply.raw)
        self.assertNothingStored()
        # The service still works.
        self.assertEqual((await self.post({"token": token(2), "alert": "x"})).code, 200)

    @deferred_test
    async def test_idempotency_key_header_must_be_utf8(self) -> None:
        body = {"token": token(1), "alert": "x"}
        # Before the fix both were decoded as "k\ufffd" and the second was dropped as a repeat.
        first = await self.post(body, headers={"Idempotency-Key": b"k\xff"})  # type: ignore[dict-item]
        self.assertError(first, 400, "invalid_request", "not valid UTF-8")
        second = await self.post(body, headers={"Idempotency-Key": b"k\xfe"})  # type: ignore[dict-item]
        self.assertError(second, 400, "invalid_request", "not valid UTF-8")
        self.assertNothingStored()

    @deferred_test
    async def test_reused_idempotency_key_with_another_body_is_422(self) -> None:
        first = await self.post({"token": token(1), "alert": "x"}, headers={"Idempotency-Key": "k"})
        self.assertEqual(first.code, 200, first.raw)
        other = await self.post({"token": token(2), "alert": "x"}, headers={"Idempotency-Key": "k"})
        err = self.assertError(other, 422, "idempotency_key_reused", "different request")
        self.assertEqual(err["job_id"], first.json["job_id"])
        # The same body still replays the first job.
        again = await self.post({"token": token(1), "alert": "x"}, headers={"Idempotency-Key": "k"})
        self.assertEqual((again.code, again.json["job_id"]), (200, first.json["job_id"]))
        self.assertEqual(len(self.sender.sent), 1)

    @deferred_test
    async def test_since_out_of_range_is_400_not_infinity(self) -> None:
        for since in ("9" * 400, "99999999999999999999", "1e999"):
            reply = await self.call("GET", f"/v1/apps/shop/invalid-tokens?since={since}")
            self.assertError(reply, 400, "invalid_request", "since")
            self.assertNotIn(b"Infinity", reply.raw)
        big = await self.post({"token": token(1), "alert": "x", "send_at": 10**400})
        self.assertError(big, 400, "invalid_request", "send_at must be UNIX seconds")
        self.assertNothingStored()

    @deferred_test
    async def test_bearer_scheme_is_case_insensitive(self) -> None:
        for scheme in ("bearer", "BEARER", "Bearer"):
            reply = await self.call(
                "GET", "/healthz", auth=None, headers={"Authorization": f"{scheme} {KEY.decode()}"}
            )
            self.assertEqual(reply.code, 200, scheme)
        wrong = await self.call(
            "GET", "/healthz", auth=None, headers={"Authorization": f"Basic {KEY.decode()}"}
        )
        self.assertEqual(wrong.code, 401)

    @deferred_test
    async def test_livez_needs_no_key_and_says_nothing_more(self) -> None:
        reply = await self.call("GET", "/livez", auth=None)
        self.assertEqual(reply.code, 200, reply.raw)
        self.assertEqual(reply.json, {"status": "alive"})
        self.assertEqual((await self.call("GET", "/livez")).json, {"status": "alive"})
        # /healthz, with its details, still needs the key.
        self.assertEqual((await self.call("GET", "/healthz", auth=None)).code, 401)
        self.assertError(await self.call("POST", "/livez", auth=None), 405, "method_not_allowed")


class TwistedWebApiTests(ApiTests):
    server = "twisted"


class ChannelTests(SynchronousTestCase):
    """The connection level (issue 9, item 10): the key is checked on the headers, before
    any body is read, and slow clients are cut off by header and body deadlines. Over the
    lean layer; :class:`TwistedWebChannelTests` runs them over twisted.web."""

    server = "lean"

    def setUp(self) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        self.clock = Clock()
        store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(store.close)
        engine = Engine(
            {"shop": EngineApp(FakeSender(), bundle_id=BUNDLE)},
            Spool(store, self.clock, inline_runner),
            self.clock,
        )
        self.engine = engine
        self.site = make_listener(
            engine, KEY, Limits(max_body_bytes=64 * 1024, header_timeout=5, body_timeout=7),
            reactor=self.clock, server=self.server,
        )  # fmt: skip
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert self.channel is not None
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def head(self, auth: bytes | None, length: int = 8 * 1024 * 1024) -> bytes:
        lines = [b"POST /v1/apps/shop/notifications HTTP/1.1", b"Host: x"]
        if auth is not None:
            lines.append(b"Authorization: Bearer " + auth)
        lines.append(b"Content-Length: %d" % length)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def test_wrong_key_is_answered_on_the_headers_and_the_body_never_read(self) -> None:
        for auth in (None, b"wrong-key-0123456789abcdef"):
            self.setUp()
            self.channel.dataReceived(self.head(auth))
            answer = self.transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
            self.assertIn(b'WWW-Authenticate: Bearer realm="txapns"', answer)
            self.assertIn(b'"code":"unauthorized"', answer)
            self.assertTrue(self.transport.disconnecting)
            # Whatever the client still sends is dropped, never buffered.
            self.channel.dataReceived(b"x" * 65536)
            if self.server == "twisted":
                request = self.channel.requests[-1]  # type: ignore[attr-defined]
                self.assertIsNone(request.content)
            self.assertEqual(self.transport.value(), answer)

    def test_livez_needs_no_key_on_the_channel_either(self) -> None:
        self.channel.dataReceived(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertFalse(self.transport.disconnecting)

    def test_headers_trickled_past_the_deadline_get_408(self) -> None:
        self.channel.dataReceived(b"POST /v1/apps/shop/notifications HTTP/1.1\r\n")
        for _ in range(4):  # a byte a second keeps Twisted's idle timeout from firing
            self.clock.advance(1)
            self.channel.dataReceived(b"X")
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(1)
        answer = self.transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)
        self.assertIn(b'"code":"request_timeout"', answer)
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(getattr(self.channel, "abortTimeout", ABORT_TIMEOUT) or 0)
        self.assertTrue(self.transport.disconnected or self.transport.disconnecting)

    def test_body_trickled_past_the_deadline_gets_408(self) -> None:
        self.channel.dataReceived(self.head(KEY, length=100))
        for _ in range(6):
            self.clock.advance(1)
            self.channel.dataReceived(b"{")
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(1)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(self.transport.disconnecting)

    def test_a_prompt_request_is_served_and_the_deadlines_cancelled(self) -> None:
        body = json.dumps({"token": token(1), "alert": "x"}).encode()
        self.channel.dataReceived(self.head(KEY, length=len(body)) + body)
        # The engine is not started: 503, but the request was read and routed.
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertFalse(self.transport.disconnecting)
        if self.server == "twisted":
            self.assertEqual(
                [c for c in self.clock.getDelayedCalls() if c.func.__name__ == "_too_slow"], []
            )
        # The next request on the same connection gets its own deadline, from its first byte.
        self.transport.clear()
        self.clock.advance(30)  # idle, under the idle timeout: no deadline runs
        self.assertEqual(self.transport.value(), b"")
        self.channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
        self.clock.advance(5)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))

    def test_a_synchronous_request_waits_no_longer_than_sync_wait(self) -> None:
        # APNs never answers (the fake sender holds what it takes): past sync_wait the
        # request gets 202 with its job as it stands, instead of hanging.
        self.engine.start()
        self.clock.advance(0)
        body = json.dumps({"token": token(1), "alert": "x"}).encode()
        self.channel.dataReceived(self.head(KEY, length=len(body)) + body)
        for _ in range(5):
            self.clock.advance(0)
        self.clock.advance(Limits().sync_wait - 0.5)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.5)
        for _ in range(5):
            self.clock.advance(0)
        answer = self.transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 202 "), answer)
        job = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual((job["status"], job["counts"]["inflight"]), ("pending", 1))
        self.assertFalse(self.transport.disconnecting)


class TwistedWebChannelTests(ChannelTests):
    server = "twisted"
