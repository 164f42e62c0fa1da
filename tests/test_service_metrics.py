"""Prometheus exposition of the service metrics, and the wiring of config → engine → service."""

from __future__ import annotations

import dataclasses
import re

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txapns.core import Counters, Notification, Outcome, Result
from txapns.service.config import AppConfig, ServiceConfig, TokenCredentials
from txapns.service.engine import Accepted, Engine, JobView, engine_apps
from txapns.service.metrics import COUNTER_METRICS, AppGauges, Histogram, ServiceMetrics
from txapns.service.spool import Spool, SpoolStore, inline_runner
from txapns.service.testing import FakeSender, accept
from txapns.service.wiring import EngineService, build_engine, client_health, limits_from

from .helpers import temp_dir
from .helpers_service import app_config

LINE = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? -?[0-9.e+]+$')


class MetricsTests(SynchronousTestCase):
    def test_histogram(self) -> None:
        h = Histogram((0.1, 1.0))
        for v in (0.05, 0.1, 0.5, 3.0):
            h.observe(v)
        self.assertEqual(h.cumulative(), [("0.1", 2), ("1", 3), ("+Inf", 4)])
        self.assertEqual((h.count, h.sum), (4, 3.65))
        self.assertRaises(ValueError, Histogram, (1.0, 0.5))

    def test_render(self) -> None:
        m = ServiceMetrics()
        n = Notification.create("ab" * 32, {"aps": {"alert": "x"}})
        a = m.app("shop")
        a.submitted = 3
        a.record(Result(n, Outcome.ACCEPTED, 200), 0.02)
        a.record(Result(n, Outcome.REJECTED, 410, "Unregistered"), 0.2)
        a.record(Result(n, Outcome.UNKNOWN, None, 'odd "reason"\n'), None)
        a.invalid_by_kind["unregistered"] += 1  # the engine counts what it publishes
        a.tokens_held_back = 7
        a.pauses["environment"] += 1
        m.http_responses[("notifications", 200)] += 2
        counters = Counters(retried=2, replayed=1, connections_made=4)
        text = m.render(
            {
                "shop": AppGauges(queued=5, inflight=2, counters=counters),
                "b": AppGauges(paused="environment"),
            }
        )
        lines = text.splitlines()
        for line in lines:
            if not line.startswith("#"):
                self.assertRegex(line, LINE)
        self.assertIn('txapns_notifications_submitted_total{app="shop"} 3', lines)
        self.assertIn('txapns_notifications_submitted_total{app="b"} 0', lines)
        self.assertIn('txapns_notifications_accepted_total{app="shop"} 1', lines)
        self.assertIn(
            'txapns_notifications_rejected_total{app="shop",reason="Unregistered"} 1', lines
        )
        self.assertIn(
            'txapns_notifications_unknown_total{app="shop",reason="odd \\"reason\\"\\n"} 1', lines
        )
        self.assertIn('txapns_invalid_tokens_total{app="shop"} 1', lines)
        self.assertIn(
            'txapns_invalid_tokens_by_kind_total{app="shop",kind="unregistered"} 1', lines
        )
        self.assertIn('txapns_tokens_held_back_total{app="shop"} 7', lines)
        self.assertIn('txapns_app_pauses_total{app="shop",why="environment"} 1', lines)
        self.assertIn('txapns_app_paused{app="b",why="environment"} 1', lines)
        self.assertIn('txapns_app_paused{app="b",why="offline"} 0', lines)
        self.assertIn('txapns_retries_total{app="shop"} 3', lines)
        self.assertIn('txapns_connections_made_total{app="shop"} 4', lines)
        self.assertIn('txapns_queue_depth{app="shop",state="queued"} 5', lines)
        self.assertIn('txapns_delivery_latency_seconds_bucket{app="shop",le="0.025"} 1', lines)
        self.assertIn('txapns_delivery_latency_seconds_bucket{app="shop",le="+Inf"} 2', lines)
        self.assertIn('txapns_delivery_latency_seconds_count{app="shop"} 2', lines)
        self.assertIn('txapns_http_responses_total{route="notifications",code="200"} 2', lines)
        self.assertIn("# TYPE txapns_delivery_latency_seconds histogram", lines)
        self.assertTrue(text.endswith("\n"))


class CounterExportTests(SynchronousTestCase):
    def test_every_client_counter_is_exported(self) -> None:
        fields = {f.name for f in dataclasses.fields(Counters)}
        self.assertEqual(set(COUNTER_METRICS), fields)  # a new counter must be placed here
        text = ServiceMetrics().render({"shop": AppGauges()})
        for name in COUNTER_METRICS.values():
            self.assertIn(f"# TYPE {name} ", text)

    def test_resent_unknown_and_window_high_water(self) -> None:
        counters = Counters(resent_unknown=5, window_high_water=70, retried=1, replayed=2)
        lines = ServiceMetrics().render({"shop": AppGauges(counters=counters)}).splitlines()
        self.assertIn("# TYPE txapns_resent_unknown_total counter", lines)
        self.assertIn('txapns_resent_unknown_total{app="shop"} 5', lines)
        self.assertIn("# TYPE txapns_client_window_high_water gauge", lines)
        self.assertIn('txapns_client_window_high_water{app="shop"} 70', lines)
        self.assertIn('txapns_retries_total{app="shop"} 3', lines)


class HealthWiringTests(SynchronousTestCase):
    """``client_health``: the Senders' own state under ``client`` in ``/healthz``."""

    def test_sender_health_is_reported_under_client(self) -> None:
        sender = FakeSender()
        sender.health = lambda: {"protocol": "http2", "breaker": "open", "queued": 9}  # type: ignore[attr-defined]
        plain = FakeSender()
        health = client_health({"shop": sender, "plain": plain})
        self.assertEqual(list(health), ["shop"])  # nothing to add for a Sender without health
        config = ServiceConfig(apps=(app_config("shop"), app_config("plain")))
        apps = engine_apps(config, {"shop": sender, "plain": plain}, health)
        clock = Clock()
        store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(store.close)
        engine = Engine(apps, Spool(store, clock, inline_runner), clock, purge_interval=0)
        view = engine.health()["apps"]
        assert isinstance(view, dict)
        self.assertEqual(
            view["shop"]["client"], {"protocol": "http2", "breaker": "open", "queued": 9}
        )
        self.assertEqual(view["shop"]["queued"], 0)  # the engine's queue, not the client's
        self.assertNotIn("client", view["plain"])

    def test_a_failing_part_is_reported_not_raised(self) -> None:
        sender = FakeSender()

        def broken() -> dict[str, object]:
            raise KeyError("gone")

        sender.health = broken  # type: ignore[attr-defined]
        report = client_health({"shop": sender})["shop"]()
        self.assertEqual(report, {"client": {"error": "KeyError: 'gone'"}})
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_binary_client_health(self) -> None:
        from txapns.binary import BinaryClient

        from .helpers_binary import ManualEndpoint

        client = BinaryClient(Clock(), ManualEndpoint(), connections=2)
        report = client_health({"legacy": client})["legacy"]()
        self.assertEqual(
            report["client"],
            {
                "protocol": "binary",
                "connections": 0,
                "connections_total": 2,
                "connecting": 0,
                "pending": 0,
                "tls_failures": 0,
                "unavailable": None,
                "stopped": False,
            },
        )


class WiringTests(TestCase):
    """build_engine + EngineService with the real reactor and a real spool thread."""

    def test_start_submit_stop(self) -> Deferred[None]:
        from twisted.internet import reactor

        d = temp_dir(self)
        config = ServiceConfig(
            apps=(
                AppConfig(
                    name="shop",
                    bundle_id="com.example.shop",
                    environment="sandbox",
                    protocol="http2",
                    credentials=TokenCredentials(d / "AuthKey_ABC1234567.p8", "ABC1234567", "T1"),
                ),
            ),
            spool=d / "spool.db",
            max_recipients=7,
        )
        self.assertEqual(limits_from(config).max_recipients, 7)
        sender = FakeSender(auto=accept, clock=reactor)  # type: ignore[arg-type]
        self.assertRaises(ValueError, build_engine, config, {}, reactor)
        engine, pool = build_engine(config, {"shop": sender}, reactor)  # type: ignore[arg-type]
        service = EngineService(engine, pool)
        service.startService()
        self.assertTrue(pool.started)
        ns = engine.prepare("shop", engine_template(), ["ab" * 32])

        def submitted(accepted: Accepted) -> Deferred[JobView]:
            return engine.wait(accepted.job_id)

        def finished(view: JobView) -> Deferred[None]:
            self.assertEqual(view.counts["accepted"], 1)
            self.assertEqual(sender.sent[0].topic, "com.example.shop")
            return service.stopService()

        def stopped(_: None) -> None:
            self.assertEqual(engine.state, "stopped")
            self.assertTrue(engine.spool.store.closed)
            self.assertFalse(pool.started)
            self.assertEqual(sender.stop_calls, 1)

        assert service.started is not None
        return (
            service.started.addCallback(lambda _: engine.submit("shop", ns))  # once recovered
            .addCallback(submitted)
            .addCallback(finished)
            .addCallback(stopped)
        )


def engine_template():  # type: ignore[no-untyped-def]
    from txapns.service.engine import Template

    return Template(payload={"aps": {"alert": "hi"}})
