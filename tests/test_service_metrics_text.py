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
        self.assertEqual([line for line in text.splitlines() if not line.startswith("#")], [])
        self.assertTrue(text.endswith("\n"))


class ReasonLabelTests(SynchronousTestCase):
    """The ``reason`` label is :func:`~txapns.core.result.counter_key`, as in the clients'
    :class:`~txapns.core.counters.Counters`: a local failure is labelled by its kind, never by
    its free-text detail (addresses, error messages), so the label set stays bounded."""

    def results(self) -> list[Result]:
        n = Notification.create("ab" * 32, {"aps": {"alert": "x"}})
        detail = [f"3 attempts, last: connection refused by 10.0.0.{i}:2195" for i in range(3)]
        return [
            *(Result(n, Outcome.REJECTED, None, d, local="unreachable") for d in detail),
            Result(n, Outcome.REJECTED, None, "certificate verify failed (ca_file?)", local="tls"),
            Result(n, Outcome.REJECTED, 8, "InvalidToken", local="attempts"),
            Result(n, Outcome.UNKNOWN, None, "connection lost: [Errno 104] reset", local="lost"),
            Result(n, Outcome.UNKNOWN, None, None),
        ]

    def test_a_free_text_reason_is_not_a_label(self) -> None:
        m = ServiceMetrics()
        for result in self.results():
            m.app("shop").record(result, None)
        a = m.app("shop")
        self.assertEqual(
            dict(a.rejected_by_reason), {"unreachable": 3, "tls": 1, "InvalidToken": 1}
        )
        self.assertEqual(dict(a.unknown_by_reason), {"lost": 1, "unknown": 1})
        text = m.render({})
        for result in self.results():
            if result.local not in (None, "attempts"):  # "attempts": APNs' own reason
                self.assertNotIn(str(result.reason), text)

    def test_the_same_labels_as_the_clients_counters(self) -> None:
        counters, m = Counters(), ServiceMetrics()
        for result in self.results():
            counters.record(result)
            m.app("shop").record(result, None)
        self.assertEqual(m.app("shop").rejected_by_reason, counters.rejected_by_reason)
        self.assertEqual(m.app("shop").unknown_by_reason, counters.unknown_by_reason)


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
