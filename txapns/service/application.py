"""The service ``twistd apns`` runs, built from its options.

:func:`build_service` turns the options of :class:`txapns.tap.Options` (a configuration
file, the single-app flags, the environment, or ``--fake``) into the service tree: the
embedded fake APNs when asked for, one started client per app, the engine with its spool
(:mod:`.wiring`), the HTTP API's listeners and the ``--demo``. :class:`TopService` is its
root: logging, start-up lines, systemd readiness. :func:`single_app` is shared with the
``txapns`` command's credential flags, :func:`embedded_app` with its ``--fake``.

The reactor is imported inside :func:`build_service` only.
"""

from __future__ import annotations

import gc
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from .config import (
    AppConfig,
    CertificateCredentials,
    ConfigError,
    ServiceConfig,
    TokenCredentials,
    load_config,
    parse_app,
    parse_config,
)
from .environ import apply_environment

if TYPE_CHECKING:
    from ..testing.embedded import EmbeddedAPNs

__all__ = [
    "APP_LINE",
    "GC_THRESHOLDS",
    "Listener",
    "StartSenders",
    "TopService",
    "build_service",
    "describe_app",
    "embedded_app",
    "exit_with_one_line",
    "single_app",
    "tune_collector",
]

log = Logger(namespace="txapns.service")

#: The cyclic garbage collector's thresholds in a process ``twistd apns`` runs (Python's
#: own are 700, 10, 10): see :func:`tune_collector`.
GC_THRESHOLDS = (20_000, 20, 10)


def tune_collector() -> None:
    """Tune Python's cyclic garbage collector for the service's process, once it started:
    collect, set what the start built (modules, configuration, TLS contexts: some 60,000
    objects) apart for good (``gc.freeze``), and collect less often (:data:`GC_THRESHOLDS`).

    Why: sending 100,000 notifications in requests of 500, the collector took 0.8 to 0.9 s
    of the service's 5 to 6 s of CPU, full collections (up to 75 ms each) walking the
    start's objects again and again; so tuned, 0.11 to 0.13 s. What the service allocates
    is nearly all freed by reference counting, so collecting less often leaves little
    garbage waiting. Only where the process is the service's (not in a library user's
    process: that one's collector is its own)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def single_app(options: Mapping[str, Any]) -> AppConfig:
    """The app of the single-app flags (also ``txapns send``'s credential flags)."""
    entry: dict[str, Any] = {
        "name": options["app"],
        "bundle_id": options["bundle-id"],
        "environment": options["environment"],
        "protocol": options["protocol"],
    }
    for flag, key in (
        ("key-file", "key_file"),
        ("key-id", "key_id"),
        ("team-id", "team_id"),
        ("cert-file", "cert_file"),
        ("p12-file", "p12_file"),
        ("passphrase-file", "passphrase_file"),
        ("proxy", "proxy"),
    ):
        if options[flag] is not None:
            entry[key] = options[flag]
    if options["cert-key"] is not None:
        entry["key_file"] = options["cert-key"]
    from datetime import UTC, datetime

    from .config import check_credentials

    app = parse_app(entry, base_dir=Path.cwd(), where="command line")
    # The same start-up checks as a --config app: refuse expired or mismatched credentials.
    check_credentials(app, now=datetime.now(UTC))
    return app


def embedded_app(fake: EmbeddedAPNs, directory: Path) -> AppConfig:
    """The app that sends to the embedded fake APNs (``--fake``): its credentials written
    under ``directory``."""
    from ..testing.embedded import FAKE_APP, FAKE_BUNDLE

    files = fake.pki.write(directory / "pki")
    credentials: CertificateCredentials | TokenCredentials
    if fake.protocol == "binary":
        credentials = CertificateCredentials(
            cert_file=Path(files["client_cert"]), key_file=Path(files["client_key"])
        )
    else:
        credentials = TokenCredentials(
            Path(files["token_key_p8"]), fake.pki.token_key_id, fake.pki.team_id
        )
    return AppConfig(
        name=FAKE_APP,
        bundle_id=FAKE_BUNDLE,
        environment="sandbox",
        protocol=fake.protocol,  # type: ignore[arg-type]
        credentials=credentials,
        ca_file=Path(files["ca_cert"]),
    )


class StartSenders(Service):
    """Starts every client once the service starts (after the embedded fake listens)."""

    def __init__(self, senders: dict[str, Any]) -> None:
        self.senders = senders

    def startService(self) -> None:
        Service.startService(self)
        for sender in self.senders.values():
            start = getattr(sender, "start", None)
            if start is not None:
                start()


def exit_with_one_line(message: str) -> NoReturn:
    """One line on stderr, exit status 1. Once twistd has started logging, ``sys.stderr``
    goes to the log: the line then goes to the log and to the process's real stderr."""
    line = "twistd apns: " + " ".join(message.split()) + "\n"  # one line, whatever it holds
    sys.stderr.write(line)
    real = sys.__stderr__
    if real is not None and real is not sys.stderr:
        real.write(line)
        real.flush()
    raise SystemExit(1) from None


class Listener(StreamServerEndpointService):
    """A strports listener that cannot listen (port in use, no permission) ends ``twistd``
    with one line and exit status 1, instead of a logged traceback and a service running
    without its API."""

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        from twisted.internet.endpoints import serverFromString

        StreamServerEndpointService.__init__(self, serverFromString(reactor, description), factory)
        self.description = description
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            StreamServerEndpointService.privilegedStartService(self)
        except Exception as e:
            exit_with_one_line(f"cannot listen on {self.description}: {e}")


def build_service(options: Any) -> IService:
    """The service ``twistd apns`` runs, from its :class:`txapns.tap.Options`; raises
    :class:`ConfigError` for a configuration it cannot use."""
    from twisted.internet import reactor
    from twisted.web.client import Agent

    from ..testing.embedded import EmbeddedAPNs
    from .feedback import feedback_pollers
    from .senders import make_sender
    from .wiring import EngineService, build_engine, client_health, limits_from, make_listener

    top = TopService(options)
    fake: EmbeddedAPNs | None = None
    if options["config"]:
        config = load_config(options["config"], environ=options.environ)
    elif not options["fake"] and options["bundle-id"] is None:
        config = parse_config(apply_environment({}, options.environ), base_dir=Path.cwd())
    elif not options["fake"]:
        config = ServiceConfig(apps=(single_app(options),))
    else:
        config = ServiceConfig()
    if options["fake"]:
        # The fake's certificates, spool and API key: made for this run, removed at its end.
        workdir = top.workdir = Path(tempfile.mkdtemp(prefix="txapns-"))
        fake = EmbeddedAPNs(reactor, options["fake-protocol"])
        _attach(fake, top)
        config = ServiceConfig(
            apps=(embedded_app(fake, workdir),),
            spool=workdir / "spool.sqlite3",
        )
    if not config.apps:
        raise ConfigError("no app configured: give --config, the single-app flags, or --fake")

    listen = tuple(options["listen"]) or config.listen
    if options["spool"]:
        config = _replace(config, spool=Path(options["spool"]))
    key_file: str | None = options["api-key-file"] or (
        str(config.api_key_file) if config.api_key_file else None
    )
    if key_file is None:
        if not options["fake"]:
            raise ConfigError("the API needs a bearer key: give --api-key-file or api_key_file")
        key_file = str(top.workdir / "api-key")  # type: ignore[operator]
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    config = _replace(config, api_key_file=Path(key_file), listen=listen)
    top.config = config

    if options["no-env-proxy"]:
        from dataclasses import replace

        apps = tuple(replace(a, proxy_from_env=False) for a in config.apps)
        config = _replace(config, apps=apps)
    senders = {}
    for app in config.apps:
        if fake is not None:
            senders[app.name] = make_sender(
                app, reactor, address=fake.address, hostname="localhost", hold_when_unavailable=True
            )
        else:
            senders[app.name] = make_sender(app, reactor, hold_when_unavailable=True)
    if config.redis is not None and not config.redis.consume:
        # An API-only instance: the consuming instances send and poll feedback; this one
        # opens no connection to APNs (its clients exist for the engine's checks only).
        pollers = {}
    else:
        _attach(StartSenders(senders), top)
        if fake is not None:
            pollers = feedback_pollers(
                config, reactor, address=fake.feedback_address, hostname="localhost"
            )
        else:
            pollers = feedback_pollers(config, reactor)
    health = client_health(senders, pollers)
    engine, pool = build_engine(config, senders, reactor, health=health, agent=Agent(reactor))  # type: ignore[arg-type]
    _attach(EngineService(engine, pool, feedback=pollers.values()), top)
    site = make_listener(
        engine,
        config.api_key(),
        limits_from(config),
        server=config.http_server,
        access_log=config.access_log,
    )
    # The demo listens on an ephemeral loopback port of its own, so it never collides with a
    # running service; explicit --listen options are honoured in every mode.
    if not options["demo"] or options["listen"]:
        for description in listen:
            _attach(Listener(reactor, description, site), top)
    if options["demo"]:
        from .demo import DemoService

        demo = DemoService(
            reactor, site, config.api_key(), config.apps[0].name, options["demo"], key_file
        )
        _attach(demo, top)
    elif options["fake"]:
        sys.stderr.write(
            f"txapns: embedded fake APNs; API key in {key_file}; spool {config.spool}\n"
        )
    return top


class TopService(MultiService):
    """The service ``twistd apns`` runs: installs the log observer (level, format) where
    twistd looks for one, says what it runs (one line per app and per listener), and tells
    systemd when it is ready (``Type=notify``) and when it stops."""

    def __init__(self, options: Any) -> None:
        MultiService.__init__(self)
        self.options = options
        self.config: ServiceConfig | None = None
        #: The temporary directory of a ``--fake`` run, removed once every child stopped.
        self.workdir: Path | None = None
        #: Run by twistd: the process is the service's (its log observer, its collector).
        self.own_process = False

    def setServiceParent(self, parent: Any) -> None:
        MultiService.setServiceParent(self, parent)
        twistd = getattr(self.options, "parent", None)
        if twistd is None or not isinstance(parent, Componentized):
            return  # not run by twistd (tests, embedding): leave logging and the GC alone
        self.own_process = True
        if parent.getComponent(ILogObserver, None) is None:
            from .logs import twistd_observer

            observer = twistd_observer(
                twistd, level=self.options["log-level"], fmt=self.options["log-format"]
            )
            parent.setComponent(ILogObserver, observer)

    def startService(self) -> None:
        MultiService.startService(self)
        from twisted.internet.defer import gatherResults

        from .. import __version__

        config = self.config
        if config is not None:
            log.info(
                "txapns {version}: {n} app(s), spool {spool}, API key in {key_file}",
                version=__version__,
                n=len(config.apps),
                spool=str(config.spool),
                key_file=str(config.api_key_file),
            )
            for app in config.apps:
                log.info(APP_LINE, **describe_app(app, fake=bool(self.options["fake"])))
        waiting = []
        for child in self:
            port = getattr(child, "_waitingForPort", None)
            if port is not None:
                waiting.append(port.addCallback(self._listening))
        if waiting:
            gatherResults(waiting).addCallbacks(self._ready, lambda _: None)
        else:
            self._ready(None)

    def _listening(self, port: Any) -> Any:
        host = port.getHost()
        where = f"{host.host}:{host.port}" if hasattr(host, "port") else str(host)
        log.info("API listening on {address}", address=where)
        return port

    def _ready(self, _: object) -> None:
        from .systemd import notify

        if self.own_process:
            tune_collector()
        notify("READY=1\nSTATUS=sending", self.options.environ)

    def privilegedStartService(self) -> None:
        try:
            MultiService.privilegedStartService(self)
        except SystemExit:  # a listener could not listen: nothing runs, nothing is left
            self._remove_workdir(None)
            raise

    def stopService(self) -> Any:
        from .systemd import notify

        notify("STOPPING=1", self.options.environ)
        d = MultiService.stopService(self)
        if self.workdir is not None:
            d.addBoth(self._remove_workdir)
        return d

    def _remove_workdir(self, result: object) -> object:
        import shutil

        if self.workdir is not None:  # after the engine closed the spool in it
            shutil.rmtree(self.workdir, ignore_errors=True)
        return result


def describe_app(app: AppConfig, *, fake: bool = False) -> dict[str, str]:
    """The fields of an app's start-up line: where it sends, how, as whom (no secrets)."""
    host, port = app.endpoint()
    creds = app.credentials
    if isinstance(creds, TokenCredentials):
        auth = f"token auth (key {creds.key_id}, team {creds.team_id})"
    else:
        auth = f"certificate {(creds.p12_file or creds.cert_file or Path('?')).name}"
    target = "the embedded fake APNs" if fake else f"{host}:{port}"
    if app.proxy is not None:
        target += f" via proxy {app.proxy!r}"
    return {
        "app": app.name,
        "protocol": app.protocol,
        "target": target,
        "environment": app.environment,
        "topic": app.bundle_id,
        "auth": auth,
    }


APP_LINE = "app {app}: {protocol} to {target} ({environment}), topic {topic}, {auth}"


def _attach(child: Any, parent: MultiService) -> None:
    child.setServiceParent(parent)


def _replace(config: ServiceConfig, **changes: Any) -> ServiceConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)
