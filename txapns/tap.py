"""``twistd apns``: options and service construction.

:class:`Options` parses the command line; :func:`makeService` builds the service with
:func:`txapns.service.application.build_service`. The reactor is imported inside
``makeService`` only, so ``parseOptions`` and ``makeService`` can be tested without one
running.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.application.service import IService
from twisted.python import usage

from .service.application import build_service, exit_with_one_line
from .service.config import DEFAULT_LISTEN, ConfigError
from .service.environ import defines_apps
from .service.logs import FORMATS, LEVELS

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = "[--config FILE | --fake | single-app flags] [options]"
    longdesc = (
        "Run the txapns push service: an HTTP API (loopback, bearer key) in front of durable, "
        "per-app APNs clients. With no app configured it runs against an embedded fake APNs."
    )
    optFlags = [
        ["fake", None, "Push to an embedded fake APNs in this process (the default with no app)."],
        ["no-env-proxy", None, "Ignore HTTPS_PROXY/NO_PROXY from the environment (every app)."],
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


def makeService(options: Options) -> IService:
    """The ``twistd apns`` entry point: :func:`build_service`, except that a configuration
    it cannot use, or a spool it cannot open (in use by another instance, corrupt,
    truncated), ends the process with one line on stderr and exit status 1 (as twistd does
    for a usage error) instead of a traceback."""
    from .core.proxy import ProxyURLError
    from .service.spool import SpoolError

    try:
        return build_service(options)
    except (ConfigError, SpoolError, ProxyURLError) as e:  # ProxyURLError: from HTTPS_PROXY
        exit_with_one_line(str(e))
