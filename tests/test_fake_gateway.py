"""The fake binary gateway and feedback service in txapns.testing.binary_gateway.

Frames here are built by hand with ``struct`` (not with txapns.core.binary) so that the fake's
parser is checked against an independent encoding.
"""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from txapns.testing.binary_gateway import (
    DeliveredNotification,
    FakeFeedbackService,
    FakeGateway,
    FeedbackProtocol,
    GatewayProtocol,
    listen_feedback,
    listen_gateway,
)

# --- hand-built frames -----------------------------------------------------------------------


def tok(n: int) -> bytes:
    """A 32-byte token that never starts with 0xff."""
    return bytes([n % 200]) + bytes(range(1, 32))


PAYLOAD = b'{"aps":{"alert":"hi"}}'


def item(item_id: int, data: bytes) -> bytes:
    return struct.pack(">BH", item_id, len(data)) + data


def frame(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack(">BI", 2, len(body)) + body


def cmd2(
    token: bytes | None,
    payload: bytes | None = PAYLOAD,
    identifier: int | None = None,
    expiry: int | None = None,
    priority: int | None = None,
) -> bytes:
    items = []
    if token is not None:
        items.append(item(1, token))
    if payload is not None:
        items.append(item(2, payload))
    if identifier is not None:
        items.append(item(3, struct.pack(">I", identifier)))
    if expiry is not None:
        items.append(item(4, struct.pack(">I", expiry)))
    if priority is not None:
        items.append(item(5, bytes([priority])))
    return frame(*items)


def cmd1(identifier: int, expiry: int, token: bytes, payload: bytes = PAYLOAD) -> bytes:
    return (
        struct.pack(">BIIH", 1, identifier, expiry, len(token))
        + token
        + struct.pack(">H", len(payload))
        + payload
    )


def cmd0(token: bytes, payload: bytes = PAYLOAD) -> bytes:
    return struct.pack(">BH", 0, len(token)) + token + struct.pack(">H", len(payload)) + payload


def err(status: int, identifier: int) -> bytes:
    return struct.pack(">BBI", 8, status, identifier)


def decode_errors(data: bytes) -> list[tuple[int, int]]:
    """Test-only decoder of error responses: ``[(status, identifier), …]``."""
    if len(data) % 6:
        raise AssertionError(f"{len(data)} bytes is not a whole number of error frames")
    out = []
    for at in range(0, len(data), 6):
        command, status, identifier = struct.unpack_from(">BBI", data, at)
        if command != 8:
            raise AssertionError(f"command {command} in an error frame")
        out.append((status, identifier))
    return out


def decode_feedback(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    at = 0
    while at < len(data):
        timestamp, length = struct.unpack_from(">IH", data, at)
        at += 6
        out.append((timestamp, data[at : at + length]))
        at += length
    if at != len(data):
        raise AssertionError("truncated feedback tuple")
    return out


class RecordingTransport(StringTransport):
    """A StringTransport that also keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def connect(gateway: FakeGateway) -> tuple[GatewayProtocol, RecordingTransport]:
    proto = gateway.buildProtocol(None)
    transport = RecordingTransport()
    proto.makeConnection(transport)
    return proto, transport


# --- parsing and delivery --------------------------------------------------------------------


class DeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = FakeGateway(self.clock)
        self.proto, self.transport = connect(self.gateway)

    def test_command2_all_items(self) -> None:
        self.proto.dataReceived(cmd2(tok(1), identifier=7, expiry=1234567, priority=10))
        self.assertEqual(
            self.gateway.delivered,
            [DeliveredNotification(tok(1), PAYLOAD, 7, 1234567, 10, 2, 1)],
        )
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)

    def test_command2_items_in_any_order(self) -> None:
        body = frame(
            item(5, b"\x05"), item(3, b"\x00\x00\x01\x00"), item(2, b"{}"), item(1, tok(2))
        )
        self.proto.dataReceived(body)
        (n,) = self.gateway.delivered
        self.assertEqual((n.token, n.payload, n.identifier, n.priority), (tok(2), b"{}", 256, 5))

    def test_command2_optional_items_absent(self) -> None:
        self.proto.dataReceived(cmd2(tok(1)))
        (n,) = self.gateway.delivered
        self.assertEqual((n.identifier, n.expiry, n.priority), (0, None, None))

    def test_command1(self) -> None:
        self.proto.dataReceived(cmd1(0xDEADBEEF, 0, tok(3)))
        self.assertEqual(
            self.gateway.delivered,
            [DeliveredNotification(tok(3), PAYLOAD, 0xDEADBEEF, 0, None, 1, 1)],
        )

    def test_command0(self) -> None:
        self.proto.dataReceived(cmd0(tok(4), b'{"a":1}'))
        self.assertEqual(
            self.gateway.delivered,
            [DeliveredNotification(tok(4), b'{"a":1}', 0, None, None, 0, 1)],
        )

    def test_many_frames_in_one_chunk_in_order(self) -> None:
        data = b"".join(cmd2(tok(i), identifier=i) for i in range(1, 51))
        self.proto.dataReceived(data)
        self.assertEqual(self.gateway.delivered_identifiers, list(range(1, 51)))
        self.assertEqual(self.gateway.received, 50)

    def test_byte_by_byte(self) -> None:
        data = cmd2(tok(1), identifier=1) + cmd1(2, 9, tok(2)) + cmd0(tok(3))
        for i in range(len(data)):
            self.proto.dataReceived(data[i : i + 1])
        self.assertEqual([n.command for n in self.gateway.delivered], [2, 1, 0])
        self.assertEqual([n.token for n in self.gateway.delivered], [tok(1), tok(2), tok(3)])

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=300), max_size=40))
    def test_any_chunking_gives_the_same_records(self, cuts: list[int]) -> None:
        data = b"".join(
            cmd2(tok(i), identifier=i, priority=5)
            if i % 3 == 0
            else cmd1(i, i, tok(i))
            if i % 3 == 1
            else cmd0(tok(i))
            for i in range(1, 31)
        )
        gateway = FakeGateway()
        proto, _ = connect(gateway)
        at = 0
        for size in cuts:
            proto.dataReceived(data[at : at + size])
            at += size
        proto.dataReceived(data[at:])
        self.assertEqual([n.token for n in gateway.delivered], [tok(i) for i in range(1, 31)])
        self.assertEqual([n.command for n in gateway.delivered], [1, 0, 2] * 10)

    def test_repr_hides_the_token(self) -> None:
        record = DeliveredNotification(bytes(range(32)), b"{}", 1, None, None, 2, 1)
        self.assertNotIn(bytes(range(32)).hex(), repr(record))
        self.assertIn("00010203", repr(record))


# --- statuses --------------------------------------------------------------------------------


class StatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gateway = FakeGateway(Clock())
        self.proto, self.transport = connect(self.gateway)

    def assertAnswered(self, data: bytes, status: int, identifier: int) -> None:
        self.proto.dataReceived(data)
        self.assertEqual(decode_errors(self.transport.value()), [(status, identifier)])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.gateway.delivered, [])
        self.assertEqual(self.gateway.errors_sent, [(status, identifier)])
        self.assertEqual(self.gateway.rejected[-1].status, status)

    def test_missing_token(self) -> None:
        self.assertAnswered(cmd2(None, identifier=3), 2, 3)

    def test_empty_token(self) -> None:
        self.assertAnswered(cmd2(b"", identifier=3), 2, 3)

    def test_token_too_short(self) -> None:
        self.assertAnswered(cmd2(tok(1)[:31], identifier=4), 5, 4)

    def test_token_too_long(self) -> None:
        self.assertAnswered(cmd2(tok(1) + b"\x00", identifier=4), 5, 4)

    def test_missing_payload(self) -> None:
        self.assertAnswered(cmd2(tok(1), None, identifier=5), 4, 5)

    def test_empty_payload(self) -> None:
        self.assertAnswered(cmd2(tok(1), b"", identifier=5), 4, 5)

    def test_payload_too_large(self) -> None:
        self.assertAnswered(cmd2(tok(1), b"x" * 2049, identifier=6), 7, 6)

    def test_payload_at_the_limit_is_accepted(self) -> None:
        self.proto.dataReceived(cmd2(tok(1), b"x" * 2048, identifier=6))
        self.assertEqual(self.gateway.delivered_identifiers, [6])

    def test_max_payload_is_configurable(self) -> None:
        gateway = FakeGateway(max_payload=256)
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(tok(1), b"x" * 256, identifier=1))
        proto.dataReceived(cmd2(tok(1), b"x" * 257, identifier=2))
        self.assertEqual(gateway.delivered_identifiers, [1])
        self.assertEqual(decode_errors(transport.value()), [(7, 2)])

    def test_priority_item_of_length_4_is_a_protocol_error(self) -> None:
        # The well-known encoder bug: priority written as a 4-byte item.
        data = frame(
            item(1, tok(1)),
            item(2, PAYLOAD),
            item(3, b"\x00\x00\x00\x09"),
            item(5, b"\x00\x00\x00\x0a"),
        )
        self.assertAnswered(data, 128, 9)

    def test_identifier_item_of_wrong_length(self) -> None:
        data = frame(item(1, tok(1)), item(2, PAYLOAD), item(3, b"\x00\x01"))
        self.assertAnswered(data, 128, 0)

    def test_expiry_item_of_wrong_length(self) -> None:
        data = frame(
            item(1, tok(1)), item(2, PAYLOAD), item(3, b"\x00\x00\x00\x02"), item(4, b"\x01")
        )
        self.assertAnswered(data, 128, 2)

    def test_unknown_item(self) -> None:
        data = frame(item(1, tok(1)), item(2, PAYLOAD), item(3, b"\x00\x00\x00\x02"), item(9, b"x"))
        self.assertAnswered(data, 128, 2)

    def test_repeated_item(self) -> None:
        data = frame(
            item(1, tok(1)), item(1, tok(2)), item(2, PAYLOAD), item(3, b"\x00\x00\x00\x02")
        )
        self.assertAnswered(data, 128, 2)

    def test_item_running_past_the_frame(self) -> None:
        body = item(3, b"\x00\x00\x00\x02") + item(1, tok(1)) + struct.pack(">BH", 2, 500) + b"{}"
        self.assertAnswered(struct.pack(">BI", 2, len(body)) + body, 128, 2)

    def test_unknown_command(self) -> None:
        self.assertAnswered(b"\x07garbage that is not a frame", 128, 0)

    def test_oversized_frame(self) -> None:
        self.assertAnswered(struct.pack(">BI", 2, 10_000_000), 128, 0)

    def test_command1_error_names_its_identifier(self) -> None:
        self.assertAnswered(cmd1(77, 0, tok(1)[:20]), 5, 77)

    def test_command0_error_closes_without_a_response(self) -> None:
        self.proto.dataReceived(cmd0(tok(1)) + cmd0(tok(2)[:5]) + cmd0(tok(3)))
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual([n.token for n in self.gateway.delivered], [tok(1)])
        self.assertEqual(self.gateway.errors_sent, [])
        self.assertEqual([(r.status, r.command) for r in self.gateway.rejected], [(5, 0)])
        self.assertEqual(self.gateway.discarded, 1)
        self.assertEqual(self.gateway.closes, [(1, "simple-error")])

    def test_rejection_records_what_was_parsed(self) -> None:
        self.proto.dataReceived(cmd2(tok(1), b"x" * 3000, identifier=12, priority=5))
        (rejection,) = self.gateway.rejected
        self.assertEqual((rejection.status, rejection.identifier, rejection.command), (7, 12, 2))
        assert rejection.notification is not None
        self.assertEqual(rejection.notification.token, tok(1))
        self.assertEqual(rejection.token, tok(1))
        self.assertEqual(rejection.notification.priority, 5)


class DiscardTests(SynchronousTestCase):
    def test_everything_after_an_error_is_discarded(self) -> None:
        gateway = FakeGateway()
        gateway.reject_token(tok(3))
        proto, transport = connect(gateway)
        proto.dataReceived(b"".join(cmd2(tok(i), identifier=i) for i in range(1, 6)))
        proto.dataReceived(cmd2(tok(6), identifier=6) + cmd2(tok(7), identifier=7)[:10])
        proto.dataReceived(cmd2(tok(7), identifier=7)[10:])
        self.assertEqual(gateway.delivered_identifiers, [1, 2])
        self.assertEqual(decode_errors(transport.value()), [(8, 3)])
        self.assertEqual(gateway.discarded, 4)  # 4, 5, 6 and 7
        self.assertEqual(gateway.received, 3)
        self.assertEqual(gateway.closes, [(1, "error")])

    def test_only_one_error_response_per_connection(self) -> None:
        gateway = FakeGateway()
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(None, identifier=1) + cmd2(tok(1)[:3], identifier=2))
        self.assertEqual(decode_errors(transport.value()), [(2, 1)])
        self.assertEqual(len(gateway.rejected), 1)

    def test_garbage_after_an_error_counts_bytes(self) -> None:
        gateway = FakeGateway()
        proto, transport = connect(gateway)
        proto.dataReceived(b"\xee" + b"z" * 99)
        proto.dataReceived(b"more")
        self.assertEqual(decode_errors(transport.value()), [(128, 0)])
        self.assertEqual(gateway.discarded_bytes, 104)
        self.assertEqual(gateway.discarded, 0)
        self.assertEqual(gateway.rejected[0].notification, None)

    def test_a_new_connection_starts_clean(self) -> None:
        gateway = FakeGateway()
        gateway.reject_token(tok(1))
        proto1, _ = connect(gateway)
        proto1.dataReceived(cmd2(tok(1), identifier=1) + cmd2(tok(2), identifier=2))
        proto2, transport2 = connect(gateway)
        proto2.dataReceived(cmd2(tok(2), identifier=2))
        self.assertEqual(gateway.delivered_identifiers, [2])
        self.assertEqual(gateway.delivered[0].connection, 2)
        self.assertEqual(transport2.value(), b"")
        self.assertEqual(gateway.connections, 2)


# --- scripting -------------------------------------------------------------------------------


class ScriptTests(SynchronousTestCase):
    def test_reject_token_default_status_8(self) -> None:
        gateway = FakeGateway()
        gateway.reject_token(tok(2))
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(tok(1), identifier=1) + cmd2(tok(2), identifier=2))
        self.assertEqual(decode_errors(transport.value()), [(8, 2)])
        self.assertEqual(gateway.rejected_tokens, [tok(2)])

    def test_reject_token_with_other_status(self) -> None:
        gateway = FakeGateway()
        gateway.reject_token(tok(2), status=1)
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(tok(2), identifier=2))
        self.assertEqual(decode_errors(transport.value()), [(1, 2)])
        self.assertEqual(gateway.rejected_tokens, [])

    def test_reject_prefix(self) -> None:
        gateway = FakeGateway()
        gateway.reject_tokens_with_prefix(b"\xff")
        proto, transport = connect(gateway)
        poison = b"\xff" + tok(1)[1:]
        proto.dataReceived(cmd2(tok(1), identifier=1) + cmd2(poison, identifier=2))
        self.assertEqual(decode_errors(transport.value()), [(8, 2)])
        self.assertEqual(gateway.rejected_tokens, [poison])

    def test_validation_comes_before_scripted_rejection(self) -> None:
        gateway = FakeGateway()
        gateway.reject_tokens_with_prefix(b"\xff")
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(b"\xff" * 8, identifier=2))
        self.assertEqual(decode_errors(transport.value()), [(5, 2)])

    def test_reject_nth_counts_across_connections(self) -> None:
        gateway = FakeGateway()
        gateway.reject_nth(3, 255)
        proto1, transport1 = connect(gateway)
        proto1.dataReceived(cmd2(tok(1), identifier=1) + cmd2(tok(2), identifier=2))
        proto1.connectionLost(Failure(Exception("client went away")))
        proto2, transport2 = connect(gateway)
        proto2.dataReceived(cmd2(tok(3), identifier=3) + cmd2(tok(4), identifier=4))
        self.assertEqual(transport1.value(), b"")
        self.assertEqual(decode_errors(transport2.value()), [(255, 3)])
        self.assertEqual(gateway.delivered_identifiers, [1, 2])
        self.assertEqual(gateway.closes, [(1, "peer"), (2, "error")])

    def test_reject_nth_rejects_zero(self) -> None:
        self.assertRaises(ValueError, FakeGateway().reject_nth, 0, 8)

    def test_shutdown_after_names_the_last_accepted(self) -> None:
        gateway = FakeGateway()
        gateway.shutdown_after = 3
        proto, transport = connect(gateway)
        proto.dataReceived(b"".join(cmd2(tok(i), identifier=100 + i) for i in range(1, 6)))
        self.assertEqual(decode_errors(transport.value()), [(10, 103)])
        self.assertEqual(gateway.delivered_identifiers, [101, 102, 103])
        self.assertEqual(gateway.discarded, 2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(gateway.rejected, [])
        self.assertEqual(gateway.closes, [(1, "shutdown")])
        # Counted per connection: the next one takes three more.
        proto2, transport2 = connect(gateway)
        proto2.dataReceived(cmd2(tok(4), identifier=104) + cmd2(tok(5), identifier=105))
        self.assertEqual(transport2.value(), b"")
        self.assertEqual(gateway.delivered_identifiers, [101, 102, 103, 104, 105])

    def test_silent_close_after(self) -> None:
        gateway = FakeGateway()
        gateway.silent_close_after = 2
        proto, transport = connect(gateway)
        proto.dataReceived(b"".join(cmd2(tok(i), identifier=i) for i in range(1, 5)))
        self.assertEqual(gateway.delivered_identifiers, [1, 2])
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnected)  # aborted, not a clean close
        self.assertEqual(gateway.discarded, 2)
        self.assertEqual(gateway.closes, [(1, "silent")])

    def test_silent_close_after_when_frames_arrive_one_by_one(self) -> None:
        gateway = FakeGateway()
        gateway.silent_close_after = 1
        gateway.silent_close_abort = False
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(tok(1), identifier=1))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)  # loseConnection
        proto.dataReceived(cmd2(tok(2), identifier=2))
        self.assertEqual(gateway.delivered_identifiers, [1])
        self.assertEqual(gateway.discarded, 1)

    def test_silent_close_after_zero_delivers_nothing(self) -> None:
        gateway = FakeGateway()
        gateway.silent_close_after = 0
        proto, transport = connect(gateway)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(cmd2(tok(1), identifier=1))
        self.assertEqual(gateway.delivered, [])
        self.assertTrue(transport.disconnecting)

    def test_silent_close_probability_one(self) -> None:
        gateway = FakeGateway()
        gateway.silent_close_probability = 1.0
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(tok(1), identifier=1) + cmd2(tok(2), identifier=2))
        self.assertEqual(gateway.delivered, [])
        self.assertEqual(gateway.discarded, 2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_silent_close_probability_is_seeded(self) -> None:
        rolls = random.Random(42)
        expected_delivered = 0
        while rolls.random() >= 0.3:
            expected_delivered += 1
        self.assertLess(expected_delivered, 40)  # the seed closes within the batch
        gateway = FakeGateway(seed=42)
        gateway.silent_close_probability = 0.3
        proto, transport = connect(gateway)
        proto.dataReceived(b"".join(cmd2(tok(i), identifier=i) for i in range(1, 41)))
        self.assertEqual(gateway.delivered_identifiers, list(range(1, expected_delivered + 1)))
        self.assertEqual(gateway.discarded, 40 - expected_delivered)
        self.assertTrue(transport.disconnecting)

    def test_report_id_zero(self) -> None:
        gateway = FakeGateway()
        gateway.report_id_zero = True
        gateway.reject_token(tok(2))
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(tok(1), identifier=1) + cmd2(tok(2), identifier=2))
        self.assertEqual(decode_errors(transport.value()), [(8, 0)])
        self.assertEqual(gateway.errors_sent, [(8, 0)])
        self.assertEqual(gateway.rejected[0].identifier, 2)

    def test_split_error_byte_by_byte(self) -> None:
        gateway = FakeGateway()
        gateway.split_error = True
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(None, identifier=0x01020304))
        self.assertEqual(transport.writes, [bytes([b]) for b in err(2, 0x01020304)])
        self.assertTrue(transport.disconnecting)

    def test_split_error_sizes(self) -> None:
        gateway = FakeGateway()
        gateway.split_error = (1, 5)
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(None, identifier=9))
        self.assertEqual(transport.writes, [b"\x08", err(2, 9)[1:]])

    def test_split_error_spread_on_the_clock(self) -> None:
        clock = Clock()
        gateway = FakeGateway(clock)
        gateway.split_error = (2,)
        gateway.split_error_interval = 0.5
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(None, identifier=9))
        self.assertEqual(transport.writes, [b"\x08\x02"])
        self.assertFalse(transport.disconnecting)
        clock.advance(0.5)
        self.assertEqual(len(transport.writes), 2)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.5)
        self.assertEqual(b"".join(transport.writes), err(2, 9))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_error_delay(self) -> None:
        clock = Clock()
        gateway = FakeGateway(clock)
        gateway.error_delay = 2.0
        gateway.reject_token(tok(1))
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(tok(1), identifier=1))
        proto.dataReceived(cmd2(tok(2), identifier=2))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(gateway.errors_sent, [])
        clock.advance(2.0)
        self.assertEqual(decode_errors(transport.value()), [(8, 1)])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(gateway.delivered, [])
        self.assertEqual(gateway.discarded, 1)

    def test_error_delay_cancelled_when_the_client_leaves(self) -> None:
        clock = Clock()
        gateway = FakeGateway(clock)
        gateway.error_delay = 2.0
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(None, identifier=1))
        proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(5)
        self.assertEqual(transport.value(), b"")

    def test_discard_grace_keeps_reading(self) -> None:
        clock = Clock()
        gateway = FakeGateway(clock)
        gateway.discard_grace = 1.0
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(None, identifier=1))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(cmd2(tok(2), identifier=2) * 3)
        self.assertEqual(gateway.discarded, 3)
        clock.advance(1.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(gateway.delivered, [])

    def test_stop_ends_a_discard_grace(self) -> None:
        clock = Clock()
        gateway = FakeGateway(clock)
        gateway.discard_grace = 1.0
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(None, identifier=1))
        gateway.stop()
        self.assertTrue(transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close_after_handshake_plain_transport(self) -> None:
        gateway = FakeGateway()
        gateway.close_after_handshake = True
        proto, transport = connect(gateway)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(cmd2(tok(1), identifier=1))
        self.assertEqual(gateway.delivered, [])
        self.assertEqual(gateway.closes, [(1, "handshake")])

    def test_timed_option_without_clock_fails_loudly(self) -> None:
        gateway = FakeGateway()
        gateway.idle_timeout = 10
        self.assertRaises(RuntimeError, gateway.buildProtocol, None)
        self.assertRaises(RuntimeError, gateway.stall_reads, 1)

    def test_reset_clears_records_not_script(self) -> None:
        gateway = FakeGateway()
        gateway.reject_nth(2, 8)
        proto, _ = connect(gateway)
        proto.dataReceived(cmd2(tok(1), identifier=1) + cmd2(tok(2), identifier=2) + cmd2(tok(3)))
        self.assertEqual(gateway.discarded, 1)
        gateway.reset()
        self.assertEqual(
            (gateway.delivered, gateway.rejected, gateway.errors_sent, gateway.discarded),
            ([], [], [], 0),
        )
        self.assertEqual((gateway.received, gateway.connections, gateway.closes), (0, 0, []))
        proto2, transport2 = connect(gateway)
        proto2.dataReceived(cmd2(tok(5), identifier=5) + cmd2(tok(6), identifier=6))
        self.assertEqual(decode_errors(transport2.value()), [(8, 6)])  # nth counts afresh

    def test_clear_script(self) -> None:
        gateway = FakeGateway()
        gateway.reject_token(tok(1))
        gateway.reject_tokens_with_prefix(tok(2)[:1])
        gateway.reject_nth(1, 8)
        gateway.shutdown_after = 1
        gateway.clear_script()
        proto, transport = connect(gateway)
        proto.dataReceived(cmd2(tok(1), identifier=1) + cmd2(tok(2), identifier=2))
        self.assertEqual(gateway.delivered_identifiers, [1, 2])
        self.assertEqual(transport.value(), b"")


class TimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = FakeGateway(self.clock)

    def test_idle_timeout(self) -> None:
        self.gateway.idle_timeout = 30
        proto, transport = connect(self.gateway)
        self.clock.advance(29)
        proto.dataReceived(cmd2(tok(1), identifier=1))
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.gateway.closes, [(1, "idle")])
        self.assertEqual(self.gateway.delivered_identifiers, [1])

    def test_idle_timer_cancelled_on_connection_lost(self) -> None:
        self.gateway.idle_timeout = 30
        proto, _ = connect(self.gateway)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.gateway.open_connections, 0)

    def test_stall_and_resume(self) -> None:
        proto, transport = connect(self.gateway)
        self.gateway.stall = True
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(cmd2(tok(1), identifier=1) + cmd2(tok(2), identifier=2))
        self.assertEqual(self.gateway.delivered, [])
        self.gateway.stall = False
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.gateway.delivered_identifiers, [1, 2])

    def test_stall_applies_to_new_connections(self) -> None:
        self.gateway.stall = True
        proto, transport = connect(self.gateway)
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(cmd2(tok(1), identifier=1))
        self.assertEqual(self.gateway.delivered, [])

    def test_stall_reads_for_a_while(self) -> None:
        proto, transport = connect(self.gateway)
        self.gateway.stall_reads(5)
        proto.dataReceived(cmd2(tok(1), identifier=1))
        self.clock.advance(4.9)
        self.assertEqual(self.gateway.delivered, [])
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(0.1)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.gateway.delivered_identifiers, [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stall_does_not_count_as_idle(self) -> None:
        self.gateway.idle_timeout = 10
        _, transport = connect(self.gateway)
        self.gateway.stall_reads(60)
        self.clock.advance(30)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(30)
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_stop_cancels_everything(self) -> None:
        self.gateway.idle_timeout = 10
        self.gateway.error_delay = 1
        connect(self.gateway)
        proto, transport = connect(self.gateway)
        proto.dataReceived(cmd2(None, identifier=1))
        self.gateway.stall_reads(100)
        # The first connection's idle timer is off while stalled: the error delay and the stall.
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.gateway.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(transport.disconnected)


# --- in-memory client/server runs ------------------------------------------------------------


class RawClient(Protocol):
    """A minimal client: writes what it is told, records what it reads."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost: Failure | None = None
        self.handshake_done = False
        self.lost_deferred: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason
        self.lost_deferred.callback(None)

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)


@implementer(IHandshakeListener)
class TLSRawClient(RawClient):
    def handshakeCompleted(self) -> None:
        self.handshake_done = True


def run_iosim(
    gateway: FakeGateway, clock: Clock
) -> tuple[RawClient, GatewayProtocol, iosim.IOPump]:
    return iosim.connectedServerAndClient(
        lambda: gateway.buildProtocol(None), RawClient, clock=clock
    )


class InMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = FakeGateway(self.clock)

    def test_error_reaches_the_client_and_the_rest_is_lost(self) -> None:
        self.gateway.reject_tokens_with_prefix(b"\xff")
        client, _, pump = run_iosim(self.gateway, self.clock)
        bad = b"\xff" * 32
        tokens = [tok(1), tok(2), bad, tok(4), tok(5)]
        assert client.transport is not None
        for i, token in enumerate(tokens, 1):
            client.transport.write(cmd2(token, identifier=i, priority=10))
        pump.flush()
        self.assertEqual(decode_errors(client.received), [(8, 3)])
        self.assertIsNotNone(client.lost)
        self.assertEqual(self.gateway.delivered_identifiers, [1, 2])
        self.assertEqual(self.gateway.discarded, 2)
        self.assertEqual(self.gateway.open_connections, 0)

    def test_split_error_arrives_in_pieces(self) -> None:
        self.gateway.split_error = True
        self.gateway.split_error_interval = 0.1
        client, _, pump = run_iosim(self.gateway, self.clock)
        assert client.transport is not None
        client.transport.write(cmd2(tok(1), b"", identifier=0x0A0B0C0D))
        pump.flush()
        self.assertEqual(client.chunks, [b"\x08"])
        for _ in range(5):
            self.clock.advance(0.1)
            pump.flush()
        self.assertEqual(client.chunks, [bytes([b]) for b in err(4, 0x0A0B0C0D)])
        self.assertIsNotNone(client.lost)

    def test_shutdown_then_reconnect(self) -> None:
        self.gateway.shutdown_after = 2
        client, _, pump = run_iosim(self.gateway, self.clock)
        assert client.transport is not None
        client.transport.write(b"".join(cmd1(i, 0, tok(i)) for i in range(1, 5)))
        pump.flush()
        self.assertEqual(decode_errors(client.received), [(10, 2)])
        client2, _, pump2 = run_iosim(self.gateway, self.clock)
        assert client2.transport is not None
        client2.transport.write(b"".join(cmd1(i, 0, tok(i)) for i in range(3, 5)))
        pump2.flush()
        self.assertEqual(decode_errors(client2.received), [(10, 4)])
        self.assertEqual(self.gateway.delivered_identifiers, [1, 2, 3, 4])
        self.assertEqual([n.connection for n in self.gateway.delivered], [1, 1, 2, 2])

    def test_idle_timeout_in_iosim(self) -> None:
        self.gateway.idle_timeout = 60
        client, _, pump = run_iosim(self.gateway, self.clock)
        self.clock.advance(60)
        pump.flush()
        self.assertIsNotNone(client.lost)
        self.assertEqual(client.received, b"")

    def test_waiters(self) -> None:
        self.successResultOf(self.gateway.when_all_closed())  # none open yet
        delivered = self.gateway.when_delivered(2)
        client, _, pump = run_iosim(self.gateway, self.clock)
        closed = self.gateway.when_all_closed()
        assert client.transport is not None
        client.transport.write(cmd2(tok(1), identifier=1))
        pump.flush()
        self.assertNoResult(delivered)
        client.transport.write(cmd2(tok(2), identifier=2))
        pump.flush()
        self.assertEqual([n.identifier for n in self.successResultOf(delivered)], [1, 2])
        self.assertNoResult(closed)
        client.transport.loseConnection()
        pump.flush()
        self.successResultOf(closed)
        self.successResultOf(self.gateway.when_all_closed())


# --- feedback --------------------------------------------------------------------------------


class FeedbackTests(SynchronousTestCase):
    def connect(self, service: FakeFeedbackService) -> tuple[FeedbackProtocol, RecordingTransport]:
        proto = service.buildProtocol(None)
        transport = RecordingTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_serves_tuples_then_closes_and_clears(self) -> None:
        service = FakeFeedbackService()
        service.add(tok(1), 1_700_000_000)
        service.add(b"\x01" * 64, 5)  # the length is on the wire: not always 32
        _, transport = self.connect(service)
        self.assertEqual(
            decode_feedback(transport.value()), [(1_700_000_000, tok(1)), (5, b"\x01" * 64)]
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(service.tuples, [])
        self.assertEqual(len(service.served), 2)
        _, transport2 = self.connect(service)
        self.assertEqual(transport2.value(), b"")
        self.assertTrue(transport2.disconnecting)
        self.assertEqual(service.connections, 2)

    def test_exact_bytes(self) -> None:
        service = FakeFeedbackService()
        service.add(b"\xab" * 32, 0x01020304)
        _, transport = self.connect(service)
        self.assertEqual(transport.value(), b"\x01\x02\x03\x04\x00\x20" + b"\xab" * 32)

    def test_split_writes(self) -> None:
        service = FakeFeedbackService(split_writes=True, chunk_size=5)
        service.add(tok(1), 1)
        service.add(tok(2), 2)
        _, transport = self.connect(service)
        self.assertEqual([len(w) for w in transport.writes], [5] * 15 + [1])
        self.assertEqual(decode_feedback(transport.value()), [(1, tok(1)), (2, tok(2))])

    def test_split_writes_on_the_clock_in_iosim(self) -> None:
        clock = Clock()
        service = FakeFeedbackService(clock, split_writes=True, chunk_size=7, split_interval=1)
        service.add(tok(1), 1)
        client, _, pump = iosim.connectedServerAndClient(
            lambda: service.buildProtocol(None), RawClient, clock=clock
        )
        self.assertEqual(len(client.chunks), 1)
        for _ in range(10):
            clock.advance(1)
            pump.flush()
        self.assertEqual([len(c) for c in client.chunks], [7] * 5 + [3])
        self.assertEqual(decode_feedback(client.received), [(1, tok(1))])
        self.assertIsNotNone(client.lost)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_add_checks_the_timestamp(self) -> None:
        self.assertRaises(ValueError, FakeFeedbackService().add, tok(1), 2**32)


# --- listening -------------------------------------------------------------------------------


class ListenTests(SynchronousTestCase):
    def test_listen_gateway_plain(self) -> None:
        reactor = MemoryReactorClock()
        gateway = FakeGateway()
        listen_gateway(reactor, gateway)
        ((port, factory, _, interface),) = reactor.tcpServers
        self.assertEqual((port, factory, interface), (0, gateway, "127.0.0.1"))
        self.assertIs(gateway.clock, reactor)
        self.assertEqual(reactor.sslServers, [])

    def test_listen_gateway_tls(self) -> None:
        reactor = MemoryReactorClock()
        clock = Clock()
        gateway = FakeGateway(clock)
        options = object()
        listen_gateway(reactor, gateway, port=2195, tls_options=options)  # type: ignore[arg-type]
        ((port, factory, ctx, _, interface),) = reactor.sslServers
        self.assertEqual((port, factory, ctx, interface), (2195, gateway, options, "127.0.0.1"))
        self.assertIs(gateway.clock, clock)

    def test_listen_feedback(self) -> None:
        reactor = MemoryReactorClock()
        service = FakeFeedbackService()
        listen_feedback(reactor, service, 2196)
        ((port, factory, _, interface),) = reactor.tcpServers
        self.assertEqual((port, factory, interface), (2196, service, "127.0.0.1"))


# --- real sockets on 127.0.0.1 ---------------------------------------------------------------


def _connect_tls(
    port: int, with_certificate: bool = True
) -> tuple[TLSRawClient, Deferred[TLSRawClient]]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

    from txapns.credentials import ClientCertificate, client_tls_options
    from txapns.testing.pki import make_test_pki

    pki = make_test_pki()
    certificate = (
        ClientCertificate.from_pem(pki.client_cert, pki.client_key) if with_certificate else None
    )
    options = client_tls_options("localhost", certificate=certificate, ca_pem=pki.ca_cert)
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    client = TLSRawClient()
    return client, connectProtocol(endpoint, client)


class LoopbackTests(TestCase):
    """Real sockets, TLS with a client certificate, on 127.0.0.1 only."""

    def listen(self, gateway: FakeGateway) -> int:
        from twisted.internet import reactor

        from txapns.testing.pki import make_test_pki, server_tls_options

        port = listen_gateway(reactor, gateway, tls_options=server_tls_options(make_test_pki()))
        self.addCleanup(port.stopListening)
        self.addCleanup(gateway.stop)
        return int(port.getHost().port)

    async def test_tls_error_response_and_delivery(self) -> None:
        gateway = FakeGateway()
        gateway.reject_tokens_with_prefix(b"\xff")
        client, connected = _connect_tls(self.listen(gateway))
        await connected
        assert client.transport is not None
        client.transport.write(
            cmd2(tok(1), identifier=1, priority=10)
            + cmd2(b"\xff" * 32, identifier=2)
            + cmd2(tok(3), identifier=3)
        )
        await client.lost_deferred
        await gateway.when_all_closed()
        self.assertTrue(client.handshake_done)
        self.assertEqual(decode_errors(client.received), [(8, 2)])
        self.assertEqual(gateway.delivered_identifiers, [1])
        self.assertEqual(gateway.discarded, 1)
        (certificate,) = gateway.peer_certificates
        assert certificate is not None
        self.assertIn("Apple Push Services", certificate.subject.rfc4514_string())

    async def test_tls_close_after_handshake(self) -> None:
        gateway = FakeGateway()
        gateway.close_after_handshake = True
        client, connected = _connect_tls(self.listen(gateway))
        await connected
        await client.lost_deferred
        await gateway.when_all_closed()
        self.assertTrue(client.handshake_done)
        self.assertEqual(client.received, b"")
        self.assertEqual(gateway.closes, [(1, "handshake")])
        self.assertEqual(len(gateway.peer_certificates), 1)

    async def test_tls_without_client_certificate_is_refused(self) -> None:
        gateway = FakeGateway()
        client, connected = _connect_tls(self.listen(gateway), with_certificate=False)
        await connected
        assert client.transport is not None
        client.transport.write(cmd2(tok(1), identifier=1))
        await client.lost_deferred
        await gateway.when_all_closed()
        self.assertEqual(gateway.delivered, [])
        self.assertEqual(gateway.peer_certificates, [])

    async def test_tls_feedback(self) -> None:
        from twisted.internet import reactor

        from txapns.testing.pki import make_test_pki, server_tls_options

        service = FakeFeedbackService(split_writes=True, chunk_size=3)
        service.add(tok(1), 100)
        service.add(tok(2), 200)
        port = listen_feedback(reactor, service, tls_options=server_tls_options(make_test_pki()))
        self.addCleanup(port.stopListening)
        self.addCleanup(service.stop)
        client, connected = _connect_tls(int(port.getHost().port))
        await connected
        await client.lost_deferred
        self.assertEqual(decode_feedback(client.received), [(100, tok(1)), (200, tok(2))])
        self.assertEqual(service.tuples, [])

    async def test_plain_tcp_stall_holds_back_reading(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        gateway = FakeGateway()
        port = listen_gateway(reactor, gateway)
        self.addCleanup(port.stopListening)
        self.addCleanup(gateway.stop)
        gateway.stall_reads(0.2)
        started = reactor.seconds()
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        assert client.transport is not None
        count = 2000
        client.transport.write(b"".join(cmd2(tok(i), identifier=i) for i in range(1, count + 1)))
        delivered = await gateway.when_delivered(count)
        self.assertGreaterEqual(reactor.seconds() - started, 0.2)
        self.assertEqual([n.identifier for n in delivered], list(range(1, count + 1)))
        client.transport.loseConnection()
        await client.lost_deferred
        await gateway.when_all_closed()
