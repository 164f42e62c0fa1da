"""Edges of :mod:`txapns.core` that mutation testing (``tools/mutation.py``) found untested.

Each test here kills mutants that the module's own tests let survive; the module docstring of
``tools/mutation.py`` says how to run it, ``docs/testing.rst`` what was judged equivalent.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txapns.core.backoff import Backoff


class BackoffEdgeTests(SynchronousTestCase):
    def test_no_failure_no_delay(self) -> None:
        b = Backoff(initial=1.0, factor=2.0, cap=60.0, jitter=0.5)
        for rnd in (0.0, 0.5, 0.999):
            self.assertEqual(b.delay(0, rnd), 0.0)
            self.assertEqual(b.delay(-3, rnd), 0.0)
        self.assertEqual(b.delay(1, 0.5), 1.0)

    def test_exponent_stops_at_64(self) -> None:
        # Below the cap, a long outage grows no further than factor**64 (and never overflows).
        b = Backoff(initial=1.0, factor=1.01, cap=100.0, jitter=0.0)
        self.assertEqual(b.delay(65, 0.0), 1.01**64)
        self.assertEqual(b.delay(10**6, 0.0), 1.01**64)
        self.assertEqual(Backoff(factor=10.0).delay(10**6, 0.5), 60.0)
