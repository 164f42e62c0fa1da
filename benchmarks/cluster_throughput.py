#!/usr/bin/env python3
"""Throughput and CPU cost of ``twistd apns`` instances sharing one Redis, beside SQLite.

    python benchmarks/cluster_throughput.py --mock /tmp/apns-bench      # 1, 2, 3 instances
    python benchmarks/cluster_throughput.py --mock /tmp/apns-bench --n 100000 --instances 1 3
    python benchmarks/cluster_throughput.py --mock /tmp/apns-bench --instances 1 --api-only
    python benchmarks/cluster_throughput.py --spool-only [--appendfsync everysec]

Everything runs on loopback, each part in its own process: the neutral Node HTTP/2 mock
(``--mock DIR``: a copy of the harness, set up with ``./make-certs.sh && npm ci``; token
auth with its bench key), a fresh ``redis-server`` per run (``appendonly yes`` and, by
default, ``appendfsync always``: the setting that loses nothing acknowledged; ``--appendfsync
everysec`` for the other), the instances, and
``--clients`` load-generator processes posting asynchronous requests of 500 notifications
round-robin over the instances' APIs (``service_throughput``'s load generator).

For the SQLite backend (one instance, its own spool file, ``synchronous=FULL``) and for Redis
with 1, 2 and 3 instances, it prints:

* notifications/s accepted durably (answered 202: stored in SQLite / Redis);
* notifications/s end to end (until every instance recorded every outcome);
* CPU µs per notification of the instances (summed) and of ``redis-server``, from
  ``/proc/<pid>/stat`` over the whole run (accept + send + record);

and for one instance the Redis commands that cost most (``INFO commandstats``), then the
three targets of the Redis backend (durable accept ≥ 20,000/s on one instance;
instance CPU per notification ≤ 1.3× SQLite's; ``redis-server`` ≤ 15 µs per notification) and
a projection of the instances and Redis cores that 1,000,000 notifications a minute needs,
from the measured CPU per notification (on a 2-core machine, more instances cannot run faster
than the cores allow: the CPU figures are what scales). No assertions.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from service_throughput import (  # noqa: E402  (a sibling script, not a package)
    BATCH,
    _submit,
    api_call,
    cpu_seconds,
    metric,
    start_mock,
    twistd,
    wait_for_port,
    write_config,
)

PER_MINUTE = 1_000_000


def start_redis(
    work: Path, procs: list[subprocess.Popen[bytes]], appendfsync: str
) -> tuple[int, int]:
    """A fresh redis-server (AOF, fsync ``appendfsync``) on a free port; (port, pid)."""
    from service_throughput import free_port

    port = free_port()
    data = work / "redis"
    data.mkdir()
    log = data / "redis.log"
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
         "--logfile", str(log)],
    )  # fmt: skip
    procs.append(proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and "Ready to accept connections" in log.read_text():
            return port, proc.pid
        time.sleep(0.02)
    raise SystemExit("redis-server did not start")


def redis_config(config: Path, port: int, instance: int, consume: bool = True) -> Path:
    """The service configuration with a ``[spool] backend = "redis"`` table instead of the
    SQLite file (at the end: the keys that follow the file's ``spool =`` line are the
    service's, not the table's); ``consume=False``: an API-only instance."""
    text = config.read_text().replace('spool = "spool.sqlite3"\n', "")
    text += "\n".join(
        [
            "",
            "[spool]",
            'backend = "redis"',
            f'url = "redis://127.0.0.1:{port}/0"',
            f'instance_id = "bench-{instance}"',
            f"consume = {'true' if consume else 'false'}",
            "",
        ]
    )
    out = config.with_name(f"service-{instance}.toml")
    out.write_text(text)
    return out


def start_instance(
    work: Path, config: Path, name: str, procs: list[Any], profile: Path | None = None
) -> tuple[int, int]:
    """An instance; with ``profile``, under cProfile (the reactor thread's CPU time), its
    stats written to that file when it stops."""
    log = work / f"{name}.log"
    launcher = twistd()
    if profile is not None:
        script = HERE / "service_throughput.py"
        launcher = [sys.executable, str(script), "--profiled", str(profile.resolve())]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*launcher, "-n", "--pidfile=", "apns", "--config", str(config),
             "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=work, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(proc)
    port = wait_for_port(log, proc)
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the spool (Redis) connected: /healthz says 200
        status, _ = api_call(conn, "-", "GET", "/healthz")
        if status == 200:
            break
        time.sleep(0.05)
    conn.close()
    return port, proc.pid


def drained(ports: list[int], key: str, total: int, timeout: float = 600) -> bool:
    """Until the instances' accepted outcomes add up to ``total``."""
    import http.client

    conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=30) for p in ports]
    deadline = time.perf_counter() + timeout
    try:
        while time.perf_counter() < deadline:
            done = 0.0
            for c in conns:
                _, raw = api_call(c, key, "GET", "/metrics")
                done += metric(raw.decode(), "txapns_notifications_accepted_total")
            if done >= total:
                return True
            time.sleep(0.05)
        return False
    finally:
        for c in conns:
            c.close()


def command_stats(port: int, top: int = 6) -> list[tuple[str, int, float]]:
    """The commands (and scripts) that cost Redis most: (name, calls, µs in all)."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout  # fmt: skip
    rows = []
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            fields = dict(kv.split("=") for kv in rest.split(","))
            rows.append((name, int(fields["calls"]), float(fields["usec"])))
    return sorted(rows, key=lambda r: -r[2])[:top]


def run(
    label: str, harness: Path, mock_port: int, n: int, clients: int, instances: int,
    backend: str, run_id: int, appendfsync: str = "always", profile: Path | None = None,
    api_only: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One run; ``api_only``: instance 0 has ``consume = false`` and takes all the requests,
    the other instances send."""
    work = Path(tempfile.mkdtemp(prefix=f"txapns-cluster-{label}-"))
    procs: list[subprocess.Popen[bytes]] = []
    key = secrets.token_urlsafe(24)
    try:
        base = write_config(work, "http2", mock_port, key, harness / "certs")
        redis_pid = None
        configs = [base]
        if backend == "redis":
            redis_port, redis_pid = start_redis(work, procs, appendfsync)
            configs = [
                redis_config(base, redis_port, i, consume=not (api_only and i == 0))
                for i in range(instances)
            ]
        started = [
            start_instance(work, c, f"instance-{i}", procs, profile if i == 0 else None)
            for i, c in enumerate(configs)
        ]
        ports = [p for p, _ in started]
        targets = ports[:1] if api_only else ports
        pids = [pid for _, pid in started]
        cpu0 = [cpu_seconds(p) for p in pids]
        rcpu0 = cpu_seconds(redis_pid) if redis_pid else 0.0
        share = [n // clients + (1 if w < n % clients else 0) for w in range(clients)]
        # Each load generator posts to one instance (round-robin over workers).
        jobs = [
            (targets[w % len(targets)], key, run_id, w, c, BATCH) for w, c in enumerate(share)
        ]
        t0 = time.perf_counter()
        with multiprocessing.Pool(clients) as pool:
            results = pool.map(_submit, jobs)
        accept_s = time.perf_counter() - t0
        ok = sum(r[0] for r in results)
        accept_cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        failed = sum(r[1] for r in results)
        finished = drained(ports, key, ok)
        e2e_s = time.perf_counter() - t0
        cpus = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        cpu = sum(cpus)
        rcpu = (cpu_seconds(redis_pid) - rcpu0) if redis_pid else 0.0
        stats = command_stats(redis_port) if redis_pid else []
        return {
            "commands": stats,
            "label": label,
            "ok": ok,
            "failed": failed,
            "drained": finished,
            "accept_rate": ok / accept_s,
            "e2e_rate": ok / e2e_s if finished else 0.0,
            "instance_us": cpu / ok * 1e6 if ok else 0.0,
            # The instances' CPU while the requests were answered, and instance 0's in all.
            "accept_us": sum(accept_cpu) / ok * 1e6 if ok else 0.0,
            "first_us": cpus[0] / ok * 1e6 if ok else 0.0,
            "redis_us": rcpu / ok * 1e6 if ok else 0.0,
        }
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(60)  # (a profiled instance writes its stats as it stops)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


def spool_only(n: int, appendfsync: str, chunk_size: int) -> dict[str, Any]:
    """The Redis spool alone, in this process (no HTTP, no APNs): store ``n`` notifications
    as jobs of ``BATCH`` (8 stores in flight), then read them all and record each as
    accepted at once. Rates and redis-server CPU per notification for each phase."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
    from twisted.internet.task import deferLater
    from twisted.python.failure import Failure

    from txapns.core.notification import Notification
    from txapns.service.backend import ConsumerHooks
    from txapns.service.redis_spool import RedisAddress, RedisLink, RedisSettings, RedisSpool
    from txapns.service.spool import OutcomeRecord

    work = Path(tempfile.mkdtemp(prefix="txapns-spool-only-"))
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {}

    def cli(port: int, *args: str) -> None:
        subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, check=True)

    async def main(port: int, pid: int) -> None:
        address = RedisAddress(port=port)
        spool = RedisSpool(
            RedisLink(reactor, address), lambda: RedisLink(reactor, address, reply_timeout=10),
            reactor, ["bench"], RedisSettings(instance_id="bench", chunk_size=chunk_size),
        )  # fmt: skip
        while not spool.available:
            await deferLater(reactor, 0.05, lambda: None)
        payload = b'{"aps":{"alert":"spool bench","badge":1}}'
        jobs = [
            [Notification.create(secrets.token_bytes(32), payload)
             for _ in range(min(BATCH, n - start))]
            for start in range(0, n, BATCH)
        ]  # fmt: skip
        cli(port, "CONFIG", "RESETSTAT")
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        lock = DeferredSemaphore(8)
        await gatherResults(
            [lock.run(spool.add_job, "bench", ns, now=time.time(), async_=True) for ns in jobs]
        )
        out["store_s"], out["store_cpu"] = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        out["store_commands"] = command_stats(port)
        cli(port, "CONFIG", "RESETSTAT")
        done: Deferred[None] = Deferred()
        recorded = [0]
        outstanding = [0]

        def feed(app: str, items: Any) -> None:
            outstanding[0] += len(items)
            records = [
                OutcomeRecord(id=i.id, job_id=i.job_id, app=app,
                              token=i.notification.token_hex, state="accepted", status=200)
                for i in items
            ]  # fmt: skip
            spool.record_outcomes(records, now=time.time()).addCallback(written, len(items))

        def written(_: object, count: int) -> None:
            outstanding[0] -= count
            recorded[0] += count
            if recorded[0] >= n and not done.called:
                done.callback(None)

        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        spool.start_consuming(
            ConsumerHooks(feed, lambda app: 2000 - outstanding[0], lambda: (), lambda j: None)
        )
        await done
        out["consume_s"], out["consume_cpu"] = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        out["consume_commands"] = command_stats(port)
        await spool.close()

    try:
        port, pid = start_redis(work, procs, appendfsync)
        def stop(result: object) -> None:
            if isinstance(result, Failure):
                out["error"] = result.getTraceback()
            reactor.stop()

        reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main(port, pid)).addBoth(stop))
        reactor.run()
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)
    return out


def print_spool_only(n: int, appendfsync: str, chunk_size: int) -> int:
    r = spool_only(n, appendfsync, chunk_size)
    if "error" in r:
        print(r["error"])
        return 1
    print(f"\nThe Redis spool alone: {n} notifications in jobs of {BATCH}, entries of up to "
          f"{chunk_size}; appendonly yes, appendfsync {appendfsync}\n")  # fmt: skip
    for phase, label in (("store", "store (durable accept)"),
                         ("consume", "read + record + acknowledge")):  # fmt: skip
        seconds, cpu = r[f"{phase}_s"], r[f"{phase}_cpu"]
        print(f"{label:<28} {n / seconds:>9,.0f}/s   redis-server {cpu / n * 1e6:6.2f} µs/n")
        for name, calls, usec in r[f"{phase}_commands"]:
            print(f"    {name:<12} {calls:>7} calls {usec / n:>7.2f} µs/n")
    total = (r["store_cpu"] + r["consume_cpu"]) / n * 1e6
    print(f"redis-server in all: {total:.2f} µs per notification")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--mock", type=Path, help="the neutral harness (set up)")
    ap.add_argument("--n", type=int, default=60_000, help="notifications per run")
    ap.add_argument("--clients", type=int, default=6, help="load-generator processes")
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--api-only", action="store_true",
                    help="also run one API-only instance (consume = false) taking every "
                    "request, beside one instance that sends")
    ap.add_argument("--appendfsync", choices=["always", "everysec"], default="always",
                    help="redis-server's AOF fsync policy (appendonly is always on)")
    ap.add_argument("--spool-only", action="store_true",
                    help="measure only the Redis spool in this process (no HTTP, no APNs)")
    ap.add_argument("--chunk-size", type=int, default=100, help="with --spool-only")
    ap.add_argument("--profile", type=Path, metavar="FILE",
                    help="run the first Redis run's first instance under cProfile (reactor "
                    "thread CPU time); stats saved to FILE (pstats)")
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    if args.spool_only:
        return print_spool_only(args.n, args.appendfsync, args.chunk_size)
    if args.mock is None:
        ap.error("--mock DIR is needed (or --spool-only)")
    procs: list[subprocess.Popen[bytes]] = []
    work = Path(tempfile.mkdtemp(prefix="txapns-cluster-mock-"))
    try:
        mock_port = start_mock(args.mock, work, procs)
        rows = [run("sqlite x1", args.mock, mock_port, args.n, args.clients, 1, "sqlite", 1)]
        for i, count in enumerate(args.instances):
            rows.append(
                run(f"redis x{count}", args.mock, mock_port, args.n, args.clients, count,
                    "redis", 2 + i, args.appendfsync, args.profile if i == 0 else None)
            )  # fmt: skip
        if args.api_only:
            rows.append(
                run("redis 1+1", args.mock, mock_port, args.n, args.clients, 2, "redis",
                    2 + len(args.instances), args.appendfsync, api_only=True)
            )  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.n} notifications per run, requests of {BATCH}, {args.clients} clients, "
          f"{os.cpu_count()} cores; HTTP/2 to the neutral Node mock; Redis with appendonly "
          f"yes, appendfsync {args.appendfsync}\n")  # fmt: skip
    print(f"{'backend':<10} {'accepted/s':>11} {'end to end/s':>13} {'instance µs/n':>14} "
          f"{'while accepting':>16} {'redis µs/n':>11} {'failed':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['label']:<10} {r['accept_rate']:>11,.0f} {r['e2e_rate']:>13,.0f} "
              f"{r['instance_us']:>14.1f} {r['accept_us']:>16.1f} {r['redis_us']:>11.1f} "
              f"{r['failed']:>7}" + ("" if r["drained"] else "  (not drained!)"))  # fmt: skip
    print("(instance µs/n: all instances over the whole run; while accepting: their CPU until "
          "the last request was answered)")
    sqlite = rows[0]
    one = rows[1]
    print(f"\nRedis commands that cost most ({one['label']}; µs per notification):")
    for name, calls, usec in one["commands"]:
        print(f"  {name:<12} {calls:>9} calls {usec / max(one['ok'], 1):>8.2f} µs/n")
    print("\nTargets (Redis, one instance):")
    print(f"  durable accept {one['accept_rate']:,.0f}/s (target >= 20,000/s), by an instance "
          "that also sends")
    if args.api_only:
        front = rows[-1]
        print(f"  durable accept {front['accept_rate']:,.0f}/s by an API-only instance "
              f"({front['first_us']:.1f} µs/n of its CPU; one other instance sends, end to "
              f"end {front['e2e_rate']:,.0f}/s)")
    ratio = one["instance_us"] / sqlite["instance_us"]
    print(f"  instance CPU {one['instance_us']:.1f} µs/n = {ratio:.2f}x SQLite's "
          f"{sqlite['instance_us']:.1f} (target <= 1.3x)")  # fmt: skip
    print(f"  redis-server CPU {one['redis_us']:.1f} µs/n (target <= 15)")
    rate = PER_MINUTE / 60
    worst = max((r for r in rows[1:] if r["label"] != "redis 1+1"), key=lambda r: r["instance_us"])
    inst_cores = rate * worst["instance_us"] / 1e6
    redis_cores = rate * max(r["redis_us"] for r in rows[1:]) / 1e6
    print(f"\n1,000,000 notifications/min = {rate:,.0f}/s needs about {inst_cores:.1f} cores of "
          f"instances (at {worst['instance_us']:.1f} µs/n): {math.ceil(inst_cores / 0.8)} "
          f"single-threaded instances at 80% of a core each, and {redis_cores:.2f} of a "
          "redis-server core (Redis runs commands on one thread).")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
