"""The ``txapns`` command against the embedded fake (real TLS on loopback, in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txapns.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


class CLITests(TestCase):
    def test_send_one_through_the_fake(self) -> None:
        result = run("send", "--fake", "--fake-protocol", "binary", "ab" * 32, "--alert", "hi")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("abababab…  accepted", result.stdout)
        self.assertNotIn("ab" * 32, result.stdout)  # never the full token

    def test_bulk_summary_and_results_file(self) -> None:
        directory = tempfile.mkdtemp()
        tokens = os.path.join(directory, "tokens.txt")
        results = os.path.join(directory, "results.jsonl")
        with open(tokens, "w") as f:
            f.write("# comment\n" + "".join(f"{i + 1:02x}" + "cd" * 31 + "\n" for i in range(20)))
            f.write("ff" * 32 + "\nnot-hex\n")
        result = run(
            "send",
            "--fake",
            "--fake-protocol",
            "binary",
            "--tokens",
            tokens,
            "--alert",
            "x",
            "--results",
            results,
        )
        self.assertEqual(result.returncode, 1)  # not everything was accepted
        self.assertRegex(result.stdout, r"accepted\s+20")
        self.assertRegex(result.stdout, r"rejected\s+2")
        self.assertIn("InvalidToken", result.stdout)
        self.assertIn("InvalidTokenError", result.stdout)
        with open(results) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(len(lines), 21)
        self.assertEqual({r["outcome"] for r in lines}, {"accepted", "rejected"})

    def test_no_token_is_a_usage_error(self) -> None:
        result = run("send", "--fake", "--alert", "x")
        self.assertEqual(result.returncode, 2)
