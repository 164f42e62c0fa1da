"""Send notifications from ``async def`` with txapns.aio, to the fake HTTP/2 APNs on loopback.

Run it with ``python docs/examples/asyncio_send.py``. Against Apple, drop the fake and the
test PKI: load your ``AuthKey_<KEYID>.p8``, connect to ``api.push.apple.com`` (or
``api.sandbox.push.apple.com``) port 443 and leave ``ca_pem`` out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from txapns import Notification, build_payload
from txapns.aio import AsyncClient, running_reactor
from txapns.credentials import ProviderToken, client_tls_options
from txapns.http2 import HTTP2Client
from txapns.testing.http2_server import FakeAPNsServer, listen_http2
from txapns.testing.pki import make_test_pki, server_tls_options


async def main() -> None:
    # Twisted's asyncio reactor on this event loop, started before anything else of Twisted
    # is used, and shut down (its thread pool) on the way out: the loop keeps running.
    async with running_reactor() as reactor:
        print("reactor:", type(reactor).__name__)
        await send(reactor)


async def send(reactor: Any) -> None:

    # The fake APNs (TLS on a free loopback port); tokens starting with ff are rejected.
    pki = make_test_pki()
    server = FakeAPNsServer(clock=reactor, sandbox=True)
    server.add_token_key(pki.token_key_id, pki.team_id, pki.token_public_key)
    server.bad_token_prefix = "ff"
    tls_server = server_tls_options(pki, require_client_cert=False, alpn=[b"h2"])
    port = listen_http2(reactor, server, tls_options=tls_server)

    host = "api.sandbox.push.apple.com"
    tls = client_tls_options(host, ca_pem=pki.ca_cert, alpn=[b"h2"])
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, "127.0.0.1", port.getHost().port))
    http2 = HTTP2Client(
        reactor,
        endpoint,
        authority=host,
        bundle_id=pki.topic,
        token=ProviderToken.from_p8(pki.token_key_p8, pki.token_key_id, pki.team_id),
    )

    payload = build_payload("Hello", badge=1)
    async with AsyncClient(http2) as client:  # started here, stopped on the way out
        for token in ("01" * 32, "ff" * 32):
            result = await client.send(Notification.create(token, payload))
            print(result.notification.short_token, result)  # e.g. "01010101… accepted 200"

        # Cancelled before the client wrote it: withdrawn, never sent.
        task = asyncio.create_task(client.send(Notification.create("02" * 32, payload)))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError as e:
            print(e)

    # A Deferred is awaited in asyncio through a Future.
    await port.stopListening().asFuture(asyncio.get_running_loop())


if __name__ == "__main__":
    asyncio.run(main())
