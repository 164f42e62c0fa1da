"""The durable spool: the synchronous store, crash recovery, and the batched async layer."""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txapns.service import spool as spool_module
from txapns.service.spool import (
    NewJob,
    Spool,
    SpoolClosedError,
    SpoolError,
    SpoolStore,
    SpoolUnavailableError,
    inline_runner,
    new_job_id,
    thread_runner,
)

from .helpers import temp_dir, token
from .helpers_service import note, outcome

REPO = Path(__file__).resolve().parent.parent


def failing_checkpoints(case: SynchronousTestCase, store: SpoolStore) -> list[bool]:
    """Make ``store``'s checkpoints fail until the returned flag is cleared."""
    real = store._db
    failing = [True]

    class Db:
        def execute(self, sql: str, *args: object) -> object:
            if sql.startswith("PRAGMA wal_checkpoint") and failing[0]:
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    store._db = Db()  # type: ignore[assignment]
    case.addCleanup(setattr, store, "_db", real)
    return failing


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = temp_dir(self) / "spool.db"
        self.store = SpoolStore(self.path)
        # A lambda, not the bound method: the crash test must be able to drop the store.
        self.addCleanup(lambda: self.store.close())

    def reopen(self) -> SpoolStore:
        self.store.close()
        self.store = SpoolStore(self.path)
        return self.store

    def test_pragmas(self) -> None:
        db = self.store._db
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        # The WAL's fsync and the checkpoints are SpoolStore.sync's, not SQLite's.
        self.assertEqual(db.execute("PRAGMA synchronous").fetchone()[0], 1)  # NORMAL
        self.assertEqual(db.execute("PRAGMA wal_autocheckpoint").fetchone()[0], 0)
        self.assertEqual(self.store._synchronous, "FULL")
        self.assertGreaterEqual(self.store._wal_fd, 0)
        normal = SpoolStore(self.path.with_name("n.db"), synchronous="NORMAL")
        self.addCleanup(normal.close)
        self.assertEqual(normal._wal_fd, -1)
        self.assertRaises(ValueError, SpoolStore, self.path.with_name("o.db"), synchronous="OFF")

    def test_add_job_and_view(self) -> None:
        n0 = note(1, priority=5, topic="com.x", push_type="alert", expiry=9, collapse_id="c")
        stored = self.store.add_job("a", [n0, note(2)], now=100.0)
        self.assertEqual(stored.ids, (1, 2))
        self.assertFalse(stored.duplicate)
        again = self.store.add_job("a", [note(3)], now=101.0)
        self.assertEqual(again.ids, (3,))
        view = self.store.job(stored.job_id)
        assert view is not None
        self.assertEqual(
            (view.app, view.status, view.total, view.created), ("a", "pending", 2, 100)
        )
        self.assertEqual(view.counts["queued"], 2)
        self.assertEqual([r.token for r in view.results], [token(1), token(2)])
        self.assertEqual([r.index for r in view.results], [0, 1])
        self.assertIsNone(self.store.job("nope"))

    def rows(self) -> list[tuple[object, ...]]:
        return self.store._db.execute(
            "SELECT id, state, status, reason, apns_id, attempts, resumed, updated"
            " FROM notifications ORDER BY id"
        ).fetchall()

    def check_statements_split_at_the_parameter_limit(self) -> None:
        # SQLite itself refuses more than 25 parameters: 2 notification rows (11 columns),
        # 2 job rows (9), 2 outcome rows (9), 12 job counts (2) or 24 ids after the one
        # leading parameter per statement; a chunk too large fails the statement.
        self.store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 25)
        self.store._max_params = 25
        jobs = [self.store.add_jobs([NewJob("a", [note(i) for i in range(7)], 1.0)])[0]]
        jobs += self.store.add_jobs([NewJob("a", [note(10 + i)], 1.0) for i in range(25)])
        ids = [i for j in jobs for i in j.ids]
        self.assertEqual(ids, list(range(1, 33)))
        self.store.mark_inflight(ids[:-1], now=2.0)  # 31 ids: two statements
        self.store.requeue(ids[:3], now=3.0)
        self.store.mark_inflight(ids[:3], now=4.0)
        records = (
            [
                outcome(k, jobs[0].job_id, k, status=200, apns_id=f"id-{k}", attempts=1)
                for k in ids[:6]
            ]
            + [
                outcome(7, jobs[0].job_id, 7, "rejected", status=400, reason="BadTopic"),
                outcome(8, jobs[1].job_id, 8, "unknown", reason="lost", may_duplicate=True),
            ]
            + [outcome(k, jobs[k - 7].job_id, k, status=200) for k in ids[8:30]]
        )
        # The first record of a row wins; a row with an outcome keeps it.
        done = self.store.record_outcomes([*records, outcome(1, jobs[0].job_id, 1)], now=5.0)
        self.assertEqual(done, [j.job_id for j in jobs[:24]])  # 24 finished jobs: 2 statements
        self.assertEqual(self.store.record_outcomes([outcome(2, jobs[0].job_id, 2)], now=6), [])
        self.assertEqual(
            self.rows(),
            [(k, "accepted", 200, None, f"id-{k}", 1, 0, 5.0) for k in ids[:6]]
            + [
                (7, "rejected", 400, "BadTopic", None, 0, 0, 5.0),
                (8, "unknown", None, "lost", None, 0, 1, 5.0),
            ]
            + [(k, "accepted", 200, None, None, 0, 0, 5.0) for k in ids[8:30]]
            + [(31, "inflight", None, None, None, 0, 0, 2.0)]
            + [(32, "queued", None, None, None, 0, 0, 1.0)],
        )
        for j in jobs[24:]:
            view = self.store.job(j.job_id)
            assert view is not None
            self.assertEqual((view.status, view.finished), ("pending", None))

    def test_statements_split_at_the_parameter_limit(self) -> None:
        self.check_statements_split_at_the_parameter_limit()

    def test_an_older_sqlite_updates_outcomes_row_by_row(self) -> None:
        # Before 3.33 there is no UPDATE … FROM: the same rows, one step per row.
        self.patch(spool_module, "_UPDATE_FROM", False)
        self.check_statements_split_at_the_parameter_limit()

    def test_outcomes_of_a_batch_are_a_few_statements(self) -> None:
        # executemany steps once per row, and UPDATE … FROM (VALUES …) costs SQLite about
        # twice a plain UPDATE per row: 1,000 alike outcomes are 2 UPDATEs of 500 ids.
        if self.store._max_params < 500 * 7:
            raise SkipTest("this SQLite allows fewer parameters")
        jobs = self.store.add_jobs([NewJob("a", [note(i) for i in range(1000)], 1.0)])
        statements: list[str] = []
        self.store._changes_at_checkpoint = self.store._db.total_changes  # no checkpoint here
        self.store._db.set_trace_callback(statements.append)
        self.store.record_outcomes([outcome(k, jobs[0].job_id, k) for k in jobs[0].ids], now=2.0)
        self.store._db.set_trace_callback(None)
        self.assertEqual(
            len([s for s in statements if s.startswith("UPDATE notifications SET state")]), 2
        )
        # BEGIN, 2 SELECTs of the open rows, 2 UPDATEs, the jobs' count, the finished
        # jobs' SELECT and UPDATE, COMMIT.
        self.assertEqual(len(statements), 9)
        self.assertEqual(self.store.counts(), {("a", "accepted"): 1000})

    def test_outcomes_are_recorded_in_id_order(self) -> None:
        # However many statements the ids take, jobs finish (and a token's last evidence
        # wins) in id order, as when one statement returned them.
        jobs = self.store.add_jobs([NewJob("a", [note(i)], 1.0) for i in range(40)])
        records = [outcome(j.ids[0], j.job_id, k) for k, j in enumerate(jobs)]
        done = self.store.record_outcomes(reversed(records), now=2.0)
        self.assertEqual(done, [j.job_id for j in jobs])

    def test_outcomes_of_their_own_are_a_step_each(self) -> None:
        # Dead tokens each bring their own timestamp: no statement of one row each.
        jobs = self.store.add_jobs([NewJob("a", [note(i) for i in range(6)], 1.0)])
        ids = jobs[0].ids
        records = [
            outcome(i, jobs[0].job_id, k, "rejected", status=410, timestamp=100.0 + k)
            for k, i in enumerate(ids[:4])
        ] + [outcome(i, jobs[0].job_id, 4 + k, attempts=1) for k, i in enumerate(ids[4:])]
        statements: list[str] = []
        self.store._db.set_trace_callback(statements.append)
        self.store.record_outcomes(records, now=2.0)
        self.store._db.set_trace_callback(None)
        updates = [s for s in statements if s.startswith("UPDATE notifications")]
        # One prepared statement stepped for each of the four, one for the two alike.
        self.assertEqual(len([s for s in updates if "WHERE id = " in s]), 4)
        self.assertEqual(len([s for s in updates if "WHERE id IN (" in s]), 1)
        self.assertEqual(
            [(r[1], r[2]) for r in self.rows()], [("rejected", 410)] * 4 + [("accepted", None)] * 2
        )

    def test_statement_shapes_are_few(self) -> None:
        # Every row count its own statement pushed statements out of the connection's cache
        # (batches vary in size): beyond a few rows, what is left under the parameter limit
        # goes 256, 128 … rows a statement.
        if self.store._max_params < 500 * 11:
            raise SkipTest("this SQLite allows fewer parameters")
        statements: list[str] = []
        self.store._db.set_trace_callback(statements.append)

        def rows_per_insert(count: int) -> list[int]:
            del statements[:]
            self.store.add_jobs([NewJob("a", [note(i) for i in range(count)], 1.0)])
            inserts = [s for s in statements if s.startswith("INSERT INTO notifications")]
            return [s.count("), (") + 1 for s in inserts]

        self.assertEqual(rows_per_insert(1), [1])
        self.assertEqual(rows_per_insert(spool_module._EXACT_ROWS), [spool_module._EXACT_ROWS])
        self.assertEqual(rows_per_insert(100), [64, 32, 4])
        self.assertEqual(rows_per_insert(1100), [500, 500, 64, 32, 4])
        shapes = {tuple(rows_per_insert(count)) for count in (*range(1, 70), 300, 499, 500, 501)}
        self.assertEqual(
            {n for shape in shapes for n in shape},
            {*range(1, spool_module._EXACT_ROWS + 1), 64, 128, 256, 500},
        )
        self.store._db.set_trace_callback(None)

    def test_the_statement_cache_holds_every_shape(self) -> None:
        seen: dict[str, Any] = {}
        real = sqlite3.connect

        def connect(*args: Any, **kw: Any) -> sqlite3.Connection:
            seen.update(kw)
            return real(*args, **kw)

        self.patch(spool_module.sqlite3, "connect", connect)
        SpoolStore(self.path.with_name("cache.db")).close()
        # The statements _rows_at_once writes, each with up to _EXACT_ROWS + 4 shapes
        # (1 … _EXACT_ROWS, 64, 128, 256, 500), and the plain ones besides.
        kinds = 10
        self.assertGreater(seen["cached_statements"], kinds * (spool_module._EXACT_ROWS + 4))

    def test_an_outcome_sets_the_apns_id_only_if_it_brings_another(self) -> None:
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(4)]
        jobs = self.store.add_jobs(
            [NewJob("a", [note(i, apns_id=ids[i]) for i in range(3)] + [note(3)], 1.0)]
        )
        job_id = jobs[0].job_id
        other = "00000000-0000-4000-8000-999999999999"
        statements: list[str] = []
        self.store._db.set_trace_callback(statements.append)
        records = [
            outcome(1, job_id, 0, apns_id=ids[0], attempts=1),  # APNs echoed ours
            outcome(2, job_id, 1, attempts=1),  # none came (binary, a local outcome)
            outcome(3, job_id, 2, apns_id=other, attempts=1),  # another one
            outcome(4, job_id, 3, apns_id=ids[3], attempts=1),  # none was stored
        ]
        self.store.record_outcomes(records, now=2.0)
        self.store._db.set_trace_callback(None)
        self.assertEqual([r[4] for r in self.rows()], [ids[0], ids[1], other, ids[3]])
        self.assertEqual({r[1] for r in self.rows()}, {"accepted"})
        self.assertEqual({r[5] for r in self.rows()}, {1})
        # The first two in one statement; the other two a step each.
        updates = [s for s in statements if s.startswith("UPDATE notifications")]
        self.assertEqual(len(updates), 3, updates)
        self.assertIn("WHERE id IN ((1), (2))", updates[0])

    def test_checkpoints_follow_the_rows_changed(self) -> None:
        # SQLite's own checkpoints are off (they would run on the committing thread, the
        # reactor's): sync() runs one once enough rows changed since the last.
        self.patch(spool_module, "_CHECKPOINT_CHANGES", 10)
        statements: list[str] = []
        self.store._db.set_trace_callback(statements.append)

        def store(n: int) -> None:
            jobs = [NewJob("a", [note(i) for i in range(n)], 1.0)]
            self.store.commit_batch([lambda s: s.add_jobs(jobs)])
            self.store.sync()

        store(4)
        self.assertNotIn("PRAGMA wal_checkpoint(PASSIVE)", statements)
        size = self.path.stat().st_size  # the rows are in the WAL only
        store(6)
        self.assertEqual(statements.count("PRAGMA wal_checkpoint(PASSIVE)"), 1)
        self.assertGreater(self.path.stat().st_size, size)  # now in the database file
        self.store.sync()  # nothing changed since
        self.assertEqual(statements.count("PRAGMA wal_checkpoint(PASSIVE)"), 1)
        self.store._db.set_trace_callback(None)

    def test_the_changes_count_wraps(self) -> None:
        # sqlite3_total_changes() is a C int: past 2**31 it wraps to -2**31, and a plain
        # difference would stay negative (no checkpoint) for 2**32 more changes.
        self.patch(spool_module, "_CHECKPOINT_CHANGES", 10)
        checkpoints: list[None] = []
        self.patch(self.store, "_checkpoint", lambda: checkpoints.append(None))
        now = self.store._db.total_changes
        self.store._changes_at_checkpoint = now + 2**32 - 5  # 5 changes ago, across a wrap
        self.store.sync()
        self.assertEqual(checkpoints, [])
        self.store._changes_at_checkpoint = now + 2**32 - 20  # 20 changes ago
        self.store.sync()
        self.assertEqual(checkpoints, [None])

    def test_a_failed_checkpoint_fails_no_batch(self) -> None:
        # The batch is durable once the WAL is synced: a checkpoint that fails after that
        # is noted, and tried again at the next sync.
        self.patch(spool_module, "_CHECKPOINT_CHANGES", 1)
        failing = failing_checkpoints(self, self.store)
        job = self.store.run_batch([lambda s: s.add_job("a", [note(1)], now=1)])[0]
        self.assertEqual(job.ids, (1,))  # type: ignore[attr-defined]
        self.assertEqual(self.store.checkpoint_error, "disk I/O error")
        self.store.run_batch([lambda s: s.add_job("a", [note(2)], now=1)])
        failing[0] = False
        self.store.run_batch([lambda s: s.add_job("a", [note(3)], now=1)])
        self.assertIsNone(self.store.checkpoint_error)
        self.assertEqual(self.store.counts(), {("a", "queued"): 3})

    def test_a_failed_fsync_breaks_the_store(self) -> None:
        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(spool_module, "_fdatasync", broken)
        with self.assertRaises(SpoolUnavailableError) as cm:
            self.store.run_batch([lambda s: s.add_job("a", [note(1)], now=1)])
        self.assertIn("Input/output error", str(cm.exception))
        self.assertIn("restarted", str(self.store.broken))
        # Unlike a failed COMMIT, the transaction stays committed (a restart recovers what
        # the disk holds); nothing more is written on top of it, not even without an fsync.
        self.assertEqual(self.store.counts(), {("a", "queued"): 1})
        for volatile in (False, True):
            with self.assertRaises(SpoolUnavailableError):
                self.store.run_batch(
                    [lambda s: s.add_job("a", [note(2)], now=1)], volatile=volatile
                )
        self.assertEqual(self.store.counts(), {("a", "queued"): 1})

    def test_job_ids_follow_creation_time(self) -> None:
        # Ordered ids keep a batch's index writes on a few pages (see new_job_id).
        ids = [self.store.add_job("a", [note(i)], now=1_700_000_000.0 + i).job_id for i in range(5)]
        many = self.store.add_jobs([NewJob("a", [note(9)], 1_700_000_010.0) for _ in range(500)])
        ids += sorted(j.job_id for j in many)
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 505)
        for job_id in ids:
            self.assertRegex(job_id, r"\A[0-9a-f]{32}\Z")
        self.assertEqual(ids[0][:12], f"{1_700_000_000_000:012x}")
        for odd in (-1.0, 1e12):  # a clock before 1970 or past year 10,000: still 32 digits
            self.assertRegex(new_job_id(odd), r"\A[0-9a-f]{32}\Z")

    def test_idempotency_key_per_app(self) -> None:
        first = self.store.add_job("a", [note(1)], now=1, idempotency_key="k", async_=True)
        dup = self.store.add_job("a", [note(2), note(3)], now=2, idempotency_key="k")
        self.assertTrue(dup.duplicate)
        self.assertEqual(dup.job_id, first.job_id)
        self.assertEqual(dup.ids, ())
        self.assertTrue(dup.async_)
        other_app = self.store.add_job("b", [note(2)], now=2, idempotency_key="k")
        self.assertFalse(other_app.duplicate)
        self.assertEqual(self.store.counts(), {("a", "queued"): 1, ("b", "queued"): 1})
        self.assertEqual(self.store.find_job("a", "k"), first.job_id)

    def test_many_jobs_finish_in_one_call(self) -> None:
        # One notification per request: a job per outcome, all finished by one call, each
        # once; a job with an outcome still to come is not finished.
        jobs = [self.store.add_job("a", [note(i)], now=1, inflight=True) for i in range(600)]
        pair = self.store.add_job("a", [note(900), note(901)], now=1, inflight=True)
        records = [outcome(j.ids[0], j.job_id, i) for i, j in enumerate(jobs)]
        records.reverse()
        records.insert(300, outcome(pair.ids[0], pair.job_id, 900))
        done = self.store.record_outcomes(records, now=7)
        self.assertEqual(len(done), 600)
        self.assertEqual(sorted(done), sorted(j.job_id for j in jobs))
        view = self.store.job(pair.job_id)
        assert view is not None
        self.assertEqual((view.status, view.finished), ("pending", None))
        for j in (jobs[0], jobs[599]):
            view = self.store.job(j.job_id)
            assert view is not None
            self.assertEqual((view.status, view.finished), ("done", 7))
        self.assertEqual(
            self.store.record_outcomes([outcome(pair.ids[1], pair.job_id, 901)], now=8),
            [pair.job_id],
        )

    def test_outcomes_finish_job_once(self) -> None:
        stored = self.store.add_job("a", [note(1), note(2)], now=1)
        a, b = stored.ids
        self.store.mark_inflight([a, b], now=2)
        self.assertEqual(self.store.record_outcomes([outcome(a, stored.job_id, 1)], now=3), [])
        done = self.store.record_outcomes(
            [outcome(b, stored.job_id, 2, "rejected", status=400, reason="BadTopic", attempts=1)],
            now=4,
        )
        self.assertEqual(done, [stored.job_id])
        # Recording again changes nothing and finishes nothing.
        self.assertEqual(
            self.store.record_outcomes([outcome(b, stored.job_id, 2, "unknown")], now=5), []
        )
        view = self.store.job(stored.job_id)
        assert view is not None
        self.assertEqual(view.status, "done")
        self.assertEqual(view.finished, 4)
        self.assertEqual(view.results[1].state, "rejected")
        self.assertEqual(view.results[1].reason, "BadTopic")
        self.assertEqual(view.counts["accepted"], 1)
        self.assertRaises(
            ValueError, self.store.record_outcomes, [outcome(a, stored.job_id, 1, "queued")], now=6
        )

    def test_invalid_tokens_feed(self) -> None:
        stored = self.store.add_job("a", [note(1), note(2)], now=1)
        a, b = stored.ids
        self.store.record_outcomes(
            [
                outcome(
                    a,
                    stored.job_id,
                    1,
                    "rejected",
                    status=410,
                    reason="Unregistered",
                    timestamp=1_700_000_000.0,
                    token_invalid=True,
                ),
                outcome(b, stored.job_id, 2, "rejected", status=400, reason="BadTopic"),
            ],
            now=10,
        )
        self.store.add_invalid_tokens("a", [(token(7).upper(), 1_600_000_000.0)], now=20)
        self.store.add_invalid_tokens("b", [(token(8), None)], now=20)
        tokens = self.store.invalid_tokens("a")
        self.assertEqual([t.token for t in tokens], [token(1), token(7)])
        self.assertEqual(tokens[0].timestamp, 1_700_000_000.0)
        self.assertEqual(
            (tokens[0].status, tokens[0].reason, tokens[0].source), (410, "Unregistered", "apns")
        )
        self.assertEqual(tokens[1].source, "feedback")
        self.assertEqual([t.token for t in self.store.invalid_tokens("a", since=15)], [token(7)])
        self.assertEqual(self.store.invalid_tokens("a", since=21), [])
        # A later report of the same token replaces the earlier one.
        self.store.add_invalid_tokens("a", [(token(1), 1_800_000_000.0)], now=30)
        latest = self.store.invalid_tokens("a", since=25)
        self.assertEqual([(t.token, t.timestamp) for t in latest], [(token(1), 1_800_000_000.0)])
        # Twice in one call (one statement): the later report wins, as one by one.
        self.store.add_invalid_tokens(
            "a", [(token(3), 1.0), (token(4), 2.0), (token(3), 3.0)], now=40
        )
        latest = self.store.invalid_tokens("a", since=35)
        self.assertEqual(
            [(t.token, t.timestamp) for t in latest], [(token(3), 3.0), (token(4), 2.0)]
        )

    def test_invalid_tokens_since_is_exclusive_and_pages_end_between_times(self) -> None:
        self.store.add_invalid_tokens("a", [(token(i), None) for i in (1, 2)], now=10)
        self.store.add_invalid_tokens("a", [(token(i), None) for i in (3, 4, 5)], now=20)
        self.store.add_invalid_tokens("a", [(token(6), None)], now=30)
        self.assertEqual([t.token for t in self.store.invalid_tokens("a", since=10)],
                         [token(3), token(4), token(5), token(6)])  # fmt: skip
        # A page of 3 would end inside the tokens reported at 20: it takes all of them, so
        # polling on from the last reported_at neither repeats nor skips a token.
        seen: list[str] = []
        since = None
        for _ in range(5):
            page = self.store.invalid_tokens("a", since=since, limit=3)
            if not page:
                break
            seen += [t.token for t in page]
            since = page[-1].reported_at
        self.assertEqual(seen, [token(i) for i in range(1, 7)])
        first = self.store.invalid_tokens("a", limit=3)
        self.assertEqual([t.reported_at for t in first], [10, 10, 20, 20, 20])

    def test_recover_returns_unfinished_and_counts_inflight(self) -> None:
        n = note(
            1,
            priority=5,
            topic="com.x.voip",
            push_type="voip",
            expiry=7,
            collapse_id="c",
            apns_id="123e4567-e89b-12d3-a456-426614174000",
        )
        stored = self.store.add_job("a", [n, note(2), note(3)], now=1, send_at=50.0)
        a, b, c = stored.ids
        self.store.mark_inflight([a, b], now=2)
        self.store.record_outcomes([outcome(b, stored.job_id, 2)], now=3)
        store = self.reopen()
        rec = store.recover(now=4)
        self.assertEqual([s.id for s in rec.notifications], [a, c])
        self.assertEqual(rec.resumed_inflight, 1)
        self.assertEqual(rec.resumed_by_app, {"a": 1})
        first = rec.notifications[0]
        self.assertEqual(first.notification, n)
        self.assertEqual(first.resumed, 1)
        self.assertEqual(first.send_at, 50.0)
        self.assertEqual(rec.notifications[1].resumed, 0)
        # The resumed row is queued again and its count persists.
        again = store.recover(now=5)
        self.assertEqual(again.resumed_inflight, 0)
        self.assertEqual(again.notifications[0].resumed, 1)
        view = store.job(stored.job_id)
        assert view is not None
        self.assertEqual(view.results[0].resumed, 1)

    def test_requeue(self) -> None:
        stored = self.store.add_job("a", [note(1)], now=1)
        self.store.mark_inflight(stored.ids, now=2)
        self.store.requeue(stored.ids, now=3)
        rec = self.reopen().recover(now=4)
        self.assertEqual(rec.resumed_inflight, 0)

    def test_purge(self) -> None:
        old = self.store.add_job("a", [note(1)], now=1, idempotency_key="k")
        pending = self.store.add_job("a", [note(2)], now=1)
        new = self.store.add_job("a", [note(3)], now=1)
        self.store.record_outcomes([outcome(old.ids[0], old.job_id, 1)], now=10)
        self.store.record_outcomes([outcome(new.ids[0], new.job_id, 3)], now=100)
        self.store.add_invalid_tokens("a", [(token(5), None)], now=10)
        self.assertEqual(self.store.purge(before=50), 1)
        self.assertIsNone(self.store.job(old.job_id))
        self.assertIsNotNone(self.store.job(pending.job_id))
        self.assertIsNotNone(self.store.job(new.job_id))
        self.assertEqual(self.store.invalid_tokens("a"), [])
        # The purged job's idempotency key is forgotten with it.
        self.assertFalse(self.store.add_job("a", [note(1)], now=200, idempotency_key="k").duplicate)

    def test_ids_continue_after_reopen(self) -> None:
        self.store.add_job("a", [note(1), note(2)], now=1)
        self.assertEqual(self.reopen().add_job("a", [note(3)], now=2).ids, (3,))

    def test_run_batch_isolates_failing_operation(self) -> None:
        def boom(store: SpoolStore) -> None:
            store.add_job("a", [note(9)], now=1)
            raise RuntimeError("boom")

        values = self.store.run_batch(
            [lambda s: s.add_job("a", [note(1)], now=1).job_id, boom, lambda s: 42]
        )
        self.assertIsInstance(values[0], str)
        self.assertEqual(values[2], 42)
        self.assertEqual(type(values[1]).__name__, "_Failed")
        self.assertEqual(self.store.counts(), {("a", "queued"): 1})

    def test_second_open_refused(self) -> None:
        with self.assertRaises(SpoolError) as cm:
            SpoolStore(self.path)
        self.assertIn("in use", str(cm.exception))

    def test_crash_by_dropping_the_object(self) -> None:
        stored = self.store.add_job("a", [note(1), note(2)], now=1)
        self.store.mark_inflight(stored.ids[:1], now=2)
        del self.store
        gc.collect()
        self.store = SpoolStore(self.path)
        rec = self.store.recover(now=3)
        self.assertEqual([s.id for s in rec.notifications], list(stored.ids))
        self.assertEqual(rec.resumed_inflight, 1)

    def test_crash_by_sigkill(self) -> None:
        """A process is killed right after committing: a new one finds everything."""
        self.store.close()
        crash = self.path.with_name("crash.db")
        script = textwrap.dedent(
            f"""
            import os, signal
            from txapns.core import Notification
            from txapns.service.spool import SpoolStore
            s = SpoolStore({str(crash)!r})
            alert = {{"aps": {{"alert": "x"}}}}
            ns = [Notification.create(f"{{i:064x}}", alert) for i in range(500)]
            job = s.add_job("a", ns, now=1.0, idempotency_key="k")
            s.mark_inflight(job.ids[:100], now=2.0)
            print(job.job_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False
        )
        self.assertEqual(proc.returncode, -signal.SIGKILL, proc.stderr)
        job_id = proc.stdout.strip()
        self.store = SpoolStore(crash)
        rec = self.store.recover(now=3)
        self.assertEqual(len(rec.notifications), 500)
        self.assertEqual(rec.resumed_inflight, 100)
        self.assertEqual(self.store.find_job("a", "k"), job_id)
        self.assertTrue(os.path.exists(crash))


class AsyncSpoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        path = temp_dir(self) / "spool.db"
        self.store = SpoolStore(path)
        self.addCleanup(self.store.close)
        self.runs = 0

        def counting_runner(fn):  # type: ignore[no-untyped-def]
            self.runs += 1
            return inline_runner(fn)

        self.spool = Spool(self.store, self.clock, counting_runner)
        # Every fsync on the runner, however quick (InlineSyncTests: on the reactor's thread).
        self.spool.inline_sync_limit = 0

    def test_calls_in_one_turn_share_one_transaction(self) -> None:
        ds = [self.spool.add_job("a", [note(i)], now=1, async_=True) for i in range(20)]
        fired: list[object] = []
        for d in ds:
            d.addCallback(fired.append)
        self.assertEqual(fired, [])  # nothing committed yet
        self.assertEqual(self.store.counts(), {})
        self.clock.advance(0)
        self.assertEqual(len(fired), 20)
        self.assertEqual(self.runs, 1)  # one fsync
        self.assertEqual((self.spool.batches, self.spool.operations), (1, 20))
        self.assertEqual(self.store.counts(), {("a", "queued"): 20})

    def test_calls_from_callbacks_form_the_next_batch(self) -> None:
        seen: list[object] = []

        def then(stored: object) -> None:
            self.spool.job(stored.job_id).addCallback(seen.append)  # type: ignore[attr-defined]

        self.spool.add_job("a", [note(1)], now=1, async_=True).addCallback(then)
        self.clock.advance(0)
        self.assertEqual(self.spool.batches, 2)
        self.assertEqual(self.runs, 1)  # a read needs no fsync
        self.assertEqual(len(seen), 1)

    def test_answered_only_after_the_fsync(self) -> None:
        # The statements run at once, on the calling (reactor) thread; the Deferreds wait
        # for the runner's fsync, and the next batch waits for them.
        syncs: list[Deferred[None]] = []

        def held(fn):  # type: ignore[no-untyped-def]
            self.assertEqual(fn, self.store.sync)
            d: Deferred[None] = Deferred()
            syncs.append(d)
            return d.addCallback(lambda _: fn())

        self.spool._runner = held
        first = self.spool.add_job("a", [note(1)], now=1, async_=True)
        self.clock.advance(0)
        self.assertEqual(self.store.counts(), {("a", "queued"): 1})  # committed
        self.assertNoResult(first)
        second = self.spool.add_job("a", [note(2)], now=1, async_=True)
        self.clock.advance(0)
        self.assertEqual(self.store.counts(), {("a", "queued"): 1})  # not yet begun
        syncs[0].callback(None)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.clock.advance(0)
        syncs[1].callback(None)
        self.successResultOf(second)
        self.assertEqual(self.store.counts(), {("a", "queued"): 2})

    def test_a_failed_fsync_errbacks_the_batch_and_refuses_work(self) -> None:
        def broken(fd: int) -> None:
            raise OSError(28, "No space left on device")

        self.patch(spool_module, "_fdatasync", broken)
        logged: list[dict[str, object]] = []
        self.patch(spool_module.log, "observer", logged.append)
        d = self.spool.add_job("a", [note(1)], now=1, async_=True)
        self.clock.advance(0)
        self.failureResultOf(d, SpoolUnavailableError)
        self.assertFalse(self.spool.available)
        self.assertIn("No space left on device", str(self.spool.health()["error"]))
        self.assertEqual(logged[0]["log_format"], "spool: {why}")
        self.assertIn("restarted", str(logged[0]["why"]))
        again = self.spool.job("x")
        outcomes = self.spool.record_outcomes([outcome(1, "j", 1)], now=2)
        self.clock.advance(0)
        self.failureResultOf(again, SpoolUnavailableError)
        # Not tried again later (as for a full disk): a broken store stays broken.
        self.failureResultOf(outcomes, SpoolUnavailableError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Closing still closes the store, and says why the last batch failed.
        closed = self.spool.close()
        self.clock.advance(0)
        self.failureResultOf(closed, SpoolUnavailableError)
        self.assertTrue(self.store.closed)

    def test_checkpoint_failures_are_logged_once(self) -> None:
        self.patch(spool_module, "_CHECKPOINT_CHANGES", 1)
        failing = failing_checkpoints(self, self.store)
        logged: list[dict[str, object]] = []
        self.patch(spool_module.log, "observer", logged.append)
        for i in range(3):
            d = self.spool.add_job("a", [note(i)], now=1, async_=True)
            self.clock.advance(0)
            self.successResultOf(d)
            if i == 1:
                failing[0] = False
        self.assertEqual(
            [e["log_format"] for e in logged],
            [
                "spool: cannot checkpoint the WAL ({why}); trying again",
                "spool: the WAL is checkpointed again",
            ],
        )

    def test_long_operations_run_on_the_runner(self) -> None:
        ran: list[object] = []

        def recording(fn):  # type: ignore[no-untyped-def]
            ran.append(fn)
            return inline_runner(fn)

        self.spool._runner = recording
        self.spool.add_job("a", [note(1)], now=1, async_=True)
        self.clock.advance(0)
        self.assertEqual(ran, [self.store.sync])
        del ran[:]
        self.spool.add_job("a", [note(2)], now=1, async_=True)  # joins the purge's batch
        purged = self.spool.purge(before=0)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(purged), 0)
        self.assertEqual(len(ran), 1)
        self.assertNotEqual(ran, [self.store.sync])  # the whole batch, fsync included
        self.assertEqual(self.store.counts(), {("a", "queued"): 2})
        del ran[:]
        feed = self.spool.invalid_tokens("a")  # the feed may be long
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(feed), [])
        self.assertEqual(len(ran), 1)

    def test_failed_operation_errbacks_alone(self) -> None:
        good = self.spool.add_job("a", [note(1)], now=1)
        bad = self.spool.record_outcomes([outcome(1, "j", 1, "inflight")], now=2)
        errors: list[Failure] = []
        bad.addErrback(errors.append)
        self.clock.advance(0)
        self.assertEqual(len(errors), 1)
        errors[0].trap(ValueError)
        self.assertIsNotNone(self.successResultOf(good))

    def test_whole_batch_failure_errbacks_everyone(self) -> None:
        self.store.close()
        d1 = self.spool.add_job("a", [note(1)], now=1)
        d2 = self.spool.job("x")
        self.clock.advance(0)
        self.failureResultOf(d1)
        self.failureResultOf(d2)
        self.flushLoggedErrors()

    def test_close_writes_queued_then_refuses(self) -> None:
        d = self.spool.add_job("a", [note(1)], now=1)
        closed = self.spool.close()
        self.assertNoResult(closed)
        self.clock.advance(0)
        self.successResultOf(d)
        self.successResultOf(closed)
        self.assertTrue(self.store.closed)
        self.failureResultOf(self.spool.job("x"), SpoolClosedError)
        self.failureResultOf(self.spool.close(), SpoolClosedError)


class FsyncTimer:
    """A SpoolStore timer under which each fsync of the WAL takes the next of ``durations``
    seconds (``quick`` once they run out)."""

    def __init__(self, *durations: float, quick: float = 0.0002) -> None:
        self.durations = list(durations)
        self.quick = quick
        self.now = 0.0
        self.started = False

    def __call__(self) -> float:
        if self.started:
            self.now += self.durations.pop(0) if self.durations else self.quick
        self.started = not self.started
        return self.now


class InlineSyncTests(SynchronousTestCase):
    """A batch's fsync runs on the reactor's thread while the fsyncs there take at most
    ``Spool.inline_sync_limit``; for a second after a slower one there (10 s after a stall),
    and when a checkpoint is due (milliseconds), on the runner's."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.syncs = 0
        real = spool_module._fdatasync

        def counting(fd: int) -> None:
            self.syncs += 1
            real(fd)

        self.patch(spool_module, "_fdatasync", counting)
        self.runs: list[object] = []

        def recording(fn):  # type: ignore[no-untyped-def]
            self.runs.append(fn)
            return inline_runner(fn)

        self.runner = recording

    def spool(self, timer: FsyncTimer) -> Spool:
        store = SpoolStore(temp_dir(self) / "spool.db", timer=timer)
        self.addCleanup(store.close)
        spool = Spool(store, self.clock, self.runner)
        spool.inline_sync_limit, spool.inline_sync_stall = 0.001, 0.02  # not the defaults
        return spool

    def batch(self, spool: Spool, i: int) -> Deferred[Any]:
        d = spool.add_job("a", [note(i)], now=1, async_=True)
        self.clock.advance(0)
        return d

    def where(self, spool: Spool, batches: int) -> list[str]:
        """Where each of ``batches`` durable batches synced: "runner" or "here"."""
        out = []
        for i in range(batches):
            runs, syncs = len(self.runs), self.syncs
            self.successResultOf(self.batch(spool, i))
            self.assertEqual(self.syncs, syncs + 1)  # synced, once, either way
            out.append("runner" if len(self.runs) > runs else "here")
        return out

    def test_quick_fsyncs_run_here(self) -> None:
        spool = self.spool(FsyncTimer())
        self.assertEqual(self.where(spool, 3), ["here"] * 3)
        self.assertEqual(self.runs, [])

    def test_after_a_slow_fsync_here_they_go_to_the_runner_for_a_second(self) -> None:
        # 5 ms here: the next ones (quick or not: times taken there do not count) go to the
        # runner for inline_sync_retry (1 s), then one is tried here again; 0.9 ms stays.
        spool = self.spool(FsyncTimer(0.005, 0.005, 0.0002, 0.0002, 0.0009, 0.0011))
        self.assertEqual(self.where(spool, 3), ["here", "runner", "runner"])
        self.clock.advance(0.9)
        self.assertEqual(self.where(spool, 1), ["runner"])
        self.clock.advance(0.1)
        self.assertEqual(self.where(spool, 3), ["here", "here", "runner"])

    def test_after_a_stall_here_they_stay_on_the_runner_for_10_s(self) -> None:
        spool = self.spool(FsyncTimer(0.02))
        self.assertEqual(self.where(spool, 2), ["here", "runner"])
        self.clock.advance(9.9)
        self.assertEqual(self.where(spool, 1), ["runner"])
        self.clock.advance(0.1)
        self.assertEqual(self.where(spool, 2), ["here", "here"])

    def test_a_due_checkpoint_goes_to_the_runner_with_its_fsync(self) -> None:
        # However long that fsync takes there: times taken on the runner do not count.
        timer = FsyncTimer()
        spool = self.spool(timer)
        self.where(spool, 1)
        changes = spool_module._CHECKPOINT_CHANGES
        self.patch(spool_module, "_CHECKPOINT_CHANGES", 1)
        timer.durations = [0.05, 0.05]
        self.assertEqual(self.where(spool, 2), ["runner", "runner"])
        self.assertFalse(spool.store.checkpoint_due)  # each was checkpointed
        self.patch(spool_module, "_CHECKPOINT_CHANGES", changes)
        self.assertEqual(self.where(spool, 1), ["here"])

    def test_a_long_batch_does_not_judge(self) -> None:
        # Its fsync runs on the runner with the whole batch (a purge: 50 ms there).
        spool = self.spool(FsyncTimer(0.0002, 0.05))
        self.assertEqual(self.where(spool, 1), ["here"])
        purged = spool.purge(before=0)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(purged), 0)
        self.assertEqual(len(self.runs), 1)  # the purge, on the runner
        self.assertEqual(self.where(spool, 1), ["here"])

    def test_a_store_without_fsyncs_needs_no_runner(self) -> None:
        store = SpoolStore(temp_dir(self) / "spool.db", synchronous="NORMAL")
        self.addCleanup(store.close)
        spool = Spool(store, self.clock, self.runner)
        for i in range(3):
            self.successResultOf(self.batch(spool, i))
        self.assertEqual((self.syncs, self.runs), (0, []))

    def test_a_limit_of_0_keeps_every_fsync_on_the_runner(self) -> None:
        spool = self.spool(FsyncTimer())
        spool.inline_sync_limit = 0
        self.assertEqual(self.where(spool, 3), ["runner"] * 3)

    def test_a_read_after_a_quick_fsync_needs_none(self) -> None:
        spool = self.spool(FsyncTimer())
        stored = self.successResultOf(self.batch(spool, 1))
        view = spool.job(stored.job_id)
        self.clock.advance(0)
        self.assertIsNotNone(self.successResultOf(view))
        self.assertEqual((self.syncs, self.runs), (1, []))

    def test_a_failed_fsync_here_fails_its_batch_and_breaks_the_store(self) -> None:
        spool = self.spool(FsyncTimer())

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(spool_module, "_fdatasync", broken)
        self.patch(spool_module.log, "observer", lambda event: None)
        d = self.batch(spool, 2)
        self.failureResultOf(d, SpoolUnavailableError)
        self.assertEqual(self.runs, [])  # it ran here
        self.assertIn("Input/output error", str(spool.store.broken))
        self.assertFalse(spool.available)
        self.failureResultOf(self.batch(spool, 3), SpoolUnavailableError)


class ThreadRunnerTests(TestCase):
    """The production runner: the work runs in the pool, the Deferred fires in the reactor."""

    def test_thread_runner(self) -> Deferred[None]:
        import threading

        from twisted.internet import reactor

        pool = ThreadPool(minthreads=1, maxthreads=1)
        pool.start()
        self.addCleanup(pool.stop)
        path = temp_dir(self) / "spool.db"
        store = SpoolStore(path)
        self.addCleanup(store.close)
        spool = Spool(store, reactor, thread_runner(reactor, pool))  # type: ignore[arg-type]
        main = threading.get_ident()
        threads: list[int] = []

        def where(s: SpoolStore) -> int:
            threads.append(threading.get_ident())
            return s.add_job("a", [note(1)], now=1).ids[0]

        sync_wal = store.sync_wal

        def syncing() -> None:
            threads.append(threading.get_ident())
            sync_wal()

        store.sync_wal = syncing  # type: ignore[method-assign]
        # A long operation's batch runs (and syncs) in the pool; another batch's statements
        # run here, and its fsync in the pool, unless the fsyncs are quick (then here).
        spool.inline_sync_limit = 0
        d = spool._call(where, long=True)

        def check(first_id: int) -> Deferred[int]:
            self.assertEqual(first_id, 1)
            self.assertEqual(len(threads), 2)
            self.assertNotEqual(threads[0], main)
            self.assertEqual(threads[1], threads[0])
            del threads[:]
            return spool._call(where)

        def check_again(second_id: int) -> Deferred[int]:
            self.assertEqual(second_id, 2)
            self.assertEqual(threads[0], main)
            self.assertNotEqual(threads[1], main)
            del threads[:]
            spool.inline_sync_limit = 60.0  # any fsync is quick enough: synced here
            return spool._call(where)

        def check_inline(third_id: int) -> None:
            self.assertEqual(third_id, 3)
            self.assertEqual(threads, [main, main])

        return d.addCallback(check).addCallback(check_again).addCallback(check_inline)


class SpoolFileTests(SynchronousTestCase):
    def test_spool_files_are_private_to_their_owner(self) -> None:
        # Issue 9, item 14: the spool holds device tokens; under a usual umask of 022 its
        # files were created 0644, readable by every local user.
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        path = temp_dir(self) / "spool.db"
        store = SpoolStore(path)
        self.addCleanup(store.close)
        store.add_job("a", [note(1)], now=1)
        files = sorted(p.name for p in path.parent.iterdir())
        self.assertIn("spool.db-wal", files)
        for p in path.parent.iterdir():
            self.assertEqual(p.stat().st_mode & 0o777, 0o600, p.name)

    def test_unopenable_spool_is_one_spool_error(self) -> None:
        missing_dir = temp_dir(self) / "no" / "such" / "dir" / "spool.db"
        with self.assertRaises(SpoolError) as cm:
            SpoolStore(missing_dir)
        self.assertIn("cannot open spool", str(cm.exception))


class FingerprintTests(SynchronousTestCase):
    def test_reused_key_with_another_fingerprint_is_refused(self) -> None:
        from txapns.service.spool import IdempotencyKeyReusedError

        store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(store.close)
        first = store.add_job("a", [note(1)], now=1, idempotency_key="k", fingerprint="f1")
        same = store.add_job("a", [note(1)], now=2, idempotency_key="k", fingerprint="f1")
        self.assertEqual((same.duplicate, same.job_id), (True, first.job_id))
        with self.assertRaises(IdempotencyKeyReusedError) as cm:
            store.add_job("a", [note(2)], now=3, idempotency_key="k", fingerprint="f2")
        self.assertEqual(cm.exception.job_id, first.job_id)
        # Without a fingerprint on either side, a repeat is a plain repeat (library callers).
        self.assertTrue(store.add_job("a", [note(2)], now=4, idempotency_key="k").duplicate)
        self.assertEqual(store.counts(), {("a", "queued"): 1})

    def test_spool_without_the_fingerprint_column_is_upgraded(self) -> None:
        import sqlite3

        path = temp_dir(self) / "spool.db"
        SpoolStore(path).close()
        db = sqlite3.connect(path)
        db.execute("ALTER TABLE jobs DROP COLUMN fingerprint")
        db.commit()
        db.close()
        store = SpoolStore(path)
        self.addCleanup(store.close)
        store.add_job("a", [note(1)], now=1, idempotency_key="k", fingerprint="f")


class JobGroupTests(SynchronousTestCase):
    """Jobs without a key stored in one turn are one operation (SpoolStore.add_jobs: two
    statements for all), each still answered with its own StoredJob; keyed jobs keep their
    own savepoint, so a reused key fails alone."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(self.store.close)
        self.spool = Spool(self.store, self.clock, inline_runner)
        self.statements: list[str] = []
        self.store._db.set_trace_callback(self.statements.append)

    def test_one_operation_for_the_unkeyed(self) -> None:
        first = self.spool.add_job("a", [note(0)], now=1, idempotency_key="k")
        self.clock.advance(0)
        self.successResultOf(first)
        del self.statements[:]
        unkeyed = [self.spool.add_job("a", [note(i), note(i + 100)], now=2) for i in range(1, 6)]
        keyed = self.spool.add_job("a", [note(50)], now=2, idempotency_key="k2")
        reused = self.spool.add_job(
            "a", [note(51)], now=2, idempotency_key="k", fingerprint="other"
        )
        self.clock.advance(0)
        jobs = [self.successResultOf(d) for d in unkeyed]
        self.assertEqual(len({j.job_id for j in jobs}), 5)
        self.assertEqual([len(j.ids) for j in jobs], [2] * 5)
        ids = [i for j in jobs for i in j.ids]
        self.assertEqual(len(set(ids)), 10)
        self.assertFalse(self.successResultOf(keyed).duplicate)
        self.successResultOf(reused)  # no fingerprint on the first: answered with it
        for j in jobs:
            view = self.store.job(j.job_id)
            assert view is not None
            self.assertEqual([r.index for r in view.results], [0, 1])
        inserts = [s for s in self.statements if s.startswith("INSERT INTO jobs")]
        # One multi-row statement for the five unkeyed jobs, one for the keyed job.
        self.assertEqual(len(inserts), 2)
        savepoints = [s for s in self.statements if s.startswith("SAVEPOINT")]
        self.assertEqual(len(savepoints), 3)  # the group, the keyed job, the reused key


def db_columns(store: SpoolStore, table: str) -> list[tuple[object, ...]]:
    """``PRAGMA table_xinfo``: (cid, name, type, notnull, default, pk, hidden) per column."""
    return store._db.execute(f"PRAGMA table_xinfo({table})").fetchall()


#: A spool's tables as txapns wrote them at schema 2 (before the jobs table became its key).
SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, app TEXT NOT NULL, created REAL NOT NULL, idempotency_key TEXT,
    fingerprint TEXT, async INTEGER NOT NULL, total INTEGER NOT NULL,
    remaining INTEGER NOT NULL, status TEXT NOT NULL, finished REAL,
    UNIQUE (app, idempotency_key)
);
CREATE INDEX jobs_done ON jobs (finished) WHERE status = 'done';
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, idx INTEGER NOT NULL, app TEXT NOT NULL,
    token TEXT NOT NULL, payload BLOB NOT NULL, fields TEXT NOT NULL, send_at REAL,
    state TEXT NOT NULL, status INTEGER, reason TEXT, apns_id TEXT, timestamp REAL,
    attempts INTEGER NOT NULL DEFAULT 0, resumed INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE INDEX notifications_job ON notifications (job_id);
CREATE INDEX notifications_open ON notifications (state) WHERE state IN ('queued', 'inflight');
CREATE TABLE invalid_tokens (
    app TEXT NOT NULL, token TEXT NOT NULL, timestamp REAL, reason TEXT, status INTEGER,
    source TEXT NOT NULL, reported_at REAL NOT NULL, kind TEXT, PRIMARY KEY (app, token)
);
CREATE INDEX invalid_tokens_reported ON invalid_tokens (app, reported_at);
INSERT INTO meta VALUES ('schema', '2');
"""


class SchemaThreeTests(SynchronousTestCase):
    """Schema 3: the jobs table is its key, and a job's notifications are found by their
    consecutive ids, not by an index of their job's id."""

    def schema_2_spool(
        self,
        rows: list[tuple[str, int, str]],
        jobs: tuple[tuple[object, ...], ...] = (
            ("done", "k", "f1", 2, 0, "done", 10.0),
            ("open", None, None, 1, 1, "pending", None),
            ("empty", None, None, 0, 0, "done", 10.0),
        ),
        schema_1: bool = False,
    ) -> Path:
        """A schema-2 spool with jobs ``done`` (finished at 10, key ``k``, fingerprint
        ``f1``), ``open`` (one queued notification) and ``empty`` (none), or ``jobs``
        ``(id, key, fingerprint, total, remaining, status, finished)``, and notifications
        ``(job, id, state)``. ``schema_1``: as schema 1 left it, made before fingerprints."""
        path = temp_dir(self) / "spool.db"
        db = sqlite3.connect(path)
        db.executescript(SCHEMA_2)
        db.executemany("INSERT INTO jobs VALUES (?, 'a', 1.0, ?, ?, 1, ?, ?, ?, ?)", jobs)
        if schema_1:
            db.execute("ALTER TABLE jobs DROP COLUMN fingerprint")
            db.execute("ALTER TABLE invalid_tokens DROP COLUMN kind")
            db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
        for job_id, ident, state in rows:
            n = note(ident)
            db.execute(
                "INSERT INTO notifications (id, job_id, idx, app, token, payload, fields,"
                " state, updated) VALUES (?, ?, 0, 'a', ?, ?, ?, ?, 1.0)",
                (ident, job_id, n.token_hex, n.payload, spool_module.encode_fields(n), state),
            )
        db.commit()
        db.close()
        return path

    def test_a_schema_2_spool_is_brought_to_schema_3(self) -> None:
        path = self.schema_2_spool(
            [("done", 1, "accepted"), ("done", 2, "accepted"), ("open", 3, "queued")]
        )
        store = SpoolStore(path)
        self.addCleanup(store.close)
        db = store._db
        self.assertEqual(
            db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone(), ("3",)
        )
        self.assertIn(
            "WITHOUT ROWID",
            db.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()[0],
        )
        indexes = {
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name IN ('jobs', 'notifications')"
            )
        }
        self.assertEqual(indexes, {"jobs_key", "jobs_done", "notifications_open"})
        # Each job's notifications, found by their ids; the key still finds its job.
        done = store.job("done")
        assert done is not None
        self.assertEqual([r.id for r in done.results], [1, 2])
        self.assertEqual(store.find_job("a", "k"), "done")
        empty = store.job("empty")
        assert empty is not None
        self.assertEqual(empty.results, ())
        self.assertEqual([s.id for s in store.recover(now=20).notifications], [3])
        # A new job after them, and the purge of the finished ones.
        new = store.add_job("a", [note(4), note(5)], now=20)
        self.assertEqual(new.ids, (4, 5))
        self.assertEqual(store.purge(before=15), 2)
        self.assertIsNone(store.job("done"))
        self.assertIsNone(store.find_job("a", "k"))
        self.assertEqual(store.counts(), {("a", "queued"): 3})
        view = store.job(new.job_id)
        assert view is not None
        self.assertEqual([r.id for r in view.results], [4, 5])

    def test_a_spool_whose_job_ids_are_not_consecutive_is_refused_as_it_is(self) -> None:
        path = self.schema_2_spool(
            [("done", 1, "accepted"), ("open", 2, "queued"), ("done", 3, "accepted")]
        )
        self.assert_refused(path, "done")

    def test_a_job_without_all_its_rows_is_refused(self) -> None:
        # Their ranges would take in the next job's rows: shown, and purged, with them.
        # "done" counts 2 and has none; "a3" counts 3 and lacks its first.
        self.assert_refused(self.schema_2_spool([("open", 1, "queued")]), "done")
        jobs = (("a3", None, None, 3, 0, "done", 10.0), ("b", None, None, 1, 1, "pending", None))
        rows = [("a3", 2, "accepted"), ("a3", 3, "accepted"), ("b", 4, "queued")]
        self.assert_refused(self.schema_2_spool(rows, jobs), "a3")

    def assert_refused(self, path: Path, job_id: str) -> None:
        with self.assertRaises(SpoolError) as cm:
            SpoolStore(path)
        self.assertIn(
            f"job {job_id}'s notifications are not its total of consecutive ids",
            str(cm.exception),
        )
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        self.assertEqual(
            db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone(), ("2",)
        )
        self.assertIsNotNone(
            db.execute("SELECT 1 FROM sqlite_master WHERE name = 'notifications_job'").fetchone()
        )

    def test_keys_and_fingerprints_outlive_the_migration(self) -> None:
        from txapns.service.spool import IdempotencyKeyReusedError

        rows = [("done", 1, "accepted"), ("done", 2, "accepted"), ("open", 3, "queued")]
        store = SpoolStore(self.schema_2_spool(rows))
        self.addCleanup(store.close)
        again = store.add_job("a", [note(1)], now=20, idempotency_key="k", fingerprint="f1")
        self.assertEqual((again.duplicate, again.job_id), (True, "done"))
        with self.assertRaises(IdempotencyKeyReusedError):
            store.add_job("a", [note(1)], now=20, idempotency_key="k", fingerprint="f2")
        # The keys' index holds keyed jobs only, and still refuses a second (app, key).
        with self.assertRaises(sqlite3.IntegrityError):
            store._db.execute(
                "INSERT INTO jobs (id, app, created, idempotency_key, async, total, remaining,"
                " status, first_id) VALUES ('x', 'a', 1.0, 'k', 1, 0, 0, 'done', 9)"
            )

    def test_a_schema_1_spool_goes_through_schema_2_to_3(self) -> None:
        rows = [("done", 1, "accepted"), ("done", 2, "accepted"), ("open", 3, "queued")]
        store = SpoolStore(self.schema_2_spool(rows, schema_1=True))
        self.addCleanup(store.close)
        db = store._db
        self.assertEqual(
            db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone(), ("3",)
        )
        view = store.job("done")
        assert view is not None
        self.assertEqual([r.id for r in view.results], [1, 2])
        # Made before fingerprints: a repeat of its key is a repeat, whatever its body.
        again = store.add_job("a", [note(9)], now=20, idempotency_key="k", fingerprint="f9")
        self.assertEqual((again.duplicate, again.job_id), (True, "done"))

    def test_a_migrated_spool_has_the_tables_and_indexes_of_a_new_one(self) -> None:
        def shape(store: SpoolStore) -> list[object]:
            db = store._db
            out: list[object] = []
            for table in ("jobs", "notifications"):
                out.append(db_columns(store, table))
                # (name, unique, origin, partial) of each index.
                out.append(sorted(r[1:] for r in db.execute(f"PRAGMA index_list({table})")))
            return out

        migrated = SpoolStore(self.schema_2_spool([], jobs=()))
        self.addCleanup(migrated.close)
        new = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(new.close)
        self.assertEqual(shape(migrated), shape(new))
        # The "pk" index of a WITHOUT ROWID table is the table itself.
        self.assertEqual(
            shape(new)[1],
            [
                ("jobs_done", 0, "c", 1),
                ("jobs_key", 1, "c", 1),
                ("sqlite_autoindex_jobs_1", 1, "pk", 0),
            ],
        )
        self.assertEqual(shape(new)[3], [("notifications_open", 0, "c", 1)])
        # Every job has its range of ids (an empty one when it has no notifications).
        (first_id,) = [c for c in db_columns(new, "jobs") if c[1] == "first_id"]
        self.assertEqual((first_id[2], first_id[3]), ("INTEGER", 1))
