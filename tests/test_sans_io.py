"""The core must stay sans-IO: no Twisted, no sockets, no clocks, no threads."""

import ast
import pathlib

from twisted.trial.unittest import SynchronousTestCase

CORE = pathlib.Path(__file__).resolve().parent.parent / "txapns" / "core"
FORBIDDEN = {"twisted", "socket", "ssl", "asyncio", "threading", "select", "selectors", "time"}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


class SansIOTests(SynchronousTestCase):
    def test_core_files_exist(self) -> None:
        self.assertGreater(len(list(CORE.glob("*.py"))), 3)

    def test_core_imports_nothing_forbidden(self) -> None:
        offenders = {
            str(p.relative_to(CORE)): sorted(imported_modules(p) & FORBIDDEN)
            for p in CORE.rglob("*.py")
        }
        self.assertEqual({k: v for k, v in offenders.items() if v}, {})

    def test_checker_catches_an_import(self) -> None:
        # The checker itself must be able to fail.
        probe = CORE.parent.parent / "tests" / "_probe_module.txt"
        probe.write_text("import twisted.internet\nfrom time import monotonic\n")
        try:
            self.assertEqual(imported_modules(probe), {"twisted", "time"})
        finally:
            probe.unlink()
