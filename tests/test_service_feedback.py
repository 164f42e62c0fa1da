"""The service reads the binary feedback service: the poller on a Clock and in-memory
connections, its place in the engine's start and stop, and the running ``twistd apns --fake``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txapns.service.config import AppConfig, CertificateCredentials, ServiceConfig
from txapns.service.engine import Engine, EngineApp
from txapns.service.feedback import FeedbackPolling, feedback_pollers
from txapns.service.spool import Spool, SpoolStore, inline_runner
from txapns.service.testing import FakeSender
from txapns.service.wiring import EngineService
from txapns.tap import Options, makeService
from txapns.testing.binary_gateway import FakeFeedbackService, encode_feedback_tuple
from txapns.testing.embedded import FAKE_APP, EmbeddedAPNs
from txapns.testing.memory import MemoryEndpoint

from .helpers import deferred_test, metric, sleep, temp_dir
from .helpers_binary import ManualEndpoint
from .helpers_running import KEY, ApiClient

TUPLE = 4 + 2 + 32  # bytes of one feedback tuple with a 32-byte token


def tok(i: int) -> bytes:
    return bytes([i]) * 32


class Sink:
    """Records what the poller hands over; ``hold`` keeps the recording pending."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, float | None]]]] = []
        self.hold = False
        self.pending: list[Deferred[None]] = []
        self.error: Exception | None = None

    def __call__(self, app: str, entries: Any) -> Deferred[None]:
        self.calls.append((app, list(entries)))
        if self.error is not None:
            return fail(self.error)
        if self.hold:
            d: Deferred[None] = Deferred()
            self.pending.append(d)
            return d
        return succeed(None)


class PollingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.sink = Sink()

    def memory(self, service: FakeFeedbackService, **kw: Any) -> tuple[FeedbackPolling, Any]:
        endpoint = MemoryEndpoint(service, self.clock)
        kw.setdefault("interval", 60)
        return FeedbackPolling(self.clock, "legacy", endpoint, **kw), endpoint

    def test_reads_at_start_then_every_interval_and_hands_over_each_read(self) -> None:
        service = FakeFeedbackService(self.clock)
        service.add(tok(1), 1_700_000_001)
        service.add(tok(2), 1_700_000_002)
        poller, endpoint = self.memory(service)
        poller.start(self.sink)
        endpoint.pump()
        self.assertEqual(
            self.sink.calls,
            [("legacy", [(tok(1).hex(), 1_700_000_001.0), (tok(2).hex(), 1_700_000_002.0)])],
        )
        self.assertEqual((poller.polls, poller.tokens, poller.failures), (1, 2, 0))
        self.assertEqual(poller.last_poll, 1000)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 1060)
        service.add(tok(3), 3)
        self.clock.advance(59)
        endpoint.pump()
        self.assertEqual(service.connections, 1)
        self.clock.advance(1)
        endpoint.pump()
        self.assertEqual(service.connections, 2)
        self.assertEqual(self.sink.calls[-1], ("legacy", [(tok(3).hex(), 3.0)]))
        # An empty read records nothing.
        self.clock.advance(60)
        endpoint.pump()
        self.assertEqual((service.connections, len(self.sink.calls)), (3, 2))
        self.assertEqual(poller.health()["polls"], 3)
        self.successResultOf(poller.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(600)
        self.assertEqual(service.connections, 3)

    def test_never_overlaps_and_counts_the_interval_from_the_recording(self) -> None:
        endpoint = ManualEndpoint()
        poller = FeedbackPolling(self.clock, "legacy", endpoint, interval=10, timeout=1000)
        self.sink.hold = True
        poller.start(self.sink)
        self.clock.advance(35)  # a slow read: several intervals
        self.assertEqual(len(endpoint.attempts), 1)
        self.assertTrue(poller.polling)
        endpoint.serve(0, encode_feedback_tuple(5, tok(5)))
        self.assertEqual(len(self.sink.calls), 1)
        self.clock.advance(20)  # the recording is slow too: still no second read
        self.assertEqual(len(endpoint.attempts), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.sink.pending[0].callback(None)
        self.assertFalse(poller.polling)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 1000 + 35 + 20 + 10)
        self.clock.advance(10)
        self.assertEqual(len(endpoint.attempts), 2)
        self.assertEqual(poller.tokens, 1)

    def test_a_failed_read_keeps_what_came_before_and_the_next_read_happens(self) -> None:
        endpoint = ManualEndpoint()
        poller = FeedbackPolling(self.clock, "legacy", endpoint, interval=10)
        poller.start(self.sink)
        # One good tuple, then a tuple with a zero-length token: a protocol error.
        endpoint.serve(0, encode_feedback_tuple(7, tok(7)) + b"\x00\x00\x00\x01\x00\x00")
        self.assertEqual(self.sink.calls, [("legacy", [(tok(7).hex(), 7.0)])])
        self.assertEqual(poller.failures, 1)
        self.assertIsNotNone(poller.last_error)
        self.clock.advance(10)
        self.assertEqual(len(endpoint.attempts), 2)
        endpoint.serve(1, b"")
        self.assertIsNone(poller.last_error)
        self.successResultOf(poller.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_recording_that_fails_is_logged_and_polling_goes_on(self) -> None:
        service = FakeFeedbackService(self.clock)
        service.add(tok(1), 1)
        poller, endpoint = self.memory(service, interval=10)
        self.sink.error = RuntimeError("spool closed")
        poller.start(self.sink)
        endpoint.pump()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(poller.tokens, 0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(poller.stop())

    def test_a_read_that_hangs_is_cut_and_what_it_read_is_recorded(self) -> None:
        service = FakeFeedbackService(self.clock)
        service.close_after_serving = False  # writes its tuples, then never closes
        service.add(tok(1), 1)
        poller, endpoint = self.memory(service, interval=600, timeout=30)
        poller.start(self.sink)
        endpoint.pump()
        self.assertEqual(self.sink.calls, [])
        self.clock.advance(30)
        endpoint.pump()
        self.assertEqual(self.sink.calls, [("legacy", [(tok(1).hex(), 1.0)])])
        self.assertFalse(poller.polling)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 1000 + 30 + 600)
        self.successResultOf(poller.stop())

    def test_stop_cancels_a_connection_attempt_and_every_timer(self) -> None:
        endpoint = ManualEndpoint()
        poller = FeedbackPolling(self.clock, "legacy", endpoint, interval=10)
        poller.start(self.sink)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the read timeout
        self.successResultOf(poller.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sink.calls, [])
        self.clock.advance(100)
        self.assertEqual(len(endpoint.attempts), 1)

    def test_stop_waits_for_a_read_in_progress_and_its_recording(self) -> None:
        service = FakeFeedbackService(
            self.clock, split_writes=True, chunk_size=TUPLE, split_interval=1
        )
        for i in range(3):
            service.add(tok(i), i)
        poller, endpoint = self.memory(service)
        poller.start(self.sink)
        endpoint.pump()
        stopped = poller.stop()
        self.assertNoResult(stopped)
        for _ in range(2):
            self.clock.advance(1)
            endpoint.pump()
        self.successResultOf(stopped)
        self.assertEqual([len(entries) for _, entries in self.sink.calls], [3])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_waits_for_the_recording_of_a_finished_read(self) -> None:
        service = FakeFeedbackService(self.clock)
        service.add(tok(1), 1)
        poller, endpoint = self.memory(service)
        self.sink.hold = True
        poller.start(self.sink)
        endpoint.pump()
        stopped = poller.stop()
        self.assertNoResult(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing to cut any more
        self.sink.pending[0].callback(None)
        self.successResultOf(stopped)
        self.assertEqual(poller.tokens, 1)

    def test_stop_cuts_a_read_that_does_not_end(self) -> None:
        service = FakeFeedbackService(self.clock)
        service.close_after_serving = False
        service.add(tok(1), 1)
        poller, endpoint = self.memory(service, stop_timeout=5)
        poller.start(self.sink)
        endpoint.pump()
        stopped = poller.stop()
        self.clock.advance(5)
        endpoint.pump()
        self.successResultOf(stopped)
        self.assertEqual(self.sink.calls, [("legacy", [(tok(1).hex(), 1.0)])])
        self.assertEqual(self.clock.getDelayedCalls(), [])


def binary_app(name: str = "legacy") -> AppConfig:
    return AppConfig(
        name, "com.example.legacy", "sandbox", "binary", CertificateCredentials(Path("c.pem"))
    )


class PollersFromConfigTests(SynchronousTestCase):
    def test_one_poller_per_binary_app_unless_disabled(self) -> None:
        from txapns.service.config import TokenCredentials

        h2 = AppConfig(
            "shop",
            "com.example.shop",
            "sandbox",
            "http2",
            TokenCredentials(Path("AuthKey_ABCDE12345.p8"), "ABCDE12345", "TEAM012345"),
        )
        directory = temp_dir(self)
        from txapns.testing.pki import make_test_pki

        files = make_test_pki("com.example.legacy").write(directory)
        legacy = AppConfig(
            "legacy",
            "com.example.legacy",
            "sandbox",
            "binary",
            CertificateCredentials(Path(files["client_cert"]), Path(files["client_key"])),
        )
        clock = Clock()
        config = ServiceConfig(apps=(h2, legacy), feedback_interval=120)
        pollers = feedback_pollers(config, clock)
        self.assertEqual(list(pollers), ["legacy"])
        self.assertEqual(pollers["legacy"].interval, 120)
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing happens before start
        off = ServiceConfig(apps=(h2, legacy), feedback_interval=0)
        self.assertEqual(feedback_pollers(off, clock), {})


class EngineServiceTests(SynchronousTestCase):
    """The pollers start with the engine, and stop before it closes the spool."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(2_000_000)
        self.path = temp_dir(self) / "spool.db"
        self.store = SpoolStore(self.path)
        self.addCleanup(self.store.close)
        self.engine = Engine(
            {"legacy": EngineApp(FakeSender(), bundle_id="com.example.legacy", protocol="binary")},
            Spool(self.store, self.clock, inline_runner),
            self.clock,
            purge_interval=0,
        )

    def test_tokens_read_during_the_stop_reach_the_spool_before_it_closes(self) -> None:
        feedback = FakeFeedbackService(
            self.clock, split_writes=True, chunk_size=TUPLE, split_interval=1
        )
        for i in range(1, 4):
            feedback.add(tok(i), 1_700_000_000 + i)
        endpoint = MemoryEndpoint(feedback, self.clock)
        poller = FeedbackPolling(self.clock, "legacy", endpoint, interval=3600)
        service = EngineService(self.engine, feedback=[poller])
        service.startService()
        self.clock.advance(0)
        self.assertTrue(poller.polling)
        endpoint.pump()  # the first tuple is read; the others come a second apart
        stopped = service.stopService()
        self.assertEqual(self.engine.state, "running")  # waits for the read first
        for _ in range(2):
            self.clock.advance(1)
            endpoint.pump()
        for _ in range(3):
            self.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(self.engine.state, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.engine.metrics.app("legacy").invalid_tokens, 3)
        reopened = SpoolStore(self.path)
        self.addCleanup(reopened.close)
        rows = reopened.invalid_tokens("legacy")
        self.assertEqual(
            [(t.token, t.timestamp, t.source) for t in rows],
            [(tok(i).hex(), 1_700_000_000.0 + i, "feedback") for i in range(1, 4)],
        )


class RunningFeedbackTests(TestCase):
    """``twistd apns --fake`` (binary) reads its embedded fake feedback service."""

    timeout = 30

    @deferred_test
    async def test_dead_tokens_from_the_feedback_service_reach_the_feed(self) -> None:
        from twisted.internet import reactor

        directory = temp_dir(self)
        self.patch(tempfile, "tempdir", str(directory))
        key_file = directory / "api.key"
        key_file.write_bytes(KEY + b"\n")
        options = Options()
        options.parseOptions(
            [
                "--fake",
                "--fake-protocol",
                "binary",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--api-key-file",
                str(key_file),
            ]
        )
        service = makeService(options)
        assert isinstance(service, MultiService)
        children = list(IServiceCollection(service))
        fake = next(s for s in children if isinstance(s, EmbeddedAPNs))
        engine_service = next(s for s in children if isinstance(s, EngineService))
        listener = next(s for s in children if hasattr(s, "_waitingForPort"))
        (poller,) = engine_service.feedback
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        # The first read happens at start, once connected: the fake serves it this tuple.
        dead = "dd" * 32
        fake.feedback.add(bytes.fromhex(dead), 1_700_000_000)
        port = await listener._waitingForPort
        await engine_service.started
        api = ApiClient(reactor, f"http://127.0.0.1:{port.getHost().port}", KEY)
        self.addCleanup(api.close)
        path = f"/v1/apps/{FAKE_APP}/invalid-tokens"
        for _ in range(200):
            feed = (await api.call("GET", path)).json
            if feed["tokens"]:
                break
            await sleep(reactor, 0.05)
        self.assertEqual(
            [(t["token"], t["source"], t["timestamp"]) for t in feed["tokens"]],
            [(dead, "feedback", "2023-11-14T22:13:20Z")],
        )
        self.assertEqual(fake.feedback.tuples, [])
        health = (await api.call("GET", "/healthz")).json["apps"][FAKE_APP]
        self.assertEqual(health["feedback"]["tokens"], 1)
        self.assertEqual(health["feedback"]["failures"], 0)
        self.assertEqual(health["client"]["protocol"], "binary")
        text = (await api.call("GET", "/metrics")).raw.decode()
        self.assertEqual(metric(text, "txapns_invalid_tokens_total", app=FAKE_APP), 1)
        await service.stopService()
        self.assertFalse(poller._next.armed)
        self.assertFalse(poller.polling)
