"""Several real ``twistd apns`` processes on one real ``redis-server`` and the fake APNs.

The processes, the fake HTTP/2 APNs (``python -m txapns.testing http2 --record``) and the
helpers to start, signal and read them are the crash test's (``helpers_process``); the spool is
``[spool] backend = "redis"`` and each instance is named by its hostname-pid. The fake's
record file (one JSON line per accepted notification) is the evidence of delivery.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.error import ProcessTerminated
from twisted.trial.unittest import TestCase

from .helpers import deferred_test, metric, sleep, temp_dir
from .helpers_process import KEY, Child, ProcessServiceMixin
from .helpers_running import ApiClient
from .redis_server import SKIP, RedisServer

APP = "shop"
BATCH_SIZE = 500


def batch_tokens(batch: int) -> list[str]:
    return [f"c1{batch:02x}{i:060x}" for i in range(BATCH_SIZE)]


class ClusterCase(ProcessServiceMixin, TestCase):
    """A redis-server, the fake APNs and ``twistd apns`` instances sharing the Redis spool."""

    skip = SKIP
    timeout = 240
    protocol = "http2"
    # Long enough that live instances on a loaded machine do not take each other's work
    # (the default is 120 s), short enough for a test.
    claim_after = 15

    async def start_cluster(
        self, instances: int, api_only: int = 0
    ) -> list[tuple[Child, ApiClient]]:
        """``instances`` instances; the first ``api_only`` of them with ``consume = false``."""
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.dir = temp_dir(self)
        self.children: list[Child] = []
        self.addCleanup(lambda: Deferred.fromCoroutine(self.kill_leftovers()))
        self.redis = RedisServer(self.dir / "redis", appendfsync="always")
        self.redis.start()
        self.addCleanup(self.redis.stop)
        self.record = self.dir / "delivered.jsonl"
        pki = self.dir / "pki"
        self.fake = self.spawn(
            "fake-apns",
            [sys.executable, "-m", "txapns.testing", "http2", "--pki-dir", str(pki),
             "--record", str(self.record)],
        )  # fmt: skip
        port = int((await self.fake.wait_for(r"^(\d+)\n")).group(1))
        (self.dir / "api.key").write_bytes(KEY + b"\n")
        self.config = self.dir / "service.toml"
        self.config.write_text(
            "\n".join(
                [
                    'api_key_file = "api.key"',
                    "drain_timeout = 5",
                    "[spool]",
                    'backend = "redis"',
                    f'url = "{self.redis.url}"',
                    f"claim_after = {self.claim_after}",
                    "[[app]]",
                    f'name = "{APP}"',
                    'bundle_id = "com.example.app"',
                    'environment = "sandbox"',
                    f'protocol = "{self.protocol}"',
                    'host = "127.0.0.1"',
                    f"port = {port}",
                    'ca_file = "pki/ca.pem"',
                    *self.app_credentials(pki),
                    "",
                ]
            )
        )
        api_config = self.dir / "api-only.toml"
        api_config.write_text(
            self.config.read_text().replace("[spool]\n", "[spool]\nconsume = false\n")
        )
        started = [
            Deferred.fromCoroutine(
                self.start_service(f"instance-{i}", api_config if i < api_only else None)
            )
            for i in range(instances)
        ]
        return [await d for d in started]

    async def stop_all(self) -> None:
        for child in self.children:
            if child.running and child is not self.fake:
                await child.signal("TERM")
        await self.fake.signal("TERM")

    def deliveries(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        with open(self.record, encoding="utf-8") as f:
            for line in f:
                out[json.loads(line)["token"]] += 1
        return out

    async def submit(self, api: ApiClient, batch: int, **extra: Any) -> Any:
        body = {
            "tokens": batch_tokens(batch),
            "alert": f"cluster batch {batch}",
            "async": True,
            "idempotency_key": f"batch-{batch}",
            **extra,
        }
        return await api.post(APP, body)


class KillOneInstanceTests(ClusterCase):
    timeout = 480  # about 2 minutes on an idle 2-core machine; generous for a loaded one
    # 30,000 notifications through three instances and the fake: about volume and a kill
    # under load, so its children run unmeasured by README's coverage run (several times
    # the CPU otherwise); the spool's takeover code they run is measured by
    # test_redis_spool's TakeoverTests and this module's other tests.
    measured = False
    BATCHES = 60  # 30,000 notifications
    KILL_AFTER = 20

    @deferred_test
    async def test_three_instances_kill_9_one_the_others_finish(self) -> None:
        started = time.monotonic()
        cluster = await self.start_cluster(3)
        victim, _ = cluster[0]
        jobs: dict[int, str] = {}
        cut: list[int] = []
        killed: list[Deferred[BaseException]] = []

        async def send(batch: int) -> None:
            _, api = cluster[batch % 3]
            if api is cluster[0][1] and killed:
                cut.append(batch)
                return
            try:
                reply = await self.submit(api, batch)
            except Exception:
                cut.append(batch)
                return
            if reply.code != 202:
                cut.append(batch)
                return
            jobs[batch] = reply.json["job_id"]
            if len(jobs) >= self.KILL_AFTER and not killed:
                killed.append(victim.signal("KILL"))

        semaphore = DeferredSemaphore(6)
        for d in [
            semaphore.run(lambda b=b: Deferred.fromCoroutine(send(b))) for b in range(self.BATCHES)
        ]:
            await d
        self.assertEqual(len(killed), 1)
        reason = await killed[0]
        assert isinstance(reason, ProcessTerminated), reason
        self.assertEqual(reason.signal, 9)
        live = cluster[1:]
        # What the dead instance never answered goes to the live ones, with the same key.
        for batch in cut:
            reply = await self.submit(live[batch % 2][1], batch)
            self.assertEqual(reply.code, 202, reply.raw[:300])
            jobs[batch] = reply.json["job_id"]
        self.assertEqual(sorted(jobs), list(range(self.BATCHES)))

        # Every job completes, readable on both live instances.
        views: dict[int, dict[str, Any]] = {}
        for batch, job_id in jobs.items():
            views[batch] = await live[0][1].wait_job(job_id, timeout=300)
            other = await live[1][1].wait_job(job_id, timeout=10)
            self.assertEqual(other["counts"], views[batch]["counts"])
        # Every entry acknowledged (so every outcome, including a late duplicate's, written),
        # then the final views.
        q = f"txapns:{{{APP}}}:q"
        for _ in range(600):
            if self.redis.cli("XLEN", q) == "0":
                break
            await sleep(self.reactor, 0.1)
        self.assertEqual(self.redis.cli("XLEN", q), "0")
        for batch, job_id in jobs.items():
            views[batch] = await live[batch % 2][1].wait_job(job_id, timeout=10)
        claimed = 0.0
        for _, api in live:
            text = (await api.call("GET", "/metrics")).raw.decode()
            claimed += metric(text, "txapns_redis_claimed_total", app=APP)
        await self.stop_all()

        deliveries = self.deliveries()
        wanted = {t for b in range(self.BATCHES) for t in batch_tokens(b)}
        missing = wanted - set(deliveries)
        self.assertEqual(len(missing), 0, f"{len(missing)} acknowledged notifications lost")
        self.assertEqual(set(deliveries) - wanted, set())
        may_duplicate: set[str] = set()
        for batch, view in views.items():
            self.assertEqual(view["status"], "done")
            self.assertEqual(view["counts"]["accepted"], BATCH_SIZE, f"batch {batch}")
            self.assertEqual([r["token"] for r in view["results"]], batch_tokens(batch))
            may_duplicate.update(r["token"] for r in view["results"] if r["may_duplicate"])
        duplicated = {t for t, n in deliveries.items() if n > 1}
        (sys.__stderr__ or sys.stderr).write(
            f"\nredis cluster test: {len(cut)} requests cut by the kill, {int(claimed)} "
            f"notifications taken over, {len(may_duplicate)} flagged may_duplicate, "
            f"{len(duplicated)} delivered twice, {len(duplicated - may_duplicate)} of them "
            "unflagged, "
            f"{time.monotonic() - started:.0f}s\n"
        )
        self.assertEqual(duplicated - may_duplicate, set(), "a duplicate was not flagged")


class RedisRestartTests(ClusterCase):
    BATCHES = 16
    KILL_AFTER = 6

    @deferred_test
    async def test_redis_killed_and_restarted_mid_run(self) -> None:
        [(service, api)] = await self.start_cluster(1)
        jobs: dict[int, str] = {}
        refused: list[int] = []
        for batch in range(self.BATCHES):
            if batch == self.KILL_AFTER:
                self.redis.kill()  # appendfsync always: every acknowledged job is on disk
            reply = await self.submit(api, batch)
            if reply.code == 202:
                jobs[batch] = reply.json["job_id"]
            else:
                self.assertEqual(reply.code, 503, reply.raw[:300])
                self.assertIsNotNone(reply.header("Retry-After"))
                refused.append(batch)
            if batch == self.KILL_AFTER + 2:
                health = await api.call("GET", "/healthz")
                self.assertEqual(health.code, 503)
                self.redis.start()
        self.assertGreater(len(refused), 0, "no 503 while Redis was down")
        # Sending resumes by itself; what was refused is submitted again.
        for _ in range(400):
            if (await api.call("GET", "/healthz")).code == 200:
                break
            await sleep(self.reactor, 0.05)
        for batch in refused:
            reply = await self.submit(api, batch)
            self.assertEqual(reply.code, 202, reply.raw[:300])
            jobs[batch] = reply.json["job_id"]
        for job_id in jobs.values():
            view = await api.wait_job(job_id, timeout=60)
            self.assertEqual(view["counts"]["accepted"], BATCH_SIZE)
        await self.stop_all()
        deliveries = self.deliveries()
        wanted = {t for b in range(self.BATCHES) for t in batch_tokens(b)}
        self.assertEqual(wanted - set(deliveries), set())
        self.assertTrue(service.exit is not None)


class SharedStateTests(ClusterCase):
    @deferred_test
    async def test_scheduled_job_sent_once_not_once_per_instance(self) -> None:
        cluster = await self.start_cluster(3)
        # Three instances, each moving due entries twice a second: one must win each.
        reply = await self.submit(cluster[0][1], 1, send_at=time.time() + 2)
        self.assertEqual(reply.code, 202, reply.raw[:300])
        view = await cluster[2][1].wait_job(reply.json["job_id"], timeout=60)
        self.assertEqual(view["counts"]["accepted"], BATCH_SIZE)
        await self.stop_all()
        deliveries = self.deliveries()
        self.assertEqual(set(deliveries), set(batch_tokens(1)))
        self.assertEqual(set(deliveries.values()), {1})

    @deferred_test
    async def test_same_idempotency_key_at_two_instances_at_once_makes_one_job(self) -> None:
        cluster = await self.start_cluster(2)
        first = Deferred.fromCoroutine(self.submit(cluster[0][1], 2))
        second = Deferred.fromCoroutine(self.submit(cluster[1][1], 2))
        a, b = await first, await second
        self.assertEqual((a.code, b.code), (202, 202))
        self.assertEqual(a.json["job_id"], b.json["job_id"])
        self.assertEqual(sorted([a.json["duplicate"], b.json["duplicate"]]), [False, True])
        await cluster[1][1].wait_job(a.json["job_id"], timeout=60)
        await self.stop_all()
        deliveries = self.deliveries()
        self.assertEqual(set(deliveries), set(batch_tokens(2)))
        self.assertEqual(set(deliveries.values()), {1})


class ApiOnlyTests(ClusterCase):
    @deferred_test
    async def test_api_only_instance_accepts_answers_and_never_sends(self) -> None:
        (_, front), (_, worker) = await self.start_cluster(2, api_only=1)
        health = (await front.call("GET", "/healthz")).json
        self.assertEqual(health["spool"]["consume"], False)
        self.assertTrue((await worker.call("GET", "/healthz")).json["spool"]["consume"])
        jobs = []
        for batch in range(4):
            reply = await self.submit(front, batch)
            self.assertEqual(reply.code, 202, reply.raw[:300])
            jobs.append(reply.json["job_id"])
        # A synchronous request at the API-only instance: answered once the worker has sent
        # it (the instance learns it from Redis, as any instance does).
        sync = await front.post(APP, {"tokens": batch_tokens(9)[:3], "alert": "sync"})
        self.assertEqual(sync.code, 200, sync.raw[:300])
        self.assertEqual(sync.json["counts"]["accepted"], 3)
        for job_id in jobs:
            view = await front.wait_job(job_id, timeout=60)
            self.assertEqual(view["counts"]["accepted"], BATCH_SIZE)
        # The worker sent everything; the API-only instance never connected to APNs.
        front_app = (await front.call("GET", "/healthz")).json["apps"][APP]
        worker_app = (await worker.call("GET", "/healthz")).json["apps"][APP]
        self.assertEqual(front_app["connections_made"], 0)
        self.assertGreater(worker_app["connections_made"], 0)
        front_metrics = (await front.call("GET", "/metrics")).raw.decode()
        self.assertEqual(metric(front_metrics, "txapns_notifications_accepted_total", app=APP), 0)
        await self.stop_all()
        deliveries = self.deliveries()
        wanted = {t for b in range(4) for t in batch_tokens(b)} | set(batch_tokens(9)[:3])
        self.assertEqual(set(deliveries), wanted)
        self.assertEqual(set(deliveries.values()), {1})
