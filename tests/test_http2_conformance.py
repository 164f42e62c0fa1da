"""Our HTTP/2 client against an independent implementation: ``h2`` in server mode, in memory.

``h2`` is the oracle: it raises ``h2.exceptions.ProtocolError`` on any byte of ours that breaks
RFC 9113/7541 (flow control, stream limits, header validation, HPACK table sizes…), so every
test here also checks that it never does.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.settings import SettingCodes
from h2.stream import StreamState
from hypothesis import HealthCheck, given, settings
from hypothesis import event as statistic
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.http2 import (
    ConnectionClosingError,
    ConnectionTerminated,
    ErrorCode,
    GoAwayReceived,
    H2ClientConnection,
    HeaderBlockTemplate,
    PingAcknowledged,
    ResponseReceived,
    StreamReset,
    device_path,
)
from txapns.core.notification import PushType

AUTHORITY = "api.push.apple.com"
TEMPLATE = HeaderBlockTemplate(
    AUTHORITY,
    topic="com.example.app",
    push_type=PushType.ALERT,
    priority=10,
    authorization="bearer eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJURUFNIn0.c2ln",
)
TOKEN = bytes(range(32))


@dataclass
class ServerStream:
    headers: dict[bytes, bytes]
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    responded: bool = False
    reset_by_client: int | None = None


class Pair:
    """A client and an h2 server joined by two in-memory pipes."""

    def __init__(
        self,
        *,
        client: dict[str, Any] | None = None,
        server_settings: dict[int, int] | None = None,
        auto_ack: bool = True,
        auto_respond: bool = False,
    ) -> None:
        self.client = H2ClientConnection(**(client or {}))
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.server.initiate_connection()
        self.client.initiate()
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.auto_ack = auto_ack
        self.auto_respond = auto_respond
        self.server_alive = True
        self.streams: dict[int, ServerStream] = {}
        self.unacked: list[tuple[int, int]] = []
        self.client_events: list[Any] = []
        self.server_events: list[Any] = []
        #: what each request was: stream id -> (apns-id, body)
        self.sent: dict[int, tuple[str, bytes]] = {}
        #: what the server answered: stream id -> (status, body)
        self.answers: dict[int, tuple[int, bytes]] = {}
        #: SETTINGS frames the server sent and the client has not acknowledged yet.
        self.settings_outstanding = 1
        #: Client→server stream offsets: bytes written so far, bytes delivered so far, and the
        #: offsets just after each SETTINGS ACK frame (see deliver_to_server).
        self.written = 0
        self.delivered = 0
        self.ack_ends: list[int] = []
        self.pump()  # the handshake
        if server_settings:
            self.update_settings(server_settings)
            self.pump()

    def update_settings(self, new: dict[int, int]) -> None:
        # h2 pops *every* pending value on the first SETTINGS ACK it receives, whichever frame
        # it acknowledges, and does not count its initial SETTINGS as pending: a second change
        # sent before the previous one is acknowledged would take effect early on h2's side
        # (an h2 quirk, not a property of the client). So one change at a time.
        assert self.settings_outstanding == 0
        self.server.update_settings(new)
        self.settings_outstanding += 1

    # --- moving bytes ---------------------------------------------------------------------

    def collect(self) -> None:
        out = self.client.data_to_send()
        # data_to_send() always returns whole frames (the first time after the preface).
        pos = 24 if self.written == 0 else 0
        while pos < len(out):
            length = int.from_bytes(out[pos : pos + 3], "big")
            if out[pos + 3] == 0x4 and out[pos + 4] & 0x1:
                self.ack_ends.append(self.written + pos + 9 + length)
            pos += 9 + length
        self.written += len(out)
        self.to_server += out
        if self.server_alive:
            self.to_client += self.server.data_to_send()

    def deliver_to_server(self, n: int | None = None) -> None:
        self.collect()
        n = len(self.to_server) if n is None else n
        chunk = bytes(self.to_server[:n])
        del self.to_server[:n]
        start = self.delivered
        self.delivered += len(chunk)
        if not self.server_alive or not chunk:
            return  # the server closed: like a TCP peer that went away
        # h2 reads its MAX_FRAME_SIZE once per receive_data() call, so a larger frame in the
        # same call as the SETTINGS ACK that enabled it is refused (an h2 quirk): end a call
        # after each ACK.
        cuts = [end - start for end in self.ack_ends if start < end < self.delivered]
        for a, b in zip([0, *cuts], [*cuts, len(chunk)], strict=True):
            self.on_server_events(self.server.receive_data(chunk[a:b]))

    def deliver_to_client(self, n: int | None = None) -> None:
        self.collect()
        n = len(self.to_client) if n is None else n
        chunk = bytes(self.to_client[:n])
        del self.to_client[:n]
        if chunk:
            self.client_events += self.client.receive_data(chunk)

    def pump(self) -> None:
        for _ in range(10_000):
            self.collect()
            if not self.to_server and not self.to_client:
                return
            self.deliver_to_server()
            self.deliver_to_client()
        raise AssertionError("the pipes never went quiet")

    # --- the server -----------------------------------------------------------------------

    def on_server_events(self, events: list[Any]) -> None:
        self.server_events += events
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = ServerStream(dict(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                self.streams[event.stream_id].body += event.data
                if self.auto_ack:
                    self.server.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                else:
                    self.unacked.append((event.stream_id, event.flow_controlled_length))
            elif isinstance(event, h2.events.StreamEnded):
                self.streams[event.stream_id].ended = True
                if self.auto_respond:
                    self.respond(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                if event.stream_id in self.streams:
                    self.streams[event.stream_id].reset_by_client = event.error_code
            elif isinstance(event, h2.events.SettingsAcknowledged):
                self.settings_outstanding -= 1
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise AssertionError(f"the client closed the connection: {event}")

    def stream_state(self, stream_id: int) -> StreamState | None:
        stream = self.server.streams.get(stream_id)
        return None if stream is None else stream.state_machine.state

    def can_respond(self, stream_id: int) -> bool:
        return (
            self.server_alive
            and not self.streams[stream_id].responded
            and self.stream_state(stream_id) in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
        )

    def respond(self, stream_id: int, status: int = 200, pad: int | None = None) -> None:
        stream = self.streams[stream_id]
        apns_id = stream.headers.get(b"apns-id", b"")
        headers = [(b":status", b"%d" % status), (b"apns-id", apns_id.upper())]
        body = b""
        if status == 200:
            headers.append((b"apns-unique-id", str(uuid.UUID(int=stream_id)).encode()))
        else:
            reasons = {400: "BadDeviceToken", 410: "Unregistered", 413: "PayloadTooLarge"}
            reason = reasons.get(status, "InternalServerError")
            document: dict[str, Any] = {"reason": reason}
            if status == 410:
                document["timestamp"] = 1_700_000_000_000 + stream_id
            body = json.dumps(document).encode()
            headers.append((b"content-length", b"%d" % len(body)))
        self.server.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.server.send_data(stream_id, body, end_stream=True, pad_length=pad)
        stream.responded = True
        self.answers[stream_id] = (status, body)

    def ack_all(self) -> None:
        for stream_id, size in self.unacked:
            self.server.acknowledge_received_data(size, stream_id)
        self.unacked.clear()

    # --- the client -----------------------------------------------------------------------

    def send(self, body: bytes = b'{"aps":{"alert":"hi"}}') -> int:
        apns_id = str(uuid.uuid4())
        block = TEMPLATE.encode(
            device_path(TOKEN), apns_id=apns_id, expiration=0, content_length=len(body)
        )
        stream_id = self.client.send_request(block, body)
        self.sent[stream_id] = (apns_id, body)
        return stream_id

    def responses(self) -> dict[int, ResponseReceived]:
        found: dict[int, ResponseReceived] = {}
        for event in self.client_events:
            if isinstance(event, ResponseReceived):
                assert event.stream_id not in found, event
                found[event.stream_id] = event
        return found

    def check_responses(self, test: SynchronousTestCase) -> None:
        """Every response matches what the server sent for that request."""
        for stream_id, event in self.responses().items():
            status, body = self.answers[stream_id]
            apns_id, _ = self.sent[stream_id]
            test.assertEqual((event.status, event.body), (status, body))
            test.assertEqual(event.header(b"apns-id"), apns_id.upper().encode())
            if status == 200:
                test.assertEqual(
                    event.header(b"apns-unique-id"), str(uuid.UUID(int=stream_id)).encode()
                )

    def check_requests(self, test: SynchronousTestCase) -> None:
        """Every request the server saw whole is exactly what the client sent."""
        for stream_id, stream in self.streams.items():
            apns_id, body = self.sent[stream_id]
            test.assertEqual(stream.headers[b"apns-id"], apns_id.encode())
            test.assertEqual(stream.headers[b":path"], device_path(TOKEN))
            if stream.ended:
                test.assertEqual(bytes(stream.body), body)


def no_client_errors(test: SynchronousTestCase, pair: Pair) -> None:
    for event in pair.client_events:
        test.assertNotIsInstance(event, ConnectionTerminated)
        if isinstance(event, StreamReset):
            test.assertTrue(event.remote, event)


class Basics(SynchronousTestCase):
    def test_server_sees_exactly_our_headers(self) -> None:
        pair = Pair()
        pair.pump()
        sid = pair.send()
        pair.pump()
        apns_id, body = pair.sent[sid]
        [request] = [e for e in pair.server_events if isinstance(e, h2.events.RequestReceived)]
        self.assertEqual(
            request.headers,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", AUTHORITY.encode()),
                (b":path", device_path(TOKEN)),
                (b"apns-topic", b"com.example.app"),
                (b"apns-push-type", b"alert"),
                (b"apns-priority", b"10"),
                (b"authorization", TEMPLATE.authorization.encode()),  # type: ignore[union-attr]
                (b"apns-id", apns_id.encode()),
                (b"apns-expiration", b"0"),
                (b"content-length", b"%d" % len(body)),
            ],
        )
        self.assertEqual(bytes(pair.streams[sid].body), body)
        self.assertTrue(pair.streams[sid].ended)
        # h2 applied our SETTINGS.
        self.assertEqual(pair.server.remote_settings.enable_push, 0)
        self.assertEqual(pair.server.remote_settings.initial_window_size, 1 << 20)
        self.assertEqual(pair.server.outbound_flow_control_window, 1 << 24)

    def test_many_requests_with_varied_responses(self) -> None:
        pair = Pair(server_settings={SettingCodes.MAX_CONCURRENT_STREAMS: 200})
        pair.pump()
        rng = random.Random(3)
        total = 3000
        for _ in range(10_000):  # bounded: a stall fails instead of hanging
            if len(pair.sent) == total and not pair.client.open_streams:
                break
            for _ in range(min(pair.client.available_streams, total - len(pair.sent), 150)):
                pair.send(b"{" + b"x" * rng.randrange(0, 3000) + b"}")
            pair.pump()
            for sid, stream in pair.streams.items():
                if stream.ended and pair.can_respond(sid):
                    pair.respond(
                        sid, rng.choice([200, 200, 400, 410, 500]), rng.choice([None, 0, 9])
                    )
            pair.pump()
        self.assertEqual(len(pair.responses()), total)
        self.assertEqual(
            Counter(e.status for e in pair.responses().values()).keys(), {200, 400, 410, 500}
        )
        pair.check_responses(self)
        pair.check_requests(self)
        no_client_errors(self, pair)
        unregistered = next(e for e in pair.responses().values() if e.status == 410)
        self.assertEqual(json.loads(unregistered.body)["reason"], "Unregistered")

    def test_rst_stream_from_server(self) -> None:
        pair = Pair()
        pair.pump()
        s1 = pair.send()
        pair.pump()
        pair.server.reset_stream(s1, ErrorCode.REFUSED_STREAM)
        pair.pump()
        [event] = [e for e in pair.client_events if isinstance(e, StreamReset)]
        self.assertEqual((event.stream_id, event.remote, event.retry_safe), (s1, True, True))
        s3 = pair.send()
        pair.pump()
        pair.server.reset_stream(s3, ErrorCode.INTERNAL_ERROR)
        pair.pump()
        self.assertEqual(pair.client_events[-1], StreamReset(s3, ErrorCode.INTERNAL_ERROR, True))
        self.assertEqual(pair.client.open_streams, 0)

    def test_client_reset_reaches_the_server(self) -> None:
        pair = Pair()
        pair.pump()
        sid = pair.send()
        pair.pump()
        self.assertTrue(pair.client.reset_stream(sid))
        pair.pump()
        self.assertEqual(pair.streams[sid].reset_by_client, ErrorCode.CANCEL)
        pair.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        pair.pump()
        pair.send()  # the slot was freed on both sides
        pair.pump()

    def test_ping_both_ways(self) -> None:
        pair = Pair()
        pair.pump()
        pair.client.ping(b"client!!")
        pair.server.ping(b"server??")
        pair.pump()
        self.assertIn(PingAcknowledged(b"client!!"), pair.client_events)
        acks = [e for e in pair.server_events if isinstance(e, h2.events.PingAckReceived)]
        self.assertEqual([a.ping_data for a in acks], [b"server??"])

    def test_padding_of_every_length(self) -> None:
        pair = Pair(server_settings={SettingCodes.MAX_CONCURRENT_STREAMS: 300})
        pair.pump()
        sids = [pair.send() for _ in range(256)]
        pair.pump()
        for pad, sid in enumerate(sids):
            pair.respond(sid, 400, pad)
        pair.pump()
        self.assertEqual(len(pair.responses()), 256)
        pair.check_responses(self)

    def test_continuation_for_large_response_headers(self) -> None:
        pair = Pair()
        pair.pump()
        sid = pair.send()
        pair.pump()
        rng = random.Random(5)
        big = "".join(rng.choice(string.printable[:94]) for _ in range(40_000)).encode()
        pair.server.send_headers(
            sid, [(b":status", b"200"), (b"x-big", big), (b"apns-id", b"A")], end_stream=True
        )
        raw = pair.server.data_to_send()
        pair.to_client += raw
        self.assertGreater(len(raw), 2 * 16384)  # so HEADERS + at least two CONTINUATIONs
        pair.pump()
        [event] = pair.responses().values()
        self.assertEqual(event.headers, [(b"x-big", big), (b"apns-id", b"A")])

    def test_interim_response_padded_data_and_trailers(self) -> None:
        pair = Pair()
        pair.pump()
        sid = pair.send()
        pair.pump()
        pair.server.send_headers(sid, [(b":status", b"103"), (b"link", b"</a>")])
        # (h2 refuses to send priority information as a server; unit tests cover the flag.)
        pair.server.send_headers(sid, [(b":status", b"200")])
        pair.server.send_data(sid, b"part", pad_length=3)
        pair.server.send_headers(sid, [(b"x-trailer", b"done")], end_stream=True)
        pair.pump()
        [event] = pair.responses().values()
        self.assertEqual(
            (event.status, event.body, event.trailers), (200, b"part", [(b"x-trailer", b"done")])
        )

    def test_unknown_frames_from_the_server_are_ignored(self) -> None:
        pair = Pair()
        pair.pump()
        pair.server.advertise_alternative_service(b'h2=":2197"', origin=AUTHORITY.encode())
        sid = pair.send()
        pair.pump()
        pair.respond(sid)
        pair.pump()
        self.assertEqual(list(pair.responses()), [sid])
        no_client_errors(self, pair)

    def test_graceful_close_from_the_client(self) -> None:
        pair = Pair()
        pair.pump()
        pair.client.close()
        events = pair.server.receive_data(pair.client.data_to_send())
        [event] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        self.assertEqual((event.error_code, event.last_stream_id), (0, 0))

    def test_client_protocol_error_report_reaches_the_server(self) -> None:
        pair = Pair()
        pair.pump()
        pair.client.receive_data(b"\x00\x00\x00\x05\x04\x00\x00\x00\x01")  # PUSH_PROMISE, bad
        events = pair.server.receive_data(pair.client.data_to_send())
        [event] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        self.assertEqual(event.error_code, ErrorCode.PROTOCOL_ERROR)
        self.assertIn(b"PUSH_PROMISE", event.additional_data)


class FlowControlAndSettings(SynchronousTestCase):
    def run_bodies(self, pair: Pair, count: int, size: int) -> int:
        """Send ``count`` requests of ``size`` bytes as fast as the stream limit allows; return
        the peak number of body bytes the client held back for flow control."""
        pair.pump()
        peak = 0
        for _ in range(100_000):  # bounded: a stall fails instead of hanging
            if len(pair.sent) == count and not pair.client.open_streams:
                break
            for _ in range(min(pair.client.available_streams, count - len(pair.sent))):
                pair.send(bytes([len(pair.sent) % 251]) * size)
            peak = max(peak, pair.client.buffered_body_bytes)
            pair.deliver_to_server()
            pair.deliver_to_client()
        pair.pump()
        return peak

    def test_5000_requests_of_4k_through_a_64k_connection_window(self) -> None:
        # h2's windows stay at 65,535 (connection and streams); it acknowledges what it reads.
        pair = Pair(server_settings={SettingCodes.MAX_CONCURRENT_STREAMS: 1000}, auto_respond=True)
        peak = self.run_bodies(pair, 5000, 4096)
        self.assertGreater(peak, 1_000_000)  # flow control really held bodies back
        self.assertEqual(len(pair.responses()), 5000)
        self.assertEqual(sum(s.ended for s in pair.streams.values()), 5000)
        pair.check_requests(self)
        pair.check_responses(self)
        no_client_errors(self, pair)
        self.assertEqual(pair.client.buffered_body_bytes, 0)

    def test_stream_windows_smaller_than_a_body(self) -> None:
        pair = Pair(
            server_settings={
                SettingCodes.MAX_CONCURRENT_STREAMS: 50,
                SettingCodes.INITIAL_WINDOW_SIZE: 1000,
            },
            auto_respond=True,
        )
        self.run_bodies(pair, 300, 5000)
        self.assertEqual(len(pair.responses()), 300)
        pair.check_requests(self)

    def test_settings_change_mid_flight(self) -> None:
        pair = Pair(server_settings={SettingCodes.MAX_CONCURRENT_STREAMS: 100}, auto_ack=False)
        pair.pump()
        sids = [pair.send(b"z" * 3000) for _ in range(60)]
        pair.pump()  # 65,535 bytes of bodies are in; the rest waits for WINDOW_UPDATEs
        self.assertGreater(pair.client.buffered_body_bytes, 0)
        pair.update_settings(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: 5,
                SettingCodes.INITIAL_WINDOW_SIZE: 100,
                SettingCodes.MAX_FRAME_SIZE: 20000,
                SettingCodes.HEADER_TABLE_SIZE: 0,
            }
        )
        pair.pump()
        self.assertEqual(pair.client.max_concurrent_streams, 5)
        self.assertEqual(pair.client.available_streams, 0)
        pair.ack_all()
        pair.pump()
        for _ in range(200):
            for sid, stream in pair.streams.items():
                if stream.ended and pair.can_respond(sid):
                    pair.respond(sid)
            pair.ack_all()
            # Below the new limit again: new requests go out (h2 would refuse a 6th stream).
            while pair.client.available_streams and len(pair.sent) < 80:
                pair.send(b"y" * 500)
            pair.pump()
            if len(pair.sent) == 80 and not pair.client.open_streams:
                break
        self.assertEqual(len(pair.responses()), 80)
        self.assertTrue(set(sids) <= set(pair.responses()))
        pair.check_requests(self)
        no_client_errors(self, pair)

    def test_header_table_size_zero_before_and_after_first_request(self) -> None:
        for before in (True, False):
            pair = Pair(auto_respond=True)
            if before:
                pair.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
            pair.pump()
            pair.send()
            pair.pump()
            pair.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0 if before else 100})
            pair.pump()
            pair.send()
            pair.pump()
            self.assertEqual(len(pair.responses()), 2)

    def test_small_client_receive_windows(self) -> None:
        pair = Pair(client={"initial_window": 1000, "connection_window": 65535})
        pair.pump()
        sid = pair.send()
        pair.pump()
        body = bytes(random.Random(1).randrange(256) for _ in range(200_000))
        pair.server.send_headers(sid, [(b":status", b"200")])
        offset = 0
        for _ in range(10_000):
            if offset == len(body):
                break
            room = min(pair.server.local_flow_control_window(sid), 700)
            if room:
                chunk = body[offset : offset + room]
                offset += len(chunk)
                pair.server.send_data(sid, chunk, end_stream=offset == len(body))
            pair.pump()
        pair.pump()
        [event] = pair.responses().values()
        self.assertEqual(event.body, body)

    def test_response_before_the_request_body_is_sent(self) -> None:
        pair = Pair(server_settings={SettingCodes.INITIAL_WINDOW_SIZE: 10}, auto_ack=False)
        pair.pump()
        sid = pair.send(b"q" * 5000)
        pair.pump()
        pair.respond(sid, 413)
        pair.pump()
        self.assertEqual(pair.responses()[sid].status, 413)
        self.assertEqual(pair.streams[sid].reset_by_client, ErrorCode.CANCEL)
        self.assertEqual(pair.client.buffered_body_bytes, 0)
        pair.ack_all()
        pair.server.increment_flow_control_window(100_000)
        pair.pump()  # nothing more is sent for the answered stream

    def test_goaway_mid_flight(self) -> None:
        pair = Pair(server_settings={SettingCodes.MAX_CONCURRENT_STREAMS: 200})
        pair.pump()
        sids = [pair.send() for _ in range(100)]
        pair.pump()
        for sid in sids[:30]:
            pair.respond(sid)
        pair.server.close_connection(
            error_code=0, additional_data=b'{"reason":"Shutdown"}', last_stream_id=sids[39]
        )
        pair.server_alive = False
        pair.to_client += pair.server.data_to_send()
        pair.pump()
        goaways = [e for e in pair.client_events if isinstance(e, GoAwayReceived)]
        self.assertEqual(
            goaways, [GoAwayReceived(sids[39], 0, b'{"reason":"Shutdown"}', sids[40:])]
        )
        self.assertEqual(sorted(pair.responses()), sids[:30])
        self.assertEqual(pair.client.open_stream_ids, sids[30:40])  # outcome unknown
        self.assertRaises(ConnectionClosingError, pair.send)
        pair.check_responses(self)


# --- random server behaviour ------------------------------------------------------------------

#: Action kinds; repetition weights the choice (mostly traffic, sometimes rarer behaviours).
KINDS = (
    ["send"] * 6
    + ["respond"] * 5
    + ["to_server"] * 3
    + ["to_client"] * 3
    + ["ack"] * 2
    + ["reset", "settings", "window", "ping_server", "ping_client", "client_reset"]
)
ACTIONS = st.tuples(st.sampled_from(KINDS), *[st.integers(0, 999)] * 4)
#: At most one GOAWAY: (position in the action list, choice of last-stream-id, error code).
GOAWAY = st.none() | st.tuples(st.integers(0, 80), st.integers(0, 999), st.sampled_from([0, 2, 11]))


def decode(kind: str, a: int, b: int, c: int, d: int) -> tuple[Any, ...]:
    """Turn generic random numbers into one action's parameters."""
    if kind == "send":
        return (kind, 1 + a % 8, (0, 1, 100, 4096, 20000)[b % 5])
    if kind == "respond":
        return (kind, a, (200, 400, 410, 500)[b % 4], (None, 0, 1, 40)[c % 4])
    if kind == "reset":
        return (kind, a, (0, 2, 7, 8)[b % 4])
    if kind == "settings":
        return (
            kind,
            None if a % 3 == 0 else a % 13,
            (None, 0, 10, 1000, 65535, 70000)[b % 6],
            (None, 16384, 16385, 65536)[c % 4],
            (None, 0, 100, 4096)[d % 4],
        )
    if kind == "window":
        return (kind, -1 if b % 3 == 0 else a, 1 + c * 70)
    if kind in ("ping_server", "ping_client"):
        return (kind, a.to_bytes(8, "big"))
    if kind in ("to_server", "to_client"):
        return (kind, 1 + (a * 3 + b) % 3000)
    return (kind, a)


class RandomServer(SynchronousTestCase):
    @settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=400,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(ACTIONS, min_size=20, max_size=80), GOAWAY)
    def test_every_request_gets_exactly_one_outcome(
        self, raw_actions: list[tuple[str, int, int, int, int]], goaway: tuple[int, int, int] | None
    ) -> None:
        actions = [decode(*raw) for raw in raw_actions]
        if goaway is not None:
            actions.insert(min(goaway[0], len(actions)), ("goaway", *goaway[1:]))
        pair = Pair(auto_ack=False)
        server_resets: dict[int, int] = {}
        client_resets: set[int] = set()
        client_pings: list[bytes] = []
        server_pings: list[bytes] = []
        goaway_last: int | None = None

        for action in actions:
            kind = action[0]
            open_server = sorted(s for s in pair.streams if pair.can_respond(s))
            if kind == "send":
                for _ in range(action[1]):
                    if pair.client.is_closing:
                        self.assertRaises(ConnectionClosingError, pair.send)
                        break
                    if not pair.client.available_streams:
                        break
                    pair.send(b"b" * action[2])
            elif kind == "respond" and open_server:
                pair.respond(open_server[action[1] % len(open_server)], action[2], action[3])
            elif kind == "reset" and open_server:
                sid = open_server[action[1] % len(open_server)]
                pair.server.reset_stream(sid, action[2])
                pair.streams[sid].responded = True
                server_resets[sid] = action[2]
            elif kind == "settings" and pair.server_alive and not pair.settings_outstanding:
                new = {
                    code: value
                    for code, value in zip(
                        (
                            SettingCodes.MAX_CONCURRENT_STREAMS,
                            SettingCodes.INITIAL_WINDOW_SIZE,
                            SettingCodes.MAX_FRAME_SIZE,
                            SettingCodes.HEADER_TABLE_SIZE,
                        ),
                        action[1:],
                        strict=True,
                    )
                    if value is not None
                }
                if new:
                    pair.update_settings(new)
            elif kind == "window" and pair.server_alive:
                receiving = [s for s in open_server if pair.stream_state(s) == StreamState.OPEN]
                if action[1] < 0 or not receiving:
                    pair.server.increment_flow_control_window(action[2])
                else:
                    sid = receiving[action[1] % len(receiving)]
                    pair.server.increment_flow_control_window(action[2], sid)
            elif kind == "ack" and pair.server_alive:
                pair.ack_all()
            elif kind == "ping_server" and pair.server_alive:
                pair.server.ping(action[1])
                server_pings.append(action[1])
            elif kind == "ping_client":
                pair.client.ping(action[1])
                client_pings.append(action[1])
            elif kind == "goaway" and pair.server_alive:
                known = [0, *sorted(pair.streams)]
                goaway_last = known[action[1] % len(known)]
                pair.server.close_connection(action[2], b'{"reason":"Shutdown"}', goaway_last)
                pair.to_client += pair.server.data_to_send()
                pair.server_alive = False
            elif kind == "to_server":
                pair.deliver_to_server(action[1])
            elif kind == "to_client":
                pair.deliver_to_client(action[1])
            elif kind == "client_reset" and pair.client.open_streams:
                ids = pair.client.open_stream_ids
                sid = ids[action[1] % len(ids)]
                self.assertTrue(pair.client.reset_stream(sid))
                client_resets.add(sid)

        # Drain: deliver everything; the server (if alive) answers every request it has seen.
        for _ in range(100):
            pair.pump()
            if not pair.server_alive:
                break
            pair.ack_all()
            pending = [s for s in pair.streams if pair.can_respond(s)]
            for sid in pending:
                pair.respond(sid)
            pair.pump()
            if not pending and not pair.client.open_streams:
                break

        # What this example exercised (see pytest --hypothesis-show-statistics).
        statistic(f"requests: {min(len(pair.sent) // 10 * 10, 50)}+")
        statistic(f"server resets: {bool(server_resets)}; goaway: {goaway_last is not None}")
        statistic(f"client held bodies back: {any(len(b) > 4096 for _, b in pair.sent.values())}")
        statistic(f"responses: {min(len(pair.responses()) // 10 * 10, 30)}+")

        # --- the invariants ---
        outcomes: Counter[int] = Counter()
        unprocessed: list[int] = []
        for event in pair.client_events:
            self.assertNotIsInstance(event, ConnectionTerminated)
            if isinstance(event, ResponseReceived):
                outcomes[event.stream_id] += 1
            elif isinstance(event, StreamReset):
                self.assertTrue(event.remote, event)
                self.assertEqual(server_resets.get(event.stream_id), event.error_code, event)
                outcomes[event.stream_id] += 1
            elif isinstance(event, GoAwayReceived):
                self.assertEqual(event.last_stream_id, goaway_last)
                for sid in event.unprocessed_stream_ids:
                    self.assertGreater(sid, event.last_stream_id)
                    self.assertNotIn(sid, pair.answers)
                    outcomes[sid] += 1
                unprocessed += event.unprocessed_stream_ids
        for sid in client_resets:
            outcomes[sid] += 1
        unknown = pair.client.open_stream_ids
        if unknown:
            # Only a GOAWAY leaves streams without an answer (the server then went away).
            self.assertIsNotNone(goaway_last)
            assert goaway_last is not None
            self.assertLessEqual(max(unknown), goaway_last)
        for sid in unknown:
            outcomes[sid] += 1
        self.assertEqual(sorted(outcomes), sorted(pair.sent))
        self.assertEqual(set(outcomes.values()) | {1}, {1}, outcomes)
        pair.check_responses(self)
        pair.check_requests(self)
        if pair.server_alive:
            self.assertEqual(
                sorted(e.opaque for e in pair.client_events if isinstance(e, PingAcknowledged)),
                sorted(client_pings),
            )
            self.assertEqual(
                sorted(
                    e.ping_data
                    for e in pair.server_events
                    if isinstance(e, h2.events.PingAckReceived)
                ),
                sorted(server_pings),
            )
