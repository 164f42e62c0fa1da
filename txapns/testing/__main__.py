"""Run a fake APNs server as a standalone process: ``python -m txapns.testing``.

::

    python -m txapns.testing gateway --pki-dir DIR [--port P] [--feedback-port F]
        [--record FILE] [--reject-prefix ff] [--reject-token HEX] [--shutdown-after N]
        [--silent-close-probability X] [--seed S] [--feedback-token HEX] [--verbose]
    python -m txapns.testing http2 --pki-dir DIR [--port P] [--record FILE]
        [--reject-prefix ff] [--bad-token HEX] [--latency S] [--no-ramp] [--verbose]
        [--topic BUNDLE …] [--ca CA.pem [--ca-key KEY.pem]] [--server-cert PEM [--server-key
        PEM]] [--token-key KEYID=FILE.p8 … [--team-id TEAM]] [--new-pki]

The fake listens over TLS on 127.0.0.1 (``--port 0``, the default, picks a free port). Its
test PKI (:func:`txapns.testing.pki.make_test_pki`) is written to ``--pki-dir``: ``ca.pem``
(to trust the fake), ``client.pem`` + ``client-key.pem`` (certificate authentication),
``AuthKey_<key id>.p8`` (token authentication; the key id and team id are in
``token.json``), so a service or CLI configuration can point at them. A PKI already in
``--pki-dir`` (from an earlier start) is reused, so the CA, key id and team id stay the same
from one start to the next; ``--new-pki`` makes a fresh one.

Existing material instead: ``--ca`` (with ``--ca-key``, unless the key is in the same file)
issues the fake's server and client certificates from your own CA, so clients that trust it
need no change; ``--server-cert`` (with ``--server-key``) serves with your certificate, and
client certificates are then checked against ``--ca``; ``--token-key KEYID=FILE`` (repeatable)
accepts provider tokens signed by your ``.p8`` key under that key id, for ``--team-id``.

As Apple does, a token key may push only to its team's apps: ``--topic`` (repeatable; the
first is also the client certificate's) lists them, suffixed topics (``.voip``, …) included;
another topic gets ``400 TopicDisallowed``. The HTTP/2 fake starts token connections with one
concurrent stream until the first authenticated request, as Apple does; ``--no-ramp``
advertises the full limit at once (for clients that send a burst before reading the server's
SETTINGS: the early streams are otherwise refused with ``RST_STREAM(REFUSED_STREAM)``).

When it is ready it prints the listening port on the first line of stdout (and, with
``--feedback-port``, the feedback service's port on the second), then flushes; ``--verbose``
logs go to stderr only. Every
notification the fake accepts is appended to ``--record`` as one JSON line
``{"token": hex, "payload": text, "id": identifier or apns-id}`` as it is accepted (written
out before the reactor's next turn), so the record survives a crash of the client under
test. SIGTERM (or SIGINT) stops it; the record is flushed and closed on the way out.

``--reject-prefix HEX`` (repeatable) refuses every token starting with those hex digits: binary
status 8 (invalid token) on the gateway, ``410 Unregistered`` (with a timestamp) on the HTTP/2
fake, so the client reports them as dead tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.interfaces import IReactorTime

from .._timers import Timer
from .binary_gateway import DeliveredNotification
from .http2_server import AcceptedNotification

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""


class Recorder:
    """Appends accepted notifications to a file as JSON lines, flushed once per reactor turn."""

    def __init__(self, path: str | None, clock: IReactorTime) -> None:
        self._file: IO[str] | None = (
            open(path, "a", encoding="utf-8", buffering=1 << 16) if path else None  # noqa: SIM115
        )
        self._clock = clock
        self._flush_timer = Timer(clock, self.flush)
        self.count = 0

    def add(self, token: str, payload: bytes, ident: int | str) -> None:
        self.count += 1
        if self._file is None:
            return
        line = json.dumps(
            {"token": token, "payload": payload.decode("utf-8", "replace"), "id": ident},
            separators=(",", ":"),
        )
        self._file.write(line + "\n")
        self._flush_timer.start_unless_armed(0)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        self._flush_timer.cancel()
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


class _GatewayRecord(list[DeliveredNotification]):
    """``FakeGateway.delivered`` that also writes each delivery to a :class:`Recorder`."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def append(self, n: DeliveredNotification) -> None:
        super().append(n)
        self.recorder.add(n.token.hex(), n.payload, n.identifier)


class _HTTP2Record(list[AcceptedNotification]):
    """``FakeAPNsServer.accepted`` that also writes each acceptance to a :class:`Recorder`."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def append(self, n: AcceptedNotification) -> None:
        super().append(n)
        self.recorder.add(n.token_hex, n.payload, n.apns_id)


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an even number of hex digits") from None


def _token_key(value: str) -> tuple[str, str]:
    key_id, sep, path = value.partition("=")
    if not sep or not key_id or not path:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEYID=FILE")
    return key_id, path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m txapns.testing",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="kind", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
        p.add_argument("--interface", default="127.0.0.1", help="address to listen on")
        p.add_argument(
            "--pki-dir", required=True, help="directory to write the test PKI to (made if missing)"
        )
        p.add_argument("--record", help="append accepted notifications here as JSON lines")
        p.add_argument(
            "--topic",
            action="append",
            default=[],
            metavar="BUNDLE",
            help="the team's app bundle ids (repeatable; default com.example.app); the first "
            "is the client certificate's topic",
        )
        p.add_argument("--new-pki", action="store_true", help="do not reuse --pki-dir's PKI")
        p.add_argument("--ca", help="PEM of an existing CA certificate (and its key)")
        p.add_argument("--ca-key", help="PEM key of --ca, if not in the same file")
        p.add_argument("--server-cert", help="PEM server certificate chain (and its key)")
        p.add_argument("--server-key", help="PEM key of --server-cert, if not in the same file")
        p.add_argument(
            "--reject-prefix",
            type=_hex,
            action="append",
            default=[],
            metavar="HEX",
            help="refuse tokens starting with these hex digits as invalid (repeatable)",
        )
        p.add_argument("--verbose", action="store_true", help="log to stderr")

    gateway = sub.add_parser("gateway", help="the legacy binary gateway (and feedback service)")
    common(gateway)
    gateway.add_argument("--feedback-port", type=int, help="also serve feedback (0: any port)")
    gateway.add_argument(
        "--feedback-token",
        type=_hex,
        action="append",
        default=[],
        metavar="HEX",
        help="a token the feedback service reports as dead, timestamped now (repeatable)",
    )
    gateway.add_argument("--reject-token", type=_hex, action="append", default=[], metavar="HEX")
    gateway.add_argument(
        "--shutdown-after",
        type=int,
        help="answer status 10 (shutdown) and close after N accepted on a connection",
    )
    gateway.add_argument(
        "--silent-close-probability",
        type=float,
        default=0.0,
        help="chance that each frame cuts its connection with no answer",
    )
    gateway.add_argument("--seed", type=int, default=0, help="seed of the random closes")

    http2 = sub.add_parser("http2", help="the HTTP/2 provider API")
    common(http2)
    http2.add_argument(
        "--bad-token",
        action="append",
        default=[],
        metavar="HEX",
        help="answer 400 BadDeviceToken for this token (repeatable)",
    )
    http2.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    http2.add_argument(
        "--production", action="store_true", help="no apns-unique-id (production responses)"
    )
    http2.add_argument(
        "--no-ramp",
        action="store_true",
        help="advertise the full stream limit at once, also for token connections",
    )
    http2.add_argument(
        "--token-key",
        action="append",
        default=[],
        type=_token_key,
        metavar="KEYID=FILE",
        help="also accept tokens signed by this .p8 key under this key id (repeatable)",
    )
    http2.add_argument("--team-id", help="team of the --token-key keys (default: the PKI's)")
    return parser


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _start_gateway(reactor: Any, args: argparse.Namespace, pki: Any, recorder: Recorder) -> Any:
    from .binary_gateway import FakeFeedbackService, FakeGateway, listen_feedback, listen_gateway
    from .pki import server_tls_options

    gateway = FakeGateway(reactor, seed=args.seed)
    gateway.delivered = _GatewayRecord(recorder)
    for prefix in args.reject_prefix:
        gateway.reject_tokens_with_prefix(prefix)
    for token in args.reject_token:
        gateway.reject_token(token)
    gateway.shutdown_after = args.shutdown_after
    gateway.silent_close_probability = args.silent_close_probability
    port = listen_gateway(
        reactor,
        gateway,
        port=args.port,
        interface=args.interface,
        tls_options=server_tls_options(pki),
    )
    ports = [port]
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stop)
    if args.feedback_port is not None:
        feedback = FakeFeedbackService(reactor)
        now = int(time.time())
        for token in args.feedback_token:
            feedback.add(token, now)
        ports.append(
            listen_feedback(
                reactor,
                feedback,
                port=args.feedback_port,
                interface=args.interface,
                tls_options=server_tls_options(pki),
            )
        )
        reactor.addSystemEventTrigger("before", "shutdown", feedback.stop)
    return ports


def _start_http2(reactor: Any, args: argparse.Namespace, pki: Any, recorder: Recorder) -> Any:
    from . import http2_server
    from .http2_server import FakeAPNsServer, listen_http2
    from .pki import server_tls_options

    prefixes = [p.hex() for p in args.reject_prefix]

    class Server(FakeAPNsServer):
        def _scripted(self, token: str) -> Any:
            for prefix in prefixes:
                if token.startswith(prefix):
                    ms = int(self.clock.seconds() * 1000)
                    return http2_server._error(410, "Unregistered", timestamp=ms)
            return super()._scripted(token)

    server = Server(clock=reactor, sandbox=not args.production, ramp=not args.no_ramp)
    server.accepted = _HTTP2Record(recorder)
    server.add_token_key(pki.token_key_id, pki.team_id, pki.token_public_key)
    for key_id, path in args.token_key:
        server.add_token_key(key_id, args.team_id or pki.team_id, _read_p8(path))
    # As Apple: a token key may push only to its team's apps (and their suffixed topics).
    server.topics = set(args.topic)
    server.bad_tokens.update(t.lower() for t in args.bad_token)
    server.latency = args.latency
    port = listen_http2(
        reactor,
        server,
        port=args.port,
        interface=args.interface,
        tls_options=server_tls_options(pki, require_client_cert=False, alpn=[b"h2"]),
    )
    reactor.addSystemEventTrigger("before", "shutdown", server.drop_connections)
    return [port]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SystemExit(
            f"python -m txapns.testing: cannot read {what} {path!r}: {e.strerror}"
        ) from None


def _pem(data: bytes, private: bool) -> bytes:
    """The private-key blocks (``private``) or the certificate blocks of a PEM file that may
    hold both (a chain and its key in one file)."""
    import re

    found = re.finditer(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\s*", data, re.S)
    return b"".join(m.group(0) for m in found if m.group(1).endswith(b"PRIVATE KEY") == private)


def _read_p8(path: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(_read(path, "--token-key"), password=None)
    except ValueError:
        raise SystemExit(f"python -m txapns.testing: {path!r} is not a PEM .p8 key") from None


def _pki(args: argparse.Namespace) -> Any:
    """The PKI: --pki-dir's from an earlier start (stable ids), or a new one (from --ca if
    given); --server-cert replaces the server certificate; --ca is trusted for clients."""
    import dataclasses

    from .pki import make_test_pki, read_test_pki

    topic = args.topic[0]
    ca_file = _read(args.ca, "--ca") if args.ca else None
    ca_pem = _pem(ca_file, private=False) if ca_file is not None else None
    ca_key = _pem(_read(args.ca_key, "--ca-key") if args.ca_key else ca_file or b"", True)
    pki = None
    if not args.new_pki and os.path.exists(os.path.join(args.pki_dir, "token.json")):
        try:
            pki = read_test_pki(args.pki_dir)
        except (OSError, ValueError):
            pki = None  # an incomplete or foreign directory: make a new one
        if pki is not None and (pki.topic != topic or (ca_pem and pki.ca_cert not in ca_pem)):
            pki = None
    if pki is None:
        if ca_pem is not None and args.server_cert is None:
            try:
                pki = make_test_pki(topic, ca_cert=ca_pem, ca_key=ca_key or None)
            except ValueError as e:
                raise SystemExit(f"python -m txapns.testing: --ca: {e}") from None
        else:
            pki = make_test_pki(topic)
        pki.write(args.pki_dir)
    if args.server_cert:
        chain = _read(args.server_cert, "--server-cert")
        key = _read(args.server_key, "--server-key") if args.server_key else chain
        pki = dataclasses.replace(
            pki, server_cert=_pem(chain, private=False), server_key=_pem(key, private=True)
        )
    if ca_pem is not None:
        pki = dataclasses.replace(pki, ca_cert=ca_pem)
    return pki


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    if not args.topic:
        args.topic = ["com.example.app"]
    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        # stdout stays the fake's own: its first line is the port.
        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stderr)], redirectStandardIO=False
        )
    pki = _pki(args)
    with open(os.path.join(args.pki_dir, "token.json"), "w", encoding="utf-8") as f:
        json.dump({"key_id": pki.token_key_id, "team_id": pki.team_id, "topic": pki.topic}, f)
    recorder = Recorder(args.record, reactor)
    start = _start_gateway if args.kind == "gateway" else _start_http2
    ports = start(reactor, args, pki, recorder)

    def stop_listening() -> Any:
        from twisted.internet.defer import gatherResults

        return gatherResults([p.stopListening() for p in ports])

    reactor.addSystemEventTrigger("before", "shutdown", stop_listening)
    reactor.addSystemEventTrigger("after", "shutdown", recorder.close)
    for port in ports:
        _say(str(port.getHost().port))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
