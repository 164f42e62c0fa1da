"""``ChannelManager`` on answers the fake APNs never gives: a 2xx it cannot use (no channel id,
an unreadable body) and a failure that is not a request's, from a client stub."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from txapns.broadcast import ChannelManager
from txapns.core.errors import ChannelError, ProtocolError
from txapns.http2 import HTTP2Client, Response

BUNDLE = "com.example.app"
CHANNEL = "dHN0LXU3cQ=="


class StubClient:
    """``HTTP2Client.request`` answering with what the test gives it."""

    bundle_id = BUNDLE
    name = "stub"

    def __init__(self, answer: Deferred[Response]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Deferred[Response]:
        self.requests.append((method, path))
        return self.answer


def manager(answer: Deferred[Response]) -> ChannelManager:
    return ChannelManager(cast(HTTP2Client, StubClient(answer)))


def response(status: int, body: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()) -> Any:
    return succeed(Response(status, headers, body, "req-1"))


class AnswersTests(SynchronousTestCase):
    def error(self, d: Deferred[Any]) -> ChannelError:
        error = self.failureResultOf(d, ChannelError).value
        assert isinstance(error, ChannelError)
        return error

    def test_a_create_answered_without_a_channel_id(self) -> None:
        error = self.error(manager(response(201)).create(0))
        self.assertEqual(
            str(error),
            f"create channel for {BUNDLE}: the answer (201) has no apns-channel-id",
        )
        self.assertEqual((error.status, error.channel_id), (201, None))

    def test_a_2xx_whose_body_cannot_be_read(self) -> None:
        error = self.error(manager(response(200, b'{"message-storage-policy": 7}')).get(CHANNEL))
        self.assertEqual(
            str(error),
            f"read channel {CHANNEL}: the channel read answer has message-storage-policy 7",
        )
        self.assertEqual((error.status, error.channel_id), (200, CHANNEL))
        self.assertIsInstance(error.__cause__, ProtocolError)

    def test_a_failure_that_is_not_a_request_error_passes_unchanged(self) -> None:
        bug = RuntimeError("a bug in the client")
        d = manager(fail(bug)).list()
        self.assertIs(self.failureResultOf(d, RuntimeError).value, bug)
