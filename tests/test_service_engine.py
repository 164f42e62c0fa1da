"""The engine, with a fake Sender whose Deferreds the tests fire, a Clock and an inline spool."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from twisted.internet.defer import Deferred, fail
from twisted.logger import LogLevel, capturedLogs, formatEvent

from txapns.core import (
    InvalidTokenError,
    Notification,
    Outcome,
    PayloadTooLargeError,
    Result,
    ValidationError,
)
from txapns.service.engine import (
    EngineApp,
    NotAcceptingError,
    RecipientError,
    Template,
    UnknownAppError,
)
from txapns.service.spool import JobView, OutcomesHeldError, SpoolStore, SpoolUnavailableError
from txapns.service.testing import FakeSender
from txapns.service.webhook import InvalidTokenWebhook

from .helpers import token
from .helpers_service import ALERT, BUNDLE, FakeAgent, Harness


class PrepareTests(Harness):
    def test_topic_and_apns_id_defaults(self) -> None:
        ns = self.engine.prepare("a", Template({"aps": {}}, push_type="voip"), [token(1), token(2)])
        self.assertEqual([n.topic for n in ns], [BUNDLE + ".voip"] * 2)
        self.assertEqual(ns[0].token, bytes.fromhex(token(1)))
        ids = {n.apns_id for n in ns}
        self.assertEqual(len(ids), 2)
        for i in ids:
            uuid.UUID(str(i))
        plain = self.engine.prepare("a", ALERT, [token(1)])[0]
        self.assertEqual(plain.topic, BUNDLE)
        explicit = self.engine.prepare(
            "a", Template({"aps": {"alert": "x"}}, topic="t.x"), [token(1)]
        )
        self.assertEqual(explicit[0].topic, "t.x")

    def test_bad_token_names_index(self) -> None:
        with self.assertRaises(RecipientError) as cm:
            self.engine.prepare("a", ALERT, [token(1), token(2), "zz"])
        self.assertEqual(cm.exception.index, 2)
        self.assertIn("tokens[2]", str(cm.exception))
        self.assertIsInstance(cm.exception.error, InvalidTokenError)

    def test_protocol_rules(self) -> None:
        big = Template({"aps": {"alert": "x" * 3000}})
        self.engine.prepare("a", big, [token(1)])  # fits HTTP/2's 4096
        binary = self.fresh({"b": EngineApp(FakeSender(), protocol="binary", token_auth=False)})
        with self.assertRaises(PayloadTooLargeError) as cm:
            binary.prepare("b", big, [token(1)])
        self.assertEqual(cm.exception.limit, 2048)
        self.assertIsNone(binary.prepare("b", ALERT, [token(1)])[0].apns_id)
        with self.assertRaises(ValidationError):
            self.engine.prepare(
                "a", Template({"aps": {"alert": "x"}}, push_type="background"), [token(1)]
            )

    def test_refusals(self) -> None:
        self.assertRaises(UnknownAppError, self.engine.prepare, "zzz", ALERT, [token(1)])
        self.assertRaises(ValidationError, self.engine.prepare, "a", ALERT, [])
        self.assertRaises(
            ValidationError,
            self.engine.prepare,
            "a",
            Template({"aps": {}}, apns_id=str(uuid.uuid4())),
            [token(1), token(2)],
        )
        with self.assertRaises(ValidationError) as cm:
            self.engine.prepare("a", Template({"aps": {}}, push_type="nope"), [token(1)])
        self.assertIn("unknown push type 'nope'", str(cm.exception))

    def test_not_started(self) -> None:
        ns = self.engine.prepare("a", ALERT, [token(1)])
        self.assertRaises(NotAcceptingError, self.engine.submit, "a", ns)


class DispatchTests(Harness):
    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_stored_before_sent_then_recorded(self) -> None:
        d = self.submit(3)
        self.assertNoResult(d)
        self.assertEqual(self.sender.sent, [])
        self.turn()
        accepted = self.successResultOf(d)
        self.assertEqual((accepted.count, accepted.duplicate), (3, False))
        self.assertEqual(len(self.sender.sent), 3)
        self.assertEqual(self.states(), {"inflight": 3})
        waited = self.engine.wait(accepted.job_id)
        self.sender.answer(0)
        self.sender.answer(0, Outcome.REJECTED, status=400, reason="BadDeviceToken")
        self.turn()
        self.assertNoResult(waited)
        self.sender.answer(0, Outcome.UNKNOWN, reason="connection reset")
        self.turn()
        # The BadDeviceToken answer waits (up to mismatch.hold) for a verdict on the app's
        # recent answers: is the token dead, or the environment wrong?
        self.assertNoResult(waited)
        self.clock.advance(self.engine.mismatch.hold)
        self.turn()
        view: JobView = self.successResultOf(waited)
        self.assertTrue(view.done)
        self.assertEqual(
            [(r.state, r.reason) for r in view.results],
            [("accepted", None), ("rejected", "BadDeviceToken"), ("unknown", "connection reset")],
        )
        m = self.engine.metrics.app("a")
        self.assertEqual((m.submitted, m.sent, m.accepted), (3, 3, 1))
        self.assertEqual(m.rejected_by_reason["BadDeviceToken"], 1)
        self.assertEqual(m.latency.count, 3)
        # One BadDeviceToken in two answers is too little to tell a dead token from a wrong
        # environment: held back from the feed, not published.
        self.assertEqual((m.invalid_tokens, m.tokens_held_back), (0, 1))

    def test_wait_on_finished_job(self) -> None:
        accepted = self.successResultOf(self.submit_and_turn())
        self.sender.answer_all()
        self.turn()
        self.assertTrue(self.result(self.engine.wait(accepted.job_id)).done)

    def test_idempotency_sends_once(self) -> None:
        first = self.successResultOf(self.submit_and_turn(2, idempotency_key="k"))
        again = self.successResultOf(self.submit_and_turn(2, first=5, idempotency_key="k"))
        self.assertTrue(again.duplicate)
        self.assertEqual(again.job_id, first.job_id)
        self.assertEqual(len(self.sender.sent), 2)
        self.assertEqual(self.engine.metrics.app("a").submitted, 2)

    def test_concurrent_idempotent_repeat_waits_for_the_first(self) -> None:
        first = self.successResultOf(self.submit_and_turn(1, idempotency_key="k"))
        again = self.successResultOf(self.submit_and_turn(1, first=3, idempotency_key="k"))
        w1, w2 = self.engine.wait(first.job_id), self.engine.wait(again.job_id)
        self.turn()
        self.assertNoResult(w2)
        self.sender.answer_all()
        self.turn()
        self.assertEqual(self.successResultOf(w1), self.successResultOf(w2))
        self.assertEqual(len(self.sender.sent), 1)

    def test_invalid_token_feed_and_feedback(self) -> None:
        self.successResultOf(self.submit_and_turn(1))
        when = dt.datetime(2025, 5, 1, tzinfo=dt.UTC)
        self.sender.answer(0, Outcome.REJECTED, status=410, reason="Unregistered", timestamp=when)
        self.turn()
        self.result(self.engine.add_feedback("a", [(token(9), 1.0)]))
        tokens = self.result(self.engine.invalid_tokens("a"))
        self.assertEqual(
            [(t.token, t.timestamp, t.source) for t in tokens],
            [(token(0), when.timestamp(), "apns"), (token(9), 1.0, "feedback")],
        )
        self.assertRaises(UnknownAppError, self.engine.invalid_tokens, "zzz")

    def test_room_in_the_window_stores_in_flight_in_one_transaction(self) -> None:
        # Nothing queued and room in the window: the job is stored as in flight and handed to
        # the sender after that one commit; no second transaction (and fsync) to mark it.
        before = (self.spool.batches, self.spool.operations)
        accepted = self.successResultOf(self.submit_and_turn(3))
        self.assertEqual(
            (self.spool.batches, self.spool.operations), (before[0] + 1, before[1] + 1)
        )
        self.assertEqual(len(self.sender.sent), 3)
        self.assertEqual(self.states(), {"inflight": 3})
        # An idempotent repeat stores nothing and gives its reserved room back.
        again = self.successResultOf(self.submit_and_turn(3, idempotency_key=None))
        self.assertFalse(again.duplicate)
        first = self.successResultOf(self.submit_and_turn(1, first=7, idempotency_key="k"))
        repeat = self.successResultOf(self.submit_and_turn(1, first=7, idempotency_key="k"))
        self.assertEqual((repeat.duplicate, repeat.job_id), (True, first.job_id))
        self.assertEqual(self.engine.gauges()["a"].queued, 0)
        self.assertEqual(len(self.sender.sent), 7)
        self.sender.answer_all()
        self.turn()
        self.assertTrue(self.result(self.engine.wait(accepted.job_id)).done)

    def test_a_full_window_or_a_queue_keeps_the_two_steps(self) -> None:
        self.engine.max_inflight = 2
        self.successResultOf(self.submit_and_turn(5))  # more than the window: queued first
        self.assertEqual(self.states(), {"inflight": 2, "queued": 3})
        self.successResultOf(self.submit_and_turn(1, first=10))  # behind a queue: queued
        self.assertEqual(self.states(), {"inflight": 2, "queued": 4})
        self.assertEqual(len(self.sender.sent), 2)

    def test_window_bounds_inflight(self) -> None:
        self.engine.max_inflight = 2
        self.successResultOf(self.submit_and_turn(5))
        self.assertEqual(len(self.sender.sent), 2)
        self.sender.answer(0)
        self.turn()
        self.assertEqual(len(self.sender.sent), 3)
        self.assertEqual(self.engine.gauges()["a"].queued, 2)

    def test_queue_full_backs_off_and_loses_nothing(self) -> None:
        self.sender.capacity = 2
        accepted = self.successResultOf(self.submit_and_turn(5))
        self.assertEqual(len(self.sender.sent), 2)
        self.assertEqual(self.states(), {"inflight": 2, "queued": 3})
        self.assertTrue(self.engine.health()["apps"]["a"]["blocked"])  # type: ignore[index]
        self.clock.advance(self.engine.retry_delay)  # retry timer: still full
        self.assertEqual(len(self.sender.sent), 2)
        waited = self.engine.wait(accepted.job_id)
        while self.sender.pending():
            self.sender.answer_all()
            self.turn()
        self.assertEqual(len(self.sender.sent), 5)
        self.assertEqual(self.successResultOf(waited).counts["accepted"], 5)
        self.assertEqual(self.engine.metrics.app("a").sent, 5)

    def test_scheduled_send(self) -> None:
        now = self.clock.seconds()
        self.successResultOf(self.submit_and_turn(1, send_at=now + 60))
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.engine.gauges()["a"].scheduled, 1)
        self.successResultOf(self.submit_and_turn(1, first=1, send_at=now + 30))
        self.clock.advance(29)
        self.assertEqual(self.sender.sent, [])
        self.clock.advance(1)
        self.assertEqual([n.token_hex for n in self.sender.sent], [token(1)])
        self.clock.advance(30)
        self.assertEqual(len(self.sender.sent), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        past = self.successResultOf(self.submit_and_turn(1, first=2, send_at=now - 5))
        self.assertEqual(len(self.sender.sent), 3, past)

    def test_sender_validation_error_is_a_rejection(self) -> None:
        def refuse(n: Notification) -> None:
            raise ValidationError("client says no")

        self.sender.validate = refuse
        accepted = self.successResultOf(self.submit_and_turn(1))
        waited = self.engine.wait(accepted.job_id)
        self.turn()
        view = self.successResultOf(waited)
        self.assertEqual(view.results[0].state, "rejected")
        self.assertEqual(view.results[0].reason, "client says no")

    def test_sender_raising_anything_else(self) -> None:
        def crash(n: Notification) -> None:
            raise KeyError("bug")

        self.sender.validate = crash
        accepted = self.successResultOf(self.submit_and_turn(1))
        waited = self.engine.wait(accepted.job_id)
        self.turn()
        view = self.successResultOf(waited)
        self.assertEqual(view.results[0].reason, "client error: KeyError")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_outcomes_a_spool_holds_during_an_outage_are_a_warning_not_an_error(self) -> None:
        # The Redis spool holds outcomes in memory while Redis is down and writes them when
        # it answers: an expected state, logged as a warning. Any other write failure stays a
        # logged error (the row stays in flight; a restart resumes it).
        cases = [(OutcomesHeldError("held in memory"), ["held in memory"], 0),
                 (SpoolUnavailableError("cannot write"), [], 1)]  # fmt: skip
        for error, warned, errors in cases:
            self.patch(self.spool, "record_outcomes", lambda *a, e=error, **k: fail(e))
            with capturedLogs() as events:
                self.successResultOf(self.submit_and_turn(1))
                self.sender.answer_all()
                self.clock.advance(1)
            warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
            self.assertEqual(len(warnings), len(warned), warnings)
            for text, expected in zip(warnings, warned, strict=True):
                self.assertIn("could not record 1 outcomes for a yet: " + expected, text)
            self.assertEqual(len(self.flushLoggedErrors(SpoolUnavailableError)), errors)

    def test_synchronous_sender(self) -> None:
        # The result arrives inside send_to, before it returns: still counted once.
        self.sender.auto = lambda n: Result(n, Outcome.ACCEPTED, status=200)
        accepted = self.successResultOf(self.submit_and_turn(3))
        waited = self.engine.wait(accepted.job_id)
        self.turn()
        self.assertEqual(self.successResultOf(waited).counts["accepted"], 3)

    def test_health(self) -> None:
        self.successResultOf(self.submit_and_turn(2))
        h = self.engine.health()
        self.assertEqual(h["status"], "ok")
        self.assertEqual(h["apps"]["a"]["inflight"], 2)  # type: ignore[index]
        self.assertEqual(h["apps"]["a"]["client_pending"], 2)  # type: ignore[index]
        text = self.engine.metrics_text()
        self.assertIn('txapns_queue_depth{app="a",state="inflight"} 2', text)


class MayDuplicateTests(Harness):
    def test_client_flag_reaches_the_job_and_the_metrics(self) -> None:
        """Issue 9 item 4: a result the client flags ``may_duplicate`` (re-sent after an
        unknown outcome) is flagged in the job's per-recipient results and counted."""
        from txapns.service.api import job_json

        dup = bytes.fromhex(token(1))
        self.sender.auto = lambda n: Result(
            n, Outcome.ACCEPTED, status=200, attempts=2, may_duplicate=n.token == dup
        )
        self.start()
        accepted = self.successResultOf(self.submit_and_turn(3))
        waited = self.engine.wait(accepted.job_id)
        self.turn()
        body = job_json(self.successResultOf(waited))
        self.assertEqual([r["may_duplicate"] for r in body["results"]], [False, True, False])
        self.assertEqual(body["may_duplicate"], 1)
        self.assertEqual(self.engine.metrics.app("a").may_duplicate, 1)
        self.assertIn('txapns_may_duplicate_total{app="a"} 1', self.engine.metrics_text())


class UnreachableTests(Harness):
    """Issue 9 item 1, service side: a notification the client gave up on because APNs could
    not be reached (``local="unreachable"`` or ``"queue-time"``) stays in the spool and is
    handed to the client again, until its expiration has passed."""

    def give_up(self, index: int = 0) -> None:
        self.sender.answer(
            index, Outcome.REJECTED, reason="not sent within 300 s: APNs unreachable",
            local="unreachable",
        )
        self.turn()

    def test_stays_in_the_spool_and_is_sent_again(self) -> None:
        self.start()
        accepted = self.successResultOf(self.submit_and_turn(1))
        self.give_up()
        self.assertEqual(len(self.sender.sent), 2)  # handed over again
        self.assertEqual(self.states(), {"inflight": 1})
        self.assertEqual(self.engine.metrics.app("a").requeued, 1)
        self.assertEqual(self.engine.metrics.app("a").rejected_by_reason, {})
        waited = self.engine.wait(accepted.job_id)
        self.sender.answer_all()
        self.turn()
        self.assertEqual(self.successResultOf(waited).counts["accepted"], 1)

    def test_finished_once_its_expiration_has_passed(self) -> None:
        self.start()
        now = int(self.clock.seconds())
        template = Template(payload={"aps": {"alert": "x"}}, expiry=now + 100)
        accepted = self.successResultOf(self.submit_and_turn(2, template=template))
        self.give_up()  # before the expiration: kept
        self.assertEqual(len(self.sender.sent), 3)
        self.clock.advance(100)
        waited = self.engine.wait(accepted.job_id)
        self.sender.answer_all(Outcome.REJECTED, reason="not sent", local="unreachable")
        self.turn()
        view = self.successResultOf(waited)
        self.assertEqual(view.counts["rejected"], 2)
        self.assertEqual(len(self.sender.sent), 3)
        self.assertIn("expired", view.results[0].reason or "")

    def test_expiration_zero_is_now_or_never(self) -> None:
        self.start()
        template = Template(payload={"aps": {"alert": "x"}}, expiry=0)
        accepted = self.successResultOf(self.submit_and_turn(1, template=template))
        waited = self.engine.wait(accepted.job_id)
        self.give_up()
        self.assertEqual(self.successResultOf(waited).counts["rejected"], 1)
        self.assertEqual(len(self.sender.sent), 1)


class RecoveryTests(Harness):
    def test_resume_after_crash(self) -> None:
        # A previous run stored 3, had 1 in flight and 1 finished when it died.
        ns = self.engine.prepare("a", ALERT, [token(i) for i in range(3)])
        stored = self.store.add_job("a", ns, now=1)
        self.store.mark_inflight(stored.ids[:2], now=2)
        from txapns.service.spool import OutcomeRecord

        self.store.record_outcomes(
            [OutcomeRecord(stored.ids[1], stored.job_id, "a", token(1), "accepted")], now=3
        )
        self.start()
        self.assertEqual([n.token_hex for n in self.sender.sent], [token(0), token(2)])
        self.assertEqual(self.sender.sent[0], ns[0])  # same apns-id, payload, topic
        self.assertEqual(self.engine.metrics.app("a").resumed_maybe_duplicate, 1)
        waited = self.engine.wait(stored.job_id)
        self.sender.answer_all()
        self.turn()
        view = self.successResultOf(waited)
        self.assertEqual([r.resumed for r in view.results], [1, 0, 0])
        self.assertIn('txapns_resumed_maybe_duplicate_total{app="a"} 1', self.engine.metrics_text())

    def test_unknown_app_rows_stay(self) -> None:
        ns = self.engine.prepare("a", ALERT, [token(1)])
        self.store.add_job("gone", ns, now=1)
        self.start()
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.states(), {"queued": 1})


class StopTests(Harness):
    def setUp(self) -> None:
        super().setUp()
        self.engine.drain_timeout = 5
        self.start()

    def test_graceful_stop_drains_and_leaves_rest(self) -> None:
        self.engine.max_inflight = 2
        accepted = self.successResultOf(self.submit_and_turn(4))
        waited = self.engine.wait(accepted.job_id)
        stopped = self.engine.stop()
        self.assertRaises(
            NotAcceptingError, self.engine.submit, "a", self.engine.prepare("a", ALERT, [token(1)])
        )
        self.assertNoResult(stopped)
        self.sender.answer_all()
        self.turn()
        self.successResultOf(stopped)
        self.assertEqual(self.sender.stop_calls, 1)
        self.assertEqual(len(self.sender.sent), 2)  # the other two were never handed over
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.store.closed)
        view = self.successResultOf(waited)  # the waiter gets the unfinished view
        self.assertFalse(view.done)
        self.assertEqual(
            view.counts, {"queued": 2, "inflight": 0, "accepted": 2, "rejected": 0, "unknown": 0}
        )

    def test_deadline_then_unsent_go_back_to_spool(self) -> None:
        self.successResultOf(self.submit_and_turn(3))
        stopped = self.engine.stop()
        self.clock.advance(4.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(self.engine.metrics.app("a").requeued, 3)
        store = SpoolStore(self.path)
        self.addCleanup(store.close)
        rec = store.recover(now=0)
        self.assertEqual(len(rec.notifications), 3)
        self.assertEqual(rec.resumed_inflight, 0)  # known unsent: not counted as duplicates

    def test_stop_with_unknown_outcomes_records_them(self) -> None:
        self.sender.stop_outcome = Outcome.UNKNOWN
        accepted = self.successResultOf(self.submit_and_turn(2))
        stopped = self.engine.stop()
        self.clock.advance(5)
        self.successResultOf(stopped)
        store = SpoolStore(self.path)
        self.addCleanup(store.close)
        view = store.job(accepted.job_id)
        assert view is not None
        self.assertEqual(view.counts["unknown"], 2)
        self.assertTrue(view.done)

    def test_failing_sender_stop_still_closes_spool(self) -> None:
        def broken_stop(timeout: float = 10.0) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            d.errback(RuntimeError("stop broke"))
            return d

        self.sender.stop = broken_stop  # type: ignore[method-assign]
        self.result(self.engine.stop())
        self.assertTrue(self.store.closed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_cancels_timers(self) -> None:
        now = self.clock.seconds()
        self.successResultOf(self.submit_and_turn(1, send_at=now + 100))
        self.assertTrue(self.clock.getDelayedCalls())
        self.result(self.engine.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(RuntimeError, self.engine.stop)


class PurgeTests(Harness):
    def test_periodic_purge(self) -> None:
        self.engine = self.fresh(purge_interval=60, retention=100)
        self.start()
        accepted = self.successResultOf(self.submit_and_turn(1))
        self.sender.answer_all()
        self.turn()
        self.clock.advance(60)
        self.assertIsNotNone(self.store.job(accepted.job_id))  # finished, not yet old enough
        self.clock.advance(60)
        self.assertIsNone(self.store.job(accepted.job_id))
        self.result(self.engine.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WebhookTests(Harness):
    def test_dead_tokens_posted_in_one_batch(self) -> None:
        agent = FakeAgent()
        hook = InvalidTokenWebhook(agent, "http://127.0.0.1:1/hook", self.clock)
        self.engine.webhook = hook
        self.start()
        self.successResultOf(self.submit_and_turn(3))
        for _ in range(3):
            self.sender.answer(0, Outcome.REJECTED, status=410, reason="Unregistered")
        self.turn()
        self.assertEqual(len(agent.requests), 1)
        method, uri, headers, body = agent.requests[0]
        self.assertEqual((method, uri), (b"POST", b"http://127.0.0.1:1/hook"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        entries = json.loads(body)["invalid_tokens"]
        self.assertEqual([e["token"] for e in entries], [token(0), token(1), token(2)])
        self.assertEqual(hook.posted, 3)

    def test_failed_post_is_logged(self) -> None:
        agent = FakeAgent(500)
        hook = InvalidTokenWebhook(agent, "http://127.0.0.1:1/hook", self.clock)
        hook.notify("a", token(1), None, "Unregistered", 410)
        self.turn()
        self.assertEqual((hook.posted, hook.failed), (0, 1))
        hook.notify("a", token(2), None, "Unregistered", 410)
        self.successResultOf(hook.stop())  # posts what is pending at once
        self.assertEqual(len(agent.requests), 2)
