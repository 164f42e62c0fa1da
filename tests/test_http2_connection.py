"""Unit tests of the sans-IO HTTP/2 client connection (``txapns.core.http2``).

Server frames are written by hand (``frame()`` in ``helpers_http2``, independent of the
product's frame encoder); golden bytes are spelled out from RFC 9113 and RFC 7541. The ``hpack``
package is used only as an independent encoder/decoder to cross-check.
"""

from __future__ import annotations

import struct

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.errors import APNsError, InvalidFieldError, ProtocolError
from txapns.core.http2 import (
    ConnectionClosingError,
    ConnectionTerminated,
    ErrorCode,
    GoAwayReceived,
    H2ClientConnection,
    H2ProtocolError,
    HeaderBlockTemplate,
    PingAcknowledged,
    ResponseReceived,
    SettingsChanged,
    StreamClosedError,
    StreamLimitError,
    StreamReset,
    device_path,
    encode_header_block,
    error_code_name,
)
from txapns.core.http2.headers import STATIC_TABLE, encode_integer, encode_string
from txapns.core.notification import PushType

from .helpers_http2 import (
    ACK,
    BLOCK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    STATUS_200,
    STATUS_400,
    WINDOW_UPDATE,
    connected,
    frame,
    goaway,
    literal,
    parse_frames,
    response,
    rst,
    settings_frame,
    terminated,
    window_update,
)


class Golden(SynchronousTestCase):
    """Byte-exact output."""

    def test_preface_settings_and_window_update(self) -> None:
        conn = H2ClientConnection()
        conn.initiate()
        expected = (
            PREFACE
            # SETTINGS: length 24, type 4, flags 0, stream 0
            + bytes.fromhex("000018 04 00 00000000")
            + bytes.fromhex("0001 00001000")  # HEADER_TABLE_SIZE 4096
            + bytes.fromhex("0002 00000000")  # ENABLE_PUSH 0
            + bytes.fromhex("0004 00100000")  # INITIAL_WINDOW_SIZE 1 MiB
            + bytes.fromhex("0006 00010000")  # MAX_HEADER_LIST_SIZE 64 KiB
            # WINDOW_UPDATE on stream 0: 16 MiB - 65535 = 0x00FF0001
            + bytes.fromhex("000004 08 00 00000000 00FF0001")
        )
        self.assertEqual(conn.data_to_send(), expected)
        self.assertEqual(conn.data_to_send(), b"")
        conn.initiate()  # idempotent
        self.assertEqual(conn.data_to_send(), b"")

    def test_settings_options(self) -> None:
        conn = H2ClientConnection(
            initial_window=65535,
            connection_window=65535,
            max_inbound_frame_size=32768,
            header_table_size=0,
            max_header_list_size=8192,
        )
        conn.initiate()
        expected = (
            PREFACE
            + bytes.fromhex("00001e 04 00 00000000")
            + bytes.fromhex("0001 00000000 0002 00000000 0004 0000ffff")
            + bytes.fromhex("0005 00008000 0006 00002000")
        )  # no WINDOW_UPDATE: the connection window stays at its initial 65535
        self.assertEqual(conn.data_to_send(), expected)

    def test_initiate_is_implicit(self) -> None:
        conn = H2ClientConnection()
        conn.receive_data(b"")
        self.assertTrue(conn.data_to_send().startswith(PREFACE))

    def test_invalid_options(self) -> None:
        for kwargs in (
            {"initial_window": 0},
            {"initial_window": 2**31},
            {"connection_window": 1000},
            {"max_inbound_frame_size": 1000},
            {"max_inbound_frame_size": 2**24},
            {"header_table_size": -1},
            {"max_header_list_size": 0},
            {"max_response_body": -1},
        ):
            with self.assertRaises(ValueError, msg=kwargs):
                H2ClientConnection(**kwargs)

    def test_typical_apns_request_header_block(self) -> None:
        token = bytes(range(32))
        template = HeaderBlockTemplate(
            "api.push.apple.com",
            topic="com.example.app",
            push_type=PushType.ALERT,
            priority=10,
            authorization="bearer eyJ.abc.sig",
        )
        block = template.encode(
            device_path(token),
            apns_id="0f0e0d0c-0b0a-4908-8706-050403020100",
            expiration=0,
            collapse_id="game-1",
            content_length=42,
        )
        path = b"/3/device/" + token.hex().encode()
        self.assertEqual(len(path), 74)
        expected = (
            b"\x83"  # indexed 3: :method POST
            + b"\x87"  # indexed 7: :scheme https
            + b"\x01\x12api.push.apple.com"  # literal w/o indexing, name index 1, 18 bytes
            + b"\x04\x4a"  # literal w/o indexing, name index 4 (:path), 74 bytes
            + path
            + b"\x00\x0aapns-topic\x0fcom.example.app"  # new name, 10 + 15 bytes
            + b"\x00\x0eapns-push-type\x05alert"
            + b"\x00\x0dapns-priority\x0210"
            + b"\x0f\x08\x12bearer eyJ.abc.sig"  # name index 23 = 15 + 8, 4-bit prefix
            + b"\x00\x07apns-id\x240f0e0d0c-0b0a-4908-8706-050403020100"
            + b"\x00\x0fapns-expiration\x010"
            + b"\x00\x10apns-collapse-id\x06game-1"
            + b"\x0f\x0d\x0242"  # name index 28 = 15 + 13 (content-length)
        )
        self.assertEqual(block, expected)
        # An independent decoder reads the same fields.
        self.assertEqual(
            hpack.Decoder().decode(block, raw=True),
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"api.push.apple.com"),
                (b":path", path),
                (b"apns-topic", b"com.example.app"),
                (b"apns-push-type", b"alert"),
                (b"apns-priority", b"10"),
                (b"authorization", b"bearer eyJ.abc.sig"),
                (b"apns-id", b"0f0e0d0c-0b0a-4908-8706-050403020100"),
                (b"apns-expiration", b"0"),
                (b"apns-collapse-id", b"game-1"),
                (b"content-length", b"42"),
            ],
        )

    def test_first_headers_frame_starts_with_table_size_update(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        # HEADERS, END_STREAM|END_HEADERS, stream 1: 0x20 = dynamic table size update to 0.
        self.assertEqual(conn.data_to_send(), bytes.fromhex("000004 01 05 00000001 20838784"))
        self.assertEqual(sid, 1)
        self.assertEqual(conn.send_request(BLOCK), 3)
        self.assertEqual(conn.data_to_send(), bytes.fromhex("000003 01 05 00000003 838784"))

    def test_request_with_body(self) -> None:
        conn = connected()
        conn.send_request(BLOCK, b"{}")
        self.assertEqual(
            conn.data_to_send(),
            bytes.fromhex("000004 01 04 00000001 20838784")
            + bytes.fromhex("000002 00 01 00000001")
            # DATA, END_STREAM, 2 bytes
            + b"{}",
        )

    def test_data_split_by_max_frame_size(self) -> None:
        conn = connected()
        conn.receive_data(window_update(0, 100_000) + settings_frame((4, 100_000)))
        conn.data_to_send()
        body = bytes(range(256)) * 160  # 40,960 bytes
        conn.send_request(BLOCK, body)
        frames = parse_frames(conn.data_to_send())
        self.assertEqual(
            [(t, f, s, len(p)) for t, f, s, p in frames],
            [
                (HEADERS, END_HEADERS, 1, 4),
                (DATA, 0, 1, 16384),
                (DATA, 0, 1, 16384),
                (DATA, END_STREAM, 1, 40960 - 2 * 16384),
            ],
        )
        self.assertEqual(b"".join(p for t, _, _, p in frames if t == DATA), body)
        # A larger MAX_FRAME_SIZE from the server is used.
        conn.receive_data(settings_frame((5, 32768)))
        conn.data_to_send()
        conn.send_request(BLOCK, body)
        sizes = [len(p) for t, _, _, p in parse_frames(conn.data_to_send()) if t == DATA]
        self.assertEqual(sizes, [32768, 40960 - 32768])

    def test_large_header_block_uses_continuation(self) -> None:
        conn = connected()
        block = encode_header_block(
            [(":method", "POST"), (":scheme", "https"), (":path", "/"), ("x-big", "v" * 40000)]
        )
        conn.send_request(block)
        frames = parse_frames(conn.data_to_send())
        self.assertEqual(
            [(t, f, s, len(p)) for t, f, s, p in frames],
            [
                (HEADERS, END_STREAM, 1, 16384),
                (CONTINUATION, 0, 1, 16384),
                (CONTINUATION, END_HEADERS, 1, len(block) + 1 - 2 * 16384),
            ],
        )
        self.assertEqual(b"".join(p for _, _, _, p in frames), b"\x20" + block)

    def test_window_update_replenishes_connection_window(self) -> None:
        conn = connected(connection_window=65535, initial_window=65535)
        sids = [conn.send_request(BLOCK) for _ in range(3)]
        conn.data_to_send()
        chunk = b"x" * 16000
        outputs = []
        for sid in sids:
            events = conn.receive_data(
                response(sid, end_stream=False)
                + frame(DATA, 0, sid, chunk)
                + frame(DATA, END_STREAM, sid, chunk)
            )
            self.assertEqual([type(e) for e in events], [ResponseReceived])
            outputs.append(conn.data_to_send())
        # An update is due once half the window (32,767) is consumed: 32,000 after the first
        # response is not enough, 64,000 after the second is.
        self.assertEqual(outputs, [b"", window_update(0, 64000), b""])

    def test_stream_window_update_for_long_bodies(self) -> None:
        conn = connected(initial_window=20000)
        sid = conn.send_request(BLOCK)
        conn.data_to_send()
        conn.receive_data(response(sid, end_stream=False) + frame(DATA, 0, sid, b"y" * 10000))
        self.assertEqual(conn.data_to_send(), window_update(sid, 10000))
        events = conn.receive_data(frame(DATA, END_STREAM, sid, b"z" * 15000))
        self.assertEqual(events[0].body, b"y" * 10000 + b"z" * 15000)
        self.assertEqual(conn.data_to_send(), b"")  # stream over: no stream update

    def test_rst_stream_and_goaway_bytes(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        conn.data_to_send()
        self.assertTrue(conn.reset_stream(sid))
        self.assertEqual(conn.data_to_send(), bytes.fromhex("000004 03 00 00000001 00000008"))
        self.assertFalse(conn.reset_stream(sid))
        self.assertEqual(conn.close(ErrorCode.NO_ERROR, b"bye"), [])
        self.assertEqual(
            conn.data_to_send(), bytes.fromhex("00000b 07 00 00000000 00000000 00000000") + b"bye"
        )

    def test_settings_ack_and_ping_ack_bytes(self) -> None:
        conn = H2ClientConnection()
        conn.initiate()
        conn.data_to_send()
        conn.receive_data(settings_frame() + frame(PING, 0, 0, b"abcdefgh"))
        self.assertEqual(
            conn.data_to_send(),
            bytes.fromhex("000000 04 01 00000000")
            + bytes.fromhex("000008 06 01 00000000")
            + b"abcdefgh",
        )
        conn.ping(b"12345678")
        self.assertEqual(conn.data_to_send(), bytes.fromhex("000008 06 00 00000000") + b"12345678")


class HpackEncoding(SynchronousTestCase):
    def test_integers_rfc7541_c1(self) -> None:
        self.assertEqual(encode_integer(10, 5), b"\x0a")
        self.assertEqual(encode_integer(1337, 5), b"\x1f\x9a\x0a")
        self.assertEqual(encode_integer(42, 8), b"\x2a")
        self.assertEqual(encode_integer(31, 5, 0x20), b"\x3f\x00")
        with self.assertRaises(ValueError):
            encode_integer(-1, 5)

    def test_string_lengths(self) -> None:
        self.assertEqual(encode_string(b"abc"), b"\x03abc")
        self.assertEqual(encode_string(b"a" * 126)[:1], b"\x7e")
        self.assertEqual(encode_string(b"a" * 127)[:2], b"\x7f\x00")
        self.assertEqual(encode_string(b"a" * 200)[:2], b"\x7f\x49")  # 200 - 127 = 73

    def test_static_table_matches_hpack(self) -> None:
        from hpack.table import HeaderTable

        self.assertEqual(STATIC_TABLE, HeaderTable.STATIC_TABLE)

    def test_general_encoder_round_trips(self) -> None:
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"example.com"),
            (b":path", b"/index.html"),
            (b"accept-encoding", b"gzip, deflate"),
            (b"user-agent", b"txapns"),
            (b"x-long", b"q" * 300),
        ]
        block = encode_header_block(fields)
        self.assertEqual(block[:2], b"\x82\x87")  # fully indexed static entries
        self.assertIn(b"\x85", block)  # :path /index.html, indexed
        self.assertIn(b"\x90", block)  # accept-encoding: gzip, deflate, indexed 16
        self.assertEqual(hpack.Decoder().decode(block, raw=True), fields)
        # Stateless: encoding twice gives the same bytes.
        self.assertEqual(encode_header_block(fields), block)

    def test_general_encoder_rejects_bad_fields(self) -> None:
        for fields in (
            [("X-Upper", "v")],
            [("connection", "close")],
            [(":status", "200")],
            [("x", "a\r\nb")],
            [("x", " lead")],
            [("x", "trail\t")],
            [("x", "nul\x00")],
            [("a", "b"), (":path", "/")],
        ):
            with self.assertRaises(InvalidFieldError, msg=fields):
                encode_header_block(fields)

    def test_template_without_optional_fields(self) -> None:
        template = HeaderBlockTemplate("localhost")
        self.assertEqual(template.encode(b"/x"), b"\x83\x87\x01\x09localhost\x04\x02/x")
        long_path = b"/" + b"p" * 199
        self.assertEqual(
            hpack.Decoder().decode(template.encode(long_path, apns_id=b"I" * 130), raw=True)[3:],
            [(b":path", long_path), (b"apns-id", b"I" * 130)],
        )

    def test_template_with_authorization_and_repr(self) -> None:
        template = HeaderBlockTemplate("h", topic="t", authorization="bearer one")
        refreshed = template.with_authorization("bearer two")
        self.assertIn(b"bearer one", template.encode(b"/"))
        self.assertIn(b"bearer two", refreshed.encode(b"/"))
        self.assertEqual(refreshed.topic, "t")
        self.assertNotIn("bearer", repr(template))
        self.assertNotIn(b"authorization", HeaderBlockTemplate("h").encode(b"/"))

    def test_template_extra_headers(self) -> None:
        template = HeaderBlockTemplate("h", extra_headers=[("apns-channel-id", "abc")])
        self.assertTrue(template.encode(b"/").endswith(b"\x00\x0fapns-channel-id\x03abc"))
        with self.assertRaises(InvalidFieldError):
            HeaderBlockTemplate("h", extra_headers=[(":path", "/")])
        with self.assertRaises(InvalidFieldError):
            HeaderBlockTemplate("h", extra_headers=[("Bad", "x")])

    def test_template_rejects_bad_values(self) -> None:
        with self.assertRaises(InvalidFieldError):
            HeaderBlockTemplate("h", topic="a\nb")
        template = HeaderBlockTemplate("h")
        for kwargs in ({"apns_id": "x\r\n"}, {"collapse_id": " x"}, {"collapse_id": b"\x00"}):
            with self.assertRaises(InvalidFieldError, msg=kwargs):
                template.encode(b"/", **kwargs)  # type: ignore[arg-type]
        for path in (b"", b"x", b"/a b ", b"/\r\n"):
            with self.assertRaises(InvalidFieldError, msg=path):
                template.encode(path)


class Settings(SynchronousTestCase):
    def test_assumed_limit_before_server_settings(self) -> None:
        conn = H2ClientConnection()
        self.assertEqual(conn.available_streams, 1)
        self.assertFalse(conn.remote_settings_received)
        conn.send_request(BLOCK)
        self.assertEqual(conn.available_streams, 0)
        with self.assertRaises(StreamLimitError):
            conn.send_request(BLOCK)

    def test_max_concurrent_streams_up_and_down(self) -> None:
        conn = connected(max_streams=1)
        self.assertTrue(conn.remote_settings_received)
        conn.send_request(BLOCK)
        self.assertRaises(StreamLimitError, conn.send_request, BLOCK)
        [event] = conn.receive_data(settings_frame((3, 1000)))
        assert isinstance(event, SettingsChanged)
        self.assertEqual(event.max_concurrent_streams, 1000)
        self.assertEqual(event.changed, [(3, 1000)])
        self.assertEqual(conn.available_streams, 999)
        for _ in range(9):
            conn.send_request(BLOCK)
        self.assertEqual(conn.open_streams, 10)
        # Decrease below the open count: existing streams continue, no new ones.
        conn.receive_data(settings_frame((3, 4)))
        self.assertEqual(conn.max_concurrent_streams, 4)
        self.assertEqual(conn.available_streams, 0)
        self.assertRaises(StreamLimitError, conn.send_request, BLOCK)
        conn.data_to_send()
        for sid in range(1, 15, 2):
            conn.receive_data(response(sid))
        self.assertEqual(conn.open_streams, 3)
        self.assertEqual(conn.available_streams, 1)
        self.assertEqual(conn.send_request(BLOCK), 21)

    def test_ack_sent_and_settings_reported(self) -> None:
        conn = connected()
        events = conn.receive_data(
            settings_frame((1, 0), (4, 1000), (5, 20000), (6, 1234), (0x99, 7), (8, 1))
        )
        self.assertEqual(conn.data_to_send(), frame(SETTINGS, ACK, 0))
        self.assertEqual(
            events,
            [
                SettingsChanged(
                    max_concurrent_streams=100,
                    initial_window_size=1000,
                    max_frame_size=20000,
                    header_table_size=0,
                    max_header_list_size=1234,
                    changed=[(1, 0), (4, 1000), (5, 20000), (6, 1234), (0x99, 7), (8, 1)],
                )
            ],
        )
        # The server's HEADER_TABLE_SIZE changes nothing in what we send (we never index).
        conn.send_request(BLOCK)
        self.assertEqual(conn.data_to_send(), bytes.fromhex("000004 01 05 00000001 20838784"))

    def test_initial_window_size_delta_applies_to_open_streams(self) -> None:
        conn = connected()
        conn.receive_data(settings_frame((4, 100)))
        conn.data_to_send()
        sid = conn.send_request(BLOCK, b"a" * 250)
        frames = parse_frames(conn.data_to_send())
        self.assertEqual([len(p) for t, _, _, p in frames if t == DATA], [100])
        self.assertEqual(conn.buffered_body_bytes, 150)
        # Lowering makes the stream window negative: nothing moves, even with a WINDOW_UPDATE.
        conn.receive_data(settings_frame((4, 0)))
        conn.receive_data(window_update(sid, 50))
        self.assertEqual(conn.data_to_send(), frame(SETTINGS, ACK, 0))
        # Raising to 300: window = 300 - 100 sent + 50 = 250 → the rest (150) goes out.
        conn.receive_data(settings_frame((4, 300)))
        frames = parse_frames(conn.data_to_send())
        self.assertEqual(
            [(t, f, len(p)) for t, f, _, p in frames],
            [(SETTINGS, ACK, 0), (DATA, END_STREAM, 150)],
        )
        self.assertEqual(conn.buffered_body_bytes, 0)

    def test_our_header_table_size_applies_after_ack(self) -> None:
        # We advertise 8192: before the server's ACK, a size update to 8192 is an error.
        early = connected(header_table_size=8192)
        sid = early.send_request(BLOCK)
        event = terminated(early.receive_data(response(sid, b"\x3f\xe1\x3f" + STATUS_200)))
        self.assertEqual(event.error_code, ErrorCode.COMPRESSION_ERROR)
        # After the ACK it is accepted.
        conn = connected(header_table_size=8192)
        sid = conn.send_request(BLOCK)
        conn.receive_data(frame(SETTINGS, ACK, 0))
        [event2] = conn.receive_data(response(sid, b"\x3f\xe1\x3f" + STATUS_200))
        self.assertIsInstance(event2, ResponseReceived)

    def test_settings_violations(self) -> None:
        cases = [
            (settings_frame((2, 1)), ErrorCode.PROTOCOL_ERROR),  # a server enabling push
            (settings_frame((2, 2)), ErrorCode.PROTOCOL_ERROR),
            (settings_frame((4, 2**31)), ErrorCode.FLOW_CONTROL_ERROR),
            (settings_frame((5, 16383)), ErrorCode.PROTOCOL_ERROR),
            (settings_frame((5, 2**24)), ErrorCode.PROTOCOL_ERROR),
            (settings_frame((8, 2)), ErrorCode.PROTOCOL_ERROR),
            (frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00"), ErrorCode.FRAME_SIZE_ERROR),
            (frame(SETTINGS, ACK, 0, b"\x00" * 6), ErrorCode.FRAME_SIZE_ERROR),
            (frame(SETTINGS, 0, 1), ErrorCode.PROTOCOL_ERROR),
        ]
        for data, code in cases:
            conn = connected()
            event = terminated(conn.receive_data(data))
            self.assertEqual(event.error_code, code, data)

    def test_window_overflow_through_settings(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        conn.receive_data(window_update(sid, 2**31 - 1 - 65535))
        event = terminated(conn.receive_data(settings_frame((4, 65536))))
        self.assertEqual(event.error_code, ErrorCode.FLOW_CONTROL_ERROR)
        self.assertEqual(event.unanswered_stream_ids, [sid])

    def test_first_frame_must_be_settings(self) -> None:
        conn = H2ClientConnection()
        event = terminated(conn.receive_data(frame(PING, 0, 0, b"12345678")))
        self.assertEqual(event.error_code, ErrorCode.PROTOCOL_ERROR)
        conn = H2ClientConnection()
        event = terminated(conn.receive_data(frame(SETTINGS, ACK, 0)))
        self.assertEqual(event.error_code, ErrorCode.PROTOCOL_ERROR)


class FlowControl(SynchronousTestCase):
    def test_blocking_and_resuming_in_order(self) -> None:
        conn = connected()  # server windows: 65,535 connection and per stream
        body = b"b" * 30000
        sids = [conn.send_request(BLOCK, body) for _ in range(4)]
        frames = parse_frames(conn.data_to_send())
        sent = [(s, len(p)) for t, _, s, p in frames if t == DATA]
        self.assertEqual(sent, [(1, 16384), (1, 13616), (3, 16384), (3, 13616), (5, 5535)])
        self.assertEqual(conn.outbound_window, 0)
        self.assertEqual(conn.buffered_body_bytes, 30000 - 5535 + 30000)
        # A stream WINDOW_UPDATE alone does not help: the connection window is 0.
        conn.receive_data(window_update(7, 10))
        self.assertEqual(conn.data_to_send(), b"")
        # Connection window opens: queued bodies flow in FIFO order.
        conn.receive_data(window_update(0, 40000))
        frames = parse_frames(conn.data_to_send())
        sent = [(s, f, len(p)) for t, f, s, p in frames if t == DATA]
        self.assertEqual(sent, [(5, 0, 16384), (5, END_STREAM, 8081), (7, 0, 15535)])
        # A new request queues behind the others while the connection window is 0.
        sid9 = conn.send_request(BLOCK, b"n" * 10)
        self.assertEqual([t for t, *_ in parse_frames(conn.data_to_send())], [HEADERS])
        conn.receive_data(window_update(0, 1_000_000))
        frames = parse_frames(conn.data_to_send())
        sent = [(s, f, len(p)) for t, f, s, p in frames if t == DATA]
        self.assertEqual(sent, [(7, END_STREAM, 30000 - 15535), (sid9, END_STREAM, 10)])
        self.assertEqual(conn.buffered_body_bytes, 0)
        for sid in [*sids, sid9]:
            [event] = conn.receive_data(response(sid))
            self.assertIsInstance(event, ResponseReceived)

    def test_stream_window_blocks_alone(self) -> None:
        conn = connected()
        conn.receive_data(settings_frame((4, 10)))
        conn.data_to_send()
        sid = conn.send_request(BLOCK, b"0123456789abcdef")
        data = [p for t, _, _, p in parse_frames(conn.data_to_send()) if t == DATA]
        self.assertEqual(data, [b"0123456789"])
        # Another stream is not held up by the first one's stream window.
        sid2 = conn.send_request(BLOCK, b"xy")
        data = [(s, p) for t, _, s, p in parse_frames(conn.data_to_send()) if t == DATA]
        self.assertEqual(data, [(sid2, b"xy")])
        conn.receive_data(window_update(sid, 3))
        data = [(f, p) for t, f, _, p in parse_frames(conn.data_to_send()) if t == DATA]
        self.assertEqual(data, [(0, b"abc")])
        conn.receive_data(window_update(sid, 100))
        data = [(f, p) for t, f, _, p in parse_frames(conn.data_to_send()) if t == DATA]
        self.assertEqual(data, [(END_STREAM, b"def")])

    def test_send_data_after_open_request(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK, b"ab", end_stream=False)
        conn.send_data(sid, b"cd")
        conn.send_data(sid, b"", end_stream=True)
        frames = parse_frames(conn.data_to_send())
        self.assertEqual(
            [(t, f, p) for t, f, _, p in frames[1:]],
            [(DATA, 0, b"ab"), (DATA, 0, b"cd"), (DATA, END_STREAM, b"")],
        )
        self.assertRaises(StreamClosedError, conn.send_data, sid, b"more")
        self.assertRaises(StreamClosedError, conn.send_data, 99, b"x")
        # Queued data is extended while blocked.
        conn.receive_data(settings_frame((4, 3)))
        conn.data_to_send()
        sid = conn.send_request(BLOCK, b"12345", end_stream=False)
        conn.send_data(sid, b"678", end_stream=True)
        conn.receive_data(window_update(sid, 100))
        data = [(f, p) for t, f, _, p in parse_frames(conn.data_to_send()) if t == DATA]
        self.assertEqual(data, [(0, b"123"), (END_STREAM, b"45678")])

    def test_empty_body_open_request(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK, end_stream=False)
        self.assertEqual(parse_frames(conn.data_to_send())[0][1], END_HEADERS)
        conn.send_data(sid, b"z", end_stream=True)
        self.assertEqual(parse_frames(conn.data_to_send()), [(DATA, END_STREAM, sid, b"z")])

    def test_window_update_errors(self) -> None:
        conn = connected()
        event = terminated(conn.receive_data(window_update(0, 0)))
        self.assertEqual(event.error_code, ErrorCode.PROTOCOL_ERROR)
        conn = connected()
        event = terminated(conn.receive_data(window_update(0, 2**31 - 65535)))
        self.assertEqual(event.error_code, ErrorCode.FLOW_CONTROL_ERROR)
        conn = connected()
        event = terminated(conn.receive_data(frame(WINDOW_UPDATE, 0, 0, b"\x00\x01")))
        self.assertEqual(event.error_code, ErrorCode.FRAME_SIZE_ERROR)
        conn = connected()
        event = terminated(conn.receive_data(window_update(5, 1)))  # idle stream
        self.assertEqual(event.error_code, ErrorCode.PROTOCOL_ERROR)

    def test_stream_window_update_errors_reset_the_stream(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        sid2 = conn.send_request(BLOCK)
        conn.data_to_send()
        [event] = conn.receive_data(window_update(sid, 0))
        self.assertEqual(event, StreamReset(sid, ErrorCode.PROTOCOL_ERROR, False, event.reason))
        self.assertEqual(conn.data_to_send(), rst(sid, ErrorCode.PROTOCOL_ERROR))
        [event] = conn.receive_data(window_update(sid2, 2**31 - 65535))
        self.assertEqual(event.error_code, ErrorCode.FLOW_CONTROL_ERROR)
        self.assertFalse(event.remote)
        self.assertEqual(conn.data_to_send(), rst(sid2, ErrorCode.FLOW_CONTROL_ERROR))
        # Updates for these closed streams are now ignored.
        self.assertEqual(conn.receive_data(window_update(sid, 5)), [])
        self.assertEqual(conn.open_streams, 0)

    def test_response_before_request_body_is_sent(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK, b"p" * 100_000)
        conn.data_to_send()
        events = conn.receive_data(response(sid, STATUS_400 + literal(b"content-length", b"0")))
        self.assertEqual([type(e) for e in events], [ResponseReceived])
        self.assertEqual(events[0].status, 400)
        # We stop sending the body: RST_STREAM(CANCEL), and nothing more for it.
        self.assertEqual(conn.data_to_send(), rst(sid, ErrorCode.CANCEL))
        conn.receive_data(window_update(0, 1_000_000))
        self.assertEqual(conn.data_to_send(), b"")
        self.assertEqual(conn.buffered_body_bytes, 0)

    def test_inbound_connection_window_enforced(self) -> None:
        conn = connected(connection_window=65535, initial_window=100_000)
        sid = conn.send_request(BLOCK)
        conn.receive_data(response(sid, end_stream=False))
        for _ in range(3):
            self.assertEqual(conn.receive_data(frame(DATA, 0, sid, b"d" * 16000)), [])
        # 48,000 consumed → we replenished 48,000 (half the window passed).
        self.assertIn(window_update(0, 48000), conn.data_to_send())
        conn.receive_data(frame(DATA, 0, sid, b"d" * 16000) * 4)
        self.assertIn(window_update(0, 64000), conn.data_to_send())
        # The window is full again (65,535): 81,920 bytes at once is too much.
        event = terminated(conn.receive_data(frame(DATA, 0, sid, b"d" * 16384) * 5))
        self.assertEqual(event.error_code, ErrorCode.FLOW_CONTROL_ERROR)

    def test_inbound_stream_window_enforced(self) -> None:
        conn = connected(initial_window=1000)
        sid = conn.send_request(BLOCK)
        conn.receive_data(response(sid, end_stream=False) + frame(DATA, 0, sid, b"a" * 1000))
        conn.data_to_send()
        # The stream window (1000) was replenished by 1000 at the half-way mark; 1001 more is
        # one byte too many.
        events = conn.receive_data(frame(DATA, 0, sid, b"a" * 1001))
        self.assertEqual(
            events, [StreamReset(sid, ErrorCode.FLOW_CONTROL_ERROR, False, events[0].reason)]
        )
        # The connection survives and counted those bytes.
        self.assertFalse(conn.is_dead)


class Responses(SynchronousTestCase):
    def test_headers_only_response(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        block = STATUS_200 + literal(b"apns-id", b"ABC") + literal(b"apns-unique-id", b"U-1")
        [event] = conn.receive_data(response(sid, block))
        self.assertEqual(
            event,
            ResponseReceived(sid, 200, [(b"apns-id", b"ABC"), (b"apns-unique-id", b"U-1")], b""),
        )
        assert isinstance(event, ResponseReceived)
        self.assertEqual(event.header(b"apns-id"), b"ABC")
        self.assertIsNone(event.header(b"nope"))
        self.assertEqual(conn.open_streams, 0)

    def test_response_with_body_in_several_data_frames(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        body = b'{"reason":"BadDeviceToken"}'
        events = conn.receive_data(
            response(
                sid, STATUS_400 + literal(b"content-length", b"%d" % len(body)), end_stream=False
            )
            + frame(DATA, 0, sid, body[:10])
            + frame(DATA, 0, sid, b"")
        )
        self.assertEqual(events, [])
        [event] = conn.receive_data(frame(DATA, END_STREAM, sid, body[10:]))
        self.assertEqual((event.status, event.body), (400, body))

    def test_padded_data_and_headers_with_priority(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        block = STATUS_200 + literal(b"apns-id", b"X")
        headers = frame(
            HEADERS,
            END_HEADERS | PADDED | PRIORITY_FLAG,
            sid,
            b"\x03" + struct.pack(">IB", 0x80000000, 15) + block + b"\x00\x00\x00",
        )
        data = frame(DATA, END_STREAM | PADDED, sid, b"\x05" + b"body" + b"\x00" * 5)
        [event] = conn.receive_data(headers + data)
        self.assertEqual(
            (event.status, event.headers, event.body), (200, [(b"apns-id", b"X")], b"body")
        )

    def test_padding_counts_against_flow_control(self) -> None:
        conn = connected(connection_window=65535, initial_window=65535)
        sid = conn.send_request(BLOCK)
        conn.receive_data(response(sid, end_stream=False))
        payload = b"\xff" + b"a" * 10 + b"\x00" * 255
        for _ in range(130):
            conn.receive_data(frame(DATA, PADDED, sid, payload))
        out = parse_frames(conn.data_to_send())
        increments = [
            struct.unpack(">I", p)[0] for t, _, s, p in out if t == WINDOW_UPDATE and s == 0
        ]
        self.assertEqual(sum(increments), 266 * 124)  # replenished at 32,767+: 124 frames

    def test_bad_padding(self) -> None:
        for data in (
            frame(DATA, PADDED, 1, b"\x05abc"),
            frame(DATA, PADDED, 1, b""),
            frame(HEADERS, END_HEADERS | PADDED, 1, b"\x05\x88"),
        ):
            conn = connected()
            conn.send_request(BLOCK)
            event = terminated(conn.receive_data(data))
            self.assertEqual(event.error_code, ErrorCode.PROTOCOL_ERROR, data)
        conn = connected()
        conn.send_request(BLOCK)
        event = terminated(
            conn.receive_data(frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\x00"))
        )
        self.assertEqual(event.error_code, ErrorCode.FRAME_SIZE_ERROR)

    def test_headers_and_continuation(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        block = STATUS_200 + literal(b"apns-id", b"abc") + literal(b"x", b"y" * 100)
        events = conn.receive_data(
            frame(HEADERS, END_STREAM, sid, block[:3])
            + frame(CONTINUATION, 0, sid, block[3:20])
            + frame(CONTINUATION, END_HEADERS, sid, block[20:])
        )
        self.assertEqual(
            events, [ResponseReceived(sid, 200, [(b"apns-id", b"abc"), (b"x", b"y" * 100)], b"")]
        )

    def test_continuation_violations(self) -> None:
        cases = [
            frame(HEADERS, 0, 1, b"\x88") + frame(PING, 0, 0, b"12345678"),
            frame(HEADERS, 0, 1, b"\x88") + frame(CONTINUATION, END_HEADERS, 3, b""),
            frame(CONTINUATION, END_HEADERS, 1, b"\x88"),
            frame(HEADERS, 0, 1, b"\x88") + frame(0xEE, 0, 0, b""),  # even unknown types
        ]
        for data in cases:
            conn = connected()
            conn.send_request(BLOCK)
            conn.send_request(BLOCK)
            event = terminated(conn.receive_data(data))
            self.assertEqual(event.error_code, ErrorCode.PROTOCOL_ERROR, data)
            self.assertEqual(event.unanswered_stream_ids, [1, 3])

    def test_continuation_flood_is_bounded(self) -> None:
        conn = connected(max_header_list_size=1000)
        conn.send_request(BLOCK)
        data = frame(HEADERS, 0, 1, b"\x88") + frame(CONTINUATION, 0, 1, b"\x00" * 3000) * 3
        event = terminated(conn.receive_data(data))
        self.assertEqual(event.error_code, ErrorCode.ENHANCE_YOUR_CALM)

    def test_oversized_header_list(self) -> None:
        conn = connected(max_header_list_size=100)
        conn.send_request(BLOCK)
        event = terminated(conn.receive_data(response(1, STATUS_200 + literal(b"x", b"y" * 100))))
        self.assertEqual(event.error_code, ErrorCode.ENHANCE_YOUR_CALM)

    def test_interim_response_then_final(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        interim = response(sid, b"\x08\x03100", end_stream=False)  # :status 100 (name idx 8)
        self.assertEqual(conn.receive_data(interim), [])
        [event] = conn.receive_data(response(sid, STATUS_200))
        self.assertEqual(event.status, 200)

    def test_trailers_tolerated(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        events = conn.receive_data(
            response(sid, STATUS_200, end_stream=False)
            + frame(DATA, 0, sid, b"ok")
            + response(sid, literal(b"x-trailer", b"t"))
        )
        self.assertEqual(events, [ResponseReceived(sid, 200, [], b"ok", [(b"x-trailer", b"t")])])

    def test_malformed_responses_reset_the_stream(self) -> None:
        cases = [
            response(1, literal(b"apns-id", b"x")),  # no :status
            response(1, literal(b":status", b"20")),
            response(1, literal(b":status", b"abc")),
            response(1, literal(b"a", b"b") + STATUS_200),  # pseudo after regular
            response(1, STATUS_200 + STATUS_200),  # duplicate :status
            response(1, STATUS_200 + literal(b":path", b"/")),
            response(1, b"\x08\x03100"),  # 1xx with END_STREAM
            response(1, b"\x08\x03101", end_stream=False),
            response(1, STATUS_200 + literal(b"content-length", b"x")),
            response(
                1, STATUS_200 + literal(b"content-length", b"1") + literal(b"content-length", b"2")
            ),
            response(1, STATUS_200 + literal(b"content-length", b"5")),  # no body follows
            response(1, STATUS_200, end_stream=False) + frame(HEADERS, END_HEADERS, 1, b""),
            response(1, STATUS_200, end_stream=False) + response(1, STATUS_200),  # pseudo trailer
            frame(DATA, END_STREAM, 1, b"early"),  # DATA before HEADERS
            frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, struct.pack(">IB", 1, 0) + STATUS_200),
            frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 0)),  # depends on itself
            frame(PRIORITY, 0, 1, b"\x00" * 4),
        ]
        for data in cases:
            conn = connected()
            sid = conn.send_request(BLOCK)
            other = conn.send_request(BLOCK)
            conn.data_to_send()
            events = conn.receive_data(data)
            self.assertEqual(len(events), 1, data)
            event = events[0]
            assert isinstance(event, StreamReset), (data, events)
            self.assertEqual(event.stream_id, sid)
            self.assertFalse(event.remote)
            self.assertTrue(event.reason)
            self.assertIn(event.error_code, (ErrorCode.PROTOCOL_ERROR, ErrorCode.FRAME_SIZE_ERROR))
            self.assertEqual(conn.data_to_send(), rst(sid, event.error_code))
            # The connection is fine: the other stream completes.
            self.assertEqual(
                [type(e) for e in conn.receive_data(response(other))], [ResponseReceived]
            )

    def test_content_length_ignored_for_204(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        [event] = conn.receive_data(response(sid, b"\x89" + literal(b"content-length", b"7")))
        self.assertEqual(event.status, 204)

    def test_body_limit(self) -> None:
        conn = connected(max_response_body=10)
        sid = conn.send_request(BLOCK)
        conn.data_to_send()
        conn.receive_data(response(sid, STATUS_200, end_stream=False))
        [event] = conn.receive_data(frame(DATA, 0, sid, b"x" * 11))
        self.assertEqual(
            (event.stream_id, event.error_code, event.remote), (sid, ErrorCode.CANCEL, False)
        )
        self.assertEqual(conn.data_to_send(), rst(sid, ErrorCode.CANCEL))

    def test_dynamic_table_kept_in_sync_for_reset_streams(self) -> None:
        encoder = hpack.Encoder()
        conn = connected()
        s1, s2, s3 = (conn.send_request(BLOCK) for _ in range(3))
        conn.reset_stream(s1)
        conn.data_to_send()
        # The server answers s1 anyway (it had not seen our reset), indexing apns-id.
        first = encoder.encode([(b":status", b"200"), (b"apns-id", b"SAME"), (b"x-a", b"1")])
        self.assertEqual(conn.receive_data(response(s1, first)), [])
        # The same fields for s2 are now dynamic-table references.
        second = encoder.encode([(b":status", b"200"), (b"apns-id", b"SAME"), (b"x-a", b"1")])
        self.assertLess(len(second), len(first))
        [event] = conn.receive_data(response(s2, second))
        self.assertEqual(event.headers, [(b"apns-id", b"SAME"), (b"x-a", b"1")])
        # DATA for the reset stream is ignored.
        self.assertEqual(conn.receive_data(frame(DATA, END_STREAM, s1, b"late")), [])
        [event] = conn.receive_data(response(s3, encoder.encode([(b":status", b"410")])))
        self.assertEqual(event.status, 410)

    def test_hpack_garbage_is_a_compression_error(self) -> None:
        for block in (b"\xff\xff\xff\xff\xff\xff", b"\xbf", b"\x00\x05ab", b"\x88\x20"):
            conn = connected()
            conn.send_request(BLOCK)
            event = terminated(conn.receive_data(response(1, block)))
            self.assertEqual(event.error_code, ErrorCode.COMPRESSION_ERROR, block)
        # Even on a stream we reset: the decoder state is lost either way.
        conn = connected()
        conn.send_request(BLOCK)
        conn.reset_stream(1)
        event = terminated(conn.receive_data(response(1, b"\xbf")))
        self.assertEqual(event.error_code, ErrorCode.COMPRESSION_ERROR)


class StreamsAndConnection(SynchronousTestCase):
    def test_rst_stream_from_server(self) -> None:
        conn = connected()
        s1, s3 = conn.send_request(BLOCK), conn.send_request(BLOCK)
        [event] = conn.receive_data(rst(s1, ErrorCode.REFUSED_STREAM))
        self.assertEqual(event, StreamReset(s1, ErrorCode.REFUSED_STREAM, True))
        assert isinstance(event, StreamReset)
        self.assertTrue(event.retry_safe)
        self.assertEqual(event.error_name, "REFUSED_STREAM")
        [event] = conn.receive_data(rst(s3, ErrorCode.INTERNAL_ERROR))
        self.assertFalse(event.retry_safe)
        # RST_STREAM for a closed stream is ignored; after a response, no second outcome.
        self.assertEqual(conn.receive_data(rst(s1, ErrorCode.CANCEL)), [])
        s5 = conn.send_request(BLOCK)
        conn.receive_data(response(s5))
        self.assertEqual(conn.receive_data(rst(s5, ErrorCode.NO_ERROR)), [])

    def test_frames_on_idle_streams(self) -> None:
        for data in (
            rst(1, 0),
            rst(2, 0),
            rst(0, 0),
            response(1),
            response(2),
            frame(DATA, 0, 1, b"x"),
            frame(DATA, 0, 0, b"x"),
            frame(HEADERS, END_HEADERS, 0, b"\x88"),
            frame(PRIORITY, 0, 0, b"\x00" * 5),
            frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02\x82"),
            frame(PING, 0, 1, b"12345678"),
            frame(GOAWAY, 0, 1, b"\x00" * 8),
        ):
            conn = connected()
            event = terminated(conn.receive_data(data))
            self.assertEqual(event.error_code, ErrorCode.PROTOCOL_ERROR, data)
        # PRIORITY on an idle stream is allowed.
        conn = connected()
        self.assertEqual(conn.receive_data(frame(PRIORITY, 0, 9, b"\x00\x00\x00\x00\x10")), [])

    def test_frame_size_errors(self) -> None:
        for data in (
            frame(PING, 0, 0, b"1234567"),
            frame(RST_STREAM, 0, 1, b"\x00"),
            frame(GOAWAY, 0, 0, b"\x00" * 7),
            b"\x00\x40\x01\x00\x00\x00\x00\x00\x01",  # 16,385 bytes announced: no need to wait
        ):
            conn = connected()
            conn.send_request(BLOCK)
            event = terminated(conn.receive_data(data))
            self.assertEqual(event.error_code, ErrorCode.FRAME_SIZE_ERROR, data)
        # A bigger frame is fine once we advertised it.
        conn = connected(max_inbound_frame_size=20000)
        sid = conn.send_request(BLOCK)
        [event] = conn.receive_data(
            response(sid, end_stream=False) + frame(DATA, END_STREAM, sid, b"z" * 20000)
        )
        self.assertEqual(len(event.body), 20000)

    def test_ping(self) -> None:
        conn = connected()
        conn.ping(b"abcdefgh")
        self.assertEqual(conn.data_to_send(), frame(PING, 0, 0, b"abcdefgh"))
        self.assertEqual(
            conn.receive_data(frame(PING, ACK, 0, b"abcdefgh")), [PingAcknowledged(b"abcdefgh")]
        )
        self.assertEqual(conn.receive_data(frame(PING, 0, 0, b"zzzzzzzz")), [])
        self.assertEqual(conn.data_to_send(), frame(PING, ACK, 0, b"zzzzzzzz"))
        self.assertRaises(ValueError, conn.ping, b"short")

    def test_unknown_frame_types_are_ignored(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        data = frame(0xA, 0, 0, b"\x00\x00") + frame(0xFA, 0xFF, sid, b"junk") + response(sid)
        self.assertEqual([type(e) for e in conn.receive_data(data)], [ResponseReceived])

    def test_goaway(self) -> None:
        conn = connected()
        sids = [conn.send_request(BLOCK) for _ in range(5)]  # 1, 3, 5, 7, 9
        [event] = conn.receive_data(goaway(5, ErrorCode.NO_ERROR, b'{"reason":"Shutdown"}'))
        self.assertEqual(
            event, GoAwayReceived(5, ErrorCode.NO_ERROR, b'{"reason":"Shutdown"}', [7, 9])
        )
        self.assertTrue(conn.is_closing)
        self.assertFalse(conn.is_dead)
        self.assertEqual(conn.goaway_last_stream_id, 5)
        self.assertEqual(conn.available_streams, 0)
        self.assertRaises(ConnectionClosingError, conn.send_request, BLOCK)
        self.assertEqual(conn.open_stream_ids, [1, 3, 5])
        # Streams at or below last-stream-id still complete; late frames for 7 are ignored.
        self.assertEqual(
            [type(e) for e in conn.receive_data(response(sids[0]))], [ResponseReceived]
        )
        self.assertEqual(conn.receive_data(response(7)), [])
        # A second GOAWAY lowers the limit.
        [event] = conn.receive_data(goaway(1, ErrorCode.INTERNAL_ERROR))
        self.assertEqual(event.unprocessed_stream_ids, [3, 5])
        self.assertEqual(event.error_name, "INTERNAL_ERROR")
        self.assertEqual(conn.open_streams, 0)
        self.assertEqual(conn.goaway_last_stream_id, 1)
        # A GOAWAY never makes a stream's outcome appear twice.
        self.assertEqual(conn.receive_data(goaway(0, 0))[0].unprocessed_stream_ids, [])

    def test_graceful_close(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        conn.data_to_send()
        self.assertEqual(conn.close(), [])
        self.assertEqual(conn.data_to_send(), goaway(0, 0))
        self.assertTrue(conn.is_closing)
        self.assertRaises(ConnectionClosingError, conn.send_request, BLOCK)
        [event] = conn.receive_data(response(sid))
        self.assertIsInstance(event, ResponseReceived)

    def test_abortive_close(self) -> None:
        conn = connected()
        sids = [conn.send_request(BLOCK) for _ in range(3)]
        self.assertEqual(conn.close(ErrorCode.INTERNAL_ERROR, b"x"), sids)
        self.assertTrue(conn.data_to_send().endswith(goaway(0, ErrorCode.INTERNAL_ERROR, b"x")))
        self.assertTrue(conn.is_dead)
        self.assertEqual(conn.receive_data(response(1)), [])
        self.assertEqual(conn.close(), [])
        self.assertRaises(ConnectionClosingError, conn.ping)
        self.assertFalse(conn.reset_stream(1))

    def test_termination_sends_goaway_and_goes_quiet(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        conn.data_to_send()
        events = conn.receive_data(
            frame(PING, 0, 0, b"12345678")
            + frame(PUSH_PROMISE, END_HEADERS, sid, b"\x00\x00\x00\x02")
        )
        event = terminated(events)
        self.assertEqual(event.unanswered_stream_ids, [sid])
        self.assertEqual(event.error_name, "PROTOCOL_ERROR")
        error = event.as_error()
        self.assertIsInstance(error, H2ProtocolError)
        self.assertIsInstance(error, ProtocolError)
        self.assertEqual(error.error_code, ErrorCode.PROTOCOL_ERROR)
        out = parse_frames(conn.data_to_send())
        self.assertEqual([t for t, *_ in out], [PING, GOAWAY])
        self.assertEqual(out[1][3][:8], struct.pack(">II", 0, ErrorCode.PROTOCOL_ERROR))
        self.assertIn(b"PUSH_PROMISE", out[1][3])
        self.assertTrue(conn.is_dead)
        self.assertEqual(conn.receive_data(response(sid)), [])
        self.assertEqual(conn.data_to_send(), b"")
        self.assertRaises(ConnectionClosingError, conn.send_request, BLOCK)
        self.assertEqual(conn.open_streams, 0)

    def test_internal_errors_are_contained(self) -> None:
        conn = connected()
        conn.send_request(BLOCK)

        class Broken:
            def decode(self, data: bytes, raw: bool = False) -> list[tuple[bytes, bytes]]:
                return [(b":status", b"200"), None]  # type: ignore[list-item]

        conn._decoder = Broken()  # type: ignore[assignment]
        event = terminated(conn.receive_data(response(1)))
        self.assertEqual(event.error_code, ErrorCode.INTERNAL_ERROR)

    def test_stream_ids_exhausted(self) -> None:
        conn = connected()
        conn._next_stream_id = 2**31 - 1
        self.assertEqual(conn.available_streams, 1)
        self.assertEqual(conn.send_request(BLOCK), 2**31 - 1)
        self.assertEqual(conn.available_streams, 0)
        self.assertRaises(ConnectionClosingError, conn.send_request, BLOCK)

    def test_send_request_accepts_field_lists(self) -> None:
        conn = connected()
        conn.send_request([(":method", "POST"), (":scheme", "https"), (":path", "/x")], b"")
        frames = parse_frames(conn.data_to_send())
        self.assertEqual(frames[0][3], b"\x20\x83\x87\x04\x02/x")
        self.assertRaises(InvalidFieldError, conn.send_request, [("Bad", "x")])
        self.assertEqual(conn.open_streams, 1)  # the failed call changed nothing
        self.assertEqual(conn.send_request(bytearray(BLOCK)), 3)

    def test_any_chunking_gives_the_same_events(self) -> None:
        encoder = hpack.Encoder()
        data = frame(PING, 0, 0, b"pingpong") + response(
            1, encoder.encode([(b":status", b"200"), (b"apns-id", b"A")])
        )
        block3 = encoder.encode([(b":status", b"400"), (b"x", b"y" * 50)])
        data += frame(HEADERS, 0, 3, block3[:5]) + frame(CONTINUATION, END_HEADERS, 3, block3[5:])
        data += frame(DATA, END_STREAM | PADDED, 3, b"\x02{}\x00\x00")
        data += rst(5, ErrorCode.REFUSED_STREAM)
        reference = None
        for size in (1, 2, 3, 7, 9, 10, 64, len(data)):
            conn = connected()
            for _ in range(3):
                conn.send_request(BLOCK)
            conn.data_to_send()
            events = []
            for i in range(0, len(data), size):
                events += conn.receive_data(data[i : i + size])
            if reference is None:
                reference = events
                self.assertEqual(
                    [type(e) for e in events], [ResponseReceived, ResponseReceived, StreamReset]
                )
                self.assertEqual(events[1].body, b"{}")
            self.assertEqual(events, reference, size)
            self.assertEqual(conn.data_to_send(), frame(PING, ACK, 0, b"pingpong"))

    def test_error_types(self) -> None:
        for cls in (StreamLimitError, ConnectionClosingError, StreamClosedError):
            self.assertTrue(issubclass(cls, APNsError))
            self.assertFalse(issubclass(cls, ProtocolError))
        self.assertTrue(issubclass(H2ProtocolError, ProtocolError))
        self.assertEqual(error_code_name(7), "REFUSED_STREAM")
        self.assertEqual(error_code_name(0x99), "0x99")


KNOWN_EVENTS = (ResponseReceived, StreamReset, GoAwayReceived, SettingsChanged, PingAcknowledged)


class Fuzz(SynchronousTestCase):
    @settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=300,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        frames=st.lists(
            st.tuples(
                st.integers(0, 12),
                st.integers(0, 255),
                st.sampled_from([0, 1, 2, 3, 5, 7, 0x7FFFFFFF, 0x80000001]),
                st.binary(max_size=40),
            ),
            max_size=12,
        ),
        chunk=st.integers(1, 50),
    )
    def test_random_frames_never_raise(
        self, frames: list[tuple[int, int, int, bytes]], chunk: int
    ) -> None:
        conn = connected()
        for _ in range(3):
            conn.send_request(BLOCK, b"body")
        data = b"".join(frame(t, f, s, p) for t, f, s, p in frames)
        events: list[object] = []
        for i in range(0, len(data), chunk):
            events += conn.receive_data(data[i : i + chunk])
            conn.data_to_send()
        for event in events[:-1]:
            self.assertIsInstance(event, KNOWN_EVENTS)
        if conn.is_dead:
            self.assertIsInstance(events[-1], ConnectionTerminated)
            self.assertNotEqual(events[-1].error_code, ErrorCode.INTERNAL_ERROR, events[-1])
        # Whatever happened, no stream has two outcomes.
        seen: list[int] = []
        for event in events:
            if isinstance(event, (ResponseReceived, StreamReset)):
                seen.append(event.stream_id)
            elif isinstance(event, GoAwayReceived):
                seen += event.unprocessed_stream_ids
            elif isinstance(event, ConnectionTerminated):
                seen += event.unanswered_stream_ids
        seen += conn.open_stream_ids
        self.assertEqual(sorted(seen), [1, 3, 5])

    @settings(derandomize=True, database=None, deadline=None, max_examples=200)
    @given(st.binary(max_size=300))
    def test_random_bytes_never_raise(self, data: bytes) -> None:
        conn = connected()
        conn.send_request(BLOCK)
        events = conn.receive_data(data)
        for event in events:
            self.assertIsInstance(event, (*KNOWN_EVENTS, ConnectionTerminated))
