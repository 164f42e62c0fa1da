"""Helpers shared by the test modules, so that no test module imports another."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

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
