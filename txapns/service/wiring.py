"""Putting the service together from a :class:`ServiceConfig` and started Senders.

``txapns.tap`` is expected to do, with the reactor imported inside ``makeService``::

    config = load_config(path)
    senders = {app.name: <started client for app> for app in config.apps}
    engine, pool = build_engine(config, senders, reactor)
    service = MultiService()
    EngineService(engine, pool).setServiceParent(service)
    site = make_site(engine, config.api_key(), limits_from(config))
    for description in config.listen:
        strports.service(description, site).setServiceParent(service)

Stopping the MultiService stops the listeners, then drains the engine (which stops the
Senders and closes the spool), then stops the thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IAgent

from ..interfaces import Sender
from .api import Limits
from .config import ServiceConfig
from .engine import Engine, InvalidTokenWebhook, engine_apps
from .spool import Spool, SpoolStore, thread_runner

log = Logger()


class _Reactor(IReactorTime, IReactorFromThreads):
    """What :func:`build_engine` needs of the reactor (typing only)."""


def limits_from(config: ServiceConfig) -> Limits:
    return Limits(max_body_bytes=config.max_body_bytes, max_recipients=config.max_recipients)


def build_engine(
    config: ServiceConfig,
    senders: Mapping[str, Sender],
    reactor: _Reactor,
    *,
    health: Mapping[str, Callable[[], Mapping[str, object]]] | None = None,
    agent: IAgent | None = None,
    synchronous: str = "FULL",
) -> tuple[Engine, ThreadPool]:
    """Open the spool (blocking, before the reactor runs) and build the engine.

    Returns the engine and the (not yet started) one-thread pool the spool runs in; give both
    to :class:`EngineService`. ``agent`` is needed only for ``invalid_token_webhook``.
    """
    apps = engine_apps(config, senders, health)
    if config.invalid_token_webhook is not None and agent is None:
        raise ValueError("invalid_token_webhook is set: give an Agent")
    store = SpoolStore(config.spool, synchronous=synchronous)
    pool = ThreadPool(minthreads=1, maxthreads=1, name="txapns-spool")
    spool = Spool(store, reactor, thread_runner(reactor, pool))
    webhook = None
    if config.invalid_token_webhook is not None and agent is not None:
        webhook = InvalidTokenWebhook(agent, config.invalid_token_webhook, reactor)
    engine = Engine(
        apps,
        spool,
        reactor,
        drain_timeout=config.drain_timeout,
        retention=config.retention_seconds,
        webhook=webhook,
    )
    return engine, pool


class EngineService(Service):
    """Starts the spool thread pool and the engine; stops them in the right order."""

    def __init__(self, engine: Engine, threadpool: ThreadPool | None = None) -> None:
        self.engine = engine
        self.threadpool = threadpool
        self.started: Deferred[None] | None = None

    def startService(self) -> None:
        Service.startService(self)
        if self.threadpool is not None:
            self.threadpool.start()
        self.started = self.engine.start()
        self.started.addErrback(self._start_failed)

    def _start_failed(self, failure: Failure) -> None:
        log.failure("could not resume the spool; unfinished notifications stay in it", failure)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        d = self.engine.stop()

        def stop_pool(result: object) -> object:
            if self.threadpool is not None:
                self.threadpool.stop()
            return result

        d.addBoth(stop_pool)
        return d
