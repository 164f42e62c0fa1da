"""Results, the exception tree, the counters' invariant and the reconnect backoff."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import txapns.core as core
from txapns.core import errors
from txapns.core.backoff import Backoff
from txapns.core.counters import Counters
from txapns.core.notification import Notification
from txapns.core.result import Outcome, Result

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200)

N = Notification.create("ab" * 32, {"aps": {"alert": "x"}})


def rejected(status: int | None, reason: str | None, local: str | None = None) -> Result:
    return Result(N, Outcome.REJECTED, status=status, reason=reason, local=local)


class ResultTests(SynchronousTestCase):
    def test_outcome_values(self) -> None:
        self.assertEqual([o.value for o in Outcome], ["accepted", "rejected", "unknown"])

    def test_defaults(self) -> None:
        r = Result(N, Outcome.ACCEPTED)
        self.assertEqual(
            tuple(r),
            (N, Outcome.ACCEPTED, None, None, None, None, None, 0, None, None, False),
        )
        self.assertEqual(
            Result._fields,
            (
                "notification",
                "outcome",
                "status",
                "reason",
                "apns_id",
                "apns_unique_id",
                "timestamp",
                "attempts",
                "latency",
                "local",
                "may_duplicate",
            ),
        )

    def test_exactly_one_outcome_property(self) -> None:
        self.assertEqual(
            {o: (r.accepted, r.rejected, r.unknown) for o in Outcome for r in [Result(N, o)]},
            {
                Outcome.ACCEPTED: (True, False, False),
                Outcome.REJECTED: (False, True, False),
                Outcome.UNKNOWN: (False, False, True),
            },
        )

    def test_token_invalid_when_apns_says_the_token_is_dead(self) -> None:
        when = datetime(2026, 1, 1, tzinfo=UTC)
        dead = [
            rejected(8, "InvalidToken"),  # binary status 8
            rejected(410, "Unregistered"),
            rejected(410, "ExpiredToken"),
            rejected(410, None),
            rejected(400, "BadDeviceToken"),
            Result(N, Outcome.REJECTED, 410, "Unregistered", timestamp=when),
        ]
        for r in dead:
            self.assertTrue(r.token_invalid, r)

    def test_token_invalid_false_otherwise(self) -> None:
        alive = [
            rejected(400, "DeviceTokenNotForTopic"),  # the token is fine, the topic is not
            rejected(400, "BadTopic"),
            rejected(400, "MissingDeviceToken"),
            rejected(403, "BadCertificateEnvironment"),
            rejected(413, "PayloadTooLarge"),
            rejected(429, "TooManyRequests"),
            rejected(5, "InvalidTokenSize"),  # our encoder's bug, not a dead token
            rejected(7, "InvalidPayloadSize"),
            rejected(8, "ProcessingError"),
            rejected(None, None),
            # Decided locally, not by APNs: never prune on those.
            rejected(410, "Unregistered", local="attempts"),
            rejected(None, "BadDeviceToken", local="invalid"),
            rejected(8, "InvalidToken", local="tls"),
            # Not a rejection.
            Result(N, Outcome.ACCEPTED, 200),
            Result(N, Outcome.UNKNOWN, 410, "Unregistered"),
            Result(N, Outcome.UNKNOWN, None, "BadDeviceToken"),
        ]
        for r in alive:
            self.assertFalse(r.token_invalid, r)

    def test_str(self) -> None:
        self.assertEqual(str(Result(N, Outcome.ACCEPTED, 200)), "accepted 200")
        self.assertEqual(str(Result(N, Outcome.ACCEPTED)), "accepted")
        self.assertEqual(str(rejected(8, "InvalidToken")), "rejected 8 InvalidToken")
        self.assertEqual(str(rejected(410, "Unregistered")), "rejected 410 Unregistered")
        self.assertEqual(str(rejected(None, "tls", local="tls")), "rejected tls")
        self.assertEqual(
            str(Result(N, Outcome.UNKNOWN, reason="silent-close")), "unknown silent-close"
        )
        self.assertEqual(str(Result(N, Outcome.UNKNOWN, reason="")), "unknown")

    def test_str_and_repr_never_have_the_full_token(self) -> None:
        r = rejected(8, "InvalidToken")
        self.assertNotIn("ab" * 32, str(r))
        self.assertNotIn("ab" * 32, repr(r))

    def test_immutable(self) -> None:
        r = rejected(400, "BadTopic")
        with self.assertRaises(AttributeError):
            r.outcome = Outcome.ACCEPTED  # type: ignore[misc]
        self.assertEqual(r._replace(attempts=2).attempts, 2)
        self.assertEqual(r.attempts, 0)


class ErrorTreeTests(SynchronousTestCase):
    def test_validation_errors(self) -> None:
        for cls in (
            errors.InvalidTokenError,
            errors.PayloadError,
            errors.PayloadTooLargeError,
            errors.InvalidPriorityError,
            errors.MissingTopicError,
            errors.InvalidFieldError,
            errors.InvalidChannelIdError,
        ):
            self.assertTrue(issubclass(cls, errors.ValidationError), cls)
            self.assertTrue(issubclass(cls, ValueError), cls)
            self.assertTrue(issubclass(cls, errors.APNsError), cls)
        self.assertTrue(issubclass(errors.PayloadTooLargeError, errors.PayloadError))
        self.assertTrue(issubclass(errors.InvalidChannelIdError, errors.InvalidFieldError))

    def test_other_errors_are_not_validation_errors(self) -> None:
        for cls in (
            errors.ProtocolError,
            errors.QueueFullError,
            errors.ClientStoppedError,
            errors.ConnectionFailedError,
            errors.TLSFailureError,
            errors.CredentialError,
            errors.CircuitOpenError,
            errors.RequestError,
            errors.ChannelError,
        ):
            self.assertTrue(issubclass(cls, errors.APNsError), cls)
            self.assertFalse(issubclass(cls, errors.ValidationError), cls)
            self.assertFalse(issubclass(cls, ValueError), cls)
        self.assertTrue(issubclass(errors.TLSFailureError, errors.ConnectionFailedError))
        self.assertTrue(issubclass(errors.ChannelError, errors.RequestError))
        self.assertTrue(issubclass(errors.APNsError, Exception))

    def test_payload_too_large(self) -> None:
        e = errors.PayloadTooLargeError(4100, 4096, "HTTP/2")
        self.assertEqual((e.size, e.limit, e.protocol), (4100, 4096, "HTTP/2"))
        self.assertEqual(
            str(e), "payload is 4100 bytes; the HTTP/2 limit is 4096 bytes (4 bytes too many)"
        )

    def test_request_and_channel_errors(self) -> None:
        e = errors.ChannelError(
            "no", status=400, reason="BadChannelId", local=None, unknown=False, channel_id="c"
        )
        self.assertEqual(
            (str(e), e.status, e.reason, e.local, e.unknown, e.channel_id),
            ("no", 400, "BadChannelId", None, False, "c"),
        )
        r = errors.RequestError("timed out", reason="timeout", unknown=True)
        self.assertEqual((r.status, r.reason, r.local, r.unknown), (None, "timeout", None, True))

    def test_exported_from_core(self) -> None:
        for name in (
            "APNsError",
            "ValidationError",
            "InvalidTokenError",
            "PayloadError",
            "PayloadTooLargeError",
            "InvalidPriorityError",
            "MissingTopicError",
            "InvalidFieldError",
        ):
            self.assertIn(name, core.__all__)
            self.assertIs(getattr(core, name), getattr(errors, name))


class CountersTests(SynchronousTestCase):
    def test_fresh(self) -> None:
        c = Counters()
        c.check(0)
        self.assertEqual(c.finished(), 0)
        self.assertRaises(AssertionError, c.check, 1)

    def test_records(self) -> None:
        c = Counters()
        c.submitted = 6
        c.record_accepted()
        c.record_accepted(2)
        c.record(rejected(None, "BadDeviceToken"))
        c.record(rejected(None, "BadDeviceToken"))
        c.record(Result.unknown_for(N, "silent-close"))
        self.assertEqual((c.accepted, c.rejected, c.unknown, c.finished()), (3, 2, 1, 6))
        self.assertEqual(dict(c.rejected_by_reason), {"BadDeviceToken": 2})
        self.assertEqual(dict(c.unknown_by_reason), {"silent-close": 1})
        c.check(0)

    def test_invariant(self) -> None:
        c = Counters(submitted=5, accepted=2, rejected=1, unknown=1)
        c.check(1)
        with self.assertRaises(AssertionError) as cm:
            c.check(0)
        self.assertEqual(
            str(cm.exception),
            "counters do not sum: submitted=5 accepted=2 rejected=1 unknown=1 pending=0",
        )
        self.assertRaises(AssertionError, c.check, 2)

    def test_record_labels_by_counter_key_and_counts_duplicates(self) -> None:
        c = Counters(submitted=5)
        c.record(Result.accepted_for(N, 2, 0.1, may_duplicate=True, status=200))
        c.record(rejected(None, "ignored", local="tls"))
        c.record(rejected(500, "InternalServerError", local="attempts"))
        c.record(Result.unknown_for(N, "connection closed with no reply", local="silent-close"))
        c.record(Result.unknown_for(N, "timeout"))
        self.assertEqual((c.accepted, c.rejected, c.unknown, c.may_duplicate), (1, 2, 2, 1))
        self.assertEqual(dict(c.rejected_by_reason), {"tls": 1, "InternalServerError": 1})
        self.assertEqual(dict(c.unknown_by_reason), {"silent-close": 1, "timeout": 1})
        c.check(0)

    def test_named_constructors(self) -> None:
        ok = Result.accepted_for(N, 1, 0.5, status=200, apns_id="a", apns_unique_id="u")
        self.assertEqual(
            (ok.outcome, ok.status, ok.apns_id, ok.apns_unique_id, ok.attempts, ok.latency),
            (Outcome.ACCEPTED, 200, "a", "u", 1, 0.5),
        )
        no = Result.rejected_for(N, "BadDeviceToken", status=400, attempts=1)
        self.assertEqual(
            (no.outcome, no.status, no.reason, no.local),
            (Outcome.REJECTED, 400, "BadDeviceToken", None),
        )
        self.assertTrue(no.token_invalid)
        maybe = Result.unknown_for(N, "timeout", attempts=2, may_duplicate=True)
        self.assertEqual(
            (maybe.outcome, maybe.reason, maybe.may_duplicate), (Outcome.UNKNOWN, "timeout", True)
        )

    def test_instances_do_not_share_reason_counters(self) -> None:
        a, b = Counters(), Counters()
        a.record(rejected(None, "x"))
        self.assertEqual(dict(b.rejected_by_reason), {})

    def test_window_high_water(self) -> None:
        c = Counters()
        for size in (3, 10, 4, 10, 9):
            c.note_window(size)
        self.assertEqual(c.window_high_water, 10)

    def test_as_dict(self) -> None:
        c = Counters(submitted=3, retried=1, replayed=2, resent_unknown=1, connections_made=2)
        c.record_accepted()
        c.record(rejected(None, "InvalidToken"))
        c.record(Result.unknown_for(N, "timeout"))
        c.reconnects = 1
        c.connection_failures = 4
        c.note_window(7)
        self.assertEqual(
            c.as_dict(),
            {
                "submitted": 3,
                "accepted": 1,
                "rejected": 1,
                "unknown": 1,
                "rejected_by_reason": {"InvalidToken": 1},
                "unknown_by_reason": {"timeout": 1},
                "retried": 1,
                "replayed": 2,
                "resent_unknown": 1,
                "may_duplicate": 0,
                "connections_made": 2,
                "reconnects": 1,
                "connection_failures": 4,
                "window_high_water": 7,
            },
        )

    @DETERMINISTIC
    @given(
        st.lists(st.sampled_from(["submit", "accept", "reject", "unknown", "retry"]), max_size=80)
    )
    def test_invariant_holds_through_any_history(self, events: list[str]) -> None:
        c = Counters()
        pending = 0
        for event in events:
            if event == "submit":
                c.submitted += 1
                pending += 1
            elif pending and event == "accept":
                c.record_accepted()
                pending -= 1
            elif pending and event == "reject":
                c.record(rejected(None, "BadDeviceToken"))
                pending -= 1
            elif pending and event == "unknown":
                c.record(Result.unknown_for(N, "timeout"))
                pending -= 1
            elif event == "retry":
                c.retried += 1  # a retry is not a new submission
            c.check(pending)
            self.assertEqual(c.submitted, c.accepted + c.rejected + c.unknown + pending)
            self.assertRaises(AssertionError, c.check, pending + 1)
            if pending:
                self.assertRaises(AssertionError, c.check, pending - 1)
        self.assertEqual(sum(c.rejected_by_reason.values()), c.rejected)
        self.assertEqual(sum(c.unknown_by_reason.values()), c.unknown)


class BackoffTests(SynchronousTestCase):
    def test_no_failures_no_delay(self) -> None:
        b = Backoff()
        for failures in (0, -1, -100):
            self.assertEqual(b.delay(failures, 0.9), 0.0)

    def test_grows_and_is_capped(self) -> None:
        b = Backoff(jitter=0.0)
        self.assertEqual(
            [b.delay(f, 0.3) for f in range(1, 11)],
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0],
        )
        self.assertEqual(b.delay(10**9, 0.3), 60.0)  # no overflow after a very long outage

    def test_custom_parameters(self) -> None:
        b = Backoff(initial=1.0, factor=3.0, cap=10.0, jitter=0.0)
        self.assertEqual([b.delay(f, 0.0) for f in range(1, 5)], [1.0, 3.0, 9.0, 10.0])

    def test_jitter_bounds(self) -> None:
        b = Backoff()  # ±20 %
        self.assertAlmostEqual(b.delay(1, 0.0), 0.4)
        self.assertAlmostEqual(b.delay(1, 0.5), 0.5)
        self.assertAlmostEqual(b.delay(1, 0.999999), 0.6, places=5)
        self.assertAlmostEqual(b.delay(3, 0.0), 1.6)
        self.assertAlmostEqual(b.delay(3, 0.75), 2.2)
        # At the cap, jitter only shortens the delay.
        self.assertAlmostEqual(b.delay(20, 0.0), 48.0)
        self.assertEqual(b.delay(20, 0.999), 60.0)

    def test_seeded_rng(self) -> None:
        b = Backoff()

        def run(seed: int) -> list[float]:
            rng = random.Random(seed)
            return [b.delay(f, rng.random()) for f in range(1, 16)]

        first = run(2026)
        self.assertEqual(first, run(2026))
        self.assertNotEqual(first, run(2027))
        bases = [min(60.0, 0.5 * 2 ** (f - 1)) for f in range(1, 16)]
        for delay, base in zip(first, bases, strict=True):
            self.assertGreaterEqual(delay, base * 0.8)
            self.assertLessEqual(delay, min(60.0, base * 1.2))
        # Jittered: not simply the base delays.
        self.assertNotEqual(first, bases)
        self.assertGreater(len(set(first[8:])), 1)  # even at the cap

    def test_immutable(self) -> None:
        with self.assertRaises(dataclasses.FrozenInstanceError):
            Backoff().cap = 1.0  # type: ignore[misc]

    @DETERMINISTIC
    @given(
        failures=st.integers(min_value=1, max_value=10_000),
        rnd=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
        initial=st.floats(min_value=0.001, max_value=10.0),
        factor=st.floats(min_value=1.0, max_value=4.0),
        cap=st.floats(min_value=0.001, max_value=3600.0),
        jitter=st.floats(min_value=0.0, max_value=1.0),
    )
    def test_always_within_bounds(
        self, failures: int, rnd: float, initial: float, factor: float, cap: float, jitter: float
    ) -> None:
        b = Backoff(initial=initial, factor=factor, cap=cap, jitter=jitter)
        delay = b.delay(failures, rnd)
        base = min(cap, initial * factor ** min(failures - 1, 64))
        self.assertGreaterEqual(delay, 0.0)
        self.assertLessEqual(delay, cap)
        self.assertGreaterEqual(delay, base * (1 - jitter) * (1 - 1e-9))
        self.assertLessEqual(delay, base * (1 + jitter) * (1 + 1e-9))
        # More failures never mean a shorter un-jittered delay.
        calm = Backoff(initial=initial, factor=factor, cap=cap, jitter=0.0)
        self.assertLessEqual(calm.delay(failures, rnd), calm.delay(failures + 1, rnd))
