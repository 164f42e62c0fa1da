"""Building one client (a :class:`~txapns.interfaces.Sender`) per configured app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from ..core.proxy import ProxyURL, parse_proxy_url
from ..credentials import ClientCertificate, client_tls_options
from ..interfaces import Sender
from .config import AppConfig, CertificateCredentials, ConfigError


@implementer(IStreamClientEndpoint)
class LateEndpoint:
    """An endpoint whose target is known only when it connects (an embedded fake's port)."""

    def __init__(self, resolve: Callable[[], IStreamClientEndpoint]) -> None:
        self._resolve = resolve

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return self._resolve().connect(protocolFactory)


def load_certificate(creds: CertificateCredentials) -> ClientCertificate:
    passphrase = creds.passphrase()
    if creds.p12_file is not None:
        return ClientCertificate.from_pkcs12(creds.p12_file.read_bytes(), passphrase)
    if creds.cert_file is None:
        raise ConfigError("certificate authentication needs cert_file or p12_file")
    return ClientCertificate.from_files(creds.cert_file, creds.key_file, passphrase)


def tls_endpoint(
    reactor: Any,
    hostname: str,
    address: Callable[[], tuple[str, int]],
    *,
    certificate: ClientCertificate | None,
    ca_pem: bytes | None,
    alpn: tuple[bytes, ...] = (),
    proxy: ProxyURL | str | None = None,
) -> IStreamClientEndpoint:
    """A TLS client endpoint verifying ``hostname``; ``address`` is asked at each connect.

    With ``proxy`` (``http://[user:password@]host:port``) it connects through that HTTP
    CONNECT proxy, asking it for a tunnel to ``address()``; TLS runs through the tunnel and
    still verifies ``hostname``, never the proxy."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    options = client_tls_options(hostname, certificate=certificate, ca_pem=ca_pem, alpn=alpn)
    via = parse_proxy_url(proxy) if isinstance(proxy, str) else proxy

    def resolve() -> IStreamClientEndpoint:
        host, port = address()
        if via is None:
            return wrapClientTLS(options, HostnameEndpoint(reactor, host, port))
        from ..proxy import HTTPConnectEndpoint

        tunnel = HTTPConnectEndpoint(
            HostnameEndpoint(reactor, via.host, via.port),
            host,
            port,
            auth=via.credentials,
            clock=reactor,
            proxy_name=via.redacted(),
        )
        return wrapClientTLS(options, tunnel)

    return LateEndpoint(resolve)


def make_sender(
    app: AppConfig,
    reactor: Any,
    *,
    address: Callable[[], tuple[str, int]] | None = None,
    hostname: str | None = None,
    hold_when_unavailable: bool = False,
) -> Sender:
    """A client for ``app``: binary or HTTP/2, as configured. ``address`` overrides where to
    connect (the embedded fake); the server certificate is still verified for ``hostname``.
    ``hold_when_unavailable``: the client holds, rather than rejects, what it has while the
    credential is refused or TLS keeps failing (the service, which keeps its work in the
    spool and pauses the app; a one-off command wants the rejection)."""
    from ..binary import BinaryClient

    host, port = app.endpoint()
    ca_pem = app.ca_file.read_bytes() if app.ca_file is not None else None
    where = address or (lambda: (host, port))
    if app.protocol == "binary":
        if not isinstance(app.credentials, CertificateCredentials):
            raise ConfigError(f"app {app.name!r}: the binary protocol needs a certificate")
        endpoint = tls_endpoint(
            reactor,
            hostname or host,
            where,
            certificate=load_certificate(app.credentials),
            ca_pem=ca_pem,
            proxy=app.proxy,
        )
        return BinaryClient(
            reactor,
            endpoint,
            hold_when_unavailable=hold_when_unavailable,
            max_queue_time=app.max_queue_time,
        )
    if app.protocol == "http2":
        from ..http2 import HTTP2Client

        # Token auth: the .p8 key (ES256); certificate auth: PEM or PKCS#12. TLS with ALPN h2.
        return HTTP2Client.for_app(
            app,
            reactor,
            address=address,
            hostname=hostname,
            hold_when_unavailable=hold_when_unavailable,
        )
    raise ConfigError(f"app {app.name!r}: protocol {app.protocol!r} is not available yet")
