"""The configuration error, in a module of its own.

Both :mod:`.config` (which reads and checks the file) and :mod:`.environ` (which lays the
``TXAPNS_…`` variables over it, called by the former) raise it; kept here, neither imports
the other back (``tests/test_layering.py`` allows no import circles). :mod:`.config` gives it
too, as ``txapns.service.config.ConfigError``.
"""

from __future__ import annotations

from ..core.errors import APNsError

__all__ = ["ConfigError"]


class ConfigError(APNsError, ValueError):
    """The configuration cannot be used; the message says where and why."""
