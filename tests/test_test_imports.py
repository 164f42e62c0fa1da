"""Test modules never import each other; what they share lives in ``tests/helpers*.py``.

A test module that imports another runs that module's import-time work again, ties the two
together so a change in one breaks the other, and, when the imported name is a test class,
makes pytest collect and run that class a second time under the importing module's name.
The support modules (``helpers.py``, ``helpers_*.py``, ``redis_server.py``) are not
collected: pytest only collects ``test_*.py``; for the same reason they define no class
with test methods (importing one would collect it again).
"""

from __future__ import annotations

import ast
import pathlib

from twisted.trial.unittest import SynchronousTestCase

from .helpers import imported_names

TESTS = pathlib.Path(__file__).resolve().parent


def imported_test_modules(source: str) -> set[str]:
    """The test modules (``tests.test_*``) that ``source`` imports, in any spelling."""
    found = set()
    for name in imported_names(source, "tests"):
        parts = name.split(".")
        if len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_"):
            found.add(".".join(parts[:2]))
    return found


def classes_with_tests(source: str) -> list[str]:
    """Classes that define a ``test*`` method: pytest collects them wherever they are imported."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(
            isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            and item.name.startswith("test")
            for item in node.body
        ):
            out.append(node.name)
    return out


def found_test_modules() -> list[pathlib.Path]:
    return sorted(TESTS.glob("test_*.py"))


def support_modules() -> list[pathlib.Path]:
    return sorted(p for p in TESTS.glob("*.py") if not p.name.startswith("test_"))


class TestImportsTests(SynchronousTestCase):
    def test_the_modules_are_found(self) -> None:
        names = {p.name for p in found_test_modules()}
        self.assertIn("test_test_imports.py", names)
        self.assertIn("helpers.py", {p.name for p in support_modules()})

    def test_no_test_module_imports_another(self) -> None:
        offenders = [
            f"{path.name} imports {', '.join(sorted(found))}"
            for path in found_test_modules() + support_modules()
            if (found := imported_test_modules(path.read_text(encoding="utf-8")))
        ]
        self.assertEqual(offenders, [], "move what they share into tests/helpers*.py")

    def test_support_modules_define_no_test_classes(self) -> None:
        offenders = [
            f"{path.name}: {', '.join(found)}"
            for path in support_modules()
            if (found := classes_with_tests(path.read_text(encoding="utf-8")))
        ]
        self.assertEqual(offenders, [])

    def test_the_checker_sees_every_spelling(self) -> None:
        for source in [
            "from tests.test_x import a",
            "from .test_x import a",
            "from . import test_x",
            "from tests import test_x as crash",
            "import tests.test_x",
            "def f():\n    from .test_x import a\n",
        ]:
            self.assertEqual(imported_test_modules(source), {"tests.test_x"}, source)
        for source in [
            "from .helpers import temp_dir",
            "from tests.helpers_http2 import frame",
            "from .redis_server import RedisServer",
            "import test_x",  # not the tests package: another project's module
        ]:
            self.assertEqual(imported_test_modules(source), set(), source)

    def test_the_checker_sees_test_classes(self) -> None:
        source = (
            "class Mixin:\n    def start(self): pass\n"
            "class Case:\n    def test_a(self): pass\n"
            "class Async:\n    async def test_b(self): pass\n"
        )
        self.assertEqual(classes_with_tests(source), ["Case", "Async"])
