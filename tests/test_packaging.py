"""The wheel ships the twistd plugin (and never ``twisted/plugins/__init__.py``)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial.unittest import TestCase

ROOT = pathlib.Path(__file__).resolve().parent.parent


class PackagingTests(TestCase):
    def test_wheel_contains_the_plugin_and_no_plugins_init(self) -> None:
        out = tempfile.mkdtemp(prefix="txapns-wheel-")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                out,
                str(ROOT),
            ],
            check=True,
            capture_output=True,
        )
        [wheel] = [f for f in os.listdir(out) if f.endswith(".whl")]
        names = zipfile.ZipFile(os.path.join(out, wheel)).namelist()
        self.assertIn("twisted/plugins/txapns_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("txapns/py.typed", names)
        self.assertIn("txapns/core/http2/__init__.py", names)
        self.assertIn("txapns/service/api.py", names)

    def test_twistd_lists_apns(self) -> None:
        twistd = pathlib.Path(sys.executable).with_name("twistd")
        result = subprocess.run(
            [str(twistd), "--help"],
            check=True,
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
        )
        self.assertIn("apns", result.stdout)
        self.assertIn("Apple Push Notification", result.stdout)

    def test_no_plugins_init_in_the_source_tree(self) -> None:
        self.assertFalse((ROOT / "twisted" / "plugins" / "__init__.py").exists())
        self.assertFalse((ROOT / "twisted" / "__init__.py").exists())
