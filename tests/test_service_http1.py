"""The API's two HTTP/1.1 layers at the connection level: keep-alive, pipelining, HEAD,
``Expect: 100-continue``, chunked and oversized bodies, idle connections, the access log.

:class:`LayerTests` runs over the lean layer (``txapns.service.http1``) and, as
:class:`TwistedWebLayerTests`, over twisted.web: what they share must behave the same.
:class:`LeanOnlyTests` covers what only the lean layer does itself (twisted.web answers a
malformed request with a bare 400 of its own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txapns.service.api import Limits
from txapns.service.config import ConfigError, parse_config
from txapns.service.environ import apply_environment
from txapns.service.http1 import MAX_HEADER_BYTES, MAX_PIPELINED
from txapns.service.wiring import make_listener

from .helpers import temp_dir
from .helpers_service import accepting_engine

KEY = b"test-key-0123456789abcdef"
LIMITS = Limits(max_body_bytes=1024, header_timeout=5, body_timeout=7, idle_timeout=60)
TOKEN = "ab" * 32


def post(body: bytes, *, extra: bytes = b"", auth: bytes = KEY) -> bytes:
    return (
        b"POST /v1/apps/a/notifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + auth
        + b"\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def get(path: bytes, *, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET %s %s\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s\r\n" % (
        path,
        version,
        KEY,
        extra,
    )


ASYNC = json.dumps({"token": TOKEN, "alert": "x", "async": True}).encode()


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split what was written into (status, headers, body) answers (Content-Length framed)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode().lower()] = value.strip().decode()
        if status == 100:
            out.append((status, headers, b""))
            raw = rest
            continue
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        raw = rest[length:]
    return out


class _Connection(SynchronousTestCase):
    """One connection to the API over ``server``, with an engine whose Sender accepts all."""

    server = "lean"

    def setUp(self) -> None:
        self.clock = Clock()
        self.engine, self.store, self.sender = accepting_engine(self, self.clock)
        self.factory: Any = make_listener(
            self.engine, KEY, LIMITS, reactor=self.clock, server=self.server
        )
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)
        self.log: list[str] = []
        self.factory._logFile = self.factory._log_file = _Lines(self.log)
        self.connect()

    def connect(self) -> None:
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        self.protocol.makeConnection(self.transport)

    def turns(self) -> None:
        for _ in range(5):
            self.clock.advance(0)


class LayerTests(_Connection):
    def test_pipelined_requests_are_answered_in_order(self) -> None:
        self.protocol.dataReceived(get(b"/livez") + post(ASYNC) + get(b"/healthz"))
        # The POST waits for its commit (next turn): /healthz, parsed already, waits too.
        self.assertEqual([a[0] for a in answers(self.transport.value())], [200])
        self.turns()
        got = answers(self.transport.value())
        self.assertEqual([a[0] for a in got], [200, 202, 200])
        self.assertIn("job_id", json.loads(got[1][2]))
        self.assertEqual(json.loads(got[2][2])["status"], "ok")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(len(self.sender.sent), 1)

    def test_a_wrong_key_behind_a_waiting_request_is_answered_after_it(self) -> None:
        self.protocol.dataReceived(post(ASYNC) + post(ASYNC, auth=b"wrong-key-0123456789abcde"))
        self.turns()
        got = answers(self.transport.value())
        self.assertEqual([a[0] for a in got], [202, 401])
        self.assertEqual(got[1][1]["www-authenticate"], 'Bearer realm="txapns"')
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.sender.sent), 1)

    def test_connection_close_and_http_1_0_close_after_the_answer(self) -> None:
        self.protocol.dataReceived(get(b"/livez", extra=b"Connection: close\r\n"))
        self.assertEqual([a[0] for a in answers(self.transport.value())], [200])
        self.assertTrue(self.transport.disconnecting)
        self.connect()
        self.protocol.dataReceived(get(b"/livez", version=b"HTTP/1.0"))
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.0 200 "))
        self.assertTrue(self.transport.disconnecting)
        self.connect()
        self.protocol.dataReceived(get(b"/livez") + get(b"/livez"))
        self.assertEqual([a[0] for a in answers(self.transport.value())], [200, 200])
        self.assertFalse(self.transport.disconnecting)

    def test_head_answers_the_headers_of_get(self) -> None:
        self.protocol.dataReceived(get(b"/livez"))
        length = answers(self.transport.value())[0][1]["content-length"]
        self.transport.clear()
        self.protocol.dataReceived(get(b"/livez").replace(b"GET", b"HEAD", 1) + get(b"/livez"))
        raw = self.transport.value()
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: " + length.encode(), head)
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 "), rest)  # no body after HEAD's head

    def test_expect_100_continue(self) -> None:
        request = post(ASYNC, extra=b"Expect: 100-continue\r\n")
        head, _, body = request.partition(b"\r\n\r\n")
        self.protocol.dataReceived(head + b"\r\n\r\n")
        self.assertEqual(self.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.protocol.dataReceived(body)
        self.turns()
        self.assertEqual([a[0] for a in answers(self.transport.value())], [100, 202])

    def test_chunked_body(self) -> None:
        head = (
            b"POST /v1/apps/a/notifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (ASYNC[:10], ASYNC[10:]))
        self.protocol.dataReceived(head + chunks + b"0\r\n\r\n")
        self.turns()
        self.assertEqual([a[0] for a in answers(self.transport.value())], [202])

    def test_an_oversized_body_is_read_dropped_and_refused_and_the_connection_kept(self) -> None:
        big = json.dumps({"token": TOKEN, "alert": "x" * 2000}).encode()
        for framing in ("length", "chunked"):
            self.transport.clear()
            if framing == "length":
                self.protocol.dataReceived(post(big))
            else:
                self.protocol.dataReceived(
                    b"POST /v1/apps/a/notifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                    + KEY
                    + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"".join(
                        b"%x\r\n%s\r\n" % (100, big[i : i + 100]) for i in range(0, 2000, 100)
                    )
                    + b"0\r\n\r\n"
                )
            self.turns()
            ((status, _, body),) = answers(self.transport.value())
            self.assertEqual(status, 413)
            self.assertEqual(json.loads(body)["error"]["code"], "body_too_large")
            self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.store.counts(), {})

    def test_an_idle_connection_is_closed(self) -> None:
        self.protocol.dataReceived(get(b"/livez"))
        self.clock.advance(LIMITS.idle_timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.transport.disconnecting)

    def test_a_client_gone_before_the_answer(self) -> None:
        self.protocol.dataReceived(post(ASYNC))
        self.protocol.connectionLost(_lost())
        self.turns()
        self.assertEqual(self.transport.value(), b"")
        # Stored and sent all the same; no answer, none counted.
        self.assertEqual(len(self.sender.sent), 1)
        self.assertEqual(self.engine.metrics.http_responses[("notifications", 202)], 0)

    def test_a_synchronous_request_reads_its_job_once(self) -> None:
        reads: list[str] = []
        spool = self.engine.spool
        job = spool.job

        def counted(job_id: str) -> Any:
            reads.append(job_id)
            return job(job_id)

        spool.job = counted  # type: ignore[method-assign]
        self.protocol.dataReceived(post(json.dumps({"token": TOKEN, "alert": "x"}).encode()))
        self.turns()
        ((status, _, body),) = answers(self.transport.value())
        self.assertEqual((status, json.loads(body)["counts"]["accepted"]), (200, 1))
        # Once its outcome is recorded; not also when it was stored, when none could be.
        self.assertEqual(reads, [json.loads(body)["job_id"]])

    def test_a_query_that_decodes_to_non_ascii_is_a_400(self) -> None:
        # Found by .ci/fuzz-api: the query is parsed as text, not as bytes.
        self.protocol.dataReceived(get(b"/v1/apps/a/invalid-tokens?since=%24%29%C3%90"))
        self.turns()
        ((status, _, body),) = answers(self.transport.value())
        self.assertEqual(status, 400)
        self.assertIn("since '$)\u00d0'", body.decode())

    def test_access_log_line(self) -> None:
        self.factory.doStop()
        self.factory.doStart()  # (twisted.web's log date is set on start)
        self.factory._logFile = self.factory._log_file = _Lines(self.log)
        self.protocol.dataReceived(get(b"/livez?x=%22", extra=b'User-Agent: t/1 "q"\r\n'))
        (line,) = self.log
        self.assertRegex(
            line,
            r'^"127\.0\.0\.1" - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
            r'"GET /livez\?x=%22 HTTP/1\.1" 200 18 "-" "t/1 \\"q\\""\n$',
        )

    def test_access_log_setting(self) -> None:
        # Off by default (see docs: it cost more than the rest of a small request), to the
        # service log with "log", or to a file of its own.
        for setting in ("off", "log"):
            factory: Any = make_listener(
                self.engine, KEY, LIMITS, reactor=self.clock, server=self.server,
                access_log=setting,
            )  # fmt: skip
            factory.doStart()
            out = getattr(factory, "_log_file", None) or getattr(factory, "_logFile", None)
            self.assertEqual(out is None, setting == "off")
            factory.doStop()
        path = temp_dir(self) / "access.log"
        factory = make_listener(
            self.engine, KEY, LIMITS, reactor=self.clock, server=self.server,
            access_log=str(path),
        )  # fmt: skip
        factory.doStart()
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1)))
        protocol.dataReceived(get(b"/livez"))
        factory.doStop()
        (line,) = path.read_text().splitlines()
        self.assertIn('"GET /livez HTTP/1.1" 200 18', line)


class TwistedWebLayerTests(LayerTests):
    server = "twisted"


class LeanOnlyTests(_Connection):
    def test_not_http_is_400_and_closed(self) -> None:
        self.protocol.dataReceived(b"HELLO\r\n\r\n")
        ((status, _, body),) = answers(self.transport.value())
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["error"]["code"], "bad_request")
        self.assertTrue(self.transport.disconnecting)
        self.protocol.dataReceived(get(b"/livez"))  # nothing more is read

    def test_headers_past_the_limit_are_431_and_closed(self) -> None:
        self.protocol.dataReceived(
            b"GET /livez HTTP/1.1\r\nX-Big: " + b"x" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\n"
        )
        ((status, _, body),) = answers(self.transport.value())
        self.assertEqual(status, 431)
        self.assertEqual(json.loads(body)["error"]["code"], "headers_too_large")
        self.assertTrue(self.transport.disconnecting)

    def test_many_pipelined_requests_pause_reading_until_answered(self) -> None:
        self.protocol.dataReceived(post(ASYNC) * MAX_PIPELINED)
        self.assertEqual(self.transport.producerState, "paused")
        self.turns()
        self.assertEqual([a[0] for a in answers(self.transport.value())], [202] * MAX_PIPELINED)
        self.assertEqual(self.transport.producerState, "producing")

    def test_deadline_of_a_pipelined_request_behind_a_waiting_one(self) -> None:
        self.protocol.dataReceived(post(ASYNC) + b"GET /healthz HTTP/1.1\r\n")
        self.clock.advance(LIMITS.header_timeout + 1)
        self.turns()
        self.assertEqual([a[0] for a in answers(self.transport.value())], [202, 408])
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(60)
        self.assertTrue(self.transport.disconnecting)

    def test_absolute_form_target(self) -> None:
        self.protocol.dataReceived(get(b"http://x/v1/jobs/nope?y=1"))
        self.turns()
        self.assertEqual([a[0] for a in answers(self.transport.value())], [404])


class ConfigTests(SynchronousTestCase):
    def test_http_server_setting(self) -> None:
        def parse(data: dict[str, Any]) -> str:
            return parse_config(data, base_dir=Path("."), check_files=False).http_server

        self.assertEqual(parse({}), "lean")
        self.assertEqual(parse({"http_server": "twisted"}), "twisted")
        with self.assertRaises(ConfigError) as e:
            parse({"http_server": "fast"})
        self.assertIn("http_server must be one of lean, twisted", str(e.exception))
        self.assertEqual(parse(apply_environment({}, {"TXAPNS_HTTP_SERVER": "twisted"})), "twisted")

    def test_access_log_setting(self) -> None:
        def parse(data: dict[str, Any]) -> str:
            return parse_config(data, base_dir=Path("/etc/txapns"), check_files=False).access_log

        self.assertEqual(parse({}), "off")
        self.assertEqual(parse({"access_log": "log"}), "log")
        self.assertEqual(parse({"access_log": "access.log"}), "/etc/txapns/access.log")
        for bad in ("", 1):
            with self.assertRaises(ConfigError):
                parse({"access_log": bad})
        self.assertEqual(parse(apply_environment({}, {"TXAPNS_ACCESS_LOG": "log"})), "log")

    def test_make_listener_refuses_an_unknown_server(self) -> None:
        with self.assertRaises(ValueError):
            make_listener(None, KEY, server="fast")  # type: ignore[arg-type]


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, line: str) -> None:
        self.lines.append(line)

    def close(self) -> None:
        pass


def _lost() -> Any:
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    return Failure(ConnectionLost())
