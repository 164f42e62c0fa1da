"""Edges of the binary delivery state machine that mutation testing found untested.

Each test here failed on a hand-made mutant of :mod:`txapns.core.binary_channel` that the rest
of the suite let through (issue 13): an error response naming the identifier just past the
window, and the ``maybe_delivered`` mark that decides unknown versus rejected.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.binary import encode_frame
from txapns.core.binary_channel import BinaryChannel, ChannelConfig, Pending, UnknownPolicy
from txapns.core.counters import Counters
from txapns.core.errors import QueueFullError
from txapns.core.notification import Notification
from txapns.core.result import Outcome

from .helpers import assert_invalid
from .helpers_binary import Harness, error, note


class ErrorNamingTheNextIdentifierTests(SynchronousTestCase):
    """An error response naming the identifier after the last one written names nothing in
    flight: the window's fate is unknown. (A lookup bound off by one would take it for the
    entry after the last and crash on an empty window.)"""

    def assert_unattributed(self, h: Harness, written: list[int]) -> None:
        self.assertEqual(h.results, {})  # RESEND: unknown, so re-sent, nothing finished
        self.assertEqual(h.channel.counters.resent_unknown, len(written))
        self.assertEqual(len(h.channel.window), 0)
        self.assertEqual([p.handle for p in h.channel.queue], written)
        self.assertTrue(all(p.maybe_delivered for p in h.channel.queue))
        h.lose()  # after an error response the close resolves nothing more
        self.assertEqual(h.results, {})
        self.assertEqual([i for _, i in h.connect_and_write()], written)
        h.check()

    def test_next_identifier(self) -> None:
        h = Harness()
        h.submit(0, 1, 2)
        self.assertEqual([ident for ident, _ in h.connect_and_write()], [1, 2, 3])
        h.feed(error(8, 4))
        self.assertIsNotNone(h.channel.error)
        self.assert_unattributed(h, [0, 1, 2])

    def test_next_identifier_across_the_wrap(self) -> None:
        h = Harness()
        h.channel.connection_made()
        h.channel._next_id = 0xFFFFFFFE
        h.submit(0, 1)
        self.assertEqual([ident for ident, _ in h.write()], [0xFFFFFFFE, 0xFFFFFFFF])
        h.feed(error(8, 1))  # the identifier after 0xFFFFFFFF is 1 (0 is never used)
        self.assert_unattributed(h, [0, 1])

    def test_fail_policy_finishes_them_unknown(self) -> None:
        h = Harness(unknown_policy=UnknownPolicy.FAIL)
        h.submit(0, 1)
        h.connect_and_write()
        h.feed(error(8, 3))
        self.assertEqual([h.outcome(i) for i in (0, 1)], [Outcome.UNKNOWN] * 2)
        self.assertIn("identifier 3", h.results[0][0].reason or "")
        self.assertEqual(h.channel.counters.unknown_by_reason["unattributed-error"], 2)
        h.check()


class MaybeDeliveredTests(SynchronousTestCase):
    """A notification in flight when a connection closed silently may have reached APNs:
    from then on it can only end accepted or unknown, never rejected as never sent."""

    def test_silent_close_marks_the_window_and_only_the_window(self) -> None:
        h = Harness()
        h.submit(0, 1)
        h.connect_and_write()
        h.submit(2)  # queued, never written
        h.lose()
        self.assertEqual(
            [(p.handle, p.maybe_delivered) for p in h.channel.queue],
            [(0, True), (1, True), (2, False)],
        )

    def test_stopping_after_a_silent_close_finishes_resent_ones_unknown(self) -> None:
        h = Harness()
        h.submit(0, 1)
        h.connect_and_write()
        h.submit(2)
        h.lose()  # 0 and 1 go back to the queue for a re-send; no connection now
        h.record(h.channel.fail_all("client stopped", "stopped", h.now))
        self.assertEqual(
            [(h.outcome(i), h.results[i][0].local) for i in range(3)],
            # The label is local for every outcome (one rule: counter_key), unknown ones too.
            [
                (Outcome.UNKNOWN, "stopped"),
                (Outcome.UNKNOWN, "stopped"),
                (Outcome.REJECTED, "stopped"),
            ],
        )
        self.assertEqual(h.channel.counters.unknown_by_reason["stopped"], 2)
        h.check()

    def test_the_mark_survives_a_later_error_response(self) -> None:
        # Re-sent after a silent close, then replayed after another's rejection: still maybe
        # delivered by the first connection.
        h = Harness()
        h.submit(0, 1)
        h.connect_and_write()
        h.lose()
        h.connect_and_write()
        h.feed(error(8, 1))  # rejects 0; 1 is replayed
        self.assertEqual(h.outcome(0), Outcome.REJECTED)
        self.assertEqual([(p.handle, p.maybe_delivered) for p in h.channel.queue], [(1, True)])
        h.record(h.channel.fail_all("client stopped", "stopped", h.now))
        self.assertEqual(h.outcome(1), Outcome.UNKNOWN)
        h.check()


class MutationSurvivorTests(SynchronousTestCase):
    """Behaviour pinned after a mutmut run of :mod:`txapns.core.binary_channel`."""

    def test_queue_room(self) -> None:
        h = Harness(max_queue=5)
        h.submit(0, 1)
        self.assertEqual(h.channel.queue_room(), 3)

    def test_confirming_part_of_the_window_keeps_identifiers_attributed(self) -> None:
        h = Harness(quiet=1.0)
        h.submit(0, 1)
        h.connect_and_write()
        h.now = 0.5
        h.submit(2, 3)
        self.assertEqual(h.write(), [(3, 2), (4, 3)])
        h.now = 1.0
        h.record(h.channel.confirm_quiet(h.now))  # 0 and 1; 2 and 3 stay in flight
        self.assertEqual(sorted(h.results), [0, 1])
        h.feed(error(8, 4))
        self.assertEqual((h.outcome(2), h.outcome(3)), (Outcome.ACCEPTED, Outcome.REJECTED))
        h.check()

    def test_identifier_zero_after_the_wrap_names_nothing(self) -> None:
        # Across the wrap 0 sits between 0xFFFFFFFF and 1 by arithmetic, but is never written.
        h = Harness(unknown_policy=UnknownPolicy.FAIL)
        h.channel.connection_made()
        h.channel._next_id = 0xFFFFFFFE
        h.submit(0, 1, 2)
        self.assertEqual([ident for ident, _ in h.write()], [0xFFFFFFFE, 0xFFFFFFFF, 1])
        h.feed(error(8, 0))
        # Nothing carries identifier 0, so nothing is blamed: the gateway cannot name the bad
        # notification, and the spoiled window is isolated with all three still held.
        self.assertEqual(h.results, {})
        self.assertTrue(h.channel.isolating)
        self.assertEqual(h.channel.pending(), 3)

    def sentinel_then_more(self, h: Harness) -> None:
        """0 and 1 written, then a sentinel (identifier 3), then 2 and 3 (4 and 5)."""
        h.submit(0, 1)
        h.connect_and_write()
        self.assertNotEqual(h.channel.take_sentinel(h.now), b"")
        h.submit(2, 3)
        self.assertEqual(h.write(), [(4, 2), (5, 3)])
        self.assertEqual(h.channel.pending(), 4)
        self.assertEqual(h.channel.window_bytes, sum(p.size for p in h.channel.window))

    def test_error_after_a_sentinel_in_the_middle(self) -> None:
        h = Harness()
        self.sentinel_then_more(h)
        h.feed(error(8, 5))
        self.assertEqual([h.outcome(i) for i in range(3)], [Outcome.ACCEPTED] * 3)
        self.assertEqual(h.outcome(3), Outcome.REJECTED)
        self.assertEqual((h.channel.pending(), h.channel.window_bytes), (0, 0))
        h.check()

    def test_silent_close_after_a_sentinel_in_the_middle(self) -> None:
        h = Harness(unknown_policy=UnknownPolicy.FAIL)
        self.sentinel_then_more(h)
        h.lose()
        self.assertEqual([h.outcome(i) for i in range(4)], [Outcome.UNKNOWN] * 4)
        self.assertEqual((h.channel.pending(), h.channel.window_bytes), (0, 0))
        h.check()

    def test_fail_all_after_a_sentinel_in_the_middle(self) -> None:
        h = Harness()
        self.sentinel_then_more(h)
        h.submit(4)
        h.record(h.channel.fail_all("client stopped", "stopped", h.now))
        self.assertEqual([h.outcome(i) for i in range(4)], [Outcome.UNKNOWN] * 4)
        self.assertEqual(h.outcome(4), Outcome.REJECTED)
        self.assertEqual(h.channel.counters.rejected_by_reason, {"stopped": 1})
        self.assertEqual(h.channel.counters.unknown_by_reason, {"stopped": 4})
        self.assertEqual((h.channel.pending(), h.channel.window_bytes), (0, 0))
        h.check()

    def test_a_write_after_a_sentinel_continues_the_identifiers(self) -> None:
        h = Harness()
        h.submit(0)
        h.connect_and_write()
        h.channel.take_sentinel(h.now)
        h.submit(1)
        self.assertEqual(h.write(), [(3, 1)])

    def test_no_sentinel_after_an_error_response(self) -> None:
        h = Harness()
        h.submit(0, 1)
        h.connect_and_write()
        h.feed(error(10, 1))  # shutdown: 0 delivered, 1 waits for the next connection
        self.assertIsNone(h.channel.broken)
        self.assertEqual(h.channel.take_sentinel(h.now), b"")

    def test_transient_statuses_counted_and_the_last_status_kept(self) -> None:
        h = Harness(max_attempts=3)
        h.submit(0)
        for status in (1, 1):
            h.connect_and_write()
            h.feed(error(status, 1))
            h.lose()
        self.assertEqual(h.channel.counters.retried, 2)
        h.connect_and_write()
        h.feed(error(255, 1))
        [result] = h.results[0]
        self.assertEqual((result.outcome, result.status), (Outcome.REJECTED, 255))
        # As over HTTP/2: the status's name, local "attempts", the count in attempts.
        self.assertEqual((result.reason, result.local, result.attempts), ("Unknown", "attempts", 3))
        self.assertEqual(h.channel.counters.rejected_by_reason, {"Unknown": 1})
        h.check()

    def test_a_permanent_status_is_counted_by_name(self) -> None:
        h = Harness()
        h.submit(0)
        h.connect_and_write()
        h.feed(error(8, 1))
        self.assertEqual(h.channel.counters.rejected_by_reason, {"InvalidToken": 1})

    def test_each_silent_close_uses_one_attempt(self) -> None:
        h = Harness(max_attempts=3)
        h.submit(0)
        for _ in range(2):
            h.connect_and_write()
            h.lose()
            self.assertEqual(h.results, {})
            self.assertEqual(h.channel.window_bytes, 0)
        h.connect_and_write()
        h.lose()
        [result] = h.results[0]
        self.assertEqual((result.outcome, result.attempts), (Outcome.UNKNOWN, 3))
        h.check()


def sized(i: int, frame_size: int) -> Notification:
    """Notification ``i`` whose command-2 frame is exactly ``frame_size`` bytes."""
    base = len(encode_frame(1, i.to_bytes(32, "big"), b'{"p":""}'))
    return Notification.create(i.to_bytes(32, "big"), {"p": "x" * (frame_size - base)})


class ConfigAndStateTests(SynchronousTestCase):
    def test_config_bounds_are_inclusive(self) -> None:
        ChannelConfig(max_window=1, max_queue=1, max_window_bytes=4096, max_attempts=1, quiet=0.001)
        bounds = "window and queue bounds must be positive (bytes ≥ 4096)"
        assert_invalid(
            self,
            ChannelConfig,
            [
                ({"max_window": 0}, bounds),
                ({"max_queue": 0}, bounds),
                ({"max_window_bytes": 4095}, bounds),
                ({"max_attempts": 0}, "max_attempts must be at least 1"),
                ({"quiet": 0.0}, "quiet must be positive"),
                ({"quiet": -1.0}, "quiet must be positive"),
            ],
        )

    def test_fresh_state(self) -> None:
        p = Pending(note(1), "h", 5.0)
        self.assertEqual(
            (p.handle, p.submitted_at, p.sent_at, p.size, p.writes, p.tries),
            ("h", 5.0, 0.0, 0, 0, 0),
        )
        self.assertIs(p.maybe_delivered, False)
        self.assertIs(p.sentinel, False)
        counters = Counters()
        ch = BinaryChannel(counters=counters)
        self.assertIs(ch.counters, counters)
        self.assertEqual(ch.config, ChannelConfig())
        self.assertEqual((ch.window_bytes, ch.accepted_here, ch._sentinels), (0, 0, 0))
        self.assertEqual((ch._next_id, ch._first_id), (1, 1))
        self.assertIs(ch.connected, False)
        self.assertIsNone(ch.error)
        self.assertIsNone(ch.broken)
        self.assertFalse(ch.writable())
        self.assertEqual(ch.take_frames(0.0), b"")
        self.assertIsNot(BinaryChannel().counters, BinaryChannel().counters)

    def test_a_new_connection_starts_afresh(self) -> None:
        h = Harness(quiet=1.0)
        h.submit(0, 1)
        h.connect_and_write()
        h.now = 1.0
        h.record(h.channel.confirm_quiet(h.now))
        self.assertEqual(h.channel.accepted_here, 2)
        h.lose()
        self.assertIs(h.channel.connected, False)
        h.submit(2, 3)
        h.channel.connection_made()
        self.assertEqual((h.channel.accepted_here, h.channel._first_id), (0, 1))
        self.assertEqual(h.write(), [(1, 2), (2, 3)])
        h.feed(error(8, 1))
        self.assertEqual(h.outcome(2), Outcome.REJECTED)
        self.assertEqual([p.handle for p in h.channel.queue], [3])


class TakeFramesTests(SynchronousTestCase):
    def test_byte_bound_of_one_write(self) -> None:
        h = Harness()
        for i in range(4):
            h.channel.submit(sized(i, 100), i, 0.0)
        h.channel.connection_made()
        self.assertEqual(len(h.channel.take_frames(0.0, max_bytes=200)), 200)
        self.assertEqual(len(h.channel.take_frames(0.0, max_bytes=101)), 200)
        self.assertEqual(h.channel.window_bytes, 400)

    def test_window_byte_bound_is_inclusive(self) -> None:
        h = Harness(max_window_bytes=4096)
        for i in range(3):
            h.channel.submit(sized(i, 2048), i, 0.0)
        h.channel.connection_made()
        self.assertEqual(len(h.write()), 2)
        self.assertEqual(h.channel.window_bytes, 4096)
        self.assertTrue(h.channel.window_full())
        self.assertFalse(h.channel.writable())

    def test_expiry_and_priority_are_written(self) -> None:
        h = Harness()
        n = Notification.create(b"\x01" * 32, {"aps": {}}, expiry=1_700_000_000, priority=5)
        h.channel.submit(n, 0, 0.0)
        h.channel.connection_made()
        self.assertEqual(
            h.channel.take_frames(0.0), encode_frame(1, n.token, n.payload, 1_700_000_000, 5)
        )


class ReadTests(SynchronousTestCase):
    def test_an_error_response_before_garbage_still_decides(self) -> None:
        h = Harness()
        h.submit(0, 1, 2)
        h.connect_and_write()
        h.feed(error(8, 2) + b"\x07junk")
        self.assertEqual([h.outcome(i) for i in (0, 1)], [Outcome.ACCEPTED, Outcome.REJECTED])
        self.assertIn("command", h.channel.broken or "")
        h.lose()
        self.assertEqual([i for _, i in h.connect_and_write()], [2])

    def test_garbage_is_named_in_the_unknown_reason(self) -> None:
        h = Harness(unknown_policy=UnknownPolicy.FAIL)
        h.submit(0)
        h.connect_and_write()
        h.feed(b"\x07")
        broken = h.channel.broken
        assert broken is not None
        h.lose()
        self.assertEqual(h.results[0][0].reason, f"test close (dropped: {broken})")
        self.assertEqual(h.channel.counters.unknown_by_reason, {"silent-close": 1})

    def test_undelivered_close_requeues_without_using_an_attempt(self) -> None:
        h = Harness(max_attempts=1)
        h.submit(0, 1)
        h.connect_and_write()
        h.channel.take_sentinel(h.now)
        self.assertEqual(h.channel.connection_lost(h.now, "tls refused", undelivered=True), [])
        self.assertEqual([p.handle for p in h.channel.queue], [0, 1])
        self.assertEqual((h.channel.window_bytes, h.channel._sentinels), (0, 0))
        self.assertEqual(h.channel.pending(), 2)
        self.assertTrue(all(not p.maybe_delivered for p in h.channel.queue))
        self.assertEqual([i for _, i in h.connect_and_write()], [0, 1])
        h.check()


class ConfirmQuietTests(SynchronousTestCase):
    def test_results_and_bytes_of_a_confirmation(self) -> None:
        h = Harness(quiet=1.0)
        h.submit(0, 1)
        h.connect_and_write()
        h.channel.take_sentinel(h.now)
        h.now = 0.5
        h.submit(2)
        h.write()
        h.now = 1.2
        h.record(h.channel.confirm_quiet(h.now))
        [result] = h.results[0]
        self.assertEqual(
            (result.notification, result.outcome, result.attempts, result.latency),
            (note(0), Outcome.ACCEPTED, 1, 1.2),
        )
        self.assertEqual(sorted(h.results), [0, 1])
        self.assertEqual(h.channel.window_bytes, h.channel.window[0].size)
        self.assertEqual((h.channel._sentinels, h.channel.pending()), (0, 1))
        self.assertEqual((h.channel.counters.accepted, h.channel.accepted_here), (2, 2))
        h.check()

    def test_fields_of_a_rejection(self) -> None:
        h = Harness()
        h.now = 2.0
        h.submit(0)
        h.now = 3.5
        h.connect_and_write()
        h.feed(error(8, 1))
        [result] = h.results[0]
        fields = ("notification", "outcome", "status", "reason", "apns_id", "attempts")
        self.assertEqual(
            [getattr(result, f) for f in (*fields, "latency", "local", "timestamp")],
            [note(0), Outcome.REJECTED, 8, "InvalidToken", None, 1, 1.5, None, None],
        )

    def test_confirmations_add_up_across_a_sentinel(self) -> None:
        h = Harness(quiet=1.0)
        h.now = 1.0
        h.submit(0)
        h.connect_and_write()
        h.channel.take_sentinel(h.now)
        h.submit(1)
        h.write()
        h.now = 2.5
        h.record(h.channel.confirm_quiet(h.now))  # all of it, past the sentinel, in one call
        self.assertEqual(sorted(h.results), [0, 1])
        self.assertEqual(h.results[0][0].latency, 1.5)
        self.assertEqual(h.channel.window_bytes, 0)
        h.submit(2)
        h.write()
        h.now = 4.0
        h.record(h.channel.confirm_quiet(h.now))
        self.assertEqual(h.channel.accepted_here, 3)
        h.check()

    def test_queue_full_message(self) -> None:
        h = Harness(max_queue=1)
        h.submit(0)
        with self.assertRaises(QueueFullError) as cm:
            h.submit(1)
        self.assertEqual(
            str(cm.exception),
            "pending queue is full (1 notifications); wait for results or raise max_queue",
        )

    def test_replays_add_up(self) -> None:
        h = Harness()
        h.submit(0, 1, 2)
        h.connect_and_write()
        h.feed(error(8, 1))
        h.lose()
        h.connect_and_write()
        h.feed(error(8, 1))
        self.assertEqual(h.channel.counters.replayed, 3)
