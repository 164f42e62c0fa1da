"""The small Twisted glue both clients and the service share (``txapns/_twisted.py``)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txapns._twisted import cancel_call, deliver, set_no_delay
from txapns.core.notification import Notification
from txapns.core.result import Result

RESULT = Result.accepted_for(Notification.create("ab" * 32, {"aps": {}}), 1, None)


class TCP:
    """A TCP transport's ``setTcpNoDelay``; ``error`` makes it raise (a closed socket)."""

    def __init__(self, error: OSError | None = None) -> None:
        self.error = error
        self.calls: list[bool] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.calls.append(enabled)
        if self.error is not None:
            raise self.error


class Layer:
    """A transport above another (TLS, a proxy tunnel): no ``setTcpNoDelay`` of its own."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport


class CancelCallTests(SynchronousTestCase):
    def test_cancels_a_pending_call(self) -> None:
        clock = Clock()
        call = clock.callLater(1, lambda: None)
        cancel_call(call)
        self.assertFalse(call.active())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_absent_run_or_cancelled_calls_are_left_alone(self) -> None:
        clock = Clock()
        ran = clock.callLater(1, lambda: None)
        clock.advance(1)
        cancelled = clock.callLater(1, lambda: None)
        cancelled.cancel()
        for call in (None, ran, cancelled):
            cancel_call(call)  # cancelling a run or cancelled call would raise


class SetNoDelayTests(SynchronousTestCase):
    def test_the_tcp_transport_under_the_layers(self) -> None:
        tcp = TCP()
        set_no_delay(Layer(Layer(tcp)))
        self.assertEqual(tcp.calls, [True])

    def test_an_os_error_is_not_raised(self) -> None:
        tcp = TCP(OSError(9, "Bad file descriptor"))
        set_no_delay(Layer(tcp))
        self.assertEqual(tcp.calls, [True])

    def test_no_tcp_transport_at_all(self) -> None:
        set_no_delay(Layer(Layer(None)))
        set_no_delay(None)


class SubDeferred(Deferred[Result]):
    pass


class DeliverTests(SynchronousTestCase):
    def test_a_deferred_fires(self) -> None:
        for d in (Deferred(), SubDeferred()):
            deliver(d, RESULT, "test")
            self.assertIs(self.successResultOf(d), RESULT)

    def test_a_callable_is_called(self) -> None:
        got: list[Result] = []
        deliver(got.append, RESULT, "test")
        self.assertEqual(got, [RESULT])

    def test_a_raising_callable_is_logged_not_propagated(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def broken(result: Result) -> None:
            raise ValueError("caller's bug")

        deliver(broken, RESULT, "client-x")
        [event] = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual(event["name"], "client-x")
        self.assertIsInstance(event["log_failure"].value, ValueError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
