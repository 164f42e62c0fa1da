"""Configuration from the environment: ``TXAPNS_…`` variables over the TOML file.

Containers and systemd units configure by environment and mount secrets as files; these
variables override (or, without a file, make up) the configuration that :func:`parse_config
<txapns.service.config.parse_config>` then checks exactly as it checks a file:

* ``TXAPNS_<SETTING>`` for a service setting: ``TXAPNS_LISTEN`` (comma-separated strports
  descriptions), ``TXAPNS_API_KEY_FILE``, ``TXAPNS_SPOOL``, ``TXAPNS_DRAIN_TIMEOUT``…
* ``TXAPNS_APP_<NAME>_<KEY>`` for a key of the app whose name, upper-cased with ``-`` and ``.``
  as ``_``, is ``<NAME>``: ``TXAPNS_APP_SHOP_KEY_ID``. An app the file does not name is added,
  named ``<NAME>`` in lower case (``TXAPNS_APP_SHOP_BUNDLE_ID`` → app ``shop``).
* ``<VARIABLE>_FILE`` (for a key that does not itself end in ``_file``): the value is read from
  that file, trailing newlines stripped, as Docker and systemd credentials provide secrets:
  ``TXAPNS_APP_SHOP_PROXY_FILE=/run/secrets/proxy-url``. The credentials themselves
  (``KEY_FILE``, ``CERT_FILE``, ``P12_FILE``, ``PASSPHRASE_FILE``, ``API_KEY_FILE``) are
  files already.

Relative paths in variables are relative to the working directory. A ``TXAPNS_`` variable
that names nothing known is an error, so a typo cannot be silently ignored. ``TXAPNS_CONFIG``
(the file), ``TXAPNS_LOG_LEVEL`` and ``TXAPNS_LOG_FORMAT`` are read by ``twistd apns`` itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

PREFIX = "TXAPNS_"
APP_PREFIX = "TXAPNS_APP_"
#: Read by ``twistd apns``, not part of the configuration.
COMMAND_VARIABLES = frozenset({"TXAPNS_CONFIG", "TXAPNS_LOG_LEVEL", "TXAPNS_LOG_FORMAT"})

_SERVICE: dict[str, str] = {
    "listen": "list",
    "api_key_file": "path",
    "spool": "path",
    "retention_days": "float",
    "max_body_bytes": "int",
    "max_recipients": "int",
    "http_server": "str",
    "access_log": "str",
    "drain_timeout": "float",
    "invalid_token_webhook": "str",
    "feedback_interval": "float",
}
_APP: dict[str, str] = {
    "bundle_id": "str",
    "environment": "str",
    "protocol": "str",
    "key_file": "path",
    "key_id": "str",
    "team_id": "str",
    "cert_file": "path",
    "passphrase_file": "path",
    "p12_file": "path",
    "host": "str",
    "port": "int",
    "ca_file": "path",
    "feedback_host": "str",
    "feedback_port": "int",
    "proxy": "str",
}
# Longest first, so that ``…_KEY_ID`` is the key ``key_id`` of an app, not ``id`` of ``…_KEY``.
_APP_SUFFIXES = sorted(_APP, key=len, reverse=True)


def env_name(app_name: str) -> str:
    """The ``<NAME>`` part of ``TXAPNS_APP_<NAME>_<KEY>`` for an app name."""
    return re.sub(r"[^A-Za-z0-9]", "_", app_name).upper()


def defines_apps(environ: Mapping[str, str]) -> bool:
    """True when some ``TXAPNS_APP_…`` variable is set: the environment configures apps."""
    return any(name.startswith(APP_PREFIX) for name in environ)


def apply_environment(
    data: Mapping[str, Any], environ: Mapping[str, str], *, cwd: Path | None = None
) -> dict[str, Any]:
    """Parsed TOML ``data`` with the ``TXAPNS_…`` overrides of ``environ`` applied (a copy;
    ``data`` is not changed). Raises :class:`~txapns.service.config.ConfigError` for a
    variable it does not know or a value of the wrong type, naming the variable."""
    base = cwd if cwd is not None else Path.cwd()
    out: dict[str, Any] = dict(data)
    apps_raw = out.get("app", [])
    apps: list[Any] = (
        [dict(a) if isinstance(a, Mapping) else a for a in apps_raw]
        if isinstance(apps_raw, list)
        else apps_raw
    )
    by_env_name: dict[str, dict[str, Any]] = {}
    if isinstance(apps, list):
        for app in apps:
            if isinstance(app, dict) and isinstance(app.get("name"), str):
                by_env_name[env_name(app["name"])] = app
    for variable in sorted(environ):
        if not variable.startswith(PREFIX) or variable in COMMAND_VARIABLES:
            continue
        if variable.startswith(APP_PREFIX):
            name, key, from_file = _split_app_variable(variable, by_env_name)
            value = _value(variable, environ[variable], _APP[key], from_file, base)
            app = by_env_name.get(name)
            if app is None:
                if not isinstance(apps, list):
                    raise ConfigError(f"{variable}: app must be an array of tables in the file")
                app = {"name": name.lower()}
                apps.append(app)
                by_env_name[name] = app
            app[key] = value
        else:
            setting, from_file = _lookup(variable[len(PREFIX) :], _SERVICE)
            if setting is None:
                raise ConfigError(_unknown(variable))
            out[setting] = _value(variable, environ[variable], _SERVICE[setting], from_file, base)
    if apps or "app" in out:
        out["app"] = apps
    return out


def _lookup(rest: str, table: Mapping[str, str]) -> tuple[str | None, bool]:
    key = rest.lower()
    if key in table:
        return key, False
    if key.endswith("_file") and key[: -len("_file")] in table:
        return key[: -len("_file")], True
    return None, False


def _split_app_variable(
    variable: str, known: Mapping[str, dict[str, Any]]
) -> tuple[str, str, bool]:
    rest = variable[len(APP_PREFIX) :]
    # An app the file names wins: its <NAME> may itself contain "_".
    for name in sorted(known, key=len, reverse=True):
        if rest.startswith(name + "_"):
            key, from_file = _lookup(rest[len(name) + 1 :], _APP)
            if key is not None:
                return name, key, from_file
    for from_file in (False, True):
        tail = rest[: -len("_FILE")] if from_file and rest.endswith("_FILE") else rest
        if from_file and tail == rest:
            continue
        for suffix in _APP_SUFFIXES:
            upper = "_" + suffix.upper()
            if tail.endswith(upper) and len(tail) > len(upper):
                return tail[: -len(upper)], suffix, from_file
    raise ConfigError(_unknown(variable))


def _value(variable: str, raw: str, kind: str, from_file: bool, base: Path) -> Any:
    if from_file:
        path = Path(raw).expanduser()
        try:
            raw = (path if path.is_absolute() else base / path).read_text("utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise ConfigError(f"{variable}: cannot read {raw!r}: {why}") from None
    text = raw.strip()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{variable} must be an integer, not {raw!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{variable} must be a number, not {raw!r}") from None
    if kind == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == "path" and text:
        path = Path(text).expanduser()
        return str(path if path.is_absolute() else base / path)
    return text


def _unknown(variable: str) -> str:
    service = ", ".join(PREFIX + k.upper() for k in _SERVICE)
    app = ", ".join(k.upper() for k in _APP)
    return (
        f"unknown environment variable {variable}: txapns reads {service}, "
        f"{APP_PREFIX}<NAME>_<KEY> with KEY one of {app}, each also as <VARIABLE>_FILE, and "
        f"{', '.join(sorted(COMMAND_VARIABLES))}"
    )
