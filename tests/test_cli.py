"""The ``txapns`` command against the embedded fake and against ``python -m txapns.testing``
(real TLS on loopback, in subprocesses)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from .helpers_process import ENV, TOKEN, FakeProcess, run


def popen(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "txapns.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        **kwargs,
    )


def token_file(directory: str, n: int, name: str = "tokens.txt") -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"{i:064x}\n")
    return path


def lines_of(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f]


class SendTests(TestCase):
    def test_send_one_through_the_fake(self) -> None:
        result = run("send", "--fake", "--fake-protocol", "binary", TOKEN, "--alert", "hi")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("abababab…  accepted", result.stdout)
        self.assertNotIn(TOKEN, result.stdout)  # never the full token

    def test_json_for_a_single_send(self) -> None:
        result = run("send", "--fake", TOKEN, "--alert", "hi", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        answer = json.loads(result.stdout)
        self.assertEqual((answer["outcome"], answer["status"]), ("accepted", 200))
        self.assertIs(answer["may_duplicate"], False)

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
        lines = lines_of(results)
        self.assertEqual(len(lines), 22)  # the unparsable token too, by line number
        self.assertEqual({r["outcome"] for r in lines}, {"accepted", "rejected"})
        [bad] = [r for r in lines if r["token"] is None]
        self.assertEqual((bad["line"], bad["local"]), (22, "invalid"))

    def test_no_token_is_a_usage_error(self) -> None:
        result = run("send", "--fake", "--alert", "x")
        self.assertEqual(result.returncode, 2)

    def test_more_tokens_than_the_client_holds_stream_with_flat_memory(self) -> None:
        # Many times more tokens than the client may hold (the client's max_queue, 100,000 by
        # default, made small here to keep the test short): every token sent through
        # send_many, every result written before the file is closed, memory flat.
        directory = tempfile.mkdtemp()
        peaks = []
        for n in (1_000, 6_000):
            tokens = token_file(directory, n)
            results = os.path.join(directory, "results.jsonl")
            proc = popen(
                "send", "--fake", "--tokens", tokens, "--results", results, "--max-queue", "200"
            )
            _, status, usage = os.wait4(proc.pid, 0)
            out = proc.stdout.read() if proc.stdout else ""
            err = proc.stderr.read() if proc.stderr else ""
            proc.communicate()
            self.assertEqual(os.waitstatus_to_exitcode(status), 0, err[-2000:])
            self.assertNotIn("Traceback", err)
            self.assertRegex(out, rf"accepted\s+{n}\b")
            self.assertEqual(len(lines_of(results)), n)
            peaks.append(usage.ru_maxrss)  # KiB
        # 6 times the tokens, the same memory (give or take the allocator's moods).
        self.assertLess(peaks[1], peaks[0] + 16 * 1024, peaks)

    def test_progress_bar_on_a_terminal(self) -> None:
        directory = tempfile.mkdtemp()
        tokens = token_file(directory, 1_000)
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        proc = subprocess.Popen(
            [sys.executable, "-m", "txapns.cli", "send", "--fake", "--tokens", tokens],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            env=ENV,
        )
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        os.close(master)
        out, _ = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, screen[-2000:])
        text = screen.decode("utf-8", "replace")
        self.assertIn("1000/1000", text)  # total and done
        self.assertIn("push/s", text)  # rate
        self.assertIn("failed=0", text)
        self.assertRegex(out, r"accepted\s+1000")

    def test_plain_progress_lines_and_sigterm_or_ctrl_c_keep_results(self) -> None:
        directory = tempfile.mkdtemp()
        tokens = token_file(directory, 300_000)
        for signum in (signal.SIGTERM, signal.SIGINT):
            results = os.path.join(directory, f"results-{signum}.jsonl")
            proc = popen("send", "--fake", "--tokens", tokens, "--results", results)
            assert proc.stderr is not None
            line = proc.stderr.readline()  # a plain progress line: not a terminal
            self.assertRegex(line, r"^txapns send: \d+/300000 done, \d+ accepted")
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 3, err[-2000:])
            self.assertIn(f"{signal.Signals(signum).name}: stopping", err)
            self.assertNotIn("Traceback", err)
            written = lines_of(results)
            self.assertRegex(out, rf"total\s+{len(written)}\b")
            self.assertGreater(len(written), 0)
            self.assertLess(len(written), 300_000)

    def test_timeout(self) -> None:
        directory = tempfile.mkdtemp()
        tokens = token_file(directory, 300_000)
        results = os.path.join(directory, "results.jsonl")
        result = run(
            "send", "--fake", "--tokens", tokens, "--results", results, "--timeout", "2", "--json"
        )
        self.assertEqual(result.returncode, 3, result.stderr[-2000:])
        self.assertIn("timed out after 2 s", result.stderr)
        summary = json.loads(result.stdout)
        self.assertEqual(summary["total"], len(lines_of(results)))

    def test_credential_flags_for_a_one_off_send(self) -> None:
        fake = FakeProcess(self)
        result = run("send", *fake.one_off(), TOKEN, "--alert", "hi", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["outcome"], "accepted")
        cert = os.path.join(fake.pki, "client.pem")
        key = os.path.join(fake.pki, "client-key.pem")
        flags = fake.one_off(**{"key-file": "", "key-id": "", "team-id": ""})
        result = run("send", *flags, "--cert-file", cert, "--cert-key", key, TOKEN, "--alert", "hi")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("accepted", result.stdout)

    def test_rejected_single_send_exits_1(self) -> None:
        fake = FakeProcess(self, "--bad-token", TOKEN)
        result = run("send", *fake.one_off(), TOKEN, "--alert", "hi", "--json")
        self.assertEqual(result.returncode, 1, result.stderr)
        answer = json.loads(result.stdout)
        self.assertEqual((answer["status"], answer["reason"]), (400, "BadDeviceToken"))


class ErrorTests(TestCase):
    """Ordinary mistakes: one line on stderr, exit 2, never a traceback."""

    def assertOneLine(self, result: subprocess.CompletedProcess[str], *expected: str) -> None:
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        for text in expected:
            self.assertIn(text, result.stderr)

    def test_mistakes(self) -> None:
        directory = Path(tempfile.mkdtemp())
        (directory / "bad.toml").write_text("[[app]\n")
        good = directory / "good.toml"
        key = directory / "AuthKey_ABC123DEFG.p8"
        from txapns.testing.pki import make_test_pki

        key.write_bytes(make_test_pki().token_key_p8)
        good.write_text(
            '[[app]]\nname = "shop"\nbundle_id = "com.example.shop"\n'
            f'key_file = "{key}"\nkey_id = "ABC123DEFG"\nteam_id = "DEF123GHIJ"\n'
        )
        self.assertOneLine(run("send", "--config", "missing.toml", TOKEN), "missing.toml")
        self.assertOneLine(run("doctor", "--config", "missing.toml"), "missing.toml")
        self.assertOneLine(run("send", "--config", str(directory / "bad.toml"), TOKEN), "TOML")
        self.assertOneLine(
            run("send", "--config", str(good), "--app", "nope", TOKEN, "--alert", "x"),
            "no app 'nope'",
            "shop",
        )
        self.assertOneLine(run("doctor", "--config", str(good), "--app", "nope"), "'nope'")
        self.assertOneLine(run("send", "--fake", "--tokens", "missing.txt"), "missing.txt")
        self.assertOneLine(run("send", "--fake", TOKEN, "--payload", "{not json"), "payload")
        self.assertOneLine(
            run("send", "--fake", TOKEN, "--alert", "x", "--results", "/nonexistent/r.jsonl"),
            "--results",
        )
        self.assertOneLine(
            run("send", "--key-id", "ABC123DEFG", TOKEN, "--alert", "x"), "--bundle-id"
        )
        self.assertOneLine(
            run(
                "send",
                *("--bundle-id", "com.example.shop", "--key-file", "nope.p8"),
                *("--key-id", "ABC123DEFG", "--team-id", "DEF123GHIJ", TOKEN),
            ),
            "nope.p8",
        )

    def test_version(self) -> None:
        result = run("--version")
        self.assertEqual(result.returncode, 0)
        self.assertRegex(result.stdout, r"^txapns \d+\.\d+")


class DoctorTests(TestCase):
    def test_fails_on_a_refused_credential_and_checks_every_app(self) -> None:
        fake = FakeProcess(self)
        config = fake.config(
            [{"name": "good"}, {"name": "wrong-team", "team_id": "WRONGTEAM1"}, {"name": "also"}]
        )
        result = run("doctor", "--config", config)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 3, result.stdout)
        self.assertTrue(lines[0].startswith("ok   good:"), lines)
        self.assertTrue(lines[1].startswith("FAIL wrong-team:"), lines)
        self.assertIn("InvalidProviderToken", lines[1])
        self.assertIn("team_id", lines[1])  # what to fix
        self.assertTrue(lines[2].startswith("ok   also:"), lines)
        # --app: only that one.
        result = run("doctor", "--config", config, "--app", "good")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(len(result.stdout.splitlines()), 1)

    def test_credential_flags(self) -> None:
        fake = FakeProcess(self)
        result = run("doctor", *fake.one_off())
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertTrue(result.stdout.startswith("ok   cli: connected to 127.0.0.1:"))
        result = run("doctor", *fake.one_off(**{"team-id": "WRONGTEAM1"}))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("FAIL cli:", result.stdout)
        self.assertIn("InvalidProviderToken", result.stdout)

    def test_fails_on_a_topic_the_key_may_not_use(self) -> None:
        fake = FakeProcess(self)
        config = fake.config([{"name": "other", "bundle_id": "com.example.other"}])
        result = run("doctor", "--config", config)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("TopicDisallowed", result.stdout)

    def test_times_out_when_apns_cannot_be_reached(self) -> None:
        # A port that accepts TCP connections and never says anything: TLS never completes.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        self.addCleanup(silent.close)
        fake = FakeProcess(self)
        config = fake.config([{"name": "lost", "port": silent.getsockname()[1]}])
        result = run("doctor", "--config", config, "--timeout", "1", timeout=60)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("FAIL lost: no answer from APNs", result.stdout)
        self.assertIn("within 1 s", result.stdout)
