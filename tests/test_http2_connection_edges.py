"""Edges of the sans-IO HTTP/2 connection that mutation testing found untested (issue 13)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.http2.events import ConnectionTerminated, ResponseReceived
from txapns.core.http2.frames import ErrorCode

from .helpers_http2 import (
    BLOCK,
    DATA,
    END_STREAM,
    connected,
    frame,
    response,
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
