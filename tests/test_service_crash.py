"""Crash test: ``kill -9`` the running service mid-way; nothing accepted is lost.

Two real processes on loopback:

* the fake binary gateway, ``python -m txapns.testing gateway``, which writes its test PKI and
  appends every notification it accepts to a record file (the evidence of delivery);
* the service, ``twistd -n --pidfile= apns --config CFG --listen tcp:0:interface=127.0.0.1``,
  configured with one binary-protocol app pointing at that gateway.

The test submits 40 batches of 500 notifications (20,000) asynchronously through the API,
each with its own idempotency key, four requests at a time. As soon as 20 batches were
answered 202 it sends SIGKILL, while later requests and deliveries are in flight. It restarts
the service on the same spool, submits again every batch that had no 202 (same idempotency
keys: a batch whose answer was lost in the crash is recognised, not stored twice), waits for
every job to be done, stops both processes and reads the gateway's record.

It checks that every notification was delivered at least once, that nothing else was
delivered, and that each duplicate delivery is of a notification the service reported as a
possible duplicate (``may_duplicate`` in its job, counted in
``txapns_resumed_maybe_duplicate_total``): the binary protocol never confirms a notification,
so those in flight at the crash are sent again after the restart.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.trial.unittest import TestCase

from .helpers import deferred_test, metric, temp_dir
from .helpers_process import KEY, Child, ProcessServiceMixin
from .helpers_running import ApiClient

BATCHES = 40
BATCH_SIZE = 500
KILL_AFTER = 20  # batches answered 202 before the SIGKILL
CONCURRENCY = 4
APP = "shop"


def batch_tokens(batch: int) -> list[str]:
    return [f"c0{batch:02x}{i:060x}" for i in range(BATCH_SIZE)]


class BinaryCrashTests(ProcessServiceMixin, TestCase):
    """The crash test with the binary protocol: the one that never confirms a notification."""

    # A liveness limit, not a timing: about 30 s on an idle 2-core machine, but several
    # minutes when the suite runs in four xdist workers beside other work.
    timeout = 480
    protocol = "binary"

    @deferred_test
    async def test_kill_9_mid_way_loses_nothing_and_counts_duplicates(self) -> None:
        self.dir = temp_dir(self)
        self.children: list[Child] = []
        self.addCleanup(lambda: Deferred.fromCoroutine(self.kill_leftovers()))
        record = self.dir / "delivered.jsonl"
        pki = self.dir / "pki"

        # The fake gateway, in its own process, recording every delivery.
        gateway = self.spawn(
            "gateway",
            [
                sys.executable,
                "-m",
                "txapns.testing",
                "gateway" if self.protocol == "binary" else "http2",
                "--pki-dir",
                str(pki),
                "--record",
                str(record),
            ],
        )
        gateway_port = int((await gateway.wait_for(r"^(\d+)\n")).group(1))
        (self.dir / "api.key").write_bytes(KEY + b"\n")
        self.config = self.dir / "service.toml"
        self.config.write_text(
            "\n".join(
                [
                    'api_key_file = "api.key"',
                    'spool = "spool.sqlite3"',
                    "drain_timeout = 5",
                    "[[app]]",
                    f'name = "{APP}"',
                    'bundle_id = "com.example.app"',
                    'environment = "sandbox"',
                    f'protocol = "{self.protocol}"',
                    'host = "127.0.0.1"',
                    f"port = {gateway_port}",
                    'ca_file = "pki/ca.pem"',
                    *self.app_credentials(pki),
                    "",
                ]
            )
        )

        # First run: submit until KILL_AFTER batches were accepted, then SIGKILL.
        first, api = await self.start_service("service-1")
        jobs: dict[int, str] = {}
        failed: list[int] = []
        killed: list[Deferred[BaseException]] = []
        delivered_at_kill: list[int] = []

        async def submit(client: ApiClient, batch: int) -> None:
            if killed:
                return
            body = {
                "tokens": batch_tokens(batch),
                "alert": f"crash test batch {batch}",
                "async": True,
                "idempotency_key": f"batch-{batch}",
            }
            try:
                reply = await client.post(APP, body)
            except Exception:
                failed.append(batch)
                return
            if reply.code != 202:
                failed.append(batch)
                return
            jobs[batch] = reply.json["job_id"]
            if len(jobs) == KILL_AFTER and not killed:
                delivered_at_kill.append(count_lines(record))
                killed.append(first.signal("KILL"))

        semaphore = DeferredSemaphore(CONCURRENCY)
        runs = [
            semaphore.run(lambda b=b: Deferred.fromCoroutine(submit(api, b)))
            for b in range(BATCHES)
        ]
        for d in runs:
            await d
        self.assertEqual(len(killed), 1, "the service was never killed")
        reason = await killed[0]
        assert isinstance(reason, ProcessTerminated), reason
        self.assertEqual(reason.signal, 9)
        accepted_before_kill = dict(jobs)
        # (An answer already on its way when the signal was sent may still arrive.)
        self.assertGreaterEqual(len(accepted_before_kill), KILL_AFTER)
        self.assertLess(len(accepted_before_kill), BATCHES)
        self.assertLess(delivered_at_kill[0], BATCHES * BATCH_SIZE)

        # Second run on the same spool: resubmit what had no 202, with the same keys.
        second, api2 = await self.start_service("service-2")
        resubmitted = sorted(set(range(BATCHES)) - set(jobs))
        replayed: list[int] = []
        for batch in resubmitted:
            body = {
                "tokens": batch_tokens(batch),
                "alert": f"crash test batch {batch}",
                "async": True,
                "idempotency_key": f"batch-{batch}",
            }
            reply = await api2.post(APP, body)
            self.assertEqual(reply.code, 202, reply.raw[:300])
            jobs[batch] = reply.json["job_id"]
            if reply.json["duplicate"]:
                replayed.append(batch)
        self.assertEqual(sorted(jobs), list(range(BATCHES)))

        views = {batch: await api2.wait_job(job_id, timeout=60) for batch, job_id in jobs.items()}
        text = (await api2.call("GET", "/metrics")).raw.decode()
        resumed = metric(text, "txapns_resumed_maybe_duplicate_total", app=APP)

        # Stop both (gracefully): the gateway flushes and closes its record.
        # twistd stops cleanly on SIGTERM, then exits by that signal (Twisted re-raises it).
        ended = await second.signal("TERM")
        self.assertTrue(
            isinstance(ended, ProcessDone)
            or (isinstance(ended, ProcessTerminated) and ended.signal == 15),
            f"{ended!r}\n{second.tail()}",
        )
        self.assertIn("Server Shut Down.", second.out)
        ended = await gateway.signal("TERM")
        self.assertIsInstance(ended, ProcessDone, gateway.tail())

        deliveries: collections.Counter[str] = collections.Counter()
        with open(record, encoding="utf-8") as f:
            for line in f:
                deliveries[json.loads(line)["token"]] += 1
        wanted = {t for b in range(BATCHES) for t in batch_tokens(b)}
        self.assertEqual(len(wanted), BATCHES * BATCH_SIZE)

        # Every accepted notification was delivered; nothing else was.
        missing = wanted - set(deliveries)
        self.assertEqual(len(missing), 0, f"{len(missing)} accepted notifications never delivered")
        self.assertEqual(set(deliveries) - wanted, set())
        may_duplicate: set[str] = set()
        for batch, view in views.items():
            self.assertEqual(view["status"], "done")
            self.assertEqual(view["counts"]["accepted"], BATCH_SIZE, f"batch {batch}")
            self.assertEqual([r["token"] for r in view["results"]], batch_tokens(batch))
            may_duplicate.update(r["token"] for r in view["results"] if r["may_duplicate"])
            self.assertEqual(
                view["may_duplicate"], sum(1 for r in view["results"] if r["may_duplicate"])
            )

        # Duplicates only where the service said they might be: at most one extra each.
        duplicated = {t: n for t, n in deliveries.items() if n > 1}
        self.assertEqual(set(duplicated) - may_duplicate, set())
        self.assertLessEqual(max(duplicated.values(), default=1), 2)
        extra = sum(n - 1 for n in duplicated.values())
        self.assertLessEqual(extra, resumed)
        self.assertEqual(len(may_duplicate), resumed)
        # The crash really hit deliveries in flight.
        self.assertGreater(resumed, 0)
        self.assertIn("resumed", second.out)
        (sys.__stderr__ or sys.stderr).write(
            f"\ncrash test ({self.protocol}): {len(accepted_before_kill)} batches accepted "
            "before SIGKILL, "
            f"{delivered_at_kill[0]} delivered at the kill, {len(failed)} requests cut, "
            f"{len(replayed)} batches stored before the crash but unanswered (replayed by "
            f"idempotency key), {int(resumed)} resumed as possible duplicates, {extra} "
            f"delivered twice, {sum(deliveries.values())} deliveries in all\n"
        )


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


class HTTP2CrashTests(BinaryCrashTests):
    """The same over HTTP/2 (token auth): only requests in flight at the crash can repeat."""

    protocol = "http2"
