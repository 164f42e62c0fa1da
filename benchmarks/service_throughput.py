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

It prints the figures, the service's peak RSS (``VmHWM``) and the ratio of the end-to-end rate
to the library's. The library runs again after the service, and the ratio is to the mean of its
two rates: on a shared machine its rate moves between runs as much as the service's. No
assertions: the issue's targets are ≥ 10,000 notifications/s accepted durably with batches of
500, and end-to-end delivery at ≥ half the library's rate.

``--mock DIR`` (a copy of the neutral Node harness, set up with ``./make-certs.sh && npm ci``)
starts its ``mock_h2_server.js`` on a free port and sends there instead of to the Python fake
(HTTP/2, token auth with the harness's key); ``--target URL --cert-dir DIR`` sends to a mock
that is already running. Against a mock, "end to end" is until the service has recorded every
outcome, and the library uses 4 connections.

``--h1load`` adds the one-event-one-push load: ``h2load --h1`` (nghttp2's C load generator,
``apt-get install nghttp2-client``; installed when missing and running as root) posts one
notification per request for ``--h1load-seconds`` on 1, 16 and 64 keep-alive connections
(``--h1load-conns``), first to a bare :mod:`twisted.web` resource that reads the body and
answers 202 (the framework's own ceiling, its own process), then to the same resource
committing each body to SQLite first (WAL, ``synchronous=FULL``, one transaction per
request: the price of a durable answer alone), on a thread and then on the reactor's, then
to the service (asynchronous), then synchronous on 1 connection with p50/p99 latency. It
prints each rate and its ratio to the references at the same connection count, all in the
same run. CPU per request counts h2load's 1 s warm-up, whose requests it does not report,
at the rate of the rest.

    python benchmarks/service_throughput.py --mock /tmp/apns-bench --h1load --skip-batch
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


def reactor_cpu_seconds(pid: int) -> float:
    """CPU seconds of the process's main thread (the reactor's; the spool has its own)."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
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
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        if method != "GET":
            raise
        # The service closed this keep-alive connection after its idle_timeout (60 s: a
        # GET of /metrics after long --h1load phases); http.client connects again.
        conn.close()
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


def wait_drained(conn: http.client.HTTPConnection, key: str, timeout: float = 300) -> bool:
    """Poll ``/metrics`` until every notification the service stored has an outcome."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        _, raw = api_call(conn, key, "GET", "/metrics")
        text = raw.decode()
        if metric(text, "txapns_notifications_accepted_total") >= metric(
            text, "txapns_notifications_submitted_total"
        ):
            return True
        time.sleep(0.05)
    return False


# --- one notification per request, load from h2load --h1 -------------------------------------


def bare_site(durable: bool = False, inline: bool = False) -> None:
    """The reference: a bare :mod:`twisted.web` resource that reads the body and answers 202
    (default ``Site``, same reactor as ``twistd``); prints its port, then serves.

    ``durable``: before answering, it also commits the body to SQLite in the work directory
    (WAL, ``synchronous=FULL``, as the service's spool) on one thread, one transaction per
    request: the simplest durable answer, so the price of durability alone is measured
    beside the service in the same run. ``inline``: the same commit on the reactor thread,
    the fsync included (no hand-off to a thread and back: the cheapest durable answer with
    one fsync per request, what the service does while its disk's fsyncs are quick)."""
    import sqlite3

    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.failure import Failure
    from twisted.python.threadpool import ThreadPool
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Request, Site

    reactor: Any = _reactor
    pool = ThreadPool(minthreads=1, maxthreads=1, name="bare-durable")
    db: list[sqlite3.Connection] = []

    def store(body: bytes) -> None:
        if not db:  # made in the one thread that uses it (the pool's, or the reactor's)
            c = sqlite3.connect("bare-inline.db" if inline else "bare-durable.db")
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("PRAGMA synchronous = FULL")
            c.execute("CREATE TABLE IF NOT EXISTS jobs (body BLOB)")
            db.append(c)
        with db[0]:
            db[0].execute("INSERT INTO jobs (body) VALUES (?)", (body,))

    class Bare(Resource):
        isLeaf = True

        def render_POST(self, request: Request) -> bytes | int:
            assert request.content is not None
            body = request.content.read()
            request.setResponseCode(202)
            request.setHeader(b"content-type", b"application/json")
            answer_body = b'{"job_id":"0"}'
            if not durable:
                return answer_body
            request.setHeader(b"content-length", b"%d" % len(answer_body))  # as the other
            gone: list[object] = []
            request.notifyFinish().addErrback(gone.append)  # h2load closed at its end

            def answer(_: object) -> None:
                if not gone:
                    request.write(answer_body)
                    request.finish()

            def failed(failure: Failure) -> None:
                print(f"bare-durable: the commit failed: {failure.value!r}", file=sys.stderr)
                if not gone:
                    request.setResponseCode(500)
                    request.write(answer_body)
                    request.finish()

            if inline:
                d = maybeDeferred(store, body)
            else:
                d = deferToThreadPool(reactor, pool, store, body)
            d.addCallbacks(answer, failed)
            return NOT_DONE_YET

    if durable and not inline:
        pool.start()
        reactor.addSystemEventTrigger("before", "shutdown", pool.stop)
    port = reactor.listenTCP(0, Site(Bare()), interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def find_h2load() -> str:
    """``h2load``; installed with apt-get (Debian's ``nghttp2-client``) when missing."""
    exe = shutil.which("h2load")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("h2load not found: apt-get install -y nghttp2-client", flush=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "nghttp2-client"],
            stdout=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        exe = shutil.which("h2load")
    if exe is None:
        raise SystemExit("h2load is needed for --h1load: apt-get install nghttp2-client")
    return exe


def h1load(
    h2load: str, url: str, body: Path, key: str, conns: int, seconds: float, latency: bool = False
) -> dict[str, float]:
    """``h2load --h1``: ``conns`` keep-alive connections, one request at a time each, POSTing
    ``body`` for ``seconds`` after a 1 s warm-up; requests/s, 2xx share, optional p50/p99."""
    log_file = body.with_suffix(".log")
    cmd = [
        h2load, "--h1", "-c", str(conns), "-m", "1", "-D", f"{seconds:g}", "--warm-up-time", "1",
        "-d", str(body), "-H", f"authorization: Bearer {key}",
        "-H", "content-type: application/json", url,
    ]  # fmt: skip
    if latency:
        log_file.unlink(missing_ok=True)
        cmd.insert(1, f"--log-file={log_file}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    out = proc.stdout + proc.stderr
    import re

    finished = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if finished is None or codes is None:
        raise SystemExit(f"h2load output not understood:\n{out}")
    ok, *bad = (int(g) for g in codes.groups())
    result = {"rate": float(finished.group(1)), "ok": ok, "bad": sum(bad)}
    if latency:
        durations = sorted(
            int(line.split("\t")[2]) / 1000.0
            for line in log_file.read_text().splitlines()
            if line.count("\t") == 2
        )
        if durations:
            result["p50"] = durations[len(durations) // 2]
            result["p99"] = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
    return result


def h1load_phase(
    args: argparse.Namespace, work: Path, env: dict[str, str], port: int, key: str,
    conn: http.client.HTTPConnection,
) -> None:  # fmt: skip
    h2load = find_h2load()
    conns = [int(c) for c in args.h1load_conns.split(",")]
    seconds = args.h1load_seconds
    token = token_for(3, 0, 1)
    async_body = work / "single-async.json"
    async_body.write_text(json.dumps({"token": token, "alert": "bench", "badge": 1, "async": True}))
    sync_body = work / "single-sync.json"
    sync_body.write_text(json.dumps({"token": token, "alert": "bench", "badge": 1}))
    reference: dict[int, dict[str, Any]] = {}
    durable: dict[int, dict[str, Any]] = {}
    inline: dict[int, dict[str, Any]] = {}
    # h2load counts the requests after its warm-up; the CPU is read around the whole run.
    share = seconds / (seconds + 1)
    for flag, into in (
        ("--bare-site", reference), ("--bare-durable", durable), ("--bare-inline", inline)
    ):
        bare = subprocess.Popen(
            [sys.executable, __file__, flag], stdout=subprocess.PIPE, cwd=work, env=env
        )
        try:
            assert bare.stdout is not None
            bare_port = int(bare.stdout.readline())
            bare_url = f"http://127.0.0.1:{bare_port}/v1/apps/{APP}/notifications"
            for c in conns:
                cpu0 = cpu_seconds(bare.pid)
                into[c] = h1load(h2load, bare_url, async_body, key, c, seconds)
                into[c]["cpu"] = (cpu_seconds(bare.pid) - cpu0) * share
        finally:
            bare.send_signal(signal.SIGTERM)
            bare.wait(30)
    url = f"http://127.0.0.1:{port}/v1/apps/{APP}/notifications"
    print(f"one notification per request, h2load --h1, {seconds:g} s each after a 1 s warm-up:")
    for c in conns:
        wait_drained(conn, key)
        cpu0, reactor0 = cpu_seconds(args.service_pid), reactor_cpu_seconds(args.service_pid)
        got = h1load(h2load, url, async_body, key, c, seconds)
        cpu = (cpu_seconds(args.service_pid) - cpu0) * share
        reactor = (reactor_cpu_seconds(args.service_pid) - reactor0) * share
        ref = reference[c]
        print(
            f"  {c:3d} connections: bare twisted.web {ref['rate']:8,.0f} requests/s "
            f"({ref['cpu'] / max(ref['ok'], 1) * 1e6:.0f} µs CPU each); "
            f"service async {got['rate']:8,.0f} requests/s ({got['ok']:,} 202, {got['bad']} "
            f"other; {cpu / max(got['ok'], 1) * 1e6:.0f} µs CPU each) = "
            f"{got['rate'] / ref['rate']:.2f} of bare (target ≥ 0.6)"
        )
        print(
            f"       service: reactor thread {reactor / max(got['ok'], 1) * 1e6:.0f} µs CPU "
            f"per request, busy {reactor / seconds:.0%} of the run; other threads "
            f"(the spool's) {(cpu - reactor) / max(got['ok'], 1) * 1e6:.0f} µs"
        )
        for what, dur in (("on a thread", durable[c]), ("on the reactor", inline[c])):
            print(
                f"       bare + one SQLite commit per request {what} {dur['rate']:8,.0f} "
                f"requests/s ({dur['cpu'] / max(dur['ok'], 1) * 1e6:.0f} µs CPU each; "
                f"{dur['rate'] / ref['rate']:.2f} of bare): the service is "
                f"{got['rate'] / dur['rate']:.2f} of that"
            )
    fsync = fsync_p50(work)
    print(
        f"  this disk: fsync p50 {fsync * 1e3:.2f} ms, so one connection (one request at a "
        f"time, each durable before its answer) is capped at {1 / fsync:,.0f} requests/s"
    )
    wait_drained(conn, key)
    got = h1load(h2load, url, sync_body, key, 1, seconds, latency=True)
    print(
        f"  sync, 1 connection: {got['rate']:,.0f} requests/s ({got['ok']:,} 200, {got['bad']} "
        f"other), latency p50 {got.get('p50', 0):.2f} ms, p99 {got.get('p99', 0):.2f} ms "
        "(target p50 ≤ 2 ms)"
    )
    wait_drained(conn, key)


def fsync_p50(directory: Path, rounds: int = 100) -> float:
    """Median seconds of one 4 KiB write + fsync in ``directory`` (where the spool is)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return sorted(times)[len(times) // 2]


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


def library_phase(config: str, n: int, connections: int | None) -> dict[str, Any]:
    """``send_many`` of ``n`` notifications with the client ``make_sender`` builds for the app
    (an :class:`~txapns.http2.HTTP2Client` with exactly ``connections`` if given)."""
    import resource

    from twisted.internet import reactor as _reactor

    from txapns.core.notification import Notification
    from txapns.core.payload import encode_payload
    from txapns.core.result import Result
    from txapns.service.config import load_config
    from txapns.service.senders import make_sender

    reactor: Any = _reactor
    app = load_config(config).apps[0]
    client: Any
    if connections:
        from txapns.service.senders import http2_client_for_app

        client = http2_client_for_app(
            app, reactor, min_connections=connections, max_connections=connections
        )
    else:
        client = make_sender(app, reactor)
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


def profiled(stats: str, twistd_args: list[str]) -> int:
    """``twistd`` with ``twistd_args`` under cProfile timed by the reactor thread's CPU time
    (``time.thread_time``), not the wall clock: on a shared machine a wall-clock profile
    charges whatever ran while the service waited for a core to the function it was in.
    The spool's thread is not profiled. Stats are saved to ``stats`` when twistd returns."""
    import cProfile

    from twisted.application import app
    from twisted.scripts.twistd import run

    # twistd re-raises the stopping signal at exit (the process would die before saving).
    app._exitWithSignal = lambda sig: None  # type: ignore[attr-defined]
    sys.argv = ["twistd", *twistd_args]
    profile = cProfile.Profile(time.thread_time)
    try:
        profile.runcall(run)
    except SystemExit:
        pass
    finally:
        profile.dump_stats(stats)
    return 0


# --- orchestration -----------------------------------------------------------------------------


def write_config(
    directory: Path,
    protocol: str,
    port: int,
    key: str,
    mock_certs: Path | None = None,
    http_server: str = "lean",
) -> Path:
    (directory / "api.key").write_text(key + "\n")
    pki = directory / "pki"
    bundle_id = "com.example.app"
    if mock_certs is not None:  # the neutral harness's CA and ES256 bench key
        pki = mock_certs.resolve()
        bundle_id = "com.example.bench"
        credentials = [
            f'key_file = "{pki}/AuthKey_BENCHKEY01.p8"',
            'key_id = "BENCHKEY01"',
            'team_id = "BENCHTEAM1"',
        ]
    elif protocol == "binary":
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
                f'http_server = "{http_server}"',
                "[[app]]",
                f'name = "{APP}"',
                f'bundle_id = "{bundle_id}"',
                'environment = "sandbox"',
                f'protocol = "{protocol}"',
                'host = "127.0.0.1"',
                f"port = {port}",
                f'ca_file = "{pki}/ca.pem"',
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
            m = re.search(r"Api(?:Site|Factory) starting on (\d+)", log.read_text(errors="replace"))
            if m:
                return int(m.group(1))
        time.sleep(0.05)
    raise SystemExit(f"the service did not start in {timeout}s; see {log}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_mock(harness: Path, work: Path, procs: list[subprocess.Popen[bytes]]) -> int:
    """The neutral harness's Node HTTP/2 mock on a free port (records nothing to disk)."""
    port = free_port()
    with open(work / "mock.log", "wb") as out:
        mock = subprocess.Popen(
            ["node", str(harness / "mock_h2_server.js"), str(port)],
            cwd=harness, stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ, CERT_DIR=str(harness / "certs"), STATS_FILE="",
                     LIFETIME_S="3600"),
        )  # fmt: skip
    procs.append(mock)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if mock.poll() is not None:
            raise SystemExit(f"the Node mock exited; see {work / 'mock.log'}")
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the Node mock did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--protocol", choices=("binary", "http2"), default="binary")
    ap.add_argument("--library-n", type=int, default=100_000)
    ap.add_argument("--single-n", type=int, default=5_000, help="requests of 1 notification")
    ap.add_argument("--batch-n", type=int, default=100_000, help="notifications, 500 a request")
    ap.add_argument("--clients", type=int, default=2, help="load-generator processes")
    ap.add_argument(
        "--mock", metavar="DIR", type=Path,
        help="start DIR/mock_h2_server.js (the neutral Node harness) and send to it (HTTP/2)",
    )  # fmt: skip
    ap.add_argument(
        "--target", metavar="URL",
        help="send to this running HTTP/2 mock (https://127.0.0.1:PORT) instead of a fake",
    )  # fmt: skip
    ap.add_argument(
        "--cert-dir", type=Path, help="with --target: the harness's certs/ (ca.pem, bench key)"
    )
    ap.add_argument(
        "--http-server", choices=("lean", "twisted"), default="lean",
        help="the service's HTTP/1.1 layer (http_server in its configuration)",
    )  # fmt: skip
    ap.add_argument("--h1load", action="store_true", help="one-notification requests, h2load")
    ap.add_argument("--h1load-conns", default="1,16,64", help="comma-separated connections")
    ap.add_argument("--h1load-seconds", type=float, default=5.0)
    ap.add_argument("--skip-library", action="store_true")
    ap.add_argument("--skip-single", action="store_true", help="skip the http.client requests of 1")
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument(
        "--profile", metavar="FILE",
        help="run the service under cProfile (reactor thread CPU time), stats saved to FILE",
    )  # fmt: skip
    ap.add_argument("--library", metavar="CONFIG", help=argparse.SUPPRESS)
    ap.add_argument("--library-conns", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bare-site", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bare-durable", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bare-inline", action="store_true", help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--profiled"]:
        return profiled(sys.argv[2], sys.argv[3:])
    args = ap.parse_args()
    if args.library:
        print(
            json.dumps(library_phase(args.library, args.library_n, args.library_conns)),
            flush=True,
        )
        return 0
    if args.bare_site or args.bare_durable or args.bare_inline:
        bare_site(durable=args.bare_durable or args.bare_inline, inline=args.bare_inline)
        return 0

    work = Path(tempfile.mkdtemp(prefix="txapns-service-bench-"))
    record = work / "record.jsonl"
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    try:
        mock_certs: Path | None = None
        library_conns: list[str] = []
        if args.mock or args.target:
            args.protocol = "http2"
            if args.mock:
                mock_certs = args.mock / "certs"
                fake_port = start_mock(args.mock.resolve(), work, procs)
            else:
                from urllib.parse import urlparse

                if args.cert_dir is None:
                    raise SystemExit("--target needs --cert-dir (the harness's certs/)")
                mock_certs = args.cert_dir
                fake_port = urlparse(args.target).port or 443
            counter = None
            library_conns = ["--library-conns", "4"]
            where = f"the Node mock (mock_h2_server.js) on port {fake_port}"
        else:
            kind = "gateway" if args.protocol == "binary" else "http2"
            fake = subprocess.Popen(
                [sys.executable, "-m", "txapns.testing", kind, "--pki-dir", str(work / "pki"),
                 "--record", str(record)],
                stdout=subprocess.PIPE, cwd=work, env=env,
            )  # fmt: skip
            procs.append(fake)
            assert fake.stdout is not None
            fake_port = int(fake.stdout.readline())
            counter = RecordCounter(record)
            where = f"fake APNs (python -m txapns.testing {kind}) on port {fake_port}"
        key = secrets.token_urlsafe(32)
        config = write_config(work, args.protocol, fake_port, key, mock_certs, args.http_server)
        print(
            f"txapns service benchmark: protocol {args.protocol}, {where}, API over "
            f"{args.http_server}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )

        # 1. The library alone, straight to the fake.
        def library(when: str) -> dict[str, Any]:
            base = counter.poll() if counter is not None else 0
            out = subprocess.run(
                [sys.executable, __file__, "--library", str(config), "--library-n",
                 str(args.library_n), *library_conns],
                capture_output=True, check=True, cwd=work, env=env,
            )  # fmt: skip
            got: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
            if counter is not None:
                counter.wait_for(base + got["accepted"], 30)
            print(
                f"library ({'BinaryClient' if args.protocol == 'binary' else 'HTTP2Client'}"
                f".send_many{', 4 connections' if library_conns else ''}), {when}: "
                f"{got['accepted']:,}/{got['n']:,} accepted in {got['seconds']:.2f} s = "
                f"{got['rate']:,.0f} notifications/s (peak RSS {got['peak_rss_mb']:.0f} MB)"
            )
            return got

        lib: dict[str, Any] | None = None
        if not args.skip_library:
            lib = library("before the service")

        # 2. The service.
        log = work / "service.log"
        launcher = twistd()
        if args.profile:
            launcher = [sys.executable, __file__, "--profiled", str(Path(args.profile).resolve())]
        service = subprocess.Popen(
            [*launcher, "-n", "--pidfile=", "--logfile", str(log), "apns", "--config",
             str(config), "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=work, env=env,
        )  # fmt: skip
        procs.append(service)
        args.service_pid = service.pid
        port = wait_for_port(log, service)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(200):
            status, _ = api_call(conn, key, "GET", "/healthz")
            if status == 200:
                break
            time.sleep(0.05)
        if args.h1load:
            h1load_phase(args, work, env, port, key, conn)
        if args.skip_single and args.skip_batch:
            return 0
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.clients) as pool:
            # 2a. Requests of 1 notification.
            if not args.skip_single:
                base = counter.poll() if counter else 0
                ok, failed, seconds, _ = submit_all(
                    pool, port, key, 1, args.single_n, 1, args.clients
                )
                print(
                    f"service, async requests of 1:   {ok:,} accepted durably ({failed} failed)"
                    f" in {seconds:.2f} s = {ok / seconds:,.0f} notifications/s "
                    f"({args.clients} clients)"
                )
                if counter:
                    counter.wait_for(base + ok, 120)
                wait_drained(conn, key)
            if args.skip_batch:
                return 0

            # 2b. Requests of 500, and delivery end to end.
            _, text = api_call(conn, key, "GET", "/metrics")
            confirmed0 = metric(text.decode(), "txapns_notifications_accepted_total")
            base = counter.poll() if counter else 0
            watched = [p for p in procs if p is not service]
            cpu0 = {p.pid: cpu_seconds(p.pid) for p in (service, *watched)}
            t0 = time.perf_counter()
            ok, failed, seconds, client_cpu = submit_all(
                pool, port, key, 2, args.batch_n, BATCH, args.clients
            )
        print(
            f"service, async requests of 500: {ok:,} accepted durably ({failed} failed) in "
            f"{seconds:.2f} s = {ok / seconds:,.0f} notifications/s ({args.clients} clients)"
        )
        t_confirmed = None
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            _, text = api_call(conn, key, "GET", "/metrics")
            if metric(text.decode(), "txapns_notifications_accepted_total") >= confirmed0 + ok:
                t_confirmed = time.perf_counter()
                break
            time.sleep(0.01)
        # Against a mock that records nothing to disk, "delivered" is "outcome recorded".
        t_delivered = counter.wait_for(base + ok, 300) if counter else t_confirmed
        if t_delivered is None or t_confirmed is None:
            print(f"  not all delivered/confirmed in time (ok={ok:,})")
            return 1
        cpu = {p.pid: cpu_seconds(p.pid) - cpu0[p.pid] for p in (service, *watched)}
        e2e = ok / (t_delivered - t0)
        print(
            f"service, end to end:            {ok:,} delivered in "
            f"{t_delivered - t0:.2f} s = {e2e:,.0f} notifications/s; outcomes all recorded "
            f"after {t_confirmed - t0:.2f} s = {ok / (t_confirmed - t0):,.0f} notifications/s"
        )
        print(
            f"  CPU over those {t_confirmed - t0:.2f} s ({os.cpu_count()} CPUs shared): service "
            f"{cpu[service.pid]:.2f} s ({cpu[service.pid] / ok * 1e6:.0f} µs/notification), "
            f"{'mock' if counter is None else 'fake'} "
            f"{sum(cpu[p.pid] for p in watched):.2f} s, load generators {client_cpu:.2f} s"
        )
        peak, current = peak_rss_mb(service.pid)
        print(f"service peak RSS {peak:.0f} MB (now {current:.0f} MB)")
        if lib is not None:
            # The library's rate moves between runs on a shared machine as much as the
            # service's: measured again after the service, the ratio is to the mean of both.
            again = library("after the service")
            rate = (lib["rate"] + again["rate"]) / 2
            print(
                f"end-to-end / library = {e2e / rate:.2f} (to the mean of the library's two "
                f"runs, {rate:,.0f}/s; target ≥ {0.8 if counter is None else 0.5}); "
                "requests of 500 accepted durably: target ≥ 10,000/s"
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
