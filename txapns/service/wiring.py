"""Putting the service together from a :class:`ServiceConfig` and started Senders.

What :func:`~txapns.service.application.build_service` does, with the reactor imported inside
it::

    config = load_config(path)
    senders = {app.name: <started client for app> for app in config.apps}
    pollers = feedback_pollers(config, reactor)          # binary apps' feedback service
    health = client_health(senders, pollers)
    engine, pool = build_engine(config, senders, reactor, health=health)
    service = MultiService()
    EngineService(engine, pool, feedback=pollers.values()).setServiceParent(service)
    site = make_listener(engine, config.api_key(), limits_from(config), server=config.http_server)
    for description in config.listen:
        strports.service(description, site).setServiceParent(service)

Stopping the MultiService stops its children in reverse order of attachment, but does not
wait for one to finish stopping before it stops the next; it waits for all of them. So the
listeners stop listening while :class:`EngineService` stops, and the order that matters is
kept inside :meth:`EngineService.stopService`: first the feedback pollers (a read in progress
is finished and recorded), then the engine, which stops taking submissions, drains what is in
flight (up to ``drain_timeout``), stops the Senders, writes what is left and closes the spool;
then the spool's thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import (
    IProtocolFactory,
    IReactorFromThreads,
    IReactorTCP,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IAgent

from ..interfaces import Sender
from .api import Api, ApiSite, Limits, make_site
from .backend import SpoolBackend
from .config import RedisSpoolConfig, ServiceConfig
from .engine import OUTCOME_DELAY, WATCH_INTERVAL, Engine, engine_apps
from .feedback import FeedbackPolling
from .spool import Spool, SpoolStore, thread_runner
from .webhook import InvalidTokenWebhook

log = Logger()


class _Reactor(IReactorTime, IReactorFromThreads, IReactorTCP):
    """What :func:`build_engine` needs of the reactor (typing only)."""


#: The API's default limits.
_LIMITS = Limits()


def limits_from(config: ServiceConfig) -> Limits:
    return Limits(max_body_bytes=config.max_body_bytes, max_recipients=config.max_recipients)


def make_listener(
    engine: Engine,
    api_key: bytes,
    limits: Limits = _LIMITS,
    reactor: IReactorTime | None = None,
    *,
    server: str = "lean",
    access_log: str = "off",
) -> IProtocolFactory:
    """The factory to listen with (strports): the API over ``server``, the ``http_server``
    setting: ``"lean"`` (:mod:`txapns.service.http1`, the default: a fraction of
    twisted.web's CPU per request) or ``"twisted"`` (:class:`~.api.ApiSite`). ``access_log`` is
    the setting of that name: ``"off"``, ``"log"`` (the service log) or a file's path."""
    factory: ApiSite | Any
    if server == "twisted":
        factory = make_site(engine, api_key, limits, reactor)
    elif server == "lean":
        from .http1 import ApiFactory

        factory = ApiFactory(Api(engine, api_key, limits), reactor)
    else:
        raise ValueError(f"http_server must be 'lean' or 'twisted', not {server!r}")
    factory.access_log = access_log
    return factory


def build_engine(
    config: ServiceConfig,
    senders: Mapping[str, Sender],
    reactor: _Reactor,
    *,
    health: Mapping[str, Callable[[], Mapping[str, object]]] | None = None,
    agent: IAgent | None = None,
    synchronous: str = "FULL",
) -> tuple[Engine, ThreadPool | None]:
    """Open the spool (blocking, before the reactor runs) and build the engine.

    Returns the engine and the (not yet started) one-thread pool the SQLite spool runs in
    (``None`` for the Redis backend); give both to :class:`EngineService`. ``agent`` is
    needed only for ``invalid_token_webhook``.
    """
    apps = engine_apps(config, senders, health)
    if config.invalid_token_webhook is not None and agent is None:
        raise ValueError("invalid_token_webhook is set: give an Agent")
    spool: SpoolBackend
    pool: ThreadPool | None = None
    if config.redis is not None:
        spool = redis_spool(config.redis, reactor, [a.name for a in config.apps],
                            results_ttl=config.retention_seconds)  # fmt: skip
    else:
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
        watch_interval=WATCH_INTERVAL,
        outcome_delay=OUTCOME_DELAY,
    )
    return engine, pool


def redis_spool(
    config: RedisSpoolConfig, reactor: _Reactor, apps: list[str], *, results_ttl: float
) -> SpoolBackend:
    """The Redis Streams spool for ``config`` (connections open in the background)."""
    from .redis_spool import RedisAddress, RedisLink, RedisSettings, RedisSpool, default_instance_id

    sentinels = tuple((h, int(p)) for h, p in (s.rsplit(":", 1) for s in config.sentinel))
    address = RedisAddress.from_url(
        config.url,
        sentinels=sentinels,
        sentinel_master=config.sentinel_master,
        ca_file=None if config.ca_file is None else str(config.ca_file),
    )
    settings = RedisSettings(
        prefix=config.prefix,
        instance_id=config.instance_id or default_instance_id(),
        claim_after=config.claim_after,
        max_deliveries=config.max_deliveries,
        wait_replicas=config.wait_replicas,
        chunk_size=config.chunk_size,
        results_ttl=results_ttl,
        consume=config.consume,
    )
    # Reads block for settings.block seconds: their connections get a longer reply timeout.
    link = RedisLink(reactor, address, reply_timeout=5.0 + settings.wait_timeout)
    return RedisSpool(
        link,
        lambda: RedisLink(reactor, address, reply_timeout=settings.block + 5.0),
        reactor,
        apps,
        settings,
    )


def client_health(
    senders: Mapping[str, Sender],
    feedback: Mapping[str, FeedbackPolling] | None = None,
) -> dict[str, Callable[[], Mapping[str, object]]]:
    """Per app, what ``/healthz`` adds to the engine's view (``build_engine(health=...)``):
    ``"client"``, the Sender's own state (its ``health()``: connections, breaker…) and, for
    binary apps, ``"feedback"``, the feedback poller's."""
    out: dict[str, Callable[[], Mapping[str, object]]] = {}
    for name, sender in senders.items():
        parts: dict[str, Callable[[], Mapping[str, object]]] = {}
        client = _sender_health(sender)
        if client is not None:
            parts["client"] = client
        poller = (feedback or {}).get(name)
        if poller is not None:
            parts["feedback"] = poller.health
        if parts:
            out[name] = _HealthReport(name, parts)
    return out


def _sender_health(sender: Sender) -> Callable[[], Mapping[str, object]] | None:
    health = getattr(sender, "health", None)
    return health if callable(health) else None


class _HealthReport:
    """Calls each part; one that raises is reported as its error, not a failed ``/healthz``."""

    def __init__(self, app: str, parts: Mapping[str, Callable[[], Mapping[str, object]]]) -> None:
        self.app = app
        self.parts = dict(parts)

    def __call__(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, part in self.parts.items():
            try:
                out[key] = dict(part())
            except Exception as e:
                log.failure("health of {app} ({key}) failed", app=self.app, key=key)
                out[key] = {"error": f"{type(e).__name__}: {e}"}
        return out


class EngineService(Service):
    """Starts the spool thread pool, the engine and the feedback pollers; stops them in the
    right order (pollers, engine, thread pool)."""

    def __init__(
        self,
        engine: Engine,
        threadpool: ThreadPool | None = None,
        *,
        feedback: Iterable[FeedbackPolling] = (),
    ) -> None:
        self.engine = engine
        self.threadpool = threadpool
        self.feedback = list(feedback)
        self.started: Deferred[None] | None = None

    def startService(self) -> None:
        Service.startService(self)
        if self.threadpool is not None:
            self.threadpool.start()
        self.started = self.engine.start()
        self.started.addErrback(self._start_failed)
        for poller in self.feedback:
            poller.start(self.engine.add_feedback)

    def _start_failed(self, failure: Failure) -> None:
        log.failure("could not resume the spool; unfinished notifications stay in it", failure)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        # Feedback first: a read in progress was already cleared at Apple, so its tokens
        # must reach the spool before the engine closes it.
        pollers = gatherResults([p.stop() for p in self.feedback])
        # One budget for the whole stop: a feedback read cut short counts against it.
        clock = self.engine._clock
        deadline = clock.seconds() + self.engine.drain_timeout
        d = pollers.addBoth(lambda _: self.engine.stop(deadline - clock.seconds()))

        def stop_pool(result: object) -> object:
            if self.threadpool is not None:
                self.threadpool.stop()
            return result

        d.addBoth(stop_pool)
        return d
