"""``HTTPConnectEndpoint`` when the proxy's own endpoint fails at once (raises, or answers with
a failure already fired), with and without a time limit and a clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txapns.core.proxy import ProxyError
from txapns.proxy import HTTPConnectEndpoint


@implementer(IStreamClientEndpoint)
class FailingEndpoint:
    """Raises from ``connect`` (``raises``) or returns a Deferred that has failed already."""

    def __init__(self, raises: bool) -> None:
        self.raises = raises

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        if self.raises:
            raise OSError(24, "Too many open files")
        return fail(ConnectionRefusedError("127.0.0.1:3128"))


class ImmediateFailureTests(SynchronousTestCase):
    def attempt(self, raises: bool, **options: Any) -> ProxyError:
        endpoint = HTTPConnectEndpoint(
            FailingEndpoint(raises), "api.push.apple.com", 443, **options
        )
        d = endpoint.connect(Factory.forProtocol(Protocol))
        error = self.failureResultOf(d, ProxyError).value
        assert isinstance(error, ProxyError)
        return error

    def test_a_proxy_endpoint_that_raises(self) -> None:
        clock = Clock()
        error = self.attempt(True, clock=clock)
        self.assertEqual(str(error), "cannot connect to the proxy: [Errno 24] Too many open files")
        self.assertEqual(clock.getDelayedCalls(), [])  # the time limit is cancelled

    def test_a_connection_refused_at_once_without_a_time_limit(self) -> None:
        error = self.attempt(False, timeout=None)
        self.assertIn("cannot connect to the proxy: Connection was refused", str(error))
        self.assertIsInstance(error.__cause__, ConnectionRefusedError)

    def test_the_time_limit_runs_on_the_global_reactor_when_no_clock_is_given(self) -> None:
        from twisted.internet import reactor

        before = set(reactor.getDelayedCalls())
        error = self.attempt(False, timeout=5.0)
        self.assertIn("Connection was refused", str(error))
        self.assertEqual(set(reactor.getDelayedCalls()), before)  # started, then cancelled
