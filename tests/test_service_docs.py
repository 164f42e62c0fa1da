"""Docstrings rendered by the API reference parse as reStructuredText."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase


def doctree(text: str):  # type: ignore[no-untyped-def]
    from docutils import nodes
    from docutils.core import publish_doctree
    from docutils.parsers.rst import roles

    # Sphinx roles (:class:`X`) are unknown to plain docutils: read them as literals.
    for name in set(re.findall(r":([a-z]+):`", text)):
        roles.register_local_role(name, roles.GenericRole(name, nodes.literal))
    tree = publish_doctree(text, settings_overrides={"report_level": 5, "halt_level": 5})
    problems = [m.astext() for m in tree.findall(nodes.system_message) if m["level"] >= 2]
    return tree, problems


class DocstringTests(SynchronousTestCase):
    def test_http2_module_docstring_table(self) -> None:
        from docutils import nodes

        import txapns.http2

        tree, problems = doctree(txapns.http2.__doc__ or "")
        self.assertEqual(problems, [])
        (table,) = tree.findall(nodes.table)
        rows = [row.astext() for row in table.findall(nodes.row)]
        self.assertEqual(len(rows), 11)  # the header and ten causes
        retired = next(r for r in rows if "ExpiredProviderToken" in r)
        for reason in ("IdleTimeout", "UnrelatedKeyIdInToken", "TooManyProviderTokenUpdates"):
            self.assertIn(reason, retired)
        self.assertIn("re-sent at once on a new connection", retired)

    def test_wiring_docstring_parses(self) -> None:
        import txapns.service.wiring

        _, problems = doctree(txapns.service.wiring.__doc__ or "")
        self.assertEqual(problems, [])
