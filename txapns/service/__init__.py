"""The push service behind ``twistd apns``: configuration, durable spool, engine, HTTP API.

* :mod:`.config` — the TOML configuration model and its start-up checks.
* :mod:`.spool` — the SQLite spool (a synchronous store and a batched asynchronous face).
* :mod:`.engine` — from a validated submission to recorded outcomes, over one
  :class:`~txapns.interfaces.Sender` per app.
* :mod:`.api` — the JSON HTTP API (:func:`~txapns.service.api.make_site`).
* :mod:`.webhook` — the invalid-token webhook.
* :mod:`.metrics` — counters, the latency histogram and the Prometheus text, from one table.
* :mod:`.wiring` — :func:`~txapns.service.wiring.build_engine` and
  :class:`~txapns.service.wiring.EngineService`: config and Senders to a running engine.
* :mod:`.application` — the whole service ``twistd apns`` runs, from its options
  (:func:`~txapns.service.application.build_service`, for ``txapns.tap``); :mod:`.demo`
  is its ``--demo``.
* :mod:`.testing` — a controllable fake Sender for tests.

Nothing here imports the reactor: it is passed in.
"""

from .api import ApiResource, Limits, make_site
from .config import AppConfig, ConfigError, ServiceConfig, load_config
from .engine import Engine, EngineApp, Template, engine_apps
from .spool import Spool, SpoolStore, inline_runner, thread_runner
from .wiring import EngineService, build_engine, limits_from

__all__ = [
    "ApiResource",
    "AppConfig",
    "ConfigError",
    "Engine",
    "EngineApp",
    "EngineService",
    "Limits",
    "ServiceConfig",
    "Spool",
    "SpoolStore",
    "Template",
    "build_engine",
    "engine_apps",
    "inline_runner",
    "limits_from",
    "load_config",
    "make_site",
    "thread_runner",
]
