"""Fuzzing the API's request handling: malformed or oversized bodies get a 4xx, never a 5xx,
and leave nothing in the spool; valid ones are answered."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from txapns.service.api import ApiError, ApiResource, Limits, parse_submission

from .helpers_service import accepting_engine

KEY = b"fuzz-key-0123456789abcdef"
LIMITS = Limits(max_body_bytes=4096, max_recipients=5)
FIELDS = [
    "token", "tokens", "payload", "alert", "title", "body", "badge", "sound", "push_type",
    "priority", "expiration", "collapse_id", "topic", "apns_id", "async", "send_at",
    "idempotency_key", "data", "content_available", "relevance_score",
]  # fmt: skip
GOOD_TOKEN = "ab" * 32

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.just(GOOD_TOKEN),
    st.sampled_from(["alert", "background", "voip", "2030-01-01T00:00:00Z", "nope"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values, max_size=7)


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


raw_bodies = st.one_of(
    st.binary(max_size=300),
    bodies.map(encode),
    # mostly valid requests with one field disturbed
    st.builds(
        lambda k, v: encode({"tokens": [GOOD_TOKEN], "alert": "x", k: v}),
        st.sampled_from(FIELDS),
        values,
    ),
    # oversized
    st.integers(min_value=4097, max_value=20_000).map(
        lambda n: encode({"token": GOOD_TOKEN, "alert": "x" * n})
    ),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.just(b"[" * 2000 + b"]" * 2000),  # deep nesting, within the size limit
    st.just(b'{"token": "' + GOOD_TOKEN.encode() + b'", "alert": "x", "badge": 1e999}'),
)


class FuzzApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.engine, self.store, self.sender = accepting_engine(self, self.clock)
        self.resource = ApiResource(self.engine, KEY, LIMITS)

    def post(self, body: bytes) -> DummyRequest:
        req = DummyRequest([])
        req.method = b"POST"
        req.path = b"/v1/apps/a/notifications"  # type: ignore[attr-defined]
        req.content = BytesIO(body)  # type: ignore[assignment]
        req.requestHeaders.addRawHeader(b"authorization", b"Bearer " + KEY)
        self.assertEqual(self.resource.render(req), NOT_DONE_YET)  # type: ignore[arg-type]
        self.clock.advance(0)
        return req

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(raw_bodies)
    def test_no_5xx_and_nothing_stored_on_4xx(self, body: bytes) -> None:
        before = self.store.counts()
        sent = len(self.sender.sent)
        req = self.post(body)
        self.assertEqual(req.finished, 1, body[:200])
        code = req.responseCode
        assert code is not None
        answer: Any = json.loads(b"".join(req.written))
        if code in (200, 202):
            self.assertIn("job_id", answer)
            self.assertLessEqual(len(body), LIMITS.max_body_bytes)
        else:
            self.assertTrue(400 <= code < 500, (code, answer, body[:200]))
            self.assertIn("message", answer["error"])
            self.assertEqual(self.store.counts(), before)
            self.assertEqual(len(self.sender.sent), sent)
        if len(body) > LIMITS.max_body_bytes:
            self.assertEqual(code, 413)

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(bodies)
    def test_parser_raises_only_api_errors(self, obj: dict[str, Any]) -> None:
        try:
            parsed = parse_submission(encode(obj), limits=LIMITS)
        except ApiError as e:
            self.assertTrue(400 <= e.status < 500)
            self.assertTrue(e.message)
        else:
            self.assertTrue(1 <= len(parsed.tokens) <= LIMITS.max_recipients)

    def test_fuzz_harness_can_see_a_success(self) -> None:
        req = self.post(encode({"token": GOOD_TOKEN, "alert": "x"}))
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(len(self.sender.sent), 1)
