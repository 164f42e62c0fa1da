"""The notification model: token parsing, field validation and the per-protocol rules.

Expected values are literal (golden strings, exact sizes, exact messages), taken from Apple's
rules as summarised in ``docs/apns.rst``, never computed by the code under test.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.errors import (
    APNsError,
    InvalidFieldError,
    InvalidPriorityError,
    InvalidTokenError,
    MissingTopicError,
    PayloadError,
    PayloadTooLargeError,
    ValidationError,
)
from txapns.core.notification import (
    Notification,
    PushType,
    http2_payload_limit,
    parse_token,
    shorten,
    validate_binary,
    validate_http2,
)

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200)

TOKEN_HEX = "a1b2c3d4" * 8  # 32 bytes
TOKEN = bytes.fromhex(TOKEN_HEX)
ALERT = {"aps": {"alert": "x"}}
SILENT = {"aps": {"content-available": 1}}
BUNDLE = "com.example.app"
UUID_LOWER = "123e4567-e89b-12d3-a456-426614174000"
UUID_UPPER = "123E4567-E89B-12D3-A456-426614174000"


def note(payload: Any = ALERT, **kw: Any) -> Notification:
    return Notification.create(TOKEN_HEX, payload, **kw)


def sized(size: int) -> dict[str, Any]:
    """An alert payload whose compact JSON is exactly ``size`` bytes."""
    overhead = len(b'{"aps":{"alert":""}}')  # 20
    return {"aps": {"alert": "x" * (size - overhead)}}


class ParseTokenTests(SynchronousTestCase):
    def test_hex_text(self) -> None:
        self.assertEqual(parse_token(TOKEN_HEX), TOKEN)
        self.assertEqual(parse_token(TOKEN_HEX.upper()), TOKEN)
        self.assertEqual(parse_token("00" * 32), b"\x00" * 32)

    def test_spaces_and_angle_brackets_tolerated(self) -> None:
        # The way NSData's description prints a token: <a1b2c3d4 a1b2c3d4 …>
        spaced = "<" + " ".join(["a1b2c3d4"] * 8) + ">"
        self.assertEqual(parse_token(spaced), TOKEN)
        self.assertEqual(parse_token("  " + TOKEN_HEX + "\n"), TOKEN)
        self.assertEqual(parse_token(" < " + TOKEN_HEX + " > "), TOKEN)

    def test_bytes_are_the_raw_token(self) -> None:
        raw = bytes(range(32))
        self.assertEqual(parse_token(raw), raw)
        self.assertEqual(parse_token(bytearray(raw)), raw)
        self.assertEqual(parse_token(memoryview(raw)), raw)
        self.assertIs(type(parse_token(bytearray(raw))), bytes)

    def test_odd_number_of_digits(self) -> None:
        with self.assertRaises(InvalidTokenError) as cm:
            parse_token(TOKEN_HEX + "a")
        self.assertIn("even number of hex digits", str(cm.exception))

    def test_not_hex(self) -> None:
        for bad in ("zz" * 32, "0x" + TOKEN_HEX[2:], TOKEN_HEX[:-2] + "g0", "a1-b2" * 16, ""):
            with self.assertRaises(InvalidTokenError, msg=bad):
                parse_token(bad)
        # Non-ASCII digits are not hex digits.
        self.assertRaises(InvalidTokenError, parse_token, "٠١" * 32)
        self.assertRaises(InvalidTokenError, parse_token, "<>")

    def test_too_short(self) -> None:
        with self.assertRaises(InvalidTokenError) as cm:
            parse_token("ab" * 31)
        self.assertEqual(
            str(cm.exception),
            "device token is 31 bytes; APNs tokens are 32–100 bytes (64+ hex digits)",
        )
        with self.assertRaises(InvalidTokenError) as cm:
            parse_token(b"\x01")
        self.assertIn("device token is 1 bytes", str(cm.exception))
        self.assertRaises(InvalidTokenError, parse_token, b"")

    def test_too_long(self) -> None:
        self.assertEqual(parse_token("ab" * 100), b"\xab" * 100)
        with self.assertRaises(InvalidTokenError) as cm:
            parse_token("ab" * 101)
        self.assertIn("device token is 101 bytes", str(cm.exception))
        self.assertRaises(InvalidTokenError, parse_token, b"\x00" * 101)

    def test_wrong_type(self) -> None:
        for bad, name in ((None, "NoneType"), (12345, "int"), (["ab"] * 32, "list")):
            with self.assertRaises(InvalidTokenError) as cm:
                parse_token(bad)  # type: ignore[arg-type]
            self.assertEqual(str(cm.exception), f"device token must be str or bytes, not {name}")

    def test_typed_error(self) -> None:
        with self.assertRaises(InvalidTokenError) as cm:
            parse_token("nope")
        self.assertIsInstance(cm.exception, ValidationError)
        self.assertIsInstance(cm.exception, APNsError)
        self.assertIsInstance(cm.exception, ValueError)

    def test_error_never_repeats_a_long_token(self) -> None:
        bad = TOKEN_HEX + "zz"
        with self.assertRaises(InvalidTokenError) as cm:
            parse_token(bad)
        self.assertNotIn(TOKEN_HEX, str(cm.exception))
        self.assertIn("'a1b2c3d4…'", str(cm.exception))

    @DETERMINISTIC
    @given(st.binary(min_size=32, max_size=100), st.booleans())
    def test_round_trip_any_valid_length(self, raw: bytes, upper: bool) -> None:
        text = raw.hex().upper() if upper else raw.hex()
        self.assertEqual(parse_token(text), raw)
        self.assertEqual(parse_token(raw), raw)
        grouped = " ".join(text[i : i + 8] for i in range(0, len(text), 8))
        self.assertEqual(parse_token(f"<{grouped}>"), raw)
        self.assertEqual(Notification.create(text, ALERT).token_hex, raw.hex())

    @DETERMINISTIC
    @given(st.one_of(st.binary(min_size=1, max_size=31), st.binary(min_size=101, max_size=300)))
    def test_any_other_length_is_refused(self, raw: bytes) -> None:
        for value in (raw, raw.hex()):
            with self.assertRaises(InvalidTokenError) as cm:
                parse_token(value)
            self.assertIn(f"device token is {len(raw)} bytes", str(cm.exception))


class ShortenTests(SynchronousTestCase):
    def test_bytes_and_text(self) -> None:
        self.assertEqual(shorten(TOKEN), "a1b2c3d4…")
        self.assertEqual(shorten(TOKEN_HEX), "a1b2c3d4…")
        self.assertEqual(shorten(bytearray(TOKEN)), "a1b2c3d4…")
        self.assertEqual(shorten(TOKEN, keep=4), "a1b2…")

    def test_short_text_unchanged(self) -> None:
        self.assertEqual(shorten("abcd"), "abcd")
        self.assertEqual(shorten("abcdefgh"), "abcdefgh")
        self.assertEqual(shorten("abcdefghi"), "abcdefgh…")

    @DETERMINISTIC
    @given(st.binary(min_size=32, max_size=100))
    def test_never_the_full_token(self, raw: bytes) -> None:
        for short in (
            shorten(raw),
            shorten(raw.hex()),
            Notification.create(raw, ALERT).short_token,
        ):
            self.assertEqual(short, raw.hex()[:8] + "…")
            self.assertNotIn(raw.hex(), short)


class NotificationTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        n = note()
        self.assertEqual(n.token, TOKEN)
        self.assertEqual(n.payload, b'{"aps":{"alert":"x"}}')
        self.assertEqual(
            (n.expiry, n.priority, n.topic, n.push_type, n.collapse_id, n.apns_id),
            (None, None, None, None, None, None),
        )

    def test_all_fields(self) -> None:
        n = note(
            expiry=1_700_000_000,
            priority=5,
            topic=BUNDLE,
            push_type="background",
            collapse_id="c1",
            apns_id=UUID_LOWER,
        )
        self.assertEqual(
            (n.expiry, n.priority, n.topic, n.push_type, n.collapse_id, n.apns_id),
            (1_700_000_000, 5, BUNDLE, PushType.BACKGROUND, "c1", UUID_LOWER),
        )

    def test_payload_text_and_bytes_kept_verbatim(self) -> None:
        self.assertEqual(note('{"aps": {"alert": "x"}}').payload, b'{"aps": {"alert": "x"}}')
        self.assertEqual(note(b'{"aps":{"badge":1}}').payload, b'{"aps":{"badge":1}}')

    def test_payload_must_be_a_json_object(self) -> None:
        for bad in ("[]", b"1", '"aps"', "null", "{", b"\xff", 5, None, ["aps"]):
            with self.assertRaises(PayloadError, msg=repr(bad)):
                note(bad)

    def test_token_checked_first(self) -> None:
        self.assertRaises(InvalidTokenError, Notification.create, "ab", ALERT)

    def test_expiry_range(self) -> None:
        self.assertEqual(note(expiry=0).expiry, 0)
        self.assertEqual(note(expiry=2**32 - 1).expiry, 4294967295)
        for bad in (-1, 2**32, True, False, 1.5, "10"):
            with self.assertRaises(InvalidFieldError, msg=repr(bad)) as cm:
                note(expiry=bad)
            self.assertEqual(
                str(cm.exception), f"expiry must be UNIX seconds within 0..2**32-1, not {bad!r}"
            )

    def test_priority_allowed_set(self) -> None:
        for p in (10, 5, 1):
            self.assertEqual(note(priority=p).priority, p)
        for bad in (0, 2, 3, 4, 6, 9, 11, -10, 100):
            with self.assertRaises(InvalidPriorityError, msg=repr(bad)) as cm:
                note(priority=bad)
            self.assertEqual(str(cm.exception), f"priority must be 10, 5 or 1, not {bad!r}")

    def test_priority_must_be_an_integer(self) -> None:
        # True == 1 and 10.0 == 10 in Python; neither is a priority APNs can be sent.
        for bad in (True, False, 10.0, 5.0, "10", b"\x0a"):
            with self.assertRaises(InvalidPriorityError, msg=repr(bad)):
                note(priority=bad)

    def test_push_type_strings(self) -> None:
        for pt in PushType:
            self.assertIs(note(push_type=pt.value).push_type, pt)
            self.assertIs(note(push_type=pt).push_type, pt)

    def test_unknown_push_type(self) -> None:
        for bad in ("Alert", "ALERT", "voip ", "notification", ""):
            with self.assertRaises(InvalidFieldError, msg=bad) as cm:
                note(push_type=bad)
            self.assertEqual(str(cm.exception), f"unknown push type {bad!r}")

    def test_collapse_id_limit_in_utf8_bytes(self) -> None:
        self.assertEqual(note(collapse_id="c" * 64).collapse_id, "c" * 64)
        self.assertEqual(note(collapse_id="é" * 32).collapse_id, "é" * 32)  # 64 bytes
        for bad, size in (("c" * 65, 65), ("é" * 33, 66), ("€" * 22, 66), ("👋" * 17, 68)):
            self.assertLessEqual(len(bad), 65)
            with self.assertRaises(InvalidFieldError) as cm:
                note(collapse_id=bad)
            self.assertEqual(str(cm.exception), f"collapse id is {size} bytes; the limit is 64")

    def test_collapse_id_must_be_text(self) -> None:
        for bad in (5, b"c1"):
            self.assertRaises(InvalidFieldError, note, collapse_id=bad)

    def test_apns_id_canonical_uuid(self) -> None:
        self.assertEqual(note(apns_id=UUID_LOWER).apns_id, UUID_LOWER)
        self.assertEqual(note(apns_id=uuid.UUID(UUID_LOWER)).apns_id, UUID_LOWER)
        self.assertEqual(note(apns_id=UUID_LOWER.replace("-", "")).apns_id, UUID_LOWER)
        self.assertEqual(note(apns_id="{" + UUID_LOWER + "}").apns_id, UUID_LOWER)

    def test_apns_id_upper_case_preserved(self) -> None:
        # APNs makes upper-case ids itself; a caller's upper-case id comes back as given.
        self.assertEqual(note(apns_id=UUID_UPPER).apns_id, UUID_UPPER)
        self.assertEqual(note(apns_id="123E4567-e89b-12D3-A456-426614174000").apns_id, UUID_LOWER)

    def test_invalid_apns_id(self) -> None:
        for bad in ("nope", "", UUID_LOWER[:-1], UUID_LOWER + "0", 123, b"\x00" * 16, 1.5):
            with self.assertRaises(InvalidFieldError, msg=repr(bad)) as cm:
                note(apns_id=bad)
            self.assertEqual(str(cm.exception), f"apns-id must be a UUID, not {bad!r}")

    def test_topic(self) -> None:
        self.assertEqual(note(topic=BUNDLE).topic, BUNDLE)
        with self.assertRaises(MissingTopicError) as cm:
            note(topic="")
        self.assertEqual(str(cm.exception), "topic must not be empty")
        self.assertRaises(InvalidFieldError, note, topic=5)

    def test_immutable(self) -> None:
        n = note()
        for name, value in (("token", b"x" * 32), ("payload", b"{}"), ("priority", 5)):
            with self.assertRaises(dataclasses.FrozenInstanceError):
                setattr(n, name, value)
        with self.assertRaises((AttributeError, TypeError)):
            n.extra = 1  # type: ignore[attr-defined]
        self.assertEqual(n.payload, b'{"aps":{"alert":"x"}}')

    def test_value_semantics(self) -> None:
        self.assertEqual(note(priority=5), note(priority=5))
        self.assertEqual(hash(note(priority=5)), hash(note(priority=5)))
        self.assertNotEqual(note(priority=5), note(priority=10))

    def test_repr_never_has_the_full_token(self) -> None:
        n = note(priority=10, push_type="alert", apns_id=UUID_LOWER)
        self.assertEqual(
            repr(n),
            "<Notification token=a1b2c3d4… payload=21B priority=10 push_type=alert"
            f" apns_id={UUID_LOWER}>",
        )
        self.assertEqual(
            repr(note()),
            "<Notification token=a1b2c3d4… payload=21B priority=None push_type=None apns_id=None>",
        )
        self.assertNotIn(TOKEN_HEX, repr(n))
        self.assertNotIn(TOKEN_HEX, str(n))
        self.assertNotIn(repr(TOKEN), repr(n))

    def test_token_properties(self) -> None:
        n = note()
        self.assertEqual(n.token_hex, TOKEN_HEX)
        self.assertEqual(n.short_token, "a1b2c3d4…")

    def test_aps(self) -> None:
        self.assertEqual(
            note({"aps": {"alert": "x", "badge": 2}}).aps(), {"alert": "x", "badge": 2}
        )
        self.assertEqual(note({"custom": 1}).aps(), {})
        self.assertEqual(note({"aps": "x"}).aps(), {})


class PushTypeTests(SynchronousTestCase):
    SUFFIXES = {
        PushType.ALERT: "",
        PushType.BACKGROUND: "",
        PushType.VOIP: ".voip",
        PushType.COMPLICATION: ".complication",
        PushType.FILEPROVIDER: ".pushkit.fileprovider",
        PushType.LOCATION: ".location-query",
        PushType.LIVEACTIVITY: ".push-type.liveactivity",
        PushType.PUSHTOTALK: ".voip-ptt",
        PushType.WIDGETS: ".push-type.widgets",
        PushType.CONTROLS: ".push-type.controls",
        PushType.MDM: "",
    }

    def test_header_values(self) -> None:
        self.assertEqual(
            [pt.value for pt in PushType],
            [
                "alert",
                "background",
                "voip",
                "complication",
                "fileprovider",
                "location",
                "liveactivity",
                "pushtotalk",
                "widgets",
                "controls",
                "mdm",
            ],
        )

    def test_topic_suffixes(self) -> None:
        self.assertEqual({pt: pt.topic_suffix for pt in PushType}, self.SUFFIXES)

    def test_topic_for(self) -> None:
        self.assertEqual(PushType.VOIP.topic_for(BUNDLE), "com.example.app.voip")
        self.assertEqual(PushType.COMPLICATION.topic_for(BUNDLE), "com.example.app.complication")
        self.assertEqual(
            PushType.FILEPROVIDER.topic_for(BUNDLE), "com.example.app.pushkit.fileprovider"
        )
        self.assertEqual(PushType.LOCATION.topic_for(BUNDLE), "com.example.app.location-query")
        self.assertEqual(
            PushType.LIVEACTIVITY.topic_for(BUNDLE), "com.example.app.push-type.liveactivity"
        )
        self.assertEqual(PushType.PUSHTOTALK.topic_for(BUNDLE), "com.example.app.voip-ptt")
        self.assertEqual(PushType.WIDGETS.topic_for(BUNDLE), "com.example.app.push-type.widgets")
        self.assertEqual(PushType.CONTROLS.topic_for(BUNDLE), "com.example.app.push-type.controls")
        for pt in (PushType.ALERT, PushType.BACKGROUND, PushType.MDM):
            self.assertEqual(pt.topic_for(BUNDLE), BUNDLE)

    def test_suffix_not_doubled(self) -> None:
        for pt, suffix in self.SUFFIXES.items():
            topic = BUNDLE + suffix
            self.assertEqual(pt.topic_for(topic), topic)

    def test_similar_suffix_is_not_the_suffix(self) -> None:
        # ".voip" is not ".voip-ptt", and the other way round.
        self.assertEqual(PushType.PUSHTOTALK.topic_for("a.b.voip"), "a.b.voip.voip-ptt")
        self.assertEqual(PushType.VOIP.topic_for("a.b.voip-ptt"), "a.b.voip-ptt.voip")


class ValidateBinaryTests(SynchronousTestCase):
    def test_payload_limit_2048(self) -> None:
        validate_binary(note(sized(2048)))
        with self.assertRaises(PayloadTooLargeError) as cm:
            validate_binary(note(sized(2049)))
        e = cm.exception
        self.assertEqual((e.size, e.limit, e.protocol), (2049, 2048, "binary"))
        self.assertEqual(
            str(e), "payload is 2049 bytes; the binary limit is 2048 bytes (1 bytes too many)"
        )

    def test_limit_does_not_depend_on_push_type(self) -> None:
        self.assertRaises(
            PayloadTooLargeError, validate_binary, note(sized(2049), push_type="voip")
        )

    def test_priority_10_or_5(self) -> None:
        for p in (None, 10, 5):
            validate_binary(note(priority=p))
        with self.assertRaises(InvalidPriorityError) as cm:
            validate_binary(note(priority=1))
        self.assertEqual(str(cm.exception), "the binary protocol takes priority 10 or 5, not 1")

    def test_priority_10_with_content_available_only(self) -> None:
        with self.assertRaises(InvalidPriorityError) as cm:
            validate_binary(note(SILENT, priority=10))
        self.assertIn("content-available only", str(cm.exception))
        validate_binary(note(SILENT, priority=5))
        for extra in ({"alert": "x"}, {"sound": "default"}, {"badge": 0}):
            validate_binary(note({"aps": {"content-available": 1, **extra}}, priority=10))

    def test_content_available_outside_aps_or_zero(self) -> None:
        validate_binary(note({"aps": {"badge": 1}, "content-available": 1}, priority=10))
        validate_binary(note({"aps": {"content-available": 0}}, priority=10))

    def test_escaped_content_available_is_seen(self) -> None:
        # Valid JSON may spell the key with an escape; the cheap byte scan must not miss it.
        escaped = b'{"aps":{"content\\u002davailable":1}}'
        with self.assertRaises(InvalidPriorityError):
            validate_binary(note(escaped, priority=10))
        validate_binary(note(b'{"aps":{"alert":"caf\\u00e9"}}', priority=10))

    def test_empty_token(self) -> None:
        with self.assertRaises(InvalidTokenError):
            validate_binary(Notification(b"", b'{"aps":{}}'))


class ValidateHttp2Tests(SynchronousTestCase):
    def check(self, n: Notification, token_auth: bool = False) -> None:
        validate_http2(n, token_auth=token_auth)

    def test_payload_limits(self) -> None:
        self.check(note(sized(4096)))
        with self.assertRaises(PayloadTooLargeError) as cm:
            self.check(note(sized(4097)))
        e = cm.exception
        self.assertEqual((e.size, e.limit, e.protocol), (4097, 4096, "HTTP/2"))
        self.assertEqual(
            str(e), "payload is 4097 bytes; the HTTP/2 limit is 4096 bytes (1 bytes too many)"
        )
        self.check(note(sized(5120), push_type="voip"))
        with self.assertRaises(PayloadTooLargeError) as cm:
            self.check(note(sized(5121), push_type="voip"))
        self.assertEqual((cm.exception.size, cm.exception.limit), (5121, 5120))
        self.assertIn("5121 bytes", str(cm.exception))
        self.assertIn("5120 bytes", str(cm.exception))
        # Only voip gets 5120.
        for pt in ("alert", "pushtotalk", "complication", None):
            with self.assertRaises(PayloadTooLargeError) as cm:
                self.check(note(sized(4097), push_type=pt))
            self.assertEqual(cm.exception.limit, 4096)

    def test_http2_payload_limit(self) -> None:
        self.assertEqual(http2_payload_limit(note(push_type="voip")), 5120)
        for pt in [None, *(p for p in PushType if p is not PushType.VOIP)]:
            self.assertEqual(http2_payload_limit(note(push_type=pt)), 4096, pt)

    def test_binary_limit_is_not_http2_limit(self) -> None:
        n = note(sized(3000))
        self.check(n)
        self.assertRaises(PayloadTooLargeError, validate_binary, n)

    def test_empty_payload(self) -> None:
        for empty in ("{}", "{ }", " {\n\t} ", b"{}"):
            with self.assertRaises(PayloadError, msg=repr(empty)) as cm:
                self.check(note(empty))
            self.assertIn("PayloadEmpty", str(cm.exception))
            self.assertNotIsInstance(cm.exception, PayloadTooLargeError)
        self.assertRaises(PayloadError, self.check, Notification(TOKEN, b""))
        self.check(note({"aps": {"alert": "x"}}))
        self.check(note('{ "a" : {} }'))

    def test_priorities(self) -> None:
        for p in (None, 10, 5, 1):
            self.check(note(priority=p))

    def test_priority_10_with_content_available_only(self) -> None:
        with self.assertRaises(InvalidPriorityError):
            self.check(note(SILENT, priority=10))
        self.check(note(SILENT, priority=5))
        for extra in ({"alert": "x"}, {"sound": "default"}, {"badge": 3}):
            self.check(note({"aps": {"content-available": 1, **extra}}, priority=10))

    def test_token_auth_needs_topic(self) -> None:
        with self.assertRaises(MissingTopicError) as cm:
            self.check(note(), token_auth=True)
        self.assertEqual(
            str(cm.exception), "token authentication needs a topic (the app's bundle id)"
        )
        self.check(note(topic=BUNDLE), token_auth=True)
        self.check(note(), token_auth=False)  # certificate auth: the certificate names the app

    def test_background_needs_priority_5(self) -> None:
        self.check(note(SILENT, push_type="background", priority=5))
        # (Priority 10 with content-available only breaks the general rule first.)
        self.assertRaises(
            InvalidPriorityError, self.check, note(SILENT, push_type="background", priority=10)
        )
        data_only = {"aps": {}, "sync": 1}
        for p in (10, 1, None):  # unset means APNs' default, 10
            with self.assertRaises(InvalidPriorityError, msg=repr(p)) as cm:
                self.check(note(data_only, push_type="background", priority=p))
            self.assertEqual(str(cm.exception), "background notifications must use priority 5")
        self.check(note(data_only, push_type="background", priority=5))

    def test_background_has_no_alert(self) -> None:
        for p in (5, None):
            with self.assertRaises(PayloadError) as cm:
                self.check(note({"aps": {"alert": "x"}}, push_type="background", priority=p))
            self.assertEqual(str(cm.exception), "background notifications may not carry an alert")
        self.check(
            note({"aps": {"content-available": 1}, "k": "v"}, push_type="background", priority=5)
        )

    def test_location_and_liveactivity_need_token_auth(self) -> None:
        live = {"aps": {"timestamp": 1, "event": "update", "content-state": {}}}
        for pt, payload in (("location", ALERT), ("liveactivity", live)):
            with self.assertRaises(InvalidFieldError) as cm:
                self.check(note(payload, push_type=pt, topic=BUNDLE), token_auth=False)
            self.assertEqual(str(cm.exception), f"push type {pt} needs token (JWT) authentication")
            self.check(note(payload, push_type=pt, topic=BUNDLE), token_auth=True)
        # Token auth without a topic is refused for its own reason.
        self.assertRaises(
            MissingTopicError, self.check, note(live, push_type="liveactivity"), token_auth=True
        )

    def test_liveactivity_needs_timestamp_and_event(self) -> None:
        def live(aps: dict[str, Any]) -> Notification:
            return note({"aps": aps}, push_type="liveactivity", topic=BUNDLE)

        with self.assertRaises(PayloadError) as cm:
            self.check(live({"event": "update"}), token_auth=True)
        self.assertEqual(str(cm.exception), "a Live Activity payload needs aps.timestamp")
        with self.assertRaises(PayloadError) as cm:
            self.check(live({"timestamp": 1_700_000_000}), token_auth=True)
        self.assertEqual(
            str(cm.exception), "a Live Activity payload needs aps.event (start, update, end)"
        )
        # Outside aps does not count.
        with self.assertRaises(PayloadError):
            self.check(
                note(
                    {"aps": {"alert": "x"}, "timestamp": 1, "event": "end"},
                    push_type="liveactivity",
                    topic=BUNDLE,
                ),
                token_auth=True,
            )
        self.check(live({"timestamp": 1_700_000_000, "event": "end"}), token_auth=True)

    def test_other_push_types_take_any_aps(self) -> None:
        for pt in ("alert", "voip", "complication", "fileprovider", "pushtotalk", "widgets",
                   "controls", "mdm", None):  # fmt: skip
            self.check(note({"aps": {"event": "x"}, "mdm": "y"}, push_type=pt, topic=BUNDLE), True)

    def test_common_case_parses_no_json(self) -> None:
        # The optimisation validate_http2 relies on: alerts and other push types whose rules
        # don't look inside the payload are validated without parsing it.
        parsed: list[Notification] = []
        original = Notification.aps

        def counting(n: Notification) -> dict[str, Any]:
            parsed.append(n)
            return original(n)

        self.patch(Notification, "aps", counting)
        for pt in (None, "alert", "voip", "mdm", "widgets"):
            self.check(note(push_type=pt, priority=10, topic=BUNDLE), token_auth=True)
        self.check(note({"aps": {"alert": "x", "content-available": 0}}, priority=5))
        self.assertEqual(parsed, [])
        self.check(note(SILENT, push_type="background", priority=5))
        self.assertEqual(len(parsed), 1)

    @DETERMINISTIC
    @given(
        st.integers(min_value=21, max_value=6000),
        st.sampled_from([None, *PushType]),
    )
    def test_size_errors_name_size_and_limit(self, size: int, pt: PushType | None) -> None:
        n = note(sized(size), push_type=pt, priority=5, topic=BUNDLE)
        self.assertEqual(len(n.payload), size)
        limit = 5120 if pt is PushType.VOIP else 4096
        if size <= limit:
            try:
                validate_http2(n, token_auth=True)
            except PayloadTooLargeError:  # pragma: no cover - the failure being tested for
                self.fail(f"{size} bytes refused with a {limit}-byte limit")
            except ValidationError:
                pass  # another rule (background alert, Live Activity fields)
        else:
            with self.assertRaises(PayloadTooLargeError) as cm:
                validate_http2(n, token_auth=True)
            self.assertEqual((cm.exception.size, cm.exception.limit), (size, limit))
            self.assertEqual(
                str(cm.exception),
                f"payload is {size} bytes; the HTTP/2 limit is {limit} bytes "
                f"({size - limit} bytes too many)",
            )
        if size <= 2048:
            validate_binary(n)
        else:
            with self.assertRaises(PayloadTooLargeError) as cm:
                validate_binary(n)
            self.assertIn(
                f"payload is {size} bytes; the binary limit is 2048 bytes", str(cm.exception)
            )


class ReaddressedTests(SynchronousTestCase):
    """``Notification._readdressed`` (the engine's per-recipient copy) is exactly
    ``dataclasses.replace`` of token and apns-id: same fields, equal, same hash, frozen."""

    def test_same_as_replace(self) -> None:
        proto = Notification.create(
            "ab" * 32,
            {"aps": {"alert": "x"}},
            expiry=7,
            priority=5,
            topic="com.example.app",
            push_type="alert",
            collapse_id="c",
            apns_id="123e4567-e89b-42d3-a456-426614174000",
        )
        token = bytes(range(32))
        for ident in (None, "00000000-0000-4000-8000-000000000000"):
            got = proto._readdressed(token, ident)
            want = dataclasses.replace(proto, token=token, apns_id=ident)
            self.assertIs(type(got), Notification)
            self.assertEqual(got, want)
            self.assertEqual(hash(got), hash(want))
            self.assertEqual(
                [getattr(got, f.name) for f in dataclasses.fields(Notification)],
                [getattr(want, f.name) for f in dataclasses.fields(Notification)],
            )
            with self.assertRaises(dataclasses.FrozenInstanceError):
                got.topic = "other"  # type: ignore[misc]


def _reference_parse_token(token: str) -> bytes:
    """parse_token's rules for text, written the plain way (its fast path must agree)."""
    import re

    text = token.strip().strip("<>").replace(" ", "")
    if not text or not re.fullmatch(r"[0-9a-fA-F]+", text) or len(text) % 2:
        raise InvalidTokenError("not hex")
    raw = bytes.fromhex(text)
    if not 32 <= len(raw) <= 100:
        raise InvalidTokenError("length")
    return raw


class ParseTokenFastPathTests(SynchronousTestCase):
    @settings(max_examples=400)
    @given(
        st.one_of(
            st.text(alphabet="0123456789abcdefABCDEFxyzg ٣<>\t", max_size=210),
            st.binary(min_size=32, max_size=100).map(bytes.hex),
            st.text(max_size=80),
        )
    )
    def test_agrees_with_the_plain_rules(self, token: str) -> None:
        try:
            want: bytes | None = _reference_parse_token(token)
        except InvalidTokenError:
            want = None
        if want is None:
            self.assertRaises(InvalidTokenError, parse_token, token)
        else:
            self.assertEqual(parse_token(token), want)
