#!/usr/bin/env python3
"""Why the SQLite spool writes many rows per statement: a statement step per row against
multi-row statements, alone and beside a busy second thread.

    python benchmarks/spool_statements.py [--batches 3] [--size 500]

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
the writing thread's CPU and wall time per row. No assertions.
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
        outcomes: Rows = [
            (first + i, "accepted", 200, None, None, None, 1, 0, 2.0) for i in range(size)
        ]
        out.append((rows, outcomes))
    return out


def write(store: spool.SpoolStore, batches: list[tuple[Rows, Rows]]) -> None:
    for rows, outcomes in batches:
        with store.transaction():
            store._insert([], rows)
        with store.transaction():
            store._update_outcomes(outcomes)


def spin(stop: threading.Event) -> None:
    """A busy thread, as the reactor's is: Python code that never waits."""
    n = 0
    while not stop.is_set():
        n += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--size", type=int, default=500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="txapns-spool-statements-"))
    print(f"{args.batches} batches of {args.size} rows, synchronous=FULL, in {work}")
    multi_row = spool._UPDATE_FROM
    for busy in (False, True):
        stop = threading.Event()
        if busy:
            threading.Thread(target=spin, args=(stop,), daemon=True).start()
        for name in ("row by row", "multi-row"):
            store = spool.SpoolStore(work / f"{name.replace(' ', '-')}-{busy}.db")
            if name == "row by row":
                store._max_params = 11  # one notification row (11 columns) per statement
                spool._UPDATE_FROM = False
            else:
                spool._UPDATE_FROM = multi_row
            batches = rows_for(args.batches, args.size)
            c0, w0 = time.thread_time(), time.perf_counter()
            write(store, batches)
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
