#!/usr/bin/env python3
"""Cost of one ``/metrics`` scrape: txapns's table against ``prometheus_client``'s exposition.

    python benchmarks/metrics_render.py [--apps 10] [--scrapes 200]

It fills a :class:`~txapns.service.metrics.ServiceMetrics` for N apps (reasons, kinds,
latencies, client counters), then times ``render`` and, when ``prometheus_client`` is
importable (it is not a dependency: ``pip install prometheus_client`` to compare), the same
families from :data:`~txapns.service.metrics.FAMILIES` written by its ``generate_latest``.
It prints milliseconds per scrape (best of 5 runs) and their ratio, and whether the two texts
differ only where that library prints integers as floats, sorts labels by name and puts a
histogram's ``_count`` before its ``_sum``.
"""

from __future__ import annotations

import argparse
import random
import re
import timeit
from typing import Any

from txapns.core.counters import Counters
from txapns.service.metrics import FAMILIES, AppGauges, ServiceMetrics


def populated(apps: int, seed: int = 1) -> tuple[ServiceMetrics, dict[str, AppGauges]]:
    rng = random.Random(seed)
    sm = ServiceMetrics()
    gauges = {}
    for i in range(apps):
        name = f"app-{i}"
        m = sm.app(name)
        m.submitted, m.sent, m.accepted = (rng.randrange(10**6) for _ in range(3))
        for reason in ("BadDeviceToken", "Unregistered", "TooManyRequests"):
            m.rejected_by_reason[reason] = rng.randrange(1000)
        m.unknown_by_reason["timeout"] = rng.randrange(100)
        m.invalid_by_kind["unregistered"] = rng.randrange(100)
        m.pauses["unavailable"] = 1
        for _ in range(200):
            m.latency.observe(rng.random() * 3)
        counters = Counters(retried=3, replayed=1, connections_made=4, window_high_water=70)
        gauges[name] = AppGauges(queued=i, scheduled=2 * i, inflight=3, counters=counters)
    sm.http_responses[("notifications", 200)] = 12345
    sm.http_responses[("metrics", 200)] = 9
    return sm, gauges


def prometheus_render(sm: ServiceMetrics, gauges: dict[str, AppGauges]) -> Any:
    """``generate_latest`` over a collector that yields :data:`FAMILIES`."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    class Collector:
        def collect(self) -> Any:
            apps = sm.scrape(gauges)
            for family in FAMILIES:
                name = family.name
                if family.kind == "counter":  # it adds _total back to a counter's name
                    name = name.removesuffix("_total")
                metric = Metric(name, family.help, family.kind)
                for suffix, labels, value in family.samples(apps):
                    metric.add_sample(family.name + suffix, dict(labels), value)
                yield metric

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return lambda: generate_latest(registry)


def same_but_floats_and_order(ours: str, theirs: str) -> bool:
    """Equal once integers are integers, labels sorted by name, and lines sorted."""

    def lines(text: str) -> list[str]:
        text = re.sub(r" (-?[0-9]+)\.0$", r" \1", text, flags=re.M)
        out = []
        for line in text.splitlines():
            m = re.match(r"([^{ ]+)\{(.*)\} (\S+)$", line)
            if m:
                labels = sorted(re.findall(r'[a-z_]+="(?:[^"\\]|\\.)*"', m[2]))
                line = f"{m[1]}{{{','.join(labels)}}} {m[3]}"
            out.append(line)
        return sorted(out)

    return lines(ours) == lines(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=10)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    sm, gauges = populated(args.apps)
    n = args.scrapes
    ours = min(timeit.repeat(lambda: sm.render(gauges), number=n, repeat=5)) / n
    text = sm.render(gauges)
    print(f"{args.apps} apps, {len(text.splitlines())} lines, {len(text)} bytes")
    print(f"txapns table:      {ours * 1e3:.3f} ms per scrape")
    try:
        render = prometheus_render(sm, gauges)
    except ImportError:
        print("prometheus_client: not installed")
        return
    theirs = min(timeit.repeat(render, number=n, repeat=5)) / n
    print(f"prometheus_client: {theirs * 1e3:.3f} ms per scrape ({theirs / ours:.2f}x)")
    other = render().decode("utf-8")
    same = same_but_floats_and_order(text, other)
    print(f"same text: {other == text}; same but floats and order: {same}")


if __name__ == "__main__":
    main()
