#!/usr/bin/env python3
"""Throughput of the ``twistd apns`` service, with the library's own rate in the same run.

    python benchmarks/service_throughput.py                       # binary protocol
    python benchmarks/service_throughput.py --protocol http2      # HTTP/2 (token auth)
    python benchmarks/service_throughput.py --batch-n 200000 --clients 4

Everything runs on loopback, each part in its own process:

1. the fake APNs, ``python -m txapns.testing gateway|http2`` (TLS, recording every accepted
   notification to a file, as the crash test uses it);
2. the library's rate: a client built from the same app configuration as the service's
   (``make_sender``: ``BinaryClient`` or ``HTTP2Client``) streams ``--library-n``
   notifications with ``send_many`` straight to that fake (its own process);
3. the service, ``twistd -n apns --config CFG`` (SQLite spool, ``synchronous=FULL``, access log
   on), pointing at the same fake. ``--clients`` load-generator processes
   (``http.client``, keep-alive, one request at a time each) then submit:

   * ``--single-n`` asynchronous requests of 1 notification: notifications/s accepted durably
     (answered 202, so committed to the spool);
   * ``--batch-n`` notifications in asynchronous requests of 500: notifications/s accepted
     durably, and end to end from the first request until the fake has recorded every one
     (delivered) and until the service has recorded every outcome (confirmed; for the binary
     protocol that includes its 1 s quiet window).

It prints the figures, the service's peak RSS (``VmHWM``) and the ratio of the end-to-end
rate to the library's. No assertions: the issue's targets are ≥ 10,000 notifications/s
accepted durably with batches of 500, and end-to-end delivery at ≥ half the library's rate.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

APP = "bench"
BATCH = 500


# --- helpers ------------------------------------------------------------------------------


class RecordCounter:
    """Counts the lines of a growing JSON-lines file, reading only what was appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.count
        end = data.rfind(b"\n") + 1
        self.count += data.count(b"\n", 0, end)
        self.offset += end
        return self.count

    def wait_for(self, count: int, timeout: float) -> float | None:
        """Poll until ``count`` lines; the time it happened, or None on timeout."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.poll() >= count:
                return time.perf_counter()
            time.sleep(0.005)
        return None


def twistd() -> list[str]:
    exe = Path(sys.executable).with_name("twistd")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(peak, current) RSS of a process in MB, from /proc (Linux)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmHWM", 0.0), values.get("VmRSS", 0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def token_for(run: int, worker: int, i: int) -> str:
    return f"{run:02x}{worker:02x}{i:060x}"


def api_call(
    conn: http.client.HTTPConnection, key: str, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body, headers)
    response = conn.getresponse()
    return response.status, response.read()


def metric(text: str, name: str) -> float:
    want = f'{name}{{app="{APP}"}}'
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return 0.0


# --- load generator (worker processes) ------------------------------------------------------


def _submit(job: tuple[int, str, int, int, int, int]) -> tuple[int, int, float, float]:
    """Submit ``count`` notifications in requests of ``size``; (ok, failed, seconds, CPU)."""
    port, key, run, worker, count, size = job
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    path = f"/v1/apps/{APP}/notifications"
    ok = failed = 0
    bodies = []
    for start in range(0, count, size):
        tokens = [token_for(run, worker, i) for i in range(start, min(start + size, count))]
        body: dict[str, Any] = {"alert": f"bench {run}", "badge": 1, "async": True}
        if size == 1:
            body["token"] = tokens[0]
        else:
            body["tokens"] = tokens
        bodies.append((len(tokens), json.dumps(body, separators=(",", ":")).encode()))
    t0 = time.perf_counter()
    c0 = time.process_time()
    for n, raw in bodies:
        status, _ = api_call(conn, key, "POST", path, raw)
        if status == 202:
            ok += n
        else:
            failed += n
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    conn.close()
    return ok, failed, seconds, cpu


def submit_all(
    pool: Any, port: int, key: str, run: int, total: int, size: int, clients: int
) -> tuple[int, int, float, float]:
    """Spread ``total`` notifications over ``clients`` workers; (ok, failed, wall seconds,
    the workers' CPU seconds)."""
    share = [total // clients + (1 if w < total % clients else 0) for w in range(clients)]
    jobs = [(port, key, run, w, n, size) for w, n in enumerate(share) if n]
    t0 = time.perf_counter()
    results = pool.map(_submit, jobs)
    seconds = time.perf_counter() - t0
    return (
        sum(r[0] for r in results),
        sum(r[1] for r in results),
        seconds,
        sum(r[3] for r in results),
    )


# --- the library phase (its own process) ------------------------------------------------------


def library_phase(config: str, n: int) -> dict[str, Any]:
    """``send_many`` of ``n`` notifications with the client ``make_sender`` builds for the app."""
    import resource

    from twisted.internet import reactor as _reactor

    from txapns.core.notification import Notification
    from txapns.core.payload import encode_payload
    from txapns.core.result import Result
    from txapns.service.config import load_config
    from txapns.service.senders import make_sender

    reactor: Any = _reactor
    app = load_config(config).apps[0]
    client: Any = make_sender(app, reactor)
    payload = encode_payload({"aps": {"alert": "bench library", "badge": 1}})
    topic = app.bundle_id if app.protocol == "http2" else None
    notifications = [
        Notification.create(bytes.fromhex(token_for(0xEE, 0, i)), payload, topic=topic)
        for i in range(n)
    ]
    outcome = {"accepted": 0, "rejected": 0, "unknown": 0}
    timing: dict[str, float] = {}

    def on_result(result: Result) -> None:
        outcome[result.outcome.value] += 1

    def run() -> None:
        timing["t0"] = time.perf_counter()
        client.start()
        d = client.send_many(notifications, on_result)

        def done(_: object) -> Any:
            timing["t1"] = time.perf_counter()
            return client.stop()

        d.addCallback(done)
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    seconds = timing.get("t1", time.perf_counter()) - timing["t0"]
    return {
        "n": n,
        **outcome,
        "seconds": seconds,
        "rate": outcome["accepted"] / seconds if seconds else 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


# --- orchestration -----------------------------------------------------------------------------


def write_config(directory: Path, protocol: str, port: int, key: str) -> Path:
    (directory / "api.key").write_text(key + "\n")
    pki = directory / "pki"
    if protocol == "binary":
        credentials = ['cert_file = "pki/client.pem"', 'key_file = "pki/client-key.pem"']
    else:
        ids = json.loads((pki / "token.json").read_text())
        credentials = [
            f'key_file = "pki/AuthKey_{ids["key_id"]}.p8"',
            f'key_id = "{ids["key_id"]}"',
            f'team_id = "{ids["team_id"]}"',
        ]
    config = directory / "service.toml"
    config.write_text(
        "\n".join(
            [
                'api_key_file = "api.key"',
                'spool = "spool.sqlite3"',
                "[[app]]",
                f'name = "{APP}"',
                'bundle_id = "com.example.app"',
                'environment = "sandbox"',
                f'protocol = "{protocol}"',
                'host = "127.0.0.1"',
                f"port = {port}",
                'ca_file = "pki/ca.pem"',
                *credentials,
                "",
            ]
        )
    )
    return config


def wait_for_port(log: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited ({proc.returncode}); see {log}")
        if log.exists():
            m = re.search(r"ApiSite starting on (\d+)", log.read_text(errors="replace"))
            if m:
                return int(m.group(1))
        time.sleep(0.05)
    raise SystemExit(f"the service did not start in {timeout}s; see {log}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--protocol", choices=("binary", "http2"), default="binary")
    ap.add_argument("--library-n", type=int, default=100_000)
    ap.add_argument("--single-n", type=int, default=5_000, help="requests of 1 notification")
    ap.add_argument("--batch-n", type=int, default=100_000, help="notifications, 500 a request")
    ap.add_argument("--clients", type=int, default=2, help="load-generator processes")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument(
        "--profile", metavar="FILE", help="run the service under cProfile, stats saved to FILE"
    )
    ap.add_argument("--library", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.library:
        print(json.dumps(library_phase(args.library, args.library_n)), flush=True)
        return 0

    work = Path(tempfile.mkdtemp(prefix="txapns-service-bench-"))
    record = work / "record.jsonl"
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    try:
        kind = "gateway" if args.protocol == "binary" else "http2"
        fake = subprocess.Popen(
            [sys.executable, "-m", "txapns.testing", kind, "--pki-dir", str(work / "pki"),
             "--record", str(record)],
            stdout=subprocess.PIPE, cwd=work, env=env,
        )  # fmt: skip
        procs.append(fake)
        assert fake.stdout is not None
        fake_port = int(fake.stdout.readline())
        key = secrets.token_urlsafe(32)
        config = write_config(work, args.protocol, fake_port, key)
        counter = RecordCounter(record)
        print(
            f"txapns service benchmark: protocol {args.protocol}, fake APNs "
            f"(python -m txapns.testing {kind}) on port {fake_port}, {os.cpu_count()} CPUs"
        )

        # 1. The library alone, straight to the fake.
        lib_out = subprocess.run(
            [sys.executable, __file__, "--library", str(config), "--library-n",
             str(args.library_n)],
            capture_output=True, check=True, cwd=work, env=env,
        )  # fmt: skip
        lib = json.loads(lib_out.stdout.decode().strip().splitlines()[-1])
        counter.wait_for(lib["accepted"], 30)
        print(
            f"library ({'BinaryClient' if args.protocol == 'binary' else 'HTTP2Client'}"
            f".send_many): {lib['accepted']:,}/{lib['n']:,} accepted in {lib['seconds']:.2f} s = "
            f"{lib['rate']:,.0f} notifications/s (peak RSS {lib['peak_rss_mb']:.0f} MB)"
        )

        # 2. The service.
        log = work / "service.log"
        profiling: list[str] = []
        if args.profile:
            stats = str(Path(args.profile).resolve())
            profiling = ["--profile", stats, "--profiler", "cprofile", "--savestats"]
        service = subprocess.Popen(
            [*twistd(), "-n", "--pidfile=", "--logfile", str(log), *profiling, "apns", "--config",
             str(config), "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=work, env=env,
        )  # fmt: skip
        procs.append(service)
        port = wait_for_port(log, service)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(200):
            status, _ = api_call(conn, key, "GET", "/healthz")
            if status == 200:
                break
            time.sleep(0.05)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.clients) as pool:
            # 2a. Requests of 1 notification.
            base = counter.poll()
            ok, failed, seconds, _ = submit_all(pool, port, key, 1, args.single_n, 1, args.clients)
            print(
                f"service, async requests of 1:   {ok:,} accepted durably ({failed} failed) in "
                f"{seconds:.2f} s = {ok / seconds:,.0f} notifications/s "
                f"({args.clients} clients)"
            )
            counter.wait_for(base + ok, 120)

            # 2b. Requests of 500, and delivery end to end.
            _, text = api_call(conn, key, "GET", "/metrics")
            confirmed0 = metric(text.decode(), "txapns_notifications_accepted_total")
            base = counter.poll()
            cpu0 = {p.pid: cpu_seconds(p.pid) for p in (service, fake)}
            t0 = time.perf_counter()
            ok, failed, seconds, client_cpu = submit_all(
                pool, port, key, 2, args.batch_n, BATCH, args.clients
            )
        print(
            f"service, async requests of 500: {ok:,} accepted durably ({failed} failed) in "
            f"{seconds:.2f} s = {ok / seconds:,.0f} notifications/s ({args.clients} clients)"
        )
        t_delivered = counter.wait_for(base + ok, 300)
        t_confirmed = None
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            _, text = api_call(conn, key, "GET", "/metrics")
            if metric(text.decode(), "txapns_notifications_accepted_total") >= confirmed0 + ok:
                t_confirmed = time.perf_counter()
                break
            time.sleep(0.01)
        if t_delivered is None or t_confirmed is None:
            print(f"  not all delivered/confirmed in time: {counter.poll() - base:,} delivered")
            return 1
        cpu = {p.pid: cpu_seconds(p.pid) - cpu0[p.pid] for p in (service, fake)}
        e2e = ok / (t_delivered - t0)
        print(
            f"service, end to end:            {ok:,} delivered to the fake in "
            f"{t_delivered - t0:.2f} s = {e2e:,.0f} notifications/s; outcomes all recorded "
            f"after {t_confirmed - t0:.2f} s = {ok / (t_confirmed - t0):,.0f} notifications/s"
        )
        print(
            f"  CPU over those {t_confirmed - t0:.2f} s ({os.cpu_count()} CPUs shared): service "
            f"{cpu[service.pid]:.2f} s ({cpu[service.pid] / ok * 1e6:.0f} µs/notification), "
            f"fake {cpu[fake.pid]:.2f} s, load generators {client_cpu:.2f} s"
        )
        peak, current = peak_rss_mb(service.pid)
        print(f"service peak RSS {peak:.0f} MB (now {current:.0f} MB)")
        print(
            f"end-to-end / library = {e2e / lib['rate']:.2f} "
            f"(target ≥ 0.5); requests of 500 accepted durably: target ≥ 10,000/s"
        )
        conn.close()
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
