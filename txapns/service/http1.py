"""The lean HTTP/1.1 layer of the API: ``httptools`` (llhttp, Node's C parser) under a Twisted
:class:`~twisted.internet.protocol.Protocol`, serving the same :class:`~txapns.service.api.Api`
as :class:`~txapns.service.api.ApiResource` does over twisted.web.

Why: with one notification per request, twisted.web's request machinery (line parsing in
Python, a ``Request`` with its header objects, producers and notifications) cost more CPU than
everything the service does with the request. Parsing with llhttp and answering with one
pre-built ``bytes`` write costs a small fraction of it (``benchmarks/service_throughput.py
--h1load`` measures both). ``http_server = "twisted"`` in the configuration serves the API
over twisted.web instead.

Behaviour is the API's, whichever layer serves it:

* A request without the right bearer key (on a route that needs one) is answered 401 on its
  headers, before any body is read, and the connection is closed.
* A request's headers must arrive within ``header_timeout`` seconds of its first byte and its
  body within ``body_timeout`` seconds of its headers (408 and close); a keep-alive connection
  may sit idle ``idle_timeout`` seconds between requests.
* Bodies are bounded: past ``max_body_bytes`` the rest is read and dropped, and the handler
  answers 413. Headers are bounded too (``MAX_HEADER_BYTES``, 431).
* Keep-alive, pipelining (answers in order; reading pauses while several wait), chunked
  bodies, ``Expect: 100-continue``, ``HEAD``, ``Connection: close`` and HTTP/1.0.
* One access-log line per request in the combined log format, as twisted.web writes it.
* A request that is not HTTP gets 400 and the connection is closed.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    parse_url,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToLogString, datetimeToString

from .api import BEARER_CHALLENGE, Api, ApiError, ApiRequest, Response, unauthorized

log = Logger()

#: Bytes of a request line and headers before the request is refused (431), as twisted.web.
MAX_HEADER_BYTES = 16384
#: Pipelined requests waiting for an answer before the connection stops being read.
MAX_PIPELINED = 4
#: Seconds a closing connection may take to flush before it is aborted (as twisted.web).
ABORT_TIMEOUT = 15.0

_IDLE, _HEADERS, _BODY, _CLOSING = "idle", "headers", "body", "closing"


class _Stop(Exception):
    """Raised in a parser callback to stop parsing (the connection is refused)."""


class _Request:
    """A request as parsed, waiting for its turn to be answered."""

    __slots__ = (
        "body",
        "chunks",
        "close",
        "headers",
        "method",
        "received",
        "refuse",
        "size",
        "too_large",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.method = b""
        self.version = b"HTTP/1.1"
        self.chunks: list[bytes] = []
        self.body = b""
        #: The declared Content-Length, then the size of the body.
        self.size = 0
        self.received = 0
        self.too_large = False
        #: Close the connection after the answer.
        self.close = False
        #: Answer this instead of handling the request, then close.
        self.refuse: tuple[int, dict[str, object], tuple[tuple[bytes, bytes], ...]] | None = None


class ApiProtocol(Protocol):
    """One HTTP/1.1 connection to the API (see the module's docstring)."""

    factory: ApiFactory

    def __init__(self, factory: ApiFactory) -> None:
        self.factory = factory
        self._address: IAddress | None = None
        self._api = factory.api
        self._limits = factory.api.limits
        self._clock = factory.clock
        self._parser = HttpRequestParser(self)
        self._current: _Request | None = None
        self._head_bytes = 0
        self._queue: deque[_Request] = deque()
        self._waiting = False
        self._serving = False
        self._paused = False
        self._closing = False
        self._lost = False
        self._phase = _IDLE
        self._deadline: float | None = None
        self._timer: IDelayedCall | None = None

    # -- connection --

    def connectionMade(self) -> None:
        self._address = self.transport.getPeer()  # type: ignore[union-attr]
        self._expect(self._limits.idle_timeout, _IDLE)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # answered and closing: nothing more is read
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as e:
            if not isinstance(e.__context__, _Stop):
                raise
        except HttpParserUpgrade:
            # Not supported: the request that asked is answered, then the connection closed.
            self._closing_after_queue()
        except HttpParserError as e:
            self._bad(400, "bad_request", f"not a valid HTTP/1.1 request: {e}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._closing = True
        self._deadline = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._queue.clear()

    # -- parser callbacks --

    def on_message_begin(self) -> None:
        self._current = _Request()
        self._head_bytes = 0
        self._expect(self._limits.header_timeout, _HEADERS)

    def on_url(self, url: bytes) -> None:
        assert self._current is not None
        self._current.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._count_head(len(name) + len(value) + 4)
        # A repeated header's last value, as twisted.web's getHeader gives it.
        self._current.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None
        parser = self._parser
        request.method = parser.get_method()
        request.version = b"HTTP/" + parser.get_http_version().encode("ascii")
        request.close = not parser.should_keep_alive()
        path = request.url.partition(b"?")[0]
        if not self._api.authorized(path, request.headers.get(b"authorization")):
            # Refused on its headers: its body is never read.
            request.refuse = (
                401,
                unauthorized().body(),
                ((b"WWW-Authenticate", BEARER_CHALLENGE),),
            )
            self._current = None
            self._enqueue(request)
            raise _Stop()
        declared = request.headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            request.size = int(declared)
            request.too_large = request.size > self._limits.max_body_bytes
        expect = request.headers.get(b"expect")
        if (
            expect is not None
            and expect.lower() == b"100-continue"
            and request.version != b"HTTP/1.0"
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        self._expect(self._limits.body_timeout, _BODY)

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        request.received += len(body)
        if request.too_large:
            return  # read and dropped, only counted
        request.chunks.append(body)
        if request.received > self._limits.max_body_bytes:
            request.too_large = True
            request.chunks = []

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        self._current = None
        chunks = request.chunks
        if not request.too_large:
            request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request.size = max(request.size, request.received)
        request.chunks = []
        self._deadline = None
        self._phase = _IDLE
        self._enqueue(request)

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEADER_BYTES:
            assert self._current is not None
            self._current.refuse = (
                431,
                ApiError(
                    431,
                    "headers_too_large",
                    f"the request line and headers exceed {MAX_HEADER_BYTES} bytes",
                ).body(),
                (),
            )
            request, self._current = self._current, None
            self._enqueue(request)
            raise _Stop()

    # -- answering, in order --

    def _enqueue(self, request: _Request) -> None:
        self._queue.append(request)
        if request.refuse is not None or request.close:
            self._closing = True  # nothing after it is read
        if len(self._queue) >= MAX_PIPELINED and not self._paused and not self._lost:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        if not self._serving:
            self._serve()

    def _serve(self) -> None:
        self._serving = True
        try:
            while self._queue and not self._waiting and not self._lost:
                request = self._queue[0]
                if request.refuse is not None:
                    self._queue.clear()
                    self._refuse(request, *request.refuse)
                    return
                url = request.url
                if url[:1] == b"/":
                    path, _, query = url.partition(b"?")
                else:  # absolute form
                    parsed = parse_url(url)
                    path, query = parsed.path or b"/", parsed.query or b""
                route, answer = self._api.handle(
                    ApiRequest(
                        request.method.decode("ascii", "replace"),
                        path,
                        query,
                        request.headers.get,
                        request.body,
                        request.size,
                        request.too_large,
                    )
                )
                if isinstance(answer, Deferred):
                    self._waiting = True
                    answer.addCallback(self._answered, request, route)
                    answer.addErrback(self._api._write_failed, route)
                else:
                    self._respond(request, route, answer)
        finally:
            self._serving = False
        if not self._queue and not self._lost:
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()  # type: ignore[union-attr]
            if self._current is None and not self._closing:
                self._expect(self._limits.idle_timeout, _IDLE)

    def _answered(self, response: Response, request: _Request, route: str) -> None:
        self._waiting = False
        if self._lost:  # (not counted, as over twisted.web)
            log.debug("API client went away before the {route} answer", route=route)
            return
        self._respond(request, route, response)
        if not self._serving:
            self._serve()

    def _respond(self, request: _Request, route: str, response: Response) -> None:
        self._api.count(route, response.code)
        self._queue.popleft()
        code = response.code
        body = response.encoded()
        head = [
            b"%s %d %s" % (request.version, code, RESPONSES.get(code, b"Unknown")),
            b"Date: " + self.factory.date(),
            b"Content-Type: " + response.content_type.encode("ascii"),
            b"Cache-Control: no-store",
        ]
        if code == 401:
            head.append(b"WWW-Authenticate: " + BEARER_CHALLENGE)
        for name, value in response.headers:
            head.append(name.encode("ascii") + b": " + value.encode("ascii"))
        head.append(b"Content-Length: %d" % len(body))
        if request.close:
            head.append(b"Connection: close")
        head.append(b"\r\n")
        transport = self.transport
        assert transport is not None
        if request.method == b"HEAD":
            transport.write(b"\r\n".join(head))
            sent = 0
        else:
            transport.write(b"\r\n".join(head) + body)
            sent = len(body)
        self.factory.log_access(self._address, request, code, sent)
        if request.close:
            self._close()

    def _refuse(
        self,
        request: _Request,
        code: int,
        body: dict[str, object],
        headers: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        """Answer at once, ahead of any body, and close."""
        self._api.count("other", code)
        if self._lost:
            return
        raw = Response(code, body).encoded()
        head = [
            b"HTTP/1.1 %d %s" % (code, RESPONSES.get(code, b"Error")),
            b"Date: " + self.factory.date(),
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Connection: close",
            b"Content-Length: %d" % len(raw),
        ]
        head += [name + b": " + value for name, value in headers]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + raw)  # type: ignore[union-attr]
        self.factory.log_access(self._address, request, code, len(raw))
        self._close()

    def _bad(self, code: int, kind: str, message: str) -> None:
        request = self._current or _Request()
        self._current = None
        request.refuse = (code, ApiError(code, kind, message).body(), ())
        self._enqueue(request)

    def _closing_after_queue(self) -> None:
        self._closing = True
        if self._queue:
            self._queue[-1].close = True
        elif not self._lost:
            self._close()

    def _close(self) -> None:
        self._closing = True
        self._queue.clear()
        transport = self.transport
        if transport is None or self._lost:
            return
        if self._paused:
            self._paused = False
            transport.resumeProducing()  # type: ignore[attr-defined]
        transport.loseConnection()
        self._expect(ABORT_TIMEOUT, _CLOSING)

    # -- one lazy deadline per connection --

    def _expect(self, seconds: float, phase: str) -> None:
        """The current phase must end within ``seconds``. One timer serves every phase: it is
        moved earlier when needed and, when it fires early, re-armed for the rest."""
        self._phase = phase
        at = self._clock.seconds() + seconds
        self._deadline = at
        timer = self._timer
        if timer is None:
            self._timer = self._clock.callLater(seconds, self._check)
        elif timer.getTime() > at:
            timer.reset(seconds)

    def _check(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._lost:
            return
        left = deadline - self._clock.seconds()
        if left > 1e-3:
            self._timer = self._clock.callLater(left, self._check)
            return
        self._deadline = None
        phase = self._phase
        transport = self.transport
        if phase == _CLOSING:
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]
        elif phase == _IDLE:
            self._close()
        else:
            seconds = (
                self._limits.header_timeout if phase == _HEADERS else self._limits.body_timeout
            )
            what = "headers" if phase == _HEADERS else "body"
            err = ApiError(
                408, "request_timeout", f"the request {what} did not arrive within {seconds:g} s"
            )
            request = self._current or _Request()
            self._current = None
            request.refuse = (408, err.body(), ())
            self._enqueue(request)  # answered after any earlier request still waiting


class ApiFactory(ServerFactory):
    """Listen with this (strports, ``listenTCP``): the API over the lean HTTP/1.1 layer."""

    def __init__(self, api: Api, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.api = api
        self.clock = clock
        self._log_file: Any = None
        self._second = -1
        self._date = b""
        self._log_date = ""

    def buildProtocol(self, addr: IAddress | None) -> ApiProtocol:  # type: ignore[override]
        return ApiProtocol(self)

    #: Where the combined-log-format line of each request goes (the ``access_log``
    #: setting): ``"log"`` the service log (where twisted.web writes it), ``"off"``, or a
    #: file's path (line-buffered, as twisted.web's ``logPath``).
    access_log = "log"

    def startFactory(self) -> None:
        if self.access_log == "log":
            self._log_file = legacy_log.logfile
        elif self.access_log != "off":
            self._log_file = open(self.access_log, "a", 1, newline="\n")  # noqa: SIM115

    def stopFactory(self) -> None:
        out, self._log_file = self._log_file, None
        if out is not None and out is not legacy_log.logfile:
            out.close()

    def _tick(self) -> None:
        now = self.clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._date = datetimeToString(now)
            self._log_date = datetimeToLogString(now)

    def date(self) -> bytes:
        """The ``Date`` header's value, computed once a second."""
        self._tick()
        return self._date

    def log_access(self, address: IAddress | None, request: _Request, code: int, sent: int) -> None:
        """One line in the combined log format, as twisted.web's ``combinedLogFormatter``."""
        out = self._log_file
        if out is None:
            return
        self._tick()
        host = getattr(address, "host", None)
        ip = host if isinstance(host, str) else "-"
        agent = request.headers.get(b"user-agent") or b"-"
        referrer = request.headers.get(b"referer") or b"-"
        out.write(
            f'"{ip}" - - {self._log_date} "{_escape(request.method)} {_escape(request.url)} '
            f'{_escape(request.version)}" {code} {sent or "-"} "{_escape(referrer)}" '
            f'"{_escape(agent)}"\n'
        )


def _escape(raw: bytes) -> str:
    """Like twisted.web's access-log escaping: printable ASCII as is, the rest escaped,
    and double quotes escaped."""
    try:
        text = raw.decode("ascii")
        if text.isprintable() and '"' not in text and "\\" not in text:
            return text
    except UnicodeDecodeError:
        pass
    r = repr(raw)[2:-1]
    return r.replace('"', '\\"').replace("\\'", "'")


__all__ = ["MAX_HEADER_BYTES", "ApiFactory", "ApiProtocol"]
