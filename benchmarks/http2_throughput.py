#!/usr/bin/env python3
"""HTTP/2 throughput of txapns over 1 and 4 connections.

    python benchmarks/http2_throughput.py [--n 50000] [--conns 1,4]          # starts a Node sink
    python benchmarks/http2_throughput.py --url https://127.0.0.1:2197 --cert-dir DIR

Prints notifications/s, client CPU µs per notification, p50/p99 latency (send → result) and
peak RSS. Without ``--url`` it starts ``benchmarks/h2sink.js`` (Node's http2 answering 200 to
everything) with throwaway certificates, and reports the sink's CPU per notification too.

Harness driver mode (``../shared/bench/run_bench.py --add-peer 'txapns-h2=h2:python
benchmarks/http2_throughput.py --auth jwt'``): ``--workload`` and ``--port`` are appended; it
runs one round on ``--conns`` (first value), token auth with the harness's bench key (or
``--auth cert``), and its last line is the harness's ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from txapns.core.notification import Notification, PushType

HERE = os.path.dirname(os.path.abspath(__file__))


def payload_for(i: int) -> bytes:
    n = f"{i % 1000000:06d}"
    return (
        f'{{"aps":{{"alert":"Bench notification #{n}","badge":1,"sound":"default"}},'
        f'"n":"{n}","pad":"xxxx"}}'
    ).encode()


def generated(n: int, topic: str, seed: int = 11) -> list[Notification]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        token = bytes([rnd.randrange(0xF0)]) + rnd.randbytes(31)
        out.append(
            Notification.create(token, payload_for(i), topic=topic, push_type=PushType.ALERT)
        )
    return out


def from_workload(path: str, n: int, topic: str) -> list[Notification]:
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                w = json.loads(line)
                out.append(
                    Notification(
                        bytes.fromhex(w["token"]),
                        w["payload"].encode(),
                        topic=topic,
                        push_type=PushType.ALERT,
                        apns_id=w.get("id"),
                    )
                )
                if len(out) >= n:
                    break
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


def run_once(
    reactor: Any, notifications: list[Notification], host: str, port: int, conns: int, auth: Any
) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    from txapns.core.result import Result
    from txapns.http2 import HTTP2Client

    tls, token, bundle = auth
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, host, port))
    client = HTTP2Client(
        reactor,
        endpoint,
        authority="api.push.apple.com",
        bundle_id=bundle,
        token=token,
        min_connections=conns,
        max_connections=conns,
        max_queue=50_000,
    )
    latencies: list[float] = []
    outcome = {"accepted": 0, "rejected": 0, "unknown": 0}
    reasons: dict[str, int] = {}

    def on_result(r: Result) -> None:
        outcome[r.outcome.value] += 1
        if r.latency is not None:
            latencies.append(r.latency)
        if not r.accepted:
            reasons[r.reason or "?"] = reasons.get(r.reason or "?", 0) + 1

    done: Deferred[dict[str, Any]] = Deferred()
    t0 = time.perf_counter()
    c0 = time.process_time()
    client.start()
    d = client.send_many(notifications, on_result)

    def finished(_: object) -> None:
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        stats = {
            "seconds": seconds,
            "cpu_s": cpu,
            "outcome": dict(outcome),
            "reasons": reasons,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "counters": client.counters.as_dict(),
        }
        client.stop(timeout=5).addBoth(lambda _: done.callback(stats))

    d.addCallback(finished)
    d.addErrback(done.errback)
    return done  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--conns", default="1,4", help="comma-separated connection counts")
    ap.add_argument("--url", help="server URL (default: start benchmarks/h2sink.js)")
    ap.add_argument("--port", type=int, help="harness: the mock's port on 127.0.0.1")
    ap.add_argument("--workload", help="harness workload (JSON lines); harness driver mode")
    ap.add_argument("--cert-dir", default=os.environ.get("CERT_DIR") or "certs")
    ap.add_argument("--auth", choices=("jwt", "cert"), default="jwt")
    ap.add_argument("--peer", default=None)
    args = ap.parse_args()

    from twisted.internet import reactor as _reactor

    from txapns.credentials import ClientCertificate, ProviderToken, client_tls_options

    reactor: Any = _reactor
    harness = args.workload is not None
    sink = None
    if args.url or args.port:
        if args.url:
            u = urlparse(args.url)
            host, port = u.hostname or "127.0.0.1", u.port or 443
        else:
            host, port = "127.0.0.1", args.port
        d = args.cert_dir
        with open(os.path.join(d, "ca.pem"), "rb") as f:
            ca_pem = f.read()
        bundle = "com.example.bench"
        if args.auth == "jwt":
            with open(os.path.join(d, "AuthKey_BENCHKEY01.p8"), "rb") as f:
                token: Any = ProviderToken.from_p8(f.read(), "BENCHKEY01", "BENCHTEAM1")
            certificate = None
        else:
            token = None
            certificate = ClientCertificate.from_files(
                os.path.join(d, "client.pem"), os.path.join(d, "client-key.pem")
            )
    else:
        from txapns.testing.pki import make_test_pki

        pki = make_test_pki("com.example.bench")
        files = pki.write(tempfile.mkdtemp(prefix="txapns-h2bench-"))
        sink = subprocess.Popen(
            [
                "node",
                os.path.join(HERE, "h2sink.js"),
                "0",
                files["server_cert"],
                files["server_key"],
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sink.stdout is not None
        line = sink.stdout.readline()
        host, port = "127.0.0.1", int(line.split()[1])
        ca_pem = pki.ca_cert
        bundle = "com.example.bench"
        token = None
        certificate = ClientCertificate.from_pem(pki.client_cert, pki.client_key)
    tls = client_tls_options(
        "api.push.apple.com", certificate=certificate, ca_pem=ca_pem, alpn=[b"h2"]
    )
    topic = bundle
    notifications = (
        from_workload(args.workload, args.n, topic) if harness else generated(args.n, topic)
    )
    conn_counts = [int(c) for c in args.conns.split(",")]
    if harness:
        conn_counts = conn_counts[:1]
    results: list[tuple[int, dict[str, Any]]] = []

    def go() -> None:
        from twisted.internet.defer import ensureDeferred

        async def all_runs() -> None:
            for conns in conn_counts:
                stats = await run_once(
                    reactor, notifications, host, port, conns, (tls, token, bundle)
                )
                results.append((conns, stats))

        ensureDeferred(all_runs()).addErrback(lambda f: f.printTraceback()).addBoth(
            lambda _: reactor.stop()
        )

    reactor.callWhenRunning(go)
    sink_cpu0 = _proc_cpu(sink.pid) if sink else None
    reactor.run()
    sink_cpu = (_proc_cpu(sink.pid) - sink_cpu0) if sink and sink_cpu0 is not None else None
    if sink is not None:
        sink.terminate()
        sink.wait(timeout=10)
    n = len(notifications)
    for conns, s in results:
        ok = s["outcome"]["accepted"]
        rate = ok / s["seconds"] if s["seconds"] else 0.0
        print(
            f"txapns HTTP/2, {conns} connection(s): {n} notifications, {ok} accepted, "
            f"{s['outcome']['rejected']} rejected, {s['outcome']['unknown']} unknown in "
            f"{s['seconds']:.3f} s: {rate:,.0f} notifications/s, "
            f"{s['cpu_s'] / max(n, 1) * 1e6:.1f} µs client CPU/notification, "
            f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, peak RSS {rss_mb():.0f} MB"
        )
        if s["reasons"]:
            print("  not accepted:", json.dumps(s["reasons"], sort_keys=True))
    if sink_cpu is not None and results:
        total = n * len(results)
        print(f"sink (Node http2) CPU: {sink_cpu / total * 1e6:.1f} µs/notification over all runs")
    if results:
        conns, s = results[0]
        ok = s["outcome"]["accepted"]
        peer = args.peer or f"txapns-h2-{args.auth}-{conns}c"
        rate = ok / s["seconds"] if s["seconds"] else 0.0
        print(
            f"{peer}: {ok}/{n} ok, {n - ok} failed, {s['seconds']:.3f} s, "
            f"{round(rate)} notifications/s"
        )
        summary = {
            "peer": peer,
            "n": n,
            "ok": ok,
            "failed": n - ok,
            "seconds": s["seconds"],
            "rate": rate,
            "cpu_s": s["cpu_s"],
            "p50_ms": s["p50_ms"],
            "p99_ms": s["p99_ms"],
            "counters": s["counters"],
        }
        print("RESULT " + json.dumps(summary), flush=True)
    return 0 if results else 1


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
