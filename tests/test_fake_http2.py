"""The fake HTTP/2 APNs (``txapns.testing.http2_server``), driven by ``h2`` in client mode.

Everything runs in memory over :mod:`twisted.test.iosim` with a :class:`Clock`, except one
test over real TLS on 127.0.0.1 with ALPN ``h2``.
"""

from __future__ import annotations

import datetime
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hyperframe.frame import GoAwayFrame
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txapns.core.jwt import load_signing_key, sign_provider_token
from txapns.credentials import ClientCertificate, client_tls_options
from txapns.testing.http2_server import FakeAPNsProtocol, FakeAPNsServer, listen_http2
from txapns.testing.pki import make_test_pki, server_tls_options

PKI = make_test_pki()
KEY = load_signing_key(PKI.token_key_p8)
KEY_ID = PKI.token_key_id
TEAM_ID = PKI.team_id
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY_ID = "OTHERKEY01"
OTHER_TEAM_ID = "OTHERTEAM1"
START = 1_700_000_000.0
TOKEN = "ab" * 32
TOPIC = "com.example.app"
PAYLOAD = b'{"aps":{"alert":"hi"}}'


@dataclass
class Response:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])

    @property
    def reason(self) -> str | None:
        return json.loads(self.body)["reason"] if self.body else None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    error_code: int
    debug: bytes


class H2Client(protocol.Protocol):
    """A minimal HTTP/2 client on ``h2``: requests with flow control, records everything.

    GOAWAY frames are taken out of the byte stream before ``h2`` sees them: ``h2`` closes
    its state machine on receiving GOAWAY and then refuses the answers that a graceful
    shutdown still sends for streams up to last-stream-id.
    """

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.responses: dict[int, Response] = {}
        self.goaway: GoAway | None = None
        self._buffer = bytearray()
        self.window_updates = 0
        self.pings_acked = 0
        self.lost = False
        self._pending: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.flush()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            assert self.transport is not None
            self.transport.write(data)

    @property
    def max_streams(self) -> int:
        return self.conn.remote_settings.max_concurrent_streams

    def request(
        self,
        path: str = f"/3/device/{TOKEN}",
        body: bytes = PAYLOAD,
        *,
        method: str = "POST",
        headers: list[tuple[str, str]] | None = None,
        auth: str | None = "jwt",
        topic: str | None = TOPIC,
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        all_headers = [
            (":method", method),
            (":scheme", "https"),
            (":authority", "api.push.apple.com"),
            (":path", path),
        ]
        if auth == "jwt":
            all_headers.append(("authorization", f"bearer {jwt()}"))
        elif auth is not None:
            all_headers.append(("authorization", auth))
        if topic is not None:
            all_headers.append(("apns-topic", topic))
        all_headers.extend(headers or [])
        self.conn.send_headers(stream_id, all_headers, end_stream=not body)
        self.responses[stream_id] = Response()
        if body:
            self._pending[stream_id] = body
            self._send_pending(stream_id)
        self.flush()
        return stream_id

    def _send_pending(self, stream_id: int) -> None:
        body = self._pending[stream_id]
        while body:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                break
            chunk, body = body[:window], body[window:]
            self.conn.send_data(stream_id, chunk, end_stream=not body)
        if body:
            self._pending[stream_id] = body
        else:
            del self._pending[stream_id]

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        frames = bytearray()
        while len(self._buffer) >= 9:
            end = 9 + int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < end:
                break
            frame = bytes(self._buffer[:end])
            del self._buffer[:end]
            if frame[3] == 0x7:  # GOAWAY
                self._receive(bytes(frames))
                frames.clear()
                self.goaway = GoAway(
                    int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF,
                    int.from_bytes(frame[13:17], "big"),
                    frame[17:],
                )
            else:
                frames += frame
        self._receive(bytes(frames))

    def _receive(self, data: bytes) -> None:
        if not data:
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.responses[event.stream_id].headers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.responses[event.stream_id].body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.responses[event.stream_id].ended = True
            elif isinstance(event, h2.events.StreamReset):
                self.responses[event.stream_id].reset = event.error_code
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_updates += 1
                for stream_id in list(self._pending):
                    self._send_pending(stream_id)
            elif isinstance(event, h2.events.PingAckReceived):
                self.pings_acked += 1
        self.flush()

    def answered(self) -> dict[int, Response]:
        return {k: v for k, v in self.responses.items() if v.ended}


def jwt(
    key: ec.EllipticCurvePrivateKey = KEY,
    key_id: str = KEY_ID,
    team_id: str = TEAM_ID,
    issued_at: float | None = None,
) -> str:
    return sign_provider_token(key, key_id, team_id, int(START if issued_at is None else issued_at))


class FakeTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.server = FakeAPNsServer(clock=self.clock, rng=random.Random(4))
        self.server.add_token_key(KEY_ID, TEAM_ID, PKI.token_public_key)
        self.server.add_token_key(OTHER_KEY_ID, OTHER_TEAM_ID, OTHER_KEY.public_key())

    def connect(self) -> tuple[H2Client, FakeAPNsProtocol, IOPump]:
        factory = self.server.factory()

        def server_protocol() -> FakeAPNsProtocol:
            proto = factory.buildProtocol(None)
            assert isinstance(proto, FakeAPNsProtocol)
            return proto

        client, proto, pump = connectedServerAndClient(server_protocol, H2Client, clock=self.clock)
        return client, proto, pump

    def send(self, *args: Any, **kwargs: Any) -> Response:
        """One request on a fresh connection; its (complete) response."""
        client, _, pump = self.connect()
        stream_id = client.request(*args, **kwargs)
        pump.flush()
        response = client.responses[stream_id]
        self.assertTrue(response.ended, "no response")
        return response

    def assertRejected(self, status: int, reason: str, *args: Any, **kwargs: Any) -> Response:
        before = len(self.server.accepted)
        response = self.send(*args, **kwargs)
        self.assertEqual((response.status, response.reason), (status, reason))
        self.assertEqual(len(self.server.accepted), before)
        return response


class AcceptTests(FakeTestCase):
    def test_accepts_and_records(self) -> None:
        apns_id = "123E4567-E89B-12D3-A456-426614174000"
        response = self.send(
            headers=[
                ("apns-id", apns_id),
                ("apns-push-type", "alert"),
                ("apns-priority", "5"),
                ("apns-expiration", "1700003600"),
                ("apns-collapse-id", "c1"),
            ]
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"")
        self.assertEqual(response.headers[b"apns-id"], apns_id.encode())
        self.assertNotIn(b"apns-unique-id", response.headers)
        [record] = self.server.accepted
        self.assertEqual(record.token_hex, TOKEN)
        self.assertEqual(record.payload, PAYLOAD)
        self.assertEqual(record.apns_id, apns_id)
        self.assertEqual(record.topic, TOPIC)
        self.assertEqual(record.push_type.value if record.push_type else None, "alert")
        self.assertEqual(record.priority, 5)
        self.assertEqual(record.expiration, 1700003600)
        self.assertEqual(record.collapse_id, "c1")
        self.assertEqual((record.connection, record.stream_id), (1, 1))
        self.assertEqual(record.auth, "token")
        self.assertEqual(self.server.stats.statuses[200], 1)
        self.assertEqual(self.server.stats.requests, 1)

    def test_generated_apns_id_is_upper_case_uuid(self) -> None:
        response = self.send()
        apns_id = response.headers[b"apns-id"].decode()
        self.assertEqual(apns_id, apns_id.upper())
        self.assertEqual(str(uuid.UUID(apns_id)).upper(), apns_id)
        self.assertEqual(self.server.accepted[0].apns_id, apns_id)

    def test_sandbox_apns_unique_id(self) -> None:
        self.server.sandbox = True
        response = self.send()
        unique = response.headers[b"apns-unique-id"].decode()
        uuid.UUID(unique)
        self.assertEqual(self.server.accepted[0].apns_unique_id, unique)
        rejected = self.send(f"/3/device/{TOKEN}", b"")
        self.assertIn(b"apns-unique-id", rejected.headers)

    def test_voip_payload_limit(self) -> None:
        body = b'{"a":"' + b"x" * (5120 - 8) + b'"}'
        self.assertEqual(len(body), 5120)
        response = self.send(body=body, topic=TOPIC + ".voip", headers=[("apns-push-type", "voip")])
        self.assertEqual(response.status, 200)

    def test_collapse_id_of_64_bytes(self) -> None:
        self.assertEqual(self.send(headers=[("apns-collapse-id", "c" * 64)]).status, 200)

    def test_upper_case_token_recorded_lower_case(self) -> None:
        self.assertEqual(self.send(f"/3/device/{TOKEN.upper()}").status, 200)
        self.assertEqual(self.server.accepted_tokens(), [TOKEN])


class RejectionTests(FakeTestCase):
    def test_method_not_allowed(self) -> None:
        self.assertRejected(405, "MethodNotAllowed", method="GET", body=b"")

    def test_bad_path(self) -> None:
        self.assertRejected(404, "BadPath", f"/3/devices/{TOKEN}")
        self.assertRejected(404, "BadPath", "/")

    def test_bad_message_id(self) -> None:
        response = self.assertRejected(400, "BadMessageId", headers=[("apns-id", "nope")])
        uuid.UUID(response.headers[b"apns-id"].decode())

    def test_duplicate_headers(self) -> None:
        self.assertRejected(
            400, "DuplicateHeaders", headers=[("apns-priority", "10"), ("apns-priority", "5")]
        )

    def test_missing_provider_token(self) -> None:
        self.assertRejected(403, "MissingProviderToken", auth=None)

    def test_invalid_provider_tokens(self) -> None:
        for auth in [
            "bearer not.a.jwt",
            f"bearer {jwt(key=OTHER_KEY)}",  # bad signature
            f"bearer {jwt(team_id=OTHER_TEAM_ID)}",  # wrong team for the key
            f"bearer {jwt(key_id='UNKNOWNKEY')}",
            f"basic {jwt()}",
        ]:
            self.assertRejected(403, "InvalidProviderToken", auth=auth)
        self.assertEqual(self.server.stats.reasons["InvalidProviderToken"], 5)

    def test_expired_provider_token_wedges_the_connection(self) -> None:
        client, _, pump = self.connect()
        first = client.request(auth=f"bearer {jwt(issued_at=START - 3601)}")
        pump.flush()
        self.assertEqual(client.responses[first].reason, "ExpiredProviderToken")
        fresh = client.request(auth=f"bearer {jwt()}")
        pump.flush()
        self.assertEqual(client.responses[fresh].reason, "ExpiredProviderToken")
        # A new connection with a fresh token works.
        self.assertEqual(self.send().status, 200)

    def test_expired_without_wedging(self) -> None:
        self.server.wedge_after_expired = False
        client, _, pump = self.connect()
        first = client.request(auth=f"bearer {jwt(issued_at=START - 3601)}")
        pump.flush()
        fresh = client.request()
        pump.flush()
        self.assertEqual(client.responses[first].reason, "ExpiredProviderToken")
        self.assertEqual(client.responses[fresh].status, 200)

    def test_cached_token_expires_by_clock(self) -> None:
        client, _, pump = self.connect()
        token = jwt()
        first = client.request(auth=f"bearer {token}")
        pump.flush()
        self.clock.advance(3601)
        later = client.request(auth=f"bearer {token}")
        pump.flush()
        self.assertEqual(client.responses[first].status, 200)
        self.assertEqual(client.responses[later].reason, "ExpiredProviderToken")
        self.assertEqual(self.server.stats.token_verifications, 1)

    def test_missing_device_token(self) -> None:
        self.assertRejected(400, "MissingDeviceToken", "/3/device/")

    def test_bad_device_tokens(self) -> None:
        for token in ["ab" * 31, "zz" * 32, "abc" * 22 + "a"]:
            self.assertRejected(400, "BadDeviceToken", f"/3/device/{token}")

    def test_topic_rules(self) -> None:
        self.assertRejected(400, "MissingTopic", topic=None)
        self.assertRejected(400, "BadTopic", topic="not a topic")
        self.server.topics = {TOPIC}
        self.assertRejected(400, "TopicDisallowed", topic="com.example.other")
        response = self.send(topic=TOPIC + ".voip", headers=[("apns-push-type", "voip")])
        self.assertEqual(response.status, 200)

    def test_push_type_rules(self) -> None:
        self.assertRejected(400, "InvalidPushType", headers=[("apns-push-type", "fax")])
        self.assertRejected(400, "InvalidPushType", headers=[("apns-push-type", "voip")])
        self.assertRejected(
            400,
            "InvalidPushType",
            topic=TOPIC + ".voip",
            headers=[("apns-push-type", "liveactivity")],
        )

    def test_priority_rules(self) -> None:
        self.assertRejected(400, "BadPriority", headers=[("apns-priority", "7")])
        self.assertRejected(400, "BadPriority", headers=[("apns-priority", "high")])
        self.assertRejected(
            400,
            "BadPriority",
            headers=[("apns-push-type", "background"), ("apns-priority", "10")],
        )

    def test_background_without_priority_is_refused(self) -> None:
        # No apns-priority means 10, which a background push may not use (as Apple answers).
        self.assertRejected(400, "BadPriority", headers=[("apns-push-type", "background")])
        ok = self.send(headers=[("apns-push-type", "background"), ("apns-priority", "5")])
        self.assertEqual(ok.status, 200)

    def test_bad_expiration(self) -> None:
        self.assertRejected(400, "BadExpirationDate", headers=[("apns-expiration", "soon")])
        self.assertRejected(400, "BadExpirationDate", headers=[("apns-expiration", "-1")])

    def test_bad_collapse_id(self) -> None:
        self.assertRejected(400, "BadCollapseId", headers=[("apns-collapse-id", "c" * 65)])

    def test_payload_empty(self) -> None:
        self.assertRejected(400, "PayloadEmpty", body=b"")

    def test_payload_too_large(self) -> None:
        body = b'{"a":"' + b"x" * (4097 - 8) + b'"}'
        self.assertEqual(len(body), 4097)
        self.assertRejected(413, "PayloadTooLarge", body=body)
        voip = b'{"a":"' + b"x" * (5121 - 8) + b'"}'
        self.assertRejected(
            413,
            "PayloadTooLarge",
            body=voip,
            topic=TOPIC + ".voip",
            headers=[("apns-push-type", "voip")],
        )

    def test_payload_not_json(self) -> None:
        self.assertRejected(400, "BadPayload", body=b"hello")
        self.assertRejected(400, "BadPayload", body=b"[1]")


class ScriptTests(FakeTestCase):
    def test_bad_tokens(self) -> None:
        self.server.bad_tokens.add(TOKEN)
        self.assertRejected(400, "BadDeviceToken")

    def test_unregistered_with_timestamp(self) -> None:
        self.server.unregistered_tokens[TOKEN] = 1_699_999_000_123
        response = self.assertRejected(410, "Unregistered")
        self.assertEqual(response.json, {"reason": "Unregistered", "timestamp": 1_699_999_000_123})

    def test_token_responses(self) -> None:
        self.server.token_responses[TOKEN] = (400, "DeviceTokenNotForTopic")
        self.assertRejected(400, "DeviceTokenNotForTopic")

    def test_throttled_n_times(self) -> None:
        self.server.throttled_tokens[TOKEN] = 2
        self.assertRejected(429, "TooManyRequests")
        self.assertRejected(429, "TooManyRequests")
        self.assertEqual(self.send().status, 200)

    def test_throttled_forever(self) -> None:
        self.server.throttled_tokens[TOKEN] = None
        for _ in range(3):
            self.assertRejected(429, "TooManyRequests")

    def test_fail_next_burst(self) -> None:
        self.server.fail_next(3)
        self.server.fail_next(1, 500, "InternalServerError")
        client, _, pump = self.connect()
        results = []
        for _ in range(5):
            stream_id = client.request()
            pump.flush()
            results.append((client.responses[stream_id].status, client.responses[stream_id].reason))
        self.assertEqual(
            results,
            [(503, "ServiceUnavailable")] * 3 + [(500, "InternalServerError"), (200, None)],
        )
        self.assertEqual(len(self.server.accepted), 1)

    def test_validation_comes_before_script(self) -> None:
        self.server.fail_next(1)
        self.assertRejected(400, "PayloadEmpty", body=b"")
        self.assertRejected(503, "ServiceUnavailable")

    def test_never_answered(self) -> None:
        dead = "cd" * 32
        self.server.never_answer_tokens.add(dead)
        self.server.never_answer_prefix = "ef"
        self.server.ramp = False
        client, _, pump = self.connect()
        a = client.request(f"/3/device/{dead}")
        b = client.request()
        c = client.request(f"/3/device/{'ef' * 32}")
        pump.flush()
        self.clock.advance(3600)
        pump.flush()
        self.assertFalse(client.responses[a].ended)
        self.assertFalse(client.responses[c].ended)
        self.assertEqual(client.responses[b].status, 200)
        self.assertEqual(self.server.stats.never_answered, 2)
        self.assertEqual(self.server.accepted_tokens(), [TOKEN])

    def test_latency_by_clock(self) -> None:
        self.server.latency = 0.25
        client, _, pump = self.connect()
        stream_id = client.request()
        pump.flush()
        self.assertFalse(client.responses[stream_id].ended)
        self.assertEqual(len(self.server.accepted), 1)  # decided already
        self.clock.advance(0.2)
        pump.flush()
        self.assertFalse(client.responses[stream_id].ended)
        self.clock.advance(0.05)
        pump.flush()
        self.assertEqual(client.responses[stream_id].status, 200)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_latency_timers_cancelled_on_connection_loss(self) -> None:
        self.server.latency = 5.0
        self.server.ramp = False
        client, _, pump = self.connect()
        for _ in range(3):
            client.request()
        pump.flush()
        self.assertEqual(len(self.clock.getDelayedCalls()), 3)
        assert client.transport is not None
        client.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.server.connections, [])
        self.assertEqual(self.server.stats.connections_lost, 1)

    def test_reset_and_clear_script(self) -> None:
        self.server.bad_tokens.add("cd" * 32)
        self.send()
        self.server.reset()
        self.assertEqual(self.server.accepted, [])
        self.assertEqual(self.server.stats.requests, 0)
        self.assertEqual(self.server.bad_tokens, {"cd" * 32})
        self.server.clear_script()
        self.assertEqual(self.server.bad_tokens, set())
        self.assertEqual(self.send(f"/3/device/{'cd' * 32}").status, 200)


class TokenRuleTests(FakeTestCase):
    def test_unrelated_key_on_bound_connection(self) -> None:
        client, proto, pump = self.connect()
        first = client.request()
        pump.flush()
        other = client.request(
            auth=f"bearer {jwt(key=OTHER_KEY, key_id=OTHER_KEY_ID, team_id=OTHER_TEAM_ID)}"
        )
        pump.flush()
        self.assertEqual(client.responses[first].status, 200)
        self.assertEqual(client.responses[other].reason, "UnrelatedKeyIdInToken")
        self.assertEqual(proto.bound_key, (TEAM_ID, KEY_ID))
        # The other key is fine on its own connection.
        response = self.send(
            auth=f"bearer {jwt(key=OTHER_KEY, key_id=OTHER_KEY_ID, team_id=OTHER_TEAM_ID)}"
        )
        self.assertEqual(response.status, 200)

    def test_too_many_provider_token_updates(self) -> None:
        client, _, pump = self.connect()
        first = client.request(auth=f"bearer {jwt()}")
        pump.flush()
        self.clock.advance(60)
        early = client.request(auth=f"bearer {jwt(issued_at=START + 60)}")
        pump.flush()
        self.assertEqual(client.responses[first].status, 200)
        self.assertEqual(
            (client.responses[early].status, client.responses[early].reason),
            (429, "TooManyProviderTokenUpdates"),
        )
        # The original token still works on the connection.
        again = client.request(auth=f"bearer {jwt()}")
        pump.flush()
        self.assertEqual(client.responses[again].status, 200)
        self.clock.advance(20 * 60 - 60)
        on_time = client.request(auth=f"bearer {jwt(issued_at=START + 20 * 60)}")
        pump.flush()
        self.assertEqual(client.responses[on_time].status, 200)
        self.assertEqual(self.server.stats.token_updates, 1)

    def test_resigned_token_with_same_claims_is_not_an_update(self) -> None:
        client, _, pump = self.connect()
        ids = [client.request(auth=f"bearer {jwt()}") for _ in range(1)]
        pump.flush()
        ids.append(client.request(auth=f"bearer {jwt()}"))  # new ECDSA signature
        pump.flush()
        self.assertEqual([client.responses[i].status for i in ids], [200, 200])
        self.assertEqual(self.server.stats.token_verifications, 2)
        self.assertEqual(self.server.stats.token_updates, 0)

    def test_updates_are_per_connection(self) -> None:
        self.assertEqual(self.send().status, 200)
        self.clock.advance(1)
        self.assertEqual(self.send(auth=f"bearer {jwt(issued_at=START + 1)}").status, 200)

    def test_bad_environment_key(self) -> None:
        self.server.wrong_environment_keys.add(KEY_ID)
        self.assertRejected(403, "BadEnvironmentKeyIdInToken")

    def test_token_in_the_future(self) -> None:
        self.server.token_max_future = 300
        self.assertRejected(
            403, "InvalidProviderToken", auth=f"bearer {jwt(issued_at=START + 900)}"
        )


def _utf8(text: str) -> bytes:
    data = text.encode()
    return b"\x0c" + bytes([len(data)]) + data


def _sequence(content: bytes) -> bytes:
    return b"\x30" + bytes([len(content)]) + content


def apple_style_cert(uid: str, topics: list[str], environments: list[str]) -> x509.Certificate:
    """A self-signed client certificate with Apple's topic and environment extensions."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.USER_ID, uid)])
    # Apple's topics extension: SEQUENCE { UTF8String topic, SEQUENCE { UTF8String kind }, … }
    topics_der = _sequence(b"".join(_utf8(t) + _sequence(_utf8("app")) for t in topics))
    oids = {"development": "1.2.840.113635.100.6.3.1", "production": "1.2.840.113635.100.6.3.2"}
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2040, 1, 1))
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.2.840.113635.100.6.3.6"), topics_der
            ),
            critical=False,
        )
    )
    for env in environments:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oids[env]), b"\x05\x00"),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256())


class CertificateAuthTests(FakeTestCase):
    def test_certificate_uid_is_the_default_topic(self) -> None:
        self.server.plaintext_client_cert = PKI.client_cert
        response = self.send(auth=None, topic=None)
        self.assertEqual(response.status, 200)
        [record] = self.server.accepted
        self.assertEqual((record.topic, record.auth), (PKI.topic, "certificate"))
        self.assertRejected(400, "TopicDisallowed", auth=None, topic="com.example.other")
        self.assertRejected(
            400,
            "TopicDisallowed",
            auth=None,
            topic=PKI.topic + ".voip",
            headers=[("apns-push-type", "voip")],
        )

    def test_topics_extension(self) -> None:
        self.server.plaintext_client_cert = apple_style_cert(
            TOPIC, [TOPIC, TOPIC + ".voip", TOPIC + ".complication"], ["production"]
        )
        response = self.send(auth=None, topic=TOPIC + ".voip", headers=[("apns-push-type", "voip")])
        self.assertEqual(response.status, 200)
        self.assertRejected(400, "TopicDisallowed", auth=None, topic=TOPIC + ".location-query")

    def test_bad_certificate_environment(self) -> None:
        self.server.plaintext_client_cert = apple_style_cert(TOPIC, [TOPIC], ["production"])
        self.server.sandbox = True
        self.assertRejected(403, "BadCertificateEnvironment", auth=None)
        self.server.sandbox = False
        self.assertEqual(self.send(auth=None).status, 200)


class RampAndSettingsTests(FakeTestCase):
    def test_one_stream_until_a_valid_token(self) -> None:
        client, proto, pump = self.connect()
        self.assertEqual(client.max_streams, 1)
        bad = client.request(auth=f"bearer {jwt(key=OTHER_KEY)}")
        pump.flush()
        self.assertEqual(client.responses[bad].reason, "InvalidProviderToken")
        self.assertEqual(client.max_streams, 1)
        self.assertFalse(proto.ramped)
        good = client.request()
        pump.flush()
        self.assertEqual(client.responses[good].status, 200)
        self.assertEqual(client.max_streams, 1000)
        ids = [client.request() for _ in range(50)]
        pump.flush()
        self.assertEqual({client.responses[i].status for i in ids}, {200})

    def test_no_ramp_on_certificate_auth(self) -> None:
        # Apple starts with one stream for token auth only: a certificate connection gets
        # the full limit in the server's first SETTINGS.
        self.server.plaintext_client_cert = PKI.client_cert
        client, proto, pump = self.connect()
        self.assertEqual(client.max_streams, 1000)
        self.assertTrue(proto.ramped)
        ids = [client.request(auth=None) for _ in range(20)]
        pump.flush()
        self.assertEqual({client.responses[i].status for i in ids}, {200})

    def test_excess_streams_are_refused_not_the_connection(self) -> None:
        # A client that opens two streams before it has seen the server's SETTINGS (h2
        # assumes no limit until then) gets the second refused with RST_STREAM
        # (REFUSED_STREAM: never processed, safe to retry); the connection lives on.
        factory = self.server.factory()
        client, _, pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), H2Client, greet=False, clock=self.clock
        )
        first = client.request()
        second = client.request()
        pump.flush()
        self.assertIsNone(client.goaway)
        self.assertFalse(client.lost)
        self.assertEqual(client.responses[first].status, 200)
        self.assertEqual(client.responses[second].reset, h2.errors.ErrorCodes.REFUSED_STREAM)
        self.assertEqual(self.server.stats.streams_refused, 1)
        self.assertEqual(self.server.stats.protocol_errors, 0)
        self.assertEqual(len(self.server.accepted), 1)
        again = client.request()
        pump.flush()
        self.assertEqual(client.responses[again].status, 200)

    def test_without_ramp(self) -> None:
        self.server.ramp = False
        self.server.max_streams = 500
        client, _, _ = self.connect()
        self.assertEqual(client.max_streams, 500)

    def test_set_max_streams_on_live_connections(self) -> None:
        client, _, pump = self.connect()
        client.request()
        pump.flush()
        self.server.set_max_streams(7)
        pump.flush()
        self.assertEqual(client.max_streams, 7)

    def test_garbage_is_a_protocol_error(self) -> None:
        client, _, pump = self.connect()
        assert client.transport is not None
        client.transport.write(b"\x00\x00\x04\x63\x00\x00\x00\x00\x00junk")  # unknown... then
        client.transport.write(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"\x00" * 8)  # PING sid 1
        pump.flush()
        self.assertEqual(self.server.stats.protocol_errors, 1)
        self.assertTrue(client.lost)


class FlowControlTests(FakeTestCase):
    def test_small_stream_window(self) -> None:
        self.server.initial_window = 100
        self.server.ramp = False
        client, _, pump = self.connect()
        self.assertEqual(client.conn.remote_settings.initial_window_size, 100)
        body = b'{"a":"' + b"y" * 3000 + b'"}'
        stream_id = client.request(body=body)
        pump.flush()
        self.assertEqual(client.responses[stream_id].status, 200)
        self.assertEqual(self.server.accepted[0].payload, body)
        # The client had to wait for credit about 30 times.
        self.assertGreaterEqual(client.window_updates, 30)

    def test_small_connection_window(self) -> None:
        self.server.conn_window = 1000
        self.server.ramp = False
        client, _, pump = self.connect()
        body = b'{"a":"' + b"z" * 3992 + b'"}'
        ids = [client.request(body=body) for _ in range(20)]
        # The first 65,535 bytes go out before any credit comes back.
        self.assertEqual(client.conn.outbound_flow_control_window, 0)
        pump.flush()
        self.assertEqual({client.responses[i].status for i in ids}, {200})
        self.assertEqual(len(self.server.accepted), 20)
        # Everything sent was credited back but the withheld 64,535 bytes.
        self.assertEqual(client.conn.outbound_flow_control_window, 1000)

    def test_large_connection_window(self) -> None:
        self.server.conn_window = 1_000_000
        client, _, _ = self.connect()
        self.assertEqual(client.conn.outbound_flow_control_window, 1_000_000)

    def test_response_body_respects_client_window(self) -> None:
        client = H2Client()
        client.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 5}
        )
        factory = self.server.factory()
        _, _, pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), lambda: client, clock=self.clock
        )
        stream_id = client.request(body=b"")
        pump.flush()
        response = client.responses[stream_id]
        self.assertTrue(response.ended)
        self.assertEqual(response.reason, "PayloadEmpty")


class GoAwayTests(FakeTestCase):
    def test_goaway_after_n_with_last_stream_id(self) -> None:
        self.server.goaway_after = 2
        self.server.ramp = False
        client, _, pump = self.connect()
        first = [client.request(f"/3/device/{f'{i:02x}' * 32}") for i in range(3)]
        pump.pump()  # requests in, GOAWAY queued on the server's side
        late = [client.request(f"/3/device/{f'{i:02x}' * 32}") for i in range(3, 5)]
        pump.flush()
        assert client.goaway is not None
        self.assertEqual(client.goaway.error_code, 0)
        self.assertEqual(client.goaway.last_stream_id, first[1])
        self.assertEqual(json.loads(client.goaway.debug), {"reason": "Shutdown"})
        self.assertEqual(client.responses[first[0]].status, 200)
        self.assertEqual(client.responses[first[1]].status, 200)
        # Stream 5 had arrived but is above last-stream-id: never processed or answered.
        for stream_id in [first[2], *late]:
            self.assertFalse(client.responses[stream_id].ended)
        self.assertEqual(self.server.accepted_tokens(), ["00" * 32, "01" * 32])
        self.assertEqual(self.server.stats.streams_ignored, 3)
        self.assertEqual(self.server.stats.goaways, 1)
        self.assertTrue(client.lost)  # closed once everything up to last-stream-id answered

    def test_streams_below_last_stream_id_still_answered(self) -> None:
        self.server.ramp = False
        self.server.latency = 1.0
        client, _, pump = self.connect()
        ids = [client.request() for _ in range(3)]
        pump.flush()
        self.server.goaway()
        pump.flush()
        assert client.goaway is not None
        self.assertEqual(client.goaway.last_stream_id, ids[-1])
        self.assertFalse(client.lost)
        self.clock.advance(1.0)
        pump.flush()
        self.assertEqual({client.responses[i].status for i in ids}, {200})
        self.assertTrue(client.lost)

    def test_goaway_ignores_incomplete_request_above_last(self) -> None:
        self.server.ramp = False
        client, _, pump = self.connect()
        done = client.request()
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "x"),
                (":path", f"/3/device/{TOKEN}"),
                ("authorization", f"bearer {jwt()}"),
                ("apns-topic", TOPIC),
            ],
        )
        client.responses[stream_id] = Response()
        client.flush()
        pump.flush()
        self.server.goaway()
        pump.flush()
        client.conn.send_data(stream_id, PAYLOAD, end_stream=True)
        client.flush()
        pump.flush()
        assert client.goaway is not None
        self.assertEqual(client.goaway.last_stream_id, done)
        self.assertFalse(client.responses[stream_id].ended)
        self.assertEqual(len(self.server.accepted), 1)

    def test_drop_connections(self) -> None:
        self.server.ramp = False
        self.server.latency = 1.0
        client, _, pump = self.connect()
        client.request()
        pump.flush()
        self.server.drop_connections()
        pump.flush()
        self.assertTrue(client.lost)
        self.assertIsNone(client.goaway)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abandoned_and_reset_streams(self) -> None:
        self.server.ramp = False
        client, _, pump = self.connect()
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "x"),
                (":path", f"/3/device/{TOKEN}"),
            ],
        )
        client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        other = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            other,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "x"),
                (":path", f"/3/device/{TOKEN}"),
            ],
        )
        client.flush()
        pump.flush()
        assert client.transport is not None
        client.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.server.stats.streams_reset, 1)
        self.assertEqual(self.server.stats.streams_abandoned, 2)


class ConnectionTests(FakeTestCase):
    def test_client_goaway_closes(self) -> None:
        client, _, pump = self.connect()
        waiter = self.server.when_no_connections()
        self.assertNoResult(waiter)
        client.conn.close_connection()
        client.flush()
        pump.flush()
        self.assertTrue(client.lost)
        self.successResultOf(waiter)
        self.successResultOf(self.server.when_no_connections())
        self.assertEqual(
            (self.server.stats.connections, self.server.stats.connections_lost), (1, 1)
        )

    def test_client_goaway_lets_in_flight_streams_finish(self) -> None:
        # A client's GOAWAY (NO_ERROR) is a graceful close: the streams it already sent are
        # still answered, then the server closes the connection.
        self.server.ramp = False
        self.server.latency = 1.0
        client, _, pump = self.connect()
        stream_id = client.request()
        pump.flush()
        assert client.transport is not None
        client.transport.write(GoAwayFrame(0, last_stream_id=0).serialize())
        pump.flush()
        self.assertFalse(client.lost)
        self.clock.advance(1.0)
        pump.flush()
        self.assertEqual(client.responses[stream_id].status, 200)
        self.assertTrue(client.lost)
        self.assertEqual(self.server.stats.protocol_errors, 0)

    def test_data_and_goaway_in_one_read(self) -> None:
        # DATA and GOAWAY in one read: crediting the DATA back must not touch a connection
        # h2 has closed (it raised ProtocolError "SEND_WINDOW_UPDATE in state CLOSED").
        self.server.ramp = False
        client, proto, pump = self.connect()
        assert client.transport is not None
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "api.push.apple.com"),
                (":path", f"/3/device/{TOKEN}"),
                ("authorization", f"bearer {jwt()}"),
                ("apns-topic", TOPIC),
            ],
        )
        client.conn.send_data(stream_id, PAYLOAD, end_stream=True)
        client.responses[stream_id] = Response()
        data = client.conn.data_to_send() + GoAwayFrame(0, last_stream_id=0).serialize()
        proto.dataReceived(data)
        pump.flush()
        self.assertEqual(client.responses[stream_id].status, 200)
        self.assertEqual(self.server.stats.protocol_errors, 0)
        self.assertTrue(client.lost)

    def test_client_goaway_with_error_closes_at_once(self) -> None:
        self.server.ramp = False
        self.server.latency = 1.0
        client, _, pump = self.connect()
        client.request()
        pump.flush()
        assert client.transport is not None
        client.transport.write(GoAwayFrame(0, last_stream_id=0, error_code=2).serialize())
        pump.flush()
        self.assertTrue(client.lost)

    def test_huge_body_is_counted_not_kept(self) -> None:
        self.server.initial_window = 1_000_000
        self.server.conn_window = 1_000_000
        body = b"{" + b" " * 200_000 + b"}"
        self.assertRejected(413, "PayloadTooLarge", body=body)

    def test_logs_hold_no_token_or_jwt(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.server.goaway_after = 1
        self.server.ramp = False
        token = jwt()
        client, _, pump = self.connect()
        client.request(auth=f"bearer {token}")
        pump.flush()
        broken, _, pump2 = self.connect()
        assert broken.transport is not None
        broken.transport.write(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"\x00" * 8)
        pump2.flush()
        text = " ".join(formatEvent(e) for e in events)
        self.assertIn("GOAWAY", text)
        self.assertIn("broke HTTP/2", text)
        self.assertNotIn(TOKEN[:16], text)
        self.assertNotIn(token.split(".")[2][:16], text)


class BlackholeTests(FakeTestCase):
    def test_blackhole_answers_nothing(self) -> None:
        client, _, pump = self.connect()
        client.conn.ping(b"12345678")
        client.flush()
        pump.flush()
        self.assertEqual(client.pings_acked, 1)
        self.server.blackhole = True
        client.conn.ping(b"87654321")
        client.flush()
        stream_id = client.request()
        pump.flush()
        self.assertEqual(client.pings_acked, 1)
        self.assertFalse(client.responses[stream_id].ended)


class BroadcastTests(FakeTestCase):
    def test_channel_lifecycle_and_broadcast(self) -> None:
        base = "/1/apps/com.example.app"
        created = self.send(
            f"{base}/channels",
            body=json.dumps({"message-storage-policy": 0, "push-type": "LiveActivity"}).encode(),
            topic=None,
        )
        self.assertEqual(created.status, 201)
        channel_id = created.headers[b"apns-channel-id"].decode()
        self.assertIn(b"apns-request-id", created.headers)

        read = self.send(
            f"{base}/channels",
            body=b"",
            method="GET",
            topic=None,
            headers=[("apns-channel-id", channel_id)],
        )
        self.assertEqual(read.status, 200)
        self.assertEqual(read.json, {"message-storage-policy": 0, "push-type": "LiveActivity"})

        listed = self.send(f"{base}/all-channels", body=b"", method="GET", topic=None)
        self.assertEqual(listed.json, {"channels": [channel_id]})

        payload = b'{"aps":{"timestamp":1,"event":"update","content-state":{}}}'
        sent = self.send(
            "/4/broadcasts/apps/com.example.app",
            body=payload,
            topic=None,
            headers=[("apns-channel-id", channel_id), ("apns-push-type", "liveactivity")],
        )
        self.assertEqual(sent.status, 200)
        [record] = self.server.broadcasts
        self.assertEqual((record.channel_id, record.payload), (channel_id, payload))

        stored = self.send(
            "/4/broadcasts/apps/com.example.app",
            body=payload,
            topic=None,
            headers=[
                ("apns-channel-id", channel_id),
                ("apns-push-type", "liveactivity"),
                ("apns-expiration", "1700003600"),
            ],
        )
        self.assertEqual((stored.status, stored.reason), (400, "BadExpirationDate"))
        wrong_type = self.send(
            "/4/broadcasts/apps/com.example.app",
            body=payload,
            topic=None,
            headers=[("apns-channel-id", channel_id), ("apns-push-type", "alert")],
        )
        self.assertEqual(wrong_type.reason, "InvalidPushType")

        deleted = self.send(
            f"{base}/channels",
            body=b"",
            method="DELETE",
            topic=None,
            headers=[("apns-channel-id", channel_id)],
        )
        self.assertEqual(deleted.status, 204)
        gone = self.send(
            f"{base}/channels",
            body=b"",
            method="GET",
            topic=None,
            headers=[("apns-channel-id", channel_id)],
        )
        self.assertEqual((gone.status, gone.reason), (400, "BadChannelId"))
        self.assertEqual(len(self.server.broadcasts), 1)

    def test_channel_creation_checks(self) -> None:
        path = "/1/apps/com.example.app/channels"
        bad_policy = self.send(
            path, body=b'{"message-storage-policy":2,"push-type":"LiveActivity"}', topic=None
        )
        self.assertEqual(bad_policy.reason, "BadMessageStoragePolicy")
        bad_type = self.send(path, body=b'{"message-storage-policy":1,"push-type":"x"}', topic=None)
        self.assertEqual(bad_type.reason, "InvalidPushType")
        self.assertEqual(self.send(path, method="PUT", topic=None).status, 405)
        self.assertEqual(self.send(path, auth=None, topic=None).reason, "MissingProviderToken")
        missing = self.send(path, body=b"", method="GET", topic=None)
        self.assertEqual(missing.reason, "MissingChannelId")


class RealTLSTests(TestCase):
    """Over real TLS on 127.0.0.1, with ALPN h2 and a client certificate."""

    @defer.inlineCallbacks
    def test_tls_alpn_and_certificate_auth(self) -> Any:
        from twisted.internet import reactor

        server = FakeAPNsServer(clock=reactor, sandbox=True)  # type: ignore[arg-type]
        port = listen_http2(
            reactor,  # type: ignore[arg-type]
            server,
            tls_options=server_tls_options(PKI, require_client_cert=False, alpn=[b"h2"]),
        )
        self.addCleanup(port.stopListening)
        options = client_tls_options(
            "localhost",
            certificate=ClientCertificate.from_pem(PKI.client_cert, PKI.client_key),
            ca_pem=PKI.ca_cert,
            alpn=[b"h2"],
        )
        done: defer.Deferred[Response] = defer.Deferred()

        class Client(H2Client):
            def connectionMade(self) -> None:
                super().connectionMade()
                self.stream_id = self.request(auth=None, topic=None)

            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                response = self.responses[self.stream_id]
                if response.ended and not done.called:
                    assert self.transport is not None
                    self.transport.loseConnection()
                    done.callback(response)

        endpoint_factory = protocol.Factory.forProtocol(Client)
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        )
        yield endpoint.connect(endpoint_factory)
        response = yield done
        self.assertEqual(response.status, 200)
        self.assertIn(b"apns-unique-id", response.headers)
        [record] = server.accepted
        self.assertEqual((record.auth, record.topic), ("certificate", PKI.topic))
        self.assertEqual(server.stats.alpn["h2"], 1)
        # Let the connection close before the test ends (no dirty reactor).
        yield server.when_no_connections()
