"""Outcomes nobody waits for are written together, ``outcome_delay`` after the first of them
(issue 11): at most one write per ``outcome_delay`` whatever the rate, and the submissions'
transactions carry only their jobs. A synchronous request's outcomes are written at once, and
so are a shared spool's."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txapns.service import spool as spool_module
from txapns.service.backend import ConsumerHooks
from txapns.service.engine import Engine, EngineApp, Template
from txapns.service.spool import JobView, Spool, SpooledNotification, SpoolStore, inline_runner
from txapns.service.testing import FakeSender, accept

from .helpers import temp_dir

DELAY = 0.02


class _EngineCase(SynchronousTestCase):
    """An engine over a real SQLite spool (run inline) and a sender that accepts."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(self.store.close)
        self.watch_store()
        self.spool = Spool(self.store, self.clock, inline_runner)
        self.sender = FakeSender(auto=accept, clock=self.clock)  # answers on the next turn
        self.engine = Engine(
            {"a": EngineApp(self.sender, bundle_id="com.example.a")},
            self.spool,
            self.clock,
            purge_interval=0,
            outcome_delay=DELAY,
        )
        self.engine.start()
        self.turns()

    def watch_store(self) -> None:
        """Wrap the store before the spool takes it (a test may record what it runs)."""

    def turns(self) -> None:
        for _ in range(5):
            self.clock.advance(0)


class OutcomeBatchingTests(_EngineCase):
    def submit(self, token: str, *, async_: bool = True) -> str:
        batch = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), [token])
        d = self.engine.submit("a", batch, async_=async_)
        self.turns()
        return self.successResultOf(d).job_id

    def states(self) -> dict[str, int]:
        return {state: n for (_, state), n in self.store.counts().items()}

    def test_outcomes_are_written_together_after_the_delay(self) -> None:
        before = self.spool.batches
        self.submit("aa" * 32)
        self.assertEqual(len(self.sender.sent), 1)
        self.assertEqual(self.states(), {"inflight": 1})  # answered, not yet written
        self.assertEqual(self.spool.batches - before, 1)
        self.clock.advance(DELAY / 2)
        self.submit("bb" * 32)
        # The second job's transaction carries the job only.
        self.assertEqual(self.spool.batches - before, 2)
        self.assertEqual(self.states(), {"inflight": 2})
        self.assertEqual(len(self.sender.sent), 2)  # both answered
        self.clock.advance(DELAY / 2 - 0.001)
        self.turns()
        self.assertEqual(self.spool.batches - before, 2)  # not yet: DELAY after the first
        self.clock.advance(0.001)
        self.turns()
        # Both outcomes, in one transaction.
        self.assertEqual(self.spool.batches - before, 3)
        self.assertEqual(self.states(), {"accepted": 2})

    def test_an_outcome_someone_waits_for_is_written_at_once(self) -> None:
        self.submit("aa" * 32)  # an asynchronous one waiting for company
        batch = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), ["cc" * 32])
        waiting: list[Deferred[JobView]] = []
        # As the API does: wait for the job as soon as it is stored.
        self.engine.submit("a", batch).addCallback(
            lambda accepted: waiting.append(self.engine.wait(accepted.job_id, fresh=True))
        )
        self.turns()  # stored, sent, answered: no clock time passes
        view = self.successResultOf(waiting[0])
        self.assertTrue(view.done)
        self.assertEqual(self.states(), {"accepted": 2})  # the waiting one went along

    def test_the_stop_writes_what_waits(self) -> None:
        self.submit("aa" * 32)
        self.turns()
        self.assertEqual(self.states(), {"inflight": 1})  # its outcome waits for the delay
        stopped = self.engine.stop()
        self.turns()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        reopened = SpoolStore(self.store.path)  # the stop closed the spool
        self.addCleanup(reopened.close)
        self.assertEqual({state: n for (_, state), n in reopened.counts().items()}, {"accepted": 1})


class _SharedSpool(Spool):
    """A SQLite spool posing as a shared one: the test feeds the engine through its hooks."""

    shared = True  # type: ignore[assignment]
    hooks: ConsumerHooks

    def start_consuming(self, hooks: object) -> None:
        assert isinstance(hooks, ConsumerHooks)
        self.hooks = hooks


class SharedSpoolOutcomeTests(SynchronousTestCase):
    """On a shared spool another instance may be the one waiting for a job (it polls), and
    the spool batches its own writes: outcomes are written at the end of the turn."""

    def test_outcomes_are_written_without_the_delay(self) -> None:
        clock = Clock()
        store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(store.close)
        spool = _SharedSpool(store, clock, inline_runner)
        sender = FakeSender(auto=accept, clock=clock)
        engine = Engine(
            {"a": EngineApp(sender, bundle_id="com.example.a")},
            spool,
            clock,
            purge_interval=0,
            outcome_delay=DELAY,
        )
        engine.start()
        for _ in range(5):
            clock.advance(0)
        [n] = engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), ["aa" * 32])
        stored = store.add_job("a", [n], now=clock.seconds(), async_=True)
        spool.hooks.feed("a", [SpooledNotification(stored.ids[0], stored.job_id, "a", n, None, 0)])
        for _ in range(5):
            clock.advance(0)  # no clock time passes
        self.assertEqual(len(sender.sent), 1)
        self.assertEqual({state: k for (_, state), k in store.counts().items()}, {"accepted": 1})


class _BatchRecordingCase(_EngineCase):
    """Records each spool batch: volatile (no fsync after its commit) or not."""

    def watch_store(self) -> None:
        self.batches: list[bool] = []  # volatile (no fsync after its commit)?
        commit_batch, sync_wal = self.store.commit_batch, self.store.sync_wal

        def committing(ops: Any) -> list[object]:
            self.batches.append(True)
            return commit_batch(ops)

        def syncing() -> None:  # on the reactor's thread or in store.sync, on the runner's
            self.batches[-1] = False
            sync_wal()

        self.store.commit_batch = committing  # type: ignore[method-assign]
        self.store.sync_wal = syncing  # type: ignore[method-assign]


class SynchronousRequestTests(_BatchRecordingCase):
    """A synchronous request without a key costs one fsync and two spool batches (issue 11,
    sync p50): its job is committed without an fsync (nothing was promised yet: it is
    answered only after its outcomes), and its view is read in the batch that records its
    last outcome, not in a third batch after it."""

    def request(self, tokens: list[str], **kw: object) -> Deferred[JobView]:
        """What the API does for a synchronous request."""
        batch = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), tokens)
        waiting: Deferred[JobView] = Deferred()

        def stored(accepted: Any) -> None:
            self.engine.wait(accepted.job_id, fresh=True, count=accepted.count).chainDeferred(
                waiting
            )

        self.engine.submit("a", batch, **kw).addCallback(stored)  # type: ignore[arg-type]
        return waiting

    def test_unkeyed_sync_request_one_fsync_two_batches(self) -> None:
        del self.batches[:]
        waiting = self.request(["aa" * 32, "bb" * 32])
        self.turns()
        view = self.successResultOf(waiting)
        self.assertTrue(view.done)
        self.assertEqual(view.counts["accepted"], 2)
        # The job (volatile), then the outcomes with the view read (durable): two batches.
        self.assertEqual(self.batches, [True, False])

    def test_keyed_and_async_jobs_are_durable_at_once(self) -> None:
        del self.batches[:]
        self.turns()
        self.request(["aa" * 32], idempotency_key="k1")
        self.turns()
        self.assertEqual(self.batches[0], False)
        del self.batches[:]
        batch = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), ["cc" * 32])
        self.engine.submit("a", batch, async_=True)
        self.turns()
        self.assertEqual(self.batches[0], False)

    def test_a_durable_operation_makes_its_batch_durable(self) -> None:
        del self.batches[:]
        sync = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), ["aa" * 32])
        other = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), ["bb" * 32])
        self.engine.submit("a", sync)
        self.engine.submit("a", other, async_=True)  # same turn: same batch
        self.clock.advance(0)
        self.assertEqual(self.batches[0], False)

    def test_stop_answers_after_the_spool_closed(self) -> None:
        self.sender.auto = None  # never answers
        waiting = self.request(["aa" * 32])
        self.turns()
        self.assertNoResult(waiting)
        closed: list[bool] = []
        close = self.spool.close

        def recording_close() -> Deferred[None]:
            return close().addCallback(lambda _: closed.append(self.store.closed))

        self.spool.close = recording_close  # type: ignore[method-assign]
        seen: list[list[bool]] = []

        def answered(view: JobView) -> JobView:
            seen.append(list(closed))
            return view

        waiting.addCallback(answered)
        stopped = self.engine.stop()
        for _ in range(20):
            self.clock.advance(1)
        self.successResultOf(stopped)
        # Answered (202 as it stands) only once the close made its volatile job durable.
        self.assertEqual(seen, [[True]])
        self.assertFalse(self.successResultOf(waiting).done)


class WaitLimitTests(_BatchRecordingCase):
    """A synchronous request never waits without a limit (APNs unreachable, the disk full):
    past it, it gets its job as it stands, read in a durable batch, since the answer
    promises the job (stored without an fsync of its own)."""

    def request_with_limit(self, tokens: list[str], limit: float) -> Deferred[JobView]:
        batch = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), tokens)
        waiting: Deferred[JobView] = Deferred()
        self.engine.submit("a", batch).addCallback(
            lambda accepted: self.engine.wait(
                accepted.job_id, fresh=True, count=accepted.count, limit=limit
            ).chainDeferred(waiting)
        )
        return waiting

    def limit_calls(self) -> list[Any]:
        return [c for c in self.clock.getDelayedCalls() if c.func == self.engine._wait_expired]

    def test_past_its_limit_a_wait_gets_the_job_as_it_stands_durably(self) -> None:
        self.sender.auto = None  # APNs never answers
        waiting = self.request_with_limit(["aa" * 32], 30)
        self.turns()
        del self.batches[:]
        self.clock.advance(29.9)
        self.turns()
        self.assertNoResult(waiting)
        self.assertEqual(self.batches, [])
        self.clock.advance(0.1)
        self.turns()
        view = self.successResultOf(waiting)
        self.assertFalse(view.done)
        self.assertEqual(view.counts["inflight"], 1)
        self.assertEqual(self.batches, [False])  # the read's batch was synced
        self.assertEqual(self.engine._waiters, {})
        self.assertEqual(self.limit_calls(), [])

    def test_a_wait_done_in_time_cancels_its_limit(self) -> None:
        waiting = self.request_with_limit(["aa" * 32], 30)
        self.turns()
        self.assertTrue(self.successResultOf(waiting).done)
        self.assertEqual(self.limit_calls(), [])

    def test_only_the_waiter_past_its_limit_is_answered(self) -> None:
        self.sender.auto = None
        short = self.request_with_limit(["aa" * 32], 5)
        self.turns()
        job_id = next(iter(self.engine._waiters))
        long = self.engine.wait(job_id, limit=60)
        self.turns()
        self.clock.advance(5)
        self.turns()
        self.assertFalse(self.successResultOf(short).done)
        self.assertNoResult(long)
        self.assertEqual(len(self.engine._waiters[job_id]), 1)

    def test_a_limit_passing_while_the_stop_closes_the_spool_leaves_it_the_answer(self) -> None:
        # The stop answers its waiters once the spool is closed; a limit passing meanwhile
        # must not read from the closing spool (that read would fail: a 500, not a 202).
        self.sender.auto = None
        waiting = self.request_with_limit(["aa" * 32], 30)
        self.turns()
        held: list[tuple[Any, Deferred[Any]]] = []

        def holding(fn: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((fn, d))
            return d

        self.spool._runner = holding  # what runs on the spool's thread waits for us
        self.spool.inline_sync_limit = 0  # the fsyncs too, however quick

        def release() -> None:
            fn, d = held.pop(0)
            d.callback(fn())
            self.turns()

        stopped = self.engine.stop(timeout=1)
        for _ in range(3):
            self.clock.advance(1)
        while not self.spool._closing:  # the stop's writes and reads, then the close
            release()
        self.assertTrue(held)  # the close's last batch, on the spool's thread
        self.clock.advance(30)  # the limit passes meanwhile
        self.assertNoResult(waiting)
        while held:
            release()
        self.successResultOf(stopped)
        self.assertFalse(self.successResultOf(waiting).done)
        self.assertEqual(self.limit_calls(), [])

    def test_a_wait_for_a_job_not_in_the_spool_ends_at_its_limit(self) -> None:
        waiting = self.engine.wait("0" * 32, limit=10)
        self.turns()
        self.assertNoResult(waiting)
        self.clock.advance(10)
        self.turns()
        self.assertIn("no longer in the spool", str(self.failureResultOf(waiting).value))

    def test_the_stop_answers_a_wait_for_a_job_not_in_the_spool(self) -> None:
        waiting = self.engine.wait("0" * 32)  # no limit: only the stop can end it
        self.turns()
        stopped = self.engine.stop(timeout=1)
        for _ in range(5):
            self.clock.advance(1)
        self.successResultOf(stopped)
        self.assertIn("not in the spool", str(self.failureResultOf(waiting).value))

    def test_stop_cancels_the_limits(self) -> None:
        self.sender.auto = None
        waiting = self.request_with_limit(["aa" * 32], 30)
        self.turns()
        stopped = self.engine.stop(timeout=1)
        for _ in range(5):
            self.clock.advance(1)
        self.successResultOf(stopped)
        self.assertFalse(self.successResultOf(waiting).done)
        self.assertEqual(self.limit_calls(), [])


class VolatileBatchTests(SynchronousTestCase):
    """The connection itself never fsyncs: SpoolStore.sync is the WAL's fsync, run after a
    durable batch, never after a volatile one, and never with synchronous=NORMAL."""

    def test_levels(self) -> None:
        synced: list[int] = []
        self.patch(spool_module, "_fdatasync", synced.append)
        for configured, fsyncs in (("FULL", 1), ("EXTRA", 1), ("NORMAL", 0)):
            path = temp_dir(self) / f"{configured}.db"
            store = SpoolStore(path, synchronous=configured)
            self.addCleanup(store.close)
            self.assertEqual(store._db.execute("PRAGMA synchronous").fetchone()[0], 1)
            write = [lambda s: s._db.execute("INSERT INTO meta VALUES (?, 'v')", (str(s),))]
            del synced[:]
            store.run_batch(write, volatile=True)
            self.assertEqual(synced, [])
            store.run_batch(write, volatile=False)
            self.assertEqual(len(synced), fsyncs, configured)
            if fsyncs:  # the descriptor is the WAL's
                wal = os.stat(f"{path}-wal")
                self.assertEqual(os.fstat(synced[0]).st_ino, wal.st_ino)
            # A store method called on its own is one durable transaction, as ever.
            del synced[:]
            store.add_invalid_tokens("a", [("aa" * 32, None)], now=1)
            self.assertEqual(len(synced), fsyncs)
