"""Outcomes nobody waits for join the next submission's transaction (issue 11): one
connection's asynchronous requests then cost one fsync each, not two (the job's, then its
outcome's, which the next job had to wait behind). A synchronous request's outcomes are
written at once."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txapns.service.engine import Engine, EngineApp, Template
from txapns.service.spool import JobView, Spool, SpoolStore, inline_runner
from txapns.service.testing import FakeSender, accept

from .helpers import temp_dir

DELAY = 0.02


class OutcomeBatchingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(self.store.close)
        self.spool = Spool(self.store, self.clock, inline_runner)
        self.sender = FakeSender(auto=accept, clock=self.clock)  # answers on the next turn
        self.engine = Engine(
            {"a": EngineApp(self.sender, bundle_id="com.example.a")},
            self.spool,
            self.clock,
            purge_interval=0,
            outcome_delay=DELAY,
        )
        self.engine.start()
        self.turns()

    def turns(self) -> None:
        for _ in range(5):
            self.clock.advance(0)

    def submit(self, token: str, *, async_: bool = True) -> str:
        batch = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), [token])
        d = self.engine.submit("a", batch, async_=async_)
        self.turns()
        return self.successResultOf(d).job_id

    def states(self) -> dict[str, int]:
        return {state: n for (_, state), n in self.store.counts().items()}

    def test_an_outcome_joins_the_next_submission(self) -> None:
        before = self.spool.batches
        self.submit("aa" * 32)
        self.assertEqual(len(self.sender.sent), 1)
        self.assertEqual(self.states(), {"inflight": 1})  # answered, not yet written
        self.assertEqual(self.spool.batches - before, 1)
        self.submit("bb" * 32)
        # The second job and the first outcome: one transaction.
        self.assertEqual(self.spool.batches - before, 2)
        self.assertEqual(self.states(), {"accepted": 1, "inflight": 1})
        self.clock.advance(DELAY)  # nothing more comes: written on its own
        self.turns()
        self.assertEqual(self.spool.batches - before, 3)
        self.assertEqual(self.states(), {"accepted": 2})

    def test_an_outcome_someone_waits_for_is_written_at_once(self) -> None:
        self.submit("aa" * 32)  # an asynchronous one waiting for company
        batch = self.engine.prepare("a", Template(payload={"aps": {"alert": "x"}}), ["cc" * 32])
        waiting: list[Deferred[JobView]] = []
        # As the API does: wait for the job as soon as it is stored.
        self.engine.submit("a", batch).addCallback(
            lambda accepted: waiting.append(self.engine.wait(accepted.job_id, fresh=True))
        )
        self.turns()  # stored, sent, answered: no clock time passes
        view = self.successResultOf(waiting[0])
        self.assertTrue(view.done)
        self.assertEqual(self.states(), {"accepted": 2})  # the waiting one went along

    def test_the_stop_writes_what_waits(self) -> None:
        self.submit("aa" * 32)
        self.turns()
        stopped = self.engine.stop()
        self.turns()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
