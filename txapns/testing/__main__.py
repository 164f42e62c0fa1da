"""Run a fake APNs server as a standalone process: ``python -m txapns.testing``.

::

    python -m txapns.testing gateway --pki-dir DIR [--port P] [--feedback-port F]
        [--record FILE] [--reject-prefix ff] [--reject-token HEX] [--shutdown-after N]
        [--silent-close-probability X] [--seed S] [--feedback-token HEX] [--verbose]
    python -m txapns.testing http2 --pki-dir DIR [--port P] [--record FILE]
        [--reject-prefix ff] [--bad-token HEX] [--latency S] [--verbose]

The fake listens over TLS on 127.0.0.1 (``--port 0``, the default, picks a free port). Its
throwaway PKI (:func:`txapns.testing.pki.make_test_pki`) is written to ``--pki-dir`` first:
``ca.pem`` (to trust the fake), ``client.pem`` + ``client-key.pem`` (certificate
authentication), ``AuthKey_<key id>.p8`` (token authentication; the key id and team id are in
``token.json``), so a service or CLI configuration can point at them.

When it is ready it prints the listening port on the first line of stdout (and, with
``--feedback-port``, the feedback service's port on the second), then flushes. Every
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

from twisted.internet.interfaces import IDelayedCall, IReactorTime

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
        self._flush_call: IDelayedCall | None = None
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
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._flush_call = None
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
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
        p.add_argument("--topic", default="com.example.app", help="client certificate topic")
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

    server = Server(clock=reactor, sandbox=not args.production)
    server.accepted = _HTTP2Record(recorder)
    server.add_token_key(pki.token_key_id, pki.team_id, pki.token_public_key)
    # As Apple: a token key may push only to its team's apps (and their suffixed topics).
    server.topics = {pki.topic}
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from twisted.internet import reactor as _reactor

    from .pki import make_test_pki

    reactor: Any = _reactor
    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    pki = make_test_pki(args.topic)
    pki.write(args.pki_dir)
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
