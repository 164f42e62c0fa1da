"""HTTP/2 response classification and retry policy (core.http2_policy), table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.backoff import Backoff
from txapns.core.binary_channel import UnknownPolicy
from txapns.core.http2_policy import (
    CIRCUIT_REASONS,
    Action,
    APNsResponse,
    Decision,
    RetryPolicy,
    classify,
    parse_response,
    refreshes_token,
)
from txapns.core.result import Outcome

A = Action

#: (status, reason, action): Apple's table in docs/apns.rst (Responses), row by row.
CLASSIFICATION = [
    (200, None, A.ACCEPTED),
    # 400: caller bugs, don't retry.
    (400, "BadCollapseId", A.REJECTED),
    (400, "BadExpirationDate", A.REJECTED),
    (400, "BadMessageId", A.REJECTED),
    (400, "BadPriority", A.REJECTED),
    (400, "BadTopic", A.REJECTED),
    (400, "DuplicateHeaders", A.REJECTED),
    (400, "InvalidPushType", A.REJECTED),
    (400, "MissingDeviceToken", A.REJECTED),
    (400, "MissingTopic", A.REJECTED),
    (400, "PayloadEmpty", A.REJECTED),
    (400, "TopicDisallowed", A.REJECTED),
    # 400: the token is wrong or of the other environment.
    (400, "BadDeviceToken", A.REJECTED),
    (400, "DeviceTokenNotForTopic", A.REJECTED),
    # 400 IdleTimeout: reconnect and re-send.
    (400, "IdleTimeout", A.RETRY_NEW_CONNECTION),
    # 403: credentials.
    (403, "BadCertificate", A.CIRCUIT_OPEN),
    (403, "BadCertificateEnvironment", A.CIRCUIT_OPEN),
    (403, "Forbidden", A.CIRCUIT_OPEN),
    (403, "InvalidProviderToken", A.CIRCUIT_OPEN),
    (403, "MissingProviderToken", A.CIRCUIT_OPEN),
    (403, "BadEnvironmentKeyIdInToken", A.CIRCUIT_OPEN),
    (403, "BadEnvironmentKeyInToken", A.CIRCUIT_OPEN),
    (403, "ExpiredProviderToken", A.RETRY_NEW_CONNECTION),
    (403, "UnrelatedKeyIdInToken", A.RETRY_NEW_CONNECTION),
    (403, "SomethingNew", A.REJECTED),
    (403, None, A.REJECTED),
    # Bugs.
    (404, "BadPath", A.REJECTED),
    (405, "MethodNotAllowed", A.REJECTED),
    # Dead tokens.
    (410, "Unregistered", A.REJECTED),
    (410, "ExpiredToken", A.REJECTED),
    (413, "PayloadTooLarge", A.REJECTED),
    # 429.
    (429, "TooManyProviderTokenUpdates", A.RETRY_NEW_CONNECTION),
    (429, "TooManyRequests", A.RETRY_LATER),
    (429, None, A.RETRY_LATER),
    # 500 / 503.
    (500, "InternalServerError", A.RETRY_BACKOFF_OTHER_CONNECTION),
    (503, "ServiceUnavailable", A.RETRY_BACKOFF_OTHER_CONNECTION),
    (503, "Shutdown", A.RETRY_BACKOFF_OTHER_CONNECTION),
    (503, None, A.RETRY_BACKOFF_OTHER_CONNECTION),
    # Statuses Apple does not document.
    (201, None, A.ACCEPTED),
    (204, None, A.ACCEPTED),
    (401, "Whatever", A.REJECTED),
    (418, None, A.REJECTED),
    (451, "IdleTimeout", A.REJECTED),
    (502, None, A.RETRY_BACKOFF_OTHER_CONNECTION),
    (504, "GatewayTimeout", A.RETRY_BACKOFF_OTHER_CONNECTION),
    (302, None, A.REJECTED),
    # A reason known under one status does not leak to another.
    (400, "ExpiredProviderToken", A.REJECTED),
    (500, "InvalidProviderToken", A.RETRY_BACKOFF_OTHER_CONNECTION),
]


class ClassifyTests(SynchronousTestCase):
    def test_table(self) -> None:
        wrong = [
            (status, reason, classify(status, reason), action)
            for status, reason, action in CLASSIFICATION
            if classify(status, reason) is not action
        ]
        self.assertEqual(wrong, [])

    def test_every_circuit_reason_is_in_the_table(self) -> None:
        listed = {reason for status, reason, action in CLASSIFICATION if action is A.CIRCUIT_OPEN}
        self.assertEqual(listed, set(CIRCUIT_REASONS))

    def test_refreshes_token(self) -> None:
        table = [
            (403, "ExpiredProviderToken", True),
            (403, "InvalidProviderToken", False),
            (403, "UnrelatedKeyIdInToken", False),
            (429, "TooManyProviderTokenUpdates", False),
            (400, "ExpiredProviderToken", False),
            (200, None, False),
        ]
        self.assertEqual(
            [(s, r, refreshes_token(s, r)) for s, r, _ in table], [(s, r, e) for s, r, e in table]
        )


class ParseResponseTests(SynchronousTestCase):
    def test_table(self) -> None:
        ident = "123E4567-E89B-12D3-A456-426614174000"
        unique = "5b3f9a53-4c2b-4e5f-9b8a-0f3c6a7e2d11"
        ts = 1_700_000_000_123
        table: list[tuple[int, list[tuple[bytes, bytes]], bytes, APNsResponse]] = [
            (200, [(b"apns-id", ident.encode())], b"", APNsResponse(200, None, ident)),
            (
                200,
                [(b"apns-id", ident.encode()), (b"apns-unique-id", unique.encode())],
                b"",
                APNsResponse(200, None, ident, unique),
            ),
            (
                400,
                [(b"apns-id", ident.encode()), (b"content-type", b"application/json")],
                b'{"reason":"BadDeviceToken"}',
                APNsResponse(400, "BadDeviceToken", ident),
            ),
            (
                410,
                [(b"apns-id", ident.encode())],
                b'{"reason":"Unregistered","timestamp":%d}' % ts,
                APNsResponse(
                    410,
                    "Unregistered",
                    ident,
                    None,
                    datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
                ),
            ),
            # Robust to junk: the status still counts.
            (500, [], b"<html>oops</html>", APNsResponse(500)),
            (400, [], b"[1, 2]", APNsResponse(400)),
            (400, [], b'{"reason": 7}', APNsResponse(400)),
            (
                410,
                [],
                b'{"reason":"Unregistered","timestamp":"soon"}',
                APNsResponse(410, "Unregistered"),
            ),
            (
                410,
                [],
                b'{"reason":"Unregistered","timestamp":true}',
                APNsResponse(410, "Unregistered"),
            ),
            (
                410,
                [],
                b'{"reason":"Unregistered","timestamp":1e300}',
                APNsResponse(410, "Unregistered"),
            ),
            (400, [], b"\xff\xfe", APNsResponse(400)),
            # The first apns-id wins.
            (200, [(b"apns-id", b"A"), (b"apns-id", b"B")], b"", APNsResponse(200, None, "A")),
        ]
        got = [parse_response(status, headers, body) for status, headers, body, _ in table]
        self.assertEqual(got, [expected for *_, expected in table])

    def test_timestamp_is_aware_utc(self) -> None:
        response = parse_response(410, [], b'{"reason":"Unregistered","timestamp":0}')
        assert response.timestamp is not None
        self.assertEqual(response.timestamp.utcoffset().total_seconds(), 0)  # type: ignore[union-attr]
        self.assertEqual(response.timestamp, datetime(1970, 1, 1, tzinfo=UTC))


class RetryPolicyTests(SynchronousTestCase):
    policy = RetryPolicy(
        max_attempts=3,
        backoff=Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.0),
        too_many_requests_delay=5.0,
    )

    def test_decide_table(self) -> None:
        R, U = Outcome.REJECTED, Outcome.ACCEPTED
        table = [
            # (action, failures so far including this one, expected decision)
            (A.ACCEPTED, 1, Decision(False, U)),
            (A.REJECTED, 1, Decision(False, R)),
            (A.CIRCUIT_OPEN, 1, Decision(False, R, open_circuit=True)),
            (A.RETRY_NEW_CONNECTION, 1, Decision(True, new_connection=True)),
            (A.RETRY_NEW_CONNECTION, 2, Decision(True, new_connection=True)),
            (A.RETRY_NEW_CONNECTION, 3, Decision(False, R, new_connection=True, local="attempts")),
            (A.RETRY_LATER, 1, Decision(True, delay=5.0)),
            (A.RETRY_LATER, 2, Decision(True, delay=10.0)),
            (A.RETRY_LATER, 3, Decision(False, R, local="attempts")),
            (A.RETRY_BACKOFF_OTHER_CONNECTION, 1, Decision(True, delay=1.0, other_connection=True)),
            (A.RETRY_BACKOFF_OTHER_CONNECTION, 2, Decision(True, delay=2.0, other_connection=True)),
            (A.RETRY_BACKOFF_OTHER_CONNECTION, 3, Decision(False, R, local="attempts")),
        ]
        got = [self.policy.decide(action, failures, 0.5) for action, failures, _ in table]
        self.assertEqual(got, [expected for *_, expected in table])

    def test_decide_response_counts_this_answer(self) -> None:
        policy = self.policy
        table = [
            # (status, reason, failures before, expected)
            (200, None, 0, Decision(False, Outcome.ACCEPTED)),
            (410, "Unregistered", 2, Decision(False, Outcome.REJECTED)),
            (403, "Forbidden", 0, Decision(False, Outcome.REJECTED, open_circuit=True)),
            (
                403,
                "ExpiredProviderToken",
                0,
                Decision(True, new_connection=True, refresh_token=True),
            ),
            (
                403,
                "ExpiredProviderToken",
                2,
                Decision(
                    False,
                    Outcome.REJECTED,
                    new_connection=True,
                    refresh_token=True,
                    local="attempts",
                ),
            ),
            (429, "TooManyRequests", 0, Decision(True, delay=5.0)),
            (503, "Shutdown", 1, Decision(True, delay=2.0, other_connection=True)),
            (500, None, 2, Decision(False, Outcome.REJECTED, local="attempts")),
        ]
        got = [policy.decide_response(s, r, f, 0.5) for s, r, f, _ in table]
        self.assertEqual(got, [expected for *_, expected in table])

    def test_backoff_jitter_comes_from_rnd(self) -> None:
        policy = RetryPolicy(backoff=Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.5))
        low = policy.decide(A.RETRY_BACKOFF_OTHER_CONNECTION, 1, 0.0).delay
        high = policy.decide(A.RETRY_BACKOFF_OTHER_CONNECTION, 1, 0.999).delay
        self.assertAlmostEqual(low, 0.5)
        self.assertAlmostEqual(high, 1.5, places=2)

    def test_unknown_policy(self) -> None:
        resend = RetryPolicy(max_attempts=3)
        fail = RetryPolicy(max_attempts=3, unknown_policy=UnknownPolicy.FAIL)
        table = [
            (resend, 1, True),
            (resend, 2, True),
            (resend, 3, False),
            (fail, 1, False),
        ]
        got = [(p.unknown_policy, f, p.decide_unknown(f)) for p, f, _ in table]
        expected = [
            (p.unknown_policy, f, Decision(True) if retry else Decision(False, Outcome.UNKNOWN))
            for p, f, retry in table
        ]
        self.assertEqual(got, expected)

    def test_one_attempt_never_retries(self) -> None:
        policy = RetryPolicy(max_attempts=1)
        for action in (A.RETRY_LATER, A.RETRY_NEW_CONNECTION, A.RETRY_BACKOFF_OTHER_CONNECTION):
            self.assertFalse(policy.decide(action, 1).retry, action)
        self.assertFalse(policy.decide_unknown(1).retry)

    def test_invalid_policies(self) -> None:
        self.assertRaises(ValueError, RetryPolicy, max_attempts=0)
        self.assertRaises(ValueError, RetryPolicy, too_many_requests_delay=-1)
