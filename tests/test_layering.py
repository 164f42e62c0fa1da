"""One direction of dependencies: core (sans-IO) → the library's Twisted glue → the fakes
(``txapns.testing``) → service → entry points. The library never imports the service or the
test fakes; the fakes never import the service; the core never imports Twisted
(tests/test_sans_io.py checks the core's other forbidden imports)."""

from __future__ import annotations

import ast
import pathlib

from twisted.trial.unittest import SynchronousTestCase

from .helpers import absolute_module, imported_names

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "txapns"

#: Everything outside these is the library.
NOT_LIBRARY = ("service", "testing", "tap.py", "cli.py")


def imports(path: pathlib.Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports, at any level (functions included,
    ``TYPE_CHECKING`` blocks included: a type-only import is still a dependency)."""
    return imported_names(path.read_text(encoding="utf-8"), package)


def module_package(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts)
    return ".".join(parts[:-1])


def library_files() -> list[pathlib.Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in NOT_LIBRARY]


def offenders(files: list[pathlib.Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in files:
        bad = sorted(
            name
            for name in imports(p, module_package(p))
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if bad:
            found[str(p.relative_to(PACKAGE))] = bad
    return found


class LayeringTests(SynchronousTestCase):
    def test_the_library_is_found(self) -> None:
        names = {str(p.relative_to(PACKAGE)) for p in library_files()}
        self.assertTrue({"http2.py", "binary.py", "endpoints.py", "core/result.py"} <= names)
        self.assertFalse(any(n.startswith(("service/", "testing/")) for n in names))

    def test_the_library_never_imports_the_service_or_the_fakes(self) -> None:
        self.assertEqual(offenders(library_files(), ("txapns.service", "txapns.testing")), {})

    def test_the_fakes_never_import_the_service(self) -> None:
        """The fakes test the library and serve the service's ``--fake``: the service builds
        its app for them (``service.application.embedded_app``), not the other way round."""
        fakes = list((PACKAGE / "testing").rglob("*.py"))
        self.assertTrue(fakes)
        self.assertEqual(offenders(fakes, ("txapns.service",)), {})

    def test_no_import_circles(self) -> None:
        """Within the package too, imports run one way (lazy and type-only ones count)."""
        self.assertEqual(circles(module_graph()), set())
        self.assertEqual(
            circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), {frozenset("abc")}
        )

    def test_the_architecture_page_lists_every_module(self) -> None:
        """docs/architecture.rst gives one line a module: none missing, none that is gone."""
        listed = architecture_listing()
        root = PACKAGE.parent
        actual = {
            str(p.relative_to(root))
            for p in [*PACKAGE.rglob("*.py"), *(root / "twisted" / "plugins").glob("*.py")]
        }
        self.assertEqual(
            sorted(actual - listed), [], "new modules: add a line for each to docs/architecture.rst"
        )
        self.assertEqual(
            sorted(listed - actual), [], "gone: remove them from docs/architecture.rst"
        )

    def test_the_core_never_imports_twisted(self) -> None:
        core = list((PACKAGE / "core").rglob("*.py"))
        self.assertEqual(offenders(core, ("twisted", "zope")), {})

    def test_no_module_imports_a_private_name_of_another(self) -> None:
        """A leading underscore says "this module's own": a name two modules share gets a
        public name (in a private ``_x.py`` module if it is not for users)."""
        self.assertEqual(private_imports(sorted(PACKAGE.rglob("*.py"))), [])
        self.assertEqual(
            private_imports_in(
                "from .api import _X, Api\nfrom .. import _timers\nfrom os import _exit\n",
                "txapns.service",
            ),
            ["txapns.service.api._X"],
        )

    def test_the_checker_sees_relative_lazy_and_type_only_imports(self) -> None:
        probe = PACKAGE.parent / "tests" / "_layering_probe.txt"
        probe.write_text(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .service.config import AppConfig\n"
            "def f():\n    from ..testing import pki\n    import twisted.internet\n"
        )
        try:
            found = imports(probe, "txapns.core")
        finally:
            probe.unlink()
        self.assertIn("txapns.core.service.config", found)
        self.assertIn("txapns.testing.pki", found)
        self.assertIn("twisted.internet", found)
        self.assertIn(
            "txapns.service.config", imports_from("from ..service.config import A", "txapns.x")
        )


def module_graph() -> dict[str, set[str]]:
    """Each txapns module and the txapns modules it imports (a name imported from a module
    counts as that module; a package's ``__init__`` is not counted for its own modules)."""
    modules: dict[str, pathlib.Path] = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps = set()
        for name in imports(path, module_package(path)):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                deps.add(name)
        graph[module] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The sets of modules that import each other, directly or through others."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        reach[start] = seen
    found = set()
    for module, reached in reach.items():
        loop = frozenset({module, *(m for m in reached if module in reach.get(m, ()))})
        if len(loop) > 1:
            found.add(loop)
    return found


def architecture_listing() -> set[str]:
    """The paths of the module listing in docs/architecture.rst (two spaces a level; a name
    ending in ``/`` is a folder)."""
    page = (PACKAGE.parent / "docs" / "architecture.rst").read_text(encoding="utf-8")
    block = page.split(".. code-block:: text\n\n", 1)[1]
    folders: list[str] = []
    paths = set()
    for line in block.splitlines():
        if not line.startswith("   "):
            if line.strip():
                break  # the end of the block
            continue
        text = line[3:]
        depth = (len(text) - len(text.lstrip())) // 2
        name = text.split()[0]
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name)
        else:
            paths.add("".join(folders) + name)
    return paths


def imports_from(source: str, package: str) -> set[str]:
    probe = PACKAGE.parent / "tests" / "_layering_probe2.txt"
    probe.write_text(source + "\n")
    try:
        return imports(probe, package)
    finally:
        probe.unlink()


def private_imports_in(source: str, package: str) -> list[str]:
    """``module.name`` of each underscore name imported from a txapns module (a private
    module itself, ``from . import _timers``, is fine)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        module = absolute_module(node, package)
        if module.split(".")[0] != "txapns":
            continue
        found += [
            f"{module}.{alias.name}"
            for alias in node.names
            if alias.name.startswith("_") and not alias.name.startswith("__")
        ]
    return found


def private_imports(paths: list[pathlib.Path]) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for path in paths
        for name in private_imports_in(path.read_text(encoding="utf-8"), module_package(path))
    ]
