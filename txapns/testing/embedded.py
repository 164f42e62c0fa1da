"""The embedded fake APNs of ``twistd apns --fake`` and ``txapns send --fake``.

:class:`EmbeddedAPNs` is a service that runs a fake APNs (HTTP/2, or a binary gateway with its
feedback service) on an ephemeral loopback port with a throwaway PKI; the service's
:func:`~txapns.service.application.embedded_app` is the configuration of the one app that
sends to it (the fakes know nothing of the service). Tokens starting with ``ff`` are rejected
as invalid, so a demo shows a rejection with its reason.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service

__all__ = ["FAKE_APP", "FAKE_BUNDLE", "EmbeddedAPNs"]

#: The name and bundle id of the app that sends to the embedded fake.
FAKE_APP = "demo"
FAKE_BUNDLE = "com.example.app"


class EmbeddedAPNs(Service):
    """The embedded fake APNs: a TLS listener on loopback, started before the clients."""

    def __init__(self, reactor: Any, protocol: str) -> None:
        from .pki import make_test_pki

        self.reactor = reactor
        self.protocol = protocol
        self.pki = make_test_pki(FAKE_BUNDLE)
        self.port: Any = None
        self.server: Any = None
        #: The binary fake's feedback service (a FakeFeedbackService) and its port.
        self.feedback: Any = None
        self.feedback_port: Any = None

    def address(self) -> tuple[str, int]:
        if self.port is None:
            raise RuntimeError("the embedded fake APNs is not listening")
        return ("127.0.0.1", self.port.getHost().port)

    def feedback_address(self) -> tuple[str, int]:
        if self.feedback_port is None:
            raise RuntimeError("the embedded fake feedback service is not listening")
        return ("127.0.0.1", self.feedback_port.getHost().port)

    def startService(self) -> None:
        from .pki import server_tls_options

        Service.startService(self)
        if self.protocol == "binary":
            from .binary_gateway import (
                FakeFeedbackService,
                FakeGateway,
                listen_feedback,
                listen_gateway,
            )

            gateway = FakeGateway(self.reactor)
            # Tokens starting with ff are rejected as invalid, like the shared bench mocks.
            gateway.reject_tokens_with_prefix(b"\xff")
            self.server = gateway
            self.port = listen_gateway(
                self.reactor, gateway, tls_options=server_tls_options(self.pki)
            )
            self.feedback = FakeFeedbackService(self.reactor)
            self.feedback_port = listen_feedback(
                self.reactor, self.feedback, tls_options=server_tls_options(self.pki)
            )
        else:
            from .http2_server import FakeAPNsServer, listen_http2

            server = FakeAPNsServer(clock=self.reactor, sandbox=True)
            server.add_token_key(self.pki.token_key_id, self.pki.team_id, self.pki.token_public_key)
            server.bad_token_prefix = "ff"  # as the binary fake: the demo shows a rejection
            self.server = server
            self.port = listen_http2(
                self.reactor,
                server,
                tls_options=server_tls_options(self.pki, require_client_cert=False, alpn=[b"h2"]),
            )

    def stopService(self) -> Any:
        Service.stopService(self)
        from twisted.internet.defer import gatherResults, maybeDeferred

        ports = [p for p in (self.port, self.feedback_port) if p is not None]
        return gatherResults([maybeDeferred(p.stopListening) for p in ports]) if ports else None
