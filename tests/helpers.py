"""Helpers shared by the test modules, so that no test module imports another."""

from __future__ import annotations

import ast
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase


def temp_dir(case: SynchronousTestCase) -> Path:
    """A fresh absolute directory in the system's temp dir, removed after the test.

    Not trial's ``mktemp()``: that nests every test of a module under one relative folder in
    the working directory, and removing that folder after one test pulls the floor from under
    another test of the same module running at the same time in a second pytest-xdist worker.
    """
    path = Path(tempfile.mkdtemp(prefix="txapns-test-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path


def token(i: int) -> str:
    return f"{i:064x}"


def deferred_test(
    fn: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Deferred[None]]:
    def run(self: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(fn(self))

    run.__name__ = fn.__name__
    return run


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    """Wait on the reactor (for bounded polling only)."""
    d: Deferred[None] = deferLater(reactor, seconds, lambda: None)
    return d


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample; raises if it is absent."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    raise AssertionError(f"no sample {want} in /metrics")


def assert_invalid(
    case: SynchronousTestCase, factory: Any, cases: list[tuple[dict[str, Any], str]]
) -> None:
    """``factory(**kwargs)`` raises ValueError with exactly that message, for each case."""
    for kwargs, message in cases:
        with case.assertRaises(ValueError) as cm:
            factory(**kwargs)
        case.assertEqual(str(cm.exception), message, kwargs)


def absolute_module(node: ast.ImportFrom, package: str) -> str:
    """The absolute name of the module a ``from … import`` in a module of ``package`` reads."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imported_names(source: str, package: str) -> set[str]:
    """Absolute names of every module, and ``module.member``, that ``source`` (a module of
    ``package``) imports, at any level: in functions and ``TYPE_CHECKING`` blocks too (a
    type-only import is still a dependency). ``from . import x`` names module ``x``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(node, package)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


class TurnClock(Clock):
    """A Clock that runs one reactor turn at a time.

    ``Clock.advance`` runs the calls that a due call schedules for "now" in the same advance,
    so a chain of ``callLater(0, …)`` would run to its end before any byte is moved. A real
    reactor runs what was due when the turn began, then does I/O, then the next turn: that is
    :meth:`turn`. :meth:`forward` moves time without running anything.
    """

    def turn(self) -> None:
        now = self.seconds()
        for call in [c for c in self.calls if c.getTime() <= now]:
            if call in self.calls:  # not cancelled by an earlier call of this turn
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)

    def forward(self, seconds: float) -> None:
        self.rightNow += seconds
