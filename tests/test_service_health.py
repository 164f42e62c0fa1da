"""Apps that cannot send are paused with their work kept in the spool, and ``/healthz`` says so;
the invalid-token feed says what kind of evidence each token has, and never reports the tokens
of an app whose environment is wrong.

The engine with a fake Sender, a Clock and an inline SQLite spool (see ``test_service_engine``).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from txapns.core import CircuitOpenError, Notification, Outcome, Result
from txapns.service.engine import (
    AppPausedError,
    EngineApp,
)
from txapns.service.spool import SpoolStore
from txapns.service.testing import FakeSender, ReportingFakeSender
from txapns.service.webhook import InvalidTokenWebhook

from .helpers import token
from .helpers_service import BUNDLE, FakeAgent, Harness


def bad_device_token(n: Notification) -> Result:
    return Result(n, Outcome.REJECTED, 400, "BadDeviceToken", apns_id=n.apns_id, attempts=1)


def accept(n: Notification) -> Result:
    return Result(n, Outcome.ACCEPTED, 200, apns_id=n.apns_id, attempts=1)


class LogCapture:
    def __init__(self, case: Harness) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)


class FeedKindTests(Harness):
    """Each token in the feed and the webhook says why it is there."""

    def setUp(self) -> None:
        super().setUp()
        self.agent = FakeAgent()
        self.engine.webhook = InvalidTokenWebhook(self.agent, "http://127.0.0.1:1/h", self.clock)
        self.start()

    def posted(self) -> list[dict[str, Any]]:
        return [
            e for _, _, _, body in self.agent.requests for e in json.loads(body)["invalid_tokens"]
        ]

    def test_every_kind(self) -> None:
        when = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
        self.successResultOf(self.submit_and_turn(6))
        self.sender.answer(0, Outcome.REJECTED, status=410, reason="Unregistered", timestamp=when)
        self.sender.answer(0)
        self.sender.answer(0)
        self.sender.answer(0, Outcome.REJECTED, status=400, reason="BadDeviceToken")
        self.sender.answer(0, Outcome.REJECTED, status=8, reason="InvalidToken")
        self.sender.answer(0)
        self.turn()
        self.result(self.engine.add_feedback("a", [(token(9), 1_700_000_000.0)]))
        self.turn()
        feed = self.result(self.engine.invalid_tokens("a"))
        got = {t.token: (t.kind, t.timestamp, t.reason, t.status) for t in feed}
        self.assertEqual(
            got,
            {
                token(0): ("unregistered", when.timestamp(), "Unregistered", 410),
                token(3): ("bad_token", None, "BadDeviceToken", 400),
                token(4): ("invalid_token", None, "InvalidToken", 8),
                token(9): ("feedback", 1_700_000_000.0, None, None),
            },
        )
        hooked = {e["token"]: (e["kind"], e["timestamp"]) for e in self.posted()}
        self.assertEqual(
            hooked,
            {
                token(0): ("unregistered", when.timestamp()),
                token(3): ("bad_token", None),
                token(4): ("invalid_token", None),
                token(9): ("feedback", 1_700_000_000.0),
            },
        )
        m = self.engine.metrics.app("a")
        self.assertEqual(
            dict(m.invalid_by_kind),
            {"unregistered": 1, "bad_token": 1, "invalid_token": 1, "feedback": 1},
        )
        text = self.engine.metrics_text()
        self.assertIn('txapns_invalid_tokens_by_kind_total{app="a",kind="bad_token"} 1', text)

    def test_unregistered_keeps_apples_time_when_reported_again(self) -> None:
        older = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        newer = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        for when in (older, newer):
            self.successResultOf(self.submit_and_turn(1))
            self.sender.answer(
                0, Outcome.REJECTED, status=410, reason="Unregistered", timestamp=when
            )
            self.turn()
        (entry,) = self.result(self.engine.invalid_tokens("a"))
        self.assertEqual((entry.kind, entry.timestamp), ("unregistered", newer.timestamp()))


class MismatchTests(Harness):
    """APNs answering BadDeviceToken to (nearly) everything: a wrong environment, not dead
    tokens."""

    def setUp(self) -> None:
        super().setUp()
        self.logs = LogCapture(self)
        self.start()

    def feed(self) -> list[Any]:
        self.turn()
        return list(self.result(self.engine.invalid_tokens("a")))

    def test_everything_bad_publishes_nothing_and_pauses(self) -> None:
        self.sender.auto = bad_device_token
        self.successResultOf(self.submit_and_turn(30))
        self.turn()
        self.assertEqual(self.feed(), [])
        self.assertEqual(self.states(), {"queued": 30})  # nothing finished, nothing lost
        problem = self.engine.problem("a")
        assert problem is not None
        self.assertIn(
            "most tokens are rejected as BadDeviceToken: is `environment` right?", problem
        )
        health = self.engine.health()
        self.assertEqual(health["status"], "unhealthy")
        self.assertEqual(health["apps"]["a"]["paused"], "environment")  # type: ignore[index]
        self.assertIn("is `environment` right?", self.logs.text())
        text = self.engine.metrics_text()
        self.assertIn('txapns_app_paused{app="a",why="environment"} 1', text)
        self.assertIn('txapns_app_pauses_total{app="a",why="environment"} 1', text)
        m = self.engine.metrics.app("a")
        self.assertEqual((m.invalid_tokens, m.tokens_held_back), (0, 30))
        # Paused: nothing is handed to the client again, and new work is refused (503).
        self.assertEqual(len(self.sender.sent), 30)
        self.clock.advance(600)
        self.assertEqual(len(self.sender.sent), 30)
        self.assertRaises(AppPausedError, self.submit, 1)

    def test_held_back_tokens_are_published_only_when_rejected_again_after_resume(self) -> None:
        self.sender.auto = bad_device_token
        accepted = self.successResultOf(self.submit_and_turn(30))
        self.turn()
        self.assertEqual(self.feed(), [])
        waited = self.engine.wait(accepted.job_id)
        # The operator checked: the environment is right, these tokens really are bad.
        self.engine.resume("a")
        for _ in range(5):
            self.turn()
        view = self.successResultOf(waited)
        self.assertEqual(view.counts["rejected"], 30)
        feed = self.feed()
        self.assertEqual(sorted(t.token for t in feed), [token(i) for i in range(30)])
        self.assertEqual({t.kind for t in feed}, {"bad_token"})
        self.assertEqual(self.engine.health()["status"], "ok")

    def test_after_a_fix_and_a_restart_the_held_back_work_is_delivered(self) -> None:
        self.sender.auto = bad_device_token
        self.successResultOf(self.submit_and_turn(30))
        self.turn()
        stopped = self.engine.stop()
        self.turn()
        self.successResultOf(stopped)
        # Restarted with the right environment: the same spool, a client that delivers.
        self.sender = FakeSender(auto=accept)
        self.engine = self.make_engine()
        self.assertEqual(self.states(), {"queued": 30})
        self.start()
        for _ in range(5):
            self.turn()
        self.assertEqual(self.states(), {"accepted": 30})
        self.assertEqual(self.feed(), [])

    def test_a_mixed_stream_still_publishes_the_few_bad_tokens(self) -> None:
        bad = {token(i) for i in (3, 17, 31)}
        self.sender.auto = lambda n: bad_device_token(n) if n.token_hex in bad else accept(n)
        accepted = self.successResultOf(self.submit_and_turn(40))
        waited = self.engine.wait(accepted.job_id)
        self.turn()
        view = self.successResultOf(waited)
        self.assertEqual((view.counts["accepted"], view.counts["rejected"]), (37, 3))
        feed = self.feed()
        self.assertEqual(sorted(t.token for t in feed), sorted(bad))
        self.assertEqual({t.kind for t in feed}, {"bad_token"})
        self.assertEqual(self.engine.health()["status"], "ok")
        self.assertIsNone(self.engine.problem("a"))

    def test_a_few_bad_answers_alone_are_held_back_not_published(self) -> None:
        self.sender.auto = bad_device_token
        accepted = self.successResultOf(self.submit_and_turn(3))
        waited = self.engine.wait(accepted.job_id)
        self.turn()
        self.assertNoResult(waited)  # waiting for more answers to tell
        self.clock.advance(self.engine.mismatch.hold)
        self.turn()
        self.assertEqual(self.successResultOf(waited).counts["rejected"], 3)
        self.assertEqual(self.feed(), [])  # too few to call a mismatch, too many to trust
        self.assertEqual(self.engine.metrics.app("a").tokens_held_back, 3)
        self.assertIsNone(self.engine.problem("a"))

    def test_detection_can_be_turned_off(self) -> None:
        from txapns.core.token_evidence import MismatchPolicy

        self.engine = self.fresh(mismatch=MismatchPolicy(min_tokens=0))
        self.start()
        self.sender.auto = bad_device_token
        self.successResultOf(self.submit_and_turn(30))
        self.turn()
        self.assertEqual(len(self.feed()), 30)
        self.assertIsNone(self.engine.problem("a"))

    def test_stop_settles_answers_waiting_for_a_verdict(self) -> None:
        self.sender.auto = bad_device_token
        self.successResultOf(self.submit_and_turn(2))
        self.turn()
        stopped = self.engine.stop()
        self.turn()
        self.successResultOf(stopped)
        self.store = SpoolStore(self.path)
        self.addCleanup(self.store.close)
        self.assertEqual(self.states(), {"rejected": 2})
        self.assertEqual(self.clock.getDelayedCalls(), [])


class UnavailableTests(Harness):
    """A credential APNs refuses, or TLS that keeps failing: the app pauses, its work stays in
    the spool, and it is tried again."""

    def setUp(self) -> None:
        super().setUp()
        self.engine = self.fresh(watch_interval=5.0, probe_interval=30.0)
        self.start()

    def test_refused_credential_keeps_the_work_and_pauses(self) -> None:
        accepted = self.successResultOf(self.submit_and_turn(5))
        self.sender.answer(0, Outcome.REJECTED, status=403, reason="InvalidProviderToken")
        self.sender.answer_all(
            Outcome.REJECTED, reason="InvalidProviderToken", local="circuit-open"
        )
        self.turn()
        self.assertEqual(self.states(), {"queued": 5})
        view = self.result(self.engine.job(accepted.job_id))
        self.assertFalse(view.done)
        problem = self.engine.problem("a") or ""
        self.assertIn("InvalidProviderToken", problem)
        self.assertEqual(self.engine.health()["status"], "unhealthy")
        self.assertIn('txapns_app_paused{app="a",why="unavailable"} 1', self.engine.metrics_text())
        self.assertRaises(AppPausedError, self.submit, 1)
        # Tried again after probe_interval; the credential works again.
        self.sender.auto = accept
        self.clock.advance(29)
        self.assertEqual(len(self.sender.sent), 5)
        self.clock.advance(1)
        for _ in range(3):
            self.turn()
        self.assertEqual(self.states(), {"accepted": 5})
        self.assertEqual(self.engine.health()["status"], "ok")

    def test_proxy_refusing_its_credentials_is_no_rejection(self) -> None:
        self.successResultOf(self.submit_and_turn(2))
        self.sender.answer_all(
            Outcome.REJECTED, reason="proxy 127.0.0.1:3128 answered 407", local="proxy-auth"
        )
        self.turn()
        self.assertEqual(self.states(), {"queued": 2})
        self.assertIn("407", self.engine.problem("a") or "")

    def test_tls_give_up_is_no_rejection(self) -> None:
        self.successResultOf(self.submit_and_turn(2))
        self.sender.answer_all(Outcome.REJECTED, reason="TLS failure: bad cert", local="tls")
        self.turn()
        self.assertEqual(self.states(), {"queued": 2})
        self.assertIn("TLS failure", self.engine.problem("a") or "")

    def test_circuit_open_error_on_send_pauses(self) -> None:
        def refuse(n: Notification) -> None:
            raise CircuitOpenError("APNs refused this credential (Forbidden)")

        self.sender.validate = refuse
        self.successResultOf(self.submit_and_turn(3))
        self.turn()
        self.assertEqual(self.states(), {"queued": 3})
        self.assertIn("Forbidden", self.engine.problem("a") or "")
        self.sender.validate = None
        self.sender.auto = accept
        self.clock.advance(30)
        for _ in range(3):
            self.turn()
        self.assertEqual(self.states(), {"accepted": 3})

    def test_client_that_holds_reports_unavailable(self) -> None:
        # A client built with hold_when_unavailable keeps what it has and says why.
        submitted = self.submit(2)
        self.sender.unavailable = "TLS failure: certificate verify failed; gave up after 3"
        self.turn()
        self.successResultOf(submitted)
        self.assertEqual(self.sender.sent, [])  # not handed over while it cannot send
        self.assertEqual(self.engine.health()["status"], "unhealthy")
        self.assertIn("certificate verify failed", self.engine.problem("a") or "")
        self.assertRaises(AppPausedError, self.submit, 1)
        self.sender.unavailable = None
        self.sender.auto = accept
        self.clock.advance(5)  # the watchdog sees it can send again
        for _ in range(3):
            self.turn()
        self.assertEqual(self.states(), {"accepted": 2})
        self.assertEqual(self.engine.health()["status"], "ok")


class OfflineTests(Harness):
    """No connection for longer than ``offline_threshold`` while work waits: not healthy."""

    def test_offline_with_work_fails_health_after_the_threshold(self) -> None:
        self.sender = ReportingFakeSender()
        self.engine = self.fresh(watch_interval=5.0, offline_threshold=60.0)
        self.start()
        self.sender.connections = 0
        self.assertEqual(self.engine.health()["status"], "ok")  # idle: no work waiting
        self.successResultOf(self.submit_and_turn(1))
        self.clock.pump([5.0] * 12)  # the watchdog (every 5 s) noticed it at 5 s
        self.assertEqual(self.engine.health()["status"], "ok")
        self.clock.advance(6)
        health = self.engine.health()
        self.assertEqual(health["status"], "unhealthy")
        self.assertIn("no connection to APNs", health["apps"]["a"]["problem"])  # type: ignore[index]
        self.assertIn('txapns_app_paused{app="a",why="offline"} 1', self.engine.metrics_text())
        self.sender.connections = 1
        self.clock.advance(5)
        self.assertEqual(self.engine.health()["status"], "ok")

    def test_other_apps_stay_healthy(self) -> None:
        other = FakeSender()
        self.engine = self.fresh(
            {"a": EngineApp(self.sender, bundle_id=BUNDLE), "b": EngineApp(other)},
            watch_interval=5.0,
        )
        self.start()
        self.sender.unavailable = "circuit open"
        health = self.engine.health()
        self.assertEqual(health["status"], "unhealthy")
        self.assertIsNone(health["apps"]["b"]["problem"])  # type: ignore[index]


class SpoolMigrationTests(Harness):
    def test_a_schema_1_spool_gets_the_kind_of_its_feed_rows(self) -> None:
        import sqlite3

        self.store.close()
        db = sqlite3.connect(self.path)
        db.execute("ALTER TABLE invalid_tokens DROP COLUMN kind")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
        rows = [
            (token(1), 1.0, "feedback", None, "feedback"),
            (token(2), 2.0, "Unregistered", 410, "apns"),
            (token(3), None, "BadDeviceToken", 400, "apns"),
            (token(4), None, "InvalidToken", 8, "apns"),
        ]
        db.executemany(
            "INSERT INTO invalid_tokens (app, token, timestamp, reason, status, source,"
            " reported_at) VALUES ('a', ?, ?, ?, ?, ?, 5.0)",
            rows,
        )
        db.commit()
        db.close()
        store = SpoolStore(self.path)
        self.addCleanup(store.close)
        self.assertEqual(
            [(t.token, t.kind) for t in store.invalid_tokens("a")],
            [
                (token(1), "feedback"),
                (token(2), "unregistered"),
                (token(3), "bad_token"),
                (token(4), "invalid_token"),
            ],
        )
        version = store._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        self.assertEqual(version, ("3",))
