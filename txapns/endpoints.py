"""Client endpoints for APNs: TLS with the server certificate verified for Apple's host name,
optionally through an HTTP CONNECT proxy, and the table of Apple's hosts.

:func:`tls_endpoint` is what both clients connect with when built from a service
configuration; use it (or :func:`apns_endpoint`, which fills in Apple's host) to build
:class:`~txapns.http2.HTTP2Client` or :class:`~txapns.binary.BinaryClient` in an application::

    endpoint = apns_endpoint(reactor, "http2", "production", alpn=(b"h2",))
    client = HTTP2Client(reactor, endpoint, token=ProviderToken(key, key_id, team_id))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from .core.hosts import APNS_HOSTS, FEEDBACK_HOSTS, MANAGEMENT_HOSTS, apns_host
from .core.proxy import EnvironmentProxy, ProxyURL, parse_proxy_url
from .credentials import ClientCertificate, client_tls_options

__all__ = [
    "APNS_HOSTS",
    "FEEDBACK_HOSTS",
    "MANAGEMENT_HOSTS",
    "LateEndpoint",
    "apns_endpoint",
    "apns_host",
    "tls_endpoint",
]

log = Logger()


@implementer(IStreamClientEndpoint)
class LateEndpoint:
    """An endpoint whose target is known only when it connects (an embedded fake's port):
    ``resolve()`` is asked for the real endpoint at each ``connect``."""

    def __init__(self, resolve: Callable[[], IStreamClientEndpoint]) -> None:
        self._resolve = resolve

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return self._resolve().connect(protocolFactory)


def tls_endpoint(
    reactor: Any,
    hostname: str,
    address: Callable[[], tuple[str, int]],
    *,
    certificate: ClientCertificate | None,
    ca_pem: bytes | None,
    alpn: tuple[bytes, ...] = (),
    proxy: ProxyURL | str | None = None,
    proxy_from_env: bool = False,
    environ: Mapping[str, str] | None = None,
) -> IStreamClientEndpoint:
    """A TLS client endpoint verifying ``hostname``; ``address`` is asked at each connect.

    With ``proxy`` (``http://[user:password@]host:port``) it connects through that HTTP
    CONNECT proxy, asking it for a tunnel to ``address()``; TLS runs through the tunnel and
    still verifies ``hostname``, never the proxy. Without it, ``proxy_from_env`` takes the
    proxy from ``HTTPS_PROXY``/``NO_PROXY`` in ``environ`` (``os.environ`` by default), read
    now and applied to each connection's target
    (:class:`~txapns.core.proxy.EnvironmentProxy`)."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    options = client_tls_options(hostname, certificate=certificate, ca_pem=ca_pem, alpn=alpn)
    fixed = parse_proxy_url(proxy) if isinstance(proxy, str) else proxy
    env = None
    if fixed is None and proxy_from_env:
        env = EnvironmentProxy.from_environ(os.environ if environ is None else environ)
        if env.proxy is not None:
            log.info(
                "Connections to {hostname} go through the proxy {proxy} from {variable} "
                "(no_proxy: {no_proxy!r})",
                hostname=hostname,
                proxy=env.proxy.redacted(),
                variable=env.variable,
                no_proxy=env.no_proxy,
            )

    def resolve() -> IStreamClientEndpoint:
        host, port = address()
        via = fixed if env is None else env.for_target(host, port)
        if via is None:
            return wrapClientTLS(options, HostnameEndpoint(reactor, host, port))
        from .proxy import HTTPConnectEndpoint

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


def apns_endpoint(
    reactor: Any,
    service: str = "http2",
    environment: str = "production",
    *,
    certificate: ClientCertificate | None = None,
    ca_pem: bytes | None = None,
    alpn: tuple[bytes, ...] | None = None,
    proxy: ProxyURL | str | None = None,
) -> IStreamClientEndpoint:
    """:func:`tls_endpoint` to Apple's host of ``service`` (``"http2"``, ``"binary"``,
    ``"feedback"`` or ``"manage"``, see :func:`apns_host`) in ``environment``, verifying
    that host name; ALPN ``h2`` for the HTTP/2 services unless ``alpn`` says otherwise."""
    host, port = apns_host(service, environment)
    if alpn is None:
        alpn = (b"h2",) if service in ("http2", "manage") else ()
    return tls_endpoint(
        reactor,
        host,
        lambda: (host, port),
        certificate=certificate,
        ca_pem=ca_pem,
        alpn=alpn,
        proxy=proxy,
    )
