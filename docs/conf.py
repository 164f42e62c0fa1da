"""Sphinx configuration. CI builds with ``sphinx-build -W`` (warnings are errors)."""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import txapns

ROOT = Path(__file__).resolve().parent.parent

project = "txapns"
author = "txapns developers"
release = version = txapns.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
# Types in signatures only: "description" would repeat each one under the text.
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
nitpicky = False
# Re-exported names (txapns.core re-exports the models) make some short cross-references
# ambiguous; the first match is right for every one of them.
suppress_warnings = ["ref.python"]
# Furo: maintained and readable at any width; custom.css wraps long code lines instead of
# hiding them behind scrollbars. The release is shown in the title.
html_theme = "furo"
html_title = f"txapns {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
exclude_patterns = ["_build", "examples"]


def _fix_docstring(app, what, name, obj, options, lines):  # type: ignore[no-untyped-def]
    # verify_provider_token's docstring writes ``bearer `` (a literal ending in a space),
    # which reStructuredText cannot express; render it quoted instead.
    lines[:] = [line.replace("``bearer ``", '``"bearer "``') for line in lines]


def _unreleased_changes(app, docname, source):  # type: ignore[no-untyped-def]
    # The changelog page shows the next version's section, drawn by towncrier from
    # newsfragments/, above the released ones (towncrier writes it into the file at a release).
    if docname != "changelog":
        return
    draft = subprocess.run(
        [sys.executable, "-m", "towncrier", "build", "--draft", "--version", release,
         "--date", "unreleased"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if draft.returncode != 0:
        raise RuntimeError(
            f"towncrier build --draft failed (it is in the dev extra):\n{draft.stderr}"
        )
    marker = ".. towncrier release notes start\n"
    source[0] = source[0].replace(marker, draft.stdout + "\n" + marker, 1)


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("autodoc-process-docstring", _fix_docstring)
    app.connect("source-read", _unreleased_changes)
