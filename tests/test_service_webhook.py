"""The invalid-token webhook on its own: what it posts, how it reads the answer, its limits."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import TimeoutError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from txapns.service.webhook import BytesProducer, InvalidTokenWebhook

from .helpers_service import FakeAgent, FakeResponse

TOKEN = "ab" * 32


class WebhookTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def hook(
        self, response: FakeResponse | None, **kw: Any
    ) -> tuple[InvalidTokenWebhook, FakeAgent]:
        agent = FakeAgent(response)
        return InvalidTokenWebhook(agent, "http://127.0.0.1:1/dead", self.clock, **kw), agent

    def test_one_post_per_turn_with_its_headers(self) -> None:
        hook, agent = self.hook(
            FakeResponse(204, [], ResponseDone), headers={"Authorization": "Bearer k"}
        )
        hook.notify("shop", TOKEN, 1.5, "Unregistered", 410, "unregistered")
        hook.notify("shop", TOKEN, None, "BadDeviceToken", 400, "bad_token")
        self.assertEqual(agent.requests, [])
        self.clock.advance(0)
        [(method, uri, headers, body)] = agent.requests
        self.assertEqual((method, uri), (b"POST", b"http://127.0.0.1:1/dead"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(headers.getRawHeaders(b"authorization"), [b"Bearer k"])
        self.assertEqual(
            json.loads(body)["invalid_tokens"],
            [
                {
                    "app": "shop",
                    "token": TOKEN,
                    "timestamp": 1.5,
                    "reason": "Unregistered",
                    "status": 410,
                    "kind": "unregistered",
                },
                {
                    "app": "shop",
                    "token": TOKEN,
                    "timestamp": None,
                    "reason": "BadDeviceToken",
                    "status": 400,
                    "kind": "bad_token",
                },
            ],
        )
        self.assertEqual((hook.posted, hook.failed), (2, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_without_a_length_counts(self) -> None:
        """An HTTP/1.0 answer that ends with its connection is whole: its code counts."""
        hook, _ = self.hook(FakeResponse(200, [b"ok"], PotentialDataLoss))
        hook.notify("shop", TOKEN, None, "Unregistered", 410)
        self.clock.advance(0)
        self.assertEqual((hook.posted, hook.failed), (1, 0))

    def test_error_answer_counts_failed(self) -> None:
        hook, _ = self.hook(FakeResponse(500, [b"oops"], ResponseDone))
        hook.notify("shop", TOKEN, None, "Unregistered", 410)
        self.clock.advance(0)
        self.assertEqual((hook.posted, hook.failed), (0, 1))
        self.flushLoggedErrors()

    def test_answer_that_never_ends_is_given_up(self) -> None:
        """The time limit covers the answer's body: a body that never ends is abandoned,
        its connection aborted, and stop() does not wait for it forever."""
        response = FakeResponse(200, [b"more"], None)
        hook, _ = self.hook(response, timeout=5.0)
        hook.notify("shop", TOKEN, None, "Unregistered", 410)
        self.clock.advance(0)
        stopped = hook.stop()
        self.assertNoResult(stopped)
        self.clock.advance(5.0)
        self.successResultOf(stopped)
        self.assertEqual((hook.posted, hook.failed), (0, 1))
        self.assertTrue(response.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(TimeoutError)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_answer_is_given_up(self) -> None:
        hook, _ = self.hook(None, timeout=5.0)
        hook.notify("shop", TOKEN, None, "Unregistered", 410)
        self.clock.advance(0)
        self.clock.advance(5.0)
        self.assertEqual((hook.posted, hook.failed), (0, 1))
        self.assertEqual(len(self.flushLoggedErrors(TimeoutError)), 1)
        self.successResultOf(hook.stop())

    def test_stop_posts_what_is_pending(self) -> None:
        hook, agent = self.hook(FakeResponse(200, [], ResponseDone))
        hook.notify("shop", TOKEN, None, "Unregistered", 410)
        self.successResultOf(hook.stop())
        self.assertEqual((len(agent.requests), hook.posted), (1, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BytesProducerTests(SynchronousTestCase):
    def test_writes_at_once(self) -> None:
        consumer = StringTransport()
        producer = BytesProducer(b'{"a":1}')
        self.assertEqual(producer.length, 7)
        self.successResultOf(producer.startProducing(consumer))
        self.assertEqual(consumer.value(), b'{"a":1}')
