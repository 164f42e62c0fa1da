"""The HTTP/2 connection talks to its client only through ConnectionOwner: driven here by a
recording owner, without any HTTP2Client."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txapns._http2_connection import (
    APNsHTTP2Protocol,
    ConnectionOwner,
    ConnectionSettings,
    ConnectionState,
    Item,
)
from txapns.core.http2.frames import ErrorCode, goaway_frame, ping_frame, settings_frame
from txapns.core.notification import Notification

SETTINGS = ConnectionSettings(
    name="t",
    authority="api.push.apple.com",
    deadline=30.0,
    ping_interval=60.0,
    ping_timeout=10.0,
    connect_timeout=30.0,
    max_silent_timeouts=3,
)


class RecordingOwner:
    """Every event, in order, with its arguments."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.events.append((name, args))

        return record

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


class ConnectionOwnerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.owner = RecordingOwner()
        owner: ConnectionOwner = self.owner  # type: ignore[assignment]
        self.conn = APNsHTTP2Protocol(owner, self.clock, SETTINGS, 1, None)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)

    def item(self) -> Item:
        return Item(Notification(b"\x01" * 32, b"{}"), None, "com.example.app", "0" * 36, 0.0)

    def test_plain_tcp_is_ready_at_once(self) -> None:
        self.assertEqual(self.owner.names(), ["connection_made", "connection_ready"])
        self.assertIs(self.conn.state, ConnectionState.READY)
        self.conn.write_out()
        self.assertTrue(self.transport.value().startswith(b"PRI * HTTP/2.0"))

    def test_goaway_drains_itself_and_reports_the_unprocessed_and_the_credential(self) -> None:
        self.conn.dataReceived(settings_frame())
        item = self.item()
        self.assertTrue(self.conn.send_item(item, 0.0))
        self.owner.events.clear()
        self.conn.dataReceived(
            goaway_frame(0, ErrorCode.NO_ERROR, b'{"reason":"InvalidProviderToken"}')
        )
        names = self.owner.names()
        self.assertEqual(names, ["items_unprocessed", "credential_refused", "input_handled"])
        self.assertEqual(self.owner.events[0][1], ([item],))
        self.assertEqual(self.owner.events[1][1][0], "InvalidProviderToken")
        # No stream left: it closed itself (the owner changed nothing).
        self.assertIs(self.conn.state, ConnectionState.CLOSING)
        self.assertTrue(self.transport.disconnecting)

    def test_ping_answer_proves_the_connection_once(self) -> None:
        self.clock.advance(60)
        self.assertEqual(self.owner.names()[-1], "wants_flush")
        opaque = self.conn._ping_opaque
        assert opaque is not None
        self.conn.dataReceived(settings_frame() + ping_frame(opaque, ack=True))
        self.assertIn("connection_proven", self.owner.names())
        self.assertTrue(self.conn.worked)

    def test_lost_reports_what_was_in_flight_and_leaves_no_timer(self) -> None:
        self.conn.dataReceived(settings_frame())
        item = self.item()
        self.conn.send_item(item, 0.0)
        self.conn.connectionLost(Failure(ConnectionError("gone")))
        name, (conn, _reason, items, previous) = self.owner.events[-1]
        self.assertEqual((name, conn, items, previous), ("connection_lost", self.conn, [item], 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])
