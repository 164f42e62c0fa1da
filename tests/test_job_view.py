"""A big job's view keeps the reactor free: read on the spool's thread, encoded a share per
reactor turn (``benchmarks/job_view.py`` measures both)."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txapns._twisted import in_turns
from txapns.service import api as api_module
from txapns.service import redis_spool
from txapns.service import spool as spool_module
from txapns.service.api import _ENCODER, Api, ApiRequest, Response, encode_job, job_json
from txapns.service.spool import (
    JobView,
    NewJob,
    Spool,
    SpoolClosedError,
    SpoolStore,
    inline_runner,
)

from .helpers import TurnClock, temp_dir
from .helpers_service import accepting_engine, note, outcome

KEY = b"k" * 32


class SpoolReadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(self.store.close)
        self.ran: list[Callable[[], object]] = []

        def recording(fn: Callable[[], Any]) -> Deferred[Any]:
            self.ran.append(fn)
            return inline_runner(fn)

        self.spool = Spool(self.store, self.clock, recording)
        self.patch(spool_module, "VIEW_ROWS_HERE", 3)

    def job(self, n: int) -> str:
        stored = self.store.add_jobs([NewJob("a", [note(i) for i in range(n)], 1.0)])[0]
        self.store.record_outcomes([outcome(stored.ids[0], stored.job_id, 0)], now=2.0)
        self.store_view = self.store.job(stored.job_id)
        return stored.job_id

    def read(self, job_id: str, **kw: bool) -> JobView | None:
        d = self.spool.job(job_id, **kw)
        self.clock.advance(0)  # the first read's batch
        self.clock.advance(0)  # the whole view's, if it takes one
        view: JobView | None = self.successResultOf(d)
        return view

    def test_a_small_view_is_read_here(self) -> None:
        job_id = self.job(3)
        self.assertEqual(self.read(job_id), self.store.job(job_id))
        self.assertEqual(self.ran, [])

    def test_a_big_view_is_read_on_the_spool_thread(self) -> None:
        job_id = self.job(4)
        view = self.read(job_id)
        assert view is not None
        self.assertEqual(view, self.store.job(job_id))
        self.assertEqual(len(view.results), 4)
        self.assertEqual(view.counts["accepted"], 1)
        self.assertEqual(len(self.ran), 1)  # the whole batch, on the runner

    def test_a_durable_read_of_a_big_view_syncs_once(self) -> None:
        job_id = self.job(4)
        self.spool.inline_sync_limit = 0  # every fsync on the runner: counted in ran
        view = self.read(job_id, durable=True)
        self.assertEqual(view, self.store.job(job_id))
        # The first read's fsync, then the long read, which promises nothing more.
        self.assertEqual(self.ran[0], self.store.sync)
        self.assertEqual(len(self.ran), 2)

    def test_a_big_view_asked_before_a_close_is_still_read(self) -> None:
        job_id = self.job(4)
        d = self.spool.job(job_id)
        closed = self.spool.close()
        for _ in range(3):  # the first read and the barrier; the view; the store's close
            self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), self.store_view)
        self.assertIsNone(self.successResultOf(closed))
        self.assertTrue(self.store.closed)
        self.failureResultOf(self.spool.job(job_id), SpoolClosedError)

    def test_an_unknown_job_is_none_without_reading_more(self) -> None:
        self.assertIsNone(self.read("nope"))
        self.assertEqual(self.ran, [])

    def test_the_store_says_only_how_many_past_the_limit(self) -> None:
        job_id = self.job(4)
        self.assertEqual(self.store.small_job(job_id, max_rows=3), 4)
        self.assertEqual(self.store.small_job(job_id, max_rows=4), self.store.job(job_id))
        self.assertIsNone(self.store.small_job("nope", max_rows=3))


class EncodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = TurnClock()
        self.store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(self.store.close)
        self.patch(api_module, "RESULTS_PER_TURN", 2)

    def view(self, n: int) -> JobView:
        # send_at: the results' optional member, their last.
        stored = self.store.add_jobs([NewJob("a", [note(i) for i in range(n)], 1.0, 5.0)])[0]
        records = [
            outcome(stored.ids[0], stored.job_id, 0, status=200, apns_id="A" * 8),
            outcome(stored.ids[1], stored.job_id, 1, "rejected", status=400, reason="Bad\u00e9"),
        ]
        self.store.record_outcomes(records, now=2.0)
        self.store.recover(now=3.0)
        view = self.store.job(stored.job_id)
        assert view is not None
        return view

    def test_a_view_of_many_results_is_encoded_a_share_a_turn(self) -> None:
        view = self.view(5)
        d = encode_job(view, self.clock)
        assert isinstance(d, Deferred)
        self.assertNoResult(d)  # 2 of 5 encoded
        self.clock.turn()
        self.assertNoResult(d)  # 4
        self.clock.turn()
        text = self.successResultOf(d)
        self.assertEqual(text, _ENCODER.encode(job_json(view)))
        self.assertEqual(json.loads(text)["results"][-1]["send_at"], "1970-01-01T00:00:05Z")

    def test_an_exact_share_ends_without_an_empty_chunk(self) -> None:
        view = self.view(4)
        d = encode_job(view, self.clock)
        assert isinstance(d, Deferred)
        self.clock.turn()
        self.assertEqual(self.successResultOf(d), _ENCODER.encode(job_json(view)))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_small_view_is_encoded_at_once(self) -> None:
        view = self.view(2)
        self.assertEqual(encode_job(view, self.clock), _ENCODER.encode(job_json(view)))

    def test_a_failure_midway_errbacks(self) -> None:
        view = self.view(5)
        calls = [0]
        real = api_module._result_json

        def failing(r: Any) -> dict[str, object]:
            calls[0] += 1
            if calls[0] == 3:
                raise ValueError("boom")
            return real(r)

        self.patch(api_module, "_result_json", failing)
        d = encode_job(view, self.clock)
        assert isinstance(d, Deferred)
        self.clock.turn()
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class InTurnsTests(SynchronousTestCase):
    def test_cancelled_midway_no_slice_runs_and_nothing_is_left(self) -> None:
        clock = TurnClock()
        ran: list[tuple[int, int]] = []
        d = in_turns(clock, 5, 2, lambda start, stop: ran.append((start, stop)))
        clock.turn()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(1)
        self.assertEqual(ran, [(0, 2), (2, 4)])

    def test_slices_cover_the_range_once(self) -> None:
        clock = TurnClock()
        ran: list[tuple[int, int]] = []
        d = in_turns(clock, 5, 2, lambda start, stop: ran.append((start, stop)))
        while clock.getDelayedCalls():
            clock.turn()
        self.successResultOf(d)
        self.assertEqual(ran, [(0, 2), (2, 4), (4, 5)])


class ApiViewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.engine, self.store, _ = accepting_engine(self, self.clock)
        self.api = Api(self.engine, KEY)
        self.patch(api_module, "RESULTS_PER_TURN", 2)
        self.patch(spool_module, "VIEW_ROWS_HERE", 3)  # read in two batches

    def answer(self, method: str, path: str, body: object = None) -> Response:
        header = {b"authorization": b"Bearer " + KEY}.get
        raw = b"" if body is None else json.dumps(body).encode()
        _, answer = self.api.handle(ApiRequest(method, path.encode(), b"", header, raw, len(raw)))
        for _ in range(10):
            self.clock.advance(0)
        if isinstance(answer, Deferred):
            response: Response = self.successResultOf(answer)
            return response
        return answer

    def test_big_views_answer_the_same_json(self) -> None:
        tokens = [f"{i:064x}" for i in range(5)]
        sync = self.answer("POST", "/v1/apps/a/notifications", {"tokens": tokens, "alert": "x"})
        self.assertEqual(sync.code, 200)
        body = json.loads(sync.encoded())
        view = self.store.job(body["job_id"])
        assert view is not None
        self.assertEqual(body, json.loads(_ENCODER.encode(job_json(view))))
        self.assertEqual(body["counts"]["accepted"], 5)
        got = self.answer("GET", f"/v1/jobs/{body['job_id']}")
        self.assertEqual((got.code, got.encoded()), (200, sync.encoded()))
        self.assertEqual(got.content_type, "application/json")

    def test_the_engine_clock_is_the_default(self) -> None:
        self.assertIs(self.api._clock, self.clock)
        other = Clock()
        self.assertIs(Api(self.engine, KEY, clock=other)._clock, other)


class RedisParseTests(SynchronousTestCase):
    """The Redis spool's reply for a view (one script's, so one moment's) is parsed a share a
    turn; the view is the one parsed at once."""

    def reply(self, n: int) -> list[list[str]]:
        meta = ["tokens", ",".join(f"{i:064x}" for i in range(n)), "send_at", "",
                "created", "1.0", "app", "a", "status", "pending", "async", "1",
                "total", str(n), "finished", ""]  # fmt: skip
        accepted = ["accepted", 200, None, "A" * 8, None, 1, 0, 2.0]
        rejected = ["rejected", 400, "BadDeviceToken", None, None, 1, 1, 2.5]
        outcomes = ["0", json.dumps(accepted), "3", json.dumps(rejected)]
        return [meta, outcomes, ["3", "1"]]

    def parse(self, n: int, per_turn: int) -> tuple[TurnClock, JobView | Deferred[Any] | None]:
        self.patch(redis_spool, "VIEW_RESULTS_PER_TURN", per_turn)
        clock = TurnClock()
        return clock, redis_spool.RedisSpool._job_view(
            SimpleNamespace(_clock=clock),  # type: ignore[arg-type]
            self.reply(n),
            "j",
        )

    def test_a_big_reply_is_parsed_a_share_a_turn(self) -> None:
        _, whole = self.parse(5, 5)
        assert isinstance(whole, JobView)
        self.assertEqual(whole.counts, {"queued": 3, "inflight": 0, "accepted": 1,
                                        "rejected": 1, "unknown": 0})  # fmt: skip
        self.assertEqual([r.resumed for r in whole.results], [0, 0, 0, 1, 0])
        clock, d = self.parse(5, 2)
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        clock.turn()
        self.assertNoResult(d)
        clock.turn()
        self.assertEqual(self.successResultOf(d), whole)

    def test_no_job_is_none(self) -> None:
        self.assertIsNone(
            redis_spool.RedisSpool._job_view(None, [[], [], []], "j")  # type: ignore[arg-type]
        )
