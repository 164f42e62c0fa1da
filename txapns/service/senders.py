"""Building one client (a :class:`~txapns.interfaces.Sender`) per configured app, and the
other clients an app's configuration describes (:func:`http2_client_for_app`,
:func:`channel_manager_for_app`): the service's wiring of the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.hosts import MANAGEMENT_HOSTS
from ..core.jwt import ProviderToken
from ..credentials import ClientCertificate
from ..endpoints import tls_endpoint
from ..interfaces import Sender
from .config import AppConfig, CertificateCredentials, ConfigError, TokenCredentials

if TYPE_CHECKING:
    from ..broadcast import ChannelManager
    from ..http2 import HTTP2Client


def load_certificate(creds: CertificateCredentials) -> ClientCertificate:
    passphrase = creds.passphrase()
    if creds.p12_file is not None:
        return ClientCertificate.from_pkcs12(creds.p12_file.read_bytes(), passphrase)
    if creds.cert_file is None:
        raise ConfigError("certificate authentication needs cert_file or p12_file")
    return ClientCertificate.from_files(creds.cert_file, creds.key_file, passphrase)


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
            proxy_from_env=app.proxy_from_env,
        )
        return BinaryClient(
            reactor,
            endpoint,
            hold_when_unavailable=hold_when_unavailable,
            max_queue_time=app.max_queue_time,
        )
    if app.protocol == "http2":
        return http2_client_for_app(
            app,
            reactor,
            address=address,
            hostname=hostname,
            hold_when_unavailable=hold_when_unavailable,
        )
    raise ConfigError(f"app {app.name!r}: protocol {app.protocol!r} is not available yet")


# --- the library's clients for a configured app ---------------------------------------------


def http2_client_for_app(
    app: AppConfig,
    reactor: Any,
    *,
    address: Callable[[], tuple[str, int]] | None = None,
    hostname: str | None = None,
    **options: Any,
) -> HTTP2Client:
    """The :class:`~txapns.http2.HTTP2Client` for a configured app (token auth from its
    ``.p8`` file, or its certificate), over TLS with ALPN ``h2`` to ``app.endpoint()`` — or
    to ``address()`` while verifying the server certificate for ``hostname``; through the
    HTTP CONNECT proxy ``app.proxy`` when one is configured. ``options`` go to the client."""
    from ..http2 import HTTP2Client

    if app.protocol != "http2":
        raise ConfigError(f"app {app.name!r}: protocol {app.protocol!r} is not http2")
    host, port = app.endpoint()
    name = hostname or host
    ca_pem = app.ca_file.read_bytes() if app.ca_file is not None else None
    creds = app.credentials
    token = None
    certificate = None
    if isinstance(creds, TokenCredentials):
        # Token auth: the .p8 key (ES256); certificate auth: PEM or PKCS#12.
        token = ProviderToken.from_p8(
            creds.key_file.read_bytes(),
            creds.key_id,
            creds.team_id,
            key_file_name=str(creds.key_file),
        )
    else:
        certificate = load_certificate(creds)
    endpoint = tls_endpoint(
        reactor,
        name,
        address or (lambda: (host, port)),
        certificate=certificate,
        ca_pem=ca_pem,
        alpn=(b"h2",),
        proxy=app.proxy,
        proxy_from_env=app.proxy_from_env,
    )
    options.setdefault("max_queue_time", app.max_queue_time)
    return HTTP2Client(
        reactor,
        endpoint,
        authority=name,
        bundle_id=app.bundle_id,
        token=token,
        name=app.name,
        **options,
    )


def channel_manager_for_app(
    app: AppConfig,
    reactor: Any,
    *,
    address: Callable[[], tuple[str, int]] | None = None,
    hostname: str | None = None,
    **options: Any,
) -> ChannelManager:
    """The :class:`~txapns.broadcast.ChannelManager` for a configured app: its credential
    and ``ca_file``, over TLS with ALPN ``h2`` to the management host of its environment —
    or to ``address()`` while verifying the server certificate for ``hostname``. ``options``
    go to the :class:`~txapns.http2.HTTP2Client` (``min_connections`` defaults to 0)."""
    from ..broadcast import ChannelManager

    host, port = MANAGEMENT_HOSTS[app.environment]
    options.setdefault("min_connections", 0)
    client = http2_client_for_app(
        app,
        reactor,
        address=address or (lambda: (host, port)),
        hostname=hostname or host,
        **options,
    )
    client.name = f"{app.name} channels"
    return ChannelManager(client)
