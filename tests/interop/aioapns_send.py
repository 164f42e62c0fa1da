"""Sends N notifications with aioapns (asyncio + h2) to a fake APNs; prints one JSON line
``{"sent": n, "failed": n, "reasons": {reason: count}}``.

    python aioapns_send.py '{"port": …, "ca": FILE, "n": 1000, "topic": …,
                             "token": {"key": FILE, "key_id": …, "team_id": …} | null,
                             "cert_bundle": FILE}'

aioapns has no host/port option: its protocol classes' APNS_SERVER/APNS_PORT are set.
"""

import asyncio
import json
import logging
import ssl
import sys

from aioapns import APNs, NotificationRequest, PushType
from aioapns import connection as aioapns_connection


async def main(a: dict) -> None:
    for cls in (
        aioapns_connection.APNsProductionClientProtocol,
        aioapns_connection.APNsDevelopmentClientProtocol,
    ):
        cls.APNS_SERVER = "127.0.0.1"
        cls.APNS_PORT = a["port"]
    context = ssl.create_default_context(cafile=a["ca"])
    if a.get("token"):
        with open(a["token"]["key"]) as f:
            key = f.read()
        apns = APNs(
            key=key,
            key_id=a["token"]["key_id"],
            team_id=a["token"]["team_id"],
            topic=a["topic"],
            use_sandbox=True,
            ssl_context=context,
        )
    else:
        apns = APNs(
            client_cert=a["cert_bundle"], topic=a["topic"], use_sandbox=True, ssl_context=context
        )
    requests = [
        NotificationRequest(
            device_token=f"{i:064x}", message={"aps": {"alert": f"n{i}"}}, push_type=PushType.ALERT
        )
        for i in range(a["n"])
    ]
    responses = await asyncio.wait_for(
        asyncio.gather(*(apns.send_notification(r) for r in requests)), a.get("timeout", 60)
    )
    reasons: dict[str, int] = {}
    sent = 0
    for r in responses:
        if r.is_successful:
            sent += 1
        else:
            reasons[str(r.description)] = reasons.get(str(r.description), 0) + 1
    print(json.dumps({"sent": sent, "failed": len(responses) - sent, "reasons": reasons}))


if __name__ == "__main__":
    logging.getLogger("aioapns").setLevel(logging.CRITICAL)
    asyncio.run(main(json.loads(sys.argv[1])))
