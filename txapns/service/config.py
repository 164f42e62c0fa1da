"""The service's TOML configuration: a typed model and the start-up checks.

A configuration file names the apps the service pushes for, each with its credential, and the
service-level settings (listening ports, the API key, the spool)::

    listen = ["tcp:8325:interface=127.0.0.1"]
    api_key_file = "api.key"
    spool = "spool.sqlite3"
    retention_days = 7

    [[app]]
    name = "shop"
    bundle_id = "com.example.shop"
    environment = "production"          # or "sandbox"
    protocol = "http2"                  # or "binary"
    key_file = "AuthKey_ABC1234567.p8"  # token auth ...
    key_id = "ABC1234567"
    team_id = "DEF7654321"
    # ... or certificate auth: cert_file + key_file (+ passphrase_file), or p12_file

Relative paths are taken relative to the configuration file. :func:`load_config` refuses a
configuration it cannot use with a :class:`ConfigError` that says which key of which app is
wrong and how: unknown keys, ids of the wrong shape or swapped, keys that do not parse or are
not P-256, certificates that are expired or do not match their key, a clock that is plainly
wrong.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    pkcs12,
)

from ..core.hosts import APNS_HOSTS, FEEDBACK_HOSTS
from ..core.proxy import ProxyURL, ProxyURLError, format_authority, parse_proxy_url
from ..core.queue_time import DEFAULT_MAX_QUEUE_TIME
from .environ import apply_environment
from .errors import ConfigError as ConfigError  # given here too: service.config.ConfigError

DEFAULT_LISTEN = "tcp:8325:interface=127.0.0.1"
DEFAULT_SPOOL = "txapns-spool.sqlite3"
DEFAULT_RETENTION_DAYS = 7.0
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_RECIPIENTS = 10_000
DEFAULT_HTTP_SERVER = "lean"
HTTP_SERVERS = ("lean", "twisted")
#: Seconds a stop may take in all (drain, then the clients): under a container's 10 s grace.
DEFAULT_DRAIN_TIMEOUT = 8.0
#: Seconds between two reads of the binary feedback service (0: never read it).
DEFAULT_FEEDBACK_INTERVAL = 3600.0

#: A clock before this is certainly wrong (every JWT and certificate check would mislead).
SANE_CLOCK_AFTER = datetime(2025, 1, 1, tzinfo=UTC)

#: Apple's hosts: the library's one table (``txapns.core.hosts``), under the names used here.
HOSTS = APNS_HOSTS

_APPLE_ID = re.compile(r"\A[A-Z0-9]{10}\Z")
_BUNDLE_ID = re.compile(r"\A[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z")
_APP_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_AUTHKEY_NAME = re.compile(r"AuthKey_([A-Za-z0-9]+)\.p8\Z")

Environment = Literal["production", "sandbox"]
#: The wire protocol an app uses: the ``protocol`` value of its TOML table.
WireProtocol = Literal["http2", "binary"]


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    """Token (JWT) authentication: a ``.p8`` signing key with its key id and team id."""

    key_file: Path
    key_id: str
    team_id: str


@dataclass(frozen=True, slots=True)
class CertificateCredentials:
    """Certificate authentication: PEM ``cert_file`` (+ ``key_file``), or a PKCS#12 bundle."""

    cert_file: Path | None = None
    key_file: Path | None = None
    passphrase_file: Path | None = None
    p12_file: Path | None = None

    def passphrase(self) -> bytes | None:
        if self.passphrase_file is None:
            return None
        return self.passphrase_file.read_bytes().rstrip(b"\r\n")


Credentials = TokenCredentials | CertificateCredentials


@dataclass(frozen=True, slots=True)
class AppConfig:
    name: str
    bundle_id: str
    environment: Environment
    protocol: WireProtocol
    credentials: Credentials
    host: str | None = None
    port: int | None = None
    ca_file: Path | None = None
    #: Binary apps: where the feedback service is (default: Apple's, or ``host`` if set).
    feedback_host: str | None = None
    feedback_port: int | None = None
    #: An HTTP CONNECT proxy to reach APNs through (its ``repr`` hides the password).
    proxy: ProxyURL | None = None
    #: Without ``proxy``: take the proxy from ``HTTPS_PROXY``/``NO_PROXY`` (as curl does).
    proxy_from_env: bool = True
    #: Seconds the client may hold a notification before writing it (APNs unreachable);
    #: then it goes back to the spool until its expiration.
    max_queue_time: float = DEFAULT_MAX_QUEUE_TIME

    @property
    def token_auth(self) -> bool:
        return isinstance(self.credentials, TokenCredentials)

    def endpoint(self) -> tuple[str, int]:
        """``(host, port)`` to connect to: the overrides, else Apple's for protocol/environment."""
        host, port = HOSTS[(self.protocol, self.environment)]
        return (self.host or host, self.port or port)

    def feedback_endpoint(self) -> tuple[str, int]:
        """``(host, port)`` of the binary feedback service: ``feedback_host``/``feedback_port``,
        else the gateway's ``host`` override (a compatible gateway serves both), else Apple's
        for the environment; port 2196 by default."""
        host, port = FEEDBACK_HOSTS[self.environment]
        return (self.feedback_host or self.host or host, self.feedback_port or port)


#: Seconds a Redis stream entry may stay pending before a live instance takes it over: four
#: times the HTTP/2 client's 30 s deadline, so a healthy instance's slow sends are never stolen.
DEFAULT_CLAIM_AFTER = 120.0
DEFAULT_MAX_DELIVERIES = 5
#: Notifications per Redis stream entry, and the most one entry may carry: an instance reads
#: entries while its in-flight bound (never under the engine's 1,000) has room, one at least,
#: so a bigger entry could overrun the bound.
DEFAULT_CHUNK_SIZE = 100
MAX_CHUNK_SIZE = 1000


@dataclass(frozen=True, slots=True)
class RedisSpoolConfig:
    """``[spool] backend = "redis"``: a queue shared by many instances (docs/cluster.rst)."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "txapns"
    #: ``host:port`` of Sentinels; with them, ``url`` gives only the database and password.
    sentinel: tuple[str, ...] = ()
    sentinel_master: str = "mymaster"
    wait_replicas: int = 0
    claim_after: float = DEFAULT_CLAIM_AFTER
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    #: Notifications per stream entry (1 to ``MAX_CHUNK_SIZE``): bigger chunks cost Redis
    #: less per notification; an instance that dies leaves whole chunks to be claimed.
    chunk_size: int = DEFAULT_CHUNK_SIZE
    #: This instance's consumer name; ``None``: hostname-pid.
    instance_id: str | None = None
    #: ``False``: an API-only instance. It accepts, answers and schedules like any other, but
    #: reads nothing from the queue, takes nothing over and opens no connection to APNs:
    #: the instances with ``consume = true`` send its jobs.
    consume: bool = True
    #: With ``rediss://``: the CA(s) to verify Redis's certificate with (``None``: the
    #: system's).
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    apps: tuple[AppConfig, ...] = ()
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    api_key_file: Path | None = None
    spool: Path = Path(DEFAULT_SPOOL)
    #: Set: the Redis backend; ``None``: the SQLite file ``spool``.
    redis: RedisSpoolConfig | None = None
    retention_days: float = DEFAULT_RETENTION_DAYS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    #: The HTTP/1.1 layer serving the API: "lean" (httptools) or "twisted" (twisted.web).
    http_server: str = DEFAULT_HTTP_SERVER
    #: One line per API request: "off", "log" (the service log) or a file's path.
    access_log: str = "off"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    invalid_token_webhook: str | None = None
    feedback_interval: float = DEFAULT_FEEDBACK_INTERVAL
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def retention_seconds(self) -> float:
        return self.retention_days * 86400.0

    def app(self, name: str) -> AppConfig:
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)

    def api_key(self) -> bytes:
        """The bearer key, read from ``api_key_file`` (surrounding whitespace stripped)."""
        if self.api_key_file is None:
            raise ConfigError("api_key_file is not set: every API call needs a bearer key")
        return read_api_key(self.api_key_file)


def read_api_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"api_key_file {str(path)!r} cannot be read: {e.strerror}") from None
    if len(key) < 16:
        raise ConfigError(
            f"api_key_file {str(path)!r} holds a key of {len(key)} bytes; use at least 16"
        )
    return key


# --- loading -------------------------------------------------------------------------------

_SERVICE_KEYS = {
    "app",
    "listen",
    "api_key_file",
    "spool",
    "retention_days",
    "max_body_bytes",
    "max_recipients",
    "http_server",
    "access_log",
    "drain_timeout",
    "invalid_token_webhook",
    "feedback_interval",
}
_APP_KEYS = {
    "name",
    "bundle_id",
    "environment",
    "protocol",
    "key_file",
    "key_id",
    "team_id",
    "cert_file",
    "passphrase_file",
    "p12_file",
    "host",
    "port",
    "ca_file",
    "feedback_host",
    "feedback_port",
    "proxy",
    "proxy_from_env",
    "max_queue_time",
}


def load_config(
    path: str | Path,
    *,
    now: datetime | None = None,
    check_files: bool = True,
    environ: Mapping[str, str] | None = None,
) -> ServiceConfig:
    """Read, parse and check a TOML configuration file; raise :class:`ConfigError`. With
    ``environ``, its ``TXAPNS_…`` variables override the file (see
    :mod:`txapns.service.environ`)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read configuration {str(p)!r}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    if environ is not None:
        data = apply_environment(data, environ)
    return parse_config(data, base_dir=p.parent, now=now, check_files=check_files)


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path,
    now: datetime | None = None,
    check_files: bool = True,
) -> ServiceConfig:
    """Build a :class:`ServiceConfig` from parsed TOML; with ``check_files`` verify credentials."""
    unknown = sorted(set(data) - _SERVICE_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_SERVICE_KEYS))}"
        )
    when = now if now is not None else datetime.now(UTC)
    if check_files:
        check_clock(when)
    listen_raw = data.get("listen", [DEFAULT_LISTEN])
    if isinstance(listen_raw, str):
        listen_raw = [listen_raw]
    if (
        not isinstance(listen_raw, list)
        or not listen_raw
        or not all(isinstance(x, str) and x for x in listen_raw)
    ):
        raise ConfigError("listen must be a non-empty list of strports descriptions")
    apps_raw = data.get("app", [])
    if not isinstance(apps_raw, list):
        raise ConfigError("app must be an array of tables: write [[app]] for each app")
    apps: list[AppConfig] = []
    seen: set[str] = set()
    for i, entry in enumerate(apps_raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"app #{i + 1} must be a table")
        app = parse_app(entry, base_dir=base_dir, where=f"app #{i + 1}")
        if app.name in seen:
            raise ConfigError(f"app {app.name!r} is configured twice")
        seen.add(app.name)
        if check_files:
            check_credentials(app, now=when)
        apps.append(app)
    api_key_file = _opt_path(data, "api_key_file", base_dir, "service")
    if check_files and api_key_file is not None:
        read_api_key(api_key_file)
    spool, redis = _parse_spool(data.get("spool"), base_dir)
    webhook = _opt_str(data, "invalid_token_webhook", "service")
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise ConfigError(f"invalid_token_webhook must be an http(s) URL, not {webhook!r}")
    return ServiceConfig(
        apps=tuple(apps),
        listen=tuple(listen_raw),
        api_key_file=api_key_file,
        spool=spool,
        redis=redis,
        retention_days=_positive(data, "retention_days", DEFAULT_RETENTION_DAYS),
        max_body_bytes=int(_positive(data, "max_body_bytes", DEFAULT_MAX_BODY_BYTES, integer=True)),
        max_recipients=int(_positive(data, "max_recipients", DEFAULT_MAX_RECIPIENTS, integer=True)),
        http_server=_http_server(data),
        access_log=_access_log(data, base_dir),
        drain_timeout=_positive(data, "drain_timeout", DEFAULT_DRAIN_TIMEOUT),
        invalid_token_webhook=webhook,
        feedback_interval=_non_negative(data, "feedback_interval", DEFAULT_FEEDBACK_INTERVAL),
    )


def _access_log(data: Mapping[str, Any], base_dir: Path) -> str:
    value = data.get("access_log", "off")
    if not isinstance(value, str) or not value:
        raise ConfigError(f'access_log must be "off", "log" or a file\'s path, not {value!r}')
    if value in ("off", "log"):
        return value
    return str(base_dir / value)


def _http_server(data: Mapping[str, Any]) -> str:
    value = data.get("http_server", DEFAULT_HTTP_SERVER)
    if value not in HTTP_SERVERS:
        raise ConfigError(f"http_server must be one of {', '.join(HTTP_SERVERS)}, not {value!r}")
    return str(value)


def parse_app(entry: Mapping[str, Any], *, base_dir: Path, where: str = "app") -> AppConfig:
    """One ``[[app]]`` table → :class:`AppConfig` (shape checks only, no file access)."""
    name = entry.get("name")
    if not isinstance(name, str) or not _APP_NAME.match(name):
        raise ConfigError(
            f"{where}: name must be 1-64 characters of letters, digits, '.', '_' or '-' "
            f"(it appears in API paths), not {name!r}"
        )
    where = f"app {name!r}"
    unknown = sorted(set(entry) - _APP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    bundle_id = entry.get("bundle_id")
    if not isinstance(bundle_id, str) or not _BUNDLE_ID.match(bundle_id):
        raise ConfigError(
            f"{where}: bundle_id must look like com.example.app (reverse-DNS, letters, digits "
            f"and '-' between dots), not {bundle_id!r}"
        )
    environment = entry.get("environment", "production")
    if environment not in ("production", "sandbox"):
        raise ConfigError(
            f"{where}: environment must be 'production' or 'sandbox', not {environment!r}"
        )
    protocol = entry.get("protocol", "http2")
    if protocol not in ("http2", "binary"):
        raise ConfigError(f"{where}: protocol must be 'http2' or 'binary', not {protocol!r}")
    creds = _parse_credentials(entry, base_dir, where)
    if protocol == "binary" and isinstance(creds, TokenCredentials):
        raise ConfigError(
            f"{where}: the binary protocol only takes certificate authentication; use "
            "protocol = 'http2' with a .p8 key, or give cert_file/p12_file"
        )
    host = _opt_str(entry, "host", where)
    port = entry.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise ConfigError(f"{where}: port must be an integer within 1..65535, not {port!r}")
    feedback_host = _opt_str(entry, "feedback_host", where)
    feedback_port = entry.get("feedback_port")
    if feedback_port is not None and (
        isinstance(feedback_port, bool)
        or not isinstance(feedback_port, int)
        or not 0 < feedback_port < 65536
    ):
        raise ConfigError(
            f"{where}: feedback_port must be an integer within 1..65535, not {feedback_port!r}"
        )
    if protocol != "binary" and (feedback_host is not None or feedback_port is not None):
        raise ConfigError(
            f"{where}: feedback_host and feedback_port are for protocol = 'binary' (HTTP/2 "
            "reports dead tokens in its answers; there is no feedback service)"
        )
    proxy = _parse_proxy(entry, where)
    if proxy is not None and host is not None:
        try:
            format_authority(host, port or 1)
        except ValueError:
            raise ConfigError(
                f"{where}: host {host!r} is not a host name or IP address (a proxy is asked "
                "for a tunnel to it)"
            ) from None
    return AppConfig(
        name=name,
        bundle_id=bundle_id,
        environment=environment,
        protocol=protocol,
        credentials=creds,
        host=host,
        port=port,
        ca_file=_opt_path(entry, "ca_file", base_dir, where),
        feedback_host=feedback_host,
        feedback_port=feedback_port,
        proxy=proxy,
        proxy_from_env=_app_bool(entry, "proxy_from_env", True, where),
        max_queue_time=_app_positive(entry, "max_queue_time", DEFAULT_MAX_QUEUE_TIME, where),
    )


def _app_positive(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    try:
        return _positive(entry, key, default)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _app_bool(entry: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
    return value


def _parse_proxy(entry: Mapping[str, Any], where: str) -> ProxyURL | None:
    value = entry.get("proxy")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(
            f"{where}: proxy must be a URL string (http://[user:password@]host:port), "
            f"not a {type(value).__name__}"
        )
    try:
        return parse_proxy_url(value)
    except ProxyURLError as e:
        raise ConfigError(f"{where}: {e}") from None


def _parse_credentials(entry: Mapping[str, Any], base_dir: Path, where: str) -> Credentials:
    key_id = entry.get("key_id")
    team_id = entry.get("team_id")
    cert_file = _opt_path(entry, "cert_file", base_dir, where)
    p12_file = _opt_path(entry, "p12_file", base_dir, where)
    key_file = _opt_path(entry, "key_file", base_dir, where)
    passphrase_file = _opt_path(entry, "passphrase_file", base_dir, where)
    token_like = key_id is not None or team_id is not None
    cert_like = cert_file is not None or p12_file is not None
    if token_like and cert_like:
        raise ConfigError(
            f"{where}: give either token auth (key_file, key_id, team_id) or a certificate "
            "(cert_file/key_file or p12_file), not both"
        )
    if token_like:
        missing = [
            k
            for k, v in (("key_file", key_file), ("key_id", key_id), ("team_id", team_id))
            if v is None
        ]
        if missing:
            raise ConfigError(f"{where}: token auth needs {', '.join(missing)} as well")
        assert key_file is not None
        kid = _apple_id(key_id, "key_id", where)
        tid = _apple_id(team_id, "team_id", where)
        check_ids_not_swapped(kid, tid, key_file, where)
        if passphrase_file is not None:
            raise ConfigError(f"{where}: passphrase_file is for certificates, not .p8 keys")
        return TokenCredentials(key_file=key_file, key_id=kid, team_id=tid)
    if p12_file is not None:
        if cert_file is not None or key_file is not None:
            raise ConfigError(f"{where}: p12_file already holds the key; drop cert_file/key_file")
        return CertificateCredentials(p12_file=p12_file, passphrase_file=passphrase_file)
    if cert_file is not None:
        return CertificateCredentials(
            cert_file=cert_file, key_file=key_file, passphrase_file=passphrase_file
        )
    raise ConfigError(
        f"{where}: no credential: give key_file + key_id + team_id (token auth), "
        "cert_file (+ key_file) or p12_file (certificate auth)"
    )


def _apple_id(value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not _APPLE_ID.match(value):
        hint = ""
        if isinstance(value, str) and _APPLE_ID.match(value.strip().upper()):
            hint = f" (did you mean {value.strip().upper()!r}?)"
        raise ConfigError(
            f"{where}: {what} must be 10 characters of A-Z and 0-9, not {value!r}{hint}"
        )
    return value


def check_ids_not_swapped(key_id: str, team_id: str, key_file: Path, where: str = "app") -> None:
    """Apple names keys ``AuthKey_<key id>.p8``: use the name to catch swapped ids."""
    if key_id == team_id:
        raise ConfigError(f"{where}: key_id and team_id are both {key_id!r}; they differ")
    m = _AUTHKEY_NAME.search(key_file.name)
    if m is None:
        return
    named = m.group(1)
    if named == key_id:
        return
    if named == team_id:
        raise ConfigError(
            f"{where}: key_id and team_id look swapped: the key file {key_file.name!r} is "
            f"named after {team_id!r}, which is given as team_id; set key_id = {team_id!r} "
            f"and team_id = {key_id!r}"
        )
    raise ConfigError(
        f"{where}: key_id {key_id!r} does not match the key file {key_file.name!r} "
        f"(Apple names it AuthKey_<key id>.p8)"
    )


_SPOOL_KEYS = {
    "backend",
    "path",
    "url",
    "prefix",
    "sentinel",
    "sentinel_master",
    "wait_replicas",
    "claim_after",
    "max_deliveries",
    "chunk_size",
    "instance_id",
    "ca_file",
    "consume",
}


def _parse_spool(raw: object, base_dir: Path) -> tuple[Path, RedisSpoolConfig | None]:
    """``spool = "file"`` (SQLite) or a ``[spool]`` table choosing the backend."""
    if raw is None or isinstance(raw, str):
        path = _opt_path({"spool": raw}, "spool", base_dir, "service")
        return path or base_dir / DEFAULT_SPOOL, None
    if not isinstance(raw, dict):
        raise ConfigError("spool must be a file name or a [spool] table")
    unknown = sorted(set(raw) - _SPOOL_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown [spool] setting(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(_SPOOL_KEYS))}"
        )
    backend = raw.get("backend", "sqlite")
    path = _opt_path(raw, "path", base_dir, "[spool]") or base_dir / DEFAULT_SPOOL
    if backend == "sqlite":
        extra = sorted(set(raw) - {"backend", "path"})
        if extra:
            raise ConfigError(f'[spool] {", ".join(extra)} only apply to backend = "redis"')
        return path, None
    if backend != "redis":
        raise ConfigError(f'[spool] backend must be "sqlite" or "redis", not {backend!r}')
    defaults = RedisSpoolConfig()
    url = _opt_str(raw, "url", "[spool]") or defaults.url
    if not url.startswith(("redis://", "rediss://")):
        raise ConfigError(f"[spool] url must start with redis:// or rediss://, not {url!r}")
    ca_file = _opt_path(raw, "ca_file", base_dir, "[spool]")
    if ca_file is not None and not url.startswith("rediss://"):
        raise ConfigError("[spool] ca_file only applies to a rediss:// (TLS) url")
    sentinel = raw.get("sentinel", [])
    if isinstance(sentinel, str):
        sentinel = [sentinel]
    if not isinstance(sentinel, list) or not all(
        isinstance(x, str) and re.fullmatch(r"[^:\s]+:\d{1,5}", x) for x in sentinel
    ):
        raise ConfigError('[spool] sentinel must be a list of "host:port"')
    if sentinel and url.startswith("rediss://"):
        raise ConfigError("[spool] TLS to Redis (rediss://) is not supported with Sentinel")
    wait = raw.get("wait_replicas", 0)
    if not isinstance(wait, int) or isinstance(wait, bool) or wait < 0:
        raise ConfigError("[spool] wait_replicas must be a whole number >= 0")
    chunk = raw.get("chunk_size", DEFAULT_CHUNK_SIZE)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1 <= chunk <= MAX_CHUNK_SIZE:
        raise ConfigError(
            f"[spool] chunk_size must be a whole number from 1 to {MAX_CHUNK_SIZE}, not {chunk!r}"
        )
    consume = raw.get("consume", True)
    if not isinstance(consume, bool):
        raise ConfigError(f"[spool] consume must be true or false, not {consume!r}")
    instance_id = _opt_str(raw, "instance_id", "[spool]")
    if instance_id is not None and not _APP_NAME.match(instance_id):
        raise ConfigError(f"[spool] instance_id {instance_id!r}: use letters, digits, . _ -")
    prefix = _opt_str(raw, "prefix", "[spool]") or defaults.prefix
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", prefix):
        raise ConfigError(f"[spool] prefix {prefix!r}: use letters, digits, . _ : -")
    return path, RedisSpoolConfig(
        url=url,
        prefix=prefix,
        sentinel=tuple(sentinel),
        sentinel_master=_opt_str(raw, "sentinel_master", "[spool]") or defaults.sentinel_master,
        wait_replicas=wait,
        claim_after=_positive(raw, "claim_after", DEFAULT_CLAIM_AFTER),
        max_deliveries=int(_positive(raw, "max_deliveries", DEFAULT_MAX_DELIVERIES, integer=True)),
        chunk_size=chunk,
        instance_id=instance_id,
        ca_file=ca_file,
        consume=consume,
    )


def _opt_str(entry: Mapping[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def _opt_path(entry: Mapping[str, Any], key: str, base_dir: Path, where: str) -> Path | None:
    value = _opt_str(entry, key, where)
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p


def _positive(data: Mapping[str, Any], key: str, default: float, *, integer: bool = False) -> float:
    value = data.get(key, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{key} must be {kind}, not {value!r}")
    return float(value)


def _non_negative(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ConfigError(f"{key} must be a number of seconds, 0 or more, not {value!r}")
    return float(value)


# --- credential checks (files) -------------------------------------------------------------


def check_clock(now: datetime) -> None:
    if now < SANE_CLOCK_AFTER:
        raise ConfigError(
            f"the system clock says {now.isoformat()}, which is before "
            f"{SANE_CLOCK_AFTER.date().isoformat()}: fix the clock (JWTs and certificate "
            "checks depend on it)"
        )


def check_credentials(app: AppConfig, *, now: datetime) -> None:
    """Read the app's credential files and check them; raise :class:`ConfigError`."""
    creds = app.credentials
    where = f"app {app.name!r}"
    if isinstance(creds, TokenCredentials):
        load_p8_key(creds.key_file, where)
    else:
        check_certificate(creds, now=now, where=where)
    if app.ca_file is not None:
        _read(app.ca_file, "ca_file", where)


def load_p8_key(path: Path, where: str = "app") -> ec.EllipticCurvePrivateKey:
    """Load an APNs ``.p8`` signing key: a PEM P-256 (secp256r1) EC private key."""
    data = _read(path, "key_file", where)
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{where}: key_file {path.name!r} is encrypted; Apple's .p8 keys are not"
        ) from None
    except ValueError as e:
        raise ConfigError(
            f"{where}: key_file {path.name!r} is not a PEM private key ({e}); use the .p8 "
            "file downloaded from Apple as it is"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(
            f"{where}: key_file {path.name!r} is not a P-256 EC key (APNs tokens are ES256)"
        )
    return key


def check_certificate(
    creds: CertificateCredentials, *, now: datetime, where: str = "app"
) -> x509.Certificate:
    """Load a PEM or PKCS#12 client certificate and key; check validity dates and pairing."""
    password = None
    if creds.passphrase_file is not None:
        password = _read(creds.passphrase_file, "passphrase_file", where).rstrip(b"\r\n")
    cert: x509.Certificate | None
    if creds.p12_file is not None:
        data = _read(creds.p12_file, "p12_file", where)
        try:
            key, cert, _extra = pkcs12.load_key_and_certificates(data, password)
        except ValueError as e:
            raise ConfigError(
                f"{where}: p12_file {creds.p12_file.name!r} cannot be opened ({e}); "
                "wrong passphrase or not PKCS#12"
            ) from None
        if cert is None or key is None:
            raise ConfigError(
                f"{where}: p12_file {creds.p12_file.name!r} must hold a certificate and its key"
            )
    else:
        assert creds.cert_file is not None
        cert_data = _read(creds.cert_file, "cert_file", where)
        try:
            cert = x509.load_pem_x509_certificate(cert_data)
        except ValueError as e:
            raise ConfigError(
                f"{where}: cert_file {creds.cert_file.name!r} is not a PEM certificate ({e})"
            ) from None
        key_data = cert_data
        key_name = creds.cert_file.name
        if creds.key_file is not None:
            key_data = _read(creds.key_file, "key_file", where)
            key_name = creds.key_file.name
        try:
            key = load_pem_private_key(key_data, password=password)
        except TypeError:
            raise ConfigError(
                f"{where}: the key in {key_name!r} is encrypted: give passphrase_file"
                if password is None
                else f"{where}: the key in {key_name!r} is not encrypted: drop passphrase_file"
            ) from None
        except ValueError as e:
            raise ConfigError(
                f"{where}: no usable private key in {key_name!r} ({e}); give key_file or a "
                "cert_file that also holds the key (wrong passphrase?)"
            ) from None
    if cert.not_valid_after_utc <= now:
        raise ConfigError(
            f"{where}: the certificate expired on {cert.not_valid_after_utc.isoformat()}; "
            "renew it in the Apple developer account"
        )
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            f"{where}: the certificate is not valid before "
            f"{cert.not_valid_before_utc.isoformat()} (is the clock right?)"
        )
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ConfigError(f"{where}: the private key does not belong to the certificate")
    return cert


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


def _read(path: Path, what: str, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: {what} {str(path)!r} cannot be read: {e.strerror}") from None
