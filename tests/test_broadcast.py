"""Broadcast push: channel management (``txapns.broadcast.ChannelManager``) and
``/4/broadcasts`` sends (``HTTP2Client.broadcast``) against the fake APNs.

Most tests connect the client to ``FakeAPNsProtocol`` in memory (``twisted.test.iosim``, one
:class:`Clock`) and check the counters invariant after every pump; the header tests read the
exact request the client writes; the last class runs over real TLS (ALPN h2) on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import hpack
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from txapns.broadcast import ChannelManager
from txapns.core.backoff import Backoff
from txapns.core.broadcast import Broadcast, ChannelInfo, StoragePolicy, validate_channel_id
from txapns.core.errors import (
    ChannelError,
    CircuitOpenError,
    InvalidChannelIdError,
    InvalidFieldError,
    InvalidPriorityError,
    MissingTopicError,
    PayloadError,
    PayloadTooLargeError,
    ValidationError,
)
from txapns.core.http2_policy import RetryPolicy
from txapns.core.notification import Notification, PushType
from txapns.core.result import Outcome, Result
from txapns.credentials import ProviderToken, client_tls_options
from txapns.http2 import HTTP2Client
from txapns.service.config import AppConfig, TokenCredentials
from txapns.service.senders import channel_manager_for_app, http2_client_for_app
from txapns.testing.http2_server import Channel, FakeAPNsServer, listen_http2
from txapns.testing.memory import MemoryEndpoint
from txapns.testing.pki import server_tls_options

from .helpers_http2 import BUNDLE, KEY, KEY_ID, PKI, START, TEAM_ID

MANAGE_HOST = "api-manage-broadcast.sandbox.push.apple.com"
LIVE = {"aps": {"timestamp": 1_700_000_000, "event": "update", "content-state": {"score": "1-0"}}}
LIVE_BYTES = json.dumps(LIVE, separators=(",", ":")).encode()


def channel(i: int) -> str:
    """A well-formed channel id (base64 of 16 bytes, as the fake makes them)."""
    return base64.b64encode(bytes([i]) * 16).decode("ascii")


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    """Connects the client to a StringTransport: what it writes, nobody answers."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        proto = protocolFactory.buildProtocol(None)
        assert proto is not None
        transport = StringTransport()
        self.transports.append(transport)
        proto.makeConnection(transport)
        return succeed(proto)


def requests_written(data: bytes) -> list[tuple[list[tuple[str, str]], bytes]]:
    """The requests in what a client wrote: (header fields, body) per stream, in order."""
    assert data.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    data = data[24:]
    decoder = hpack.Decoder()
    streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        kind, stream_id = data[3], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        payload, data = data[9 : 9 + length], data[9 + length :]
        if kind == 1:  # HEADERS (the client sets neither PADDED nor PRIORITY)
            fields = [(k.decode(), v.decode()) for k, v in decoder.decode(payload, raw=True)]
            streams[stream_id] = (fields, bytearray())
        elif kind == 0:  # DATA
            streams[stream_id][1].extend(payload)
    return [(fields, bytes(body)) for fields, body in streams.values()]


class BroadcastTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.server = FakeAPNsServer(clock=self.clock, sandbox=True, rng=random.Random(3))
        self.server.add_token_key(KEY_ID, TEAM_ID, PKI.token_public_key)
        self.endpoint = MemoryEndpoint(self.server.factory(), self.clock)
        self.clients: list[HTTP2Client] = []

    def make_client(self, **kwargs: Any) -> HTTP2Client:
        options: dict[str, Any] = {
            "authority": "api.sandbox.push.apple.com",
            "bundle_id": BUNDLE,
            "token": ProviderToken(KEY, KEY_ID, TEAM_ID),
            "rng": random.Random(7),
            "backoff": Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
            "policy": RetryPolicy(backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0)),
        }
        options.update(kwargs)
        client = HTTP2Client(self.clock, options.pop("endpoint", self.endpoint), **options)
        self.clients.append(client)
        client.start()
        self.pump()
        return client

    def make_manager(self, **kwargs: Any) -> ChannelManager:
        kwargs.setdefault("authority", MANAGE_HOST)
        kwargs.setdefault("min_connections", 0)
        return ChannelManager(self.make_client(**kwargs))

    def add_channel(self, i: int, policy: int = 0) -> str:
        cid = channel(i)
        self.server.channels.setdefault(BUNDLE, {})[cid] = Channel(cid, BUNDLE, policy)
        return cid

    def check(self) -> None:
        for client in self.clients:
            client.counters.check(client.pending())
            self.assertEqual(client.pending(), client._structural_pending())

    def pump(self) -> None:
        self.endpoint.pump(self.check)

    def advance(self, seconds: float) -> None:
        self.pump()
        self.clock.advance(seconds)
        self.pump()

    def stop_all(self) -> None:
        for client in self.clients:
            d = client.stop()
            self.pump()
            for _ in range(20):
                if d.called:
                    break
                self.advance(1.0)
            self.successResultOf(d)
            self.assertEqual(client.pending(), 0)
            client.counters.check(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def channel_error(self, d: Deferred[Any]) -> ChannelError:
        error = self.failureResultOf(d, ChannelError).value
        assert isinstance(error, ChannelError)
        return error


# --- channel management -------------------------------------------------------------------


class ChannelManagerTests(BroadcastTestCase):
    def test_create_get_list_delete_round_trip(self) -> None:
        manager = self.make_manager()
        d_first = manager.create(StoragePolicy.NO_STORAGE)
        d_second = manager.create(1)
        self.pump()
        first, second = self.successResultOf(d_first), self.successResultOf(d_second)
        for cid in (first, second):
            self.assertEqual(len(base64.b64decode(cid, validate=True)), 16)
        stored = self.server.channels[BUNDLE]
        self.assertEqual(
            {cid: c.storage_policy for cid, c in stored.items()}, {first: 0, second: 1}
        )

        d_info = manager.get(second)
        d_list = manager.list()
        self.pump()
        self.assertEqual(
            self.successResultOf(d_info),
            ChannelInfo(second, StoragePolicy.MOST_RECENT_MESSAGE, "LiveActivity"),
        )
        self.assertEqual(self.successResultOf(d_list), sorted([first, second]))

        d_delete = manager.delete(first)
        self.pump()
        self.assertIsNone(self.successResultOf(d_delete))
        self.assertEqual(list(self.server.channels[BUNDLE]), [second])
        d_list = manager.list()
        self.pump()
        self.assertEqual(self.successResultOf(d_list), [second])

        counters = manager.client.counters
        self.assertEqual((counters.submitted, counters.accepted), (6, 6))
        self.assertEqual(manager.client.pending(), 0)
        self.stop_all()

    def test_unknown_channel_is_a_channel_error_with_apples_reason(self) -> None:
        manager = self.make_manager()
        d_get, d_delete = manager.get(channel(9)), manager.delete(channel(9))
        self.pump()
        for d in (d_get, d_delete):
            error = self.channel_error(d)
            self.assertEqual((error.status, error.reason), (400, "BadChannelId"))
            self.assertEqual((error.channel_id, error.unknown), (channel(9), False))
            self.assertIn("BadChannelId", str(error))
        self.assertEqual(dict(manager.client.counters.rejected_by_reason), {"BadChannelId": 2})
        self.stop_all()

    def test_local_validation_before_anything_is_sent(self) -> None:
        manager = self.make_manager()
        for bad in (2, -1, True, "0"):
            self.assertRaises(InvalidFieldError, manager.create, bad)
        too_long = base64.b64encode(b"x" * 65).decode()
        for bad_id in (
            "",
            "abc",
            "not base64!!",
            too_long,
            channel(1).rstrip("="),
            channel(1) + " ",
            "AAAAAAAAAAAAAAAAAAAAAB==",  # 16 bytes, but not canonical (pad bits set)
        ):
            self.assertRaises(InvalidChannelIdError, manager.get, bad_id)
            self.assertRaises(InvalidChannelIdError, manager.delete, bad_id)
        # Apple's own example ids decode to 11 and 13 bytes: no fixed length is imposed.
        for good_id in ("dHN0LXNyY2gtY2hubA==", base64.b64encode(b"x" * 64).decode()):
            self.assertEqual(validate_channel_id(good_id), good_id)
        self.pump()
        self.assertEqual(self.server.stats.requests, 0)
        self.assertEqual(manager.client.counters.submitted, 0)
        self.assertRaises(MissingTopicError, ChannelManager, HTTP2Client(self.clock, self.endpoint))
        self.stop_all()

    def test_a_create_with_an_unknown_outcome_is_not_resent(self) -> None:
        manager = self.make_manager()
        self.server.latency = 5.0  # decided (created) at once, answered later
        d = manager.create(0)
        self.advance(1.0)
        self.assertEqual(len(self.server.channels[BUNDLE]), 1)
        self.server.drop_connections()
        self.pump()
        error = self.channel_error(d)
        self.assertEqual(
            (error.status, error.reason, error.unknown), (None, "connection-lost", True)
        )
        self.advance(10.0)
        self.assertEqual(len(self.server.channels[BUNDLE]), 1)  # not created twice
        self.assertEqual(self.server.stats.requests, 1)
        self.assertEqual(dict(manager.client.counters.unknown_by_reason), {"connection-lost": 1})
        self.stop_all()

    def test_a_read_with_an_unknown_outcome_is_resent(self) -> None:
        manager = self.make_manager()
        cid = self.add_channel(1, policy=1)
        self.server.latency = 5.0
        d = manager.get(cid)
        self.advance(1.0)
        self.server.latency = 0.0
        self.server.drop_connections()
        self.advance(5.0)  # reconnects after the backoff and re-sends
        info = self.successResultOf(d)
        self.assertEqual(info.storage_policy, StoragePolicy.MOST_RECENT_MESSAGE)
        self.assertEqual(manager.client.counters.resent_unknown, 1)
        self.stop_all()

    def test_no_answer_before_the_deadline(self) -> None:
        manager = self.make_manager(deadline=2.0)
        self.server.latency = 60.0
        d = manager.list()
        self.advance(2.0)
        error = self.channel_error(d)
        self.assertEqual((error.status, error.reason, error.unknown), (None, "timeout", True))
        self.assertIn("not answered (timeout)", str(error))
        self.assertEqual(dict(manager.client.counters.unknown_by_reason), {"timeout": 1})
        self.server.latency = 0.0
        self.stop_all()

    def test_a_refused_credential_opens_the_circuit(self) -> None:
        manager = self.make_manager()
        self.server.wrong_environment_keys.add(KEY_ID)
        d = manager.list()
        d_queued = manager.get(channel(1))  # waits: one stream until a token is accepted
        self.pump()
        error = self.channel_error(d)
        self.assertEqual((error.status, error.reason), (403, "BadEnvironmentKeyIdInToken"))
        self.assertEqual(manager.client.breaker, "open")
        queued = self.channel_error(d_queued)
        self.assertEqual(
            (queued.status, queued.local, queued.unknown, queued.channel_id),
            (None, "circuit-open", False, channel(1)),
        )
        self.assertIn("circuit-open: BadEnvironmentKeyIdInToken", str(queued))
        self.assertRaises(CircuitOpenError, manager.list)
        self.assertEqual(self.server.stats.requests, 1)
        self.stop_all()

    def test_generic_request_fires_with_any_answer(self) -> None:
        client = self.make_client(authority=MANAGE_HOST)
        d_missing = client.request("GET", "/1/apps/com.example.app/nothing-here")
        d_list = client.request("GET", "/1/apps/com.example.app/all-channels")
        self.pump()
        missing = self.successResultOf(d_missing)
        self.assertEqual((missing.status, missing.reason, missing.ok), (404, "BadPath", False))
        listed = self.successResultOf(d_list)
        self.assertEqual((listed.status, listed.ok, listed.body), (200, True, b'{"channels":[]}'))
        self.assertEqual(listed.header("apns-request-id"), listed.request_id)
        for bad in (
            lambda: client.request("get", "/x"),
            lambda: client.request("GET", "x"),
            lambda: client.request("GET", "/x", headers=[("authorization", "bearer x")]),
            lambda: client.request("GET", "/x", headers=[(":path", "/y")]),
            lambda: client.request("GET", "/x", headers=[("Bad Name", "v")]),
            lambda: client.request("GET", "/x", headers=[("x-ok", "line\r\nbreak")]),
        ):
            self.assertRaises(InvalidFieldError, bad)
        self.assertEqual((client.counters.submitted, client.counters.rejected), (2, 1))
        self.stop_all()


# --- broadcasts -----------------------------------------------------------------------------


class BroadcastSendTests(BroadcastTestCase):
    def test_accepted_and_recorded_by_the_server(self) -> None:
        client = self.make_client()
        cid = self.add_channel(1, policy=0)
        apns_id = "123e4567-e89b-12d3-a456-426614174000"
        d = client.broadcast(cid, LIVE, priority=5, apns_id=apns_id)
        self.pump()
        result = self.successResultOf(d)
        self.assertEqual(
            (result.outcome, result.status, result.apns_id), (Outcome.ACCEPTED, 200, apns_id)
        )
        self.assertIsInstance(result.notification, Broadcast)
        assert isinstance(result.notification, Broadcast)
        self.assertEqual(result.notification.channel_id, cid)
        [record] = self.server.broadcasts
        self.assertEqual(
            (record.bundle_id, record.channel_id, record.payload, record.apns_id),
            (BUNDLE, cid, LIVE_BYTES, apns_id),
        )
        self.assertEqual((record.priority, record.expiration), (5, 0))
        self.assertEqual(self.server.accepted, [])  # not a device notification
        self.assertEqual(client.counters.accepted, 1)
        self.stop_all()

    def test_expiration_on_a_storage_channel(self) -> None:
        client = self.make_client()
        cid = self.add_channel(2, policy=1)
        expires = int(START) + 3600
        d = client.send(Broadcast.for_channel(cid, LIVE, expiration=expires, priority=None))
        self.pump()
        self.assertTrue(self.successResultOf(d).accepted)
        [record] = self.server.broadcasts
        self.assertEqual((record.expiration, record.priority), (expires, None))
        self.stop_all()

    def test_expiration_on_a_no_storage_channel_is_rejected(self) -> None:
        client = self.make_client()
        cid = self.add_channel(3, policy=0)
        d = client.broadcast(cid, LIVE, expiration=int(START) + 3600)
        self.pump()
        result = self.successResultOf(d)
        self.assertEqual(
            (result.outcome, result.status, result.reason, result.attempts),
            (Outcome.REJECTED, 400, "BadExpirationDate", 1),
        )
        self.assertEqual(self.server.broadcasts, [])
        self.stop_all()

    def test_unknown_channel_rejected_with_bad_channel_id(self) -> None:
        client = self.make_client()
        d = client.broadcast(channel(7), LIVE)
        self.pump()
        result = self.successResultOf(d)
        self.assertEqual(
            (result.outcome, result.status, result.reason, result.local),
            (Outcome.REJECTED, 400, "BadChannelId", None),
        )
        self.assertEqual(result.attempts, 1)  # a caller bug: never retried
        self.assertFalse(result.token_invalid)
        self.assertEqual(dict(client.counters.rejected_by_reason), {"BadChannelId": 1})
        self.stop_all()

    def test_local_validation_before_anything_is_sent(self) -> None:
        client = self.make_client()
        cid = self.add_channel(1)
        big = {"aps": {**LIVE["aps"], "content-state": {"x": "y" * 4100}}}
        cases: list[tuple[type[ValidationError], dict[str, Any]]] = [
            (InvalidChannelIdError, {"channel_id": "abc"}),
            (InvalidChannelIdError, {"channel_id": base64.b64encode(b"x" * 65).decode()}),
            (PayloadTooLargeError, {"payload": big}),
            (PayloadError, {"payload": {"aps": {"event": "update"}}}),
            (PayloadError, {"payload": {"aps": {"timestamp": 1}}}),
            (PayloadError, {"payload": {"aps": {"timestamp": 1, "event": "finish"}}}),
            (PayloadError, {"payload": {}}),
            (PayloadError, {"payload": b"not json"}),
            (InvalidPriorityError, {"priority": 7}),
            (InvalidFieldError, {"expiration": -1}),
            (InvalidFieldError, {"expiration": 2**32}),
            (InvalidFieldError, {"apns_id": "not-a-uuid"}),
        ]
        for error, override in cases:
            args: dict[str, Any] = {"channel_id": cid, "payload": LIVE, **override}
            self.assertRaises(
                error,
                client.broadcast,
                args.pop("channel_id"),
                args.pop("payload"),
                **args,
            )
        no_bundle = self.make_client(bundle_id=None, token=None)
        self.assertRaises(MissingTopicError, no_bundle.broadcast, cid, LIVE)
        self.assertRaises(InvalidFieldError, Broadcast.create, "00" * 32, LIVE)  # no channel
        self.pump()
        self.assertEqual(self.server.stats.requests, 0)
        self.assertEqual((client.counters.submitted, no_bundle.counters.submitted), (0, 0))
        self.stop_all()

    def test_broadcasts_and_notifications_share_the_counters(self) -> None:
        client = self.make_client()
        cid = self.add_channel(1)
        items: list[Notification] = [
            Notification.create(b"\x01" * 32, {"aps": {"alert": "hi"}}),
            Broadcast.for_channel(cid, LIVE),
            Broadcast.for_channel(channel(8), LIVE),  # unknown channel
            Notification.create(b"\x02" * 32, LIVE, push_type=PushType.LIVEACTIVITY),
        ]
        results: list[Result] = []
        d = client.send_many(items, results.append)
        self.pump()
        counters = self.successResultOf(d)
        self.assertEqual(
            (counters.submitted, counters.accepted, counters.rejected, counters.unknown),
            (4, 3, 1, 0),
        )
        self.assertEqual(len(self.server.accepted), 2)
        self.assertEqual([b.channel_id for b in self.server.broadcasts], [cid])
        self.assertEqual(self.server.accepted[1].topic, f"{BUNDLE}.push-type.liveactivity")
        c = client.counters
        self.assertEqual(c.submitted, c.accepted + c.rejected + c.unknown + client.pending())
        self.assertEqual(client.pending(), 0)
        self.stop_all()

    def test_deadline_applies(self) -> None:
        client = self.make_client(deadline=5.0)
        cid = self.add_channel(1)
        self.server.latency = 60.0
        d = client.broadcast(cid, LIVE)
        self.advance(5.0)
        result = self.successResultOf(d)
        self.assertEqual((result.outcome, result.reason), (Outcome.UNKNOWN, "timeout"))
        self.assertEqual(dict(client.counters.unknown_by_reason), {"timeout": 1})
        self.server.latency = 0.0
        self.stop_all()

    def test_a_broadcast_never_processed_before_goaway_is_resent(self) -> None:
        client = self.make_client()
        cid = self.add_channel(1)
        first = client.send(Notification.create(b"\x01" * 32, {"aps": {"alert": "ramp"}}))
        self.pump()  # the token is accepted: the connection takes many streams
        self.assertTrue(self.successResultOf(first).accepted)
        self.server.goaway_after = 2  # GOAWAY right after the next notification
        second = client.send(Notification.create(b"\x02" * 32, {"aps": {"alert": "last"}}))
        d = client.broadcast(cid, LIVE)
        self.pump()
        self.assertTrue(self.successResultOf(second).accepted)
        result = self.successResultOf(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(self.server.stats.streams_ignored, 1)
        self.assertEqual(client.counters.replayed, 1)
        [record] = self.server.broadcasts
        self.assertEqual((record.connection, record.apns_id), (2, result.apns_id))
        self.stop_all()

    def test_a_refused_credential_opens_the_circuit(self) -> None:
        client = self.make_client()
        cid = self.add_channel(1)
        self.server.wrong_environment_keys.add(KEY_ID)
        d = client.broadcast(cid, LIVE)
        self.pump()
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.reason), (403, "BadEnvironmentKeyIdInToken"))
        self.assertEqual(client.breaker, "open")
        self.assertRaises(CircuitOpenError, client.broadcast, cid, LIVE)
        self.stop_all()

    def test_certificate_auth(self) -> None:
        self.server.plaintext_client_cert = PKI.client_cert
        client = self.make_client(token=None)
        cid = self.add_channel(1)
        d = client.broadcast(cid, LIVE)
        self.pump()
        self.assertTrue(self.successResultOf(d).accepted)
        self.stop_all()


# --- the exact requests ---------------------------------------------------------------------


class RequestHeaderTests(SynchronousTestCase):
    """What the client writes, decoded independently of the fake (``hpack``)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.endpoint = RecordingEndpoint()

    def client(self, authority: str) -> HTTP2Client:
        client = HTTP2Client(
            self.clock,
            self.endpoint,
            authority=authority,
            bundle_id=BUNDLE,
            token=ProviderToken(KEY, KEY_ID, TEAM_ID),
            rng=random.Random(1),
        )
        client.start()
        self.clock.advance(0)
        return client

    def written(self) -> list[tuple[list[tuple[str, str]], bytes]]:
        self.clock.advance(0)
        [transport] = self.endpoint.transports
        return requests_written(transport.value())

    def test_broadcast_request(self) -> None:
        client = self.client("api.push.apple.com")
        cid = channel(5)
        apns_id = "123e4567-e89b-12d3-a456-426614174000"
        client.broadcast(cid, LIVE, priority=5, expiration=0, apns_id=apns_id)
        [(fields, body)] = self.written()
        authorization = dict(fields).pop("authorization")
        self.assertTrue(authorization.startswith("bearer ey"))
        self.assertEqual(
            [f for f in fields if f[0] != "authorization"],
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "api.push.apple.com"),
                (":path", "/4/broadcasts/apps/com.example.app"),
                ("apns-push-type", "liveactivity"),
                ("apns-channel-id", cid),
                ("apns-priority", "5"),
                ("apns-expiration", "0"),
                ("apns-id", apns_id),
            ],
        )
        self.assertEqual(body, LIVE_BYTES)

    def test_channel_management_requests(self) -> None:
        manager = ChannelManager(self.client(MANAGE_HOST))
        manager.create(StoragePolicy.MOST_RECENT_MESSAGE)
        [(fields, body)] = self.written()
        headers = dict(fields)
        self.assertEqual(
            (headers[":method"], headers[":authority"], headers[":path"]),
            ("POST", MANAGE_HOST, "/1/apps/com.example.app/channels"),
        )
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(len(headers["apns-request-id"]), 36)
        self.assertTrue(headers["authorization"].startswith("bearer "))
        self.assertNotIn("apns-topic", headers)
        self.assertEqual(
            json.loads(body), {"message-storage-policy": 1, "push-type": "LiveActivity"}
        )


# --- real TLS -------------------------------------------------------------------------------


class RealTLSTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.server = FakeAPNsServer(clock=reactor, sandbox=True, rng=random.Random(11))
        self.server.add_token_key(KEY_ID, TEAM_ID, PKI.token_public_key)
        self.port = listen_http2(
            reactor,
            self.server,
            tls_options=server_tls_options(PKI, require_client_cert=False, alpn=[b"h2"]),
        )
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_manage_channels_and_broadcast_for_an_app(self) -> Any:
        files = PKI.write(Path(self.mktemp()))
        app = AppConfig(
            name="app",
            bundle_id=PKI.topic,
            environment="sandbox",
            protocol="http2",
            credentials=TokenCredentials(Path(files["token_key_p8"]), KEY_ID, TEAM_ID),
            ca_file=Path(files["ca_cert"]),
        )
        port = self.port.getHost().port
        where = {"address": lambda: ("127.0.0.1", port), "hostname": "localhost"}
        manager = channel_manager_for_app(app, self.reactor, **where)
        push = http2_client_for_app(app, self.reactor, **where)
        self.assertEqual(manager.client.min_connections, 0)
        self.addCleanup(manager.stop)
        self.addCleanup(push.stop)
        manager.start()
        push.start()

        cid = yield manager.create(StoragePolicy.MOST_RECENT_MESSAGE)
        expires = int(self.reactor.seconds()) + 3600
        result = yield push.broadcast(cid, LIVE, expiration=expires)
        self.assertTrue(result.accepted, result)
        [record] = self.server.broadcasts
        self.assertEqual((record.channel_id, record.expiration), (cid, expires))
        listed = yield manager.list()
        self.assertEqual(listed, [cid])
        yield manager.delete(cid)
        listed = yield manager.list()
        self.assertEqual(listed, [])

        for client in (manager.client, push):
            yield client.stop()
            self.assertEqual(client.pending(), 0)
            client.counters.check(0)
        self.assertEqual(manager.client.counters.accepted, 4)
        yield self.server.when_no_connections()
        self.assertEqual(self.server.stats.alpn["h2"], self.server.stats.connections)

    @defer.inlineCallbacks
    def test_plain_client_on_the_management_host(self) -> Any:
        options = client_tls_options("localhost", ca_pem=PKI.ca_cert, alpn=(b"h2",))
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port.getHost().port)
        )
        client = HTTP2Client(
            self.reactor,
            endpoint,
            authority="localhost",
            bundle_id=BUNDLE,
            token=ProviderToken(KEY, KEY_ID, TEAM_ID),
            min_connections=0,
        )
        manager = ChannelManager(client)
        self.addCleanup(manager.stop)
        manager.start()
        cid = yield manager.create(0)
        info = yield manager.get(cid)
        self.assertEqual(info, ChannelInfo(cid, StoragePolicy.NO_STORAGE))
        with self.assertRaises(ChannelError) as caught:
            yield manager.get(channel(3))
        self.assertEqual(caught.exception.reason, "BadChannelId")
        yield manager.stop()
        client.counters.check(0)


class BinaryRefusesBroadcastTests(SynchronousTestCase):
    def test_validate_binary_refuses_a_broadcast(self) -> None:
        from txapns.core.errors import InvalidTokenError
        from txapns.core.notification import validate_binary

        b = Broadcast.for_channel(channel(1), LIVE)
        self.assertRaises(InvalidTokenError, validate_binary, b)
