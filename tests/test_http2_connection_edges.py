"""Edges of the sans-IO HTTP/2 connection that mutation testing found untested (issue 13)."""

from __future__ import annotations

from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.http2.errors import ConnectionClosingError
from txapns.core.http2.events import ConnectionTerminated, ResponseReceived, StreamReset
from txapns.core.http2.frames import ErrorCode

from .helpers_http2 import (
    BLOCK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PRIORITY,
    PRIORITY_FLAG,
    RST_STREAM,
    STATUS_200,
    WINDOW_UPDATE,
    connected,
    frame,
    goaway,
    literal,
    parse_frames,
    response,
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
