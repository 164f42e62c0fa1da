"""Send notifications with BinaryClient to a fake gateway on loopback, over TLS.

Run it with ``python docs/examples/binary_send.py``. Against Apple's (or a compatible)
gateway, replace the fake and the test PKI by your certificate and the real host name.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.task import react

from txapns import Notification, build_payload
from txapns.binary import BinaryClient
from txapns.core.binary_channel import ChannelConfig
from txapns.credentials import ClientCertificate, client_tls_options
from txapns.testing.binary_gateway import FakeGateway, listen_gateway
from txapns.testing.pki import make_test_pki, server_tls_options


async def main(reactor: Any) -> None:
    pki = make_test_pki()
    gateway = FakeGateway(reactor)
    gateway.reject_tokens_with_prefix(b"\xff")  # status 8 (InvalidToken) for these
    port = listen_gateway(reactor, gateway, tls_options=server_tls_options(pki))

    certificate = ClientCertificate.from_pem(pki.client_cert, pki.client_key)
    tls = client_tls_options("gateway.push.apple.com", certificate=certificate, ca_pem=pki.ca_cert)
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, "127.0.0.1", port.getHost().port))
    client = BinaryClient(reactor, endpoint, config=ChannelConfig(quiet=0.5))
    client.start()

    payload = build_payload("Hello", badge=1, sound="default")
    tokens = ["01" * 32, "ff" * 32, "02" * 32]
    # send() validates at once (raising ValidationError) and returns a Deferred that
    # fires exactly once with a Result, never with a failure.
    sent = [client.send(Notification.create(token, payload, priority=10)) for token in tokens]
    results = await gatherResults(sent)
    for result in results:
        print(result.notification.short_token, result)

    await client.stop()
    await port.stopListening()
    gateway.stop()


if __name__ == "__main__":
    react(main)
