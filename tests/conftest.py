"""Hypothesis settings for the whole suite.

The ``ci`` profile is loaded unless ``HYPOTHESIS_PROFILE`` names another (``default`` is
Hypothesis's own). README's test command, which CI runs, measures coverage in four workers on
a machine others share: input generation and each example then take several times longer
than on an idle machine, so Hypothesis's ``too_slow`` health check and its per-example
``deadline`` fail tests for the machine's load, not for the code (speed is measured by the
benchmarks, never asserted). Every other health check stays on. Tests that pass their own
``@settings`` keep what they set and take the rest from here.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
