"""The ``txapns`` command: ``send`` (one, many, or a token file) and ``doctor``.

    txapns send --fake 0123…abcd --title Hi --body "Hello"
    txapns send --config apns.toml --app shop --tokens tokens.txt --results results.jsonl
    txapns doctor --config apns.toml

It drives the same clients as the service, without the HTTP API or the spool.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .core.errors import APNsError, ValidationError
from .core.notification import Notification, PushType, shorten
from .core.payload import Alert, build_payload
from .core.result import Result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="txapns", description="Send Apple push notifications.")
    sub = p.add_subparsers(dest="command", required=True)

    def target(sp: argparse.ArgumentParser) -> None:
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--fake", action="store_true", help="use an embedded fake APNs")
        g.add_argument("--config", help="TOML configuration file (as for twistd apns)")
        sp.add_argument("--app", help="app name in the configuration (default: the first)")
        sp.add_argument(
            "--fake-protocol", choices=("binary", "http2"), default="http2", help="with --fake"
        )

    send = sub.add_parser("send", help="send one notification, or one per token")
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
    send.add_argument("--no-progress", action="store_true")

    doctor = sub.add_parser("doctor", help="check credentials and connectivity")
    target(doctor)
    return p


def _payload(args: argparse.Namespace) -> dict[str, Any] | str:
    if args.payload:
        return str(args.payload)
    alert: Any = args.alert
    if args.title or args.body:
        alert = Alert(title=args.title, body=args.body or args.alert)
    return build_payload(alert, badge=args.badge, sound=args.sound)


def _tokens(args: argparse.Namespace) -> Iterator[str]:
    yield from args.token
    if args.tokens:
        stream: TextIO = sys.stdin if args.tokens == "-" else open(args.tokens)  # noqa: SIM115
        with stream:
            for line in stream:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line


def _result_json(result: Result) -> dict[str, Any]:
    return {
        "token": result.notification.token_hex,
        "outcome": result.outcome.value,
        "status": result.status,
        "reason": result.reason,
        "apns_id": result.apns_id,
        "timestamp": result.timestamp.isoformat() if result.timestamp else None,
        "attempts": result.attempts,
    }


class _Progress:
    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled and out.isatty()
        self.done = 0
        self.last = 0.0

    def tick(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.enabled and now - self.last > 0.2:
            self.last = now
            self.out.write(f"\r{self.done} sent")
            self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\r")


def _print_summary(counts: Counter[str], reasons: Counter[str], out: TextIO) -> None:
    total = sum(counts.values())
    out.write(f"{'outcome':<12}{'count':>10}\n")
    for outcome in ("accepted", "rejected", "unknown"):
        out.write(f"{outcome:<12}{counts[outcome]:>10}\n")
    for reason, n in reasons.most_common():
        out.write(f"  {reason:<30}{n:>10}\n")
    out.write(f"{'total':<12}{total:>10}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from twisted.internet import task

    box = {"code": 0}

    def run(reactor: Any) -> Any:
        from twisted.internet.defer import ensureDeferred

        coro = _send(reactor, args) if args.command == "send" else _doctor(reactor, args)
        d = ensureDeferred(coro)
        return d.addCallback(lambda code: box.__setitem__("code", code))

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return box["code"]


async def _connect(reactor: Any, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Returns (sender, app, fake service or None), the sender started."""
    from .service.config import load_config
    from .service.senders import make_sender

    fake = None
    if args.config:
        config = load_config(args.config)
        app = config.app(args.app) if args.app else config.apps[0]
        sender = make_sender(app, reactor)
    else:
        from .tap import _fake_app, _FakeAPNs

        fake = _FakeAPNs(reactor, args.fake_protocol)
        fake.startService()
        app = _fake_app(fake, Path(tempfile.mkdtemp(prefix="txapns-cli-")))
        sender = make_sender(app, reactor, address=fake.address, hostname="localhost")
    start = getattr(sender, "start", None)
    if start is not None:
        start()
    return sender, app, fake


async def _send(reactor: Any, args: argparse.Namespace) -> int:
    from twisted.internet.defer import Deferred

    payload = _payload(args)
    tokens = list(_tokens(args))
    if not tokens:
        sys.stderr.write("txapns send: no device token given\n")
        return 2
    sender, app, fake = await _connect(reactor, args)
    results_file = open(args.results, "w") if args.results else None  # noqa: SIM115
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    progress = _Progress(sys.stderr, not args.no_progress and len(tokens) > 1)
    pending: list[Deferred[Result]] = []

    def record(result: Result) -> None:
        counts[result.outcome.value] += 1
        if not result.accepted:
            reasons[result.reason or "?"] += 1
        if results_file is not None:
            results_file.write(json.dumps(_result_json(result)) + "\n")
        if len(tokens) == 1:
            sys.stdout.write(
                f"{shorten(result.notification.token)}  {result.outcome.value}  "
                f"status={result.status} reason={result.reason} apns_id={result.apns_id}\n"
            )
        progress.tick()

    push_type = PushType(args.push_type) if args.push_type else PushType.ALERT
    topic = push_type.topic_for(app.bundle_id)
    try:
        for token in tokens:
            try:
                n = Notification.create(
                    token,
                    payload,
                    push_type=args.push_type,
                    priority=args.priority,
                    expiry=args.expiration,
                    collapse_id=args.collapse_id,
                    topic=topic,
                )
                pending.append(sender.send(n).addCallback(record))
            except ValidationError as e:
                counts["rejected"] += 1
                reasons[f"invalid: {type(e).__name__}"] += 1
                sys.stderr.write(f"txapns send: {shorten(token)}: {e}\n")
        from twisted.internet.defer import gatherResults

        await gatherResults(pending)
    except APNsError as e:
        sys.stderr.write(f"txapns send: {e}\n")
        return 1
    finally:
        progress.close()
        if results_file is not None:
            results_file.close()
        await sender.stop()
        if fake is not None:
            await fake.stopService()
    if len(tokens) > 1:
        _print_summary(counts, reasons, sys.stdout)
    return 0 if counts["accepted"] == len(tokens) else 1


async def _doctor(reactor: Any, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from .service.config import ConfigError, check_credentials, load_config

    ok = True
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            sys.stdout.write(f"FAIL configuration: {e}\n")
            return 1
        apps = [config.app(args.app)] if args.app else list(config.apps)
        for app in apps:
            try:
                check_credentials(app, now=datetime.now(UTC))
                sys.stdout.write(f"ok   {app.name}: credentials look right\n")
            except ConfigError as e:
                ok = False
                sys.stdout.write(f"FAIL {app.name}: {e}\n")
    sender, app, fake = await _connect(reactor, args)
    probe = Notification.create(
        "00" * 32, build_payload("txapns doctor"), topic=PushType.ALERT.topic_for(app.bundle_id)
    )
    try:
        result = await sender.send(probe)
    finally:
        await sender.stop()
        if fake is not None:
            await fake.stopService()
    if result.local in ("tls", "circuit-open"):
        ok = False
        sys.stdout.write(f"FAIL {app.name}: connection: {result.reason}\n")
    else:
        # A rejection of the probe's all-zero token still proves the connection and auth work.
        sys.stdout.write(f"ok   {app.name}: connected; probe answered: {result}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
