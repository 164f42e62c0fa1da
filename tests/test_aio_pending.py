"""``txapns.aio.PendingSend`` with a client stub and a plain asyncio loop: withdrawing after the
result arrived, and a client that cannot withdraw (as ``BinaryClient``), awaited and cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from txapns.aio import PendingSend
from txapns.core.notification import Notification
from txapns.core.result import Result

NOTE = Notification.create("ab" * 32, {"aps": {}})


class NoWithdrawClient:
    """A client whose ``send`` hands back a Deferred the test fires; no ``withdraw``."""

    def __init__(self) -> None:
        self.sent: list[Deferred[Result]] = []

    def send(self, notification: Notification) -> Deferred[Result]:
        d: Deferred[Result] = Deferred()
        self.sent.append(d)
        return d


class WithdrawingClient(NoWithdrawClient):
    def __init__(self) -> None:
        super().__init__()
        self.withdrawn: list[Notification] = []

    def withdraw(self, notification: Notification) -> bool:
        self.withdrawn.append(notification)
        return True


class PendingSendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)

    def pending(self, client: Any) -> PendingSend:
        return PendingSend(client, NOTE, self.loop)

    def test_too_late_once_the_result_arrived(self) -> None:
        client = WithdrawingClient()
        pending = self.pending(client)
        result = Result.accepted_for(NOTE, 1, None)
        client.sent[0].callback(result)
        self.assertTrue(pending.done())
        self.assertFalse(pending.withdraw())
        self.assertEqual(client.withdrawn, [])  # the client was not even asked
        self.assertIs(self.loop.run_until_complete(self.await_(pending)), result)

    async def await_(self, pending: PendingSend) -> Result:
        return await pending

    def test_a_client_without_withdraw_cannot_take_it_back(self) -> None:
        pending = self.pending(NoWithdrawClient())
        self.assertFalse(pending.withdraw())
        self.assertFalse(pending.done())

    def test_cancelled_while_a_client_without_withdraw_holds_it(self) -> None:
        pending = self.pending(NoWithdrawClient())

        async def cancelled() -> str:
            task = asyncio.ensure_future(self.await_(pending))
            await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError as e:
                return str(e)
            raise AssertionError("not cancelled")

        message = self.loop.run_until_complete(cancelled())
        self.assertEqual(
            message,
            "too late to withdraw abababab…: NoWithdrawClient cannot withdraw; it may "
            "still be sent",
        )
