"""``/metrics`` byte for byte: the exposition of a populated :class:`ServiceMetrics`.

``metrics_exposition.txt`` beside this file is the text the service rendered before
``/metrics`` was drawn from a table; a change to it is a change to what scrapers see.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from txapns.core import Counters, Notification, Outcome, Result
from txapns.service.metrics import COUNTER_METRICS, FAMILIES, AppGauges, ServiceMetrics

GOLDEN = Path(__file__).with_name("metrics_exposition.txt")


def populated() -> tuple[ServiceMetrics, dict[str, AppGauges]]:
    m = ServiceMetrics()
    n = Notification.create("ab" * 32, {"aps": {"alert": "x"}})
    for i, name in enumerate(("shop", "news")):
        a = m.app(name)
        a.submitted, a.sent, a.requeued = 10 + i, 9 + i, i
        a.resumed_maybe_duplicate, a.tokens_held_back = 2 * i, 3
        a.record(Result(n, Outcome.ACCEPTED, 200), 0.003)
        a.record(Result(n, Outcome.ACCEPTED, 200, may_duplicate=True), 0.7)
        a.record(Result(n, Outcome.REJECTED, 410, "Unregistered"), 0.2)
        a.record(Result(n, Outcome.REJECTED, 400, "BadDeviceToken"), 45.0)
        a.record(Result(n, Outcome.UNKNOWN, None, 'odd "reason"\\ \n'), None)
        a.record(Result(n, Outcome.UNKNOWN, None, None), 100.0)
        a.invalid_by_kind["unregistered"] += 1 + i
        a.invalid_by_kind["feedback"] += 1
        a.pauses["environment"] += 1
    m.http_responses[("notifications", 200)] += 2
    m.http_responses[("notifications", 503)] += 1
    m.http_responses[("metrics", 200)] += 7
    gauges = {
        "shop": AppGauges(
            queued=5,
            scheduled=1,
            inflight=2,
            client_pending=4,
            counters=Counters(
                retried=2,
                replayed=1,
                resent_unknown=1,
                connections_made=4,
                connection_failures=3,
                reconnects=2,
                window_high_water=70,
            ),
        ),
        "news": AppGauges(paused="environment"),
        "idle": AppGauges(paused="offline"),  # gauges only: no AppMetrics yet
    }
    return m, gauges


class ExpositionTests(SynchronousTestCase):
    def test_byte_for_byte(self) -> None:
        m, gauges = populated()
        self.assertEqual(m.render(gauges), GOLDEN.read_text(encoding="utf-8"))

    def test_empty(self) -> None:
        text = ServiceMetrics().render({})
        self.assertEqual(
            [line for line in text.splitlines() if not line.startswith("#")], []
        )
        self.assertTrue(text.endswith("\n"))


class TableTests(SynchronousTestCase):
    def test_one_row_per_family(self) -> None:
        names = [f.name for f in FAMILIES]
        self.assertEqual(len(names), len(set(names)))
        self.assertLessEqual(set(COUNTER_METRICS.values()), set(names))
        self.assertEqual({f.kind for f in FAMILIES}, {"counter", "gauge", "histogram"})

    def test_rendered_in_table_order(self) -> None:
        m, gauges = populated()
        types = [line.split()[2] for line in m.render(gauges).splitlines() if "# TYPE" in line]
        self.assertEqual(types, [f.name for f in FAMILIES])
