"""The sans-IO circuit breaker and the model helpers that moved to the core: no reactor, no
clock; the time is an argument."""

from __future__ import annotations

import re
import uuid

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.breaker import BreakerState, CircuitBreaker
from txapns.core.http2_policy import goaway_reason
from txapns.core.notification import Notification, new_apns_id
from txapns.core.result import UNKNOWN_TIMEOUT, Outcome, Result, UnknownPolicy, counter_key

N = Notification.create("ab" * 32, {"aps": {"alert": "x"}})


class BreakerTests(SynchronousTestCase):
    def test_starts_closed(self) -> None:
        b = CircuitBreaker(300)
        self.assertIs(b.state, BreakerState.CLOSED)
        self.assertEqual(b.state, "closed")
        self.assertEqual((b.reason, b.status, b.half_open_at), (None, None, None))

    def test_open_records_why_and_when_it_may_half_open(self) -> None:
        b = CircuitBreaker(300)
        self.assertTrue(b.open(403, "InvalidProviderToken", 1000.0))
        self.assertTrue(b.is_open)
        self.assertEqual(
            (b.reason, b.status, b.half_open_at), ("InvalidProviderToken", 403, 1300.0)
        )

    def test_open_again_while_open_changes_nothing(self) -> None:
        b = CircuitBreaker(300)
        b.open(403, "InvalidProviderToken", 1000.0)
        self.assertFalse(b.open(None, "BadCertificate", 1100.0))
        self.assertEqual(
            (b.reason, b.status, b.half_open_at), ("InvalidProviderToken", 403, 1300.0)
        )

    def test_half_opens_only_when_due(self) -> None:
        b = CircuitBreaker(300)
        self.assertFalse(b.half_open(5000.0))  # closed: nothing to do
        b.open(403, "Forbidden", 1000.0)
        self.assertFalse(b.half_open(1299.0))
        self.assertTrue(b.is_open)
        self.assertTrue(b.half_open(1300.0))
        self.assertIs(b.state, BreakerState.HALF_OPEN)
        self.assertEqual(b.state, "half-open")
        self.assertEqual(b.reason, "Forbidden")  # still says why until a probe is answered
        self.assertIsNone(b.half_open_at)  # no timer to arm while half-open

    def test_due_within_a_microsecond(self) -> None:
        # A timer that fires a hair early (float arithmetic) still half-opens: the slack is
        # 1e-6 s, and exactly at the slack's edge counts as due.
        b = CircuitBreaker(1e-6)
        b.open(403, "Forbidden", 0.0)
        self.assertTrue(b.half_open(0.0))

    def test_probe_answered_closes_only_a_half_open_breaker(self) -> None:
        b = CircuitBreaker(300)
        self.assertFalse(b.probe_answered())
        b.open(403, "Forbidden", 0.0)
        self.assertFalse(b.probe_answered())
        self.assertTrue(b.is_open)
        b.half_open(300.0)
        self.assertTrue(b.probe_answered())
        self.assertIs(b.state, BreakerState.CLOSED)
        self.assertEqual((b.reason, b.status), (None, None))

    def test_a_refused_probe_opens_it_again_for_a_full_period(self) -> None:
        b = CircuitBreaker(60)
        b.open(403, "Forbidden", 0.0)
        b.half_open(60.0)
        self.assertTrue(b.open(403, "InvalidProviderToken", 61.0))
        self.assertEqual((b.reason, b.half_open_at), ("InvalidProviderToken", 121.0))

    def test_reset_must_be_positive(self) -> None:
        for bad in (0, -1.0):
            with self.assertRaises(ValueError) as cm:
                CircuitBreaker(bad)
            self.assertEqual(str(cm.exception), "reset must be positive")
        self.assertEqual(CircuitBreaker(0.5).reset, 0.5)  # below a second is fine


class ModelHelperTests(SynchronousTestCase):
    def test_new_apns_id_is_a_canonical_v4_uuid(self) -> None:
        ids = {new_apns_id() for _ in range(200)}
        self.assertEqual(len(ids), 200)
        for text in ids:
            u = uuid.UUID(text)
            self.assertEqual((u.version, u.variant, str(u)), (4, uuid.RFC_4122, text))
            self.assertTrue(re.fullmatch(r"[0-9a-f-]{36}", text))

    def test_goaway_reason(self) -> None:
        self.assertEqual(goaway_reason(b'{"reason":"Shutdown"}'), "Shutdown")
        for debug in (b"", b"not json", b"\xff", b"[1]", b'{"reason": 3}', b"{}"):
            self.assertIsNone(goaway_reason(debug), debug)

    def test_counter_key(self) -> None:
        def r(outcome: Outcome, **kw: object) -> Result:
            return Result(N, outcome, **kw)  # type: ignore[arg-type]

        self.assertEqual(counter_key(r(Outcome.REJECTED, reason="x", local="tls")), "tls")
        self.assertEqual(
            counter_key(r(Outcome.REJECTED, status=429, reason="TooMany", local="attempts")),
            "TooMany",
        )
        self.assertEqual(counter_key(r(Outcome.REJECTED, status=500, local="attempts")), "500")
        self.assertEqual(counter_key(r(Outcome.UNKNOWN, reason=UNKNOWN_TIMEOUT)), "timeout")
        self.assertEqual(counter_key(r(Outcome.UNKNOWN)), "unknown")

    def test_unknown_policy_is_importable_from_its_old_home(self) -> None:
        from txapns.core import binary_channel, http2_policy
        from txapns.http2 import UnknownPolicy as FromHttp2

        self.assertIs(binary_channel.UnknownPolicy, UnknownPolicy)
        self.assertIs(http2_policy.UnknownPolicy, UnknownPolicy)
        self.assertIs(FromHttp2, UnknownPolicy)
