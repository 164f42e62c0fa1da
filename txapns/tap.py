"""``twistd apns``: options and service construction.

The reactor is imported inside :func:`makeService` only, so ``parseOptions`` and
``makeService`` can be tested without one running.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from .service.config import (
    DEFAULT_LISTEN,
    AppConfig,
    CertificateCredentials,
    ConfigError,
    ServiceConfig,
    TokenCredentials,
    load_config,
    parse_app,
    parse_config,
)
from .service.environ import apply_environment, defines_apps
from .service.logs import FORMATS, LEVELS

log = Logger(namespace="txapns.service")

FAKE_APP = "demo"
FAKE_BUNDLE = "com.example.app"


class Options(usage.Options):
    synopsis = "[--config FILE | --fake | single-app flags] [options]"
    longdesc = (
        "Run the txapns push service: an HTTP API (loopback, bearer key) in front of durable, "
        "per-app APNs clients. With no app configured it runs against an embedded fake APNs."
    )
    optFlags = [
        ["fake", None, "Push to an embedded fake APNs in this process (the default with no app)."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file naming the apps."],
        ["api-key-file", None, None, "File holding the API bearer key."],
        ["spool", None, None, "SQLite spool file."],
        ["demo", None, None, "Send N notifications through the HTTP API, print, stop.", int],
        ["fake-protocol", None, "http2", "Protocol of the embedded fake: http2 or binary."],
        ["log-level", None, None, "debug, info (default), warn or error; or TXAPNS_LOG_LEVEL."],
        ["log-format", None, None, "text (default) or json (JSON lines); or TXAPNS_LOG_FORMAT."],
        # single-app flags
        ["app", None, "default", "Single-app mode: the app's name."],
        ["bundle-id", None, None, "Single-app mode: the app's bundle id (topic)."],
        ["environment", None, "production", "Single-app mode: production or sandbox."],
        ["protocol", None, "http2", "Single-app mode: http2 or binary."],
        ["key-file", None, None, "Single-app mode: token auth .p8 key."],
        ["key-id", None, None, "Single-app mode: token auth key id."],
        ["team-id", None, None, "Single-app mode: token auth team id."],
        ["cert-file", None, None, "Single-app mode: PEM certificate (and key, or --cert-key)."],
        ["cert-key", None, None, "Single-app mode: PEM private key of --cert-file."],
        ["p12-file", None, None, "Single-app mode: PKCS#12 certificate and key."],
        ["passphrase-file", None, None, "Single-app mode: passphrase of the key or PKCS#12."],
        ["proxy", None, None, "Single-app mode: HTTP CONNECT proxy, http://[user:pass@]host:port."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["listen"] = []
        #: Where ``TXAPNS_…`` variables are read from (tests give their own).
        self.environ: Mapping[str, str] = os.environ

    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    # One line: usage.Options shows a docstring's line breaks and indentation as spaces.
    opt_listen.__doc__ = (
        "Listen for the HTTP API on this strports description (repeatable); "
        f"default {DEFAULT_LISTEN}."
    )

    def postOptions(self) -> None:
        _environment_defaults(self)
        if self["fake-protocol"] not in ("binary", "http2"):
            raise usage.UsageError("--fake-protocol must be binary or http2")
        if self["demo"] is not None and self["demo"] < 1:
            raise usage.UsageError("--demo takes a positive number")
        single = self["bundle-id"] is not None
        given = [f for f in _SINGLE_APP_FLAGS if self[f] is not None]
        if given and not single:
            raise usage.UsageError(
                f"--{given[0]} is a single-app flag: give --bundle-id too (or use --config)"
            )
        if self["config"] and single:
            raise usage.UsageError("give either --config or the single-app flags, not both")
        if self["fake"] and (self["config"] or single):
            raise usage.UsageError("--fake runs without configured apps")
        if self["proxy"] is not None:
            from .core.proxy import ProxyURLError, parse_proxy_url

            try:
                parse_proxy_url(self["proxy"])
            except ProxyURLError as e:
                raise usage.UsageError(f"--proxy: {e}") from None
        if not self["config"] and not single and not defines_apps(self.environ):
            self["fake"] = True


def _environment_defaults(options: Options) -> None:
    """``TXAPNS_CONFIG``, ``TXAPNS_LOG_LEVEL`` and ``TXAPNS_LOG_FORMAT`` where the command line
    gives none; the log options checked."""
    env = options.environ
    if options["config"] is None and options["bundle-id"] is None and not options["fake"]:
        options["config"] = env.get("TXAPNS_CONFIG") or None
    for name, allowed in (("log-level", tuple(LEVELS)), ("log-format", FORMATS)):
        variable = "TXAPNS_" + name.upper().replace("-", "_")
        value = options[name] or env.get(variable) or allowed[1 if name == "log-level" else 0]
        if value not in allowed:
            source = f"--{name}" if options[name] else variable
            raise usage.UsageError(f"{source} must be one of {', '.join(allowed)}, not {value!r}")
        options[name] = value


_SINGLE_APP_FLAGS = (
    "key-file",
    "key-id",
    "team-id",
    "cert-file",
    "cert-key",
    "p12-file",
    "passphrase-file",
    "proxy",
)


def _single_app(options: Mapping[str, Any]) -> AppConfig:
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

    from .service.config import check_credentials

    app = parse_app(entry, base_dir=Path.cwd(), where="command line")
    # The same start-up checks as a --config app: refuse expired or mismatched credentials.
    check_credentials(app, now=datetime.now(UTC))
    return app


class _FakeAPNs(Service):
    """The embedded fake APNs: a TLS listener on loopback, started before the clients."""

    def __init__(self, reactor: Any, protocol: str) -> None:
        from .testing.pki import make_test_pki

        self.reactor = reactor
        self.protocol = protocol
        self.pki = make_test_pki(FAKE_BUNDLE)
        self.port: Any = None
        self.server: Any = None
        #: The binary fake's feedback service (a FakeFeedbackService) and its port.
        self.feedback: Any = None
        self.feedback_port: Any = None

    def address(self) -> tuple[str, int]:
        if self.port is None:
            raise RuntimeError("the embedded fake APNs is not listening")
        return ("127.0.0.1", self.port.getHost().port)

    def feedback_address(self) -> tuple[str, int]:
        if self.feedback_port is None:
            raise RuntimeError("the embedded fake feedback service is not listening")
        return ("127.0.0.1", self.feedback_port.getHost().port)

    def startService(self) -> None:
        from .testing.pki import server_tls_options

        Service.startService(self)
        if self.protocol == "binary":
            from .testing.binary_gateway import (
                FakeFeedbackService,
                FakeGateway,
                listen_feedback,
                listen_gateway,
            )

            gateway = FakeGateway(self.reactor)
            # Tokens starting with ff are rejected as invalid, like the shared bench mocks.
            gateway.reject_tokens_with_prefix(b"\xff")
            self.server = gateway
            self.port = listen_gateway(
                self.reactor, gateway, tls_options=server_tls_options(self.pki)
            )
            self.feedback = FakeFeedbackService(self.reactor)
            self.feedback_port = listen_feedback(
                self.reactor, self.feedback, tls_options=server_tls_options(self.pki)
            )
        else:
            from .testing.http2_server import FakeAPNsServer, listen_http2

            server = FakeAPNsServer(clock=self.reactor, sandbox=True)
            server.add_token_key(self.pki.token_key_id, self.pki.team_id, self.pki.token_public_key)
            server.bad_token_prefix = "ff"  # as the binary fake: the demo shows a rejection
            self.server = server
            self.port = listen_http2(
                self.reactor,
                server,
                tls_options=server_tls_options(self.pki, require_client_cert=False, alpn=[b"h2"]),
            )

    def stopService(self) -> Any:
        Service.stopService(self)
        from twisted.internet.defer import gatherResults, maybeDeferred

        ports = [p for p in (self.port, self.feedback_port) if p is not None]
        return gatherResults([maybeDeferred(p.stopListening) for p in ports]) if ports else None


def _fake_app(fake: _FakeAPNs, directory: Path) -> AppConfig:
    files = fake.pki.write(directory / "pki")
    if fake.protocol == "binary":
        credentials: Any = CertificateCredentials(
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


class _StartSenders(Service):
    def __init__(self, senders: dict[str, Any]) -> None:
        self.senders = senders

    def startService(self) -> None:
        Service.startService(self)
        for sender in self.senders.values():
            start = getattr(sender, "start", None)
            if start is not None:
                start()


def makeService(options: Options) -> IService:
    """The ``twistd apns`` entry point: :func:`build_service`, except that a configuration
    it cannot use, or a spool it cannot open (in use by another instance, corrupt,
    truncated), ends the process with one line on stderr and exit status 1 (as twistd does
    for a usage error) instead of a traceback."""
    from .service.spool import SpoolError

    try:
        return build_service(options)
    except (ConfigError, SpoolError) as e:
        exit_with_one_line(str(e))


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


class _Listener(StreamServerEndpointService):
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


def build_service(options: Options) -> IService:
    """The service ``twistd apns`` runs; raises :class:`ConfigError` for a configuration it
    cannot use."""
    from twisted.internet import reactor
    from twisted.web.client import Agent

    from .service.api import make_listener
    from .service.feedback import feedback_pollers
    from .service.senders import make_sender
    from .service.wiring import EngineService, build_engine, client_health, limits_from

    top = _Top(options)
    fake: _FakeAPNs | None = None
    if options["config"]:
        config = load_config(options["config"], environ=options.environ)
    elif not options["fake"] and options["bundle-id"] is None:
        config = parse_config(apply_environment({}, options.environ), base_dir=Path.cwd())
    elif not options["fake"]:
        config = ServiceConfig(apps=(_single_app(options),))
    else:
        config = ServiceConfig()
    if options["fake"]:
        # The fake's certificates, spool and API key: made for this run, removed at its end.
        workdir = top.workdir = Path(tempfile.mkdtemp(prefix="txapns-"))
        fake = _FakeAPNs(reactor, options["fake-protocol"])
        _attach(fake, top)
        config = ServiceConfig(
            apps=(_fake_app(fake, workdir),),
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

    senders = {}
    for app in config.apps:
        if fake is not None:
            senders[app.name] = make_sender(
                app, reactor, address=fake.address, hostname="localhost", hold_when_unavailable=True
            )
        else:
            senders[app.name] = make_sender(app, reactor, hold_when_unavailable=True)
    _attach(_StartSenders(senders), top)
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
            _attach(_Listener(reactor, description, site), top)
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


class _Top(MultiService):
    """The service ``twistd apns`` runs: installs the log observer (level, format) where
    twistd looks for one, says what it runs (one line per app and per listener), and tells
    systemd when it is ready (``Type=notify``) and when it stops."""

    def __init__(self, options: Options) -> None:
        MultiService.__init__(self)
        self.options = options
        self.config: ServiceConfig | None = None
        #: The temporary directory of a ``--fake`` run, removed once every child stopped.
        self.workdir: Path | None = None

    def setServiceParent(self, parent: Any) -> None:
        MultiService.setServiceParent(self, parent)
        twistd = getattr(self.options, "parent", None)
        if twistd is None or not isinstance(parent, Componentized):
            return  # not run by twistd (tests, embedding): leave logging alone
        if parent.getComponent(ILogObserver, None) is None:
            from .service.logs import twistd_observer

            observer = twistd_observer(
                twistd, level=self.options["log-level"], fmt=self.options["log-format"]
            )
            parent.setComponent(ILogObserver, observer)

    def startService(self) -> None:
        MultiService.startService(self)
        from twisted.internet.defer import gatherResults

        from . import __version__

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
        from .service.systemd import notify

        notify("READY=1\nSTATUS=sending", self.options.environ)

    def privilegedStartService(self) -> None:
        try:
            MultiService.privilegedStartService(self)
        except SystemExit:  # a listener could not listen: nothing runs, nothing is left
            self._remove_workdir(None)
            raise

    def stopService(self) -> Any:
        from .service.systemd import notify

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
