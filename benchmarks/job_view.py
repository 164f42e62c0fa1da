"""What reading a big job's view costs the rest of the service: ``GET /v1/jobs/{id}`` of a
job of N notifications, and how long the reactor was kept from everything else meanwhile.

In one process, on the real reactor: a SQLite spool on its thread (as the service runs it),
the engine with an accepting fake sender, the API. A job of N notifications is stored and
answered; then the API answers its view ``--rounds`` times, encoded to bytes as the HTTP
layers do, while a probe runs every millisecond on the reactor. Printed per size: the
answer's time, and the probe's longest gap (the longest the reactor was busy with one thing:
every request, every send and every outcome waited that long).

    python benchmarks/job_view.py [--sizes 1000,10000,100000] [--rounds 5] [--no-gc]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.python.threadpool import ThreadPool

from txapns.service.api import Api, ApiRequest, Limits, Response
from txapns.service.engine import Engine, EngineApp, Template
from txapns.service.spool import Spool, SpoolStore, thread_runner
from txapns.testing.sender import FakeSender, accept

KEY = b"k" * 32


class Probe:
    """The longest gap between two runs of a 1 ms LoopingCall."""

    def __init__(self, reactor: Any) -> None:
        self.longest = 0.0
        self._last = time.perf_counter()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self._loop.start(0.001)

    def stop(self) -> None:
        self._loop.stop()


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def run(reactor: Any, sizes: list[int], rounds: int) -> None:
    pool = ThreadPool(minthreads=1, maxthreads=1, name="spool")
    pool.start()
    work = Path(tempfile.mkdtemp(prefix="txapns-job-view-"))
    store = SpoolStore(work / "spool.sqlite3")
    spool = Spool(store, reactor, thread_runner(reactor, pool))
    sender = FakeSender(auto=accept, clock=reactor)
    engine = Engine({"a": EngineApp(sender, bundle_id="com.example.a")}, spool, reactor)
    api = Api(engine, KEY, Limits(max_recipients=max(sizes)))
    await engine.start()
    header = {b"authorization": b"Bearer " + KEY}.get
    try:
        for n in sizes:
            notes = engine.prepare(
                "a", Template(payload={"aps": {"alert": "view"}}),
                [f"{n:08x}{i:056x}" for i in range(n)],
            )  # fmt: skip
            accepted = await engine.submit("a", notes, async_=True)
            while (await engine.job(accepted.job_id)).counts["accepted"] < n:  # type: ignore[union-attr]
                await sleep(reactor, 0.05)
            times, gaps, size = [], [], 0
            for _ in range(rounds):
                probe = Probe(reactor)
                probe.start()
                await sleep(reactor, 0.01)
                start = time.perf_counter()
                request = ApiRequest("GET", f"/v1/jobs/{accepted.job_id}".encode(), b"", header)
                _, answer = api.handle(request)
                response: Response = await answer if isinstance(answer, Deferred) else answer
                size = len(response.encoded())
                times.append(time.perf_counter() - start)
                await sleep(reactor, 0.01)
                probe.stop()
                gaps.append(probe.longest)
            print(
                f"{n:>7,} notifications ({size / 1e6:.1f} MB of JSON): answer median "
                f"{statistics.median(times) * 1e3:.1f} ms; the reactor's longest stretch "
                f"busy with one thing: median {statistics.median(gaps) * 1e3:.1f} ms, "
                f"worst {max(gaps) * 1e3:.1f} ms ({rounds} rounds)",
                flush=True,
            )
    finally:
        await engine.stop()
        pool.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--no-gc", action="store_true",
        help="turn Python's cyclic garbage collector off, to see its share of the longest stretch",
    )  # fmt: skip
    args = ap.parse_args()
    if args.no_gc:
        gc.disable()
    from twisted.internet.task import react

    sizes = [int(s) for s in args.sizes.split(",")]
    react(lambda r: ensureDeferred(run(r, sizes, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
