"""Service metrics and their Prometheus text exposition (format 0.0.4), without dependencies.

The engine updates an :class:`AppMetrics` per app as notifications move; gauges (queue
depth, in flight, the client's connection counters) are read at scrape time and passed to
:meth:`ServiceMetrics.render`, which writes the families of one table, :data:`FAMILIES`
(name, type, help, samples): a new metric is one more row.

Not ``prometheus_client``'s exposition code: it prints every integer as a float (``3.0``),
sorts labels by name and puts a histogram's ``_count`` before its ``_sum`` (scrapers read
both the same), and took 2 to 3.5 times as long per scrape for 10 apps
(``benchmarks/metrics_render.py``).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..core.counters import Counters
from ..core.result import Outcome, Result, counter_key

#: Where each :class:`~txapns.core.counters.Counters` field of an app's client shows in
#: ``/metrics``. The client's outcome counts are the engine's own (every result the client
#: gives is recorded by the engine), so they are exported from :class:`AppMetrics`.
COUNTER_METRICS: dict[str, str] = {
    "submitted": "txapns_notifications_sent_total",
    "accepted": "txapns_notifications_accepted_total",
    "rejected": "txapns_notifications_rejected_total",
    "unknown": "txapns_notifications_unknown_total",
    "rejected_by_reason": "txapns_notifications_rejected_total",
    "unknown_by_reason": "txapns_notifications_unknown_total",
    "retried": "txapns_retries_total",
    "replayed": "txapns_retries_total",
    "resent_unknown": "txapns_resent_unknown_total",
    "may_duplicate": "txapns_may_duplicate_total",
    "connections_made": "txapns_connections_made_total",
    "reconnects": "txapns_reconnects_total",
    "connection_failures": "txapns_connection_failures_total",
    "window_high_water": "txapns_client_window_high_water",
}

#: Why an app cannot send, as ``txapns_app_paused`` labels them.
PAUSE_KINDS = ("unavailable", "environment", "offline")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Histogram:
    """Cumulative-bucket histogram of seconds."""

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        if list(buckets) != sorted(buckets) or not buckets:
            raise ValueError("buckets must be a non-empty ascending sequence")
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else _number(bound), total))
        return out


@dataclass
class AppMetrics:
    #: Notifications durably stored from API submissions.
    submitted: int = 0
    #: Handed to the app's client (each hand-over counts, a requeued one again).
    sent: int = 0
    accepted: int = 0
    #: Rejections and unknown outcomes, by :func:`~txapns.core.result.counter_key` (the
    #: ``reason`` label): the local kind (``tls``, ``unreachable``…) when the client finished
    #: it, never its free-text detail, so the label set stays bounded.
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    unknown_by_reason: Counter[str] = field(default_factory=Counter)
    #: Put back in the spool unsent (client stopping, queue full).
    requeued: int = 0
    #: Resumed after a crash while in flight: possibly delivered twice.
    resumed_maybe_duplicate: int = 0
    #: Finished with ``may_duplicate``: the client re-sent it after an unknown outcome.
    may_duplicate: int = 0
    #: Tokens published in the invalid-token feed, by kind of evidence.
    invalid_by_kind: Counter[str] = field(default_factory=Counter)
    #: Tokens rejected as ``BadDeviceToken``/``InvalidToken`` but not published: during a
    #: wrong-environment pause (sent again on resume), or with too little evidence.
    tokens_held_back: int = 0
    #: Times the app was paused, by why (``unavailable``, ``environment``).
    pauses: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)

    @property
    def invalid_tokens(self) -> int:
        return sum(self.invalid_by_kind.values())

    def record(self, result: Result, latency: float | None) -> None:
        """Count an outcome (the engine counts published invalid tokens itself)."""
        if result.outcome is Outcome.ACCEPTED:
            self.accepted += 1
        elif result.outcome is Outcome.REJECTED:
            self.rejected_by_reason[counter_key(result)] += 1
        else:
            self.unknown_by_reason[counter_key(result)] += 1
        if result.may_duplicate:
            self.may_duplicate += 1
        if latency is not None:
            self.latency.observe(latency)


@dataclass(frozen=True, slots=True)
class AppGauges:
    """Values read at scrape time."""

    queued: int = 0
    scheduled: int = 0
    inflight: int = 0
    client_pending: int = 0
    counters: Counters | None = None
    #: Why the app cannot send now (one of :data:`PAUSE_KINDS`), or ``None``.
    paused: str | None = None


class ServiceMetrics:
    def __init__(self) -> None:
        self.apps: dict[str, AppMetrics] = {}
        #: ``(route, code)`` → count of API responses.
        self.http_responses: Counter[tuple[str, int]] = Counter()

    def app(self, name: str) -> AppMetrics:
        m = self.apps.get(name)
        if m is None:
            m = self.apps[name] = AppMetrics()
        return m

    def render(self, gauges: Mapping[str, AppGauges]) -> str:
        """The Prometheus text exposition of everything, per app: :data:`FAMILIES` in order."""
        scrape = self.scrape(gauges)
        out: list[str] = []
        for family in FAMILIES:
            out += _family_lines(family.name, family.kind, family.help, family.samples(scrape))
        return "\n".join(out) + "\n"

    def scrape(self, gauges: Mapping[str, AppGauges]) -> Scrape:
        """Every app's figures now, sorted by name, with the scrape-time ``gauges``."""
        apps = []
        for name in sorted(set(self.apps) | set(gauges)):
            g = gauges.get(name, AppGauges())
            apps.append(ScrapedApp(name, self.app(name), g, g.counters or Counters()))
        return Scrape(apps, self.http_responses)


#: One sample: name suffix (``_bucket``…), labels, value.
_Sample = tuple[str, Mapping[str, str], float]


@dataclass(frozen=True, slots=True)
class ScrapedApp:
    """One app's figures at scrape time."""

    name: str
    m: AppMetrics
    g: AppGauges
    c: Counters


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one scrape reads: each app's figures, and the API's responses."""

    apps: Sequence[ScrapedApp]
    http_responses: Counter[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family of ``/metrics``: its name, type, help text and samples."""

    name: str
    kind: str
    help: str
    samples: Callable[[Scrape], Iterable[_Sample]]


def _per_app(value: Callable[[ScrapedApp], float]) -> Callable[[Scrape], Iterable[_Sample]]:
    """One sample per app, labelled ``app``."""
    return lambda s: [("", {"app": a.name}, value(a)) for a in s.apps]


def _per_label(
    label: str, counts: Callable[[ScrapedApp], Counter[str]]
) -> Callable[[Scrape], Iterable[_Sample]]:
    """One sample per app and per key of its counter, labelled ``app`` and ``label``."""
    return lambda s: [
        ("", {"app": a.name, label: k}, v) for a in s.apps for k, v in sorted(counts(a).items())
    ]


def _paused(s: Scrape) -> Iterable[_Sample]:
    return [
        ("", {"app": a.name, "why": why}, 1 if a.g.paused == why else 0)
        for a in s.apps
        for why in PAUSE_KINDS
    ]


def _latency(s: Scrape) -> Iterable[_Sample]:
    for a in s.apps:
        h = a.m.latency
        for le, count in h.cumulative():
            yield ("_bucket", {"app": a.name, "le": le}, count)
        yield ("_sum", {"app": a.name}, h.sum)
        yield ("_count", {"app": a.name}, h.count)


def _queue_depth(s: Scrape) -> Iterable[_Sample]:
    return [
        ("", {"app": a.name, "state": state}, value)
        for a in s.apps
        for state, value in (
            ("queued", a.g.queued),
            ("scheduled", a.g.scheduled),
            ("inflight", a.g.inflight),
        )
    ]


def _http_responses(s: Scrape) -> Iterable[_Sample]:
    return [
        ("", {"route": route, "code": str(code)}, v)
        for (route, code), v in sorted(s.http_responses.items())
    ]


#: Every family of ``/metrics``, in the order it is rendered. A new metric is one more row.
FAMILIES: tuple[Family, ...] = (
    Family(
        "txapns_notifications_submitted_total",
        "counter",
        "Notifications accepted through the API and stored in the spool.",
        _per_app(lambda a: a.m.submitted),
    ),
    Family(
        "txapns_notifications_sent_total",
        "counter",
        "Notifications handed to the app's APNs client.",
        _per_app(lambda a: a.m.sent),
    ),
    Family(
        "txapns_notifications_accepted_total",
        "counter",
        "Notifications APNs accepted.",
        _per_app(lambda a: a.m.accepted),
    ),
    Family(
        "txapns_notifications_rejected_total",
        "counter",
        "Notifications rejected, by reason.",
        _per_label("reason", lambda a: a.m.rejected_by_reason),
    ),
    Family(
        "txapns_notifications_unknown_total",
        "counter",
        "Notifications whose delivery is unknown, by reason.",
        _per_label("reason", lambda a: a.m.unknown_by_reason),
    ),
    Family(
        "txapns_invalid_tokens_total",
        "counter",
        "Device tokens published as no longer valid.",
        _per_app(lambda a: a.m.invalid_tokens),
    ),
    Family(
        "txapns_invalid_tokens_by_kind_total",
        "counter",
        "Device tokens published as no longer valid, by kind of evidence (unregistered, "
        "bad_token, invalid_token, feedback).",
        _per_label("kind", lambda a: a.m.invalid_by_kind),
    ),
    Family(
        "txapns_tokens_held_back_total",
        "counter",
        "Tokens rejected as BadDeviceToken/InvalidToken and not published (a wrong "
        "environment is suspected).",
        _per_app(lambda a: a.m.tokens_held_back),
    ),
    Family(
        "txapns_app_pauses_total",
        "counter",
        "Times the app was paused, by why (unavailable, environment).",
        _per_label("why", lambda a: a.m.pauses),
    ),
    Family(
        "txapns_app_paused",
        "gauge",
        "1 while the app cannot send (its work stays in the spool), with why.",
        _paused,
    ),
    Family(
        "txapns_retries_total",
        "counter",
        "Writes after the first by the APNs client (retries and replays).",
        _per_app(lambda a: a.c.retried + a.c.replayed),
    ),
    Family(
        "txapns_resent_unknown_total",
        "counter",
        "Notifications whose outcome became unknown on a silent close or reset and that the "
        "APNs client re-sent (they may be delivered twice).",
        _per_app(lambda a: a.c.resent_unknown),
    ),
    Family(
        "txapns_requeued_total",
        "counter",
        "Notifications put back in the spool unsent.",
        _per_app(lambda a: a.m.requeued),
    ),
    Family(
        "txapns_resumed_maybe_duplicate_total",
        "counter",
        "Notifications resumed after a crash while in flight (may be delivered twice).",
        _per_app(lambda a: a.m.resumed_maybe_duplicate),
    ),
    Family(
        "txapns_may_duplicate_total",
        "counter",
        "Notifications finished after the APNs client re-sent them following an unknown "
        "outcome (may be delivered twice).",
        _per_app(lambda a: a.m.may_duplicate),
    ),
    Family(
        "txapns_delivery_latency_seconds",
        "histogram",
        "Seconds from handing a notification to the client to its outcome.",
        _latency,
    ),
    Family(
        "txapns_queue_depth",
        "gauge",
        "Notifications waiting in the service: queued, scheduled or in flight.",
        _queue_depth,
    ),
    Family(
        "txapns_client_pending",
        "gauge",
        "Notifications the APNs client holds (queued or in flight).",
        _per_app(lambda a: a.g.client_pending),
    ),
    Family(
        "txapns_client_window_high_water",
        "gauge",
        "Most notifications the APNs client had written and not yet confirmed at once.",
        _per_app(lambda a: a.c.window_high_water),
    ),
    Family(
        "txapns_connections_made_total",
        "counter",
        "Connections the APNs client made.",
        _per_app(lambda a: a.c.connections_made),
    ),
    Family(
        "txapns_connection_failures_total",
        "counter",
        "Connection attempts that failed.",
        _per_app(lambda a: a.c.connection_failures),
    ),
    Family(
        "txapns_reconnects_total",
        "counter",
        "Reconnections after a connection was lost.",
        _per_app(lambda a: a.c.reconnects),
    ),
    Family(
        "txapns_http_responses_total",
        "counter",
        "API responses by route and status code.",
        _http_responses,
    ),
)


def family_lines(
    name: str, kind: str, text: str, samples: Iterable[tuple[Mapping[str, str], float]]
) -> list[str]:
    """One metric family in the exposition format, for parts that render their own (e.g. the
    Redis spool's queue gauges)."""
    return _family_lines(name, kind, text, (("", labels, value) for labels, value in samples))


def _family_lines(name: str, kind: str, text: str, samples: Iterable[_Sample]) -> list[str]:
    lines = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    for suffix, labels, value in samples:
        lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")
    return lines


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))
