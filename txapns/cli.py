"""The ``txapns`` command: ``send`` (one, many, or a token file) and ``doctor``.

    txapns send --fake 0123…abcd --title Hi --body "Hello"
    txapns send --config apns.toml --app shop --tokens tokens.txt --results results.jsonl
    txapns send --bundle-id com.example.app --key-file AuthKey_ABC123DEFG.p8 \\
        --key-id ABC123DEFG --team-id DEF123GHIJ 0123…abcd --alert Hi
    txapns doctor --config apns.toml

It drives the same clients as the service, without the HTTP API or the spool. Tokens are
streamed through the client's ``send_many``: memory stays flat for any number of tokens.

Exit codes (also in ``txapns --help``):

* 0: every notification accepted (``doctor``: every check passed);
* 1: some notifications rejected or with an unknown outcome (``doctor``: a check failed:
  credential refused, probe unanswered, APNs unreachable);
* 2: bad input or configuration: nothing was sent;
* 3: interrupted (Ctrl-C, SIGTERM) or ``--timeout`` reached; results so far are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .core.errors import APNsError, ValidationError
from .core.notification import Notification, PushType, shorten
from .core.payload import Alert, build_payload
from .core.result import Outcome, Result

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3

_EPILOG = """\
exit codes:
  0  every notification accepted (doctor: every check passed)
  1  some rejected or unknown (doctor: a check failed)
  2  bad input or configuration: nothing sent
  3  interrupted (Ctrl-C, SIGTERM) or --timeout reached; results so far are written
"""

#: Probe answers that prove the connection and the credential work: APNs checked the
#: credential and the topic, then refused the probe's made-up device token.
_PROBE_OK_REASONS = frozenset(
    {"BadDeviceToken", "Unregistered", "ExpiredToken", "DeviceTokenNotForTopic", "InvalidToken"}
)

#: What to fix, for the answers a misconfigured app gets.
_HINTS = {
    "InvalidProviderToken": "Apple refused the token: check key_id, team_id and the .p8 key",
    "ExpiredProviderToken": "Apple says the token is expired: check the system clock",
    "MissingProviderToken": "no credential was sent: give a .p8 key or a client certificate",
    "BadEnvironmentKeyIdInToken": "the key is not for this environment: check `environment`",
    "BadCertificateEnvironment": "the certificate is for the other environment: check "
    "`environment`",
    "BadCertificate": "Apple refused the certificate: check cert_file/p12_file",
    "TopicDisallowed": "this credential may not push to the bundle id: check bundle_id",
    "BadTopic": "the bundle id is malformed: check bundle_id",
    "MissingTopic": "no topic: set bundle_id",
    "tls": "the TLS handshake failed: check the certificate, ca_file and host",
}


class _UsageError(Exception):
    """Bad input or configuration: one line on stderr, exit 2."""


def _version() -> str:
    # The one version source (pyproject.toml's dynamic version reads it too), so an editable
    # install never reports stale metadata.
    from . import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="txapns",
        description="Send Apple push notifications.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"txapns {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def target(sp: argparse.ArgumentParser) -> None:
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--fake", action="store_true", help="use an embedded fake APNs")
        g.add_argument("--config", help="TOML configuration file (as for twistd apns)")
        sp.add_argument("--app", help="app name in the configuration (send: default the first)")
        sp.add_argument(
            "--fake-protocol", choices=("binary", "http2"), default="http2", help="with --fake"
        )
        one = sp.add_argument_group(
            "credentials for a one-off app (instead of --config; as twistd apns' flags)"
        )
        one.add_argument("--bundle-id", help="the app's bundle id (topic); selects this mode")
        one.add_argument("--environment", choices=("production", "sandbox"), default="production")
        one.add_argument("--protocol", choices=("http2", "binary"), default="http2")
        one.add_argument("--key-file", help="token auth: the .p8 key from Apple")
        one.add_argument("--key-id", help="token auth: the key's 10-character id")
        one.add_argument("--team-id", help="token auth: your 10-character team id")
        one.add_argument("--cert-file", help="certificate auth: PEM certificate (and key)")
        one.add_argument("--cert-key", help="certificate auth: PEM key of --cert-file")
        one.add_argument("--p12-file", help="certificate auth: PKCS#12 certificate and key")
        one.add_argument("--passphrase-file", help="passphrase of the key or PKCS#12")
        one.add_argument("--proxy", help="HTTP CONNECT proxy, http://[user:pass@]host:port")
        sp.add_argument(
            "--no-env-proxy", action="store_true", help="ignore HTTPS_PROXY/NO_PROXY (every app)"
        )
        one.add_argument("--host", help="APNs host (default: Apple's for the environment)")
        one.add_argument("--port", type=int, help="APNs port")
        one.add_argument("--ca-file", help="CA certificates to trust for the APNs host")

    send = sub.add_parser(
        "send",
        help="send one notification, or one per token",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target(send)
    send.add_argument("token", nargs="*", help="device token(s), hex")
    send.add_argument("--tokens", help="file with one hex token per line ('-' = stdin)")
    send.add_argument("--alert", help="alert text")
    send.add_argument("--title")
    send.add_argument("--body")
    send.add_argument("--badge", type=int)
    send.add_argument("--sound")
    send.add_argument("--payload", help="a complete JSON payload instead of the fields above")
    send.add_argument("--push-type", choices=[t.value for t in PushType])
    send.add_argument("--priority", type=int, choices=(1, 5, 10))
    send.add_argument("--expiration", type=int)
    send.add_argument("--collapse-id")
    send.add_argument("--results", help="write one JSON line per result to this file")
    send.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    send.add_argument(
        "--json", action="store_true", help="print the result (or the summary) as JSON"
    )
    send.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        default=10_000,
        help="HTTP/2: hold at most N notifications at a time (default 10,000); tokens are "
        "read as room frees, so memory stays flat for any number of tokens, and an "
        "interruption has at most N unsent ones to report",
    )
    send.add_argument(
        "--timeout",
        type=_seconds,
        help="give up after this many seconds (exit 3; results so far are written)",
    )

    from .service.environment_probe import device_token_arg

    doctor = sub.add_parser(
        "doctor",
        help="check credentials and connectivity of every app",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target(doctor)
    doctor.add_argument(
        "--timeout", type=_seconds, default=15.0, help="seconds to wait for APNs per app (15)"
    )
    doctor.add_argument(
        "--token",
        action="append",
        default=[],
        type=device_token_arg,
        help="a real device token (hex; repeatable): probe it with a silent background push "
        "to check `environment` (a token of the other environment is rejected as "
        "BadDeviceToken)",
    )
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


# --- input ------------------------------------------------------------------------------------


def _payload(args: argparse.Namespace) -> dict[str, Any] | str:
    if args.payload:
        return str(args.payload)
    alert: Any = args.alert
    if args.title or args.body:
        alert = Alert(title=args.title, body=args.body or args.alert)
    return build_payload(alert, badge=args.badge, sound=args.sound)


def _open_tokens(args: argparse.Namespace) -> tuple[TextIO | None, int | None]:
    """The token file (opened now, so a missing one is a usage error) and, for a regular
    file, its number of token lines (for the progress bar's total and ETA)."""
    if not args.tokens:
        return None, len(args.token)
    if args.tokens == "-":
        return sys.stdin, None
    try:
        stream = open(args.tokens, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as e:
        raise _UsageError(f"cannot read --tokens {args.tokens!r}: {e.strerror}") from None
    total = len(args.token)
    for line in stream:
        line = line.strip()
        if line and not line.startswith("#"):
            total += 1
    stream.seek(0)
    return stream, total


def _tokens(args: argparse.Namespace, stream: TextIO | None) -> Iterator[str]:
    yield from args.token
    if stream is not None:
        with stream:
            for line in stream:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line


_ONE_OFF_FLAGS = (
    "key_file",
    "key_id",
    "team_id",
    "cert_file",
    "cert_key",
    "p12_file",
    "passphrase_file",
    "proxy",
    "host",
    "port",
    "ca_file",
)


def _load_apps(args: argparse.Namespace) -> list[Any]:
    """The apps to use; with ``--no-env-proxy``, none takes its proxy from the environment."""
    apps = _configured_apps(args)
    if args.no_env_proxy:
        return [dataclasses.replace(app, proxy_from_env=False) for app in apps]
    return apps


def _configured_apps(args: argparse.Namespace) -> list[Any]:
    """The apps to use (configured, one-off from flags, or none for --fake)."""
    from .service.config import load_config

    one_off = [f for f in _ONE_OFF_FLAGS if getattr(args, f) is not None]
    if args.config:
        if args.bundle_id or one_off:
            raise _UsageError("give either --config or the credential flags, not both")
        config = load_config(args.config)
        if args.app:
            names = [a.name for a in config.apps]
            if args.app not in names:
                raise _UsageError(
                    f"no app {args.app!r} in {args.config}; configured: {', '.join(names)}"
                )
            return [config.app(args.app)]
        if not config.apps:
            raise _UsageError(f"{args.config} configures no app")
        return list(config.apps)
    if args.bundle_id:
        if args.fake:
            raise _UsageError("--fake runs without credentials; drop --bundle-id and the rest")
        return [_one_off_app(args)]
    if one_off:
        flag = "--" + one_off[0].replace("_", "-")
        raise _UsageError(f"{flag} is a credential flag: give --bundle-id too (or --config)")
    args.fake = True
    return []


def _one_off_app(args: argparse.Namespace) -> Any:
    from .service.application import single_app

    options = {
        "app": args.app or "cli",
        "bundle-id": args.bundle_id,
        "environment": args.environment,
        "protocol": args.protocol,
        "key-file": args.key_file,
        "key-id": args.key_id,
        "team-id": args.team_id,
        "cert-file": args.cert_file,
        "cert-key": args.cert_key,
        "p12-file": args.p12_file,
        "passphrase-file": args.passphrase_file,
        "proxy": args.proxy,
    }
    app = single_app(options)
    if args.port is not None and not 0 < args.port < 65536:
        raise _UsageError(f"--port must be within 1..65535, not {args.port}")
    ca_file = Path(args.ca_file) if args.ca_file else None
    if ca_file is not None and not ca_file.is_file():
        raise _UsageError(f"cannot read --ca-file {args.ca_file!r}")
    return dataclasses.replace(app, host=args.host, port=args.port, ca_file=ca_file)


# --- output -----------------------------------------------------------------------------------


def _result_json(result: Result) -> dict[str, Any]:
    return {
        "token": result.notification.token_hex,
        "outcome": result.outcome.value,
        "status": result.status,
        "reason": result.reason,
        "local": result.local,
        "apns_id": result.apns_id,
        "timestamp": result.timestamp.isoformat() if result.timestamp else None,
        "attempts": result.attempts,
        # An earlier attempt's outcome was unknown: the device may get it twice.
        "may_duplicate": result.may_duplicate,
    }


class _Tally:
    """Counts outcomes and reasons as results come (nothing per notification is kept)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    def add(self, outcome: str, reason: str | None) -> None:
        self.counts[outcome] += 1
        if outcome != Outcome.ACCEPTED.value:
            self.reasons[reason or "?"] += 1

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.done - self.counts[Outcome.ACCEPTED.value]

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.done,
            **{o.value: self.counts[o.value] for o in Outcome},
            "reasons": dict(self.reasons.most_common()),
        }

    def write(self, out: TextIO) -> None:
        out.write(f"{'outcome':<12}{'count':>10}\n")
        for outcome in Outcome:
            out.write(f"{outcome.value:<12}{self.counts[outcome.value]:>10}\n")
        for reason, n in self.reasons.most_common():
            out.write(f"  {reason:<30}{n:>10}\n")
        out.write(f"{'total':<12}{self.done:>10}\n")


class _Progress:
    """A progress bar (tqdm) on a terminal; elsewhere a plain line every few seconds."""

    PLAIN_EVERY = 5.0

    def __init__(self, out: TextIO, total: int | None, tally: _Tally, enabled: bool) -> None:
        self.out = out
        self.tally = tally
        self.enabled = enabled
        self.total = total
        self._bar: Any = None
        self._next_line = time.monotonic() + self.PLAIN_EVERY
        self._shown_failed = -1
        if enabled and out.isatty():
            from tqdm import tqdm

            try:
                columns = os.get_terminal_size(out.fileno()).columns
            except OSError:
                columns = 0
            # A terminal that reports no width (some ptys) gets a fixed one, not an empty bar.
            width: dict[str, Any] = {"dynamic_ncols": True} if columns > 0 else {"ncols": 100}
            self._bar = tqdm(total=total, unit="push", file=out, mininterval=0.2, **width)

    def tick(self) -> None:
        if not self.enabled:
            return
        bar = self._bar
        if bar is not None:
            bar.update(1)
            failed = self.tally.failed
            if failed != self._shown_failed and bar.n == bar.last_print_n:
                self._shown_failed = failed
                bar.set_postfix(failed=failed, refresh=False)
            return
        now = time.monotonic()
        if now >= self._next_line:
            self._next_line = now + self.PLAIN_EVERY
            self.out.write(self._line() + "\n")
            self.out.flush()

    def _line(self) -> str:
        tally = self.tally
        of = f"/{self.total}" if self.total is not None else ""
        return (
            f"txapns send: {tally.done}{of} done, {tally.counts['accepted']} accepted, "
            f"{tally.counts['rejected']} rejected, {tally.counts['unknown']} unknown"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix(failed=self.tally.failed, refresh=False)
            self._bar.close()
        elif self.enabled:
            self.out.write(self._line() + "\n")


# --- running ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prog = f"txapns {args.command}"
    try:
        return _main(args)
    except _UsageError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return EXIT_USAGE
    except APNsError as e:  # ConfigError, ValidationError, CredentialError, …
        sys.stderr.write(f"{prog}: {e}\n")
        return EXIT_USAGE
    except OSError as e:
        where = f" {e.filename!r}" if e.filename else ""
        sys.stderr.write(f"{prog}: {e.strerror or e}{where}\n")
        return EXIT_USAGE


def _main(args: argparse.Namespace) -> int:
    """Everything that can be checked is checked before the reactor runs."""
    from .service.config import check_clock

    if args.command == "send":
        payload = _payload(args)
        push_type = PushType(args.push_type) if args.push_type else None
        # Validate the notification's fields (not the token) once, before anything is sent.
        Notification.create(
            "00" * 32,
            payload,
            push_type=push_type,
            priority=args.priority,
            expiry=args.expiration,
            collapse_id=args.collapse_id,
        )
        if args.max_queue < 1:
            raise _UsageError("--max-queue must be at least 1")
        apps = _load_apps(args)
        tokens_file, total = _open_tokens(args)
        if total == 0:
            raise _UsageError("no device token given")
        results = None
        if args.results:
            try:
                results = open(args.results, "w", encoding="utf-8")  # noqa: SIM115
            except OSError as e:
                raise _UsageError(
                    f"cannot write --results {args.results!r}: {e.strerror}"
                ) from None
        runner = _SendRun(args, apps[0] if apps else None, payload, push_type)
        return _react(lambda reactor: runner.run(reactor, tokens_file, total, results))
    apps = _load_apps(args)
    from datetime import UTC, datetime

    check_clock(datetime.now(UTC))
    return _react(lambda reactor: _doctor(reactor, args, apps))


def _react(start: Callable[[Any], Any]) -> int:
    """Run the reactor until ``start(reactor)``'s coroutine returns its exit code."""
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import ensureDeferred

    reactor: Any = _reactor
    box = {"code": EXIT_FAILED}

    def go() -> None:
        d = ensureDeferred(start(reactor))

        def done(code: int) -> None:
            box["code"] = code

        def failed(failure: Any) -> None:
            if failure.check(APNsError):
                sys.stderr.write(f"txapns: {failure.getErrorMessage()}\n")
                box["code"] = EXIT_USAGE
            else:  # a bug: show where
                failure.printTraceback(sys.stderr)
                box["code"] = EXIT_FAILED

        d.addCallbacks(done, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    return box["code"]


async def _connect(reactor: Any, app: Any, fake_protocol: str) -> tuple[Any, Any, Any]:
    """Returns (sender, app, fake or None), the sender started. ``app=None``: the fake."""
    from .service.senders import make_sender

    fake: Any = None
    if app is not None:
        sender = make_sender(app, reactor)
    else:
        from .service.application import embedded_app
        from .testing.embedded import EmbeddedAPNs

        fake = EmbeddedAPNs(reactor, fake_protocol)
        fake.startService()
        # The fake keeps no record per notification: memory stays flat for a million.
        if fake_protocol == "binary":
            fake.server.delivered = _Discard()
        else:
            fake.server.accepted = _Discard()
        workdir = tempfile.mkdtemp(prefix="txapns-cli-")
        fake.workdir = workdir
        app = embedded_app(fake, Path(workdir))
        sender = make_sender(app, reactor, address=fake.address, hostname="localhost")
    start = getattr(sender, "start", None)
    if start is not None:
        start()
    return sender, app, fake


class _Discard(list[Any]):
    """A list that keeps nothing (for the embedded fake's records)."""

    def append(self, item: Any) -> None:
        pass


async def _close(sender: Any, fake: Any, timeout: float = 0.0) -> None:
    await sender.stop(timeout)
    if fake is not None:
        await fake.stopService()
        shutil.rmtree(fake.workdir, ignore_errors=True)


def _on_signals(reactor: Any, handler: Callable[[str], None]) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to ``handler`` (in the reactor thread); returns an undo."""
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        reactor.callFromThread(handler, name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, on_signal)

    def undo() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return undo


class _SendRun:
    def __init__(
        self,
        args: argparse.Namespace,
        app: Any,
        payload: dict[str, Any] | str,
        push_type: PushType | None,
    ) -> None:
        self.args = args
        self.app = app
        self.payload = payload
        self.push_type = push_type
        self.tally = _Tally()
        self.stopped: str | None = None
        self.sender: Any = None

    def _interrupt(self, why: str) -> None:
        if self.stopped is not None:
            return
        self.stopped = why
        sys.stderr.write(f"\ntxapns send: {why}: stopping; results so far are kept\n")
        if self.sender is not None:
            # Finish what is in flight (briefly); the token stream stops being read.
            self.sender.stop(2.0)

    async def run(
        self, reactor: Any, tokens_file: TextIO | None, total: int | None, results: TextIO | None
    ) -> int:
        args = self.args
        tally = self.tally
        single = total == 1 and tokens_file is None
        undo = _on_signals(reactor, self._interrupt)
        timer = None
        if args.timeout is not None:
            timer = reactor.callLater(
                args.timeout, self._interrupt, f"timed out after {args.timeout:g} s"
            )
        progress = _Progress(sys.stderr, total, tally, not args.no_progress and not single)
        sender, app, fake = await _connect(reactor, self.app, args.fake_protocol)
        self.sender = sender
        if hasattr(sender, "max_queue"):
            sender.max_queue = args.max_queue
        topic = (self.push_type or PushType.ALERT).topic_for(app.bundle_id)
        last: list[Result] = []

        def record(result: Result) -> None:
            tally.add(result.outcome.value, result.reason or result.local)
            if results is not None:
                results.write(json.dumps(_result_json(result)) + "\n")
            if single:
                last.append(result)
            progress.tick()

        def notifications() -> Iterator[Notification]:
            for line_no, token in enumerate(_tokens(args, tokens_file), 1):
                if self.stopped is not None:
                    return
                try:
                    yield Notification.create(
                        token,
                        self.payload,
                        push_type=self.push_type,
                        priority=args.priority,
                        expiry=args.expiration,
                        collapse_id=args.collapse_id,
                        topic=topic,
                    )
                except ValidationError as e:
                    reason = f"invalid: {type(e).__name__}"
                    tally.add(Outcome.REJECTED.value, reason)
                    sys.stderr.write(f"txapns send: token #{line_no} {shorten(token)}: {e}\n")
                    if results is not None:
                        results.write(
                            json.dumps(
                                {"token": None, "line": line_no, "outcome": "rejected"}
                                | {"reason": reason, "local": "invalid"}
                            )
                            + "\n"
                        )

        try:
            await sender.send_many(notifications(), record)
        finally:
            # Results first: every result has come by now; then the client and the fake.
            if timer is not None and timer.active():
                timer.cancel()
            progress.close()
            if results is not None:
                results.close()
            await _close(sender, fake)
            undo()
        if tally.done == 0 and self.stopped is None:
            sys.stderr.write("txapns send: no device token given\n")
            return EXIT_USAGE
        if single and last:
            self._print_one(last[0])
        elif args.json:
            sys.stdout.write(json.dumps(tally.summary()) + "\n")
        else:
            tally.write(sys.stdout)
        if self.stopped is not None:
            return EXIT_INTERRUPTED
        return EXIT_OK if tally.failed == 0 and tally.done else EXIT_FAILED

    def _print_one(self, result: Result) -> None:
        if self.args.json:
            sys.stdout.write(json.dumps(_result_json(result)) + "\n")
            return
        sys.stdout.write(
            f"{shorten(result.notification.token)}  {result.outcome.value}  "
            f"status={result.status} reason={result.reason} apns_id={result.apns_id}\n"
        )


async def _doctor(reactor: Any, args: argparse.Namespace, apps: list[Any]) -> int:
    """Check every app (or the one ``--app`` names): its credential files, then a probe
    through APNs, each within ``--timeout``. One line per app; exit 1 if any fails."""
    from datetime import UTC, datetime

    from twisted.internet.defer import Deferred

    from .service.config import ConfigError, check_credentials

    interrupted: list[str] = []
    waiting: list[Deferred[Result | None]] = []

    def on_signal(name: str) -> None:
        interrupted.append(name)
        for d in waiting:
            if not d.called:
                d.callback(None)

    undo = _on_signals(reactor, on_signal)
    ok = True
    try:
        for app in apps or [None]:
            name = app.name if app is not None else "fake"
            if app is not None:
                try:
                    check_credentials(app, now=datetime.now(UTC))
                except ConfigError as e:
                    ok = False
                    sys.stdout.write(f"FAIL {name}: {e}\n")
                    continue
            waiter: Deferred[Result | None] = Deferred()
            waiting[:] = [waiter]
            verdict = await _probe(reactor, app, args, waiter)
            if interrupted:
                sys.stdout.write(f"FAIL {name}: interrupted ({interrupted[0]})\n")
                return EXIT_INTERRUPTED
            ok = ok and verdict.startswith("ok")
            sys.stdout.write(f"{verdict[:4]} {name}: {verdict[4:].strip()}\n")
            if app is not None and args.token and verdict.startswith("ok"):
                from .service.environment_probe import probe_environment

                good, line = await probe_environment(reactor, app, args.token, timeout=args.timeout)
                ok = ok and good
                sys.stdout.write(f"{'ok  ' if good else 'FAIL'} {name}: {line}\n")
            sys.stdout.flush()
    finally:
        undo()
    return EXIT_OK if ok else EXIT_FAILED


async def _probe(reactor: Any, app: Any, args: argparse.Namespace, waiter: Any) -> str:
    """Send one probe (an all-zero token, which APNs refuses only after it has checked the
    credential and the topic) and wait for it at most ``--timeout``: the verdict, "ok   …"
    or "FAIL …". ``waiter`` fires with the result, or ``None`` (timeout, signal)."""

    def finish(value: object) -> None:
        if not waiter.called:
            waiter.callback(value)

    sender, app, fake = await _connect(reactor, app, args.fake_protocol)
    host, port = fake.address() if fake is not None else app.endpoint()
    probe = Notification.create(
        "00" * 32, build_payload("txapns doctor"), topic=PushType.ALERT.topic_for(app.bundle_id)
    )
    sender.send(probe).addBoth(finish)
    timer = reactor.callLater(args.timeout, finish, None)
    try:
        result = await waiter
    finally:
        if timer.active():
            timer.cancel()
        await _close(sender, fake)
    where = f"{host}:{port}"
    if result is None:
        return (
            f"FAIL no answer from APNs at {where} within {args.timeout:g} s: check the "
            "network, firewall or proxy (--timeout to wait longer)"
        )
    if not isinstance(result, Result):
        return f"FAIL probe failed: {result}"
    if result.accepted or (result.reason in _PROBE_OK_REASONS and result.status != 403):
        return f"ok   connected to {where}; credential and topic accepted ({_describe(result)})"
    hint = _HINTS.get(result.reason or "") or _HINTS.get(result.local or "")
    what = "no answer from" if result.outcome is Outcome.UNKNOWN else "refused by"
    line = f"FAIL {what} {where}: {_describe(result)}"
    return f"{line}; {hint}" if hint else line


def _describe(result: Result) -> str:
    parts = [result.outcome.value]
    if result.status is not None:
        parts.append(str(result.status))
    if result.reason:
        parts.append(result.reason)
    if result.local and result.local != result.reason:
        parts.append(f"({result.local})")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
