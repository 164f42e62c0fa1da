"""Edges of :mod:`txapns.core` that mutation testing (``tools/mutation.py``) found untested.

Each test here kills mutants that the module's own tests let survive; the module docstring of
``tools/mutation.py`` says how to run it, ``docs/testing.rst`` what was judged equivalent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txapns.core import binary
from txapns.core._deprecate import renamed
from txapns.core.backoff import Backoff
from txapns.core.errors import (
    ChannelError,
    InvalidFieldError,
    InvalidPriorityError,
    InvalidTokenError,
    PayloadError,
    ProtocolError,
    RequestError,
)
from txapns.core.http2 import frames
from txapns.core.http2.events import ConnectionTerminated
from txapns.core.http2_policy import Action, RetryPolicy, classify, parse_response
from txapns.core.notification import Notification, parse_token, validate_binary, validate_http2
from txapns.core.payload import build_payload, encode_payload
from txapns.core.queue_time import ConnectFailures, QueueTimeLimit

from .helpers import assert_invalid


class BackoffEdgeTests(SynchronousTestCase):
    def test_no_failure_no_delay(self) -> None:
        b = Backoff(initial=1.0, factor=2.0, cap=60.0, jitter=0.5)
        for rnd in (0.0, 0.5, 0.999):
            self.assertEqual(b.delay(0, rnd), 0.0)
            self.assertEqual(b.delay(-3, rnd), 0.0)
        self.assertEqual(b.delay(1, 0.5), 1.0)

    def test_exponent_stops_at_64(self) -> None:
        # Below the cap, a long outage grows no further than factor**64 (and never overflows).
        b = Backoff(initial=1.0, factor=1.01, cap=100.0, jitter=0.0)
        self.assertEqual(b.delay(65, 0.0), 1.01**64)
        self.assertEqual(b.delay(10**6, 0.0), 1.01**64)
        self.assertEqual(Backoff(factor=10.0).delay(10**6, 0.5), 60.0)


class RequestErrorTests(SynchronousTestCase):
    def test_defaults_and_fields(self) -> None:
        for cls in (RequestError, ChannelError):
            e = cls("no answer")
            self.assertEqual((e.status, e.reason, e.local, e.unknown), (None, None, None, False))
            e = cls("x", status=400, reason="BadChannelId", local="stopped", unknown=True)
            self.assertEqual(
                (str(e), e.status, e.reason, e.local, e.unknown),
                ("x", 400, "BadChannelId", "stopped", True),
            )
        self.assertEqual(ChannelError("x", channel_id="c1").channel_id, "c1")
        self.assertIsNone(ChannelError("x").channel_id)


class RetryPolicyEdgeTests(SynchronousTestCase):
    def test_undocumented_status_ranges_end_where_they_should(self) -> None:
        for status, action in [
            (201, Action.ACCEPTED),
            (299, Action.ACCEPTED),
            (300, Action.REJECTED),
            (501, Action.RETRY_BACKOFF_OTHER_CONNECTION),
            (599, Action.RETRY_BACKOFF_OTHER_CONNECTION),
            (600, Action.REJECTED),
        ]:
            self.assertEqual(classify(status, None), action, status)

    def test_header_bytes_that_are_not_ascii_are_replaced(self) -> None:
        r = parse_response(200, [(b"apns-id", b"id-\xff"), (b"apns-unique-id", b"\xc3\xa9")], b"")
        self.assertEqual((r.apns_id, r.apns_unique_id), ("id-\ufffd", "\ufffd\ufffd"))

    def test_bounds_and_messages(self) -> None:
        RetryPolicy(max_attempts=1, too_many_requests_delay=0.0)
        RetryPolicy(too_many_requests_delay=0.5)
        assert_invalid(
            self,
            RetryPolicy,
            [
                ({"max_attempts": 0}, "max_attempts must be at least 1"),
                ({"too_many_requests_delay": -0.1}, "too_many_requests_delay must not be negative"),
            ],
        )

    def test_jitter_defaults_to_the_middle_and_is_passed_on(self) -> None:
        policy = RetryPolicy(backoff=Backoff(initial=2.0, factor=2.0, cap=60.0, jitter=0.5))
        retry = Action.RETRY_BACKOFF_OTHER_CONNECTION
        self.assertEqual(policy.decide(retry, 1).delay, 2.0)
        self.assertEqual(policy.decide_response(503, None, 0).delay, 2.0)
        self.assertEqual(policy.decide_response(503, None, 0, 0.0).delay, 1.0)
        self.assertEqual(policy.decide_response(503, None, 1, 0.0).delay, 2.0)


T = b"\x01" * 32
P = b'{"aps":{}}'


class BinaryCodecEdgeTests(SynchronousTestCase):
    def assertValueError(self, message: str, fn: Any, *args: Any) -> None:
        with self.assertRaises(ValueError) as cm:
            fn(*args)
        self.assertEqual(str(cm.exception), message)

    def test_messages_name_the_field(self) -> None:
        self.assertValueError(
            "notification identifier must be within 1..2**32-1, not 0 "
            "(gateways report 0 for 'nothing identified')",
            binary.encode_frame,
            0,
            T,
            P,
        )
        big = b"\x00" * 65536
        self.assertValueError(
            "token is 65536 bytes; a 2-byte length field holds 65535",
            binary.encode_frame,
            1,
            big,
            P,
        )
        self.assertValueError(
            "payload is 65536 bytes; a 2-byte length field holds 65535",
            binary.encode_frame,
            1,
            T,
            big,
        )
        self.assertValueError(
            "expiry must be within 0..2**32-1, not 4294967296",
            binary.encode_frame,
            1,
            T,
            P,
            2**32,
        )
        self.assertValueError(
            "expiry must be within 0..2**32-1, not 4294967296",
            binary.encode_enhanced,
            1,
            2**32,
            T,
            P,
        )
        self.assertValueError(
            "priority must fit one byte (0..255), not 256", binary.encode_frame, 1, T, P, None, 256
        )
        self.assertValueError(
            "identifier must be within 0..2**32-1, not -1", binary.next_identifier, -1
        )

    def test_other_struct_errors_are_reported_as_they_are(self) -> None:
        # A value of the wrong type passes every range check: the message is struct's own.
        for args in [
            (1, T, P, 1.5, None),
            (1, T, P, 1.5, 0),
            (1, T, P, 1.5, 255),
            (1, T, P, 0, 1.5),
            (1, T, P, 5, 1.5),
            (1, T, P, 2**32 - 1, 1.5),
            (1, b"\x00" * 65535, P, None, 1.5),
            (1, T, b"\x00" * 65535, None, 1.5),
        ]:
            with self.assertRaises(ValueError) as cm:
                binary.encode_frame(*args)  # type: ignore[arg-type]
            self.assertTrue(str(cm.exception).startswith("cannot encode notification: "), args)
            self.assertNotIn("None", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            binary.encode_enhanced(1, 1.5, T, P)  # type: ignore[arg-type]
        self.assertTrue(str(cm.exception).startswith("cannot encode notification: "))
        self.assertNotIn("None", str(cm.exception))

    def test_the_other_side_checks_its_bounds(self) -> None:
        self.assertEqual(len(binary.encode_error_response(255, 2**32 - 1)), 6)
        self.assertValueError(
            "status must fit one byte (0..255), not 256", binary.encode_error_response, 256, 1
        )
        self.assertValueError(
            "identifier must be within 0..2**32-1, not 4294967296",
            binary.encode_error_response,
            8,
            2**32,
        )
        self.assertEqual(len(binary.encode_feedback_tuple(2**32 - 1, b"\x00" * 65535)), 65541)
        self.assertValueError(
            "timestamp must be within 0..2**32-1, not 4294967296",
            binary.encode_feedback_tuple,
            2**32,
            T,
        )
        self.assertValueError(
            "token is 65536 bytes; a 2-byte length field holds 65535",
            binary.encode_feedback_tuple,
            0,
            b"\x00" * 65536,
        )

    def test_decode_error_records_default_to_empty(self) -> None:
        self.assertEqual(binary.DecodeError("x").records, [])

    def test_error_decoder_offsets_and_failure(self) -> None:
        d = binary.ErrorResponseDecoder()
        record = binary.encode_error_response(8, 1)
        d.feed(record)
        d.feed(record + record[:2])
        with self.assertRaises(binary.DecodeError) as cm:
            d.feed(record[2:] + b"\x07")
        self.assertEqual(
            str(cm.exception),
            "expected error-response command 8, got byte 0x07 at stream offset 18",
        )
        again = "error-response decoder already failed: " + str(cm.exception)
        for call in (lambda: d.feed(record), d.eof):
            with self.assertRaises(binary.DecodeError) as cm2:
                call()
            self.assertEqual(str(cm2.exception), again)

    def test_feedback_decoder_offsets_and_failure(self) -> None:
        d = binary.FeedbackDecoder()
        good = binary.encode_feedback_tuple(7, T)
        d.feed(good)
        d.feed(good)
        d.feed(good[:3])
        with self.assertRaises(binary.DecodeError) as cm:
            d.feed(good[3:] + binary.encode_feedback_tuple(7, b""))
        self.assertEqual(
            str(cm.exception), "feedback token length 0 at stream offset 114 is outside 1..100"
        )
        again = "feedback decoder already failed: " + str(cm.exception)
        for call in (lambda: d.feed(good), d.eof):
            with self.assertRaises(binary.DecodeError) as cm2:
                call()
            self.assertEqual(str(cm2.exception), again)
        cut = binary.FeedbackDecoder()
        cut.feed(good[:10])
        with self.assertRaises(ProtocolError) as cm3:
            cut.eof()
        self.assertEqual(
            str(cm3.exception), "feedback connection closed inside a tuple: 10 bytes pending"
        )


class NotificationEdgeTests(SynchronousTestCase):
    def test_only_angle_brackets_are_stripped_from_a_token(self) -> None:
        self.assertEqual(parse_token("<" + "ab" * 32 + ">"), b"\xab" * 32)
        for bad in ("ab" * 32 + "X", "X" + "ab" * 32):
            self.assertRaises(InvalidTokenError, parse_token, bad)

    def test_messages(self) -> None:
        cases: list[tuple[type[Exception], str, Any]] = [
            (
                InvalidFieldError,
                "collapse id must be a string, not 5",
                lambda: Notification.create(T, {"aps": {}}, collapse_id=5),
            ),
            (
                InvalidFieldError,
                "topic must be a string, not 5",
                lambda: Notification.create(T, {"aps": {}}, topic=5),
            ),
            (
                InvalidPriorityError,
                "priority 10 with content-available only is rejected by APNs; use priority 5 "
                "for background updates",
                lambda: validate_http2(
                    Notification.create(T, {"aps": {"content-available": 1}}, priority=10),
                    token_auth=False,
                ),
            ),
            (
                InvalidTokenError,
                "the binary protocol sends to device tokens only (no broadcasts)",
                lambda: validate_binary(Notification(b"", b'{"aps":{}}')),
            ),
            (
                PayloadError,
                "APNs rejects an empty payload (PayloadEmpty)",
                lambda: validate_http2(Notification.create(T, {}), token_auth=False),
            ),
        ]
        for error, message, call in cases:
            with self.assertRaises(error) as cm:
                call()
            self.assertEqual(str(cm.exception), message)


class PayloadEdgeTests(SynchronousTestCase):
    def test_live_activity_keys(self) -> None:
        aps = build_payload(stale_date=1, dismissal_date=2, content_state={"a": 1}, attributes={})
        self.assertEqual(
            aps,
            {
                "aps": {
                    "stale-date": 1,
                    "dismissal-date": 2,
                    "content-state": {"a": 1},
                    "attributes": {},
                }
            },
        )

    def test_messages(self) -> None:
        for call, message in [
            (lambda: build_payload(content_state=5), "content-state must be a mapping, not int"),
            (lambda: build_payload(attributes=5), "attributes must be a mapping, not int"),
            (
                lambda: build_payload(stale_date=-1),
                "stale-date must be UNIX seconds (an integer), not -1",
            ),
            (
                lambda: build_payload(dismissal_date=-1),
                "dismissal-date must be UNIX seconds (an integer), not -1",
            ),
            (
                lambda: encode_payload('{"a": NaN}'),
                "payload is not valid UTF-8 JSON: NaN is not JSON",
            ),
            (
                lambda: encode_payload({"x": object()}),
                "payload cannot be encoded as JSON: Object of type object is not JSON serializable",
            ),
        ]:
            with self.assertRaises(PayloadError) as cm:
                call()
            self.assertEqual(str(cm.exception), message)


class H2EventEdgeTests(SynchronousTestCase):
    def test_terminated_as_error_keeps_code_and_reason(self) -> None:
        error = ConnectionTerminated(1, "bad frame", [3]).as_error()
        self.assertEqual(
            (error.error_code, error.reason, str(error)),
            (1, "bad frame", "PROTOCOL_ERROR: bad frame"),
        )

    def test_frame_helpers(self) -> None:
        self.assertEqual(frames.unpack_u32(b"\x00\x00\x00\x01\x00\x00\x00\x02", 4), 2)
        self.assertEqual(
            frames.goaway_frame(5, 0),
            bytes.fromhex("000008070000000000") + bytes.fromhex("0000000500000000"),
        )


class QueueTimeEdgeTests(SynchronousTestCase):
    """:mod:`txapns.core.queue_time`: bounds, the exact edge and the operator's reason."""

    def test_connect_failures(self) -> None:
        failures = ConnectFailures()
        self.assertEqual((failures.count, failures.last), (0, None))
        failures.failed("refused")
        failures.failed("timeout")
        self.assertEqual((failures.count, failures.last), (2, "timeout"))
        failures.succeeded()
        self.assertEqual((failures.count, failures.last), (0, None))

    def test_limit_must_be_positive(self) -> None:
        for bad in (0, -1.0):
            with self.assertRaises(ValueError) as cm:
                QueueTimeLimit(bad)
            self.assertEqual(str(cm.exception), f"max_queue_time must be positive, not {bad!r}")
        self.assertEqual(QueueTimeLimit(0.5).limit, 0.5)

    def test_expired_exactly_at_the_limit_within_the_slack(self) -> None:
        @dataclass
        class Item:
            submitted_at: float

        edge, inside = Item(1e-6), Item(2e-6)  # cutoff = 10 - 10 + 1e-6
        self.assertEqual(QueueTimeLimit(10.0).split([inside, edge], 10.0), ([edge], [inside]))
        self.assertEqual(QueueTimeLimit(10.0).next_check([Item(0.0)], 9.5), 0.5)
        self.assertEqual(QueueTimeLimit(10.0).next_check([Item(0.0)], 11.0), 0.0)

    def test_reasons(self) -> None:
        limit = QueueTimeLimit(30.0)
        failures = ConnectFailures()
        self.assertEqual(
            limit.outcome(failures, False),
            (
                "unreachable",
                "not sent within 30 s: APNs unreachable (0 failed connection attempts)",
            ),
        )
        failures.failed("Connection refused")
        self.assertEqual(
            limit.outcome(failures, False)[1],
            "not sent within 30 s: APNs unreachable (1 failed connection attempt; last: "
            "Connection refused)",
        )
        failures.failed("Connection refused")
        self.assertEqual(
            limit.outcome(failures, False)[1],
            "not sent within 30 s: APNs unreachable (2 failed connection attempts; last: "
            "Connection refused)",
        )
        self.assertEqual(
            limit.outcome(failures, True),
            ("queue-time", "not sent within 30 s (queued behind others)"),
        )


class RenamedTests(SynchronousTestCase):
    """:func:`txapns.core._deprecate.renamed` itself (the modules call it at import, so only a
    direct call shows what it does)."""

    def test_old_names_warn_and_answer(self) -> None:
        getattr_ = renamed("pkg.mod", {"Old": Backoff, "OLD_LIMIT": 3})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.assertIs(getattr_("Old"), Backoff)
            self.assertEqual(getattr_("OLD_LIMIT"), 3)
        self.assertEqual(
            [(w.category, str(w.message)) for w in caught],
            [
                (DeprecationWarning, "pkg.mod.Old is deprecated: use pkg.mod.Backoff"),
                (DeprecationWarning, "pkg.mod.OLD_LIMIT is deprecated: use pkg.mod.3"),
            ],
        )
        self.assertEqual({w.filename for w in caught}, {__file__})  # blames the caller

    def test_unknown_names(self) -> None:
        with self.assertRaises(AttributeError) as cm:
            renamed("pkg.mod", {"Old": Backoff})("New")
        self.assertEqual(str(cm.exception), "module 'pkg.mod' has no attribute 'New'")
        self.assertTrue(cm.exception.__suppress_context__)  # no KeyError shown with it
