"""``twistd apns --fake --demo N``: one real round trip through the running service.

Once the service is up it POSTs N notifications (one with a token the fake rejects) to its own
HTTP API over loopback, prints one line per recipient and the service's counters, then stops
the reactor. A failure exits with status 1 so scripts and CI notice.
"""

from __future__ import annotations

import json
import os
import sys
from io import BytesIO
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

INVALID_TOKEN = "ff" * 32


def demo_tokens(n: int) -> list[str]:
    tokens = [f"{i + 1:02x}" + os.urandom(31).hex() for i in range(n)]
    if n >= 2:
        tokens[-1] = INVALID_TOKEN  # shows a rejection with its reason
    return tokens


def _out(text: str) -> None:
    # twistd redirects sys.stdout into its log; the demo's answer goes to the real terminal.
    stream = sys.__stdout__ or sys.stdout
    stream.write(text + "\n")
    stream.flush()


class DemoService(Service):
    def __init__(
        self,
        reactor: Any,
        site: Any,
        api_key: bytes,
        app: str,
        count: int,
        key_file: str,
    ) -> None:
        self.reactor = reactor
        self.site = site
        self.api_key = api_key
        self.app = app
        self.count = count
        self.key_file = key_file
        self.port: Any = None

    def startService(self) -> None:
        Service.startService(self)
        from twisted.internet.endpoints import TCP4ServerEndpoint

        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        d: Deferred[Any] = endpoint.listen(self.site)
        d.addCallback(self._listening)
        d.addErrback(self._failed)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            return self.port.stopListening()
        return None

    def _listening(self, port: Any) -> Deferred[None]:
        self.port = port
        base = f"http://127.0.0.1:{port.getHost().port}"
        return self._run(base).addErrback(self._failed)

    @inlineCallbacks
    def _run(self, base: str) -> Any:
        from twisted.internet.task import deferLater

        agent = Agent(self.reactor)
        auth = b"Bearer " + self.api_key
        for _ in range(200):  # the engine resumes its spool asynchronously: wait for /healthz
            response = yield agent.request(
                b"GET", f"{base}/healthz".encode(), Headers({b"authorization": [auth]})
            )
            yield readBody(response)
            if response.code == 200:
                break
            yield deferLater(self.reactor, 0.05, lambda: None)
        tokens = demo_tokens(self.count)
        body = {
            "tokens": tokens,
            "alert": {"title": "txapns", "body": "Hello from the txapns demo"},
            "badge": 1,
        }
        _out(f"txapns demo: POST {base}/v1/apps/{self.app}/notifications ({len(tokens)} tokens)")
        response = yield agent.request(
            b"POST",
            f"{base}/v1/apps/{self.app}/notifications".encode(),
            Headers({b"authorization": [auth], b"content-type": [b"application/json"]}),
            FileBodyProducer(BytesIO(json.dumps(body).encode())),
        )
        raw = yield readBody(response)
        answer = json.loads(raw)
        _out(f"HTTP {response.code}")
        ok = response.code == 200
        for item in answer.get("results", []):
            token = str(item.get("token", ""))
            _out(
                f"  {token[:8]}…  {item.get('outcome'):8}  status={item.get('status')}  "
                f"reason={item.get('reason')}  apns_id={item.get('apns_id')}"
            )
        if not ok:
            _out(json.dumps(answer, indent=2))
        outcomes = [item.get("outcome") for item in answer.get("results", [])]
        expected = ["accepted"] * (len(tokens) - (len(tokens) >= 2)) + (
            ["rejected"] if len(tokens) >= 2 else []
        )
        if outcomes != expected:
            ok = False
            _out(f"unexpected outcomes: {outcomes} (expected {expected})")
        _out(f"(API key file: {self.key_file})")
        if not ok:
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    def _failed(self, failure: Any) -> None:
        _out(f"txapns demo failed: {failure.getErrorMessage()}")
        failure.printTraceback(file=sys.stderr)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if self.reactor.running:
            self.reactor.stop()
