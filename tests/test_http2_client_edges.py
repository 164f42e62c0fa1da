"""Edges of the HTTP/2 client that mutation testing found untested (issue 13): the fail-fast
branches while the circuit is open for a notification that may already have been delivered,
and the deadline timer re-armed for requests sent at different times."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent

from txapns.core.http2.frames import ErrorCode, rst_stream_frame
from txapns.core.result import Outcome, Result
from txapns.http2 import APNsHTTP2Protocol, HTTP2Client

from .helpers_http2 import DATA, ClientTestCase, frame, goaway, note, token


class CircuitOpenMaybeDeliveredTests(ClientTestCase):
    """A notification re-sent after an unknown outcome may have reached APNs already. If the
    circuit opens while its re-send is in flight and the re-send then cannot finish (a 5xx
    would be retried, a GOAWAY says it was not processed), it ends *unknown*, never rejected:
    rejected would tell the caller it was not delivered."""

    def resent_while_the_circuit_opens(
        self, answer: tuple[int, str] | None = None
    ) -> tuple[HTTP2Client, APNsHTTP2Protocol, Deferred[Result], int]:
        """note(1) re-sent after a reset (maybe delivered), ``answer`` to the re-send due in
        2 s; a 403 Forbidden for note(2) opens the circuit at 0.5 s."""
        self.server.latency = 1.0
        client = self.make_client()
        self.send(client, note(0))
        self.advance(1.0)  # the ramp: one stream until a token was accepted
        d = self.send(client, note(1))
        self.pump()
        [conn] = client.connections
        [first] = conn.streams
        self.server.latency = 2.0
        if answer is not None:
            self.server.token_responses[token(1).hex()] = answer
        conn.dataReceived(rst_stream_frame(first, ErrorCode.INTERNAL_ERROR))
        self.pump()
        [resent] = conn.streams
        self.assertGreater(resent, first)
        self.assertEqual(client.counters.resent_unknown, 1)
        self.server.latency = 0.5
        self.server.token_responses[token(2).hex()] = (403, "Forbidden")
        forbidden = self.send(client, note(2))
        self.advance(0.5)
        self.assertEqual(self.result_of(forbidden).reason, "Forbidden")
        self.assertEqual(client.breaker, "open")
        self.assertNoResult(d)
        return client, conn, d, resent

    def assert_unknown_circuit_open(self, d: Deferred[Result]) -> None:
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.local, result.reason, result.attempts),
            (Outcome.UNKNOWN, "circuit-open", "Forbidden", 2),
        )

    def test_a_5xx_for_the_resend_ends_unknown(self) -> None:
        client, _, d, _ = self.resent_while_the_circuit_opens((503, "ServiceUnavailable"))
        self.advance(1.5)  # 503: would be retried, but the circuit is open
        self.assert_unknown_circuit_open(d)
        self.assertEqual(client.counters.unknown_by_reason["circuit-open"], 1)

    def test_above_a_goaway_the_resend_ends_unknown(self) -> None:
        client, conn, d, resent = self.resent_while_the_circuit_opens()
        self.assertIn(resent, conn.streams)
        conn.dataReceived(goaway(resent - 2, 0, b'{"reason":"Shutdown"}'))
        self.pump()
        self.assert_unknown_circuit_open(d)
        self.assertEqual(client.counters.unknown_by_reason["circuit-open"], 1)

    def test_never_sent_ones_are_still_rejected(self) -> None:
        # The counterpart: a first send refused above a GOAWAY after the circuit opened was
        # never processed anywhere, so rejected is the truth.
        self.server.latency = 1.0
        client = self.make_client()
        self.send(client, note(0))
        self.advance(1.0)
        self.server.latency = 2.0
        d = self.send(client, note(1))
        self.pump()
        [conn] = client.connections
        [sid] = conn.streams
        self.server.latency = 0.5
        self.server.token_responses[token(2).hex()] = (403, "Forbidden")
        self.send(client, note(2))
        self.advance(0.5)
        self.assertEqual(client.breaker, "open")
        conn.dataReceived(goaway(sid - 2, 0))
        self.pump()
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.local, result.attempts), (Outcome.REJECTED, "circuit-open", 1)
        )


class StaggeredDeadlineTests(ClientTestCase):
    def test_each_request_times_out_at_its_own_deadline(self) -> None:
        """One timer per connection, re-armed for the oldest request still open: each request
        times out ``deadline`` seconds after it was *sent*, not after the timer last fired."""
        client = self.make_client(deadline=5.0, ping_interval=0)
        self.send(client, note(0))
        self.pump()
        self.server.never_answer_tokens.update(token(i).hex() for i in (1, 2, 3))
        sent_at = {1: 0.0, 2: 3.0, 3: 3.3}  # after 2, the timer is re-armed for 0.3 s
        start = self.clock.seconds()
        ds: dict[int, Deferred[Result]] = {}
        for i, at in sent_at.items():
            self.advance(start + at - self.clock.seconds())
            ds[i] = self.send(client, note(i))
            self.pump()
        for i, at in sent_at.items():
            self.advance(start + at + 4.9 - self.clock.seconds())
            self.assertNoResult(ds[i])
            self.advance(0.2)
            result = self.result_of(ds[i])
            self.assertEqual((result.outcome, result.reason), (Outcome.UNKNOWN, "timeout"))
        self.assertEqual(self.server.stats.streams_reset, 3)


class SilentTimeoutTests(ClientTestCase):
    """Timeouts with no answer in between count across the deadline timer's runs."""

    def test_timeouts_at_separate_checks_add_up(self) -> None:
        client = self.make_client(deadline=5.0, ping_interval=0, ping_timeout=100.0)
        self.send(client, note(0))
        self.pump()
        self.server.blackhole = True
        ds = []
        for i in range(1, 4):  # sent at 0, 1, 2 s: they time out at 5, 6, 7 s
            ds.append(self.send(client, note(i)))
            self.pump()
            self.advance(1.0)
        self.advance(1.9)  # 4.9 s: nothing yet
        self.assertEqual([c.number for c in client.connections], [1])
        self.advance(0.2)
        self.assertEqual(self.result_of(ds[0]).reason, "timeout")
        self.assertEqual(client.connections[0].silent_timeouts, 1)
        self.advance(1.0)
        self.assertEqual(client.connections[0].silent_timeouts, 2)
        self.advance(1.0)  # the third in a row: the connection is replaced
        self.assertEqual(self.result_of(ds[2]).reason, "timeout")
        self.assertEqual([c.number for c in client.connections], [2])

    def test_a_timeout_sends_a_ping(self) -> None:
        # A request timed out on a connection that answers otherwise: one PING asks whether
        # it is still alive (the server answers it; nothing else happens).
        client = self.make_client(deadline=5.0, ping_interval=0)
        self.send(client, note(0))
        self.pump()
        self.server.never_answer_tokens.add(token(1).hex())
        d = self.send(client, note(1))
        self.pump()
        pings = self.server.stats.pings
        self.advance(5.1)
        self.assertEqual(self.result_of(d).reason, "timeout")
        self.assertEqual(self.server.stats.pings, pings + 1)
        self.assertEqual([c.number for c in client.connections], [1])


class ConnectionLogTests(ClientTestCase):
    """What an operator reads about a connection's GOAWAY and its timeouts, word for word."""

    def test_goaway_log_and_retire_reason(self) -> None:
        for debug, reason, retire in (
            (b"", "no reason", "GOAWAY NO_ERROR"),
            (b'{"reason":"Shutdown"}', "Shutdown", "GOAWAY Shutdown"),
        ):
            self.server.latency = 1.0
            client = self.make_client()
            self.send(client, note(0))
            self.pump()
            [conn] = client.connections
            [sid] = conn.streams
            with capturedLogs() as events:
                conn.dataReceived(goaway(sid, 0, debug))
            self.assertEqual(
                [formatEvent(e) for e in events if "GOAWAY" in e["log_format"]],
                [
                    f"{client.name}: connection 1: GOAWAY NO_ERROR last-stream-id {sid} "
                    f"({reason}); 0 unprocessed requests re-sent, 1 still open"
                ],
            )
            self.assertEqual(conn.retire_reason, retire)
            self.advance(1.0)
            client.stop()
            self.pump()

    def test_timeout_logs(self) -> None:
        client = self.make_client(deadline=5.0, ping_interval=0, ping_timeout=100.0)
        self.send(client, note(0))
        self.pump()
        self.server.blackhole = True
        for i in range(1, 4):
            self.send(client, note(i))
        self.pump()
        with capturedLogs() as events:
            self.advance(5.0)
        texts = [formatEvent(e) for e in events]
        self.assertIn(
            f"{client.name}: connection 1: 3 requests passed their 5.0 s deadline; reset", texts
        )
        self.assertIn(
            f"{client.name}: connection 1: 3 timeouts in a row with no answer; replacing it", texts
        )

    def test_protocol_error_log(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        self.send(client, note(0))
        self.pump()
        [conn] = client.connections
        with capturedLogs() as events:
            conn.dataReceived(frame(DATA, 0, 0, b"x"))  # DATA on stream 0
        self.assertIn(
            f"{client.name}: connection 1: the server broke HTTP/2 "
            "(PROTOCOL_ERROR: DATA on stream 0); closing",
            [formatEvent(e) for e in events],
        )
