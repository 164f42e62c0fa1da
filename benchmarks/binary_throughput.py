#!/usr/bin/env python3
"""Binary-protocol throughput of txapns, with a raw ``ssl`` writer measured in the same run.

    python benchmarks/binary_throughput.py [--n 200000]                  # in-process fake
    python benchmarks/binary_throughput.py --port 2195 --cert-dir DIR    # an external gateway
    python benchmarks/binary_throughput.py --n 1000000 --no-ceiling      # memory: streamed

It sends N notifications through one connection with ``BinaryClient.send_many`` (results
streamed, no Deferred per notification), confirms the tail with the drain sentinel, and
prints notifications/s, CPU µs per notification and peak RSS. The ceiling is a plain ``ssl``
socket writing pre-encoded frames to the same gateway, then half-closing and waiting for the
gateway to close (so both clocks stop once the gateway has parsed everything).

Harness driver mode (``../shared/bench/run_bench.py --add-peer 'txapns-bin=bin:python
benchmarks/binary_throughput.py'``): with ``--workload`` the ceiling is skipped (it would add
deliveries to the mock's record) and the last line is the harness's ``RESULT {json}``.
Certificates come from ``--cert-dir``, else ``$CERT_DIR``, else ``./certs`` (the harness's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import ssl
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from txapns.core.binary import encode_frame
from txapns.core.notification import Notification


def payload_for(i: int) -> bytes:
    n = f"{i % 1000000:06d}"
    return (
        f'{{"aps":{{"alert":"Bench notification #{n}","badge":1,"sound":"default"}},'
        f'"n":"{n}","pad":"xxxx"}}'
    ).encode()


def generated(n: int, seed: int = 7) -> Iterator[Notification]:
    """N notifications made lazily (so a 1,000,000 run holds none of them up front)."""
    import random

    rnd = random.Random(seed)
    for i in range(n):
        token = bytes([rnd.randrange(0xF0)]) + rnd.randbytes(31)
        yield Notification(token, payload_for(i), expiry=None, priority=10)


def from_workload(path: str, n: int) -> list[Notification]:
    out = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            w = json.loads(line)
            out.append(Notification(bytes.fromhex(w["token"]), w["payload"].encode(), priority=10))
            if len(out) >= n:
                break
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def raw_ceiling(host: str, port: int, certs: dict[str, str], n: int) -> dict[str, Any]:
    """Pre-encoded frames through a blocking ssl socket (the CPython ceiling)."""
    frames = b"".join(
        encode_frame(i + 1, t.token, t.payload, None, 10) for i, t in enumerate(generated(n, 99))
    )
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.load_cert_chain(certs["cert"], certs["key"])
    t0 = time.perf_counter()
    c0 = time.process_time()
    raw = socket.create_connection((host, port), timeout=120)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    view = memoryview(frames)
    for off in range(0, len(view), 1 << 16):
        sock.sendall(view[off : off + (1 << 16)])
    socket.socket.shutdown(sock, socket.SHUT_WR)
    reply = b""
    try:
        while True:
            chunk = sock.recv(64)
            if not chunk:
                break
            reply += chunk
    except (OSError, ssl.SSLError):
        pass
    sock.close()
    seconds = time.perf_counter() - t0
    return {
        "rate": n / seconds,
        "seconds": seconds,
        "error": list(struct.unpack(">BBI", reply[:6])) if len(reply) >= 6 else None,
        "cpu_us": (time.process_time() - c0) / n * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="external gateway (0: in-process fake)")
    ap.add_argument("--workload", help="harness workload (JSON lines); harness driver mode")
    ap.add_argument("--cert-dir", default=os.environ.get("CERT_DIR") or "certs")
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--window", type=int, default=200_000, help="in-flight window bound")
    ap.add_argument("--quiet", type=float, default=1.0, help="quiet window, seconds")
    ap.add_argument("--peer", default="txapns-binary")
    ap.add_argument(
        "--lazy",
        action="store_true",
        help="generate notifications while sending (memory runs) instead of before the clock",
    )
    ap.add_argument(
        "--gc-threshold",
        type=int,
        default=0,
        metavar="N",
        help="gc.set_threshold(N, 50, 100) first, as a high-throughput process may: with a "
        "200,000-notification window, CPython's default collections re-scan it repeatedly",
    )
    args = ap.parse_args()
    if args.gc_threshold:
        import gc

        gc.set_threshold(args.gc_threshold, 50, 100)

    from twisted.internet import reactor as _reactor
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    from txapns.binary import BinaryClient
    from txapns.core.binary_channel import ChannelConfig
    from txapns.core.result import Result
    from txapns.credentials import ClientCertificate, client_tls_options

    reactor: Any = _reactor
    harness = args.workload is not None
    gateway = None
    if args.port:
        d = args.cert_dir
        certs = {
            "ca": os.path.join(d, "ca.pem"),
            "cert": os.path.join(d, "client.pem"),
            "key": os.path.join(d, "client-key.pem"),
        }
        with open(certs["ca"], "rb") as f:
            ca_pem = f.read()
        certificate = ClientCertificate.from_files(certs["cert"], certs["key"])
        host, port = args.host, args.port
    else:
        import tempfile

        from txapns.testing.binary_gateway import FakeGateway, listen_gateway
        from txapns.testing.pki import make_test_pki, server_tls_options

        pki = make_test_pki()
        files = pki.write(tempfile.mkdtemp(prefix="txapns-bench-"))
        certs = {"ca": files["ca_cert"], "cert": files["client_cert"], "key": files["client_key"]}
        ca_pem = pki.ca_cert
        certificate = ClientCertificate.from_pem(pki.client_cert, pki.client_key)
        gateway = FakeGateway(reactor)
        listening = listen_gateway(reactor, gateway, tls_options=server_tls_options(pki))
        host, port = "127.0.0.1", listening.getHost().port

    ceiling: dict[str, Any] = {}
    want_ceiling = not harness and not args.no_ceiling

    notifications: Any
    if harness:
        notifications = from_workload(args.workload, args.n)
    elif args.lazy:
        notifications = generated(args.n)
    else:
        notifications = list(generated(args.n))
    n = args.n if args.lazy and not harness else len(notifications)
    tls = client_tls_options("localhost", certificate=certificate, ca_pem=ca_pem)
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, host, port))
    config = ChannelConfig(
        max_window=args.window, max_queue=min(args.window, 50_000), quiet=args.quiet
    )
    client = BinaryClient(reactor, endpoint, config=config)
    outcome = {"accepted": 0, "rejected": 0, "unknown": 0}
    by_reason: dict[str, int] = {}

    def on_result(r: Result) -> None:
        outcome[r.outcome.value] += 1
        if not r.accepted:
            key = r.reason or "?"
            by_reason[key] = by_reason.get(key, 0) + 1

    timing: dict[str, float] = {}

    def measure_ceiling() -> Any:
        from twisted.internet.threads import deferToThread

        # In a thread, so an in-process gateway keeps serving on the reactor meanwhile.
        d = deferToThread(raw_ceiling, host, port, certs, args.n)
        return d.addCallback(ceiling.update)

    def start() -> None:
        from twisted.internet.defer import maybeDeferred

        d = maybeDeferred(measure_ceiling) if want_ceiling else maybeDeferred(lambda: None)
        d.addCallback(lambda _: run())
        d.addErrback(lambda f: (f.printTraceback(), reactor.running and reactor.stop()))

    def run() -> None:
        if gateway is not None:
            gateway.reset()
        timing["t0"] = time.perf_counter()
        timing["c0"] = time.process_time()
        client.start()
        d = client.send_many(notifications, on_result)

        def done(_: object) -> None:
            timing["t1"] = time.perf_counter()
            timing["c1"] = time.process_time()
            client.stop(timeout=5).addBoth(lambda _: reactor.running and reactor.stop())

        d.addCallback(done)
        d.addErrback(lambda f: (f.printTraceback(), reactor.running and reactor.stop()))

    reactor.callWhenRunning(start)
    reactor.run()
    seconds = timing["t1"] - timing["t0"]
    cpu = timing["c1"] - timing["c0"]
    c = client.counters
    rate = outcome["accepted"] / seconds if seconds else 0.0
    print(
        f"txapns binary: {n} notifications, {outcome['accepted']} accepted, "
        f"{outcome['rejected']} rejected, {outcome['unknown']} unknown in {seconds:.3f} s: "
        f"{rate:,.0f} notifications/s, {cpu / max(n, 1) * 1e6:.2f} µs CPU/notification"
        f"{' (client and in-process gateway)' if gateway is not None else ''}, "
        f"peak RSS {rss_mb():.1f} MB, window high-water {c.window_high_water}, "
        f"reconnects {c.reconnects}, replayed {c.replayed}"
    )
    if by_reason:
        print("  not accepted:", json.dumps(by_reason, sort_keys=True))
    if ceiling:
        print(
            f"raw ssl ceiling (same run): {ceiling['rate']:,.0f} notifications/s, "
            f"{ceiling['cpu_us']:.2f} µs CPU/notification; txapns/ceiling = "
            f"{rate / ceiling['rate']:.2f}"
        )
    summary = {
        "peer": args.peer,
        "n": n,
        "ok": outcome["accepted"],
        "failed": n - outcome["accepted"],
        "seconds": seconds,
        "rate": rate,
        "cpu_s": cpu,
        "rss_mb": rss_mb(),
        "counters": c.as_dict(),
    }
    print(
        f"{args.peer}: {outcome['accepted']}/{n} ok, {n - outcome['accepted']} failed, "
        f"{seconds:.3f} s, {round(rate)} notifications/s"
    )
    print("RESULT " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
