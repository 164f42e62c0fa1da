"""The running service (``twistd apns --fake``, HTTP/2) when its app cannot send: a fake APNs
that answers BadDeviceToken to everything (a wrong environment), and one that refuses the
credential. Nothing is published or rejected, the app pauses, ``/healthz`` fails."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from txapns.testing.embedded import FAKE_APP

from .helpers import deferred_test, metric, sleep, token
from .helpers_running import RunningServiceMixin


class PausedAppRunningTests(RunningServiceMixin, TestCase):
    protocol = "http2"
    timeout = 60

    async def wait_for(self, what: Any, timeout: float = 20.0) -> None:
        deadline = self.reactor.seconds() + timeout
        while not what():
            if self.reactor.seconds() > deadline:
                raise AssertionError("timed out")
            await sleep(self.reactor, 0.05)

    @deferred_test
    async def test_everything_bad_device_token_pauses_and_publishes_nothing(self) -> None:
        await self.start_service()
        self.fake.server.bad_token_prefix = ""  # every token: 400 BadDeviceToken
        tokens = [token(i) for i in range(1, 31)]
        reply = await self.api.post(FAKE_APP, {"tokens": tokens, "alert": "x", "async": True})
        self.assertEqual(reply.code, 202, reply.raw)
        await self.wait_for(lambda: self.engine.problem(FAKE_APP) is not None)
        health = await self.api.call("GET", "/healthz")
        self.assertEqual(health.code, 503)
        self.assertEqual(health.json["status"], "unhealthy")
        app = health.json["apps"][FAKE_APP]
        self.assertEqual(app["paused"], "environment")
        self.assertIn("is `environment` right?", app["problem"])
        feed = await self.api.call("GET", f"/v1/apps/{FAKE_APP}/invalid-tokens")
        self.assertEqual(feed.json["tokens"], [])
        job = (await self.api.call("GET", f"/v1/jobs/{reply.json['job_id']}")).json
        self.assertEqual(job["counts"]["rejected"], 0)  # held back in the spool, not rejected
        text = (await self.api.call("GET", "/metrics")).raw.decode()
        self.assertEqual(metric(text, "txapns_app_paused", app=FAKE_APP, why="environment"), 1)
        refused = await self.api.post(FAKE_APP, {"token": token(99), "alert": "x"})
        self.assertEqual(refused.code, 503)

    @deferred_test
    async def test_refused_credential_pauses_and_keeps_the_work(self) -> None:
        await self.start_service()
        self.fake.server.wrong_environment_keys.add(self.fake.pki.token_key_id)
        reply = await self.api.post(
            FAKE_APP, {"tokens": [token(1), token(2), token(3)], "alert": "x", "async": True}
        )
        self.assertEqual(reply.code, 202, reply.raw)
        await self.wait_for(lambda: self.engine.problem(FAKE_APP) is not None)
        health = await self.api.call("GET", "/healthz")
        self.assertEqual(health.code, 503)
        app = health.json["apps"][FAKE_APP]
        self.assertEqual(app["paused"], "unavailable")
        self.assertIn("BadEnvironmentKeyIdInToken", app["problem"])
        self.assertEqual(app["client"]["breaker"], "open")
        job = (await self.api.call("GET", f"/v1/jobs/{reply.json['job_id']}")).json
        self.assertNotEqual(job["status"], "done")
        self.assertEqual(job["counts"]["rejected"], 0)
