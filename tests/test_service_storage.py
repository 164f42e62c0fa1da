"""The spool failing under the service (issue 9, items 8, 9, 15): a recovery that fails at
start, outcome writes that fail (disk full), and what the API answers meanwhile.

Failures are injected into a real SQLite spool (run inline, with a Clock): the error SQLite
raises for a full disk, ``sqlite3.OperationalError("database or disk is full")``, at the
store operation or at COMMIT. No root, tmpfs or quota is needed."""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txapns.core import Notification, Outcome, Result
from txapns.service.api import ApiResource
from txapns.service.backend import SpoolUnavailableError
from txapns.service.engine import Engine, EngineApp, NotAcceptingError, Template
from txapns.service.spool import Spool, SpoolStore, inline_runner
from txapns.service.testing import FakeSender

from .helpers import temp_dir, token

BUNDLE = "com.example.a"
ALERT = Template(payload={"aps": {"alert": "hi"}})
FULL = "database or disk is full"


def accept(n: Notification) -> Result:
    return Result(n, Outcome.ACCEPTED, 200, None, n.apns_id, attempts=1)


class FlakyConnection:
    """Wraps the store's sqlite3 connection: fails COMMIT while ``full`` (the disk is full)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.full = False

    def execute(self, sql: str, *args: Any) -> Any:
        if self.full and sql == "COMMIT":
            raise sqlite3.OperationalError(FULL)
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


class Harness(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.path = temp_dir(self) / "spool.db"
        self.sender = FakeSender(auto=accept, clock=self.clock)  # type: ignore[arg-type]
        self.open()

    def open(self) -> None:
        self.store = SpoolStore(self.path)
        self.addCleanup(lambda s=self.store: s.close())
        self.spool = Spool(self.store, self.clock, inline_runner)
        self.engine = Engine(
            {"a": EngineApp(self.sender, bundle_id=BUNDLE)},
            self.spool,
            self.clock,
            purge_interval=0,
            drain_timeout=1,
        )

    def turns(self, n: int = 5) -> None:
        for _ in range(n):
            self.clock.advance(0)

    def submit(self, *tokens: int, **kw: Any) -> Any:
        ns = self.engine.prepare("a", ALERT, [token(i) for i in tokens])
        d = self.engine.submit("a", ns, **kw)
        self.clock.advance(0)  # the spool writes what one turn asked for
        return d


class RecoveryTests(Harness):
    def test_failed_recovery_is_unhealthy_refuses_work_and_is_retried(self) -> None:
        # Work left unfinished by an earlier run.
        self.store.add_job("a", [Notification.create(token(1), {"aps": {"alert": "x"}},
                                                     topic=BUNDLE)], now=1)  # fmt: skip
        real = self.store.recover
        failures = [sqlite3.DatabaseError("database disk image is malformed")] * 2

        def recover(**kw: Any) -> Any:
            if failures:
                raise failures.pop()
            return real(**kw)

        self.store.recover = recover  # type: ignore[method-assign]
        started = self.engine.start()
        self.turns()
        self.assertNoResult(started)
        # Never healthy, never accepting, while the spool's work is not recovered.
        self.assertFalse(self.engine.accepting)
        health = self.engine.health()
        self.assertEqual(health["status"], "recovering")
        self.assertIn("malformed", str(health["error"]))
        with self.assertRaises(NotAcceptingError) as cm:
            self.submit(2)
        self.assertIn("recovering the spool", str(cm.exception))
        self.assertEqual(self.sender.sent, [])
        self.flushLoggedErrors()
        # Retried with a growing delay; recovers without a restart.
        self.clock.advance(0.5)
        self.turns()
        self.assertNoResult(started)
        self.clock.advance(1.0)
        self.turns()
        self.successResultOf(started)
        self.assertTrue(self.engine.accepting)
        self.assertEqual(self.engine.health()["status"], "ok")
        self.assertNotIn("error", self.engine.health())
        self.assertEqual([n.token_hex for n in self.sender.sent], [token(1)])
        self.flushLoggedErrors()

    def test_healthz_is_503_until_recovery_has_run(self) -> None:
        resource = ApiResource(self.engine, b"k" * 16)
        self.engine.start()  # the inline spool recovers on the next turn, not now
        self.assertEqual(resource._healthz(None).code, 503)  # type: ignore[arg-type]
        self.assertEqual(self.engine.health()["status"], "recovering")
        self.turns()
        self.assertEqual(resource._healthz(None).code, 200)  # type: ignore[arg-type]

    def test_stop_while_recovery_keeps_failing(self) -> None:
        self.store.recover = lambda **kw: (_ for _ in ()).throw(  # type: ignore[method-assign]
            sqlite3.OperationalError("disk I/O error")
        )
        started = self.engine.start()
        self.turns()
        stopped = self.engine.stop()
        self.successResultOf(started)
        self.turns()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flushLoggedErrors()


class ResumedCountTests(Harness):
    def test_resumed_work_counts_as_submitted(self) -> None:
        held = self.sender = FakeSender()  # holds everything: it stays in flight
        self.store.close()
        self.open()
        self.engine.start()
        self.turns()
        self.submit(1, 2, 3)
        self.turns()
        self.assertEqual(len(held.sent), 3)
        # A crash: the store is dropped with the rows in flight; a new process resumes them.
        self.store.close()
        self.sender = FakeSender(auto=accept, clock=self.clock)  # type: ignore[arg-type]
        self.open()
        self.engine.start()
        self.turns(20)
        m = self.engine.metrics.app("a")
        self.assertEqual((m.submitted, m.accepted, m.resumed_maybe_duplicate), (3, 3, 3))


class OutcomeWriteTests(Harness):
    def fail_outcome_writes(self) -> list[bool]:
        full = [True]
        real = self.store.record_outcomes

        def record_outcomes(records: Any, **kw: Any) -> Any:
            if full[0]:
                raise sqlite3.OperationalError(FULL)
            return real(records, **kw)

        self.store.record_outcomes = record_outcomes  # type: ignore[method-assign]
        return full

    def test_outcomes_are_kept_and_retried_until_the_disk_has_room(self) -> None:
        self.engine.start()
        self.turns()
        full = self.fail_outcome_writes()
        accepted = self.successResultOf(self.submit(1, 2, 3))
        waiting = self.engine.wait(accepted.job_id)
        self.turns()
        self.assertEqual(len(self.sender.sent), 3)
        self.assertNoResult(waiting)
        self.assertEqual(self.store.counts(), {("a", "inflight"): 3})
        # Unhealthy, and new work is refused (the API's 503) while outcomes cannot be written.
        self.assertFalse(self.engine.accepting)
        self.assertEqual(self.engine.health()["status"], "spool")
        self.assertIn(FULL, str(self.engine.health()["spool"]["error"]))  # type: ignore[index]
        with self.assertRaises(NotAcceptingError) as cm:
            self.submit(4)
        self.assertIn("spool cannot store", str(cm.exception))
        for _ in range(4):  # retried, backing off, while the disk stays full
            self.clock.advance(self.spool.max_retry_delay)
            self.turns()
        self.assertNoResult(waiting)
        # Space returns: the next retry writes them; no restart needed, nothing re-sent.
        full[0] = False
        self.clock.advance(self.spool.max_retry_delay)
        self.turns()
        view = self.successResultOf(waiting)
        self.assertEqual(view.counts["accepted"], 3)
        self.assertEqual(self.store.counts(), {("a", "accepted"): 3})
        self.assertTrue(self.engine.accepting)
        self.assertEqual(self.engine.health()["status"], "ok")
        self.assertNotIn("error", self.engine.health()["spool"])  # type: ignore[operator]
        self.successResultOf(self.submit(4))
        self.turns()
        self.assertEqual(len(self.sender.sent), 4)

    def test_a_failing_commit_is_a_storage_condition_and_the_store_recovers(self) -> None:
        flaky = FlakyConnection(self.store._db)
        self.store._db = flaky  # type: ignore[assignment]
        self.engine.start()
        self.turns()
        flaky.full = True
        d = self.submit(1)
        self.turns()
        failure = self.failureResultOf(d, SpoolUnavailableError)
        self.assertIn(FULL, failure.getErrorMessage())
        # The API answers that with 503, not 500.
        response = ApiResource(self.engine, b"k" * 16)._to_response(failure, "notifications")
        self.assertEqual((response.code, response.headers), (503, (("Retry-After", "5"),)))
        self.assertEqual(self.store.counts(), {})  # nothing half-stored
        flaky.full = False
        self.successResultOf(self.submit(2))
        self.assertEqual(sum(self.store.counts().values()), 1)
        self.flushLoggedErrors()

    def test_outcomes_pending_at_stop_get_one_last_try(self) -> None:
        self.engine.start()
        self.turns()
        full = self.fail_outcome_writes()
        self.submit(1)
        self.turns()
        self.assertEqual(self.store.counts(), {("a", "inflight"): 1})
        full[0] = False
        stopped = self.engine.stop()
        self.turns()
        self.clock.advance(self.spool.max_retry_delay)  # the retry writes them
        self.turns()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        reopened = SpoolStore(self.path)
        self.addCleanup(reopened.close)
        self.assertEqual(reopened.counts(), {("a", "accepted"): 1})

    def test_outcomes_that_cannot_be_written_by_the_stop_stay_in_flight(self) -> None:
        self.engine.start()
        self.turns()
        self.fail_outcome_writes()
        self.submit(1)
        self.turns()
        stopped = self.engine.stop()
        for _ in range(10):  # the disk stays full: the stop still ends, bounded
            self.clock.advance(self.engine.drain_timeout)
            self.turns()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        reopened = SpoolStore(self.path)
        self.addCleanup(reopened.close)
        # Resumed by the next start, flagged as a possible duplicate.
        self.assertEqual(reopened.counts(), {("a", "inflight"): 1})
        self.flushLoggedErrors()
