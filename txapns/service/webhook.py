"""The invalid-token webhook: dead tokens POSTed as JSON to an operator's URL.

Best effort, beside the record that counts (the spool's invalid-token feed): tokens are
batched per reactor turn, a failed POST is logged and counted, never retried.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PartialDownloadError, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from .._timers import Timer

__all__ = ["BytesProducer", "InvalidTokenWebhook"]

log = Logger()


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written at once.

    Not :class:`~twisted.web.client.FileBodyProducer`: that one writes from a cooperator
    (the global reactor's, unless one is built on the injected clock), a reactor turn later,
    for a body that is a few hundred bytes.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class InvalidTokenWebhook:
    """POSTs dead tokens as JSON to an operator's URL, batched per reactor turn.

    Body: ``{"invalid_tokens": [{"app", "token", "timestamp", "reason", "status", "kind"},
    ...]}``; ``kind`` is the evidence (``unregistered``, ``bad_token``, ``invalid_token``,
    ``feedback``: see :mod:`txapns.core.token_evidence`).
    Best effort (the spool's invalid-token feed is the record): failures are logged, not
    retried. ``timeout`` bounds each POST, from the request to the end of the answer's body.
    """

    def __init__(
        self,
        agent: IAgent,
        url: str,
        clock: IReactorTime,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._agent = agent
        self.url = url.encode("ascii")
        self._clock = clock
        self.timeout = timeout
        self._headers = dict(headers or {})
        self._pending: list[dict[str, object]] = []
        #: This turn's batch is posted when it fires.
        self._timer = Timer(clock, self._flush)
        self._posts: set[Deferred[None]] = set()
        self.posted = 0
        self.failed = 0

    def notify(
        self,
        app: str,
        token: str,
        timestamp: float | None,
        reason: str | None,
        status: int | None,
        kind: str | None = None,
    ) -> None:
        self._pending.append(
            {
                "app": app,
                "token": token,
                "timestamp": timestamp,
                "reason": reason,
                "status": status,
                "kind": kind,
            }
        )
        self._timer.start_unless_armed(0)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        body = json.dumps({"invalid_tokens": batch}, separators=(",", ":")).encode("utf-8")
        headers = Headers({"Content-Type": ["application/json"]})
        for k, v in self._headers.items():
            headers.addRawHeader(k, v)
        d = self._agent.request(b"POST", self.url, headers, BytesProducer(body))
        # The time limit covers the answer's body too: cancelling readBody's Deferred
        # aborts the connection of an answer that never ends.
        d2: Deferred[None] = d.addCallback(self._response, len(batch))
        d2.addTimeout(self.timeout, self._clock).addErrback(self._post_failed, len(batch))
        self._posts.add(d2)
        d2.addBoth(self._done, d2)

    def _response(self, response: IResponse, count: int) -> Deferred[None]:
        def check(_: bytes) -> None:
            if 200 <= response.code < 300:
                self.posted += count
            else:
                self.failed += count
                log.warn(
                    "invalid-token webhook answered {code} for {count} tokens",
                    code=response.code,
                    count=count,
                )

        return readBody(response).addErrback(_partial_body).addCallback(check)

    def _post_failed(self, failure: Failure, count: int) -> None:
        self.failed += count
        log.failure("invalid-token webhook POST of {count} tokens failed", failure, count=count)

    def _done(self, _: object, d: Deferred[None]) -> None:
        self._posts.discard(d)

    def stop(self) -> Deferred[Any]:
        """Post what is pending now and wait for the posts in progress."""
        if self._timer.armed:
            self._timer.cancel()
            self._flush()
        if not self._posts:
            return succeed(None)
        return DeferredList(list(self._posts))


def _partial_body(failure: Failure) -> bytes:
    """An answer without a length that ended with its connection is a whole answer here:
    only its status code counts."""
    failure.trap(PartialDownloadError)
    error = failure.value
    assert isinstance(error, PartialDownloadError)
    return error.response or b""
