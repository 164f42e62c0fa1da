"""A job resumed after a crash, as the HTTP API reports it (issue 13).

Which notifications may be duplicates is only known per result: the ones that were in flight
when the previous run died were re-sent and may have reached the device twice; the others were
sent once. This is the fast, in-process counterpart of the kill -9 test in
``test_service_crash.py``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from txapns.service.api import Limits, make_site
from txapns.service.engine import Engine, EngineApp, Template
from txapns.service.spool import OutcomeRecord, Spool, SpoolStore, inline_runner
from txapns.service.testing import FakeSender

from .helpers import deferred_test, temp_dir, token
from .helpers_api import BUNDLE, KEY, Collect, Reply, responder

ALERT = Template(payload={"aps": {"alert": "x"}})


class ResumedJobApiTests(TestCase):
    async def get(self, path: str) -> Reply:
        agent = Agent(self.reactor)
        response = await agent.request(
            b"GET", (self.base + path).encode(), Headers({"Authorization": [b"Bearer " + KEY]})
        )
        done: Deferred[bytes] = Deferred()
        response.deliverBody(Collect(done))
        return Reply(response, await done)

    def start(self, store: SpoolStore) -> Engine:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.sender = FakeSender(auto=responder, clock=reactor)  # type: ignore[arg-type]
        engine = Engine(
            {"shop": EngineApp(self.sender, bundle_id=BUNDLE)},
            Spool(store, reactor, inline_runner),  # type: ignore[arg-type]
            reactor,  # type: ignore[arg-type]
            purge_interval=0,
            drain_timeout=1,
        )
        site = make_site(engine, KEY, Limits())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        return engine

    @deferred_test
    async def test_only_the_resumed_in_flight_results_may_be_duplicates(self) -> None:
        store = SpoolStore(temp_dir(self) / "spool.db")
        self.addCleanup(store.close)
        # What a previous run left: 4 stored; 0 and 2 were in flight when it died, 1 had its
        # outcome recorded, 3 was still queued.
        engine = self.start(store)
        ns = engine.prepare("shop", ALERT, [token(i) for i in range(4)])
        stored = store.add_job("shop", ns, now=1)
        store.mark_inflight(stored.ids[:3], now=2)
        store.record_outcomes(
            [OutcomeRecord(stored.ids[1], stored.job_id, "shop", token(1), "accepted")], now=3
        )
        await engine.start()
        self.addCleanup(engine.stop)
        await engine.wait(stored.job_id)
        reply = await self.get(f"/v1/jobs/{stored.job_id}")
        self.assertEqual(reply.code, 200, reply.raw)
        job = reply.json
        self.assertEqual(job["status"], "done")
        self.assertEqual(
            [(r["token"], r["outcome"], r["may_duplicate"]) for r in job["results"]],
            [
                (token(0), "accepted", True),
                (token(1), "accepted", False),
                (token(2), "accepted", True),
                (token(3), "accepted", False),
            ],
        )
        self.assertEqual(job["may_duplicate"], 2)
        # Re-sent with the same apns-id (APNs' duplicate detection keys on it).
        self.assertEqual([n.token_hex for n in self.sender.sent], [token(0), token(2), token(3)])
        self.assertEqual(self.sender.sent[0].apns_id, ns[0].apns_id)
