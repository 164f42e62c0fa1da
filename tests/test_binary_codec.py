"""The binary APNs codec, against bytes written out by hand from the protocol description.

Golden bytes are literal hex, never produced by the encoder under test: a codec checked only
against itself would have let a 4-byte priority item through.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.binary import (
    SHUTDOWN,
    STATUS_NAMES,
    TRANSIENT_STATUSES,
    DecodeError,
    ErrorResponse,
    ErrorResponseDecoder,
    FeedbackDecoder,
    FeedbackTuple,
    classify_status,
    encode_enhanced,
    encode_error_response,
    encode_feedback_tuple,
    encode_frame,
    encode_notification,
    encode_simple,
    next_identifier,
    status_name,
)
from txapns.core.errors import ProtocolError
from txapns.core.notification import Notification

# Deterministic runs, no example database left in the work tree.
DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200)

TOKEN_HEX = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"  # 32 bytes
TOKEN = bytes.fromhex(TOKEN_HEX)
PAYLOAD = b'{"aps":{}}'
PAYLOAD_HEX = "7b22617073223a7b7d7d"  # { " a p s " : { } }  — 10 bytes


def h(text: str) -> bytes:
    """Hex with spaces, so golden frames can be laid out field by field."""
    return bytes.fromhex(text.replace(" ", ""))


class StatusTests(SynchronousTestCase):
    def test_names(self) -> None:
        expected = {
            0: "NoErrorsEncountered",
            1: "ProcessingError",
            2: "MissingDeviceToken",
            3: "MissingTopic",
            4: "MissingPayload",
            5: "InvalidTokenSize",
            6: "InvalidTopicSize",
            7: "InvalidPayloadSize",
            8: "InvalidToken",
            10: "Shutdown",
            128: "ProtocolError",
            255: "Unknown",
        }
        self.assertEqual(STATUS_NAMES, expected)
        for status, name in expected.items():
            self.assertEqual(status_name(status), name)

    def test_unlisted_status_name(self) -> None:
        self.assertEqual(status_name(9), "Status9")
        self.assertEqual(status_name(200), "Status200")

    def test_classification_of_every_byte(self) -> None:
        self.assertEqual(SHUTDOWN, 10)
        self.assertEqual(TRANSIENT_STATUSES, frozenset({0, 1, 255}))
        for status in range(256):
            if status == 10:
                want = "delivered"
            elif status in (0, 1, 255):
                want = "transient"
            else:
                want = "rejected"
            self.assertEqual(classify_status(status), want, status)


class SimpleAndEnhancedTests(SynchronousTestCase):
    def test_command_0(self) -> None:
        want = h(f"00 0020 {TOKEN_HEX} 000a {PAYLOAD_HEX}")
        self.assertEqual(encode_simple(TOKEN, PAYLOAD), want)

    def test_command_1(self) -> None:
        want = h(f"01 01020304 5f5e0ff0 0020 {TOKEN_HEX} 000a {PAYLOAD_HEX}")
        self.assertEqual(encode_enhanced(0x01020304, 0x5F5E0FF0, TOKEN, PAYLOAD), want)

    def test_command_1_rejects_identifier_0(self) -> None:
        self.assertRaises(ValueError, encode_enhanced, 0, 0, TOKEN, PAYLOAD)

    def test_oversized_fields_raise_value_error(self) -> None:
        big = b"x" * 65536
        self.assertRaises(ValueError, encode_simple, big, PAYLOAD)
        self.assertRaises(ValueError, encode_simple, TOKEN, big)
        self.assertRaises(ValueError, encode_enhanced, 1, 2**32, TOKEN, PAYLOAD)
        self.assertRaises(ValueError, encode_enhanced, 1, -1, TOKEN, PAYLOAD)
        self.assertRaises(ValueError, encode_enhanced, 1, 0, big, PAYLOAD)


class FrameTests(SynchronousTestCase):
    # Items: token 3+32, payload 3+10, identifier 3+4 = 55 = 0x37 bytes; expiry adds 7,
    # priority adds 4.
    def test_minimal_frame(self) -> None:
        want = h(f"02 00000037 01 0020 {TOKEN_HEX} 02 000a {PAYLOAD_HEX} 03 0004 00000001")
        self.assertEqual(encode_frame(1, TOKEN, PAYLOAD), want)

    def test_frame_with_expiry_and_priority(self) -> None:
        want = h(
            f"02 00000042 01 0020 {TOKEN_HEX} 02 000a {PAYLOAD_HEX} 03 0004 00000002"
            " 04 0004 12345678 05 0001 0a"
        )
        self.assertEqual(encode_frame(2, TOKEN, PAYLOAD, expiry=0x12345678, priority=10), want)

    def test_frame_with_expiry_only(self) -> None:
        want = h(
            f"02 0000003e 01 0020 {TOKEN_HEX} 02 000a {PAYLOAD_HEX} 03 0004 00000003"
            " 04 0004 12345678"
        )
        self.assertEqual(encode_frame(3, TOKEN, PAYLOAD, expiry=0x12345678), want)

    def test_frame_with_priority_only(self) -> None:
        want = h(
            f"02 0000003b 01 0020 {TOKEN_HEX} 02 000a {PAYLOAD_HEX} 03 0004 00000004 05 0001 05"
        )
        self.assertEqual(encode_frame(4, TOKEN, PAYLOAD, priority=5), want)

    def test_expiry_zero_is_sent_not_omitted(self) -> None:
        # 0 means "deliver once, do not store": it must not be confused with "not set".
        frame = encode_frame(1, TOKEN, PAYLOAD, expiry=0)
        self.assertTrue(frame.endswith(h("03 0004 00000001 04 0004 00000000")))

    def test_priority_item_is_one_byte(self) -> None:
        frame = encode_frame(1, TOKEN, PAYLOAD, priority=10)
        self.assertEqual(frame[-4:], h("05 0001 0a"))

    def test_identifier_item(self) -> None:
        frame = encode_frame(0xDEADBEEF, TOKEN, PAYLOAD)
        self.assertEqual(frame[-7:], h("03 0004 deadbeef"))
        self.assertEqual(encode_frame(2**32 - 1, TOKEN, PAYLOAD)[-7:], h("03 0004 ffffffff"))

    def test_short_token_and_empty_payload(self) -> None:
        # The codec encodes what it is given; length rules belong to validation.
        want = h("02 0000000e 01 0001 ab 02 0000 03 0004 00000007")  # 4 + 3 + 7 bytes
        self.assertEqual(encode_frame(7, b"\xab", b""), want)

    def test_invalid_identifier_rejected(self) -> None:
        for bad in (0, -1, 2**32):
            self.assertRaises(ValueError, encode_frame, bad, TOKEN, PAYLOAD)

    def test_out_of_range_fields_raise_value_error(self) -> None:
        big = b"x" * 65536
        self.assertRaises(ValueError, encode_frame, 1, big, PAYLOAD)
        self.assertRaises(ValueError, encode_frame, 1, TOKEN, big)
        self.assertRaises(ValueError, encode_frame, 1, TOKEN, PAYLOAD, -1)
        self.assertRaises(ValueError, encode_frame, 1, TOKEN, PAYLOAD, 2**32)
        self.assertRaises(ValueError, encode_frame, 1, TOKEN, PAYLOAD, None, 256)
        self.assertRaises(ValueError, encode_frame, 1, TOKEN, PAYLOAD, 5, -1)

    def test_error_message_names_the_field(self) -> None:
        e = self.assertRaises(ValueError, encode_frame, 1, TOKEN, PAYLOAD, None, 300)
        self.assertIn("priority", str(e))
        e = self.assertRaises(ValueError, encode_frame, 0, TOKEN, PAYLOAD)
        self.assertIn("identifier", str(e))

    def test_notification(self) -> None:
        n = Notification.create(TOKEN_HEX, {"aps": {}}, expiry=0x12345678, priority=10)
        want = h(
            f"02 00000042 01 0020 {TOKEN_HEX} 02 000a {PAYLOAD_HEX} 03 0004 00000009"
            " 04 0004 12345678 05 0001 0a"
        )
        self.assertEqual(encode_notification(9, n), want)

    def test_notification_without_options(self) -> None:
        n = Notification.create(TOKEN, PAYLOAD)
        want = h(f"02 00000037 01 0020 {TOKEN_HEX} 02 000a {PAYLOAD_HEX} 03 0004 00000009")
        self.assertEqual(encode_notification(9, n), want)


class IdentifierTests(SynchronousTestCase):
    def test_counts_from_one(self) -> None:
        self.assertEqual(next_identifier(0), 1)
        self.assertEqual(next_identifier(1), 2)
        self.assertEqual(next_identifier(41), 42)

    def test_wraps_to_one_never_zero(self) -> None:
        self.assertEqual(next_identifier(2**32 - 2), 2**32 - 1)
        self.assertEqual(next_identifier(2**32 - 1), 1)

    def test_out_of_range(self) -> None:
        self.assertRaises(ValueError, next_identifier, -1)
        self.assertRaises(ValueError, next_identifier, 2**32)

    @DETERMINISTIC
    @given(st.integers(0, 2**32 - 1))
    def test_always_a_valid_frame_identifier(self, current: int) -> None:
        nxt = next_identifier(current)
        self.assertTrue(1 <= nxt <= 2**32 - 1)
        self.assertNotEqual(nxt, current)
        encode_frame(nxt, TOKEN, PAYLOAD)  # accepted by the encoder


# --- an independent frame parser, for round trips -----------------------------------------


def parse_frame(frame: bytes) -> tuple[list[int], dict[int, bytes]]:
    """Walk command 2 item by item; return item ids in order and their data."""
    assert frame[0] == 2, frame[:1]
    (length,) = struct.unpack(">I", frame[1:5])
    assert length == len(frame) - 5, (length, len(frame))
    order: list[int] = []
    items: dict[int, bytes] = {}
    i = 5
    while i < len(frame):
        item_id = frame[i]
        (item_len,) = struct.unpack(">H", frame[i + 1 : i + 3])
        data = frame[i + 3 : i + 3 + item_len]
        assert len(data) == item_len
        order.append(item_id)
        items[item_id] = data
        i += 3 + item_len
    return order, items


class RoundTripTests(SynchronousTestCase):
    @DETERMINISTIC
    @given(
        identifier=st.integers(1, 2**32 - 1),
        token=st.binary(min_size=1, max_size=100),
        payload=st.binary(max_size=2048),
        expiry=st.none() | st.integers(0, 2**32 - 1),
        priority=st.none() | st.sampled_from([5, 10]),
    )
    def test_frame_round_trip(
        self,
        identifier: int,
        token: bytes,
        payload: bytes,
        expiry: int | None,
        priority: int | None,
    ) -> None:
        order, items = parse_frame(encode_frame(identifier, token, payload, expiry, priority))
        want_order = [1, 2, 3]
        if expiry is not None:
            want_order.append(4)
        if priority is not None:
            want_order.append(5)
        self.assertEqual(order, want_order)
        self.assertEqual(items[1], token)
        self.assertEqual(items[2], payload)
        self.assertEqual(int.from_bytes(items[3], "big"), identifier)
        if expiry is not None:
            self.assertEqual(len(items[4]), 4)
            self.assertEqual(int.from_bytes(items[4], "big"), expiry)
        if priority is not None:
            self.assertEqual(items[5], bytes([priority]))


# --- decoders -----------------------------------------------------------------------------


def decode_chunks(
    make: Callable[[], ErrorResponseDecoder | FeedbackDecoder], chunks: Sequence[bytes]
) -> tuple[list[object], bool]:
    """Feed chunks and eof; return every record seen and whether a ProtocolError ended it."""
    decoder = make()
    seen: list[object] = []
    try:
        for chunk in chunks:
            seen.extend(decoder.feed(chunk))
        decoder.eof()
    except DecodeError as e:
        seen.extend(e.records)
        return seen, True
    except ProtocolError:
        return seen, True
    return seen, False


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class ErrorResponseDecoderTests(SynchronousTestCase):
    def test_golden(self) -> None:
        decoder = ErrorResponseDecoder()
        [record] = decoder.feed(h("08 08 0000002a"))
        self.assertEqual(record, ErrorResponse(8, 42))
        self.assertEqual(record.name, "InvalidToken")
        self.assertEqual(record.kind, "rejected")
        self.assertEqual(decoder.buffered, 0)
        decoder.eof()

    def test_shutdown_golden(self) -> None:
        [record] = ErrorResponseDecoder().feed(h("08 0a ffffffff"))
        self.assertEqual((record.status, record.identifier), (10, 2**32 - 1))
        self.assertEqual((record.name, record.kind), ("Shutdown", "delivered"))

    def test_every_status_name(self) -> None:
        for status, name in [
            (0, "NoErrorsEncountered"),
            (1, "ProcessingError"),
            (2, "MissingDeviceToken"),
            (3, "MissingTopic"),
            (4, "MissingPayload"),
            (5, "InvalidTokenSize"),
            (6, "InvalidTopicSize"),
            (7, "InvalidPayloadSize"),
            (8, "InvalidToken"),
            (9, "Status9"),
            (10, "Shutdown"),
            (128, "ProtocolError"),
            (255, "Unknown"),
        ]:
            [record] = ErrorResponseDecoder().feed(h(f"08 {status:02x} 00000001"))
            self.assertEqual((record.status, record.name), (status, name))

    def test_split_at_every_offset(self) -> None:
        stream = h("08 01 00000005 08 0a 01020304")
        want = [ErrorResponse(1, 5), ErrorResponse(10, 0x01020304)]
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                decoder = ErrorResponseDecoder()
                got = decoder.feed(stream[:i]) + decoder.feed(stream[i:j])
                got += decoder.feed(stream[j:])
                self.assertEqual(got, want, (i, j))
                decoder.eof()

    def test_buffered_counts_partial_record(self) -> None:
        decoder = ErrorResponseDecoder()
        self.assertEqual(decoder.feed(h("08 07 00")), [])
        self.assertEqual(decoder.buffered, 3)
        self.assertEqual(decoder.feed(h("00 00 03 08")), [ErrorResponse(7, 3)])
        self.assertEqual(decoder.buffered, 1)

    def test_two_records_back_to_back(self) -> None:
        got = ErrorResponseDecoder().feed(h("08 08 00000001 08 0a 00000002"))
        self.assertEqual(got, [ErrorResponse(8, 1), ErrorResponse(10, 2)])

    def test_garbage_first_byte(self) -> None:
        decoder = ErrorResponseDecoder()
        e = self.assertRaises(ProtocolError, decoder.feed, b"\x07")
        self.assertIn("0x07", str(e))
        self.assertTrue(decoder.failed)
        self.assertRaises(ProtocolError, decoder.feed, h("08 08 00000001"))
        self.assertRaises(ProtocolError, decoder.eof)

    def test_garbage_after_a_record_keeps_the_record(self) -> None:
        decoder = ErrorResponseDecoder()
        e = self.assertRaises(DecodeError, decoder.feed, h("08 08 00000001 48 54"))
        self.assertEqual(e.records, [ErrorResponse(8, 1)])
        self.assertIn("0x48", str(e))
        self.assertIn("offset 6", str(e))
        self.assertEqual(decoder.buffered, 0)

    def test_eof_with_partial_record(self) -> None:
        decoder = ErrorResponseDecoder()
        decoder.feed(h("08 08 0000"))
        e = self.assertRaises(ProtocolError, decoder.eof)
        self.assertIn("4 of 6", str(e))

    def test_eof_when_empty_is_fine(self) -> None:
        ErrorResponseDecoder().eof()

    def test_encode_error_response_golden(self) -> None:
        self.assertEqual(encode_error_response(8, 0x01020304), h("08 08 01020304"))
        self.assertEqual(encode_error_response(255, 0), h("08 ff 00000000"))
        self.assertRaises(ValueError, encode_error_response, 256, 1)
        self.assertRaises(ValueError, encode_error_response, 1, 2**32)

    @DETERMINISTIC
    @given(
        records=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1)), max_size=8),
        cuts=st.lists(st.integers(0, 10_000), max_size=12),
    )
    def test_any_chunking_equals_one_go(
        self, records: list[tuple[int, int]], cuts: list[int]
    ) -> None:
        stream = b"".join(encode_error_response(s, i) for s, i in records)
        want = [ErrorResponse(s, i) for s, i in records]
        self.assertEqual(decode_chunks(ErrorResponseDecoder, [stream]), (want, False))
        self.assertEqual(decode_chunks(ErrorResponseDecoder, split(stream, cuts)), (want, False))

    @DETERMINISTIC
    @given(garbage=st.binary(max_size=64), cuts=st.lists(st.integers(0, 10_000), max_size=8))
    def test_garbage_decodes_or_raises_protocol_error(
        self, garbage: bytes, cuts: list[int]
    ) -> None:
        # Any other exception escapes and fails the test.
        whole = decode_chunks(ErrorResponseDecoder, [garbage])
        self.assertEqual(decode_chunks(ErrorResponseDecoder, split(garbage, cuts)), whole)
        # Independent model: complete records up to the first non-8 command byte.
        want: list[object] = []
        i = 0
        while i < len(garbage) and garbage[i] == 8 and i + 6 <= len(garbage):
            want.append(ErrorResponse(garbage[i + 1], int.from_bytes(garbage[i + 2 : i + 6])))
            i += 6
        self.assertEqual(whole, (want, i != len(garbage)))


class FeedbackDecoderTests(SynchronousTestCase):
    def test_golden(self) -> None:
        stream = h(f"5f5e1000 0020 {TOKEN_HEX} 00000001 0001 ff")
        decoder = FeedbackDecoder()
        got = decoder.feed(stream)
        self.assertEqual(got, [FeedbackTuple(0x5F5E1000, TOKEN), FeedbackTuple(1, b"\xff")])
        self.assertEqual(got[0].token_hex, TOKEN_HEX)
        decoder.eof()

    def test_repr_hides_token(self) -> None:
        text = repr(FeedbackTuple(1, TOKEN))
        self.assertNotIn(TOKEN_HEX, text)
        self.assertIn(TOKEN_HEX[:8], text)

    def test_length_is_parsed_not_assumed(self) -> None:
        token = bytes(range(100))
        stream = h("00000002 0064") + token
        self.assertEqual(FeedbackDecoder().feed(stream), [FeedbackTuple(2, token)])

    def test_split_at_every_offset(self) -> None:
        stream = h(f"00000010 0020 {TOKEN_HEX} 00000011 0003 aabbcc")
        want = [FeedbackTuple(16, TOKEN), FeedbackTuple(17, h("aabbcc"))]
        for i in range(len(stream) + 1):
            decoder = FeedbackDecoder()
            got = decoder.feed(stream[:i]) + decoder.feed(stream[i:])
            self.assertEqual(got, want, i)
            self.assertEqual(decoder.buffered, 0)

    def test_byte_by_byte(self) -> None:
        stream = h(f"00000010 0020 {TOKEN_HEX}")
        decoder = FeedbackDecoder()
        got: list[FeedbackTuple] = []
        for n, byte in enumerate(stream, 1):
            got += decoder.feed(bytes([byte]))
            self.assertEqual(decoder.buffered, 0 if n == len(stream) else n)
        self.assertEqual(got, [FeedbackTuple(16, TOKEN)])

    def test_zero_length_token(self) -> None:
        decoder = FeedbackDecoder()
        e = self.assertRaises(ProtocolError, decoder.feed, h("00000001 0000"))
        self.assertIn("length 0", str(e))
        self.assertRaises(ProtocolError, decoder.feed, b"")
        self.assertRaises(ProtocolError, decoder.eof)

    def test_too_long_token(self) -> None:
        decoder = FeedbackDecoder()
        e = self.assertRaises(DecodeError, decoder.feed, h("00000001 0001 aa 00000001 0065"))
        self.assertIn("length 101", str(e))
        self.assertEqual(e.records, [FeedbackTuple(1, b"\xaa")])

    def test_eof_with_partial_tuple(self) -> None:
        for partial in (h("0000"), h("00000001 0020"), h(f"00000001 0020 {TOKEN_HEX[:-2]}")):
            decoder = FeedbackDecoder()
            self.assertEqual(decoder.feed(partial), [])
            self.assertEqual(decoder.buffered, len(partial))
            self.assertRaises(ProtocolError, decoder.eof)

    def test_encode_feedback_tuple_golden(self) -> None:
        self.assertEqual(encode_feedback_tuple(0x01020304, h("abcd")), h("01020304 0002 abcd"))
        self.assertRaises(ValueError, encode_feedback_tuple, -1, TOKEN)
        self.assertRaises(ValueError, encode_feedback_tuple, 2**32, TOKEN)

    @DETERMINISTIC
    @given(
        tuples=st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=100)),
            max_size=6,
        ),
        cuts=st.lists(st.integers(0, 10_000), max_size=12),
    )
    def test_any_chunking_equals_one_go(
        self, tuples: list[tuple[int, bytes]], cuts: list[int]
    ) -> None:
        stream = b"".join(encode_feedback_tuple(t, tok) for t, tok in tuples)
        want = [FeedbackTuple(t, tok) for t, tok in tuples]
        self.assertEqual(decode_chunks(FeedbackDecoder, [stream]), (want, False))
        self.assertEqual(decode_chunks(FeedbackDecoder, split(stream, cuts)), (want, False))

    @DETERMINISTIC
    @given(garbage=st.binary(max_size=300), cuts=st.lists(st.integers(0, 10_000), max_size=8))
    def test_garbage_decodes_or_raises_protocol_error(
        self, garbage: bytes, cuts: list[int]
    ) -> None:
        whole = decode_chunks(FeedbackDecoder, [garbage])
        self.assertEqual(decode_chunks(FeedbackDecoder, split(garbage, cuts)), whole)
        want: list[object] = []
        i = 0
        while i + 6 <= len(garbage):
            length = int.from_bytes(garbage[i + 4 : i + 6])
            if not 1 <= length <= 100 or i + 6 + length > len(garbage):
                break
            want.append(
                FeedbackTuple(int.from_bytes(garbage[i : i + 4]), garbage[i + 6 : i + 6 + length])
            )
            i += 6 + length
        self.assertEqual(whole, (want, i != len(garbage)))
