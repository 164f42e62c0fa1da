"""Edges of the binary delivery state machine that mutation testing found untested.

Each test here failed on a hand-made mutant of :mod:`txapns.core.binary_channel` that the rest
of the suite let through (issue 13): an error response naming the identifier just past the
window, and the ``maybe_delivered`` mark that decides unknown versus rejected.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.binary_channel import UnknownPolicy
from txapns.core.result import Outcome

from .test_binary_channel import Harness, error


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
            [(Outcome.UNKNOWN, None), (Outcome.UNKNOWN, None), (Outcome.REJECTED, "stopped")],
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
