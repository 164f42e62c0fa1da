"""The changelog is kept with towncrier: fragments in ``newsfragments/`` named so towncrier
takes them, its config in ``pyproject.toml``, and the next version's section rendered."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import txapns

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["towncrier"]
TYPES = {t["directory"] for t in CONFIG["type"]}
#: ``<issue>.<type>.rst``, ``+<name>.<type>.rst``, and ``.<n>`` before ``.rst`` for a second one.
NAME = re.compile(r"^(?:\d+|\+[a-z0-9-]+)\.(?P<type>[a-z]+)(?:\.\d+)?\.rst$")


def fragments() -> list[Path]:
    return sorted(p for p in (ROOT / CONFIG["directory"]).iterdir() if p.name != "README.rst")


class ChangelogTests(SynchronousTestCase):
    def test_fragments_are_named_for_towncrier(self) -> None:
        self.assertTrue(fragments())
        for path in fragments():
            m = NAME.match(path.name)
            self.assertIsNotNone(m, path.name)
            assert m is not None
            self.assertIn(m["type"], TYPES, path.name)
            self.assertTrue(path.read_text(encoding="utf-8").strip(), path.name)

    def test_the_changelog_has_the_start_marker(self) -> None:
        text = (ROOT / CONFIG["filename"]).read_text(encoding="utf-8")
        self.assertIn(CONFIG["start_string"], text)

    def test_the_draft_renders(self) -> None:
        if find_spec("towncrier") is None:
            raise SkipTest("towncrier is in the dev extra (CI's docs build renders it too)")
        draft = subprocess.run(
            [sys.executable, "-m", "towncrier", "build", "--draft",
             "--version", txapns.__version__, "--date", "unreleased"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        title = f"{txapns.__version__} (unreleased)"
        self.assertTrue(draft.stdout.startswith(f"{title}\n{'-' * len(title)}\n"), draft.stdout)
        for path in fragments():
            first_line = path.read_text(encoding="utf-8").splitlines()[0]
            self.assertIn(first_line, draft.stdout, path.name)
