"""The Twisted matrix: the test suite on the lowest Twisted txapns supports and on the newest.

``nox -s "tests(twisted='lowest')"`` installs the lower bound of ``twisted`` in
``pyproject.toml``'s dependencies (read from there, so the bound and the test of it cannot
drift apart); ``tests(twisted='newest')`` the newest release. Each session is a fresh venv with
a plain (non-editable) install of the project, the ``test`` and ``redis`` extras and towncrier
(for the changelog test), and runs the suite as README's test command does, without the
coverage gate (README's command measures coverage on the newest). Arguments after ``--`` go
to pytest. ``.ci/run`` runs the lowest session after README's command. The interop tests need
``npm ci --prefix tests/interop`` and the Redis tests ``redis-server``, as for README's
command.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).resolve().parent


def twisted_lower_bound() -> str:
    """The ``X`` of ``twisted>=X`` in the project's dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in project["dependencies"]:
        m = re.fullmatch(r"twisted\s*>=\s*([0-9][0-9a-zA-Z.]*)\s*", requirement, re.IGNORECASE)
        if m:
            return m.group(1)
    raise RuntimeError("no 'twisted>=X' requirement in pyproject.toml")


@nox.session
@nox.parametrize("twisted", ["lowest", "newest"])
def tests(session: nox.Session, twisted: str) -> None:
    pin = f"twisted=={twisted_lower_bound()}" if twisted == "lowest" else "twisted"
    # towncrier: tests/test_changelog.py checks the newsfragments with it (it skips without).
    session.install("--upgrade", ".[test,redis]", "towncrier>=24.7", pin)
    session.run("python", "-c", "import twisted; print('Twisted', twisted.__version__)")
    session.run("python", "-m", "pytest", "-q", "-n", "4", *session.posargs)
