"""Shared by the in-memory service API test modules: the API key, a responder for
the fake sender, and a reader for answers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse

from txapns.core import Notification, Outcome, Result

KEY = b"test-key-0123456789abcdef"


BUNDLE = "com.example.shop"


class Collect(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        reason.trap(ResponseDone)
        self.done.callback(b"".join(self.chunks))


class Reply:
    def __init__(self, response: IResponse, body: bytes) -> None:
        self.code = response.code
        self.headers = response.headers
        self.raw = body

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[0]


def responder(n: Notification) -> Result:
    """Accept, except tokens ending in 'dead' (410) and 'bad0' (400)."""
    hex_ = n.token_hex
    if hex_.endswith("dead"):
        when = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
        return Result(n, Outcome.REJECTED, 410, "Unregistered", n.apns_id, timestamp=when)
    if hex_.endswith("bad0"):
        return Result(n, Outcome.REJECTED, 400, "BadDeviceToken", n.apns_id)
    return Result(n, Outcome.ACCEPTED, 200, None, n.apns_id, attempts=1)
