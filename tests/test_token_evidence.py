"""Kinds of invalid-token evidence, and the wrong-environment detector (sans-IO)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core import Notification, Outcome, Result
from txapns.core.token_evidence import (
    EvidenceKind,
    MismatchDetector,
    MismatchPolicy,
    Verdict,
    answered_by_apns,
    environment_verdict,
    evidence_kind,
    mismatch_message,
    recorded_kind,
)

N = Notification.create("ab" * 32, {"aps": {"alert": "x"}})


def tok(i: int) -> bytes:
    return i.to_bytes(32, "big")


class EvidenceKindTests(SynchronousTestCase):
    def test_kinds(self) -> None:
        when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        cases = [
            (Result(N, Outcome.REJECTED, 410, "Unregistered", timestamp=when), "unregistered"),
            (Result(N, Outcome.REJECTED, 410, "ExpiredToken"), "unregistered"),
            (Result(N, Outcome.REJECTED, 400, "BadDeviceToken"), "bad_token"),
            (Result(N, Outcome.REJECTED, 8, "InvalidToken"), "invalid_token"),
            (Result(N, Outcome.REJECTED, 400, "DeviceTokenNotForTopic"), None),
            (Result(N, Outcome.REJECTED, 403, "InvalidProviderToken"), None),
            (Result(N, Outcome.ACCEPTED, 200), None),
            (Result(N, Outcome.REJECTED, 410, "Unregistered", local="attempts"), None),
        ]
        self.assertEqual([evidence_kind(r) for r, _ in cases], [k for _, k in cases])
        self.assertEqual(EvidenceKind.FEEDBACK, "feedback")

    def test_answered_by_apns(self) -> None:
        self.assertTrue(answered_by_apns(Result(N, Outcome.ACCEPTED, 200)))
        self.assertTrue(answered_by_apns(Result(N, Outcome.REJECTED, 400, "BadDeviceToken")))
        self.assertFalse(answered_by_apns(Result(N, Outcome.UNKNOWN, reason="timeout")))
        self.assertFalse(answered_by_apns(Result(N, Outcome.REJECTED, local="validation")))


class DetectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = MismatchPolicy(window=60.0, min_tokens=5, ratio=0.5)
        self.d = MismatchDetector(self.policy)

    def test_all_bad_across_many_tokens_is_a_mismatch(self) -> None:
        for i in range(4):
            self.d.observe(100.0 + i, tok(i), True)
            self.assertEqual(self.d.verdict(100.0 + i), Verdict.UNDECIDED)
        self.d.observe(104.0, tok(4), True)
        self.assertEqual(self.d.verdict(104.0), Verdict.MISMATCH)
        self.assertEqual(self.d.counts(104.0), (5, 5, 5))

    def test_one_token_again_and_again_is_no_mismatch(self) -> None:
        for i in range(50):
            self.d.observe(100.0 + i / 10, tok(1), True)
        self.assertEqual(self.d.verdict(105.0), Verdict.UNDECIDED)

    def test_a_minority_of_bad_answers_is_clean_at_once(self) -> None:
        self.d.observe(100.0, tok(0), True)
        self.assertEqual(self.d.verdict(100.0), Verdict.UNDECIDED)
        self.d.observe(100.0, tok(1), False)
        self.assertEqual(self.d.verdict(100.0), Verdict.UNDECIDED)  # 1 of 2 is "mostly"
        self.d.observe(100.0, tok(2), False)
        self.assertEqual(self.d.verdict(100.0), Verdict.CLEAN)

    def test_mixed_stream_with_a_few_bad_tokens_stays_clean(self) -> None:
        for i in range(200):
            self.d.observe(100.0 + i / 10, tok(i), i % 10 == 0)
        self.assertEqual(self.d.verdict(120.0), Verdict.CLEAN)

    def test_the_window_slides(self) -> None:
        for i in range(12):
            self.d.observe(100.0, tok(i), False)
        for i in range(10, 20):
            self.d.observe(130.0, tok(i), True)
        self.assertEqual(self.d.verdict(130.0), Verdict.CLEAN)  # 10 of 22
        # The good answers at 100 leave the 60 s window; the bad ones at 130 are all left.
        self.assertEqual(self.d.counts(165.0), (10, 10, 5))  # tokens counted up to min_tokens
        self.assertEqual(self.d.verdict(165.0), Verdict.MISMATCH)
        self.assertEqual(self.d.counts(300.0), (0, 0, 0))
        self.d.reset()
        self.assertEqual(self.d.counts(130.0), (0, 0, 0))

    def test_disabled(self) -> None:
        d = MismatchDetector(MismatchPolicy(min_tokens=0))
        for i in range(100):
            d.observe(1.0, tok(i), True)
        self.assertEqual(d.verdict(1.0), Verdict.CLEAN)

    def test_policy_checks(self) -> None:
        self.assertRaises(ValueError, MismatchPolicy, window=0)
        self.assertRaises(ValueError, MismatchPolicy, ratio=0)
        self.assertRaises(ValueError, MismatchPolicy, ratio=1.5)
        self.assertRaises(ValueError, MismatchPolicy, min_tokens=-1)

    def test_message_names_the_setting(self) -> None:
        text = mismatch_message(EvidenceKind.BAD_TOKEN, 40, 40, 10)
        self.assertIn("most tokens are rejected as BadDeviceToken: is `environment` right?", text)
        self.assertIn("InvalidToken", mismatch_message(EvidenceKind.INVALID_TOKEN, 1, 1, 1))

    @given(st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=300))
    def test_memory_is_bounded_and_counts_add_up(self, answers: list[tuple[int, bool]]) -> None:
        d = MismatchDetector(MismatchPolicy(window=60.0, min_tokens=5))
        for t, suspect in answers:
            d.observe(1000.0, tok(t), suspect)
        total, suspects, tokens = d.counts(1000.0)
        self.assertEqual((total, suspects), (len(answers), sum(s for _, s in answers)))
        self.assertLessEqual(tokens, 5)
        self.assertLessEqual(sum(len(b.tokens) for b in d._buckets), 5 * len(d._buckets))


class DetectorEdgeTests(SynchronousTestCase):
    """Bucket and window edges, and the policy's bounds and messages (mutation testing)."""

    def test_buckets_are_a_thirtieth_of_the_window_and_end_where_the_next_starts(self) -> None:
        d = MismatchDetector(MismatchPolicy(window=60.0, min_tokens=5))
        d.observe(100.0, tok(0), True)
        d.observe(101.99, tok(1), True)
        self.assertEqual(len(d._buckets), 1)
        d.observe(102.0, tok(2), True)  # 60 / 30 = 2 s: a new bucket starts exactly here
        self.assertEqual(len(d._buckets), 2)
        # Short digests only: memory stays small whatever the token.
        self.assertEqual({len(t) for b in d._buckets for t in b.tokens}, {8})

    def test_a_bucket_leaves_the_window_when_its_end_does(self) -> None:
        d = MismatchDetector(MismatchPolicy(window=60.0, min_tokens=5))
        d.observe(100.0, tok(0), True)  # the bucket [100, 102)
        self.assertEqual(d.counts(161.0), (1, 1, 1))
        self.assertEqual(d.counts(161.99), (1, 1, 1))
        self.assertEqual(d.counts(162.0), (0, 0, 0))

    def test_policy_bounds_and_messages(self) -> None:
        for kwargs, message in [
            ({"window": 0}, "window must be positive, hold and min_tokens not negative"),
            ({"hold": -1}, "window must be positive, hold and min_tokens not negative"),
            ({"min_tokens": -1}, "window must be positive, hold and min_tokens not negative"),
            ({"ratio": 0}, "ratio must be in (0, 1]"),
            ({"ratio": 1.01}, "ratio must be in (0, 1]"),
        ]:
            with self.assertRaises(ValueError) as cm:
                MismatchPolicy(**kwargs)  # type: ignore[arg-type]
            self.assertEqual(str(cm.exception), message, kwargs)
        # The bounds themselves are allowed.
        MismatchPolicy(window=0.5, hold=0, min_tokens=0, ratio=1)
        MismatchPolicy(hold=0.5)

    def test_messages_name_the_reason(self) -> None:
        for kind, reason in [
            (EvidenceKind.INVALID_TOKEN, "InvalidToken"),
            (EvidenceKind.BAD_TOKEN, "BadDeviceToken"),
            ("bad_token", "BadDeviceToken"),
        ]:
            self.assertEqual(
                mismatch_message(kind, 40, 30, 10),
                f"most tokens are rejected as {reason}: is `environment` right? (a token of "
                "the other environment gets the same answer); 30 of 40 recent answers, 10+ "
                "different tokens",
            )


class RecordedKindTests(SynchronousTestCase):
    def test_kinds_of_old_rows(self) -> None:
        cases = [
            (("feedback", None, None), EvidenceKind.FEEDBACK),
            (("feedback", 8, "BadDeviceToken"), EvidenceKind.FEEDBACK),
            (("result", 8, None), EvidenceKind.INVALID_TOKEN),
            (("result", 9, None), EvidenceKind.UNREGISTERED),
            (("result", 400, "BadDeviceToken"), EvidenceKind.BAD_TOKEN),
            (("result", 400, "baddevicetoken"), EvidenceKind.UNREGISTERED),
            (("result", 410, "Unregistered"), EvidenceKind.UNREGISTERED),
        ]
        self.assertEqual([recorded_kind(*args) for args, _ in cases], [k for _, k in cases])


def _bad() -> Result:
    return Result(N, Outcome.REJECTED, 400, "BadDeviceToken")


def _ok() -> Result:
    return Result(N, Outcome.ACCEPTED, 200)


def _gone() -> Result:
    return Result(N, Outcome.REJECTED, 410, "Unregistered")


def _timeout() -> Result:
    return Result(N, Outcome.UNKNOWN, reason="timeout")


class EnvironmentVerdictTests(SynchronousTestCase):
    """Every line ``txapns doctor --token`` can print, word for word."""

    def test_no_answer(self) -> None:
        self.assertEqual(
            environment_verdict("sandbox", [_timeout(), _timeout()], [_ok()]),
            (False, "no answer from APNs to the 2 token probe(s) in sandbox"),
        )

    def test_fits(self) -> None:
        for here, fit, answered in [
            ([_ok()], 1, 1),
            ([_gone(), _ok(), _timeout()], 2, 2),  # Unregistered: a token of this environment
            ([_ok(), _ok(), _bad()], 2, 3),
            ([_ok(), _ok(), _ok(), _bad()], 3, 4),
        ]:
            self.assertEqual(
                environment_verdict("production", here, None),
                (
                    True,
                    f"environment 'production' fits: {fit} of {answered} "
                    "probed token(s) accepted or known",
                ),
            )

    def test_half_bad_is_suspect(self) -> None:
        ok, line = environment_verdict("production", [_ok(), _bad()], None)
        self.assertFalse(ok)
        self.assertIn("is `environment` right?", line)

    def test_wrong_environment(self) -> None:
        for environment, other in [("production", "sandbox"), ("sandbox", "production")]:
            self.assertEqual(
                environment_verdict(environment, [_bad(), _bad()], [_ok(), _timeout()]),
                (
                    False,
                    f"most tokens are rejected as BadDeviceToken in {environment} and accepted "
                    f"in {other}: set environment = {other!r}",
                ),
            )

    def test_other_not_probed(self) -> None:
        self.assertEqual(
            environment_verdict("production", [_bad()], None),
            (
                False,
                "most tokens are rejected as BadDeviceToken in production: is `environment` "
                "right? (the other environment was not probed)",
            ),
        )

    def test_bad_in_both(self) -> None:
        for there in ([], [_timeout()], [_bad()], [_ok(), _bad()]):
            self.assertEqual(
                environment_verdict("sandbox", [_bad()], there),
                (
                    False,
                    "the probed tokens are rejected as BadDeviceToken in sandbox, and not "
                    "accepted in production either: they are not tokens of this app (check "
                    "bundle_id and the tokens)",
                ),
            )
