"""The ``aps`` payload builder and the compact JSON encoding, against golden strings.

The golden strings are written out by hand with the key names exactly as Apple spells them;
a builder checked only against itself would let ``content_available`` or ``loc_key`` through.
"""

from __future__ import annotations

import json
import math
import types
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.errors import PayloadError, ValidationError
from txapns.core.payload import (
    INTERRUPTION_LEVELS,
    Alert,
    CriticalSound,
    build_payload,
    encode_payload,
)

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200)


def golden(payload: dict[str, Any]) -> str:
    return encode_payload(payload).decode("utf-8")


class BuilderGoldenTests(SynchronousTestCase):
    def test_empty(self) -> None:
        self.assertEqual(build_payload(), {"aps": {}})
        self.assertEqual(golden(build_payload()), '{"aps":{}}')

    def test_alert_string(self) -> None:
        self.assertEqual(golden(build_payload("Hello")), '{"aps":{"alert":"Hello"}}')

    def test_alert_badge_sound(self) -> None:
        self.assertEqual(
            golden(build_payload("Hello", badge=1, sound="default")),
            '{"aps":{"alert":"Hello","badge":1,"sound":"default"}}',
        )
        self.assertEqual(golden(build_payload(badge=0)), '{"aps":{"badge":0}}')

    def test_alert_dictionary_with_localisation_keys(self) -> None:
        alert = Alert(
            title="T",
            subtitle="S",
            body="B",
            launch_image="Launch.png",
            title_loc_key="TITLE_KEY",
            title_loc_args=["t1"],
            subtitle_loc_key="SUB_KEY",
            subtitle_loc_args=("s1", "s2"),
            loc_key="BODY_KEY",
            loc_args=["a", "b"],
        )
        self.assertEqual(
            golden(build_payload(alert)),
            '{"aps":{"alert":{"title":"T","subtitle":"S","body":"B",'
            '"launch-image":"Launch.png","title-loc-key":"TITLE_KEY","title-loc-args":["t1"],'
            '"subtitle-loc-key":"SUB_KEY","subtitle-loc-args":["s1","s2"],'
            '"loc-key":"BODY_KEY","loc-args":["a","b"]}}}',
        )

    def test_alert_dictionary_only_set_keys(self) -> None:
        self.assertEqual(
            golden(build_payload(Alert(title="Hi", body="There"))),
            '{"aps":{"alert":{"title":"Hi","body":"There"}}}',
        )
        self.assertEqual(Alert().to_dict(), {})
        self.assertEqual(Alert(loc_args=[]).to_dict(), {"loc-args": []})

    def test_alert_mapping_passed_through(self) -> None:
        self.assertEqual(
            golden(build_payload({"title": "T", "loc-key": "K"})),
            '{"aps":{"alert":{"title":"T","loc-key":"K"}}}',
        )

    def test_critical_sound(self) -> None:
        self.assertEqual(
            golden(build_payload("Fire", sound=CriticalSound(name="alarm.caf", volume=0.5))),
            '{"aps":{"alert":"Fire","sound":{"critical":1,"name":"alarm.caf","volume":0.5}}}',
        )
        self.assertEqual(
            golden(build_payload(sound=CriticalSound())),
            '{"aps":{"sound":{"critical":1,"name":"default","volume":1.0}}}',
        )
        self.assertEqual(
            CriticalSound(critical=False, volume=0).to_dict(),
            {"critical": 0, "name": "default", "volume": 0},
        )

    def test_sound_mapping_passed_through(self) -> None:
        self.assertEqual(
            golden(build_payload(sound={"critical": 1, "name": "x.caf", "volume": 0.2})),
            '{"aps":{"sound":{"critical":1,"name":"x.caf","volume":0.2}}}',
        )

    def test_silent(self) -> None:
        self.assertEqual(
            golden(build_payload(content_available=True)), '{"aps":{"content-available":1}}'
        )

    def test_every_aps_key(self) -> None:
        payload = build_payload(
            "Hi",
            badge=3,
            sound="ping.aiff",
            content_available=True,
            mutable_content=True,
            thread_id="chat-7",
            category="REPLY",
            interruption_level="time-sensitive",
            relevance_score=0.75,
            target_content_id="window-2",
            filter_criteria="work",
            url_args=["a", "b"],
        )
        self.assertEqual(
            golden(payload),
            '{"aps":{"alert":"Hi","badge":3,"sound":"ping.aiff","content-available":1,'
            '"mutable-content":1,"thread-id":"chat-7","category":"REPLY",'
            '"target-content-id":"window-2","filter-criteria":"work","url-args":["a","b"],'
            '"interruption-level":"time-sensitive","relevance-score":0.75}}',
        )

    def test_false_flags_are_left_out(self) -> None:
        self.assertEqual(
            build_payload(
                "x", content_available=False, mutable_content=False, input_push_token=False
            ),
            {"aps": {"alert": "x"}},
        )

    def test_interruption_levels(self) -> None:
        self.assertEqual(INTERRUPTION_LEVELS, ("passive", "active", "time-sensitive", "critical"))
        for level in INTERRUPTION_LEVELS:
            self.assertEqual(
                build_payload(interruption_level=level), {"aps": {"interruption-level": level}}
            )

    def test_relevance_score_bounds_included(self) -> None:
        self.assertEqual(golden(build_payload(relevance_score=0)), '{"aps":{"relevance-score":0}}')
        self.assertEqual(
            golden(build_payload(relevance_score=1.0)), '{"aps":{"relevance-score":1.0}}'
        )

    def test_live_activity_update(self) -> None:
        payload = build_payload(
            Alert(title="Delivery", body="Arriving"),
            relevance_score=0.5,
            timestamp=1_700_000_000,
            event="update",
            content_state={"eta": 5, "driver": "Ana"},
            stale_date=1_700_000_600,
            dismissal_date=1_700_003_600,
        )
        self.assertEqual(
            golden(payload),
            '{"aps":{"alert":{"title":"Delivery","body":"Arriving"},"relevance-score":0.5,'
            '"timestamp":1700000000,"event":"update","stale-date":1700000600,'
            '"dismissal-date":1700003600,"content-state":{"eta":5,"driver":"Ana"}}}',
        )

    def test_live_activity_push_to_start(self) -> None:
        payload = build_payload(
            timestamp=1_700_000_000,
            event="start",
            content_state={"score": "0-0"},
            attributes_type="MatchAttributes",
            attributes={"home": "A", "away": "B"},
            input_push_token=True,
            input_push_channel="dHhhcG5zLWNoYW5uZWw=",
        )
        self.assertEqual(
            golden(payload),
            '{"aps":{"timestamp":1700000000,"event":"start",'
            '"attributes-type":"MatchAttributes","input-push-channel":"dHhhcG5zLWNoYW5uZWw=",'
            '"content-state":{"score":"0-0"},"attributes":{"home":"A","away":"B"},'
            '"input-push-token":1}}',
        )

    def test_live_activity_end(self) -> None:
        self.assertEqual(
            golden(build_payload(timestamp=0, event="end", dismissal_date=0)),
            '{"aps":{"timestamp":0,"event":"end","dismissal-date":0}}',
        )

    def test_custom_keys_beside_aps(self) -> None:
        self.assertEqual(
            golden(build_payload("x", custom={"acme": {"id": 7}, "n": [1, None, True]})),
            '{"aps":{"alert":"x"},"acme":{"id":7},"n":[1,null,true]}',
        )

    def test_non_ascii_stays_utf8(self) -> None:
        body = encode_payload(build_payload("Grüße 👋", custom={"ключ": "값"}))
        self.assertEqual(body, '{"aps":{"alert":"Grüße 👋"},"ключ":"값"}'.encode())
        self.assertEqual(len(body), 49)  # 17 + 12 + 4 + 8 + 3 + 3 + 2
        self.assertNotIn(b"\\u", body)

    def test_builder_copies_its_inputs(self) -> None:
        state = {"eta": 1}
        args = ["a"]
        payload = build_payload(content_state=state, url_args=args)
        state["eta"] = 2
        args.append("b")
        self.assertEqual(payload, {"aps": {"url-args": ["a"], "content-state": {"eta": 1}}})


class BuilderErrorTests(SynchronousTestCase):
    def assertPayloadError(self, message: str | None = None, **kw: Any) -> None:
        with self.assertRaises(PayloadError, msg=repr(kw)) as cm:
            build_payload(**kw)
        self.assertIsInstance(cm.exception, ValidationError)
        if message is not None:
            self.assertEqual(str(cm.exception), message)

    def test_badge(self) -> None:
        self.assertPayloadError("badge must be a non-negative integer, not -1", badge=-1)
        for bad in (True, False, 1.5, "1", 1.0):
            self.assertPayloadError(f"badge must be a non-negative integer, not {bad!r}", badge=bad)

    def test_interruption_level(self) -> None:
        self.assertPayloadError(
            "interruption-level must be one of passive, active, time-sensitive, critical, "
            "not 'urgent'",
            interruption_level="urgent",
        )
        self.assertPayloadError(interruption_level="Active")
        self.assertPayloadError(interruption_level="time_sensitive")

    def test_relevance_score(self) -> None:
        self.assertPayloadError("relevance-score must be within 0..1, not 1.5", relevance_score=1.5)
        for bad in (-0.1, 1.0001, math.nan, math.inf, 2, "0.5", True, [0.5]):
            self.assertPayloadError(relevance_score=bad)

    def test_critical_sound_volume(self) -> None:
        for bad in (1.5, -0.1, math.nan, "loud", True):
            with self.assertRaises(PayloadError, msg=repr(bad)) as cm:
                build_payload(sound=CriticalSound(volume=bad))
            self.assertEqual(
                str(cm.exception), f"critical sound volume must be within 0..1, not {bad}"
            )

    def test_live_activity_event(self) -> None:
        self.assertPayloadError(
            "event must be one of start, update, end, not 'pause'", event="pause"
        )
        self.assertPayloadError(event="Update")

    def test_live_activity_dates_are_unix_seconds(self) -> None:
        self.assertPayloadError(
            "timestamp must be UNIX seconds (an integer), not 'now'", timestamp="now"
        )
        for key in ("timestamp", "stale_date", "dismissal_date"):
            for bad in (-1, 1.5, True, "1700000000"):
                self.assertPayloadError(**{key: bad})

    def test_custom_may_not_replace_aps(self) -> None:
        self.assertPayloadError("custom keys may not replace 'aps'", custom={"aps": {}})

    def test_wrong_types(self) -> None:
        self.assertPayloadError("alert must be a mapping, not int", alert=123)
        self.assertPayloadError("sound must be a mapping, not int", sound=123)
        self.assertPayloadError(alert=["title", "body"])
        self.assertPayloadError(content_state=[("a", 1)])
        self.assertPayloadError(attributes="home")

    def test_string_is_not_a_list_of_arguments(self) -> None:
        # list("abc") would silently send ["a", "b", "c"].
        self.assertPayloadError("url-args must be a sequence of strings, not 'abc'", url_args="abc")
        with self.assertRaises(PayloadError) as cm:
            build_payload(Alert(loc_key="K", loc_args="abc"))  # type: ignore[arg-type]
        self.assertEqual(str(cm.exception), "loc-args must be a sequence of strings, not 'abc'")
        self.assertRaises(PayloadError, build_payload, Alert(title_loc_args=5))  # type: ignore[arg-type]


class EncodePayloadTests(SynchronousTestCase):
    def test_compact(self) -> None:
        self.assertEqual(
            encode_payload({"aps": {"alert": "x", "badge": 1}, "k": [1, 2]}),
            b'{"aps":{"alert":"x","badge":1},"k":[1,2]}',
        )

    def test_insertion_order_kept(self) -> None:
        self.assertEqual(encode_payload({"z": 1, "a": 2}), b'{"z":1,"a":2}')

    def test_any_mapping(self) -> None:
        proxy = types.MappingProxyType({"aps": types.MappingProxyType({"alert": "x"})})
        self.assertEqual(encode_payload(proxy), b'{"aps":{"alert":"x"}}')

    def test_not_json(self) -> None:
        for bad in (
            {"x": math.nan},
            {"x": math.inf},
            {"x": {1, 2}},
            {"x": object()},
            {"x": b"bytes"},
        ):
            with self.assertRaises(PayloadError, msg=repr(bad)) as cm:
                encode_payload(bad)
            self.assertTrue(str(cm.exception).startswith("payload cannot be encoded as JSON: "))

    def test_too_deep(self) -> None:
        deep: dict[str, Any] = {}
        cur = deep
        for _ in range(5000):
            cur["a"] = {}
            cur = cur["a"]
        self.assertRaises(PayloadError, encode_payload, deep)
        self.assertRaises(
            PayloadError, encode_payload, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        )

    def test_wrong_type(self) -> None:
        for bad, name in ((5, "int"), (None, "NoneType"), ([{"aps": {}}], "list")):
            with self.assertRaises(PayloadError) as cm:
                encode_payload(bad)  # type: ignore[arg-type]
            self.assertEqual(
                str(cm.exception), f"payload must be a mapping, bytes or str, not {name}"
            )

    def test_text_and_bytes_kept_verbatim(self) -> None:
        self.assertEqual(encode_payload('{ "aps" : {} }'), b'{ "aps" : {} }')
        self.assertEqual(encode_payload('{"a":"é"}'), '{"a":"é"}'.encode())
        self.assertEqual(encode_payload(b'{"a":"\\u00e9"}'), b'{"a":"\\u00e9"}')

    def test_text_must_be_a_json_object(self) -> None:
        for bad in ("[]", "1", '"x"', "null", "true", b"[{}]"):
            with self.assertRaises(PayloadError, msg=repr(bad)) as cm:
                encode_payload(bad)
            self.assertEqual(str(cm.exception), "payload must be a JSON object")

    def test_text_must_be_json(self) -> None:
        for bad in ("", "{", "{'a': 1}", '{"a":1}}', b"\xff{}", b'{"a":"\xc3"}'):
            with self.assertRaises(PayloadError, msg=repr(bad)) as cm:
                encode_payload(bad)
            self.assertTrue(str(cm.exception).startswith("payload is not valid UTF-8 JSON: "))

    def test_bytes_must_be_utf8(self) -> None:
        # json.loads(bytes) also takes UTF-16/32 and a BOM; APNs reads UTF-8.
        for bad in (
            '{"aps":{}}'.encode("utf-16"),
            '{"aps":{}}'.encode("utf-16-le"),
            '{"aps":{}}'.encode("utf-32"),
            b'\xef\xbb\xbf{"aps":{}}',
        ):
            with self.assertRaises(PayloadError, msg=repr(bad)):
                encode_payload(bad)
        self.assertRaises(PayloadError, encode_payload, '\ufeff{"aps":{}}')

    def test_text_may_not_use_nan(self) -> None:
        # Python's parser takes these; they are not JSON.
        for bad in ('{"a":NaN}', '{"a":Infinity}', b'{"a":[-Infinity]}'):
            with self.assertRaises(PayloadError, msg=repr(bad)):
                encode_payload(bad)

    def test_lone_surrogate(self) -> None:
        with self.assertRaises(PayloadError):
            encode_payload('{"a":"\ud800"}')
        with self.assertRaises(PayloadError):
            encode_payload({"a": "\ud800"})


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)


class EncodePropertyTests(SynchronousTestCase):
    @DETERMINISTIC
    @given(json_objects)
    def test_round_trip(self, value: dict[str, Any]) -> None:
        body = encode_payload(value)
        self.assertEqual(json.loads(body.decode("utf-8")), value)
        # Compact and not ASCII-escaped: never longer than Python's default encoding, and
        # exactly as long as the spec's encoding.
        self.assertLessEqual(len(body), len(json.dumps(value).encode("ascii")))
        self.assertEqual(
            body, json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        )
        # Already-encoded payloads pass unchanged.
        self.assertEqual(encode_payload(body), body)
        self.assertEqual(encode_payload(body.decode("utf-8")), body)

    @DETERMINISTIC
    @given(
        alert=st.text(),
        badge=st.integers(min_value=0, max_value=2**31),
        sound=st.text(min_size=1),
        thread_id=st.text(),
        level=st.sampled_from(INTERRUPTION_LEVELS),
        score=st.floats(min_value=0.0, max_value=1.0),
        custom=st.dictionaries(st.text().filter(lambda k: k != "aps"), json_values, max_size=3),
    )
    def test_builder_round_trip(
        self,
        alert: str,
        badge: int,
        sound: str,
        thread_id: str,
        level: str,
        score: float,
        custom: dict[str, Any],
    ) -> None:
        payload = build_payload(
            alert,
            badge=badge,
            sound=sound,
            thread_id=thread_id,
            interruption_level=level,
            relevance_score=score,
            custom=custom,
        )
        expected = {
            "aps": {
                "alert": alert,
                "badge": badge,
                "sound": sound,
                "thread-id": thread_id,
                "interruption-level": level,
                "relevance-score": score,
            },
            **custom,
        }
        self.assertEqual(json.loads(encode_payload(payload)), expected)
        self.assertEqual(list(json.loads(encode_payload(payload))), ["aps", *custom])
