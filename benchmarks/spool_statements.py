#!/usr/bin/env python3
"""Why the SQLite spool writes many rows per statement: a statement step per row against
multi-row statements, alone and beside a busy second thread; and (``--outcomes``) which
statement records outcomes cheapest.

    python benchmarks/spool_statements.py [--batches 3] [--size 500] [--outcomes | --shapes]

The ``sqlite3`` module lets go of the GIL around every statement step. When the spool ran its
statements on its own thread, a statement stepped once per row (``executemany``) made a busy
reactor and the spool's thread hand the GIL to each other once per row. (The spool now commits
on the reactor thread and sends only the ``fsync`` to its thread; fewer statements still cost
less CPU.) This script stores ``--batches`` batches of ``--size``
notification rows (one transaction each, ``synchronous=FULL``, the spool's schema), then
records an outcome for each row (another transaction), with the spool's own statements
(``SpoolStore._insert`` and ``SpoolStore._update_outcomes``) and the rows built beforehand,
two ways:

* ``row by row``: one row per statement, as the spool wrote before;
* ``multi-row``: up to 500 rows per statement, as it writes now;

first alone, then while a second thread spins in Python (as a busy reactor does). It prints
the writing thread's CPU and wall time per row.

``--outcomes`` instead records the same outcomes (all alike: accepted on the first try, as
nearly all are) three ways, each on its own store, committed without an ``fsync`` as the
reactor thread commits: a step per row; ``UPDATE … FROM (VALUES …)`` with each row's values,
as the spool wrote until it grouped them (SQLite stores the joined rows in a temporary table
before it updates them); and ``UPDATE … WHERE id IN (…)`` for the rows alike, as it writes
now. It prints the CPU per outcome of each.

``--shapes`` writes batches of 1 to ``--size`` one-notification jobs (at random, the same
sizes both ways), each batch with the previous batch's outcomes, as the service does under
many connections; once with a statement shape for every row count and the sqlite3 module's
default statement cache (128), as the spool wrote before, and once as it writes now (exact
shapes up to ``_EXACT_ROWS`` rows, then 256, 128 … rows a statement; a cache of
``_STATEMENT_CACHE``), in turns, and prints the CPU per notification of each. No assertions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from txapns.service import spool

Rows = list[tuple[object, ...]]


def rows_for(batches: int, size: int) -> list[tuple[Rows, Rows]]:
    """Each batch's notification rows and outcome rows."""
    payload = b'{"aps":{"alert":"bench"}}'
    out = []
    for b in range(batches):
        first = b * size + 1
        rows: Rows = [
            (first + i, f"job{b}", i, "bench", os.urandom(32).hex(), payload, "{}", None,
             "inflight", None, 1.0)
            for i in range(size)
        ]  # fmt: skip
        outcomes: Rows = [(first + i,) for i in range(size)]
        out.append((rows, outcomes))
    return out


#: The outcome every row gets: (state, status, reason, timestamp, attempts, resumed).
OUTCOME = ("accepted", 200, None, None, 1, 0)
#: The statement the spool recorded outcomes with before it grouped them.
UPDATE_FROM = (
    "WITH o (id, state, status, reason, apns_id, timestamp, attempts, resumed, updated) AS"
    " (VALUES ",
    ") UPDATE notifications SET state = o.state, status = o.status, reason = o.reason,"
    " apns_id = coalesce(o.apns_id, notifications.apns_id), timestamp = o.timestamp,"
    " attempts = notifications.attempts + o.attempts,"
    " resumed = notifications.resumed + o.resumed, updated = o.updated"
    " FROM o WHERE notifications.id = o.id",
)


def record(store: spool.SpoolStore, outcomes: Rows, how: str) -> None:
    """Record ``outcomes`` (``(id,)`` rows) the way ``how`` says."""
    if how == "grouped":
        store._update_outcomes({OUTCOME: [(i, None) for (i,) in outcomes]}, [], 2.0)
    elif how == "per row":
        store._update_outcomes({}, [(i, None, *OUTCOME, 2.0) for (i,) in outcomes], 2.0)
    else:
        head, tail = UPDATE_FROM
        rows = [(i, *OUTCOME[:3], None, *OUTCOME[3:], 2.0) for (i,) in outcomes]
        store._rows_at_once(head, rows, tail)


def write(store: spool.SpoolStore, batches: list[tuple[Rows, Rows]], how: str) -> None:
    for rows, outcomes in batches:
        with store.transaction():
            store._insert([], rows)
        with store.transaction():
            record(store, outcomes, how)


def outcomes_only(work: Path, batches: int, size: int) -> None:
    """CPU per outcome recorded, each way, committed without an fsync."""
    print(f"outcomes: {batches} batches of {size}, each committed without an fsync")
    for how in ("per row", "UPDATE … FROM", "grouped"):
        store = spool.SpoolStore(work / f"outcomes-{how.split()[0]}.db", synchronous="NORMAL")
        data = rows_for(batches, size)
        for rows, _ in data:
            store.commit_batch([lambda s, rows=rows: s._insert([], rows)])
        cpu = 0.0
        for _, outcomes in data:
            c0 = time.thread_time()
            store.commit_batch([lambda s, o=outcomes, h=how: record(s, o, h)])
            cpu += time.thread_time() - c0
        store.close()
        print(f"  {how:14}  {cpu / (batches * size) * 1e6:6.2f} µs CPU per outcome")


def spin(stop: threading.Event) -> None:
    """A busy thread, as the reactor's is: Python code that never waits."""
    n = 0
    while not stop.is_set():
        n += 1


def shapes(work: Path, batches: int, size: int) -> None:
    """CPU per notification with varying batch sizes: every row count its own shape and a
    cache of 128, against the spool's shapes and cache."""
    import random

    from txapns.core.notification import Notification

    n = Notification.create("ab" * 32, {"aps": {"alert": "bench"}}, topic="com.example.app")
    sizes = [random.randint(1, size) for _ in range(batches)]
    print(f"shapes: {batches} batches of 1 to {size} jobs and the previous batch's outcomes")
    ways = {"a shape per row count, cache 128": (spool._ROWS_PER_STATEMENT, 128)}
    ways["the spool's shapes and cache"] = (spool._EXACT_ROWS, spool._STATEMENT_CACHE)
    stores, exact = {}, {}
    for k, (name, (rows, cache)) in enumerate(ways.items()):
        spool._STATEMENT_CACHE = cache
        stores[name] = spool.SpoolStore(work / f"shapes-{k}.db", synchronous="NORMAL")
        exact[name] = rows
    cpu = dict.fromkeys(ways, 0.0)
    pending: dict[str, list[spool.OutcomeRecord]] = {name: [] for name in ways}
    for count in sizes:
        new = [spool.NewJob("a", [n], 1.0, inflight=True)] * count
        for name, store in stores.items():
            spool._EXACT_ROWS = exact[name]
            done = pending[name]
            c0 = time.thread_time()
            jobs = store.commit_batch(
                [lambda s, j=new: s.add_jobs(j), lambda s, o=done: s.record_outcomes(o, now=2.0)]
            )[0]
            cpu[name] += time.thread_time() - c0
            pending[name] = [
                spool.OutcomeRecord(j.ids[0], j.job_id, "a", "", "accepted", attempts=1)
                for j in jobs  # type: ignore[attr-defined]
            ]
    for name, store in stores.items():
        store.close()
        print(f"  {name:34}  {cpu[name] / sum(sizes) * 1e6:6.1f} µs CPU per notification")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--outcomes", action="store_true", help="compare outcome statements")
    ap.add_argument("--shapes", action="store_true", help="statement shapes and cache")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="txapns-spool-statements-"))
    if args.outcomes:
        outcomes_only(work, args.batches, args.size)
        return 0
    if args.shapes:
        shapes(work, args.batches, args.size)
        return 0
    print(f"{args.batches} batches of {args.size} rows, synchronous=FULL, in {work}")
    for busy in (False, True):
        stop = threading.Event()
        if busy:
            threading.Thread(target=spin, args=(stop,), daemon=True).start()
        for name in ("row by row", "multi-row"):
            store = spool.SpoolStore(work / f"{name.replace(' ', '-')}-{busy}.db")
            if name == "row by row":
                store._max_params = 11  # one notification row (11 columns) per statement
            batches = rows_for(args.batches, args.size)
            c0, w0 = time.thread_time(), time.perf_counter()
            write(store, batches, "per row" if name == "row by row" else "grouped")
            cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
            store.close()
            rows = args.batches * args.size
            print(
                f"  {'beside a busy thread' if busy else 'alone':20}  {name:10}  "
                f"{cpu / rows * 1e6:8.1f} µs CPU, {wall / rows * 1e6:9.1f} µs wall per row"
                " (stored, then its outcome recorded)"
            )
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
