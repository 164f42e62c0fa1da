"""The HTTP API (JSON) over :mod:`twisted.web`.

Routes (every one but ``/livez`` needs ``Authorization: Bearer <key>``; 401 otherwise, sent
by :class:`ApiChannel` on the headers, before any body is read):

* ``POST /v1/apps/{app}/notifications`` — one notification (``"token"``) or a batch
  (``"tokens"``). Waits for the outcomes and answers 200 with one result per recipient, or,
  with ``"async": true`` or a ``send_at`` in the future, answers 202 with the job id once the
  batch is durably stored.
* ``GET /v1/jobs/{id}`` — progress and per-recipient results.
* ``GET /v1/apps/{app}/invalid-tokens?since=`` — tokens APNs reported dead after ``since``.
* ``GET /livez`` — 200 while the process answers; no key, no details.
* ``GET /healthz`` — 200 while accepting, 503 otherwise; per-app queue and connection state.
* ``GET /metrics`` — Prometheus text.

A submission is parsed and validated completely before anything is stored: a bad request
gets a 4xx with a precise message and leaves no trace. Errors are JSON:
``{"error": {"code": "...", "message": "...", ...}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .._twisted import cancel_call, in_turns
from ..core.errors import PayloadTooLargeError, ValidationError
from ..core.payload import Alert, build_payload
from .backend import SpoolUnavailableError
from .engine import Accepted, Engine, NotAcceptingError, RecipientError, Template, UnknownAppError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .spool import IdempotencyKeyReusedError, InvalidToken, JobView, NotificationView

log = Logger()

MAX_IDEMPOTENCY_KEY = 255

_CONVENIENCE = {
    "alert",
    "title",
    "subtitle",
    "body",
    "badge",
    "sound",
    "content_available",
    "mutable_content",
    "thread_id",
    "category",
    "interruption_level",
    "relevance_score",
    "data",
}
_FIELDS = _CONVENIENCE | {
    "token",
    "tokens",
    "payload",
    "push_type",
    "priority",
    "expiration",
    "collapse_id",
    "topic",
    "apns_id",
    "async",
    "send_at",
    "idempotency_key",
}


class ApiError(Exception):
    """An answer other than success: HTTP status, a machine code and a precise message."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra
        #: Extra response headers, e.g. ``Allow`` on a 405.
        self.headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    max_recipients: int = 10_000
    #: Seconds from a request's first byte to the end of its headers.
    header_timeout: float = 10.0
    #: Seconds from the end of a request's headers to the end of its body.
    body_timeout: float = 30.0
    #: Seconds a keep-alive connection may sit idle between requests.
    idle_timeout: float = 60.0
    #: Seconds a synchronous submission waits for its outcomes at most; then it is answered
    #: 202 with its job as it stands (APNs unreachable, the disk full: no request hangs).
    sync_wait: float = 30.0


@dataclass(frozen=True, slots=True)
class ParsedSubmission:
    tokens: tuple[str, ...]
    template: Template
    async_: bool
    send_at: float | None
    idempotency_key: str | None


# --- parsing ----------------------------------------------------------------------------------


def _bad(message: str, code: str = "invalid_request", **extra: object) -> ApiError:
    return ApiError(400, code, message, **extra)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


# One decoder and one encoder for every request: json.loads and json.dumps build a new one
# per call when given any option (about 2 % of a one-notification request's CPU).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Strict JSON object from UTF-8 bytes, or an ApiError 400."""
    if not body.strip():
        raise _bad("the request body is empty; send a JSON object", "malformed_json")
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):  # refused as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except UnicodeDecodeError as e:
        raise _bad(
            f"the request body is not UTF-8: {e.reason} at byte {e.start}", "malformed_json"
        ) from None
    except RecursionError:
        raise _bad("the request body nests too deeply", "malformed_json") from None
    except ValueError as e:
        raise _bad(f"the request body is not valid JSON: {e}", "malformed_json") from None
    if not isinstance(value, dict):
        raise _bad(
            f"the request body must be a JSON object, not {_json_type(value)}", "malformed_json"
        )
    return value


def _json_type(value: object) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), "null")


def _opt(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _bad(f"{key} must be {what}, not a boolean")
    if not isinstance(value, kind):
        raise _bad(f"{key} must be {what}, not {_json_type(value)}")
    return value


def parse_time(value: object, what: str) -> float:
    """UNIX seconds (number) or an ISO 8601 time with a UTC offset."""
    if isinstance(value, bool):
        raise _bad(f"{what} must be UNIX seconds or an ISO 8601 time, not a boolean")
    if isinstance(value, (int, float)):
        return _unix_seconds(value, what)
    if isinstance(value, str):
        try:
            if value.strip().replace(".", "", 1).isdigit():
                return _unix_seconds(value, what)
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _bad(f"{what} {value!r} is neither UNIX seconds nor an ISO 8601 time") from None
        if dt.tzinfo is None:
            raise _bad(f"{what} {value!r} has no UTC offset (add Z or +00:00)")
        return dt.timestamp()
    raise _bad(f"{what} must be UNIX seconds or an ISO 8601 time, not {_json_type(value)}")


#: Latest time accepted as UNIX seconds (year 9999): beyond it a number is an error, not a
#: time (a 400-digit number must not become ``Infinity``, which is not JSON).
MAX_UNIX_SECONDS = 253_402_300_799.0


def _unix_seconds(value: str | int | float, what: str) -> float:
    try:
        f = float(value)
    except OverflowError:  # an int too large for a float
        f = math.inf
    if not math.isfinite(f) or not 0 <= f <= MAX_UNIX_SECONDS:
        raise _bad(
            f"{what} must be UNIX seconds within 0..{MAX_UNIX_SECONDS:.0f} (or an ISO 8601 time)"
        )
    return f


def check_idempotency_key(key: str) -> str:
    """Refuse a key that could collide with another once stored or echoed: it must be
    1-255 characters of valid Unicode (no lone surrogate) without control characters."""
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise _bad(f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad("idempotency key is not valid Unicode text (a lone surrogate)") from None
    if not key.isprintable():
        raise _bad("idempotency key must not contain control characters (CR, LF, NUL…)")
    return key


def parse_submission(
    body: bytes, *, idempotency_header: str | None = None, limits: Limits = Limits()
) -> ParsedSubmission:
    """Parse and check a ``POST .../notifications`` body; raise :class:`ApiError` (4xx)."""
    obj = parse_json_object(body)
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(repr(k) for k in unknown[:10])}", "unknown_field")
    # recipients
    if ("token" in obj) == ("tokens" in obj):
        raise _bad("give exactly one of 'token' (one device) or 'tokens' (a list)", "no_recipients")
    if "token" in obj:
        token = obj["token"]
        if not isinstance(token, str):
            raise _bad(f"token must be a string of hex digits, not {_json_type(token)}")
        tokens: tuple[str, ...] = (token,)
    else:
        raw = obj["tokens"]
        if not isinstance(raw, list):
            raise _bad(f"tokens must be an array of strings, not {_json_type(raw)}")
        if not raw:
            raise _bad("tokens is empty: give at least one device token", "no_recipients")
        if len(raw) > limits.max_recipients:
            raise _bad(
                f"too many recipients: {len(raw)}; the limit is {limits.max_recipients} per "
                "request",
                "too_many_recipients",
                count=len(raw),
                limit=limits.max_recipients,
            )
        for i, t in enumerate(raw):
            if not isinstance(t, str):
                raise _bad(
                    f"tokens[{i}] must be a string of hex digits, not {_json_type(t)}",
                    "invalid_token",
                    index=i,
                )
        tokens = tuple(raw)
    # payload
    convenience = sorted(k for k in _CONVENIENCE if k in obj)
    if "payload" in obj:
        if convenience:
            raise _bad(
                f"give either 'payload' or the fields that build one ({', '.join(convenience)}),"
                " not both"
            )
        payload = obj["payload"]
        if not isinstance(payload, dict):
            raise _bad(f"payload must be a JSON object, not {_json_type(payload)}")
    elif convenience:
        payload = _build_payload(obj)
    else:
        raise _bad("no content: give 'payload', or 'alert'/'title'/'body'/… to build one")
    # headers
    push_type = _opt(obj, "push_type", str, "a string such as 'alert' or 'background'")
    priority = _opt(obj, "priority", int, "10, 5 or 1")
    expiration = _opt(obj, "expiration", int, "UNIX seconds (an integer)")
    collapse_id = _opt(obj, "collapse_id", str, "a string")
    topic = _opt(obj, "topic", str, "a string")
    apns_id = _opt(obj, "apns_id", str, "a UUID string")
    async_ = obj.get("async", False)
    if not isinstance(async_, bool):
        raise _bad(f"async must be true or false, not {_json_type(async_)}")
    send_at = None if obj.get("send_at") is None else parse_time(obj["send_at"], "send_at")
    key = _opt(obj, "idempotency_key", str, "a string")
    if idempotency_header is not None:
        if key is not None and key != idempotency_header:
            raise _bad("the Idempotency-Key header and the idempotency_key field differ")
        key = idempotency_header
    if key is not None:
        check_idempotency_key(key)
    return ParsedSubmission(
        tokens=tokens,
        template=Template(
            payload=payload,
            expiry=expiration,
            priority=priority,
            topic=topic,
            push_type=push_type,
            collapse_id=collapse_id,
            apns_id=apns_id,
        ),
        async_=async_,
        send_at=send_at,
        idempotency_key=key,
    )


def _build_payload(obj: Mapping[str, Any]) -> dict[str, Any]:
    alert_value = obj.get("alert")
    parts = {k: obj[k] for k in ("title", "subtitle", "body") if obj.get(k) is not None}
    alert: str | Alert | Mapping[str, Any] | None = None
    if alert_value is not None:
        if parts:
            raise _bad("give either 'alert' or 'title'/'subtitle'/'body', not both")
        if not isinstance(alert_value, (str, dict)):
            raise _bad(f"alert must be a string or an object, not {_json_type(alert_value)}")
        alert = alert_value
    elif parts:
        for k, v in parts.items():
            if not isinstance(v, str):
                raise _bad(f"{k} must be a string, not {_json_type(v)}")
        alert = Alert(**parts)
    sound = obj.get("sound")
    if sound is not None and not isinstance(sound, (str, dict)):
        raise _bad(f"sound must be a string or an object, not {_json_type(sound)}")
    badge = _opt(obj, "badge", int, "a non-negative integer")
    data = _opt(obj, "data", dict, "an object of custom keys")
    flags = {}
    for k in ("content_available", "mutable_content"):
        v = obj.get(k, False)
        if not isinstance(v, bool):
            raise _bad(f"{k} must be true or false, not {_json_type(v)}")
        flags[k] = v
    strings = {
        k: _opt(obj, k, str, "a string") for k in ("thread_id", "category", "interruption_level")
    }
    score = _opt(obj, "relevance_score", (int, float), "a number within 0..1")
    try:
        return build_payload(
            alert,
            badge=badge,
            sound=sound,
            content_available=flags["content_available"],
            mutable_content=flags["mutable_content"],
            thread_id=strings["thread_id"],
            category=strings["category"],
            interruption_level=strings["interruption_level"],
            relevance_score=score,
            custom=data,
        )
    except ValidationError as e:
        raise _bad(str(e), "invalid_payload") from None


# --- rendering --------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def job_json(view: JobView) -> dict[str, object]:
    return {**_job_head(view), "results": [_result_json(r) for r in view.results]}


def _job_head(view: JobView) -> dict[str, object]:
    """A job's JSON object but its results (the last member)."""
    return {
        "job_id": view.job_id,
        "app": view.app,
        "status": view.status,
        "async": view.async_,
        "created": _iso(view.created),
        "finished": _iso(view.finished),
        "total": view.total,
        "counts": view.counts,
        "may_duplicate": sum(1 for r in view.results if r.resumed),
    }


def _result_json(r: NotificationView) -> dict[str, object]:
    return {
        "index": r.index,
        "token": r.token,
        "outcome": r.state,
        "status": r.status,
        "reason": r.reason,
        "apns_id": r.apns_id,
        "timestamp": _iso(r.timestamp),
        "attempts": r.attempts,
        "may_duplicate": r.resumed > 0,
        **({"send_at": _iso(r.send_at)} if r.send_at is not None else {}),
    }


#: A job's view is encoded this many results a reactor turn (2 to 4 ms each here; 10,000 at
#: once, job_json and its JSON, kept everything else waiting 21 to 40 ms).
RESULTS_PER_TURN = 1_000


def encode_job(view: JobView, clock: IReactorTime) -> str | Deferred[str]:
    """``job_json(view)`` as JSON text (for a :class:`Response`'s body); a view of more than
    :data:`RESULTS_PER_TURN` results in a Deferred, encoded that many a reactor turn."""
    if len(view.results) <= RESULTS_PER_TURN:
        return _ENCODER.encode(job_json(view))
    # The head's closing brace gives way to the results, the object's last member.
    parts = [_ENCODER.encode(_job_head(view))[:-1], ',"results":[']
    results = view.results

    def encode(start: int, stop: int) -> None:
        chunk = _ENCODER.encode([_result_json(r) for r in results[start:stop]])
        parts.append(chunk[1:-1] if start == 0 else "," + chunk[1:-1])

    done = in_turns(clock, len(results), RESULTS_PER_TURN, encode)
    return done.addCallback(lambda _: "".join(parts) + "]}")


def invalid_json(app: str, tokens: list[InvalidToken], since: float | None) -> dict[str, object]:
    return {
        "app": app,
        "since": since,
        "next_since": max((t.reported_at for t in tokens), default=since),
        "tokens": [
            {
                "token": t.token,
                "timestamp": _iso(t.timestamp),
                "reason": t.reason,
                "status": t.status,
                "source": t.source,
                "kind": t.kind,
                "reported_at": t.reported_at,
            }
            for t in tokens
        ],
    }


@dataclass(frozen=True, slots=True)
class Response:
    code: int
    body: object
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> bytes:
        if isinstance(self.body, str):
            return self.body.encode("utf-8", "backslashreplace")
        text = _ENCODER.encode(self.body)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate echoed from a request: escape it
            return json.dumps(self.body, separators=(",", ":")).encode("ascii")


class BoundedBody:
    """A request body buffer that stops storing past ``limit`` bytes and remembers it."""

    def __init__(self, limit: int, declared: int | None) -> None:
        self.limit = limit
        self.declared = declared
        self.received = 0
        self.too_large = declared is not None and declared > limit
        self._buf = io.BytesIO()

    def write(self, data: bytes) -> int:
        self.received += len(data)
        if not self.too_large and self.received > self.limit:
            self.too_large = True
            self._buf = io.BytesIO()
        if not self.too_large:
            self._buf.write(data)
        return len(data)

    @property
    def size(self) -> int:
        return max(self.received, self.declared or 0)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._buf.seek(offset, whence)

    def tell(self) -> int:
        return self._buf.tell()

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(n)

    def getvalue(self) -> bytes:
        return self._buf.getvalue()

    def close(self) -> None:
        self._buf.close()


_IDLE, _HEADERS, _BODY, _HANDLING = range(4)


class ApiChannel(HTTPChannel):
    """An HTTP/1.1 channel that refuses a request on its headers, and bounds slow clients.

    * Once a request's headers are in, a request without the right bearer key (on any route
      that needs one) is answered 401 and the connection closed: its body is never read.
    * A request's headers must arrive within ``header_timeout`` seconds of its first byte,
      and its body within ``body_timeout`` seconds of its headers; otherwise 408 and close.
      (Twisted's own idle timeout restarts on every byte, so a client trickling a byte every
      few seconds would hold the connection and its buffer for ever.)
    """

    site: ApiSite
    _phase = _IDLE
    _deadline: IDelayedCall | None = None
    _refused = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: nothing more is read
        if self._phase == _IDLE and data:
            self._phase = _HEADERS
            self._arm(self.site.limits.header_timeout, "headers")
        HTTPChannel.dataReceived(self, data)

    def allHeadersReceived(self) -> None:
        self._disarm()
        request = self.requests[-1]
        path = self._path.split(b"?", 1)[0]
        # Before the base class, which would answer "Expect: 100-continue".
        if not self.site.resource.authorized(path, request.getHeader(b"authorization")):
            self._refuse(401, unauthorized().body(), ((b"WWW-Authenticate", BEARER_CHALLENGE),))
            return
        HTTPChannel.allHeadersReceived(self)
        if self.length != 0:
            self._phase = _BODY
            self._arm(self.site.limits.body_timeout, "body")

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._phase = _HANDLING
        HTTPChannel.allContentReceived(self)

    def requestDone(self, request: Any) -> None:
        self._phase = _IDLE  # before the base class replays pipelined data
        HTTPChannel.requestDone(self, request)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        HTTPChannel.connectionLost(self, reason)

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.site.reactor.callLater(seconds, self._too_slow, what, seconds)

    def _disarm(self) -> None:
        cancel_call(self._deadline)
        self._deadline = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self._deadline = None
        err = ApiError(
            408, "request_timeout", f"the request {what} did not arrive within {seconds:g} s"
        )
        self._refuse(408, err.body(), ())

    def _refuse(
        self, code: int, body: dict[str, object], headers: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        """Answer at once, outside any Request, and close: used before the body is read."""
        self._disarm()
        transport = self.transport
        if self._refused or transport is None or getattr(transport, "disconnecting", False):
            return  # already closing (e.g. the idle timeout fired first)
        self._refused = True
        self.site.resource.count("other", code)
        raw = json.dumps(body, separators=(",", ":")).encode("ascii")
        head = [b"HTTP/1.1 %d %s" % (code, RESPONSES.get(code, b"Error"))]
        head += [
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Connection: close",
            b"Content-Length: %d" % len(raw),
        ]
        head += [name + b": " + value for name, value in headers]
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + raw)
        self.loseConnection()  # type: ignore[no-untyped-call]
        if self.abortTimeout is not None:  # as the base class does for its own timeout
            self._abortingCall = self.site.reactor.callLater(
                self.abortTimeout, self.forceAbortClient
            )


class ApiSite(Site):
    """A Site whose request bodies are bounded in memory (see :class:`BoundedBody`) and whose
    connections are :class:`ApiChannel`\\ s (early 401, header and body deadlines)."""

    protocol = ApiChannel  # type: ignore[assignment]
    resource: ApiResource

    def __init__(
        self,
        resource: ApiResource,
        *,
        max_body_bytes: int,
        limits: Limits = Limits(),
        reactor: IReactorTime | None = None,
    ) -> None:
        # The API reads JSON only: no form parsing, which would parse every POST's
        # Content-Type with the email package (~10% of the CPU per single-notification
        # request) and answer a JSON body labelled as a form with a bare 400. The option is
        # new in Twisted 25.5, the lowest txapns supports for it.
        Site.__init__(
            self,
            resource,
            timeout=limits.idle_timeout,
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        self.max_body_bytes = max_body_bytes
        self.limits = limits
        self.displayTracebacks = False

    def getContentFile(self, length: int | None) -> BoundedBody:
        return BoundedBody(self.max_body_bytes, length)

    #: Where the combined-log-format line of each request goes (the ``access_log``
    #: setting): ``"log"`` the service log (twisted.web's default), ``"off"``, or a path.
    access_log = "log"

    def startFactory(self) -> None:
        Site.startFactory(self)
        if self.access_log == "off":
            self._logFile = None
        elif self.access_log != "log":
            self._logFile = self._openLogFile(self.access_log)  # type: ignore[no-untyped-call]


def make_site(
    engine: Engine,
    api_key: bytes,
    limits: Limits = Limits(),
    reactor: IReactorTime | None = None,
) -> ApiSite:
    """The Site to listen with (strports): the API over ``engine``, bodies bounded."""
    return ApiSite(
        ApiResource(engine, api_key, limits),
        max_body_bytes=limits.max_body_bytes,
        limits=limits,
        reactor=reactor,
    )


#: The ``WWW-Authenticate`` value of every 401, from either HTTP layer (twisted.web's here,
#: the lean one in :mod:`txapns.service.http1`).
BEARER_CHALLENGE = b'Bearer realm="txapns"'
#: Routes that answer without the bearer key: liveness only, no details.
OPEN_PATHS = frozenset({b"/livez"})


def unauthorized() -> ApiError:
    return ApiError(
        401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>'"
    )


def bearer_matches(header: bytes | None, key: bytes) -> bool:
    """``Authorization: Bearer <key>``, the scheme in any case (RFC 9110 §11.1), compared
    in constant time."""
    if not header:
        return False
    scheme, _, credentials = header.partition(b" ")
    ok = hmac.compare_digest(credentials.strip(b" "), key)
    return ok and scheme.lower() == b"bearer"


class ApiRequest:
    """One HTTP request as the API's handlers see it, whichever HTTP layer read it
    (:class:`ApiResource` over twisted.web, or :mod:`txapns.service.http1`)."""

    __slots__ = ("body", "body_size", "body_too_large", "header", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: bytes,
        query: bytes,
        header: Callable[[bytes], bytes | None],
        body: bytes = b"",
        body_size: int = 0,
        body_too_large: bool = False,
    ) -> None:
        self.method = method
        #: The path as sent (percent-encoded), without the query.
        self.path = path
        self.query = query
        #: A header's value by its lower-case name, or None.
        self.header = header
        self.body = body
        #: The body's size as declared or received (it may be larger than ``body``).
        self.body_size = body_size
        #: Over ``max_body_bytes``: ``body`` was not kept.
        self.body_too_large = body_too_large


def idempotency_header(request: ApiRequest) -> str | None:
    """The ``Idempotency-Key`` header as text; a key that is not UTF-8 is refused (400), never
    decoded with replacement characters (two different keys would become one)."""
    raw = request.header(b"idempotency-key")
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("the Idempotency-Key header is not valid UTF-8") from None


_Answer = Deferred[Response] | Response


class Api:
    """The API's routes and handlers, apart from any HTTP layer: an :class:`ApiRequest` in,
    a :class:`Response` (or a Deferred of one) out. :class:`ApiResource` serves it over
    twisted.web; :mod:`txapns.service.http1` over the lean HTTP/1.1 layer."""

    def __init__(
        self,
        engine: Engine,
        api_key: bytes,
        limits: Limits = Limits(),
        clock: IReactorTime | None = None,
    ) -> None:
        if len(api_key) < 16:
            raise ValueError("the API key must be at least 16 bytes")
        self.engine = engine
        self._key = api_key
        self.limits = limits
        #: Turns for encoding big job views (encode_job); the engine's clock by default.
        self._clock = clock if clock is not None else engine.clock

    def authorized(self, path: bytes, header: bytes | None) -> bool:
        """May a request for ``path`` with this ``Authorization`` header go on?"""
        return path in OPEN_PATHS or bearer_matches(header, self._key)

    def handle(self, request: ApiRequest) -> tuple[str, _Answer]:
        """Route and run ``request``: its route (for the metrics) and its answer. Never
        raises: every failure becomes an error :class:`Response`."""
        route = "other"
        try:
            if not self.authorized(request.path, request.header(b"authorization")):
                raise unauthorized()
            parts = [unquote(p) for p in request.path.decode("utf-8", "replace").split("/")[1:]]
            route, handler = self._route(request.method, parts)
            answer: _Answer = handler(request)
        except ApiError as e:
            return route, Response(e.status, e.body(), headers=e.headers)
        except Exception:
            return route, self._to_response(Failure(), route)
        if isinstance(answer, Deferred):
            answer.addErrback(self._to_response, route)
        return route, answer

    def count(self, route: str, code: int) -> None:
        """Count one answer in ``txapns_http_responses_total``."""
        self.engine.metrics.http_responses[(route, code)] += 1

    # -- plumbing --

    def _route(self, method: str, parts: list[str]) -> tuple[str, Any]:
        def allow(route: str, allowed: str, handler: Any) -> tuple[str, Any]:
            if method != allowed and not (allowed == "GET" and method == "HEAD"):
                err = ApiError(
                    405, "method_not_allowed", f"{method} is not allowed here; use {allowed}"
                )
                err.headers = (("Allow", "GET, HEAD" if allowed == "GET" else allowed),)
                raise err
            return route, handler

        if len(parts) == 4 and parts[:2] == ["v1", "apps"] and parts[2]:
            app = parts[2]
            if parts[3] == "notifications":
                return allow("notifications", "POST", lambda r: self._notifications(r, app))
            if parts[3] == "invalid-tokens":
                return allow("invalid_tokens", "GET", lambda r: self._invalid_tokens(r, app))
        if parts == ["livez"]:
            return allow("livez", "GET", self._livez)
        if parts == ["healthz"]:
            return allow("healthz", "GET", self._healthz)
        if parts == ["metrics"]:
            return allow("metrics", "GET", self._metrics)
        if len(parts) == 3 and parts[:2] == ["v1", "jobs"] and parts[2]:
            return allow("job", "GET", lambda r: self._job(r, parts[2]))
        raise ApiError(404, "not_found", "no such endpoint")

    def _to_response(self, failure: Failure, route: str) -> Response:
        e = failure.value
        if isinstance(e, ApiError):
            return Response(e.status, e.body())
        if isinstance(e, UnknownAppError):
            return Response(404, ApiError(404, "unknown_app", str(e), app=e.app).body())
        if isinstance(e, PayloadTooLargeError):
            err = ApiError(413, "payload_too_large", str(e), size=e.size, limit=e.limit)
            return Response(413, err.body())
        if isinstance(e, RecipientError):
            err = ApiError(400, "invalid_token", str(e), index=e.index)
            return Response(400, err.body())
        if isinstance(e, ValidationError):
            return Response(400, ApiError(400, "invalid_notification", str(e)).body())
        if isinstance(e, SpoolUnavailableError):
            return Response(
                503,
                ApiError(503, "spool_unavailable", str(e)).body(),
                "application/json",
                (("Retry-After", str(e.retry_after)),),
            )
        if isinstance(e, IdempotencyKeyReusedError):
            err = ApiError(422, "idempotency_key_reused", str(e), job_id=e.job_id)
            return Response(422, err.body())
        if isinstance(e, NotAcceptingError):
            return Response(
                503,
                ApiError(503, "unavailable", str(e)).body(),
                "application/json",
                (("Retry-After", "5"),),
            )
        log.failure("API {route} failed", failure, route=route)
        return Response(
            500, ApiError(500, "internal", "internal error; see the service log").body()
        )

    def _client_gone(self, failure: Failure, gone: list[bool], route: str) -> None:
        gone.append(True)
        log.debug(
            "API client went away before the {route} answer: {why}",
            route=route,
            why=failure.getErrorMessage(),
        )

    def _write_failed(self, failure: Failure, route: str) -> None:
        log.failure("could not write the {route} answer", failure, route=route)

    # -- handlers --

    def _notifications(self, request: ApiRequest, app: str) -> Deferred[Response]:
        self.engine.check_app(app)  # 404 before looking at the body
        if request.body_too_large:
            raise ApiError(
                413,
                "body_too_large",
                f"the request body is {request.body_size} bytes; the limit is "
                f"{self.limits.max_body_bytes} bytes",
                size=request.body_size,
                limit=self.limits.max_body_bytes,
            )
        body = request.body
        parsed = parse_submission(
            body, idempotency_header=idempotency_header(request), limits=self.limits
        )
        notifications = self.engine.prepare(app, parsed.template, parsed.tokens)
        # A scheduled send is answered as stored (202), never held open until its time; the
        # job is stored as asynchronous, so an idempotent repeat answers the same way.
        async_ = parsed.async_ or self.engine.scheduled_for_later(parsed.send_at)
        d = self.engine.submit(
            app,
            notifications,
            async_=async_,
            send_at=parsed.send_at,
            idempotency_key=parsed.idempotency_key,
            # Only keyed requests need one; hashing the body is cheap next to parsing it.
            fingerprint=None
            if parsed.idempotency_key is None
            else hashlib.sha256(body).hexdigest(),
        )
        return d.addCallback(self._accepted)

    def _accepted(self, accepted: Accepted) -> Deferred[Response] | Response:
        replay = (("Idempotent-Replayed", "true"),) if accepted.duplicate else ()
        if accepted.async_:
            return Response(
                202,
                {
                    "job_id": accepted.job_id,
                    "status_url": f"/v1/jobs/{accepted.job_id}",
                    "duplicate": accepted.duplicate,
                },
                headers=replay,
            )

        def answer(view: JobView) -> _Answer:
            return self._job_response(200 if view.done else 202, view, replay)

        fresh = not accepted.duplicate  # stored just now: its outcomes are all to come
        return self.engine.wait(
            accepted.job_id, fresh=fresh, count=accepted.count, limit=self.limits.sync_wait
        ).addCallback(answer)

    def _job(self, request: ApiRequest, job_id: str) -> Deferred[Response]:
        def answer(view: JobView | None) -> _Answer:
            if view is None:
                raise ApiError(404, "unknown_job", f"no job {job_id!r} (purged or never made)")
            return self._job_response(200, view, ())

        return self.engine.job(job_id).addCallback(answer)

    def _job_response(
        self, code: int, view: JobView, headers: tuple[tuple[str, str], ...]
    ) -> _Answer:
        text = encode_job(view, self._clock)
        if isinstance(text, str):
            return Response(code, text, headers=headers)
        return text.addCallback(lambda body: Response(code, body, headers=headers))

    def _invalid_tokens(self, request: ApiRequest, app: str) -> Deferred[Response]:
        query = request.query.decode("latin-1")
        raw = parse_qs(query, keep_blank_values=True, errors="replace").get("since")
        since: float | None = None
        if raw:
            since = parse_time(raw[0], "since")
        d = self.engine.invalid_tokens(app, since)
        return d.addCallback(lambda tokens: Response(200, invalid_json(app, tokens, since)))

    def _livez(self, request: ApiRequest | None) -> Response:
        """Liveness for orchestrators: the process answers. No key, no details."""
        return Response(200, {"status": "alive"})

    def _healthz(self, request: ApiRequest | None) -> Response:
        health = self.engine.health()
        return Response(200 if health["status"] == "ok" else 503, health)

    def _metrics(self, request: ApiRequest | None) -> Response:
        return Response(200, self.engine.metrics_text(), METRICS_CONTENT_TYPE)


class ApiResource(Api, Resource):
    """The API over twisted.web: one leaf resource that routes on the path itself."""

    isLeaf = True

    def __init__(self, engine: Engine, api_key: bytes, limits: Limits = Limits()) -> None:
        Resource.__init__(self)
        Api.__init__(self, engine, api_key, limits)

    def render(self, request: Request) -> int:
        route, answer = self.handle(self._request(request))
        if not isinstance(answer, Deferred):
            self._write(request, route, answer)
            return NOT_DONE_YET
        gone: list[bool] = []
        request.notifyFinish().addErrback(self._client_gone, gone, route)
        answer.addCallback(lambda r: None if gone else self._write(request, route, r))
        answer.addErrback(self._write_failed, route)
        return NOT_DONE_YET

    def _request(self, request: Request) -> ApiRequest:
        content = request.content
        body = b""
        size = 0
        too_large = False
        if isinstance(content, BoundedBody):
            too_large, size = content.too_large, content.size
            if not too_large:
                body = content.getvalue()
        elif content is not None:
            content.seek(0, 0)
            body = content.read()
            size = len(body)
            too_large = size > self.limits.max_body_bytes
        return ApiRequest(
            request.method.decode("ascii", "replace"),
            request.path,
            request.uri.partition(b"?")[2],
            request.getHeader,
            body,
            size,
            too_large,
        )

    def _write(self, request: Request, route: str, response: Response) -> None:
        self.count(route, response.code)
        if request.finished or getattr(request, "_disconnected", False):
            return
        body = response.encoded()
        request.setResponseCode(response.code)
        request.setHeader(b"Content-Type", response.content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        if response.code == 401:
            request.setHeader(b"WWW-Authenticate", BEARER_CHALLENGE)
        for k, v in response.headers:
            request.setHeader(k.encode("ascii"), v.encode("ascii"))
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
