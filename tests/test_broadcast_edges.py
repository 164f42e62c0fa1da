"""Broadcast push, sans-IO: the edges mutation testing found unpinned (``tools/mutation.py
core/broadcast.py``): exact refusal messages (what a caller reads), the limits themselves
(a 1-byte channel id, the largest expiration, a payload of exactly the limit), the
management API's bodies and the parsers' defaults.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.broadcast import (
    Broadcast,
    ChannelInfo,
    StoragePolicy,
    all_channels_path,
    broadcast_path,
    channel_create_body,
    channels_path,
    parse_channel_info,
    parse_channel_list,
    validate_bundle_id,
    validate_channel_id,
    validate_storage_policy,
)
from txapns.core.errors import APNsError, ProtocolError
from txapns.core.notification import HTTP2_PAYLOAD_LIMIT, MAX_UINT32, PushType

CHANNEL = "dHN0LXU3cQ=="
LIVE = {"aps": {"timestamp": 1_700_000_000, "event": "update"}}


def raw_broadcast(**changes: Any) -> Broadcast:
    """A Broadcast built field by field (bypassing for_channel), to reach each rule."""
    fields: dict[str, Any] = {
        "token": b"",
        "payload": json.dumps(LIVE).encode(),
        "expiry": 0,
        "priority": 10,
        "topic": None,
        "push_type": PushType.LIVEACTIVITY,
        "collapse_id": None,
        "apns_id": None,
        "channel_id": CHANNEL,
    }
    fields.update(changes)
    return Broadcast(**fields)


class MessagesTests(SynchronousTestCase):
    def message(self, call: Callable[[], object]) -> str:
        with self.assertRaises(APNsError) as cm:
            call()
        return str(cm.exception)

    def test_channel_ids(self) -> None:
        long = "A" * 50
        for channel_id, expected in [
            (5, "channel id must be str, not int"),
            ("no!", "channel id 'no!' is not base64 text"),
            (long + "!", f"channel id {long[:40]!r} is not base64 text"),
            ("AAA==", "channel id 'AAA==' is not base64 text"),
            ("A" * 41, f"channel id {'A' * 40!r} is not base64 text"),
            ("A" * 88, f"channel id {'A' * 40!r} decodes to 66 bytes; the limit is 64"),
            ("AB==", "channel id 'AB==' is not canonical base64 text"),
        ]:
            self.assertEqual(self.message(lambda c=channel_id: validate_channel_id(c)), expected)

    def test_the_smallest_and_largest_channel_ids(self) -> None:
        self.assertEqual(validate_channel_id("AA=="), "AA==")
        largest = "A" * 84 + "AA=="  # 64 bytes
        self.assertEqual(validate_channel_id(largest), largest)

    def test_policies_and_bundle_ids(self) -> None:
        for policy in (2, "1", True):
            self.assertEqual(
                self.message(lambda p=policy: validate_storage_policy(p)),  # type: ignore[misc]
                f"message storage policy must be 0 or 1, not {policy!r}",
            )
        self.assertEqual(
            self.message(lambda: validate_bundle_id(None)),
            "broadcast push names the app in the path: give the client a bundle_id",
        )
        self.assertEqual(
            self.message(lambda: validate_bundle_id("a/b")),
            "bundle id 'a/b' cannot stand in a request path",
        )

    def test_broadcast_rules(self) -> None:
        too_big = b'{"aps":{"timestamp":1,"event":"end"},"x":"' + b"x" * HTTP2_PAYLOAD_LIMIT + b'"}'
        for changes, expected in [
            ({"token": b"\x01"}, "a broadcast has no device token: use Broadcast.for_channel"),
            (
                {"push_type": PushType.ALERT},
                "broadcasts are Live Activity pushes (push type liveactivity)",
            ),
            ({"topic": "t"}, "a broadcast has no topic and no collapse id"),
            ({"collapse_id": "c"}, "a broadcast has no topic and no collapse id"),
            ({"priority": 3}, "priority must be 10, 5 or 1, not 3"),
            ({"expiry": -1}, "expiration must be UNIX seconds within 0..2**32-1, not -1"),
            ({"expiry": "5"}, "expiration must be UNIX seconds within 0..2**32-1, not '5'"),
            ({"expiry": 5.0}, "expiration must be UNIX seconds within 0..2**32-1, not 5.0"),
            ({"apns_id": "nope"}, "apns-id must be a UUID, not 'nope'"),
            (
                {"payload": too_big},
                f"payload is {len(too_big)} bytes; the broadcast limit is {HTTP2_PAYLOAD_LIMIT} "
                f"bytes ({len(too_big) - HTTP2_PAYLOAD_LIMIT} bytes too many)",
            ),
            ({"payload": b""}, "APNs rejects an empty payload (PayloadEmpty)"),
            ({"payload": b"{}"}, "APNs rejects an empty payload (PayloadEmpty)"),
            ({"payload": b"{"}, "payload is not valid UTF-8 JSON: "),
            ({"payload": b"[1]"}, "a Live Activity payload needs an aps dictionary"),
            ({"payload": b'{"aps":1}'}, "a Live Activity payload needs an aps dictionary"),
            ({"payload": b'{"aps":{}}'}, "a Live Activity payload needs aps.timestamp"),
            (
                {"payload": b'{"aps":{"timestamp":1}}'},
                "a Live Activity payload needs aps.event (start, update, end)",
            ),
            (
                {"payload": b'{"aps":{"timestamp":1,"event":"go"}}'},
                "aps.event must be one of start, update, end, not 'go'",
            ),
        ]:
            text = self.message(lambda c=changes: raw_broadcast(**c))
            if expected.endswith(": "):
                self.assertTrue(text.startswith(expected), text)
            else:
                self.assertEqual(text, expected)

    def test_limits_that_pass(self) -> None:
        raw_broadcast(expiry=MAX_UINT32)
        raw_broadcast(expiry=None, priority=None)
        body = json.dumps(LIVE).encode()
        exact = body[:-1] + b',"x":"' + b"x" * (HTTP2_PAYLOAD_LIMIT - len(body) - 7) + b'"}'
        self.assertEqual(len(exact), HTTP2_PAYLOAD_LIMIT)
        raw_broadcast(payload=exact)

    def test_apns_ids_keep_their_case_and_take_uuid_objects(self) -> None:
        ident = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
        b = Broadcast.for_channel(CHANNEL, LIVE, apns_id=ident)
        self.assertEqual(b.apns_id, str(ident))
        b = Broadcast.for_channel(CHANNEL, LIVE, apns_id=str(ident).upper())
        self.assertEqual(b.apns_id, str(ident).upper())
        self.assertEqual(b.token, b"")


class ManagementTests(SynchronousTestCase):
    def test_paths_and_body(self) -> None:
        self.assertEqual(channels_path("com.example.app"), b"/1/apps/com.example.app/channels")
        self.assertEqual(
            all_channels_path("com.example.app"), b"/1/apps/com.example.app/all-channels"
        )
        self.assertEqual(broadcast_path("com.example.app"), b"/4/broadcasts/apps/com.example.app")
        self.assertEqual(
            channel_create_body(StoragePolicy.MOST_RECENT_MESSAGE),
            b'{"message-storage-policy":1,"push-type":"LiveActivity"}',
        )

    def test_channel_info(self) -> None:
        self.assertEqual(
            parse_channel_info(CHANNEL, b'{"message-storage-policy": 0}'),
            ChannelInfo(CHANNEL, StoragePolicy.NO_STORAGE, "LiveActivity"),
        )
        self.assertEqual(
            parse_channel_info(CHANNEL, b'{"message-storage-policy": 1, "push-type": "Other"}'),
            ChannelInfo(CHANNEL, StoragePolicy.MOST_RECENT_MESSAGE, "Other"),
        )
        for body, expected in [
            (b"[]", "the channel read answer is not a JSON object"),
            (b"\xff", "the channel read answer is not a JSON object"),
            (b'{"message-storage-policy": true}', "has message-storage-policy True"),
            (b'{"message-storage-policy": 2}', "has message-storage-policy 2"),
            (b'{"message-storage-policy": 1, "push-type": 3}', "has push-type 3"),
        ]:
            with self.assertRaises(ProtocolError) as cm:
                parse_channel_info(CHANNEL, body)
            if expected.startswith("has"):
                expected = "the channel read answer " + expected
            self.assertEqual(str(cm.exception), expected)

    def test_channel_list(self) -> None:
        self.assertEqual(parse_channel_list(b"{}"), [])
        self.assertEqual(parse_channel_list(b'{"channels": ["a", "b"]}'), ["a", "b"])
        for body, expected in [
            (b"null", "the channel list answer is not a JSON object"),
            (b'{"channels": 5}', "the channel list answer has no list of channel ids"),
            (b'{"channels": "ab"}', "the channel list answer has no list of channel ids"),
            (b'{"channels": [1]}', "the channel list answer has no list of channel ids"),
        ]:
            with self.assertRaises(ProtocolError) as cm:
                parse_channel_list(body)
            self.assertEqual(str(cm.exception), expected)
