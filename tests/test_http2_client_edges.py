"""Edges of the HTTP/2 client that mutation testing found untested (issue 13): the fail-fast
branches while the circuit is open for a notification that may already have been delivered,
and the deadline timer re-armed for requests sent at different times."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from txapns.core.http2.frames import ErrorCode, rst_stream_frame
from txapns.core.result import Outcome, Result
from txapns.http2 import APNsHTTP2Protocol, HTTP2Client

from .helpers_http2 import ClientTestCase, goaway, note, token


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
        sent_at = {1: 0.0, 2: 3.0, 3: 4.0}
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
