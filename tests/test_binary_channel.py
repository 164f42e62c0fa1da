"""The binary delivery state machine: outcomes, replay order, bounds and counters."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.binary_channel import (
    UnknownPolicy,
)
from txapns.core.errors import QueueFullError
from txapns.core.result import Outcome

from .helpers_binary import Harness, error, parse_frames


class ErrorResponseTests(SynchronousTestCase):
    def test_invalid_token_rejects_it_accepts_before_and_replays_after_in_order(self) -> None:
        h = Harness()
        h.submit(*range(10))
        frames = h.connect_and_write()
        self.assertEqual(frames, [(i + 1, i) for i in range(10)])
        h.feed(error(8, 4))  # identifier 4 = notification 3
        self.assertEqual([h.outcome(i) for i in range(3)], [Outcome.ACCEPTED] * 3)
        self.assertEqual(h.outcome(3), Outcome.REJECTED)
        self.assertEqual(h.results[3][0].reason, "InvalidToken")
        self.assertEqual(h.results[3][0].status, 8)
        self.assertTrue(h.results[3][0].token_invalid)
        self.assertFalse(h.channel.writable())  # nothing more after an error
        h.lose()
        replay = h.connect_and_write()
        self.assertEqual([i for _, i in replay], list(range(4, 10)))
        self.assertEqual([ident for ident, _ in replay], list(range(1, 7)))
        self.assertEqual(h.channel.counters.replayed, 6)
        h.check()

    def test_shutdown_status_means_the_named_one_was_delivered(self) -> None:
        h = Harness()
        h.submit(*range(5))
        h.connect_and_write()
        h.feed(error(10, 3))
        self.assertEqual([h.outcome(i) for i in range(3)], [Outcome.ACCEPTED] * 3)
        self.assertNotIn(3, h.results)
        h.lose()
        self.assertEqual([i for _, i in h.connect_and_write()], [3, 4])
        h.check()

    def test_transient_status_retries_up_to_the_attempt_limit(self) -> None:
        h = Harness(max_attempts=2)
        h.submit(0, 1)
        h.connect_and_write()
        h.feed(error(1, 1))
        self.assertEqual(h.results, {})
        h.lose()
        self.assertEqual([i for _, i in h.connect_and_write()], [0, 1])
        h.feed(error(255, 1))
        self.assertEqual(h.outcome(0), Outcome.REJECTED)
        self.assertEqual((h.results[0][0].reason, h.results[0][0].local), ("Unknown", "attempts"))
        self.assertEqual(h.results[0][0].attempts, 2)
        self.assertEqual(h.channel.counters.retried, 1)
        h.check()

    def test_error_split_across_reads(self) -> None:
        h = Harness()
        h.submit(*range(3))
        h.connect_and_write()
        data = error(8, 2)
        for b in data[:-1]:
            h.feed(bytes([b]))
            self.assertEqual(h.results, {})
        h.feed(data[-1:])
        self.assertEqual(h.outcome(1), Outcome.REJECTED)

    def test_identifier_zero_isolates_the_bad_notification(self) -> None:
        """Issue 9 item 5: an error naming identifier 0 (say #2 of 0–5 is bad: 0–1 were
        delivered, 3–5 discarded) is isolated by halves, second half first and alone; the bad
        one ends rejected with its status, the rest accepted, possible duplicates flagged."""
        h = Harness(quiet=1.0)
        h.submit(*range(6))
        h.connect_and_write()
        h.feed(error(8, 0))
        h.lose()
        self.assertEqual(h.results, {})
        self.assertTrue(h.channel.isolating)
        self.assertEqual([i for _, i in h.connect_and_write()], [3, 4, 5])  # alone
        h.submit(6)  # not written while isolating
        self.assertEqual(h.write(), [])
        h.now = 1.0
        h.record(h.channel.confirm_quiet(h.now))  # passed: after the bad one, discarded then
        self.assertEqual({h.outcome(i) for i in (3, 4, 5)}, {Outcome.ACCEPTED})
        self.assertEqual({h.results[i][0].may_duplicate for i in (3, 4, 5)}, {False})
        self.assertEqual([i for _, i in h.write()], [1, 2])  # second half of 0–2
        h.feed(error(8, 0))  # #1 delivered again, #2 refused
        h.lose()
        self.assertEqual([i for _, i in h.connect_and_write()], [2])  # second half of 1–2
        h.feed(error(8, 0))  # written alone: the error is its own
        self.assertEqual((h.outcome(2), h.results[2][0].status), (Outcome.REJECTED, 8))
        self.assertEqual(h.results[2][0].reason, "InvalidToken")
        self.assertFalse(h.channel.isolating)
        h.lose()
        # 0 and 1 may have been delivered before the bad one: re-sent (unknown policy), in
        # order, before what was queued meanwhile; flagged.
        self.assertEqual([i for _, i in h.connect_and_write()], [0, 1, 6])
        h.now = 3.0
        h.record(h.channel.confirm_quiet(h.now))
        self.assertEqual({h.outcome(i) for i in (0, 1, 6)}, {Outcome.ACCEPTED})
        self.assertEqual([h.results[i][0].may_duplicate for i in (0, 1, 6)], [True, True, False])
        self.assertEqual(h.channel.counters.may_duplicate, 2)
        self.assertEqual(h.channel.counters.unknown, 0)
        h.check()

    def test_identifier_zero_with_a_lone_notification_names_it(self) -> None:
        h = Harness()
        h.submit(0)
        h.connect_and_write()
        h.feed(error(8, 0))
        self.assertEqual((h.outcome(0), h.results[0][0].status), (Outcome.REJECTED, 8))
        h.check()

    def test_identifier_zero_transient_status_is_unknown_and_bounded(self) -> None:
        h = Harness(max_attempts=3)
        h.submit(0, 1)
        for _ in range(3):
            h.connect_and_write()
            h.feed(error(1, 0))  # a processing error: nothing to isolate
            h.lose()
        self.assertEqual([h.outcome(i) for i in (0, 1)], [Outcome.UNKNOWN] * 2)
        self.assertIn("identifier 0", h.results[0][0].reason or "")
        self.assertEqual(h.channel.counters.unknown_by_reason["unattributed-error"], 2)
        h.check()

    def test_isolation_ends_when_the_probe_is_lost_silently(self) -> None:
        h = Harness(quiet=1.0, unknown_policy=UnknownPolicy.FAIL)
        h.submit(*range(4))
        h.connect_and_write()
        h.feed(error(8, 0))
        h.lose()
        self.assertEqual([i for _, i in h.connect_and_write()], [2, 3])
        h.lose()  # no error response: the probe and the rest are unknown (FAIL policy)
        self.assertEqual({h.outcome(i) for i in range(4)}, {Outcome.UNKNOWN})
        self.assertFalse(h.channel.isolating)
        h.check()

    def test_fail_all_while_isolating(self) -> None:
        h = Harness(quiet=1.0)
        h.submit(*range(4))
        h.connect_and_write()
        h.feed(error(8, 0))
        h.lose()
        h.connect_and_write()
        h.record(h.channel.fail_all("client stopped", "stopped", h.now))
        self.assertEqual({h.outcome(i) for i in range(4)}, {Outcome.UNKNOWN})
        self.assertEqual(h.channel.pending(), 0)
        h.check()

    def test_garbage_marks_the_connection_broken(self) -> None:
        h = Harness(unknown_policy=UnknownPolicy.FAIL)
        h.submit(0)
        h.connect_and_write()
        h.feed(b"\x07garbage")
        self.assertIsNotNone(h.channel.broken)
        h.lose()
        self.assertEqual(h.outcome(0), Outcome.UNKNOWN)
        self.assertIn("dropped", h.results[0][0].reason or "")


class SilentCloseTests(SynchronousTestCase):
    def test_resend_policy_requeues_unknown_at_the_head(self) -> None:
        h = Harness()
        h.submit(0, 1)
        h.connect_and_write()
        h.submit(2)  # queued, not written yet
        h.lose()
        self.assertEqual(h.results, {})
        self.assertEqual(h.channel.counters.resent_unknown, 2)
        self.assertEqual([i for _, i in h.connect_and_write()], [0, 1, 2])
        h.check()

    def test_resent_after_a_silent_close_is_flagged_may_duplicate(self) -> None:
        """Issue 9 item 4: whatever finishes a notification re-sent after an unknown outcome
        (quiet window, error response, give-up) says it may be a duplicate, and counts it."""
        h = Harness(quiet=1.0, max_attempts=3)
        h.submit(0, 1, 2, 3)
        h.connect_and_write()
        h.lose()  # all four unknown, re-sent
        h.submit(4)  # never in flight before: not a possible duplicate
        h.now = 1.0
        h.connect_and_write()
        h.feed(error(8, 2))  # 0 accepted, 1 rejected, 2–4 replayed
        h.lose()
        h.now = 2.0
        h.connect_and_write()
        h.now = 3.5
        h.record(h.channel.confirm_quiet(h.now))
        flags = {i: (h.outcome(i), h.results[i][0].may_duplicate) for i in range(5)}
        self.assertEqual(
            flags,
            {
                0: (Outcome.ACCEPTED, True),
                1: (Outcome.REJECTED, True),
                2: (Outcome.ACCEPTED, True),
                3: (Outcome.ACCEPTED, True),
                4: (Outcome.ACCEPTED, False),
            },
        )
        self.assertEqual(h.channel.counters.may_duplicate, 4)
        h.check()

    def test_one_unknown_attempt_is_not_a_duplicate(self) -> None:
        h = Harness(unknown_policy=UnknownPolicy.FAIL)
        h.submit(0)
        h.connect_and_write()
        h.lose()
        self.assertEqual((h.outcome(0), h.results[0][0].may_duplicate), (Outcome.UNKNOWN, False))
        self.assertEqual(h.channel.counters.may_duplicate, 0)

    def test_fail_policy_finishes_unknown(self) -> None:
        h = Harness(unknown_policy=UnknownPolicy.FAIL)
        h.submit(0, 1)
        h.connect_and_write()
        h.lose()
        self.assertEqual([h.outcome(i) for i in (0, 1)], [Outcome.UNKNOWN] * 2)
        self.assertEqual(h.channel.counters.unknown, 2)
        h.check()

    def test_quiet_window_accepts_before_a_close(self) -> None:
        h = Harness(quiet=1.0, unknown_policy=UnknownPolicy.FAIL)
        h.submit(0)
        h.connect_and_write()
        h.now = 0.5
        h.submit(1)
        h.write()
        h.now = 1.2
        h.lose()
        self.assertEqual(h.outcome(0), Outcome.ACCEPTED)
        self.assertEqual(h.outcome(1), Outcome.UNKNOWN)


class WindowTests(SynchronousTestCase):
    def test_quiet_confirmation_and_deadline(self) -> None:
        h = Harness(quiet=2.0)
        h.submit(0, 1)
        h.connect_and_write()
        self.assertEqual(h.channel.next_deadline(), 2.0)
        h.now = 1.9
        h.record(h.channel.confirm_quiet(h.now))
        self.assertEqual(h.results, {})
        h.now = 2.0
        h.record(h.channel.confirm_quiet(h.now))
        self.assertEqual([h.outcome(i) for i in (0, 1)], [Outcome.ACCEPTED] * 2)
        self.assertIsNone(h.channel.next_deadline())
        h.check()

    def test_window_bound_applies_back_pressure_and_never_evicts(self) -> None:
        h = Harness(max_window=3, quiet=1.0)
        h.submit(*range(5))
        self.assertEqual(len(h.connect_and_write()), 3)
        self.assertTrue(h.channel.window_full())
        self.assertEqual(h.write(), [])
        self.assertEqual(len(h.channel.window), 3)
        h.now = 1.0
        h.record(h.channel.confirm_quiet(h.now))
        self.assertEqual([i for _, i in h.write()], [3, 4])
        self.assertEqual(h.channel.counters.window_high_water, 3)

    def test_error_after_quiet_confirmation_finds_the_right_entry(self) -> None:
        h = Harness(quiet=1.0)
        h.submit(0, 1)
        h.connect_and_write()
        h.now = 1.0
        h.record(h.channel.confirm_quiet(h.now))
        h.submit(2, 3)
        self.assertEqual(h.write(), [(3, 2), (4, 3)])
        h.feed(error(8, 4))
        self.assertEqual(h.outcome(2), Outcome.ACCEPTED)
        self.assertEqual(h.outcome(3), Outcome.REJECTED)

    def test_queue_bound(self) -> None:
        h = Harness(max_queue=2)
        h.submit(0, 1)
        self.assertRaises(QueueFullError, h.submit, 2)
        self.assertEqual(h.channel.counters.submitted, 2)

    def test_identifiers_wrap_past_zero(self) -> None:
        h = Harness()
        h.channel.connection_made()
        h.channel._next_id = 0xFFFFFFFE
        h.submit(0, 1, 2)
        self.assertEqual([ident for ident, _ in h.write()], [0xFFFFFFFE, 0xFFFFFFFF, 1])
        h.feed(error(8, 1))
        self.assertEqual([h.outcome(i) for i in range(3)][:2], [Outcome.ACCEPTED] * 2)
        self.assertEqual(h.outcome(2), Outcome.REJECTED)

    def test_sentinel_confirms_everything_before_it(self) -> None:
        h = Harness(quiet=60.0)
        h.submit(0, 1)
        h.connect_and_write()
        frame = parse_frames(h.channel.take_sentinel(h.now))
        self.assertEqual(frame, [(3, -1)])
        self.assertEqual(h.channel.take_sentinel(h.now), b"")  # one at a time
        self.assertEqual(h.channel.pending(), 2)
        h.feed(error(8, 3))
        self.assertEqual([h.outcome(i) for i in (0, 1)], [Outcome.ACCEPTED] * 2)
        self.assertEqual(h.channel.pending(), 0)
        self.assertEqual(h.channel.counters.submitted, 2)
        h.check()

    def test_fail_all_distinguishes_unsent_from_maybe_delivered(self) -> None:
        h = Harness(max_window=1)
        h.submit(0, 1)
        h.connect_and_write()
        h.record(h.channel.fail_all("client stopped", "stopped", h.now))
        self.assertEqual(h.outcome(0), Outcome.UNKNOWN)
        self.assertEqual(h.outcome(1), Outcome.REJECTED)
        self.assertEqual(h.results[1][0].local, "stopped")
        h.check()


class RandomScheduleTests(SynchronousTestCase):
    """Whatever the gateway does, each notification ends exactly once and the sums hold."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("submit"), st.integers(1, 5)),
                st.tuples(st.just("write"), st.just(0)),
                st.tuples(st.just("error"), st.integers(0, 12)),
                st.tuples(st.just("shutdown"), st.integers(0, 12)),
                st.tuples(st.just("transient"), st.integers(0, 12)),
                st.tuples(st.just("close"), st.just(0)),
                st.tuples(st.just("tick"), st.integers(0, 3)),
            ),
            max_size=60,
        ),
        st.sampled_from(list(UnknownPolicy)),
    )
    def test_every_notification_ends_once(
        self, ops: list[tuple[str, int]], policy: UnknownPolicy
    ) -> None:
        h = Harness(quiet=2.0, max_window=8, max_attempts=3, unknown_policy=policy)
        submitted = 0
        written: list[tuple[int, int]] = []
        for op, arg in ops:
            ch = h.channel
            if op == "submit":
                for _ in range(arg):
                    if ch.queue_room() > 0:
                        h.submit(submitted)
                        submitted += 1
            elif op == "write":
                if not ch.connected:
                    ch.connection_made()
                    written = []
                written += h.write()
            elif op in ("error", "shutdown", "transient") and ch.connected and ch.error is None:
                status = {"error": 8, "shutdown": 10, "transient": 1}[op]
                ident = written[arg % len(written)][0] if written else 0
                h.feed(error(status, ident))
            elif op == "close" and ch.connected:
                h.lose()
            elif op == "tick":
                h.now += arg
                h.record(ch.confirm_quiet(h.now))
            h.check()
        # Finish: drain with a well-behaved gateway.
        for _ in range(50):
            ch = h.channel
            if ch.pending() == 0:
                break
            if ch.connected:
                h.lose()
            ch.connection_made()
            h.write()
            h.now += 10
            h.record(ch.confirm_quiet(h.now))
        self.assertEqual(h.channel.pending(), 0)
        self.assertEqual(sorted(h.results), list(range(submitted)))
        self.assertTrue(all(len(r) == 1 for r in h.results.values()))
        h.check()
