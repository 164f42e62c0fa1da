"""``txapns.aio``: awaitable sends for asyncio applications on Twisted's asyncio reactor, and
the client's ``withdraw`` under them (issue 12, item 12).

The HTTP/2 client runs here on a :class:`Clock` over iosim (as in ``test_http2_client``) while
an asyncio event loop runs the awaiting tasks: the clock stands in for the reactor, with the
two attributes :class:`AsyncClient` checks. The real asyncio reactor, TLS and the fake
server are exercised by running ``docs/examples/asyncio_send.py`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.task import Clock

from txapns.aio import AsyncClient, ReactorNotRunningError
from txapns.core.result import Outcome

from .helpers_http2 import ClientTestCase, note, token

T = TypeVar("T")
EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "asyncio_send.py"


class WithdrawTests(ClientTestCase):
    """``HTTP2Client.withdraw``: only what is certainly not delivered is taken back."""

    def test_queued_notification_is_withdrawn_and_never_sent(self) -> None:
        client = self.make_client()
        n = note(1)
        d = self.send(client, n)  # queued: the client writes on the next reactor turn
        self.assertTrue(client.withdraw(n))
        result = self.result_of(d)
        self.assertEqual(
            (result.outcome, result.local, result.reason), ("rejected", "withdrawn", "withdrawn")
        )
        self.pump()
        self.assertEqual(self.server.accepted, [])
        self.assertEqual(client.counters.rejected, 1)
        self.check()

    def test_in_flight_is_too_late(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        n = note(1)
        d = self.send(client, n)
        self.pump()
        self.assertFalse(client.withdraw(n))
        self.advance(1.0)
        self.assertTrue(self.result_of(d).accepted)
        self.assertFalse(client.withdraw(n))  # finished: nothing to take back

    def test_waiting_for_a_retry_after_429_is_withdrawn(self) -> None:
        client = self.make_client()
        self.server.throttled_tokens[token(1).hex()] = None
        n = note(1)
        d = self.send(client, n)
        self.pump()
        self.assertNoResult(d)
        self.assertTrue(client.withdraw(n))
        self.assertEqual(self.result_of(d).local, "withdrawn")
        self.advance(30.0)
        self.assertEqual(self.server.accepted, [])
        self.check()

    def test_maybe_delivered_is_too_late(self) -> None:
        """Re-queued after a reset while in flight: the first write may have been delivered."""
        self.server.latency = 1.0
        client = self.make_client()
        self.send(client, note(0))
        self.advance(1.0)
        n = note(1)
        d = self.send(client, n)
        self.pump()
        self.server.drop_connections()
        self.pump()
        self.assertNoResult(d)
        self.assertFalse(client.withdraw(n))
        self.advance(2.0, step=0.5)
        self.assertTrue(self.result_of(d).may_duplicate)


class FakeAsyncioReactor(Clock):
    """A Clock with what AsyncClient checks of Twisted's asyncio reactor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, running: bool = True) -> None:
        super().__init__()
        self._asyncioEventloop = loop
        self.running = running


class AsyncClientTests(ClientTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        reactor = FakeAsyncioReactor(self.loop)
        reactor.advance(self.clock.seconds())
        # The client and the fake server share the reactor-clock.
        self.clock = reactor
        self.server.clock = reactor  # type: ignore[assignment]
        self.endpoint.clock = reactor

    def arun(self, aw: Awaitable[T]) -> T:
        return self.loop.run_until_complete(aw)

    def step(self) -> None:
        """One asyncio turn, then the Twisted side until it settles."""
        self.loop.run_until_complete(asyncio.sleep(0))
        self.pump()
        self.loop.run_until_complete(asyncio.sleep(0))

    def test_await_send(self) -> None:
        aclient = AsyncClient(self.make_client())

        async def main() -> Any:
            task = asyncio.ensure_future(aclient.send(note(1)))
            await asyncio.sleep(0)
            return task

        task = self.arun(main())
        self.step()
        result = task.result()
        self.assertEqual(result.outcome, "accepted")
        self.assertEqual(result.status, 200)

    def test_cancel_before_written_withdraws(self) -> None:
        client = self.make_client()
        aclient = AsyncClient(client)

        async def main() -> None:
            task = asyncio.ensure_future(aclient.send(note(1)))
            await asyncio.sleep(0)  # submitted, not yet written (the client writes next turn)
            task.cancel()
            with self.assertRaises(asyncio.CancelledError) as caught:
                await task
            self.assertTrue(task.cancelled())
            self.assertEqual(str(caught.exception), "withdrawn: 00000001… was never sent")

        self.arun(main())
        self.assertEqual(client.pending(), 0)
        self.pump()
        self.assertEqual(self.server.accepted, [])

    def test_submit_withdraw_says_whether_it_was_in_time(self) -> None:
        self.server.latency = 1.0
        aclient = AsyncClient(self.make_client())

        async def submit(i: int) -> Any:
            return aclient.submit(note(i))

        early = self.arun(submit(1))
        self.assertTrue(early.withdraw())
        result = self.arun(early)
        self.assertEqual((result.outcome, result.local), (Outcome.REJECTED, "withdrawn"))
        late = self.arun(submit(2))
        self.step()  # written, unanswered
        self.assertFalse(late.withdraw())
        self.advance(1.0)
        self.assertTrue(self.arun(late).accepted)

    def test_cancel_too_late_says_so(self) -> None:
        self.server.latency = 1.0
        client = self.make_client()
        aclient = AsyncClient(client)
        task = self.arun(_start(aclient.send(note(1))))
        self.step()  # written, unanswered
        task.cancel()
        with self.assertRaises(asyncio.CancelledError) as caught:
            self.arun(task)
        self.assertEqual(
            str(caught.exception),
            "too late to withdraw 00000001…: it is written to APNs (or may have been "
            "delivered by an earlier attempt) and may still be delivered",
        )
        self.advance(1.0)
        self.assertEqual(len(self.server.accepted), 1)
        self.assertEqual(client.counters.accepted, 1)

    def test_asyncio_timeout_withdraws(self) -> None:
        client = self.make_client()
        aclient = AsyncClient(client)

        async def main() -> None:
            with self.assertRaises(TimeoutError):
                async with asyncio.timeout(0):
                    await aclient.send(note(2))

        self.arun(main())
        self.assertEqual(client.pending(), 0)
        self.pump()
        self.assertEqual(self.server.accepted, [])

    def test_reactor_not_running_is_a_clear_error(self) -> None:
        client = self.make_client()
        self.clock.running = False  # type: ignore[attr-defined]

        async def main() -> None:
            await AsyncClient(client).send(note(1))

        e = self.assertRaises(ReactorNotRunningError, self.arun, main())
        self.assertIn("start_reactor()", str(e))
        self.assertEqual(client.pending(), 0)  # nothing was handed over

    def test_not_the_asyncio_reactor(self) -> None:
        client = self.make_client()

        async def main() -> None:
            await AsyncClient(client, reactor=Clock()).send(note(1))

        e = self.assertRaises(ReactorNotRunningError, self.arun, main())
        self.assertIn("not Twisted's asyncio reactor", str(e))

    def test_another_loop(self) -> None:
        other = asyncio.new_event_loop()
        self.addCleanup(other.close)
        client = self.make_client()

        async def main() -> None:
            await AsyncClient(client, reactor=FakeAsyncioReactor(other)).send(note(1))

        e = self.assertRaises(ReactorNotRunningError, self.arun, main())
        self.assertIn("another event loop", str(e))


async def _start(aw: Awaitable[T]) -> asyncio.Task[T]:
    task: asyncio.Task[T] = asyncio.ensure_future(aw)  # type: ignore[assignment]
    await asyncio.sleep(0)
    return task


class ExampleTests(ClientTestCase):
    def test_the_guide_example_runs_on_the_asyncio_reactor(self) -> None:
        result = subprocess.run(
            [sys.executable, str(EXAMPLE)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.splitlines(),
            [
                "reactor: AsyncioSelectorReactor",
                "01010101… accepted 200",
                "ffffffff… rejected 400 BadDeviceToken",
                "withdrawn: 02020202… was never sent",
            ],
        )
