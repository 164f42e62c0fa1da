"""The service's log output: a level (info by default), text or JSON lines, and hints.

``twistd`` logs every event at every level to its log file; a service operator wants info and
above, without Twisted's ``Starting factory <… at 0x…>`` lines, and log shippers want one
JSON object per line. :func:`make_observer` builds that observer; ``twistd apns`` installs it
where ``twistd`` would have put its own (``--logfile``, ``--syslog``, stdout with ``-n``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

from ..core.errors import TLS_HINTS

LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
FORMATS = ("text", "json")
DEFAULT_LEVEL = "info"
DEFAULT_FORMAT = "text"

#: Twisted's factory start/stop lines: one per connection for client factories, with an
#: address in them; shown at the debug level only.
_FACTORY_NOISE = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


def _quiet_factories(event: LogEvent) -> PredicateResult:
    result: PredicateResult = (
        PredicateResult.no if event.get("log_format") in _FACTORY_NOISE else PredicateResult.maybe
    )
    return result


def make_observer(
    base: ILogObserver | None = None,
    *,
    out: IO[str] | None = None,
    level: str = DEFAULT_LEVEL,
    fmt: str = DEFAULT_FORMAT,
) -> ILogObserver:
    """An observer passing events at ``level`` and above to ``base`` (text), or writing them
    to ``out`` as JSON lines (``fmt="json"``) or text."""
    threshold = LEVELS[level]
    if fmt == "json":
        target: ILogObserver = JSONLinesObserver(out if out is not None else sys.stdout)
    elif base is not None:
        target = base
    else:
        target = textFileLogObserver(out if out is not None else sys.stdout)
    predicates: list[Any] = [LogLevelFilterPredicate(defaultLogLevel=threshold)]
    if threshold > LogLevel.debug:
        predicates.insert(0, _quiet_factories)
    return FilteringLogObserver(_HintingObserver(target), predicates)


_WARN_AND_ABOVE = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


@implementer(ILogObserver)
class _HintingObserver:
    """Adds a ``hint`` (what to do) to warnings and errors whose text a newcomer would not
    know how to act on, such as OpenSSL's ``certificate verify failed``."""

    def __init__(self, target: ILogObserver) -> None:
        self.target = target

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        fmt = event.get("log_format")
        if level in _WARN_AND_ABOVE and isinstance(fmt, str):
            text = formatEvent(event)
            hint = hint_for(text)
            if hint is not None and "txapns_hint" not in event and "(hint:" not in text:
                event = dict(event, txapns_hint=hint, log_format=fmt + " (hint: {txapns_hint})")
        self.target(event)


@implementer(ILogObserver)
class JSONLinesObserver:
    """One JSON object per event and line: ``time`` (ISO 8601, UTC), ``level``,
    ``namespace``, ``message`` (the formatted text), ``traceback`` for a failure, and the
    event's own scalar fields (``name``, ``n``, …) for filtering in a log shipper."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: LogEvent) -> None:
        self.out.write(event_as_json_line(event))
        self.out.flush()


def event_as_json_line(event: Mapping[str, Any]) -> str:
    level = event.get("log_level")
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
        if isinstance(when, (int, float))
        else None,
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(dict(event)) if _has_text(event) else "",
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # a broken failure must not lose the event
            record["traceback"] = repr(failure)
    for key, value in event.items():
        if key == "txapns_hint":
            record["hint"] = value
            continue
        if key.startswith("log_") or key in record or key in ("format", "message", "isError"):
            continue
        if (
            value is None
            or isinstance(value, (str, bool, int))
            or (isinstance(value, float) and math.isfinite(value))
        ):
            record[key] = value
    return json.dumps(record, ensure_ascii=False) + "\n"


def _has_text(event: Mapping[str, Any]) -> bool:
    return event.get("log_format") is not None or bool(event.get("message"))


def twistd_observer(twistd_options: Mapping[str, Any], *, level: str, fmt: str) -> ILogObserver:
    """The observer ``twistd`` would have made from its own options (``--logfile``,
    ``--syslog``, ``-n``), at ``level``, in ``fmt``."""
    from twisted.logger import LegacyLogObserverWrapper

    if fmt == "json":
        if twistd_options.get("syslog"):
            raise ValueError("--log-format json cannot go to syslog")
        return make_observer(out=_log_file(twistd_options), level=level, fmt=fmt)
    logger: Any
    try:
        from twisted.scripts._twistd_unix import UnixAppLogger

        logger = UnixAppLogger(twistd_options)
    except ImportError:  # pragma: no cover - not a POSIX system
        from twisted.application.app import AppLogger

        logger = AppLogger(twistd_options)
    # twistd's own choice of file (stdout with -n, twistd.log, rotation on SIGUSR1, syslog).
    base = logger._getLogObserver()
    if not ILogObserver.providedBy(base):
        base = LegacyLogObserverWrapper(base)
    return make_observer(base, level=level, fmt=fmt)


def _log_file(options: Mapping[str, Any]) -> IO[str]:
    name = options.get("logfile") or ""
    if name == "-" or (not name and options.get("nodaemon")):
        return sys.stdout
    from twisted.python.logfile import LogFile

    log_file: IO[str] = LogFile.fromFullPath(name or "twistd.log")
    return log_file


#: Error texts a newcomer meets, and what to do about each.
_HINTS: tuple[tuple[str, str], ...] = (
    *TLS_HINTS,
    (
        "InvalidProviderToken",
        "APNs refused the provider token: check key_id and team_id against the key in "
        "Apple's developer account, and that the key is enabled for APNs",
    ),
    (
        "ExpiredProviderToken",
        "the provider token is too old or the clock is wrong: check the system clock (NTP)",
    ),
    (
        "BadCertificateEnvironment",
        "the certificate is for the other environment: set environment to 'production' or "
        "'sandbox' to match it",
    ),
    (
        "TopicDisallowed",
        "the bundle id is not one this credential may push to: check bundle_id",
    ),
    (
        "DeviceTokenNotForTopic",
        "the device token belongs to another app (bundle id) or environment",
    ),
    (
        "Connection refused",
        "nothing listens at the app's host and port: check host/port, or a firewall",
    ),
    (
        "DNS lookup failed",
        "the host name does not resolve: check host, or the machine's DNS",
    ),
)


def hint_for(text: str) -> str | None:
    """What to do about an error whose text contains a known phrase, or ``None``."""
    for phrase, hint in _HINTS:
        if phrase in text:
            return hint
    return None
