"""The Redis Streams spool against a real ``redis-server`` (started per test class).

Each test uses its own key prefix, so tests share the server but not data. The engine runs on
the real reactor (``txredisapi`` uses it), with :class:`~txapns.service.testing.FakeSender`
in place of an APNs client.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txapns.core.notification import Notification
from txapns.core.result import Outcome, Result
from txapns.service import redis_spool
from txapns.service.api import job_json, make_site
from txapns.service.backend import ConsumerHooks, SpoolUnavailableError
from txapns.service.config import ConfigError, RedisSpoolConfig, parse_config
from txapns.service.engine import Engine, EngineApp, NotAcceptingError, Template
from txapns.service.redis_spool import (
    RedisAddress,
    RedisLink,
    RedisSettings,
    RedisSpool,
    tls_options,
)
from txapns.service.spool import IdempotencyKeyReusedError, OutcomeRecord, SpooledNotification
from txapns.service.testing import FakeSender, accept
from txapns.testing.pki import make_test_pki

from .helpers import deferred_test, metric, sleep, token
from .helpers_running import ApiClient
from .redis_server import SKIP, RedisSentinel, RedisServer, Relay, free_port, wait_until

ALERT = Template(payload={"aps": {"alert": "hi"}})
_prefixes = itertools.count()


class RedisCase(TestCase):
    """A redis-server for the class; spools with a fresh prefix per test."""

    skip = SKIP
    timeout = 60
    server: RedisServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = RedisServer(Path(tempfile.mkdtemp(prefix="txapns-redis-")))
        cls.server.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.prefix = f"t{next(_prefixes)}-{id(self)}"
        if self.server.process is None:
            self.server.start()

    def watch_warnings(self) -> list[str]:
        """The warnings logged from now until the test ends, formatted."""
        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") == LogLevel.warn:
                warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return warnings

    def spool(self, apps: tuple[str, ...] = ("a",), **settings: Any) -> RedisSpool:
        settings.setdefault("prefix", self.prefix)
        settings.setdefault("instance_id", f"i{next(_prefixes)}")
        settings.setdefault("schedule_interval", 0.05)
        address = RedisAddress.from_url(self.server.url)
        link = RedisLink(self.reactor, address, reply_timeout=5)
        spool = RedisSpool(
            link,
            lambda: RedisLink(self.reactor, address, reply_timeout=10),
            self.reactor,
            apps,
            RedisSettings(**settings),
        )
        self.addCleanup(lambda: spool.close().addErrback(lambda f: None))
        return spool

    async def connected(self, spool: RedisSpool) -> None:
        await wait_until(self.reactor, lambda: spool.available, what="Redis connection")

    def engine(self, spool: RedisSpool, sender: FakeSender, **kw: Any) -> Engine:
        kw.setdefault("purge_interval", 0)
        engine = Engine({"a": EngineApp(sender, bundle_id="com.example.a")}, spool, self.reactor,
                        **kw)  # fmt: skip

        def stop() -> Deferred[None] | None:
            return engine.stop() if engine.state == "running" else None

        self.addCleanup(stop)
        return engine

    def api(self, engine: Engine) -> ApiClient:
        """The service API for ``engine`` on a free loopback port, and a client for it."""
        key = b"redis-test-api-key-0123456789"
        port = self.reactor.listenTCP(0, make_site(engine, key), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        api = ApiClient(self.reactor, f"http://127.0.0.1:{port.getHost().port}", key)
        self.addCleanup(api.close)
        return api

    def notifications(self, engine: Engine, n: int, first: int = 0) -> list[Notification]:
        return engine.prepare("a", ALERT, [token(first + i) for i in range(n)])

    def consume(self, spool: RedisSpool, room: int = 1000) -> Collector:
        collector = Collector(room)
        spool.start_consuming(collector.hooks())
        return collector

    async def read_job(self, spool: RedisSpool, collector: Collector, count: int) -> str:
        """Store a job of ``count`` and wait until ``collector`` has been fed all of it."""
        job_id = await self.job_of(spool, count)
        await wait_until(self.reactor, lambda: len(collector.items) >= count, what="the job")
        return job_id

    def pending(self) -> str:
        """How many entries of the app's stream are pending (read, unacknowledged)."""
        return self.server.cli("XPENDING", f"{self.prefix}:{{a}}:q", "txapns").splitlines()[0]

    def entries_added(self) -> int:
        info = self.server.cli("XINFO", "STREAM", f"{self.prefix}:{{a}}:q").split("\n")
        return int(info[info.index("entries-added") + 1])

    async def job_of(self, spool: RedisSpool, count: int, seed: int = 0) -> str:
        ns = [Notification.create(bytes([seed, i]) * 16, b'{"aps":{}}') for i in range(count)]
        stored = await spool.add_job("a", ns, now=1.0, async_=True)
        return stored.job_id


class Collector:
    """ConsumerHooks that keep what they are fed."""

    def __init__(self, room: int = 1000) -> None:
        self.items: list[SpooledNotification] = []
        self.space = room
        self.done: list[str] = []
        self.waits: list[str] = []

    def hooks(self) -> ConsumerHooks:
        return ConsumerHooks(self.feed, self.room, lambda: self.waits, self.done.append)

    def feed(self, app: str, items: Any) -> None:
        self.items.extend(items)

    def room(self, app: str) -> int:
        return self.space - len(self.items)


def outcome(item: SpooledNotification, state: str = "accepted", **kw: Any) -> OutcomeRecord:
    return OutcomeRecord(
        id=item.id, job_id=item.job_id, app=item.app, token=item.notification.token_hex,
        state=state, status=kw.pop("status", 200 if state == "accepted" else None), **kw,
    )  # fmt: skip


class StoreTests(RedisCase):
    @deferred_test
    async def test_job_and_notifications_stored_then_sent_and_acknowledged(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        sender = FakeSender(auto=accept)
        engine = self.engine(spool, sender)
        await engine.start()
        ns = self.notifications(engine, 25)
        accepted = await engine.submit("a", ns)
        view = await engine.wait(accepted.job_id)
        self.assertEqual(view.status, "done")
        self.assertEqual(view.counts["accepted"], 25)
        self.assertEqual([r.token for r in view.results], [n.token_hex for n in ns])
        self.assertEqual(sorted(n.token for n in sender.sent), sorted(n.token for n in ns))
        q = f"{self.prefix}:{{a}}:q"
        # Acknowledged and deleted: nothing pending, nothing left in the stream.
        await wait_until(self.reactor, lambda: self.server.cli("XLEN", q) == "0")
        self.assertEqual(self.pending(), "0")
        body = job_json(view)
        self.assertEqual(body["may_duplicate"], 0)

    @deferred_test
    async def test_idempotency_key_makes_one_job(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        engine = self.engine(spool, FakeSender())
        await engine.start()
        ns = self.notifications(engine, 3)
        first, second = await Deferred.fromCoroutine(self._both(engine, ns))
        self.assertFalse(first.duplicate)
        self.assertTrue(second.duplicate)
        self.assertEqual(first.job_id, second.job_id)
        self.assertEqual(await spool.find_job("a", "k1"), first.job_id)
        # One entry (a chunk of three) ever added, not two. (Not XLEN: the engine may already
        # have sent, acknowledged and trimmed it.)
        self.assertEqual(self.entries_added(), 1)

    @deferred_test
    async def test_reused_key_with_another_fingerprint_is_refused(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        n1 = [Notification.create(bytes([1]) * 32, b'{"aps":{}}')]
        n2 = [Notification.create(bytes([2]) * 32, b'{"aps":{}}')]
        first = await spool.add_job("a", n1, now=1, idempotency_key="k", fingerprint="f1")
        same = await spool.add_job("a", n1, now=2, idempotency_key="k", fingerprint="f1")
        self.assertEqual((same.job_id, same.duplicate), (first.job_id, True))
        error = await spool.add_job(
            "a", n2, now=3, idempotency_key="k", fingerprint="f2"
        ).addCallbacks(lambda _: None, lambda f: f.value)
        self.assertIsInstance(error, IdempotencyKeyReusedError)
        self.assertEqual(error.job_id, first.job_id)
        # Without a fingerprint on either side, a repeat is a plain repeat (library callers).
        plain = await spool.add_job("a", n2, now=4, idempotency_key="k")
        self.assertEqual((plain.job_id, plain.duplicate), (first.job_id, True))
        unprinted = await spool.add_job("a", n1, now=5, idempotency_key="k2")
        later = await spool.add_job("a", n2, now=6, idempotency_key="k2", fingerprint="f3")
        self.assertEqual((later.job_id, later.duplicate), (unprinted.job_id, True))
        # Nothing of the refused request was stored: one entry per job ever added.
        self.assertEqual(self.entries_added(), 2)

    @deferred_test
    async def test_api_answers_422_for_a_reused_key_with_another_body(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        engine = self.engine(spool, FakeSender(auto=accept))
        await engine.start()
        api = self.api(engine)
        batch = {"tokens": [token(2), token(3)], "alert": "a", "async": True,
                 "idempotency_key": "batch-9"}  # fmt: skip
        a1 = await api.post("a", batch)
        a2 = await api.post("a", batch)
        other = await api.post(
            "a", {"tokens": [token(4)], "alert": "b", "async": True, "idempotency_key": "batch-9"}
        )
        self.assertEqual((a1.code, a2.code, other.code), (202, 202, 422), other.raw)
        self.assertEqual(other.json["error"]["code"], "idempotency_key_reused")
        self.assertEqual(other.json["error"]["job_id"], a1.json["job_id"])
        self.assertEqual(a2.json["job_id"], a1.json["job_id"])
        self.assertEqual(a2.header("Idempotent-Replayed"), "true")

    async def _both(self, engine: Engine, ns: list[Notification]) -> tuple[Any, Any]:
        d1 = engine.submit("a", ns, idempotency_key="k1", async_=True)
        d2 = engine.submit("a", ns, idempotency_key="k1", async_=True)
        return await d1, await d2

    @deferred_test
    async def test_scheduled_job_waits_for_its_time_then_goes_to_the_stream(self) -> None:
        # Its time is set far ahead, then brought to the past in Redis: a send_at a fraction
        # of a second away was moved before the first check could look on a loaded machine.
        spool = self.spool()
        await self.connected(spool)
        collector = self.consume(spool)
        stored = await spool.add_job(
            "a",
            [Notification.create(bytes(32), b'{"aps":{}}')],
            now=self.reactor.seconds(),
            send_at=self.reactor.seconds() + 3600,
            async_=True,
        )
        sched = f"{self.prefix}:{{a}}:sched"
        self.assertEqual(self.server.cli("ZCARD", sched), "1")
        self.assertEqual(self.server.cli("XLEN", f"{self.prefix}:{{a}}:q"), "0")
        self.assertEqual(collector.items, [])
        member = self.server.cli("ZRANGE", sched, "0", "0")
        self.assertEqual(self.server.cli("ZADD", sched, "XX", "CH", "1", member), "1")
        await wait_until(self.reactor, lambda: collector.items, what="the scheduled entry")
        self.assertEqual(collector.items[0].job_id, stored.job_id)
        self.assertEqual(self.server.cli("ZCARD", sched), "0")

    @deferred_test
    async def test_invalid_token_feed_with_since_paging(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        collector = self.consume(spool)
        ns = [Notification.create(bytes([i]) * 32, b'{"aps":{}}') for i in range(1, 4)]
        await spool.add_job("a", ns, now=1.0)
        await wait_until(self.reactor, lambda: len(collector.items) == 3)
        bad = [
            outcome(i, "rejected", status=410, reason="Unregistered", timestamp=1234.0,
                    token_invalid=True)
            for i in collector.items[:2]
        ]  # fmt: skip
        await spool.record_outcomes(bad, now=2.0)
        feed = await spool.invalid_tokens("a")
        self.assertEqual(sorted(t.token for t in feed), sorted(n.token_hex for n in ns[:2]))
        self.assertEqual({(t.reason, t.status, t.timestamp, t.source, t.kind) for t in feed},
                         {("Unregistered", 410, 1234.0, "apns", "unregistered")})  # fmt: skip
        self.assertEqual(await spool.invalid_tokens("a", since=feed[-1].reported_at), [])
        await spool.add_invalid_tokens("a", [("AB" * 32, 99.0)], now=3.0)
        later = await spool.invalid_tokens("a", since=feed[-1].reported_at)
        self.assertEqual(
            [(t.token, t.source, t.kind) for t in later], [("ab" * 32, "feedback", "feedback")]
        )


class TakeoverTests(RedisCase):
    @deferred_test
    async def test_pending_entries_of_a_silent_instance_are_claimed_and_flagged(self) -> None:
        dead = self.spool(claim_after=0.2)
        live = self.spool(claim_after=0.2)
        await self.connected(dead)
        await self.connected(live)
        # Room for one entry each: a full consumer claims nothing, so on a loaded machine
        # neither instance takes the entry back from itself after claim_after (resumed 2).
        first = self.consume(dead, room=1)
        stored = await dead.add_job(
            "a", [Notification.create(bytes([7]) * 32, b'{"aps":{}}')], now=1.0
        )
        await wait_until(self.reactor, lambda: first.items, what="the first delivery")
        # The first instance goes silent: its loops stop, the entry stays pending.
        first.space = 0
        for loop in dead._loops:
            loop.stop()
        second = self.consume(live, room=1)
        await wait_until(self.reactor, lambda: second.items, what="the takeover")
        item = second.items[0]
        self.assertEqual(item.resumed, 1)
        await live.record_outcomes([outcome(item)], now=2.0)
        view = await live.job(stored.job_id)
        assert view is not None
        self.assertEqual(view.status, "done")
        self.assertEqual(view.results[0].resumed, 1)
        self.assertTrue(job_json(view)["results"][0]["may_duplicate"])  # type: ignore[index]
        self.assertEqual(live.gauges["a"].claimed, 1)
        # The silent one's late outcome does not count twice, but marks the duplicate.
        await dead.record_outcomes([outcome(first.items[0])], now=3.0)
        again = await live.job(stored.job_id)
        assert again is not None
        self.assertEqual(again.counts["accepted"], 1)

    @deferred_test
    async def test_after_max_deliveries_finished_unknown(self) -> None:
        spool = self.spool(claim_after=0.1, max_deliveries=1)
        await self.connected(spool)
        stored = await spool.add_job(
            "a", [Notification.create(bytes([9]) * 32, b'{"aps":{}}')], now=1.0
        )
        # Another consumer takes it and never answers (delivery 1).
        q = f"{self.prefix}:{{a}}:q"
        self.server.cli("XGROUP", "CREATE", q, "txapns", "0", "MKSTREAM")
        self.server.cli("XREADGROUP", "GROUP", "txapns", "ghost", "COUNT", "1", "STREAMS", q, ">")
        collector = self.consume(spool)
        # The takeover would be delivery 2 > max_deliveries: finished unknown, never sent.
        await wait_until(self.reactor, lambda: spool.gauges["a"].dead_letters == 1, what="dl")
        await wait_until(self.reactor, lambda: spool._held_outcomes() == 0)
        self.assertEqual(collector.items, [])
        view = await spool.job(stored.job_id)
        assert view is not None
        self.assertEqual(view.status, "done")
        self.assertEqual(view.results[0].state, "unknown")
        self.assertEqual(view.results[0].reason, "gave up after 1 deliveries")
        # Acknowledged, so trimmed away on a later tick.
        await wait_until(self.reactor, lambda: self.server.cli("XLEN", q) == "0", what="trim")

    @deferred_test
    async def test_an_api_only_spool_reads_and_claims_nothing(self) -> None:
        front = self.spool(claim_after=0.1, consume=False)
        await self.connected(front)
        fed = self.consume(front)
        job_id = await self.job_of(front, 3)
        # A ghost consumer holds the entry past claim_after: only a consuming spool takes it.
        q = f"{self.prefix}:{{a}}:q"
        self.server.cli("XREADGROUP", "GROUP", "txapns", "ghost", "COUNT", "1", "STREAMS", q, ">")
        await sleep(self.reactor, 0.5)  # ten ticks of the API-only spool
        self.assertEqual(fed.items, [])
        self.assertEqual(front.gauges["a"].claimed, 0)
        self.assertFalse(front.health()["consume"])
        worker = self.spool(claim_after=0.1)
        await self.connected(worker)
        taken = self.consume(worker)
        await wait_until(self.reactor, lambda: len(taken.items) == 3, what="the takeover")
        self.assertEqual({i.job_id for i in taken.items}, {job_id})
        self.assertEqual(fed.items, [])


class ChunkTests(RedisCase):
    """One stream entry carries up to ``chunk_size`` notifications of a job."""

    @deferred_test
    async def test_a_job_is_stored_in_chunks_sent_and_acknowledged(self) -> None:
        spool = self.spool(chunk_size=100)
        await self.connected(spool)
        sender = FakeSender(auto=accept)
        engine = self.engine(spool, sender)
        await engine.start()
        ns = self.notifications(engine, 250)
        accepted = await engine.submit("a", ns, async_=True)
        self.assertEqual(self.entries_added(), 3)
        view = await engine.wait(accepted.job_id)
        self.assertEqual(view.counts["accepted"], 250)
        self.assertEqual([r.token for r in view.results], [n.token_hex for n in ns])
        self.assertEqual(sorted(n.token for n in sender.sent), sorted(n.token for n in ns))
        q = f"{self.prefix}:{{a}}:q"
        await wait_until(self.reactor, lambda: self.server.cli("XLEN", q) == "0", what="trim")
        self.assertEqual(self.pending(), "0")

    @deferred_test
    async def test_chunk_size_from_the_config_file(self) -> None:
        from txapns.service.wiring import redis_spool

        config = parse_config(
            {"spool": {"backend": "redis", "url": self.server.url, "prefix": self.prefix,
                       "chunk_size": 7}},
            base_dir=Path("."), check_files=False,
        )  # fmt: skip
        assert config.redis is not None
        spool = redis_spool(config.redis, self.reactor, ["a"], results_ttl=60.0)
        assert isinstance(spool, RedisSpool)
        self.addCleanup(lambda: spool.close().addErrback(lambda f: None))
        await self.connected(spool)
        await self.job_of(spool, 15)
        self.assertEqual(self.entries_added(), 3)  # 7 + 7 + 1

    @deferred_test
    async def test_an_entry_is_acknowledged_with_its_last_outcome(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        collector = self.consume(spool)
        job_id = await self.read_job(spool, collector, 4)
        await spool.record_outcomes([outcome(i) for i in collector.items[:3]], now=2.0)
        self.assertEqual(self.pending(), "1")
        await spool.record_outcomes([outcome(collector.items[3])], now=2.0)
        self.assertEqual(self.pending(), "0")
        view = await spool.job(job_id)
        assert view is not None
        self.assertEqual((view.status, view.counts["accepted"]), ("done", 4))

    @deferred_test
    async def test_many_short_outcomes_are_kept_in_a_hash_table(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        collector = self.consume(spool)
        job_id = await self.read_job(spool, collector, 200)
        # Short outcomes (no apns-id: the binary protocol's) in one write.
        await spool.record_outcomes([outcome(i) for i in collector.items], now=2.0)
        key = f"{self.prefix}:job:{job_id}:r"
        self.assertEqual(self.server.cli("OBJECT", "ENCODING", key), "hashtable")
        view = await spool.job(job_id)
        assert view is not None
        self.assertEqual((view.status, view.counts["accepted"], len(view.results)),
                         ("done", 200, 200))  # fmt: skip

    @deferred_test
    async def test_takeover_sends_only_what_has_no_outcome_yet(self) -> None:
        dead = self.spool(claim_after=0.2)
        live = self.spool(claim_after=0.2)
        await self.connected(dead)
        await self.connected(live)
        first = self.consume(dead, room=5)  # full: no claim of its own entries (see above)
        job_id = await self.job_of(dead, 5)
        await wait_until(self.reactor, lambda: len(first.items) == 5, what="the first delivery")
        # Two outcomes written, then the instance goes silent with three in flight.
        await dead.record_outcomes([outcome(i) for i in first.items[:2]], now=2.0)
        first.space = 0
        for loop in dead._loops:
            loop.stop()
        second = self.consume(live, room=3)
        await wait_until(self.reactor, lambda: len(second.items) == 3, what="the takeover")
        self.assertEqual(
            [i.notification.token_hex for i in second.items],
            [i.notification.token_hex for i in first.items[2:]],
        )
        self.assertEqual({i.resumed for i in second.items}, {1})
        self.assertEqual(live.gauges["a"].claimed, 3)
        await live.record_outcomes([outcome(i) for i in second.items], now=3.0)
        view = await live.job(job_id)
        assert view is not None
        self.assertEqual((view.status, view.counts["accepted"]), ("done", 5))
        self.assertEqual([r.resumed for r in view.results], [0, 0, 1, 1, 1])
        self.assertEqual(self.pending(), "0")

    @deferred_test
    async def test_a_stop_puts_back_what_is_left_of_a_chunk(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        first = self.consume(spool)
        job_id = await self.read_job(spool, first, 5)
        await spool.record_outcomes([outcome(i) for i in first.items[:2]], now=2.0)
        await spool.close()
        other = self.spool()
        await self.connected(other)
        second = self.consume(other)
        await wait_until(self.reactor, lambda: len(second.items) == 3, what="the rest")
        self.assertEqual(
            [i.notification.token_hex for i in second.items],
            [i.notification.token_hex for i in first.items[2:]],
        )
        self.assertEqual({i.resumed for i in second.items}, {0})
        await other.record_outcomes([outcome(i) for i in second.items], now=3.0)
        view = await other.job(job_id)
        assert view is not None
        self.assertEqual((view.status, view.counts["accepted"]), ("done", 5))


class RestartTests(RedisCase):
    @deferred_test
    async def test_a_restarted_instance_resumes_its_own_pending_entries_at_once(self) -> None:
        before = self.spool(instance_id="web-1")  # claim_after: the default 120 s
        await self.connected(before)
        first = self.consume(before)
        job_id = await self.read_job(before, first, 3)
        # The process dies (no clean stop): its entries stay pending, owned by "web-1".
        first.space = 0
        for loop in before._loops:
            loop.stop()
        after = self.spool(instance_id="web-1")
        await self.connected(after)
        second = self.consume(after)
        await wait_until(self.reactor, lambda: len(second.items) == 3, timeout=5,
                         what="its own pending entries")  # fmt: skip
        self.assertEqual({i.resumed for i in second.items}, {1})
        await after.record_outcomes([outcome(i) for i in second.items], now=2.0)
        view = await after.job(job_id)
        assert view is not None
        self.assertEqual((view.status, view.counts["accepted"]), ("done", 3))
        self.assertEqual(after.gauges["a"].claimed, 0)


class ConsumerCleanupTests(RedisCase):
    @deferred_test
    async def test_idle_consumers_holding_nothing_are_forgotten(self) -> None:
        spool = self.spool(forget_consumers_after=0.3)
        await self.connected(spool)
        await self.job_of(spool, 1)
        q = f"{self.prefix}:{{a}}:q"
        self.server.cli("XGROUP", "CREATE", q, "txapns", "0", "MKSTREAM")
        # A stopped instance that held nothing, and one that still holds an entry.
        self.server.cli("XGROUP", "CREATECONSUMER", q, "txapns", "host-1234")
        self.server.cli("XREADGROUP", "GROUP", "txapns", "host-99", "COUNT", "1", "STREAMS", q,
                        ">")  # fmt: skip

        def consumers() -> set[str]:
            out = self.server.cli("XINFO", "CONSUMERS", q, "txapns").split("\n")
            return {out[i + 1] for i, v in enumerate(out) if v == "name"}

        self.assertEqual(consumers(), {"host-1234", "host-99"})
        spool.start_consuming(Collector().hooks())
        await wait_until(self.reactor, lambda: "host-1234" not in consumers(), what="cleanup")
        # Never one with pending entries (they would be lost), never a live one.
        self.assertEqual(consumers(), {"host-99", spool.settings.instance_id})


class OutageTests(RedisCase):
    @deferred_test
    async def test_redis_down_refuses_holds_outcomes_and_resumes(self) -> None:
        # write_timeout short: the outcomes' write is late during the outage, an expected
        # state the engine warns about (OutcomesHeldError); a logged error fails the test.
        spool = self.spool(write_timeout=0.1)
        await self.connected(spool)
        sender = FakeSender()
        engine = self.engine(spool, sender)
        await engine.start()
        accepted = await engine.submit("a", self.notifications(engine, 5), async_=True)
        await wait_until(self.reactor, lambda: len(sender.waiting) == 5, what="sends")
        self.server.kill()
        await wait_until(self.reactor, lambda: not engine.accepting, what="refusal")
        self.assertEqual(engine.health()["status"], "spool")
        self.assertRaises(NotAcceptingError, engine.submit, "a", self.notifications(engine, 1))
        error = await spool.job(accepted.job_id).addCallbacks(lambda _: None, lambda f: f.value)
        self.assertIsInstance(error, SpoolUnavailableError)
        sender.answer_all()  # outcomes arrive while Redis is down: held in memory
        await wait_until(self.reactor, lambda: spool._held_outcomes() == 5)
        warnings = self.watch_warnings()
        late = "could not record 5 outcomes for a yet: outcomes not written to Redis yet"
        await wait_until(self.reactor, lambda: any(late in w for w in warnings), what="late")
        self.server.start()
        await wait_until(self.reactor, lambda: engine.accepting, timeout=20, what="recovery")
        await wait_until(self.reactor, lambda: spool._held_outcomes() == 0)
        view = await spool.job(accepted.job_id)
        assert view is not None
        self.assertEqual(view.status, "done")
        self.assertEqual(view.counts["accepted"], 5)
        # And new work goes through again.
        again = await engine.submit("a", self.notifications(engine, 2, first=10), async_=True)
        await wait_until(self.reactor, lambda: len(sender.waiting) == 2, what="resumed sends")
        sender.answer_all()
        done = await engine.wait(again.job_id)
        self.assertEqual(done.counts["accepted"], 2)

    @deferred_test
    async def test_entries_read_as_redis_went_down_are_read_again_when_it_answers(self) -> None:
        # claim_after stays at its 120 s: only reading our own pending entries again on
        # recovery can feed the entry within this test's time.
        spool = self.spool()
        await self.connected(spool)
        q = f"{self.prefix}:{{a}}:q"
        self.server.cli("XGROUP", "CREATE", q, "txapns", "0", "MKSTREAM")
        collector = Collector(room=0)
        spool.start_consuming(collector.hooks())
        held = await self.job_of(spool, 2, seed=1)
        await wait_until(self.reactor, lambda: self.entries_added() == 1, what="the store")
        # A read is taken and fed (room for exactly it: no read waits for more), and its
        # entry's outcomes recorded but not yet written…
        collector.space = 2
        await wait_until(self.reactor, lambda: len(collector.items) == 2, what="the first read")
        spool._down(Failure(ConnectionError("test")), "test")  # Redis "goes away"
        spool.record_outcomes([outcome(i) for i in collector.items], now=2.0)
        # …and, as the outage begins, a read whose reply is lost: pending for our id.
        lost = await self.job_of_via_cli(q, spool.settings.instance_id)
        collector.space = 1000
        await wait_until(self.reactor, lambda: spool.available, what="recovery")
        await wait_until(self.reactor, lambda: len(collector.items) == 3, what="the lost read")
        self.assertEqual(collector.items[2].job_id, lost)
        self.assertEqual(collector.items[2].resumed, 1)  # delivered before: may be a duplicate
        await wait_until(self.reactor, lambda: spool._held_outcomes() == 0, what="the write")
        view = await spool.job(held)
        assert view is not None
        self.assertEqual(view.status, "done")
        # The entry acknowledged while the pending entries were read is not taken again.
        await sleep(self.reactor, 0.3)
        self.assertEqual(len(collector.items), 3)

    @deferred_test
    async def test_an_entry_acknowledged_while_our_pending_entries_are_read_is_not_retaken(
        self,
    ) -> None:
        spool = self.spool()
        await self.connected(spool)
        collector = Collector(room=1)
        spool.start_consuming(collector.hooks())
        await self.job_of(spool, 1)
        await wait_until(self.reactor, lambda: len(collector.items) == 1, what="the read")
        (item,) = collector.items
        spool._down(Failure(ConnectionError("test")), "test")
        real = redis_spool.HISTORY

        def history_then_outcome(link: Any, keys: Any, args: Any) -> Any:
            # The entry's last outcome is recorded after the read of our pending entries
            # went out, before its reply: Redis answers the read with the entry still
            # pending, then acknowledges it.
            d = real(link, keys, args)
            spool.record_outcomes([outcome(item)], now=2.0)
            return d

        self.patch(redis_spool, "HISTORY", history_then_outcome)
        collector.space = 1000
        spool._back(None)
        await wait_until(self.reactor, lambda: spool._held_outcomes() == 0, what="the write")
        await wait_until(self.reactor, lambda: "0" not in spool._history.values(), what="read")
        await sleep(self.reactor, 0.2)
        self.assertEqual(collector.items, [item])

    async def job_of_via_cli(self, q: str, consumer: str) -> str:
        """A job stored by another instance, then read by ``consumer`` with redis-cli (the
        reply never reaches the spool)."""
        other = self.spool()
        await self.connected(other)
        job_id = await self.job_of(other, 1, seed=2)
        self.server.cli("XREADGROUP", "GROUP", "txapns", consumer, "COUNT", "10", "STREAMS", q, ">")
        return job_id

    @deferred_test
    async def test_too_few_replicas_is_one_outage_until_a_replica_confirms(self) -> None:
        spool = self.spool(wait_replicas=1, wait_timeout=0.05)
        await self.connected(spool)
        # Its loop's ticks probe while the spool is down. It reads nothing (room 0): nothing
        # is put back as the spool closes.
        spool.start_consuming(Collector(room=0).hooks())
        job = [Notification.create(bytes([3]) * 32, b'{"aps":{}}')]
        error = await spool.add_job("a", job, now=1.0, async_=True).addCallbacks(
            lambda _: None, lambda f: f.value
        )
        self.assertIsInstance(error, SpoolUnavailableError)
        self.assertIn("only 0 of 1 Redis replicas", str(error))
        # The primary takes writes, but no replica confirms them: down it stays (it went
        # up at the next probe's write and down at the next submission, logging each time).
        await sleep(self.reactor, 0.5)
        self.assertFalse(spool.available)
        self.assertEqual(spool.outages, 1)
        replica = RedisServer(
            Path(tempfile.mkdtemp(prefix="txapns-replica-")), replica_of=self.server
        )
        replica.start()
        self.addCleanup(replica.stop)
        await wait_until(self.reactor, lambda: spool.available, timeout=20, what="a replica")
        stored = await spool.add_job("a", job, now=2.0, async_=True)
        self.assertFalse(stored.duplicate)

    @deferred_test
    async def test_api_answers_503_while_redis_is_down(self) -> None:
        spool = self.spool()
        await self.connected(spool)
        sender = FakeSender(auto=accept)
        engine = self.engine(spool, sender)
        await engine.start()
        api = self.api(engine)
        body = {"tokens": [token(1)], "alert": "x", "async": True}
        ok = await api.post("a", body)
        self.assertEqual(ok.code, 202, ok.raw)
        health = await api.call("GET", "/healthz")
        self.assertEqual((health.code, health.json["spool"]["redis"]), (200, "up"))
        self.server.kill()
        await wait_until(self.reactor, lambda: not spool.available, what="refusal")
        refused = await api.post("a", body)
        self.assertEqual(refused.code, 503, refused.raw)
        self.assertIsNotNone(refused.header("Retry-After"))
        job = await api.call("GET", f"/v1/jobs/{ok.json['job_id']}")
        self.assertEqual(job.code, 503, job.raw)
        self.assertIsNotNone(job.header("Retry-After"))
        health = await api.call("GET", "/healthz")
        self.assertEqual((health.code, health.json["spool"]["redis"]), (503, "down"))
        text = (await api.call("GET", "/metrics")).raw.decode()
        self.assertEqual(metric(text, "txapns_redis_up"), 0)
        self.server.start()
        await wait_until(self.reactor, lambda: spool.available, timeout=20, what="recovery")
        again = await api.post("a", body)
        self.assertEqual(again.code, 202, again.raw)
        done = await api.wait_job(again.json["job_id"])
        self.assertEqual(done["counts"]["accepted"], 1)

    @deferred_test
    async def test_a_primary_refusing_writes_is_an_outage_503_not_500(self) -> None:
        # min-replicas-to-write without its replicas: Redis answers, but refuses to store.
        spool = self.spool()
        await self.connected(spool)
        engine = self.engine(spool, FakeSender(auto=accept))
        await engine.start()
        api = self.api(engine)
        body = {"tokens": [token(1)], "alert": "x", "async": True}
        self.server.cli("CONFIG", "SET", "min-replicas-to-write", "1")
        self.addCleanup(self.server.cli, "CONFIG", "SET", "min-replicas-to-write", "0")
        refused = await api.post("a", body)
        self.assertEqual(refused.code, 503, refused.raw)
        self.assertIsNotNone(refused.header("Retry-After"))
        health = await api.call("GET", "/healthz")
        self.assertEqual((health.code, health.json["spool"]["redis"]), (503, "down"))
        # Redis answers PING all along: the probe is a write, so the spool stays down.
        await sleep(self.reactor, 10 * spool.settings.schedule_interval)
        self.assertFalse(spool.available)
        self.server.cli("CONFIG", "SET", "min-replicas-to-write", "0")
        await wait_until(self.reactor, lambda: spool.available, what="recovery")
        again = await api.post("a", body)
        self.assertEqual(again.code, 202, again.raw)
        done = await api.wait_job(again.json["job_id"])
        self.assertEqual(done["counts"]["accepted"], 1)

    @deferred_test
    async def test_stop_puts_unsent_entries_back_unflagged(self) -> None:
        _, sender, engine, accepted = await self.stopping(capacity=2, count=6)
        await wait_until(self.reactor, lambda: len(sender.waiting) == 2, what="sends")
        await engine.stop()  # 2 were sent (the fake says "stopped"), 4 never sent
        q = f"{self.prefix}:{{a}}:q"
        self.assertEqual(self.server.cli("XLEN", q), "1")  # one chunk of six, put back
        other = self.spool()
        await self.connected(other)
        collector = self.consume(other)
        await wait_until(self.reactor, lambda: len(collector.items) == 6, what="re-reads")
        self.assertEqual([i.resumed for i in collector.items], [0] * 6)
        self.assertEqual({i.job_id for i in collector.items}, {accepted.job_id})

    async def stopping(
        self, capacity: int, count: int, **settings: Any
    ) -> tuple[Any, FakeSender, Any, Any]:
        """A spool and an engine whose sender takes ``capacity``, with a job of ``count``
        submitted: the set-up of the tests of what a stop puts back."""
        spool = self.spool(**settings)
        await self.connected(spool)
        sender = FakeSender(capacity=capacity)
        engine = self.engine(spool, sender, drain_timeout=0.1, retry_delay=10)
        await engine.start()
        accepted = await engine.submit("a", self.notifications(engine, count), async_=True)
        return spool, sender, engine, accepted

    # REQUEUE is all or nothing: when the put-back at a stop fails, the entry stays pending
    # for this consumer and another instance claims it after claim_after. Nothing is lost:
    # a warning naming the count and the cause, not a logged error.

    @deferred_test
    async def test_a_put_back_that_fails_leaves_the_entry_pending_and_warns(self) -> None:
        await self.put_back_fails(
            lambda spool: self.patch(
                redis_spool, "REQUEUE", lambda *a: fail(ConnectionError("link closed"))
            ),
            "link closed",
        )

    @deferred_test
    async def test_a_put_back_cut_by_close_timeout_says_so(self) -> None:
        # close_timeout (0.2 s) also runs out while the blocking readers close: the writes
        # after it were then waited for without limit (this test hung), now cancelled.
        await self.put_back_fails(
            lambda spool: self.patch(redis_spool, "REQUEUE", lambda *a: Deferred()),
            "no answer within close_timeout; Redis may still put them back",
            close_timeout=0.2,
        )

    @deferred_test
    async def test_no_put_back_while_redis_is_down_is_a_warning_too(self) -> None:
        await self.put_back_fails(
            lambda spool: spool._down(Failure(ConnectionError("test")), "test"),
            "Redis is unavailable",
        )

    async def put_back_fails(
        self, arrange: Callable[[RedisSpool], object], why: str, **settings: Any
    ) -> None:
        spool, _, engine, accepted = await self.stopping(capacity=0, count=3, **settings)
        await wait_until(self.reactor, lambda: spool._held, what="the read")
        arrange(spool)
        warnings = self.watch_warnings()
        await engine.stop()
        self.assertIn(
            f"could not put back 3 unsent notifications of a ({why}); they stay pending",
            "\n".join(warnings),
        )
        q = f"{self.prefix}:{{a}}:q"
        self.assertEqual(self.server.cli("XPENDING", q, "txapns").split("\n")[0], "1")
        other = self.spool(claim_after=0.1)
        await self.connected(other)
        collector = self.consume(other)
        await wait_until(self.reactor, lambda: len(collector.items) == 3, what="the takeover")
        self.assertEqual({i.job_id for i in collector.items}, {accepted.job_id})


class SetUpLostTests(RedisCase):
    """A connection lost during txredisapi's own set-up (AUTH, SELECT) is retried like any
    other: txredisapi stopped trying for good, so an instance stayed at 503 until restarted."""

    @classmethod
    def setUpClass(cls) -> None:
        base = Path(tempfile.mkdtemp(prefix="txapns-redis-auth-"))
        cls.server = RedisServer(base, password="s3cret pass")
        cls.server.start()

    @deferred_test
    async def test_password_and_database_3_behind_a_relay_restarted(self) -> None:
        relay = Relay(self.reactor, self.server.port)
        self.addCleanup(relay.stop)
        address = RedisAddress.from_url(f"redis://:s3cret%20pass@127.0.0.1:{relay.port}/3")
        self.assertEqual((address.password, address.db), ("s3cret pass", 3))
        link = RedisLink(self.reactor, address, reply_timeout=5)
        spool = RedisSpool(
            link, lambda: RedisLink(self.reactor, address, reply_timeout=10), self.reactor,
            ("a",), RedisSettings(prefix=self.prefix, instance_id="auth-1",
                                  schedule_interval=0.05),
        )  # fmt: skip
        self.addCleanup(lambda: spool.close().addErrback(lambda f: None))
        await self.connected(spool)
        sender = FakeSender(auto=accept)
        engine = self.engine(spool, sender)
        await engine.start()
        first = await engine.submit("a", self.notifications(engine, 2))
        self.assertEqual((await engine.wait(first.job_id)).counts["accepted"], 2)
        # Stored in database 3, not 0.
        q = f"{self.prefix}:{{a}}:q"
        self.assertEqual(self.server.cli("-n", "3", "EXISTS", f"{self.prefix}:job:{first.job_id}"),
                         "1")  # fmt: skip
        self.assertEqual(self.server.cli("EXISTS", q), "0")
        self.server.kill()
        await wait_until(self.reactor, lambda: not engine.accepting, what="refusal")
        # Reconnection attempts reach the relay, which closes them during AUTH.
        await wait_until(self.reactor, lambda: relay.cut >= 3, timeout=20, what="attempts")
        self.server.start()
        await wait_until(self.reactor, lambda: engine.accepting, timeout=20, what="recovery")
        again = await engine.submit("a", self.notifications(engine, 3, first=10))
        self.assertEqual((await engine.wait(again.job_id)).counts["accepted"], 3)
        self.assertEqual(len(sender.sent), 5)

    @deferred_test
    async def test_a_refused_password_is_logged_once_and_retried(self) -> None:
        from twisted.logger import globalLogPublisher

        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_format") == "{why}; trying again":
                warnings.append(event["why"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        address = RedisAddress.from_url(f"redis://:rotated@127.0.0.1:{self.server.port}/2")
        link = RedisLink(self.reactor, address, reply_timeout=5)
        self.addCleanup(link.close)
        await wait_until(self.reactor, lambda: len(warnings) >= 1, what="a refusal")
        # The server takes the new password (rotated there first): the link comes up alone.
        self.server.cli("CONFIG", "SET", "requirepass", "rotated")
        self.addCleanup(self.server.cli, "-a", "rotated", "CONFIG", "SET", "requirepass",
                        "s3cret pass")  # fmt: skip
        await wait_until(self.reactor, lambda: link.connected, timeout=20, what="connected")
        self.assertEqual(await link.call("PING"), "PONG")
        self.assertEqual(len(warnings), 1, warnings)  # one per cause, not one per attempt
        self.assertIn("could not auth", warnings[0])


class TLSTests(RedisCase):
    """``rediss://``: TLS to Redis, the server's certificate verified."""

    @classmethod
    def setUpClass(cls) -> None:
        base = Path(tempfile.mkdtemp(prefix="txapns-redis-tls-"))
        cls.pki = base / "pki"
        make_test_pki().write(cls.pki)
        cls.server = RedisServer(base / "redis", tls=cls.pki)
        cls.server.start()

    def address(self, **kw: Any) -> RedisAddress:
        return RedisAddress.from_url(self.server.url, **kw)

    def spool_at(self, address: RedisAddress) -> RedisSpool:
        link = RedisLink(self.reactor, address, reply_timeout=5)
        spool = RedisSpool(
            link, lambda: RedisLink(self.reactor, address, reply_timeout=10), self.reactor,
            ("a",), RedisSettings(prefix=self.prefix, instance_id="tls-1"),
        )  # fmt: skip
        self.addCleanup(lambda: spool.close().addErrback(lambda f: None))
        return spool

    @deferred_test
    async def test_rediss_url_with_a_ca_file(self) -> None:
        address = self.address(ca_file=str(self.pki / "ca.pem"))
        self.assertTrue(address.tls)
        spool = self.spool_at(address)
        await self.connected(spool)
        collector = self.consume(spool)
        job_id = await self.read_job(spool, collector, 2)
        await spool.record_outcomes([outcome(i) for i in collector.items], now=2.0)
        view = await spool.job(job_id)
        assert view is not None
        self.assertEqual((view.status, view.counts["accepted"]), ("done", 2))

    async def handshake(self, address: RedisAddress) -> Failure:
        """Connect with the spool's TLS options; the reason the connection ended."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
        from twisted.internet.protocol import Protocol

        ended: Deferred[list[Failure]] = Deferred()

        class Probe(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"PING\r\n")  # type: ignore[union-attr]

            def dataReceived(self, data: bytes) -> None:
                self.transport.loseConnection()  # type: ignore[union-attr]

            def connectionLost(self, reason: Failure | None = None) -> None:
                assert reason is not None
                ended.callback([reason])  # (a Failure given to callback would errback)

        tcp = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.server.port, timeout=5)
        try:  # the wrapped endpoint's connection fires once the handshake is done
            await connectProtocol(wrapClientTLS(tls_options(address), tcp), Probe())
        except Exception:
            return Failure()
        return (await ended)[0]

    @deferred_test
    async def test_verification_is_on_by_default(self) -> None:
        from OpenSSL.SSL import Error as TLSError
        from service_identity import VerificationError

        # Without ca_file the system's CAs are used: the test CA is not among them.
        refused = await self.handshake(self.address())
        self.assertTrue(refused.check(TLSError), refused)
        # The certificate must name the host too, even when its CA is trusted.
        wrong = RedisAddress(host="redis.example", tls=True, ca_file=str(self.pki / "ca.pem"))
        misnamed = await self.handshake(wrong)
        self.assertTrue(misnamed.check(VerificationError), misnamed)
        # The CA and the name right: a clean close after Redis's answer.
        good = await self.handshake(self.address(ca_file=str(self.pki / "ca.pem")))
        self.assertFalse(good.check(TLSError), good)
        self.flushLoggedErrors(TLSError)
        # And the spool without the CA never comes up: its attempts fail verification, are
        # logged as such, and are retried (a failed handshake is a failed attempt).
        from twisted.logger import globalLogPublisher

        failures: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_format", "").startswith("TLS to Redis failed"):
                failures.append(event["why"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        spool = self.spool_at(self.address())
        await wait_until(self.reactor, lambda: len(failures) >= 2, what="two attempts")
        self.assertIn("certificate verify failed", failures[0])
        self.assertFalse(spool.link.connected)
        self.assertFalse(spool.available)


class SentinelTests(RedisCase):
    """Redis found through a live Sentinel (``redis-server --sentinel``)."""

    @classmethod
    def setUpClass(cls) -> None:
        base = Path(tempfile.mkdtemp(prefix="txapns-redis-sentinel-"))
        cls.server = RedisServer(base / "master")
        cls.server.start()
        cls.sentinel = RedisSentinel(base / "sentinel", cls.server, "txapns-test")
        cls.sentinel.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.sentinel.stop()
        cls.server.stop()

    @deferred_test
    async def test_send_through_sentinel(self) -> None:
        # The URL's own address has nothing listening: only Sentinel can say where Redis is.
        nowhere = free_port()
        address = RedisAddress.from_url(
            f"redis://127.0.0.1:{nowhere}/0",
            sentinels=(("127.0.0.1", self.sentinel.port),),
            sentinel_master="txapns-test",
        )
        link = RedisLink(self.reactor, address, reply_timeout=5)
        spool = RedisSpool(
            link, lambda: RedisLink(self.reactor, address, reply_timeout=10), self.reactor,
            ("a",), RedisSettings(prefix=self.prefix, instance_id="s-1"),
        )  # fmt: skip
        self.addCleanup(lambda: spool.close().addErrback(lambda f: None))
        await wait_until(self.reactor, lambda: spool.available, timeout=20, what="via Sentinel")
        sender = FakeSender(auto=accept)
        engine = self.engine(spool, sender)
        await engine.start()
        ns = self.notifications(engine, 3)
        accepted = await engine.submit("a", ns)
        view = await engine.wait(accepted.job_id)
        self.assertEqual(view.counts["accepted"], 3)
        self.assertEqual(sorted(n.token for n in sender.sent), sorted(n.token for n in ns))
        # Stored on the master Sentinel names.
        self.assertEqual(
            self.sentinel.cli("SENTINEL", "get-master-addr-by-name", "txapns-test").split(),
            ["127.0.0.1", str(self.server.port)],
        )
        self.assertEqual(self.entries_added(), 1)


def bounded(reactor: Any, d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """``d``, failed with a TimeoutError after ``seconds``."""
    return d.addTimeout(seconds, reactor)


class FailoverTests(RedisCase):
    """A primary, two replicas and a Sentinel (``redis-server --sentinel``), all started here;
    the primary killed mid-run. What docs/cluster.rst tells operators to set is set:
    ``min-replicas-to-write 1`` on every Redis, ``wait_replicas = 1`` in the service."""

    timeout = 150
    name = "txapns-failover"

    @classmethod
    def setUpClass(cls) -> None:
        base = Path(tempfile.mkdtemp(prefix="txapns-redis-failover-"))
        safe = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")
        cls.server = RedisServer(base / "primary", options=safe)
        cls.server.start()
        cls.replicas = [
            RedisServer(base / f"replica-{i}", replica_of=cls.server, options=safe)
            for i in (1, 2)
        ]
        for r in cls.replicas:
            r.start()
        cls.sentinel = RedisSentinel(base / "sentinel", cls.server, cls.name, down_after_ms=1000)
        cls.sentinel.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.sentinel.stop()
        for r in cls.replicas:
            r.stop()
        cls.server.stop()

    def primary_port(self) -> int:
        reply = self.sentinel.cli("SENTINEL", "get-master-addr-by-name", self.name).split()
        return int(reply[1])

    def primary(self) -> RedisServer:
        """The server Sentinel names primary now (a test before may have failed over)."""
        port = self.primary_port()
        return next(s for s in (self.server, *self.replicas) if s.port == port)

    @deferred_test
    async def test_primary_killed_mid_run_sending_resumes_on_the_new_one(self) -> None:
        await self.run_failover(lambda: self.primary().kill(), outage=True)

    @deferred_test
    async def test_sentinel_failover_mid_run_sending_resumes_on_the_new_one(self) -> None:
        # The operator's switch (SENTINEL FAILOVER): the old primary becomes a replica and
        # Sentinel drops its clients; they find the new one through Sentinel.
        await self.run_failover(
            lambda: self.sentinel.cli("SENTINEL", "FAILOVER", self.name), outage=False,
            replicas=2,
        )

    async def run_failover(
        self, fail: Callable[[], object], *, outage: bool, replicas: int = 1
    ) -> None:
        def ready() -> bool:
            primary = self.primary()
            others = [s for s in (self.server, *self.replicas) if s is not primary]
            synced = all(
                s.process is not None
                and s.info("replication").get("master_link_status") == "up"
                for s in others
            )
            known = self.sentinel.cli("SENTINEL", "replicas", self.name).count("slave") >= 2
            return synced and known

        await wait_until(self.reactor, ready, timeout=30, what="replicas and Sentinel")
        address = RedisAddress.from_url(
            "redis://127.0.0.1/0", sentinels=(("127.0.0.1", self.sentinel.port),),
            sentinel_master=self.name,
        )  # fmt: skip
        settings = RedisSettings(prefix=self.prefix, instance_id="f-1", wait_replicas=replicas,
                                 claim_after=3.0, schedule_interval=0.05)  # fmt: skip
        spool = RedisSpool(
            RedisLink(self.reactor, address, reply_timeout=5),
            lambda: RedisLink(self.reactor, address, reply_timeout=10),
            self.reactor, ("a",), settings,
        )  # fmt: skip
        self.addCleanup(lambda: spool.close().addErrback(lambda f: None))
        await wait_until(self.reactor, lambda: spool.available, timeout=20, what="via Sentinel")
        sender = FakeSender(auto=accept)
        engine = self.engine(spool, sender)
        await engine.start()
        api = self.api(engine)

        acknowledged: dict[str, list[str]] = {}  # job id -> its tokens
        codes: list[int] = []
        serial = itertools.count()

        async def post() -> int:
            tokens = [token(1000 * next(serial) + i) for i in range(10)]
            body = {"tokens": tokens, "alert": "failover", "async": True}
            reply = await bounded(self.reactor, Deferred.fromCoroutine(api.post("a", body)), 15)
            codes.append(reply.code)
            if reply.code == 202:
                acknowledged[reply.json["job_id"]] = tokens
            else:
                self.assertEqual(reply.code, 503, reply.raw)  # never a 2xx, never a 500
                self.assertIsNotNone(reply.header("Retry-After"))
            return int(reply.code)

        async def accepted(count: int, what: str) -> None:
            # A loaded machine can make WAIT miss its timeout (503, Retry-After) before the
            # failover as well as after it; what counts is 202 or 503, never anything else.
            deadline = self.reactor.seconds() + 60
            done = 0
            while done < count:
                if await post() == 202:
                    done += 1
                elif self.reactor.seconds() > deadline:
                    raise AssertionError(f"no primary accepted work {what}: {codes[-10:]}")
                else:
                    await sleep(self.reactor, 0.05)

        await accepted(5, "before the failover")
        before = len(acknowledged)
        old = self.primary_port()
        fail()  # mid-run: outcomes and reads in flight
        if outage:
            # Until Sentinel has promoted a replica, no primary answers: 503 (bounded).
            await wait_until(self.reactor, lambda: not spool.available, what="the outage")
            self.assertEqual(await post(), 503)
            health = await api.call("GET", "/healthz")
            self.assertEqual((health.code, health.json["spool"]["redis"]), (503, "down"))
        else:
            await wait_until(self.reactor, lambda: self.primary_port() != old, what="Sentinel")
        await accepted(5, "after the failover")  # posting on: 503s, then the new primary's 202s
        self.assertEqual(len(acknowledged), before + 5)
        self.assertNotEqual(self.primary_port(), old)
        if outage:
            self.assertGreaterEqual(spool.outages, 1)
        # Nothing acknowledged is lost: every job is on the new primary and finishes, and
        # every one of its tokens reached APNs (a notification whose outcome the old
        # primary took but did not pass on is sent again, after claim_after).
        for job_id, tokens in acknowledged.items():
            job = await api.wait_job(job_id, timeout=30)
            self.assertEqual(job["counts"]["accepted"], len(tokens), job_id)
        sent = {n.token for n in sender.sent}
        missing = [t for ts in acknowledged.values() for t in ts if bytes.fromhex(t) not in sent]
        self.assertEqual(missing, [])
        self.assertLessEqual(set(codes), {202, 503})
        if outage:
            self.assertEqual(set(codes), {202, 503})
        # Outcomes taken during the outage wait in memory; when the failover outlasts
        # write_timeout (10 s, on a loaded machine) the engine warns that they are not written
        # yet (OutcomesHeldError, not an error): any logged error fails the test.


class ConfigTests(SynchronousTestCase):
    def parse(self, spool: object) -> Any:
        return parse_config({"spool": spool}, base_dir=Path("/etc/txapns"), check_files=False)

    def test_string_is_the_sqlite_file(self) -> None:
        config = self.parse("s.db")
        self.assertEqual(config.spool, Path("/etc/txapns/s.db"))
        self.assertIsNone(config.redis)

    def test_redis_table(self) -> None:
        config = self.parse(
            {"backend": "redis", "url": "redis://10.0.0.5:6380/2", "prefix": "push",
             "wait_replicas": 1, "claim_after": 60, "max_deliveries": 3, "instance_id": "web-1",
             "sentinel": ["10.0.0.6:26379"], "chunk_size": 250}
        )  # fmt: skip
        self.assertEqual(
            config.redis,
            RedisSpoolConfig(
                url="redis://10.0.0.5:6380/2", prefix="push", sentinel=("10.0.0.6:26379",),
                wait_replicas=1, claim_after=60.0, max_deliveries=3, instance_id="web-1",
                chunk_size=250,
            ),
        )  # fmt: skip
        address = RedisAddress.from_url(config.redis.url)
        self.assertEqual((address.host, address.port, address.db), ("10.0.0.5", 6380, 2))

    def test_rediss_url_and_ca_file(self) -> None:
        config = self.parse(
            {"backend": "redis", "url": "rediss://:pw@redis.internal:6380/1", "ca_file": "ca.pem"}
        )
        self.assertEqual(config.redis.ca_file, Path("/etc/txapns/ca.pem"))
        address = RedisAddress.from_url(config.redis.url)
        self.assertEqual((address.tls, address.host, address.port, address.db, address.password),
                         (True, "redis.internal", 6380, 1, "pw"))  # fmt: skip
        self.assertFalse(RedisAddress.from_url("redis://x").tls)

    def test_errors(self) -> None:
        for bad in (
            {"backend": "redis", "url": "redis://x", "ca_file": "ca.pem"},
            {"backend": "redis", "url": "rediss://x", "sentinel": ["10.0.0.6:26379"]},
            {"backend": "mongo"},
            {"backend": "redis", "url": "http://x"},
            {"backend": "redis", "claim_after": 0},
            {"backend": "redis", "wait_replicas": -1},
            {"backend": "redis", "colour": "red"},
            {"backend": "sqlite", "url": "redis://x"},
            {"backend": "redis", "sentinel": ["nohost"]},
            {"backend": "redis", "chunk_size": 0},
            {"backend": "redis", "chunk_size": 1001},
            {"backend": "redis", "chunk_size": 2.5},
            {"backend": "redis", "chunk_size": "100"},
            {"backend": "redis", "chunk_size": True},
            {"backend": "sqlite", "chunk_size": 100},
            {"backend": "redis", "consume": "no"},
            {"backend": "redis", "consume": 0},
            {"backend": "sqlite", "consume": False},
            "",
            3,
        ):
            with self.assertRaises(ConfigError, msg=repr(bad)):
                self.parse(bad)

    def test_defaults(self) -> None:
        config = self.parse({"backend": "redis"})
        self.assertEqual(config.redis, RedisSpoolConfig())
        self.assertEqual(config.redis.claim_after, 120.0)
        self.assertEqual(config.redis.chunk_size, 100)
        self.assertEqual(self.parse({"backend": "redis", "chunk_size": 1000}).redis.chunk_size,
                         1000)  # fmt: skip

    def test_consume(self) -> None:
        self.assertTrue(self.parse({"backend": "redis"}).redis.consume)
        self.assertFalse(self.parse({"backend": "redis", "consume": False}).redis.consume)
        with self.assertRaises(ConfigError) as e:
            self.parse({"backend": "redis", "consume": "false"})
        self.assertIn("consume must be true or false, not 'false'", str(e.exception))

    def test_bad_chunk_size_message(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.parse({"backend": "redis", "chunk_size": 5000})
        self.assertIn("chunk_size must be a whole number from 1 to 1000, not 5000",
                      str(e.exception))  # fmt: skip


class ResultTests(SynchronousTestCase):
    def test_dead_letter_result_is_not_a_rejection(self) -> None:
        r = Result(Notification.create(bytes(32), b"{}"), Outcome.UNKNOWN, reason="x")
        self.assertIs(r.outcome, Outcome.UNKNOWN)

class EncodingTests(SynchronousTestCase):
    """The hand-made encodings of the hot paths write what the library ones would."""

    def test_commands_encoded_as_txredisapi_does(self) -> None:
        import txredisapi

        from txapns.service.redis_spool import _factory_classes

        plain, sentinel = _factory_classes()
        ours = [plain.protocol(), sentinel.protocol()]
        theirs = txredisapi.RedisProtocol()
        for args in (
            ("PING",),
            ("EVALSHA", "f" * 40, 3, "k:{a}:q", "", -7, 1.5, 0.1, b"\x00raw", "é ü", True),
            tuple(str(i) for i in range(1000)),
        ):
            for p in ours:
                self.assertEqual(p._build_command(*args), theirs._build_command(*args))
        self.assertEqual(ours[0]._build_command("SET", "k", 12),
                         b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n")  # fmt: skip

    def test_outcome_json_as_json_dumps_writes_it(self) -> None:
        import json

        from txapns.service.redis_spool import _Chunk, _Held

        spool = RedisSpool.__new__(RedisSpool)
        for deliveries in (1, 2):
            held = _Held(_Chunk("a", "1-0", "j", deliveries), 3, "ab", None)
            for r in (
                OutcomeRecord(1, "j", "a", "ab", "accepted", 200, None, "0A1B-2c", None, 1),
                OutcomeRecord(1, "j", "a", "ab", "rejected", 410, 'Unreg"ist\\ered\n', None,
                              1700000000.25, 2, token_invalid=True),
                OutcomeRecord(1, "j", "a", "ab", "unknown", None, "gave up é", 'x"y', None, 0),
            ):  # fmt: skip
                args = spool._record_args(held, r, 1733400000.123456, "")
                expected = [r.state, r.status, r.reason, r.apns_id, r.timestamp, r.attempts,
                            1 if deliveries > 1 else 0, 1733400000.123456]  # fmt: skip
                self.assertEqual(json.loads(args[3]), expected)
                self.assertEqual(args[3], json.dumps(expected, separators=(",", ":")))



class UnavailableTests(SynchronousTestCase):
    """A lost connection is an outage wherever it surfaces, even wrapped by a fan-out read's
    ``DeferredList(fireOnOneErrback=True)``: seen as a bug instead, the read logged a
    traceback and retried, and the test of the API's 503 failed on the logged error."""

    def test_a_lost_connection_inside_first_error_is_an_outage(self) -> None:
        import txredisapi
        from twisted.internet.defer import FirstError

        from txapns.service.redis_spool import is_unavailable

        lost = Failure(txredisapi.ConnectionError("Lost connection"))
        self.assertTrue(is_unavailable(lost))
        self.assertTrue(is_unavailable(Failure(FirstError(lost, 0))))
        self.assertFalse(is_unavailable(Failure(FirstError(Failure(ValueError("bug")), 0))))
