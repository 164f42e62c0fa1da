"""``txapns doctor --token``: probing real device tokens tells a wrong ``environment``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txapns.core import Notification, Outcome, Result
from txapns.core.token_evidence import environment_verdict
from txapns.service.config import AppConfig
from txapns.service.environment_probe import probe_environment
from txapns.service.testing import FakeSender

from .helpers_service import app_config

TOKENS = [f"{i:064x}" for i in range(1, 4)]


def bad(n: Notification) -> Result:
    return Result(n, Outcome.REJECTED, 400, "BadDeviceToken")


def ok(n: Notification) -> Result:
    return Result(n, Outcome.ACCEPTED, 200)


class ProbeTests(SynchronousTestCase):
    def run_probe(self, app: AppConfig, answers: dict[str, Any]) -> tuple[bool, str]:
        self.senders: dict[str, FakeSender] = {}

        def sender_for(a: AppConfig, reactor: Any) -> FakeSender:
            sender = FakeSender(auto=answers.get(a.environment))
            self.senders[a.environment] = sender
            return sender

        d = Deferred.fromCoroutine(
            probe_environment(Clock(), app, TOKENS, timeout=5.0, sender_for=sender_for)
        )
        result: tuple[bool, str] = self.successResultOf(d)
        return result

    def test_sandbox_tokens_sent_to_production(self) -> None:
        app = replace(app_config("shop"), environment="production")
        good, line = self.run_probe(app, {"production": bad, "sandbox": ok})
        self.assertFalse(good)
        self.assertIn("set environment = 'sandbox'", line)
        sent = self.senders["production"].sent
        self.assertEqual([n.token.hex() for n in sent], TOKENS)
        # A silent background push: nothing is shown on the device.
        self.assertEqual(
            {(n.push_type.value if n.push_type else None, n.priority) for n in sent},
            {("background", 5)},
        )
        self.assertEqual(self.senders["production"].stop_calls, 1)
        self.assertEqual(self.senders["sandbox"].stop_calls, 1)

    def test_right_environment(self) -> None:
        good, line = self.run_probe(app_config("shop"), {"sandbox": ok})
        self.assertTrue(good, line)
        self.assertNotIn("production", self.senders)  # the other one is not probed

    def test_bad_in_both(self) -> None:
        good, line = self.run_probe(app_config("shop"), {"sandbox": bad, "production": bad})
        self.assertFalse(good)
        self.assertIn("not tokens of this app", line)

    def test_no_answer_within_the_timeout(self) -> None:
        clock = Clock()

        def sender_for(a: AppConfig, reactor: Any) -> FakeSender:
            return FakeSender()  # never answers

        d = Deferred.fromCoroutine(
            probe_environment(clock, app_config("shop"), TOKENS, timeout=5.0, sender_for=sender_for)
        )
        self.assertNoResult(d)
        clock.advance(5.0)
        good, line = self.successResultOf(d)
        self.assertFalse(good)
        self.assertIn("no answer", line)


class VerdictTests(SynchronousTestCase):
    def test_other_environment_not_probed(self) -> None:
        n = Notification.create("ab" * 32, {"aps": {}})
        good, line = environment_verdict("production", [bad(n)], None)
        self.assertFalse(good)
        self.assertIn("is `environment` right?", line)

    def test_a_few_bad_among_good_is_fine(self) -> None:
        n = Notification.create("ab" * 32, {"aps": {}})
        good, _ = environment_verdict("sandbox", [ok(n), ok(n), bad(n)], None)
        self.assertTrue(good)


class DoctorOptionTests(SynchronousTestCase):
    def test_doctor_takes_tokens_checked_as_apns_would(self) -> None:
        from txapns.cli import _parser

        args = _parser().parse_args(["doctor", "--token", "AB" * 32, "--token", "cd" * 32])
        self.assertEqual(args.token, ["ab" * 32, "cd" * 32])
        self.assertRaises(SystemExit, _parser().parse_args, ["doctor", "--token", "zz"])
