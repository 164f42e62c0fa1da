"""``Outcome`` is a ``StrEnum``: it compares equal to, prints as and serialises as its value,
so ``result.outcome == "accepted"`` works and README's ``print(result.outcome, …)`` prints
``accepted`` (issue 12, item 11)."""

from __future__ import annotations

import contextlib
import io
import json

from twisted.trial.unittest import SynchronousTestCase

from txapns import Notification
from txapns.core.result import Outcome, Result

N = Notification.create("ab" * 32, {"aps": {"alert": "hi"}})


class OutcomeIsAStringTests(SynchronousTestCase):
    def test_equal_to_its_value(self) -> None:
        r = Result(N, Outcome.ACCEPTED, 200)
        self.assertTrue(r.outcome == "accepted")
        self.assertEqual([o == o.value for o in Outcome], [True, True, True])
        self.assertNotEqual(Outcome.REJECTED, "accepted")

    def test_prints_and_formats_as_its_value(self) -> None:
        r = Result(N, Outcome.ACCEPTED, 200)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print(r.outcome, r.status, r.reason)  # README's line
        self.assertEqual(out.getvalue(), "accepted 200 None\n")
        self.assertEqual(f"{Outcome.UNKNOWN}", "unknown")
        self.assertEqual(
            str(Result(N, Outcome.REJECTED, 400, "BadDeviceToken")), "rejected 400 BadDeviceToken"
        )

    def test_json_and_lookup(self) -> None:
        self.assertEqual(json.dumps({"outcome": Outcome.REJECTED}), '{"outcome": "rejected"}')
        self.assertIs(Outcome("unknown"), Outcome.UNKNOWN)
        self.assertEqual({Outcome.ACCEPTED: 1}["accepted"], 1)
