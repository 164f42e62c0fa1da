"""Edges of the sans-IO HTTP/2 connection that mutation testing found untested (issue 13)."""

from __future__ import annotations

from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.http2 import H2ClientConnection
from txapns.core.http2.errors import (
    ConnectionClosingError,
    StreamClosedError,
    StreamLimitError,
)
from txapns.core.http2.events import (
    ConnectionTerminated,
    ResponseReceived,
    SettingsChanged,
    StreamReset,
)
from txapns.core.http2.frames import ErrorCode

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
    PRIORITY,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    STATUS_200,
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


class ConnectionReceiveWindowEdgeTests(SynchronousTestCase):
    """DATA that exactly fills the connection receive window is legal (RFC 9113 §6.9.1);
    one byte more is a FLOW_CONTROL_ERROR."""

    def fill(self) -> bytes:
        # 65,535 = 3 x 16,384 + 16,383, all in one read, so no WINDOW_UPDATE of ours lands
        # between the frames.
        return b"".join(frame(DATA, 0, 1, b"d" * n) for n in (16384, 16384, 16384, 16383))

    def test_exactly_the_window_is_accepted(self) -> None:
        conn = connected(connection_window=65535, initial_window=100_000)
        sid = conn.send_request(BLOCK)
        self.assertEqual(sid, 1)
        conn.receive_data(response(sid, end_stream=False))
        self.assertEqual(conn.receive_data(self.fill()), [])
        self.assertFalse(conn.is_dead)
        # Replenished in full, and the response still completes.
        self.assertIn(window_update(0, 65535), conn.data_to_send())
        [event] = conn.receive_data(frame(DATA, END_STREAM, sid, b"e"))
        assert isinstance(event, ResponseReceived)
        self.assertEqual(len(event.body), 65536)

    def test_one_byte_over_is_a_flow_control_error(self) -> None:
        conn = connected(connection_window=65535, initial_window=100_000)
        sid = conn.send_request(BLOCK)
        conn.receive_data(response(sid, end_stream=False))
        event = terminated(conn.receive_data(self.fill() + frame(DATA, 0, sid, b"x")))
        self.assertIsInstance(event, ConnectionTerminated)
        self.assertEqual(event.error_code, ErrorCode.FLOW_CONTROL_ERROR)


S = 1  # the stream of the one request each case sends
_OPEN = response(S, end_stream=False)
_NAMES = {ConnectionTerminated: "connection", StreamReset: "stream"}


class ReasonTests(SynchronousTestCase):
    """Every rule the server can break, with the exact error code and reason we report: the
    reason goes into our GOAWAY's debug data, the log and the notification's result (the
    connection.py mutation run found most of them unread)."""

    CASES: ClassVar[list[tuple[bytes, dict[str, int], str, int, str]]] = [
        (frame(DATA, 0, 0, b"x"), {}, "connection", 1, "DATA on stream 0"),
        (
            frame(DATA, PADDED, S, b"\x03ab"),
            {},
            "connection",
            1,
            "DATA padding exceeds the payload",
        ),
        (
            frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"),
            {},
            "connection",
            6,
            "WINDOW_UPDATE length is not 4",
        ),
        (window_update(0, 0), {}, "connection", 1, "WINDOW_UPDATE with increment 0"),
        (
            window_update(0, 2**31 - 65535),
            {},
            "connection",
            3,
            "connection flow-control window above 2**31-1",
        ),
        (frame(HEADERS, END_HEADERS, 0, b"\x88"), {}, "connection", 1, "HEADERS on stream 0"),
        (
            frame(HEADERS, PADDED | END_HEADERS, S, b""),
            {},
            "connection",
            6,
            "PADDED HEADERS without pad length",
        ),
        (
            frame(HEADERS, 0, S, b"\x88") + frame(CONTINUATION, END_HEADERS, 3, b""),
            {},
            "connection",
            1,
            "CONTINUATION on another stream",
        ),
        (frame(RST_STREAM, 0, 0, b"\0\0\0\0"), {}, "connection", 1, "RST_STREAM on stream 0"),
        (frame(RST_STREAM, 0, S, b"\0\0\0"), {}, "connection", 6, "RST_STREAM length is not 4"),
        (frame(GOAWAY, 0, 1, b"\0" * 8), {}, "connection", 1, "GOAWAY on a stream"),
        (frame(GOAWAY, 0, 0, b"\0" * 7), {}, "connection", 6, "GOAWAY shorter than 8 bytes"),
        (frame(PRIORITY, 0, 0, b"\0" * 5), {}, "connection", 1, "PRIORITY on stream 0"),
        (
            frame(HEADERS, 0, S, b"\0" * 4098),  # max_header_list_size + 4096 + 1
            {"max_header_list_size": 1},
            "connection",
            11,
            "header block too large",
        ),
        (
            frame(HEADERS, 0, S, b"\0" * 2000) + frame(CONTINUATION, 0, S, b"\0" * 2098),
            {"max_header_list_size": 1},
            "connection",
            11,
            "header block too large",
        ),
        (
            _OPEN + frame(DATA, 0, S, b"d" * 16384) * 4,  # 65,536 in one read
            {"connection_window": 65535},
            "connection",
            3,
            "DATA exceeds the connection flow-control window",
        ),
        (frame(DATA, 0, S, b"x"), {}, "stream", 1, "DATA before response HEADERS"),
        (
            _OPEN + frame(DATA, 0, S, b"x" * 11),
            {"initial_window": 10},
            "stream",
            3,
            "DATA exceeds the stream window",
        ),
        (
            _OPEN + frame(DATA, 0, S, b"x" * 6) + frame(DATA, 0, S, b"x" * 5),
            {"max_response_body": 10},
            "stream",
            8,
            "response body too large",
        ),
        (window_update(S, 0), {}, "stream", 1, "WINDOW_UPDATE with increment 0"),
        (
            window_update(S, 2**31 - 65535),
            {},
            "stream",
            3,
            "stream flow-control window above 2**31-1",
        ),
        (frame(PRIORITY, 0, S, b"\0" * 4), {}, "stream", 6, "PRIORITY length is not 5"),
        (frame(PRIORITY, 0, S, b"\0\0\0\1\x10"), {}, "stream", 1, "stream depends on itself"),
        (
            frame(HEADERS, PRIORITY_FLAG | END_HEADERS | END_STREAM, S, b"\0\0\0\1\x10\x88"),
            {},
            "stream",
            1,
            "stream depends on itself",
        ),
        (
            response(S, STATUS_200 + literal(b"content-length", b"x")),
            {},
            "stream",
            1,
            "bad content-length",
        ),
        (response(S, literal(b"x-a", b"1")), {}, "stream", 1, "missing or bad :status"),
        (
            _OPEN + response(S, literal(b"x-a", b"1"), end_stream=False),
            {},
            "stream",
            1,
            "trailers without END_STREAM",
        ),
        (_OPEN + response(S, b"\x88"), {}, "stream", 1, "pseudo-header in trailers"),
        (
            response(S, STATUS_200 + literal(b"content-length", b"5"), end_stream=False)
            + frame(DATA, END_STREAM, S, b"ab"),
            {},
            "stream",
            1,
            "body length != content-length",
        ),
    ]

    def test_reasons(self) -> None:
        for data, kwargs, kind, code, reason in self.CASES:
            conn = connected(**kwargs)
            self.assertEqual(conn.send_request(BLOCK), S)
            events = conn.receive_data(data)
            self.assertEqual(
                [
                    (
                        _NAMES.get(type(e)),
                        getattr(e, "error_code", None),
                        getattr(e, "reason", None),
                    )
                    for e in events
                ],
                [(kind, code, reason)],
                reason,
            )
            if kind == "connection":
                self.assertTrue(conn.is_dead)
                # GOAWAY(last stream 0, code, the reason as debug data)
                self.assertIn(goaway(0, code, reason.encode()), conn.data_to_send())

    def test_limits_are_inclusive(self) -> None:
        # A body of exactly max_response_body, in two frames, completes.
        conn = connected(max_response_body=10)
        conn.send_request(BLOCK)
        conn.receive_data(_OPEN + frame(DATA, 0, S, b"x" * 6))
        [event] = conn.receive_data(frame(DATA, END_STREAM, S, b"x" * 4))
        assert isinstance(event, ResponseReceived)
        self.assertEqual(event.body, b"x" * 10)
        # A header block of exactly max_header_list_size + 4096 bytes is not too large.
        conn = connected(max_header_list_size=1)
        conn.send_request(BLOCK)
        self.assertEqual(conn.receive_data(frame(HEADERS, 0, S, b"\0" * 4097)), [])
        # Padding of all but the pad-length byte leaves empty data; all of it is an error.
        conn = connected()
        conn.send_request(BLOCK)
        self.assertEqual(conn.receive_data(_OPEN + frame(DATA, PADDED, S, b"\x02ab")), [])
        # The connection send window may reach exactly 2**31-1.
        conn = connected()
        self.assertEqual(conn.receive_data(window_update(0, 2**31 - 1 - 65535)), [])
        self.assertEqual(conn.outbound_window, 2**31 - 1)

    def test_ping_refusals(self) -> None:
        conn = connected()
        with self.assertRaises(ValueError) as cm:
            conn.ping(b"short")
        self.assertEqual(str(cm.exception), "PING carries exactly 8 opaque bytes")
        conn.receive_data(frame(DATA, 0, 0, b"x"))  # kills it
        with self.assertRaises(ConnectionClosingError) as closing:
            conn.ping()
        self.assertEqual(str(closing.exception), "the connection is dead")


class ConnectionWindowResumeTests(SynchronousTestCase):
    def test_a_body_held_by_the_connection_window_resumes_on_its_window_update(self) -> None:
        # The stream's own window is large (1 MiB): only the connection window (65,535)
        # holds the body back, so only a WINDOW_UPDATE on stream 0 can let the rest go.
        conn = connected()
        conn.receive_data(settings_frame((4, 1 << 20)))  # SETTINGS_INITIAL_WINDOW_SIZE
        conn.data_to_send()
        sid = conn.send_request(BLOCK, end_stream=False)
        conn.send_data(sid, b"b" * 70_000, end_stream=True)
        sent = [f for f in parse_frames(conn.data_to_send()) if f[0] == DATA]
        self.assertEqual(sum(len(f[3]) for f in sent), 65535)
        self.assertFalse(any(f[1] & END_STREAM for f in sent))
        conn.receive_data(window_update(0, 10_000))
        rest = [f for f in parse_frames(conn.data_to_send()) if f[0] == DATA]
        self.assertEqual(sum(len(f[3]) for f in rest), 70_000 - 65535)
        self.assertEqual(rest[-1][1] & END_STREAM, END_STREAM)


class MoreReasonTests(SynchronousTestCase):
    """The connection-level rules ReasonTests leaves out, each with its exact code and reason
    (all in our GOAWAY's debug data): the second connection.py mutation run found them
    unread."""

    CASES: ClassVar[list[tuple[bytes, int, str]]] = [
        (
            frame(HEADERS, 0, S, b"\x88") + frame(DATA, 0, S, b"x"),
            1,
            "header block interrupted by another frame",
        ),
        (frame(5, END_HEADERS, S, b"\0\0\0\2\x88"), 1, "PUSH_PROMISE received; push is disabled"),
        (frame(CONTINUATION, END_HEADERS, S, b"\x88"), 1, "CONTINUATION without a header block"),
        (
            frame(HEADERS, PRIORITY_FLAG | END_HEADERS, S, b"\0\0\0"),
            6,
            "HEADERS too short for PRIORITY",
        ),
        # The pad-length byte comes first: 4 bytes are left for the 5 of PRIORITY.
        (
            frame(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS, S, b"\0" * 5),
            6,
            "HEADERS too short for PRIORITY",
        ),
        (
            frame(HEADERS, PADDED | END_HEADERS, S, b"\x05ab"),
            1,
            "HEADERS padding exceeds the payload",
        ),
        (frame(SETTINGS, 0, 1), 1, "SETTINGS on a stream"),
        (frame(SETTINGS, ACK, 0, b"\0" * 6), 6, "SETTINGS ACK with a payload"),
        (frame(SETTINGS, 0, 0, b"\0" * 5), 6, "SETTINGS length is not a multiple of 6"),
        (frame(PING, 0, 1, b"\0" * 8), 1, "PING on a stream"),
        (frame(PING, 0, 0, b"\0" * 7), 6, "PING length is not 8"),
        (frame(HEADERS, END_HEADERS, 2, b"\x88"), 1, "HEADERS on idle stream 2"),
        (frame(DATA, 0, 2, b"x"), 1, "DATA on idle stream 2"),
        (rst(2, 8), 1, "RST_STREAM on idle stream 2"),
        (window_update(2, 1), 1, "WINDOW_UPDATE on idle stream 2"),
        (
            window_update(S, 2**31 - 1 - 65535) + settings_frame((4, 65536)),
            3,
            "stream window above 2**31-1 after SETTINGS",
        ),
    ]

    def test_reasons(self) -> None:
        for data, code, reason in self.CASES:
            conn = connected()
            # Streams 1 and 3 sent: even stream 2, below the highest, is still idle (only
            # a PUSH_PROMISE, which we refuse, could open it).
            self.assertEqual((conn.send_request(BLOCK), conn.send_request(BLOCK)), (S, 3))
            conn.data_to_send()
            event = terminated(conn.receive_data(data))
            self.assertEqual((event.error_code, event.reason), (code, reason))
            self.assertEqual(conn.data_to_send(), goaway(0, code, reason.encode()))

    def test_first_frame_must_be_settings(self) -> None:
        conn = H2ClientConnection()
        conn.initiate()
        conn.data_to_send()
        event = terminated(conn.receive_data(frame(PING, 0, 0, b"\0" * 8)))
        reason = "the server's first frame must be SETTINGS (its preface)"
        self.assertEqual((event.error_code, event.reason), (1, reason))

    def test_oversized_frame_whose_header_arrives_in_two_reads(self) -> None:
        # The header's first bytes alone are buffered; the check runs when it completes.
        header = frame(DATA, 0, S, b"x" * 16385)[:9]
        conn = connected()
        conn.send_request(BLOCK)
        conn.data_to_send()
        self.assertEqual(conn.receive_data(header[:4]), [])
        event = terminated(conn.receive_data(header[4:]))
        reason = "frame of 16385 bytes exceeds our MAX_FRAME_SIZE"
        self.assertEqual((event.error_code, event.reason), (6, reason))
        self.assertEqual(conn.data_to_send(), goaway(0, 6, reason.encode()))

    def test_a_long_reason_is_cut_to_256_bytes_in_goaway_only(self) -> None:
        conn = connected()
        conn.send_request(BLOCK)
        conn.data_to_send()

        class Broken:
            def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
                raise RuntimeError("x" * 300)

        conn._decoder = Broken()  # type: ignore[assignment]
        event = terminated(conn.receive_data(response(S)))
        self.assertEqual(event.reason, f"internal error: RuntimeError('{'x' * 300}')")
        self.assertEqual(conn.data_to_send(), goaway(0, 2, event.reason.encode()[:256]))


class ApiRefusalTests(SynchronousTestCase):
    """What the caller is told when it asks for something the connection cannot do."""

    def test_constructor_bounds_are_inclusive_and_explained(self) -> None:
        ok: list[dict[str, int]] = [
            {"initial_window": 1},
            {"initial_window": 2**31 - 1},
            {"connection_window": 65535},
            {"connection_window": 2**31 - 1},
            {"max_inbound_frame_size": 16384},
            {"max_inbound_frame_size": 2**24 - 1},
            {"header_table_size": 0},
            {"header_table_size": 2**32 - 1},
            {"max_header_list_size": 1},
            {"max_header_list_size": 2**32 - 1},
            {"max_response_body": 0, "assumed_max_concurrent_streams": 0},
        ]
        for kwargs in ok:
            H2ClientConnection(**kwargs)
        refused: list[tuple[dict[str, int], str]] = [
            ({"initial_window": 0}, "initial_window must be within 1..2**31-1"),
            ({"initial_window": 2**31}, "initial_window must be within 1..2**31-1"),
            ({"connection_window": 65534}, "connection_window must be within 65535..2**31-1"),
            ({"connection_window": 2**31}, "connection_window must be within 65535..2**31-1"),
            (
                {"max_inbound_frame_size": 16383},
                "max_inbound_frame_size must be within 16384..2**24-1",
            ),
            (
                {"max_inbound_frame_size": 2**24},
                "max_inbound_frame_size must be within 16384..2**24-1",
            ),
            ({"header_table_size": -1}, "header_table_size must be within 0..2**32-1"),
            ({"header_table_size": 2**32}, "header_table_size must be within 0..2**32-1"),
            ({"max_header_list_size": 0}, "max_header_list_size must be within 1..2**32-1"),
            ({"max_header_list_size": 2**32}, "max_header_list_size must be within 1..2**32-1"),
            ({"max_response_body": -1}, "limits must not be negative"),
            ({"assumed_max_concurrent_streams": -1}, "limits must not be negative"),
        ]
        for kwargs, message in refused:
            with self.assertRaises(ValueError) as cm:
                H2ClientConnection(**kwargs)
            self.assertEqual(str(cm.exception), message, kwargs)

    def test_send_request_refusals(self) -> None:
        conn = connected(max_streams=1)
        conn.send_request(BLOCK)
        with self.assertRaises(StreamLimitError) as limit:
            conn.send_request(BLOCK)
        self.assertEqual(
            str(limit.exception), "all 1 concurrent streams allowed by the server are in use"
        )
        conn = connected()
        conn._next_stream_id = 2**31 + 1
        with self.assertRaises(ConnectionClosingError) as ids:
            conn.send_request(BLOCK)
        self.assertEqual(str(ids.exception), "stream ids exhausted; use a new connection")
        conn.close()
        with self.assertRaises(ConnectionClosingError) as closing:
            conn.send_request(BLOCK)
        self.assertEqual(
            str(closing.exception), "the connection is closing (GOAWAY) or dead; use another one"
        )

    def test_no_more_data_after_end_stream(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK, b"body")  # END_STREAM on its one DATA frame
        with self.assertRaises(StreamClosedError) as cm:
            conn.send_data(sid, b"more")
        self.assertEqual(str(cm.exception), "stream 1 does not take more data")
        conn.data_to_send()
        # The request is complete: its response needs no RST_STREAM to stop a body.
        [event] = conn.receive_data(response(sid))
        self.assertIsInstance(event, ResponseReceived)
        self.assertEqual(conn.data_to_send(), b"")


def _data_frames(conn: H2ClientConnection) -> list[tuple[int, int, bytes]]:
    """(stream id, flags, payload) of each DATA frame queued since the last call."""
    return [(sid, flags, p) for t, flags, sid, p in parse_frames(conn.data_to_send()) if t == DATA]


class ReadBoundaryTests(SynchronousTestCase):
    """Frames cut anywhere by TCP: each takes effect when its last byte arrives, not before,
    not later."""

    def test_each_frame_acts_on_its_last_byte(self) -> None:
        conn = connected(max_inbound_frame_size=1 << 17)
        conn.receive_data(settings_frame((4, 1 << 20)))  # stream windows of 1 MiB
        sid = conn.send_request(BLOCK, end_stream=False)
        conn.send_data(sid, b"q" * 70_000, end_stream=True)  # 65,535 go; 4,465 wait
        for _ in range(3):
            conn.send_request(BLOCK)  # streams 3, 5, 7
        conn.data_to_send()
        headers300 = STATUS_200 + literal(b"x-a", b"v" * 120) + literal(b"x-b", b"v" * 120)
        headers300 += literal(b"x-c", b"v" * (300 - len(headers300) - 6))
        self.assertEqual(len(headers300), 300)  # length bytes 00 01 2c
        body = b"c" * 65_636  # length bytes 01 00 64: more than 16 bits
        # Each frame, and the response it completes (if any).
        frames: list[tuple[bytes, int | None]] = [
            # type 8 above its length's low byte (4): the length is not the type
            (window_update(0, 4465), None),
            (response(3, headers300), 3),
            (response(5, end_stream=False), None),
            (frame(DATA, END_STREAM, 5, body), 5),
            (response(7, end_stream=False), None),
            (frame(DATA, END_STREAM, 7, b""), 7),  # a frame of 9 bytes only
        ]
        for data, completes in frames:
            for i, byte in enumerate(data):
                events = conn.receive_data(bytes((byte,)))
                if i < len(data) - 1 or completes is None:
                    self.assertEqual(events, [], (completes, i))
                else:
                    self.assertEqual(
                        [(e.stream_id, type(e)) for e in events], [(completes, ResponseReceived)]
                    )
            if data[3] == WINDOW_UPDATE:
                # the queued rest of stream 1's body went out on the update's last byte
                self.assertEqual(sum(len(p) for s, _, p in _data_frames(conn) if s == sid), 4465)
        self.assertFalse(conn.is_dead)

    def test_a_frame_of_exactly_max_frame_size_in_two_reads(self) -> None:
        conn = connected()
        sid = conn.send_request(BLOCK)
        conn.receive_data(response(sid, end_stream=False))
        data = frame(DATA, END_STREAM, sid, b"m" * 16384)
        self.assertEqual(conn.receive_data(data[:5]), [])
        [event] = conn.receive_data(data[5:])
        assert isinstance(event, ResponseReceived)
        self.assertEqual(len(event.body), 16384)


class FlowControlEdgeTests(SynchronousTestCase):
    """Windows to the last byte, on both sides."""

    def test_the_initial_connection_window_is_ours_in_full(self) -> None:
        # initiate() raises the connection window from 65,535 to 100,000: all of it may come
        # at once; one byte more is too much.
        for extra, dead in ((b"", False), (b"x", True)):
            conn = connected(connection_window=100_000, initial_window=200_000)
            sid = conn.send_request(BLOCK)
            conn.receive_data(response(sid, end_stream=False))
            chunks = [16384] * 6 + [100_000 - 6 * 16384]
            data = b"".join(frame(DATA, 0, sid, b"d" * n) for n in chunks)
            conn.receive_data(data + (frame(DATA, 0, sid, extra) if extra else b""))
            self.assertEqual(conn.is_dead, dead)

    def test_connection_window_update_at_exactly_half(self) -> None:
        # Half of 100,001, rounded down: 50,000.
        conn = connected(connection_window=100_001, initial_window=200_000)
        sid = conn.send_request(BLOCK)
        conn.receive_data(response(sid, end_stream=False))
        conn.data_to_send()
        conn.receive_data(frame(DATA, 0, sid, b"d" * 16383) * 3)  # 49,149: not yet
        self.assertNotIn(window_update(0, 49149), conn.data_to_send())
        conn.receive_data(frame(DATA, 0, sid, b"d"))  # 49,150: still under half (50,000)
        conn.receive_data(frame(DATA, 0, sid, b"d" * 850))  # 50,000: half
        self.assertIn(window_update(0, 50000), conn.data_to_send())

    def test_stream_window_updates_count_every_byte(self) -> None:
        # Threshold 50 (half of 100): 30 + 30 bytes make one update of 60, then 50 more one
        # of exactly 50.
        conn = connected(initial_window=100)
        sid = conn.send_request(BLOCK)
        conn.receive_data(response(sid, end_stream=False))
        conn.data_to_send()
        conn.receive_data(frame(DATA, 0, sid, b"a" * 30))
        self.assertEqual(conn.data_to_send(), b"")
        conn.receive_data(frame(DATA, 0, sid, b"a" * 30))
        self.assertEqual(conn.data_to_send(), window_update(sid, 60))
        conn.receive_data(frame(DATA, 0, sid, b"a" * 49))
        self.assertEqual(conn.data_to_send(), b"")
        conn.receive_data(frame(DATA, 0, sid, b"a"))
        self.assertEqual(conn.data_to_send(), window_update(sid, 50))
        # Odd windows: the threshold is rounded down (101 → 50); a window of 1 is given
        # back byte by byte.
        for window, size in ((101, 50), (1, 1)):
            conn = connected(initial_window=window)
            sid = conn.send_request(BLOCK)
            conn.receive_data(response(sid, end_stream=False))
            conn.data_to_send()
            conn.receive_data(frame(DATA, 0, sid, b"a" * size))
            self.assertEqual(conn.data_to_send(), window_update(sid, size))

    def _exhaust(self, conn: H2ClientConnection, leave: int) -> None:
        """Use the connection send window (65,535) up to ``leave`` bytes on stream 1."""
        conn.receive_data(settings_frame((4, 1 << 20)))
        conn.send_request(BLOCK, b"x" * (65535 - leave))
        conn.data_to_send()

    def test_a_window_of_one_byte_is_used(self) -> None:
        # A new request's body: its first byte goes at once.
        conn = connected()
        self._exhaust(conn, 1)
        sid = conn.send_request(BLOCK, b"abc")
        self.assertEqual(_data_frames(conn), [(sid, 0, b"a")])
        # The same for send_data.
        conn = connected()
        self._exhaust(conn, 1)
        sid = conn.send_request(BLOCK, end_stream=False)
        conn.data_to_send()
        conn.send_data(sid, b"abc")
        self.assertEqual(_data_frames(conn), [(sid, 0, b"a")])
        # A WINDOW_UPDATE of one byte lets one more byte of a queued body go.
        conn.receive_data(window_update(0, 1))
        self.assertEqual(_data_frames(conn), [(sid, 0, b"b")])
        # A body held by its stream window gets a stream update while 1 connection byte
        # is left: that byte goes.
        conn = connected()
        conn.receive_data(settings_frame((4, 10)))
        sid = conn.send_request(BLOCK, b"y" * 30)  # 10 go
        other = conn.send_request(BLOCK, b"z" * 65524)  # 10 go
        conn.receive_data(window_update(other, 65514))  # the rest: 1 connection byte left
        conn.data_to_send()
        conn.receive_data(window_update(sid, 100))
        self.assertEqual(_data_frames(conn), [(sid, 0, b"y")])
        # A SETTINGS that grows every stream window by one byte sends one byte.
        conn = connected()
        conn.receive_data(settings_frame((4, 10)))
        sid = conn.send_request(BLOCK, b"w" * 30)
        conn.data_to_send()
        conn.receive_data(settings_frame((4, 11)))
        self.assertEqual(_data_frames(conn), [(sid, 0, b"w")])

    def test_a_body_that_exactly_fits_leaves_the_rest_of_the_windows(self) -> None:
        # 60 of a 100-byte stream window used by send_request leave 40 for send_data.
        conn = connected()
        conn.receive_data(settings_frame((4, 100)))
        sid = conn.send_request(BLOCK, b"a" * 60, end_stream=False)
        conn.send_data(sid, b"b" * 60, end_stream=True)
        self.assertEqual(
            [(s, f, len(p)) for s, f, p in _data_frames(conn)], [(sid, 0, 60), (sid, 0, 40)]
        )
        conn.receive_data(window_update(sid, 20))
        self.assertEqual(_data_frames(conn), [(sid, END_STREAM, b"b" * 20)])

    def test_settings_limits_are_inclusive(self) -> None:
        conn = connected()
        events = conn.receive_data(settings_frame((4, 2**31 - 1), (5, 2**24 - 1)))
        self.assertFalse(conn.is_dead, events)
        # A stream window may reach exactly 2**31-1 through SETTINGS.
        conn = connected()
        sid = conn.send_request(BLOCK)
        conn.receive_data(window_update(sid, 2**31 - 1 - 65536))
        conn.receive_data(settings_frame((4, 65536)))
        self.assertFalse(conn.is_dead)


class HeaderFrameTests(SynchronousTestCase):
    """HEADERS and CONTINUATION in every legal shape."""

    def _status(self, data: bytes, **kwargs: int) -> list[tuple[str, object]]:
        conn = connected(**kwargs)
        conn.send_request(BLOCK)
        return [
            (type(e).__name__, getattr(e, "status", getattr(e, "reason", None)))
            for e in conn.receive_data(data)
        ]

    def test_priority_and_padding_fields_are_skipped(self) -> None:
        ok = [("ResponseReceived", 200)]
        dep = b"\0\0\0\3\x10"  # depends on stream 3 (not itself), weight 17
        flags = END_HEADERS | END_STREAM
        # PRIORITY alone: the block starts after its 5 bytes.
        self.assertEqual(self._status(frame(HEADERS, flags | PRIORITY_FLAG, S, dep + b"\x88")), ok)
        # PADDED and PRIORITY: pad length, dependency, block, padding.
        both = b"\x02" + dep + b"\x88" + b"\0\0"
        self.assertEqual(self._status(frame(HEADERS, flags | PADDED | PRIORITY_FLAG, S, both)), ok)
        # PADDED | PRIORITY naming itself, after the pad length byte: a stream error.
        own = b"\x00\0\0\0\1\x10\x88"
        self.assertEqual(
            self._status(frame(HEADERS, flags | PADDED | PRIORITY_FLAG, S, own)),
            [("StreamReset", "stream depends on itself")],
        )
        # A first frame that is only its priority fields or only padding: the block comes
        # in CONTINUATION.
        rest = frame(CONTINUATION, END_HEADERS, S, b"\x88")
        self.assertEqual(
            self._status(frame(HEADERS, END_STREAM | PRIORITY_FLAG, S, dep) + rest), ok
        )
        self.assertEqual(
            self._status(frame(HEADERS, END_STREAM | PADDED, S, b"\x02\0\0") + rest), ok
        )
        # Self-dependency declared in HEADERS is not forgotten by its CONTINUATION.
        self.assertEqual(
            self._status(frame(HEADERS, END_STREAM | PRIORITY_FLAG, S, b"\0\0\0\1\x10") + rest),
            [("StreamReset", "stream depends on itself")],
        )

    def test_a_header_block_at_the_limit_through_continuation(self) -> None:
        # max_header_list_size 1 + 4096 = 4097 bytes, not yet ended: accepted so far.
        data = frame(HEADERS, 0, S, b"\0" * 2000) + frame(CONTINUATION, 0, S, b"\0" * 2097)
        self.assertEqual(self._status(data, max_header_list_size=1), [])

    def test_content_length_repeated(self) -> None:
        same = STATUS_200 + literal(b"content-length", b"2") * 2
        self.assertEqual(
            self._status(response(S, same, end_stream=False) + frame(DATA, END_STREAM, S, b"ab")),
            [("ResponseReceived", 200)],
        )
        differ = STATUS_200 + literal(b"content-length", b"2") + literal(b"content-length", b"3")
        self.assertEqual(self._status(response(S, differ)), [("StreamReset", "bad content-length")])

    def test_no_body_after_204_or_304_whatever_content_length_says(self) -> None:
        for status in (b"204", b"304"):
            block = b"\x08\x03" + status + literal(b"content-length", b"5")  # :status literal
            self.assertEqual(self._status(response(S, block)), [("ResponseReceived", int(status))])

    def test_header_table_size_applies_once_acknowledged(self) -> None:
        # Ours is 100: after the server's ACK, a table size update above 100 is a
        # COMPRESSION_ERROR, 100 itself is fine.
        for size, dead in ((b"\x3f\x45", False), (b"\x3f\x46", True)):  # 100, 101
            conn = connected(header_table_size=100)
            conn.send_request(BLOCK)
            conn.receive_data(frame(SETTINGS, ACK, 0))
            conn.receive_data(response(S, size + STATUS_200))
            self.assertEqual(conn.is_dead, dead)

    def test_a_header_block_of_exactly_max_frame_size_is_one_frame(self) -> None:
        conn = connected()
        block = BLOCK + literal(b"x-a", b"v" * 100) * ((16384 - 1 - len(BLOCK)) // 106)
        block += b"\x88" * (16384 - 1 - len(block))  # 16,383 + the table size update: 16,384
        conn.send_request(block)
        [(ftype, flags, sid, payload)] = parse_frames(conn.data_to_send())
        self.assertEqual(
            (ftype, flags, sid, len(payload)), (HEADERS, END_HEADERS | END_STREAM, 1, 16384)
        )


class DroppedStreamTests(SynchronousTestCase):
    """A stream that ends while its body waits for flow control never sends the rest."""

    def _queued(self) -> H2ClientConnection:
        # The connection window used up by stream 1; stream 3's whole body waits.
        conn = connected()
        conn.receive_data(settings_frame((4, 1 << 20)))
        conn.send_request(BLOCK, b"x" * 65535)
        self.assertEqual(conn.send_request(BLOCK, b"body"), 3)
        conn.data_to_send()
        return conn

    def test_no_data_for_a_dropped_stream(self) -> None:
        ways = {
            "reset by us": lambda c: c.reset_stream(3),
            "answered": lambda c: c.receive_data(response(3)),
            "reset by the server": lambda c: c.receive_data(rst(3, 0)),
            "broke a rule": lambda c: c.receive_data(frame(DATA, 0, 3, b"x")),
            "above GOAWAY": lambda c: c.receive_data(goaway(1, 0)),
        }
        for way, drop in ways.items():
            conn = self._queued()
            drop(conn)
            conn.data_to_send()
            conn.receive_data(window_update(0, 100_000))
            self.assertEqual(_data_frames(conn), [], way)
            self.assertEqual(conn.buffered_body_bytes, 0, way)


class GoAwayAndPriorityTests(SynchronousTestCase):
    def test_the_lowest_goaway_last_stream_id_counts(self) -> None:
        conn = connected()
        for _ in range(3):
            conn.send_request(BLOCK)
        conn.receive_data(goaway(3, 0))
        conn.receive_data(goaway(5, 0))
        self.assertEqual(conn.goaway_last_stream_id, 3)
        conn.receive_data(goaway(1, 0))
        self.assertEqual(conn.goaway_last_stream_id, 1)

    def test_priority_on_a_finished_stream_is_ignored(self) -> None:
        conn = connected()
        conn.send_request(BLOCK)
        conn.receive_data(response(S))
        self.assertEqual(conn.receive_data(frame(PRIORITY, 0, S, b"\0\0\0\1\x10")), [])
        self.assertFalse(conn.is_dead)


class SendQueueTests(SynchronousTestCase):
    """A stream whose queued body has all gone out can queue more later: it is not taken for
    one still in the queue (its body would wait for good)."""

    def _more_after_the_window_closes(self, conn: H2ClientConnection, sid: int) -> None:
        # The connection window is used up by send_data: the rest waits for stream 0's update.
        window = conn.outbound_window
        conn.send_data(sid, b"m" * (window + 5), end_stream=True)
        self.assertEqual(sum(len(p) for _, _, p in _data_frames(conn)), window)
        conn.receive_data(window_update(0, 5))
        self.assertEqual(_data_frames(conn), [(sid, END_STREAM, b"m" * 5)])

    def test_body_sent_by_a_connection_window_update(self) -> None:
        conn = connected()
        conn.receive_data(settings_frame((4, 1 << 20)))
        conn.send_request(BLOCK, b"x" * 65535)  # the connection window used up
        sid = conn.send_request(BLOCK, end_stream=False)
        conn.data_to_send()
        conn.send_data(sid, b"a" * 10)  # queued
        conn.receive_data(window_update(0, 10))  # sent from the queue
        self.assertEqual(_data_frames(conn), [(sid, 0, b"a" * 10)])
        conn.receive_data(window_update(0, 100))
        self._more_after_the_window_closes(conn, sid)

    def test_body_sent_by_a_stream_window_update(self) -> None:
        conn = connected()
        conn.receive_data(settings_frame((4, 10)))
        sid = conn.send_request(BLOCK, end_stream=False)
        conn.send_data(sid, b"a" * 20)  # 10 go, 10 wait for the stream's window
        conn.receive_data(window_update(sid, 1 << 20))  # the other 10 go at once
        conn.receive_data(window_update(0, 1))  # the queue finds nothing left to send
        self.assertEqual(_data_frames(conn), [(sid, 0, b"a" * 10), (sid, 0, b"a" * 10)])
        self._more_after_the_window_closes(conn, sid)

    def test_a_queued_body_that_ends_the_stream_closes_it(self) -> None:
        # The last bytes of a body held by flow control carry END_STREAM: from then on the
        # stream takes no data, and its response needs no RST_STREAM to stop a body.
        conn = connected()
        conn.receive_data(settings_frame((4, 10)))
        sid = conn.send_request(BLOCK, b"a" * 20)
        conn.receive_data(window_update(sid, 10))
        self.assertEqual(_data_frames(conn), [(sid, 0, b"a" * 10), (sid, END_STREAM, b"a" * 10)])
        self.assertRaises(StreamClosedError, conn.send_data, sid, b"more")
        [event] = conn.receive_data(response(sid))
        self.assertIsInstance(event, ResponseReceived)
        self.assertEqual(conn.data_to_send(), b"")


class SettingsEventTests(SynchronousTestCase):
    def test_defaults_until_the_server_says_otherwise(self) -> None:
        conn = H2ClientConnection()
        self.assertIs(conn.remote_settings_received, False)
        [event] = conn.receive_data(settings_frame())
        self.assertIs(conn.remote_settings_received, True)
        self.assertEqual(
            event,
            SettingsChanged(
                max_concurrent_streams=1,
                initial_window_size=65535,
                max_frame_size=16384,
                header_table_size=4096,
                max_header_list_size=None,
                changed=[],
            ),
        )
