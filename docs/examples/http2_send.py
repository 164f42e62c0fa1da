"""Send notifications with HTTP2Client (token auth) to the fake HTTP/2 APNs on loopback.

Run it with ``python docs/examples/http2_send.py``. Against Apple, drop the fake and the
test PKI: load your ``AuthKey_<KEYID>.p8``, connect to ``api.push.apple.com`` (or
``api.sandbox.push.apple.com``) port 443 and leave ``ca_pem`` out.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.task import react

from txapns import Notification, build_payload
from txapns.credentials import ProviderToken, client_tls_options
from txapns.http2 import HTTP2Client
from txapns.testing.http2_server import FakeAPNsServer, listen_http2
from txapns.testing.pki import make_test_pki, server_tls_options


async def main(reactor: Any) -> None:
    pki = make_test_pki()
    server = FakeAPNsServer(clock=reactor, sandbox=True)
    server.add_token_key(pki.token_key_id, pki.team_id, pki.token_public_key)
    server.unregistered_tokens["ff" * 32] = 1_700_000_000_000  # 410, timestamp in ms
    tls_server = server_tls_options(pki, require_client_cert=False, alpn=[b"h2"])
    port = listen_http2(reactor, server, tls_options=tls_server)

    host = "api.sandbox.push.apple.com"
    tls = client_tls_options(host, ca_pem=pki.ca_cert, alpn=[b"h2"])
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, "127.0.0.1", port.getHost().port))
    client = HTTP2Client(
        reactor,
        endpoint,
        authority=host,
        bundle_id=pki.topic,  # the default apns-topic
        token=ProviderToken.from_p8(pki.token_key_p8, pki.token_key_id, pki.team_id),
    )
    client.start()

    payload = build_payload("Hello", badge=1)
    tokens = ["01" * 32, "ff" * 32, "02" * 32]
    results = await gatherResults([client.send(Notification.create(t, payload)) for t in tokens])
    for result in results:
        print(result.notification.short_token, result, result.apns_id, result.timestamp)

    await client.stop()
    await port.stopListening()


if __name__ == "__main__":
    react(main)
