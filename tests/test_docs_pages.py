"""What the docs must say and show (issue 12, items 10 and 13); the build itself is CI's
``sphinx-build -W``."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def blocks(text: str, language: str) -> list[str]:
    """The bodies of ``.. code-block:: <language>`` directives, in order."""
    out = []
    for m in re.finditer(rf"^\.\. code-block:: {language}\n\n((?:   .*\n|\n)+)", text, re.M):
        out.append(m.group(1))
    return out


class DocsTests(SynchronousTestCase):
    def test_theme_is_furo_and_setup_installs_it(self) -> None:
        self.assertIn('html_theme = "furo"', read("conf.py"))
        self.assertIn('"furo', (ROOT / "pyproject.toml").read_text())

    def test_quickstart_leads_with_http2_token_auth(self) -> None:
        text = read("quickstart.rst")
        first_config = blocks(text, "toml")[0]
        for key in ("key_file", "key_id", "team_id", "bundle_id"):
            self.assertIn(key, first_config)
        self.assertNotIn('protocol = "binary"', first_config)
        self.assertIn("developer.apple.com", text)
        self.assertIn("token_urlsafe", text)  # how to make the API key file
        self.assertIn("curl", text)
        self.assertLess(text.index("examples/http2_send.py"), len(text))
        self.assertNotIn("binary_send.py", text)
        self.assertIn("pip install .", text)
        self.assertIn("|release|", text)

    def test_first_service_config_example_is_not_binary_only(self) -> None:
        first = blocks(read("service.rst"), "toml")[0]
        self.assertIn('key_id = "', first)

    def test_stale_statements_are_gone(self) -> None:
        self.assertNotIn("they are ignored and the service", read("service.rst"))
        testing = " ".join(read("testing.rst").split())
        self.assertNotIn("``ff`` are rejected with status 8, the rest", testing)
        self.assertIn("``ff`` are rejected with 400 ``BadDeviceToken``", testing)

    def test_no_pointer_to_a_reference_outside_the_repository(self) -> None:
        for path in [*DOCS.rglob("*.rst"), *(ROOT / "txapns").rglob("*.py")]:
            self.assertNotIn("apns-reference", path.read_text(encoding="utf-8"), str(path))
        self.assertIn(".. _apns-responses:", read("apns.rst"))

    def test_pages_in_the_toctree(self) -> None:
        index = read("index.rst")
        for page in ("quickstart", "asyncio", "deployment", "apns", "changelog"):
            self.assertRegex(index, rf"\n   {page}\n")
            self.assertTrue((DOCS / f"{page}.rst").exists())
        # The version's section is drawn from newsfragments/ (tests/test_changelog.py).
        self.assertIn(".. towncrier release notes start", read("changelog.rst"))

    def test_pictures(self) -> None:
        for name in ("architecture.svg", "notification-life.svg"):
            tree = ET.parse(DOCS / "_static" / name)
            texts = " ".join(t.text or "" for t in tree.iter("{http://www.w3.org/2000/svg}text"))
            self.assertTrue(texts)
        arch = ET.parse(DOCS / "_static" / "architecture.svg")
        words = " ".join(t.text or "" for t in arch.iter("{http://www.w3.org/2000/svg}text"))
        for part in ("HTTP API", "spool", "engine", "clients", "APNs"):
            self.assertIn(part, words)
        self.assertIn("_static/architecture.svg", read("index.rst"))
        self.assertIn("_static/notification-life.svg", read("library.rst"))

    def test_deployment_page(self) -> None:
        text = read("deployment.rst")
        unit = blocks(text, "ini")[0]
        self.assertIn("Type=notify", unit)
        self.assertIn("ProtectSystem=strict", unit)
        self.assertIn("TXAPNS_APP_SHOP_KEY_ID", text)
