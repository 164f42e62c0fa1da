"""An in-memory client endpoint: a client and a fake server connected without sockets.

:class:`MemoryEndpoint` is what to give a txapns client (or any Twisted client) in a unit
test instead of a TCP or TLS endpoint. Each ``connect()`` builds a new protocol of the server
factory and joins the two with :mod:`twisted.test.iosim`; the test moves the bytes with
:meth:`MemoryEndpoint.pump`, so a whole exchange runs deterministically on a
:class:`~twisted.internet.task.Clock`, with no reactor. The server is usually one of the fakes
of :mod:`txapns.testing`: ``FakeAPNsServer(...).factory()``, a ``FakeGateway`` or a
``FakeFeedbackService``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

__all__ = ["MemoryEndpoint"]


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Connects each client protocol to a new protocol of ``server``, in memory.

    Scripted failures, checked in this order on each ``connect()``:

    * ``refuse``: that many next attempts fail with ``ConnectionRefusedError``;
    * ``hang``: when set, ``connect()`` returns this Deferred (the test fires it, or never
      does: a connection attempt that never completes);
    * ``fail_with``: when set, every attempt fails with this exception.
    """

    def __init__(self, server: IProtocolFactory, clock: Clock) -> None:
        self.server = server
        self.clock = clock
        #: One :class:`twisted.test.iosim.IOPump` per connection still open.
        self.pumps: list[iosim.IOPump] = []
        #: Every ``connect()`` call, including the refused ones.
        self.attempts = 0
        self.refuse = 0
        self.hang: Deferred[Any] | None = None
        self.fail_with: BaseException | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            return fail(ConnectionRefusedError("refused by the test"))
        if self.hang is not None:
            return self.hang
        if self.fail_with is not None:
            return fail(self.fail_with)
        client = protocolFactory.buildProtocol(iosim.FakeAddress())
        server = self.server.buildProtocol(iosim.FakeAddress())
        if client is None or server is None:
            return fail(ConnectionRefusedError("a factory built no protocol"))
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return succeed(client)

    def pump(self, check: Callable[[], object] | None = None, *, limit: int = 100_000) -> None:
        """Move bytes both ways and run the calls due now until nothing moves.

        ``check`` runs after every round (an invariant to hold at every step). Closed
        connections are dropped from :attr:`pumps`. Raises ``AssertionError`` when the
        exchange does not settle within ``limit`` rounds.
        """
        for _ in range(limit):
            moved = False
            self.clock.advance(0)
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            if check is not None:
                check()
            if not moved:
                return
        raise AssertionError("the in-memory connections do not settle")
