"""The HTTP/2 client (``txapns.http2``) against the fake APNs, in memory.

Every connection is an :mod:`twisted.test.iosim` pair (our protocol ↔ ``FakeAPNsProtocol``)
driven by one :class:`Clock`, so deadlines, backoff, pings and token ages are exact. After
every pump the counters invariant is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from txapns.core.backoff import Backoff
from txapns.core.binary_channel import UnknownPolicy
from txapns.core.errors import (
    CircuitOpenError,
    ClientStoppedError,
    PayloadError,
    QueueFullError,
)
from txapns.core.http2.frames import ErrorCode, rst_stream_frame
from txapns.core.http2_policy import RetryPolicy
from txapns.core.notification import Notification, PushType
from txapns.core.proxy import TunnelRefused
from txapns.core.result import Outcome, Result
from txapns.credentials import ProviderToken
from txapns.http2 import HTTP2Client

from .helpers_http2 import (
    BUNDLE,
    KEY,
    KEY_ID,
    PKI,
    START,
    TEAM_ID,
    ALPNEndpoint,
    ClientTestCase,
    NegotiatedTransport,
    note,
    token,
)


def frame_types(data: bytes) -> list[int]:
    """The types of the HTTP/2 frames in ``data`` (whole frames, no preface)."""
    types = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        types.append(data[3])
        data = data[9 + length :]
    return types


# --- the happy path ---------------------------------------------------------------------------


class BasicTests(ClientTestCase):
    def test_accepted_with_ids_attempts_and_latency(self) -> None:
        client = self.make_client()
        d = self.send(client, note(1, apns_id="123e4567-e89b-12d3-a456-426614174000"))
        self.pump()
        result = self.result_of(d)
        self.assertEqual(result.outcome, Outcome.ACCEPTED)
        self.assertEqual(result.status, 200)
        self.assertEqual(result.apns_id, "123e4567-e89b-12d3-a456-426614174000")
        [record] = self.server.accepted
        self.assertEqual(result.apns_unique_id, record.apns_unique_id)
        self.assertIsNotNone(result.apns_unique_id)
        self.assertEqual(result.attempts, 1)
        self.assertEqual(result.latency, 0.0)
        self.assertEqual(
            (record.topic, record.token_hex, record.auth), (BUNDLE, token(1).hex(), "token")
        )
        self.assertEqual(client.counters.accepted, 1)

    def test_apns_id_assigned_when_missing(self) -> None:
        client = self.make_client()
        d = self.send(client, note(1))
        self.pump()
        result = self.result_of(d)
        assert result.apns_id is not None
        self.assertEqual(len(result.apns_id), 36)
        self.assertEqual(self.server.accepted[0].apns_id, result.apns_id)

    def test_topic_suffix_and_headers_by_push_type(self) -> None:
        client = self.make_client()
        sent = [
            note(1, push_type=PushType.VOIP, priority=10),
            note(2, push_type="background", priority=5),
            note(3, push_type=PushType.ALERT, expiry=1_700_003_600, collapse_id="c1"),
            note(4, topic="com.example.other"),
        ]
        sent[1] = Notification.create(
            token(2), {"aps": {"content-available": 1}}, push_type="background", priority=5
        )
        for n in sent:
            self.send(client, n)
        self.pump()
        records = sorted(self.server.accepted, key=lambda a: a.token_hex)
        self.assertEqual(
            [(r.topic, r.push_type, r.priority, r.expiration, r.collapse_id) for r in records],
            [
                (f"{BUNDLE}.voip", PushType.VOIP, 10, None, None),
                (BUNDLE, PushType.BACKGROUND, 5, None, None),
                (BUNDLE, PushType.ALERT, None, 1_700_003_600, "c1"),
                ("com.example.other", None, None, None, None),
            ],
        )

    def test_validation_before_queueing(self) -> None:
        client = self.make_client()
        bad = Notification.create(token(1), {"aps": {"alert": "x"}}, push_type="background")
        self.assertRaises(PayloadError, client.send, bad)
        self.assertEqual((client.counters.submitted, client.pending()), (0, 0))

    def test_missing_topic_without_bundle_id(self) -> None:
        client = self.make_client(bundle_id=None)
        from txapns.core.errors import MissingTopicError

        self.assertRaises(MissingTopicError, client.send, note(1))
        d = self.send(client, note(1, topic=BUNDLE))
        self.pump()
        self.assertTrue(self.result_of(d).accepted)

    def test_queue_bound(self) -> None:
        client = self.make_client(max_queue=3)
        self.server.latency = 1.0
        for i in range(3):
            self.send(client, note(i))
        self.assertRaises(QueueFullError, client.send, note(9))
        self.advance(2.0, step=1.0)  # the first (ramp), then the other two
        self.assertEqual(len(self.results), 3)
        self.send(client, note(9))

    def test_send_to_calls_back_once_and_raises_like_send(self) -> None:
        client = self.make_client(max_queue=2)
        got: list[Result] = []
        client.send_to(note(1), got.append)
        client.send_to(note(2), got.append)
        self.assertRaises(QueueFullError, client.send_to, note(3), got.append)
        empty = Notification.create(token(4), b"{}")
        self.assertRaises(PayloadError, client.send_to, empty, got.append)
        self.advance(1.0)
        self.assertEqual([r.outcome for r in got], [Outcome.ACCEPTED, Outcome.ACCEPTED])
        self.assertEqual(sorted(r.notification.token for r in got), [token(1), token(2)])
        self.assertEqual(client.counters.submitted, 2)
        client.counters.check(client.pending())

    def test_ramp_one_stream_until_a_token_was_accepted(self) -> None:
        client = self.make_client()
        [conn] = client.connections
        for i in range(50):
            self.send(client, note(i))
        self.clock.advance(0)  # the client's turn: it writes
        self.assertEqual(len(conn.streams), 1)
        self.assertFalse(conn.ramped)
        self.pump()
        self.assertTrue(conn.ramped)
        self.assertEqual(len(self.results), 50)
        self.assertTrue(all(r.accepted for r in self.results))
        self.assertEqual(self.server.stats.protocol_errors, 0)
        self.assertEqual(self.server.stats.connections, 1)
        # After the ramp the other 49 went out together.
        self.assertEqual(client.counters.window_high_water, 49)

    def test_ramp_even_when_the_server_advertises_more_at_once(self) -> None:
        self.server.ramp = False  # 1000 streams advertised before any token was seen
        client = self.make_client()
        [conn] = client.connections
        self.assertEqual(conn.h2.max_concurrent_streams, 1000)
        for i in range(20):
            self.send(client, note(i))
        self.clock.advance(0)
        self.assertEqual(len(conn.streams), 1)
        self.pump()
        self.assertEqual(len(self.results), 20)
        self.assertEqual(client.counters.window_high_water, 19)

    def test_a_rejection_other_than_403_proves_the_token(self) -> None:
        self.server.ramp = False
        self.server.bad_tokens.add(token(0).hex())
        client = self.make_client()
        [conn] = client.connections
        for i in range(11):
            self.send(client, note(i))
        self.clock.advance(0)
        self.assertEqual(len(conn.streams), 1)
        self.pump()
        self.assertTrue(conn.ramped)
        self.assertEqual(self.results[0].reason, "BadDeviceToken")
        self.assertEqual(client.counters.window_high_water, 10)

    def test_a_403_does_not_ramp(self) -> None:
        self.server.ramp = False
        client = self.make_client()
        [conn] = client.connections
        self.server.fail_next(1, 403, "SomethingElse")
        self.send(client, note(0))
        self.pump()
        self.assertFalse(conn.ramped)

    def test_one_write_per_turn(self) -> None:
        client = self.make_client()
        self.send(client, note(0))
        self.pump()
        [conn] = client.connections
        transport = conn.transport
        writes: list[bytes] = []
        original = transport.write  # type: ignore[union-attr]

        def spy(data: bytes) -> None:
            writes.append(data)
            original(data)

        conn._write = spy
        for i in range(1, 200):
            self.send(client, note(i))
        self.clock.advance(0)
        self.assertEqual(len(writes), 1)
        self.pump()
        self.assertEqual(len(self.results), 200)

    def test_health(self) -> None:
        client = self.make_client()
        health = client.health()
        self.assertEqual(
            {k: health[k] for k in ("connections", "open_streams", "pending", "breaker")},
            {"connections": 1, "open_streams": 0, "pending": 0, "breaker": "closed"},
        )
        self.assertEqual(
            health["per_connection"],
            [{"number": 1, "state": "ready", "open_streams": 0, "max_streams": 1, "ramped": False}],
        )

    def test_certificate_auth_sends_no_authorization(self) -> None:
        self.server.plaintext_client_cert = PKI.client_cert
        client = self.make_client(token=None, bundle_id=PKI.topic)
        d = self.send(client, note(1))
        self.pump()
        self.assertTrue(self.result_of(d).accepted)
        self.assertEqual(self.server.accepted[0].auth, "certificate")


# --- pool -------------------------------------------------------------------------------------


class PoolTests(ClientTestCase):
    def test_opens_more_connections_when_all_are_full(self) -> None:
        self.server.set_max_streams(5)
        self.server.latency = 1.0
        client = self.make_client(max_connections=3)
        for i in range(40):
            self.send(client, note(i))
        self.pump()
        self.assertEqual(len(client.connections), 1)  # ramping: no second connection yet
        self.advance(1.0)
        # Connection 1 is ramped and full (5 streams): a second one was opened.
        self.assertEqual(len(client.connections), 2)
        self.advance(10.0, step=0.5)
        self.assertEqual(len(self.results), 40)
        self.assertTrue(all(r.accepted for r in self.results))
        self.assertEqual(len(client.connections), 3)
        used = {a.connection for a in self.server.accepted}
        self.assertEqual(used, {1, 2, 3})
        self.assertEqual(self.server.stats.protocol_errors, 0)

    def test_least_loaded_dispatch(self) -> None:
        self.server.latency = 1.0
        client = self.make_client(min_connections=3)
        # Ramp all three.
        for i in range(3):
            self.send(client, note(i))
        self.advance(1.0)
        self.assertTrue(all(c.ramped for c in client.connections))
        for i in range(3, 33):
            self.send(client, note(i))
        self.clock.advance(0)
        self.assertEqual(sorted(len(c.streams) for c in client.connections), [10, 10, 10])
        self.advance(1.0)
        self.assertEqual(len(self.results), 33)

    def test_min_connections_kept_and_idle_pinged(self) -> None:
        client = self.make_client(min_connections=2, ping_interval=60.0)
        self.assertEqual(len(client.connections), 2)
        self.advance(600.0, step=30.0)
        self.assertEqual(len(client.connections), 2)
        self.assertEqual(self.server.stats.connections, 2)
        self.assertGreaterEqual(self.server.stats.pings, 2 * 9)

    def test_busy_connection_is_not_pinged(self) -> None:
        client = self.make_client(ping_interval=60.0)
        for step in range(20):
            self.send(client, note(step))
            self.advance(10.0)
        self.assertEqual(self.server.stats.pings, 0)
        self.assertEqual(len(self.results), 20)

    def test_reconnects_with_backoff_after_failures(self) -> None:
        self.endpoint.refuse = 3
        client = self.make_client()
        self.assertEqual((self.endpoint.attempts, len(client.connections)), (1, 0))
        d = self.send(client, note(1))
        self.advance(0.99)
        self.assertEqual(self.endpoint.attempts, 1)
        self.advance(0.02)  # 1 s after the first failure
        self.assertEqual(self.endpoint.attempts, 2)
        self.advance(2.0)  # then 2 s
        self.assertEqual(self.endpoint.attempts, 3)
        self.advance(3.99)
        self.assertEqual(self.endpoint.attempts, 3)
        self.advance(0.02)  # then 4 s: connects
        self.assertEqual(self.endpoint.attempts, 4)
        self.assertTrue(self.result_of(d).accepted)
        self.assertEqual(client.counters.connection_failures, 3)
        self.assertEqual(client._failures, 0)

    def test_goaway_before_any_answer_is_a_failed_attempt(self) -> None:
        client = self.make_client(ping_interval=0)
        self.server.goaway()
        self.pump()
        # Replaced at once (the GOAWAY came first), but it counts as a failed attempt...
        self.assertEqual([c.number for c in client.connections], [2])
        self.assertEqual(client.counters.connection_failures, 1)
        # ... so a server that sends every connection away is not hammered.
        self.server.goaway()
        self.pump()
        self.assertEqual(client.connections, [])
        self.assertEqual(client.counters.connection_failures, 2)
        self.advance(0.99)
        self.assertEqual(client.connections, [])
        self.advance(0.02)
        self.assertEqual([c.number for c in client.connections], [3])

    def test_stream_ids_exhausted_retire_the_connection(self) -> None:
        client = self.make_client()
        self.send(client, note(0))
        self.pump()
        [conn] = client.connections
        conn.h2._next_stream_id = 2**31 - 3
        ds = [self.send(client, note(i)) for i in range(1, 4)]
        self.pump()
        self.assertTrue(all(self.result_of(d).accepted for d in ds))
        self.assertEqual([a.stream_id for a in self.server.accepted[1:3]], [2**31 - 3, 2**31 - 1])
        self.assertEqual(self.server.accepted[3].connection, 2)
        self.assertEqual([c.number for c in client.connections], [2])

    def test_replaces_a_lost_idle_connection(self) -> None:
        client = self.make_client()
        self.send(client, note(1))
        self.pump()
        self.server.drop_connections()
        self.pump()
        self.assertEqual(len(client.connections), 1)
        self.assertEqual(client.connections[0].number, 2)
        self.assertEqual(client.counters.reconnects, 1)
        self.assertEqual(client.counters.connection_failures, 0)


# --- outcomes per response ----------------------------------------------------------------------


class QueueTimeTests(ClientTestCase):
    def test_unreachable_ends_after_the_default_queue_time(self) -> None:
        """Issue 9 item 1: a closed port; the deadline never starts (nothing is written), yet
        the send ends: rejected, ``local="unreachable"``, with the failed attempts."""
        self.endpoint.refuse = 10**6
        client = self.make_client(deadline=2.0)
        d = self.send(client, note(1))
        self.advance(299.0, step=1.0)
        self.assertNoResult(d)
        self.advance(1.0)
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.local, result.attempts), (Outcome.REJECTED, "unreachable", 0)
        )
        reason = result.reason or ""
        self.assertIn("not sent within 300 s", reason)
        self.assertIn(f"{self.endpoint.attempts} failed connection attempts", reason)
        self.assertIn("refused by the test", reason)
        self.assertEqual(client.counters.rejected_by_reason["unreachable"], 1)
        self.stop(client)
        self.assertNoDelayedCalls()

    def test_configurable_and_each_notification_its_own_limit(self) -> None:
        self.endpoint.refuse = 10**6
        client = self.make_client(max_queue_time=10.0)
        first = self.send(client, note(1))
        self.advance(4.0)
        second = self.send(client, note(2))
        self.advance(6.0)
        self.assertEqual(self.result_of(first).local, "unreachable")
        self.assertNoResult(second)
        self.advance(4.0)
        self.assertEqual(self.result_of(second).local, "unreachable")
        self.stop(client)

    def test_maybe_delivered_then_unreachable_is_unknown(self) -> None:
        self.server.latency = 1.0
        client = self.make_client(max_queue_time=10.0)
        d = self.send(client, note(1))
        self.pump()
        self.endpoint.refuse = 10**6
        self.server.drop_connections()  # in flight: unknown, re-sent; no connection now
        self.advance(10.0, step=1.0)
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.local), (Outcome.UNKNOWN, "unreachable"))
        self.assertEqual(client.counters.unknown_by_reason["unreachable"], 1)
        self.stop(client)

    def test_in_flight_is_left_to_its_deadline_and_connected_is_queue_time(self) -> None:
        self.server.latency = 100.0
        # Token auth: one stream until APNs has answered one; the first is never answered,
        # so the second waits, connected.
        client = self.make_client(max_queue_time=5.0, deadline=30.0, max_connections=1)
        ds = [self.send(client, note(i)) for i in range(2)]
        self.advance(5.0, step=1.0)
        self.assertNoResult(ds[0])
        queued = self.result_of(ds[1])
        self.assertEqual((queued.outcome, queued.local), (Outcome.REJECTED, "queue-time"))
        self.stop(client, timeout=1.0)


class ProxyTests(ClientTestCase):
    def test_proxy_407_fails_fast_with_an_error_naming_the_proxy(self) -> None:
        """Issue 9 item 2: a 407 is not retried (credentials don't fix themselves): what is
        queued is rejected at once, ``local="proxy-auth"``, naming the proxy, never its
        password. The next send tries again (once)."""
        refused = TunnelRefused(407, "Proxy Authentication Required", ())
        self.endpoint.fail_with = refused.error(
            "api.push.apple.com:443", "http://pusher:***@proxy.example.com:3128"
        )
        client = self.make_client()
        self.assertEqual(self.endpoint.attempts, 1)  # min_connections, at start
        ds = [self.send(client, note(i)) for i in range(3)]
        self.pump()
        results = [self.result_of(d) for d in ds]
        self.assertEqual(
            {(r.outcome, r.local) for r in results}, {(Outcome.REJECTED, "proxy-auth")}
        )
        reason = results[0].reason or ""
        self.assertIn("http://pusher:***@proxy.example.com:3128", reason)
        self.assertIn("407", reason)
        self.assertEqual(self.endpoint.attempts, 2)
        self.advance(120.0, step=10.0)
        self.assertEqual(self.endpoint.attempts, 2)  # gave up: no retries in the background
        self.assertEqual(client.counters.rejected_by_reason["proxy-auth"], 3)
        d = self.send(client, note(9))
        self.pump()
        self.assertEqual(self.result_of(d).local, "proxy-auth")
        self.assertEqual(self.endpoint.attempts, 3)
        self.stop(client)
        self.assertNoDelayedCalls()


class ResponseTests(ClientTestCase):
    def test_rejections_are_final(self) -> None:
        client = self.make_client()
        table = {
            1: (400, "DeviceTokenNotForTopic"),
            2: (400, "BadDeviceToken"),
            3: (400, "TopicDisallowed"),
            4: (404, "BadPath"),
            5: (405, "MethodNotAllowed"),
            6: (410, "ExpiredToken"),
            7: (413, "PayloadTooLarge"),
            8: (403, "SomethingElse"),
            9: (418, "Teapot"),
        }
        for i, answer in table.items():
            self.server.token_responses[token(i).hex()] = answer
        ds = {i: self.send(client, note(i)) for i in table}
        self.pump()
        got = {
            i: (r.outcome, r.status, r.reason, r.attempts, r.local)
            for i, r in ((i, self.result_of(d)) for i, d in ds.items())
        }
        self.assertEqual(
            got,
            {i: (Outcome.REJECTED, s, reason, 1, None) for i, (s, reason) in table.items()},
        )
        self.assertEqual(client.counters.retried, 0)
        self.assertEqual(client.counters.rejected_by_reason["BadDeviceToken"], 1)
        self.assertEqual(client.breaker, "closed")

    def test_unregistered_with_timestamp(self) -> None:
        client = self.make_client()
        self.server.unregistered_tokens[token(1).hex()] = 1_700_000_000_500
        d = self.send(client, note(1))
        self.pump()
        result = self.result_of(d)
        self.assertEqual((result.status, result.reason), (410, "Unregistered"))
        assert result.timestamp is not None
        self.assertEqual(result.timestamp.timestamp(), 1_700_000_000.5)
        self.assertTrue(result.token_invalid)
        self.assertIsNotNone(result.apns_id)

    def test_too_many_requests_retried_after_the_delay(self) -> None:
        client = self.make_client()
        self.server.throttled_tokens[token(1).hex()] = 1
        d = self.send(client, note(1))
        self.pump()
        self.assertNoResult(d)
        self.assertEqual(client.pending(), 1)
        self.advance(4.9)
        self.assertNoResult(d)
        self.advance(0.2)
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(client.counters.retried, 1)
        self.assertEqual(len(self.server.accepted), 1)

    def test_too_many_requests_gives_up_after_max_attempts(self) -> None:
        client = self.make_client()
        self.server.throttled_tokens[token(1).hex()] = None
        d = self.send(client, note(1))
        self.advance(30.0, step=1.0)
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.status, result.reason, result.local, result.attempts),
            (Outcome.REJECTED, 429, "TooManyRequests", "attempts", 3),
        )
        self.assertEqual(client.counters.rejected_by_reason["TooManyRequests"], 1)

    def test_service_unavailable_backs_off_onto_another_connection(self) -> None:
        client = self.make_client(max_connections=2)
        self.send(client, note(0))
        self.pump()
        self.server.fail_next(1, 503, "ServiceUnavailable")
        d = self.send(client, note(1))
        self.pump()
        self.assertNoResult(d)
        self.advance(0.9)
        self.assertNoResult(d)
        self.advance(0.2)  # the backoff (1 s) passed: a second connection was made for it
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(self.server.accepted[-1].connection, 2)
        self.assertEqual(client.counters.retried, 1)

    def test_retry_waits_for_another_connection_with_room(self) -> None:
        self.server.set_max_streams(1)
        client = self.make_client(min_connections=2, max_connections=2, deadline=20.0)
        self.send(client, note(0))
        self.send(client, note(1))
        self.pump()
        a, b = client.connections
        self.assertTrue(a.ramped and b.ramped)
        # A is busy with a request that is never answered; B answers 503.
        self.server.never_answer_tokens.add(token(2).hex())
        self.send(client, note(2))
        self.pump()
        self.assertEqual((len(a.streams), len(b.streams)), (1, 0))
        self.server.fail_next(1, 503, "ServiceUnavailable")
        d = self.send(client, note(3))
        self.pump()
        self.assertEqual(client.counters.retried, 1)
        self.advance(10.0, step=1.0)  # B has room, but the retry must avoid it
        self.assertNoResult(d)
        self.advance(10.0, step=1.0)  # A's stream times out: room on A
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(self.server.accepted[-1].connection, a.number)

    def test_service_unavailable_at_max_connections_uses_the_same_one(self) -> None:
        client = self.make_client(max_connections=1)
        self.server.fail_next(2, 500, "InternalServerError")
        d = self.send(client, note(1))
        self.advance(1.0)
        self.assertNoResult(d)
        self.advance(2.0)
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 3))
        self.assertEqual(self.server.stats.connections, 1)

    def test_idle_timeout_retried_on_new_connections_until_max_attempts(self) -> None:
        client = self.make_client()
        self.server.token_responses[token(1).hex()] = (400, "IdleTimeout")
        d = self.send(client, note(1))
        self.pump()
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.reason, result.local, result.attempts),
            (Outcome.REJECTED, "IdleTimeout", "attempts", 3),
        )
        self.assertEqual(self.server.stats.connections, 4)  # 3 retired, 1 fresh
        self.assertEqual(len(client.connections), 1)

    def test_too_many_provider_token_updates_new_connection(self) -> None:
        client = self.make_client()
        self.send(client, note(0))
        self.pump()
        self.server.fail_next(1, 429, "TooManyProviderTokenUpdates")
        d = self.send(client, note(1))
        self.pump()
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(self.server.accepted[-1].connection, 2)
        self.assertEqual([c.number for c in client.connections], [2])

    def test_expired_provider_token_new_token_on_a_new_connection(self) -> None:
        self.server.token_max_age = 600
        client = self.make_client(ping_interval=0)
        first = self.send(client, note(0))
        self.pump()
        self.assertTrue(self.result_of(first).accepted)
        self.clock.advance(700)  # the connection's token is now too old for the server
        logged = self.capture_logs()
        ds = [self.send(client, note(i)) for i in range(1, 4)]
        self.pump()
        results = [self.result_of(d) for d in ds]
        self.assertEqual([(r.outcome, r.attempts) for r in results], [(Outcome.ACCEPTED, 2)] * 3)
        self.assertEqual({a.connection for a in self.server.accepted[1:]}, {2})
        self.assertEqual([c.number for c in client.connections], [2])
        self.assertEqual(self.server.stats.token_updates, 0)
        text = "\n".join(logged)
        self.assertIn("expired", text)
        self.assertIn("clock", text)  # minted 700 s ago: the clock looks wrong

    def test_clock_skew_warning_from_the_date_header(self) -> None:
        from email.utils import formatdate

        from hpack import Encoder

        from txapns.core.http2.frames import FRAME_HEADER

        self.server.latency = 100.0  # the fake stays silent; we answer in its place
        client = self.make_client()
        self.send(client, note(1))
        self.pump()
        [conn] = client.connections
        [stream_id] = conn.streams
        logged = self.capture_logs()
        block = Encoder().encode(
            [(":status", "200"), ("date", formatdate(START - 3600, usegmt=True))]
        )
        conn.dataReceived(FRAME_HEADER.pack(len(block) << 8 | 0x1, 0x5, stream_id) + block)
        text = "\n".join(logged)
        self.assertIn("3600 s ahead of the server", text)
        self.assertEqual(self.results[0].outcome, Outcome.ACCEPTED)

    def test_unrelated_key_new_connection(self) -> None:
        client = self.make_client()
        self.server.fail_next(1, 403, "UnrelatedKeyIdInToken")
        d = self.send(client, note(1))
        self.pump()
        self.assertEqual(self.result_of(d).attempts, 2)
        self.assertEqual(self.server.accepted[0].connection, 2)

    def capture_logs(self) -> list[str]:
        logged: list[str] = []

        def observer(event: LogEvent) -> None:
            logged.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return logged


# --- GOAWAY, resets, lost connections ------------------------------------------------------------


class GoAwayTests(ClientTestCase):
    def test_unprocessed_streams_resent_without_duplicates(self) -> None:
        self.server.goaway_after = 7
        client = self.make_client()
        ds = [self.send(client, note(i)) for i in range(60)]
        self.pump()
        results = [self.result_of(d) for d in ds]
        self.assertTrue(all(r.accepted for r in results))
        ids = self.accepted_ids()
        self.assertEqual(len(ids), 60)
        self.assertEqual(len(set(ids)), 60)
        self.assertEqual(sorted(ids), sorted(r.apns_id for r in results))  # type: ignore[type-var]
        self.assertGreater(client.counters.replayed, 0)
        self.assertEqual(client.counters.replayed, self.server.stats.streams_ignored)
        self.assertEqual((client.counters.unknown, client.counters.resent_unknown), (0, 0))
        self.assertGreaterEqual(self.server.stats.goaways, 8)
        # Every connection after the first replaced one that went away.
        self.assertEqual(client.counters.reconnects, client.counters.connections_made - 1)
        self.assertEqual(client.counters.connections_made, self.server.stats.connections)
        # Re-sent requests count their writes; those never re-sent were written once.
        self.assertEqual(sum(r.attempts for r in results), 60 + client.counters.replayed)

    def test_goaway_streams_below_last_finish_then_connection_closes(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        self.send(client, note(0))
        self.advance(1.0)
        ds = [self.send(client, note(i)) for i in range(1, 11)]
        self.pump()
        [conn] = client.connections
        self.assertEqual(len(conn.streams), 10)
        self.server.goaway()  # last-stream-id = the highest processed: all 10 are processed
        self.pump()
        self.assertEqual(conn.state, 2)  # draining: no new streams
        d = self.send(client, note(11))
        self.pump()
        self.assertEqual(len(client.connections), 2)  # the new notification went elsewhere
        self.advance(1.0)
        self.assertTrue(all(self.result_of(d2).accepted for d2 in ds))
        self.assertTrue(self.result_of(d).accepted)
        self.assertNotIn(conn, client.connections)
        self.assertEqual(client.counters.replayed, 0)

    def test_a_retired_connection_finishes_its_streams_before_goaway(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        self.send(client, note(0))
        self.advance(1.0)
        ds = [self.send(client, note(i)) for i in range(1, 6)]
        self.pump()
        [conn] = client.connections
        written: list[bytes] = []
        write = conn._write
        assert write is not None

        def spy(data: bytes) -> None:
            written.append(data)
            write(data)

        conn._write = spy
        conn.retire("test")
        other = self.send(client, note(9))  # a turn with writes: goes to a new connection
        self.pump()
        self.assertNotIn(0x7, frame_types(b"".join(written)))  # no GOAWAY yet
        self.advance(1.0)
        results = [self.result_of(d) for d in ds]
        # Answered on that connection (a GOAWAY sent at once makes this fake drop it).
        self.assertEqual({(r.outcome, r.attempts) for r in results}, {(Outcome.ACCEPTED, 1)})
        self.assertEqual(client.counters.resent_unknown, 0)
        self.assertEqual(self.result_of(other).attempts, 1)
        self.assertEqual(conn.state, 4)  # closed after its streams finished
        self.assertIn(0x7, frame_types(b"".join(written)))  # with a GOAWAY
        self.assertEqual(client.counters.connection_failures, 0)

    def test_refused_stream_is_resent(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        d = self.send(client, note(1))
        self.pump()
        [conn] = client.connections
        [stream_id] = conn.streams
        conn.dataReceived(rst_stream_frame(stream_id, ErrorCode.REFUSED_STREAM))
        self.advance(1.0)
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual((client.counters.replayed, client.counters.resent_unknown), (1, 0))

    def test_refused_again_and_again_is_rejected_at_last(self) -> None:
        self.server.latency = 1.0
        client = self.make_client(max_replays=2)
        d = self.send(client, note(1))
        for _ in range(3):
            self.pump()
            [conn] = client.connections
            [stream_id] = conn.streams
            conn.dataReceived(rst_stream_frame(stream_id, ErrorCode.REFUSED_STREAM))
        self.pump()
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.local, result.attempts), (Outcome.REJECTED, "attempts", 3)
        )
        self.assertEqual(result.reason, "never processed by APNs in 3 attempts")
        self.assertEqual(client.counters.replayed, 2)

    def test_other_reset_is_unknown_and_resent_with_the_same_id(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        d = self.send(client, note(1))
        self.pump()
        [conn] = client.connections
        [stream_id] = conn.streams
        conn.dataReceived(rst_stream_frame(stream_id, ErrorCode.INTERNAL_ERROR))
        self.advance(1.0)
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(client.counters.resent_unknown, 1)
        # The fake processed both writes: the same apns-id twice (a possible duplicate).
        self.assertEqual(self.accepted_ids(), [result.apns_id] * 2)

    def test_connection_lost_in_flight_resend_policy(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        self.send(client, note(0))
        self.advance(1.0)
        ds = [self.send(client, note(i)) for i in range(1, 6)]
        self.pump()
        first_ids = list(self.accepted_ids())
        self.server.drop_connections()
        self.pump()
        self.assertEqual(client.counters.resent_unknown, 5)
        self.advance(2.0, step=0.5)
        results = [self.result_of(d) for d in ds]
        self.assertEqual({(r.outcome, r.attempts) for r in results}, {(Outcome.ACCEPTED, 2)})
        resent = self.accepted_ids()[len(first_ids) :]
        self.assertEqual(sorted(resent), sorted(first_ids[1:]))  # same apns-ids
        self.assertEqual(client.counters.unknown, 0)

    def test_resent_after_an_unknown_outcome_is_flagged_may_duplicate(self) -> None:
        """Issue 9 item 4: the server accepted 5 streams, then the connection reset; the
        re-sent five are delivered twice and each result says so, as the counters do."""
        self.server.latency = 1.0
        client = self.make_client()
        first = self.send(client, note(0))
        self.advance(1.0)
        ds = [self.send(client, note(i)) for i in range(1, 6)]
        self.pump()
        self.server.drop_connections()
        self.advance(2.0, step=0.5)
        results = [self.result_of(d) for d in ds]
        self.assertEqual(
            {(r.outcome, r.attempts, r.may_duplicate) for r in results},
            {(Outcome.ACCEPTED, 2, True)},
        )
        self.assertFalse(self.result_of(first).may_duplicate)
        self.assertEqual(client.counters.may_duplicate, 5)
        self.assertEqual(client.counters.as_dict()["may_duplicate"], 5)

    def test_a_single_unknown_attempt_is_not_a_duplicate(self) -> None:
        self.server.latency = 1.0
        client = self.make_client(policy=RetryPolicy(unknown_policy=UnknownPolicy.FAIL))
        d = self.send(client, note(1))
        self.pump()
        self.server.drop_connections()
        self.pump()
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.may_duplicate), (Outcome.UNKNOWN, False))
        self.assertEqual(client.counters.may_duplicate, 0)

    def test_connection_lost_in_flight_fail_policy(self) -> None:
        self.server.latency = 1.0
        client = self.make_client(
            policy=RetryPolicy(unknown_policy=UnknownPolicy.FAIL),
        )
        ds = [self.send(client, note(i)) for i in range(3)]
        self.pump()
        self.server.drop_connections()
        self.pump()
        # Only the first was in flight (ramp): unknown, not re-sent. The others were queued.
        first = self.result_of(ds[0])
        self.assertEqual((first.outcome, first.reason), (Outcome.UNKNOWN, "connection-lost"))
        self.assertNoResult(ds[1])
        # Lost before any answer: a failed attempt, so the reconnect waits 1 s (backoff).
        self.advance(0.9)
        self.assertEqual(client.connections, [])
        self.advance(3.1, step=0.5)
        self.assertTrue(all(self.result_of(d).accepted for d in ds[1:]))
        self.assertEqual(client.counters.unknown_by_reason["connection-lost"], 1)
        self.assertEqual(client.counters.resent_unknown, 0)

    def test_resent_unknown_gives_up_after_max_attempts(self) -> None:
        self.server.latency = 100.0
        client = self.make_client()
        d = self.send(client, note(1))
        for _ in range(3):
            self.advance(5.0, step=0.5)  # reconnects (with backoff) and sends it again
            self.assertEqual(client.health()["open_streams"], 1)
            self.server.drop_connections()
        self.pump()
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.reason, result.attempts),
            (Outcome.UNKNOWN, "connection-lost", 3),
        )
        self.assertEqual(client.counters.resent_unknown, 2)

    def test_server_protocol_violation_is_unknown(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        d = self.send(client, note(1))
        self.pump()
        [conn] = client.connections
        # WINDOW_UPDATE with increment 0 on the connection: PROTOCOL_ERROR.
        conn.dataReceived(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
        self.assertNotEqual(conn.state, 1)
        self.advance(1.0)
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(client.counters.resent_unknown, 1)


# --- deadlines and pings ----------------------------------------------------------------------


class DeadlineTests(ClientTestCase):
    def test_never_answered_times_out_unknown_with_rst(self) -> None:
        client = self.make_client(deadline=5.0)
        self.send(client, note(0))
        self.pump()
        self.server.never_answer_tokens.add(token(1).hex())
        d = self.send(client, note(1))
        others = [self.send(client, note(i)) for i in range(2, 5)]
        self.pump()
        self.assertTrue(all(self.result_of(o).accepted for o in others))
        self.advance(4.9)
        self.assertNoResult(d)
        self.advance(0.2)
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.reason, result.attempts), (Outcome.UNKNOWN, "timeout", 1)
        )
        self.assertEqual(self.server.stats.streams_reset, 1)
        self.assertEqual(client.counters.unknown_by_reason["timeout"], 1)
        # The connection answered others meanwhile: it is kept.
        self.assertEqual([c.number for c in client.connections], [1])
        self.assertEqual(client.connections[0].silent_timeouts, 0)

    def test_one_timer_per_connection(self) -> None:
        self.server.latency = 1.0
        client = self.make_client(deadline=30.0, ping_interval=0)
        self.send(client, note(0))
        self.advance(1.0)
        for i in range(1, 100):
            self.send(client, note(i))
        self.clock.advance(0)
        # One deadline timer, the fake's latency timers, nothing per notification of ours.
        # (A connection's timers are txapns._timers.Timer objects it owns.)
        timers = client.connections[0]._timers._timers
        ours = [c for c in self.clock.getDelayedCalls() if c.func.__self__ in timers]  # type: ignore[attr-defined]
        self.assertEqual(len(ours), 1)
        self.advance(1.0)
        self.assertEqual(len(self.results), 100)

    def test_silent_timeouts_replace_the_connection(self) -> None:
        client = self.make_client(deadline=5.0, ping_interval=0, ping_timeout=100.0)
        self.send(client, note(0))
        self.pump()
        self.server.blackhole = True
        ds = [self.send(client, note(i)) for i in range(1, 4)]
        self.pump()
        self.server.blackhole = False
        self.advance(5.0)
        results = [self.result_of(d) for d in ds]
        self.assertEqual({(r.outcome, r.reason) for r in results}, {(Outcome.UNKNOWN, "timeout")})
        self.assertEqual([c.number for c in client.connections], [2])
        d = self.send(client, note(9))
        self.pump()
        self.assertEqual(self.result_of(d).attempts, 1)
        self.assertEqual(self.server.accepted[-1].connection, 2)

    def test_unanswered_ping_replaces_the_connection(self) -> None:
        self.server.latency = 30.0
        client = self.make_client(ping_interval=60.0, ping_timeout=10.0, deadline=200.0)
        self.server.latency = 0.0
        self.send(client, note(0))
        self.pump()
        self.server.latency = 100.0
        d = self.send(client, note(1))
        self.pump()
        self.server.blackhole = True
        self.advance(60.0)  # idle for 60 s: PING, which the black hole swallows
        self.server.blackhole = False
        self.assertEqual(len(client.connections), 1)
        self.advance(10.0)
        self.assertEqual([c.number for c in client.connections], [2])
        # The notification in flight on the dead connection was re-sent (unknown → resend).
        self.server.latency = 0.0
        self.pump()
        self.advance(100.0)
        result = self.result_of(d)
        self.assertEqual((result.outcome, result.attempts), (Outcome.ACCEPTED, 2))
        self.assertEqual(client.counters.resent_unknown, 1)

    def test_answered_ping_keeps_the_connection(self) -> None:
        client = self.make_client(ping_interval=60.0, ping_timeout=10.0)
        self.advance(300.0, step=5.0)
        self.assertEqual([c.number for c in client.connections], [1])
        self.assertEqual(self.server.stats.pings, 5)


# --- provider tokens --------------------------------------------------------------------------


class TokenTests(ClientTestCase):
    def test_token_refreshed_on_the_same_connection_between_20_and_60_minutes(self) -> None:
        client = self.make_client(ping_interval=300.0)
        self.send(client, note(0))
        self.pump()
        [conn] = client.connections
        tokens = conn.tokens
        assert tokens is not None and tokens.refresh_at is not None
        refresh_in = tokens.refresh_at - self.clock.seconds()
        self.assertTrue(20 * 60 <= refresh_in <= 60 * 60, refresh_in)
        self.advance(refresh_in - 1, step=60.0)
        self.send(client, note(1))
        self.pump()
        self.assertEqual(tokens.generation, 1)
        self.advance(2.0)
        self.send(client, note(2))
        self.pump()
        self.assertEqual(tokens.generation, 2)
        self.assertEqual(self.server.stats.token_updates, 1)
        self.assertEqual(len(self.server.accepted), 3)
        self.assertEqual(self.server.stats.connections, 1)

    def test_each_connection_has_its_own_token(self) -> None:
        client = self.make_client(min_connections=3)
        sources = [c.tokens for c in client.connections]
        self.assertEqual(len({id(s) for s in sources}), 3)

    def test_bad_ids_fail_at_construction(self) -> None:
        import warnings

        from txapns.core.errors import CredentialError

        self.assertRaises(CredentialError, ProviderToken, KEY, "short", TEAM_ID)
        with warnings.catch_warnings(record=True) as caught:  # the old tuple: checked too
            warnings.simplefilter("always")
            self.assertRaises(
                CredentialError,
                HTTP2Client,
                self.clock,
                self.endpoint,
                token=(KEY, "short", TEAM_ID),
            )
        self.assertEqual([w.category for w in caught], [DeprecationWarning])

    def test_the_old_token_tuple_still_works_with_a_deprecation_warning(self) -> None:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client = HTTP2Client(self.clock, self.endpoint, token=(KEY, KEY_ID, TEAM_ID))
        [warning] = caught
        self.assertIs(warning.category, DeprecationWarning)
        self.assertIn("ProviderToken(key, key_id, team_id)", str(warning.message))
        self.assertEqual(warning.filename, __file__)  # blamed on the caller, not on txapns
        self.assertEqual(client._token, ProviderToken(KEY, KEY_ID, TEAM_ID))
        self.assertNotIn("PRIVATE", repr(client._token))
        self.assertEqual(
            repr(client._token), f"ProviderToken(key_id={KEY_ID!r}, team_id={TEAM_ID!r})"
        )


# --- circuit breaker --------------------------------------------------------------------------


class CircuitBreakerTests(ClientTestCase):
    def test_credential_failure_opens_then_probe_closes(self) -> None:
        client = self.make_client(circuit_reset=300.0)
        self.server.wrong_environment_keys.add(KEY_ID)
        ds = [self.send(client, note(i)) for i in range(5)]
        self.pump()
        results = [self.result_of(d) for d in ds]
        # The first went out (ramp) and got Apple's answer; the others were still queued.
        self.assertEqual(
            (results[0].outcome, results[0].status, results[0].reason, results[0].local),
            (Outcome.REJECTED, 403, "BadEnvironmentKeyIdInToken", None),
        )
        self.assertEqual(
            {(r.outcome, r.reason, r.local) for r in results[1:]},
            {(Outcome.REJECTED, "BadEnvironmentKeyIdInToken", "circuit-open")},
        )
        self.assertEqual(client.counters.rejected_by_reason["circuit-open"], 4)
        self.assertEqual(client.breaker, "open")
        self.assertEqual(client.health()["breaker"], "open")
        self.assertRaises(CircuitOpenError, client.send, note(9))
        self.assertEqual(client.connections, [])  # retired for a fresh start
        self.advance(299.0, step=60.0)
        self.assertRaises(CircuitOpenError, client.send, note(9))
        self.server.wrong_environment_keys.clear()
        self.advance(1.0)
        self.assertEqual(client.breaker, "half-open")
        probe = self.send(client, note(10))
        follower = self.send(client, note(11))
        self.clock.advance(0)
        self.pump()
        self.assertTrue(self.result_of(probe).accepted)
        self.assertTrue(self.result_of(follower).accepted)
        self.assertEqual(client.breaker, "closed")

    def test_retiring_unused_connections_is_no_failure(self) -> None:
        client = self.make_client(min_connections=2)
        self.server.wrong_environment_keys.add(KEY_ID)
        self.send(client, note(0))
        self.pump()
        self.assertEqual(client.breaker, "open")
        self.assertEqual(client.connections, [])
        self.assertEqual(client.counters.connection_failures, 0)  # the unused one too
        self.assertEqual(client._failures, 0)

    def test_probe_that_fails_opens_again(self) -> None:
        client = self.make_client(circuit_reset=300.0)
        self.server.wrong_environment_keys.add(KEY_ID)
        self.send(client, note(0))
        self.pump()
        self.advance(300.0)
        self.assertEqual(client.breaker, "half-open")
        probe = self.send(client, note(1))
        follower = self.send(client, note(2))
        self.clock.advance(0)
        self.pump()
        self.assertEqual(self.result_of(probe).local, None)
        self.assertEqual(self.result_of(follower).local, "circuit-open")
        self.assertEqual(client.breaker, "open")
        self.assertEqual(self.server.stats.statuses[403], 2)  # the follower never went out

    def test_in_flight_retries_fail_fast_when_the_circuit_opens(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        self.send(client, note(0))
        self.advance(1.0)
        self.server.throttled_tokens[token(1).hex()] = 1
        throttled = self.send(client, note(1))
        self.advance(1.0)  # 429: waits 5 s
        self.server.fail_next(1, 403, "Forbidden")
        forbidden = self.send(client, note(2))
        self.advance(1.0)
        self.assertEqual(self.result_of(forbidden).reason, "Forbidden")
        result = self.result_of(throttled)
        self.assertEqual(
            (result.outcome, result.local, result.reason),
            (Outcome.REJECTED, "circuit-open", "Forbidden"),
        )

    def test_goaway_with_a_credential_reason_opens_the_circuit(self) -> None:
        client = self.make_client()
        self.send(client, note(0))
        self.pump()
        self.server.goaway("InvalidProviderToken")
        self.pump()
        self.assertEqual((client.breaker, client.breaker_reason), ("open", "InvalidProviderToken"))


# --- TLS and ALPN -----------------------------------------------------------------------------


class ALPNTests(ClientTestCase):
    def test_h2_negotiated_is_ready(self) -> None:
        endpoint = ALPNEndpoint(b"h2")
        client = HTTP2Client(
            self.clock, endpoint, bundle_id=BUNDLE, token=ProviderToken(KEY, KEY_ID, TEAM_ID)
        )
        client.start()
        [proto] = endpoint.protocols
        self.assertEqual(proto.state, 1)
        self.clock.advance(0)
        transport = proto.transport
        assert isinstance(transport, NegotiatedTransport)
        self.assertTrue(transport.value().startswith(b"PRI * HTTP/2.0"))

    def test_waits_for_the_handshake(self) -> None:
        client = self.make_client()
        proto = client._build_protocol()
        proto.makeConnection(NegotiatedTransport(b"h2"))
        self.assertEqual(proto.state, 0)
        proto.handshakeCompleted()
        self.assertEqual(proto.state, 1)

    def test_a_handshake_that_never_ends_is_dropped(self) -> None:
        endpoint = ALPNEndpoint(b"h2", complete=False)
        client = HTTP2Client(
            self.clock,
            endpoint,
            bundle_id=BUNDLE,
            connect_timeout=10.0,
            backoff=Backoff(initial=1.0, jitter=0.0),
        )
        client.start()
        [proto] = endpoint.protocols
        transport = proto.transport
        assert isinstance(transport, NegotiatedTransport)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionRefusedError("aborted")))
        self.assertEqual(client.counters.connection_failures, 1)
        self.clock.advance(0)
        self.clock.advance(0.99)
        self.assertEqual(len(endpoint.protocols), 1)
        self.clock.advance(0.01)  # backoff, then a new attempt
        self.assertEqual(len(endpoint.protocols), 2)
        stopped = client.stop()
        endpoint.protocols[1].connectionLost(Failure(ConnectionRefusedError("closed")))
        self.successResultOf(stopped)
        self.assertNoDelayedCalls()

    def test_no_h2_is_a_tls_failure_and_three_reject_the_queue(self) -> None:
        endpoint = ALPNEndpoint(b"http/1.1")
        client = HTTP2Client(
            self.clock,
            endpoint,
            bundle_id=BUNDLE,
            token=ProviderToken(KEY, KEY_ID, TEAM_ID),
            backoff=Backoff(initial=1.0, jitter=0.0),
        )
        self.clients.append(client)
        client.start()
        ds = [client.send(note(i)) for i in range(3)]
        for _ in range(10):
            self.clock.advance(1.0)
            self.check()
        results = [self.successResultOf(d) for d in ds]
        self.assertEqual({(r.outcome, r.local) for r in results}, {(Outcome.REJECTED, "tls")})
        self.assertIn("ALPN", results[0].reason or "")
        self.assertEqual(len(endpoint.protocols), 3)
        self.assertEqual(client.counters.connection_failures, 3)
        # Given up: no reconnect loop until there is something to send.
        self.clock.advance(100.0)
        self.assertEqual(len(endpoint.protocols), 3)
        client.send(note(5))
        self.clock.advance(0)
        self.assertEqual(len(endpoint.protocols), 4)


# --- stop -------------------------------------------------------------------------------------


class StopTests(ClientTestCase):
    def test_stop_drains_then_closes_and_leaves_no_delayed_calls(self) -> None:
        self.server.latency = 1.0
        client = self.make_client(min_connections=2)
        ds = [self.send(client, note(i)) for i in range(10)]
        self.pump()
        stopped = client.stop()
        self.assertRaises(ClientStoppedError, client.send, note(99))
        self.pump()
        self.assertNoResult(stopped)
        self.advance(1.0)
        self.advance(1.0)
        self.successResultOf(stopped)
        self.assertTrue(all(self.result_of(d).accepted for d in ds))
        self.assertEqual(client.connections, [])
        self.assertEqual(self.server.connections, [])
        self.assertNoDelayedCalls()

    def test_stop_timeout_finishes_what_is_left(self) -> None:
        client = self.make_client(deadline=60.0)
        self.send(client, note(0))
        self.pump()
        self.server.never_answer_tokens.add(token(1).hex())
        self.server.throttled_tokens[token(2).hex()] = None
        stuck = self.send(client, note(1))
        delayed = self.send(client, note(2))
        self.pump()
        stopped = client.stop(timeout=2.0)
        self.advance(2.0)
        self.successResultOf(stopped)
        stuck_result, delayed_result = self.result_of(stuck), self.result_of(delayed)
        self.assertEqual((stuck_result.outcome, stuck_result.reason), (Outcome.UNKNOWN, "stopped"))
        self.assertEqual(
            (delayed_result.outcome, delayed_result.local), (Outcome.REJECTED, "stopped")
        )
        self.assertEqual(self.server.stats.streams_reset, 1)  # the stuck stream was reset
        self.assertNoDelayedCalls()

    def test_stop_before_start_and_twice(self) -> None:
        client = HTTP2Client(self.clock, self.endpoint, bundle_id=BUNDLE)
        self.successResultOf(client.stop())
        self.successResultOf(client.stop())
        self.assertNoDelayedCalls()

    def test_stop_cancels_a_pending_connect(self) -> None:
        cancelled: list[object] = []
        self.endpoint.hang = Deferred(cancelled.append)
        client = self.make_client()
        self.assertEqual(client.health()["connecting"], 1)
        stopped = client.stop()
        self.successResultOf(stopped)
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(client.counters.connection_failures, 0)  # a cancel is no failure
        self.assertNoDelayedCalls()

    def test_stop_while_reconnecting(self) -> None:
        self.endpoint.refuse = 100
        client = self.make_client()
        self.send(client, note(1))
        self.advance(3.0)
        stopped = client.stop(timeout=1.0)
        self.advance(1.0)
        self.successResultOf(stopped)
        self.assertEqual(self.results[0].local, "stopped")
        self.assertNoDelayedCalls()


# --- send_many --------------------------------------------------------------------------------


class SendManyTests(ClientTestCase):
    def test_streams_within_the_queue_bound(self) -> None:
        self.server.latency = 0.5
        self.server.bad_tokens.add(token(7).hex())
        client = self.make_client(max_queue=20)
        pulled = 0
        peak = 0

        def source() -> Iterator[Notification]:
            nonlocal pulled, peak
            for i in range(300):
                pulled += 1
                peak = max(peak, pulled - len(results))
                if i == 13:
                    yield Notification.create(
                        token(i), {"aps": {"alert": "x"}}, push_type="background"
                    )
                    continue
                yield note(i)

        results: list[Result] = []
        done = client.send_many(source(), results.append)
        self.advance(30.0, step=0.5)
        counters = self.successResultOf(done)
        self.assertEqual(len(results), 300)
        self.assertLessEqual(peak, 21)
        self.assertEqual((counters.submitted, counters.accepted, counters.rejected), (300, 298, 2))
        self.assertEqual(counters.rejected_by_reason, {"BadDeviceToken": 1, "invalid": 1})
        self.assertEqual(client.counters.submitted, 299)  # the invalid one never entered
        self.assertEqual(client._feeders, [])

    def test_no_deferred_per_notification(self) -> None:
        client = self.make_client()
        made: list[Any] = []
        original = Deferred.__init__

        def counting(self: Deferred[Any], *args: Any, **kwargs: Any) -> None:
            made.append(1)
            original(self, *args, **kwargs)

        Deferred.__init__ = counting  # type: ignore[method-assign]
        try:
            done = client.send_many((note(i) for i in range(100)), None)
            self.pump()
        finally:
            Deferred.__init__ = original  # type: ignore[method-assign]
        self.assertEqual(self.successResultOf(done).accepted, 100)
        self.assertLess(len(made), 5)

    def test_circuit_open_and_stopped_are_local_failures(self) -> None:
        client = self.make_client()
        self.server.wrong_environment_keys.add(KEY_ID)
        self.send(client, note(0))
        self.pump()
        results: list[Result] = []
        counters = self.successResultOf(client.send_many([note(1), note(2)], results.append))
        self.assertEqual({r.local for r in results}, {"circuit-open"})
        self.assertEqual(counters.rejected, 2)
        client.stop()
        results.clear()
        self.successResultOf(client.send_many([note(3)], results.append))
        self.assertEqual(results[0].local, "stopped")

    def test_empty(self) -> None:
        client = self.make_client()
        counters = self.successResultOf(client.send_many([], None))
        self.assertEqual(counters.submitted, 0)


# --- logs -------------------------------------------------------------------------------------


class LogTests(ClientTestCase):
    def test_no_full_token_or_jwt_in_logs(self) -> None:
        logged: list[str] = []

        def observer(event: LogEvent) -> None:
            logged.append(formatEvent(event) or "")
            logged.append(repr(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.server.token_max_age = 60
        client = self.make_client(deadline=5.0)
        self.send(client, note(0))
        self.pump()
        self.clock.advance(120)
        self.server.never_answer_tokens.add(token(2).hex())
        for i in range(1, 4):
            self.send(client, note(i))
        self.advance(6.0)
        self.server.goaway()
        self.server.drop_connections()
        self.pump()
        text = "\n".join(logged)
        self.assertGreater(len(logged), 4)
        for i in range(4):
            self.assertNotIn(token(i).hex(), text)
        self.assertNotIn("eyJ", text)  # a JWT's base64url JSON header
        self.assertNotIn("bearer", text.lower())


class UnencodableItemTests(ClientTestCase):
    def test_one_unencodable_item_never_costs_the_others(self) -> None:
        # Notification() skips create()'s checks, as a caller (or an old spool row) might:
        # its topic can never be encoded. Before the fix, UnicodeEncodeError escaped
        # _flush and the notifications behind it in the queue were never sent.
        client = self.make_client()
        good = [self.send(client, note(i)) for i in range(1, 26)]
        for topic in ("bad\ud800", "a\r\nb"):
            base = note(99)
            bad = Notification(base.token, base.payload, topic=topic)
            bad_d = self.send(client, bad)
            good += [self.send(client, note(i)) for i in range(100, 125)]
            self.pump()
            result = self.result_of(bad_d)
            self.assertEqual((result.outcome, result.local), (Outcome.REJECTED, "invalid"))
            self.assertIn("could not be encoded", result.reason or "")
        self.assertEqual({self.result_of(d).outcome for d in good}, {Outcome.ACCEPTED})
        self.assertEqual(len(self.server.accepted), 75)
        self.check()


class IdleTimeoutTests(ClientTestCase):
    """Issue 9 item 20: after a burst the pool shrinks back to ``min_connections``."""

    def burst(self, client: HTTP2Client, n: int = 40) -> None:
        for i in range(n):
            self.send(client, note(i))
        self.advance(10.0, step=0.5)

    def test_closes_exactly_the_idle_connections_above_the_minimum(self) -> None:
        self.server.set_max_streams(5)
        self.server.latency = 1.0
        client = self.make_client(min_connections=1, max_connections=3, idle_timeout=300.0)
        self.burst(client)
        self.assertEqual(len(self.results), 40)
        self.assertEqual(len(client.connections), 3)
        # Each connection's idle time counts from its own last request.
        idle_since = sorted(c.last_stream_at for c in client.connections)
        self.advance(idle_since[0] + 299.0 - self.clock.seconds())
        self.assertEqual(len(client.connections), 3)  # none idle long enough yet
        self.advance(idle_since[-1] + 301.0 - self.clock.seconds())
        self.assertEqual(len(client.connections), 1)
        self.assertEqual(client.counters.connection_failures, 0)
        self.assertEqual(self.server.stats.protocol_errors, 0)
        # The one kept still works, and nothing more is closed however long it idles.
        self.advance(3600.0, step=600.0)
        self.assertEqual(len(client.connections), 1)
        self.send(client, note(99))
        self.advance(2.0)
        self.assertTrue(self.results[-1].accepted)
        self.assertEqual(client.counters.reconnects, 0)
        self.stop(client)
        self.assertNoDelayedCalls()

    def test_never_closes_a_connection_with_a_request_in_flight(self) -> None:
        self.server.set_max_streams(5)
        self.server.latency = 1.0
        self.server.never_answer_tokens = {token(39).hex()}
        client = self.make_client(
            min_connections=0, max_connections=3, idle_timeout=300.0, deadline=3600.0
        )
        self.burst(client)
        self.assertEqual(len(self.results), 39)
        [busy] = [c for c in client.connections if c.streams]
        self.assertEqual(len(client.connections), 3)
        self.advance(900.0, step=60.0)
        # Above the minimum (0), but in flight: kept; the two idle ones are closed.
        self.assertEqual(client.connections, [busy])
        self.assertEqual(len(busy.streams), 1)
        # Once its request has ended (deadline), it is idle and closed in its turn.
        self.advance(2700.0 + 301.0, step=100.0)
        self.assertEqual(self.results[-1].reason, "timeout")
        self.assertEqual(client.connections, [])
        self.assertEqual(client.counters.connection_failures, 0)

    def test_none_keeps_every_connection(self) -> None:
        self.server.set_max_streams(5)
        self.server.latency = 1.0
        client = self.make_client(min_connections=1, max_connections=3, idle_timeout=None)
        self.burst(client)
        self.advance(3600.0, step=600.0)
        self.assertEqual(len(client.connections), 3)

    def test_idle_timeout_must_be_positive(self) -> None:
        self.assertRaises(ValueError, HTTP2Client, self.clock, self.endpoint, idle_timeout=0)
