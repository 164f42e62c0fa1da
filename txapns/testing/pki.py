"""Throwaway TLS material for tests, fakes and the demo.

:func:`make_test_pki` makes a private CA, a server certificate valid for ``localhost``, the
loopback addresses and every APNs host name, a client certificate shaped like the ones Apple
issues ("Apple Push Services: <topic>", the topic as UID, the development and production
extension OIDs), and an ES256 token-signing key like Apple's ``AuthKey_<key id>.p8``.

Keys are EC P-256 (quick to make). The material is for tests only: never trust this CA
outside them. The default instance is made once per process and shared.

:func:`server_tls_options` turns a :class:`TestPKI` into Twisted server TLS options for the
fake APNs servers.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import CertificateOptions, TLSVersion

from txapns.credentials import (
    APNS_DEVELOPMENT_OID,
    APNS_PRODUCTION_OID,
    pyopenssl_certificate,
    pyopenssl_private_key,
)

__all__ = [
    "APNS_HOSTNAMES",
    "DEFAULT_TOPIC",
    "TEST_PASSPHRASE",
    "TestPKI",
    "make_test_pki",
    "read_test_pki",
    "server_tls_options",
]

DEFAULT_TOPIC = "com.example.app"
TEST_PASSPHRASE = b"txapns-test-passphrase"

#: Every host name the server certificate is valid for, besides the loopback addresses.
APNS_HOSTNAMES: tuple[str, ...] = (
    "localhost",
    "gateway.push.apple.com",
    "gateway.sandbox.push.apple.com",
    "feedback.push.apple.com",
    "feedback.sandbox.push.apple.com",
    "api.push.apple.com",
    "api.sandbox.push.apple.com",
    "api-manage-broadcast.push.apple.com",
    "api-manage-broadcast.sandbox.push.apple.com",
)
_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))

# The DER encoding of ASN.1 NULL: the value Apple gives its APNs extensions.
_ASN1_NULL = b"\x05\x00"
_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True, kw_only=True)
class TestPKI:
    """PEM (and PKCS#12) material of one throwaway PKI.

    Key material is left out of ``repr`` so that a failing assertion never prints it.
    """

    __test__ = False  # not a pytest test class, despite the name

    ca_cert: bytes = field(repr=False)
    ca_key: bytes = field(repr=False)
    server_cert: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    client_cert: bytes = field(repr=False)
    client_key: bytes = field(repr=False)
    #: ``client_key`` encrypted (PKCS#8) with ``client_key_passphrase``.
    client_key_encrypted: bytes = field(repr=False)
    client_key_passphrase: bytes = field(repr=False, default=TEST_PASSPHRASE)
    #: PKCS#12 (DER) of the client certificate and key, encrypted with the same passphrase.
    client_p12: bytes = field(repr=False)
    #: Client certificate followed by its unencrypted key, in one PEM.
    client_bundle: bytes = field(repr=False)
    topic: str = DEFAULT_TOPIC
    #: Unencrypted PKCS#8 PEM of an EC P-256 key, like Apple's ``AuthKey_<key id>.p8``.
    token_key_p8: bytes = field(repr=False)
    token_key_id: str
    team_id: str
    token_public_key: bytes = field(repr=False)

    def write(self, directory: str | os.PathLike[str]) -> dict[str, str]:
        """Write the material as files in *directory* (made if missing).

        Returns a map from field name (``"ca_cert"``, ``"client_key"``, ``"token_key_p8"``…)
        to the path written. Files holding a private key are made readable by the owner
        only. The CA key is not written.
        """
        os.makedirs(directory, exist_ok=True)
        layout: list[tuple[str, str, bytes, bool]] = [
            ("ca_cert", "ca.pem", self.ca_cert, False),
            ("server_cert", "server.pem", self.server_cert, False),
            ("server_key", "server-key.pem", self.server_key, True),
            ("client_cert", "client.pem", self.client_cert, False),
            ("client_key", "client-key.pem", self.client_key, True),
            ("client_key_encrypted", "client-key-encrypted.pem", self.client_key_encrypted, True),
            ("client_p12", "client.p12", self.client_p12, True),
            ("client_bundle", "client-bundle.pem", self.client_bundle, True),
            ("token_key_p8", f"AuthKey_{self.token_key_id}.p8", self.token_key_p8, True),
            ("token_public_key", "token-pub.pem", self.token_public_key, False),
        ]
        written: dict[str, str] = {}
        for name, filename, data, private in layout:
            path = os.path.join(os.fspath(directory), filename)
            _write_file(path, data, 0o600 if private else 0o644)
            written[name] = path
        return written


def _write_file(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the file may have existed with another mode


def make_test_pki(
    topic: str = DEFAULT_TOPIC,
    *,
    expired_client: bool = False,
    ca_cert: bytes | None = None,
    ca_key: bytes | None = None,
) -> TestPKI:
    """Make a throwaway PKI whose client certificate is for *topic*.

    With the default arguments the same instance is returned for the whole process, so its
    cost is paid once per test run; any other arguments make fresh material (a new CA too).
    ``expired_client=True`` makes a client certificate that expired a day ago. With
    ``ca_cert`` and ``ca_key`` (PEM; RSA or EC) the server and client certificates are
    issued by that existing CA instead of a new one, so clients that already trust it need
    no change; the team id is then derived from that CA's public key (stable).
    """
    if ca_cert is not None or ca_key is not None:
        if ca_cert is None or ca_key is None:
            raise ValueError("an existing CA needs both its certificate and its key")
        key = serialization.load_pem_private_key(ca_key, password=None)
        cert = x509.load_pem_x509_certificate(ca_cert)
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ValueError("the CA key does not belong to the CA certificate")
        return _generate(topic, expired_client=expired_client, ca=(cert, key, ca_key))
    if topic == DEFAULT_TOPIC and not expired_client:
        return _default_pki()
    return _generate(topic, expired_client=expired_client)


def read_test_pki(directory: str | os.PathLike[str]) -> TestPKI:
    """The PKI that :meth:`TestPKI.write` wrote to *directory* (the CA key, never written,
    is left empty). The ids come back the same: they are derived from the keys."""
    d = os.fspath(directory)

    def read(name: str) -> bytes:
        with open(os.path.join(d, name), "rb") as f:
            return f.read()

    token_files = sorted(n for n in os.listdir(d) if n.startswith("AuthKey_") and n.endswith(".p8"))
    if len(token_files) != 1:
        raise ValueError(f"{d}: expected one AuthKey_<key id>.p8, found {len(token_files)}")
    token_key_p8 = read(token_files[0])
    token_key = serialization.load_pem_private_key(token_key_p8, password=None)
    ca_cert = read("ca.pem")
    client_cert = read("client.pem")
    uids = x509.load_pem_x509_certificate(client_cert).subject.get_attributes_for_oid(
        NameOID.USER_ID
    )
    topic = str(uids[0].value) if uids else DEFAULT_TOPIC
    return TestPKI(
        ca_cert=ca_cert,
        ca_key=b"",
        server_cert=read("server.pem"),
        server_key=read("server-key.pem"),
        client_cert=client_cert,
        client_key=read("client-key.pem"),
        client_key_encrypted=read("client-key-encrypted.pem"),
        client_p12=read("client.p12"),
        client_bundle=read("client-bundle.pem"),
        topic=topic,
        token_key_p8=token_key_p8,
        token_key_id=token_files[0][len("AuthKey_") : -len(".p8")],
        team_id=_ten_chars(x509.load_pem_x509_certificate(ca_cert).public_key()),
        token_public_key=token_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


@functools.cache
def _default_pki() -> TestPKI:
    return _generate(DEFAULT_TOPIC, expired_client=False)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ten_chars(key: Any) -> str:
    """A stable 10-character upper-case id (like Apple's key and team ids) for *key* (a
    private or public key)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b32encode(hashlib.sha256(der).digest()).decode("ascii")[:10]


def _generate(
    topic: str, *, expired_client: bool, ca: tuple[x509.Certificate, Any, bytes] | None = None
) -> TestPKI:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    new_ca_key, server_key, client_key, token_key = (_new_key() for _ in range(4))
    ca_key: Any = new_ca_key if ca is None else ca[1]
    team_id = _ten_chars(ca_key)

    if ca is None:
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "txapns test CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txapns tests"),
            ]
        )
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - 365 * _DAY)
            .not_valid_after(now + 3650 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        ca_key_pem = _pkcs8(new_ca_key)
    else:
        ca_cert, _, ca_key_pem = ca
        ca_name = ca_cert.subject
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())

    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 730 * _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in APNS_HOSTNAMES]
                + [x509.IPAddress(address) for address in _LOOPBACK]
            ),
            critical=False,
        )
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    if expired_client:
        client_from, client_until = now - 30 * _DAY, now - _DAY
    else:
        client_from, client_until = now - _DAY, now + 365 * _DAY
    client_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.USER_ID, topic),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {topic}"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, team_id),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txapns tests"),
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(client_from)
        .not_valid_after(client_until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.UnrecognizedExtension(APNS_DEVELOPMENT_OID, _ASN1_NULL), critical=False)
        .add_extension(x509.UnrecognizedExtension(APNS_PRODUCTION_OID, _ASN1_NULL), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    client_cert_pem = client_cert.public_bytes(pem)
    client_key_pem = _pkcs8(client_key)
    return TestPKI(
        ca_cert=ca_cert.public_bytes(pem),
        ca_key=ca_key_pem,
        server_cert=server_cert.public_bytes(pem),
        server_key=_pkcs8(server_key),
        client_cert=client_cert_pem,
        client_key=client_key_pem,
        client_key_encrypted=client_key.private_bytes(
            pem,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(TEST_PASSPHRASE),
        ),
        client_key_passphrase=TEST_PASSPHRASE,
        client_p12=pkcs12.serialize_key_and_certificates(
            name=f"Apple Push Services: {topic}".encode(),
            key=client_key,
            cert=client_cert,
            cas=None,
            encryption_algorithm=serialization.BestAvailableEncryption(TEST_PASSPHRASE),
        ),
        client_bundle=client_cert_pem + client_key_pem,
        topic=topic,
        token_key_p8=_pkcs8(token_key),
        token_key_id=_ten_chars(token_key),
        team_id=team_id,
        token_public_key=token_key.public_key().public_bytes(
            pem, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def server_tls_options(
    pki: TestPKI, *, require_client_cert: bool = True, alpn: Sequence[bytes] = ()
) -> CertificateOptions:
    """Server-side TLS options for a fake APNs server using *pki*'s server certificate.

    The server always asks for a client certificate and verifies any it gets against the test
    CA (expiry included); with ``require_client_cert`` (the default, like the certificate-auth
    APNs hosts) a client without one fails the handshake. *alpn* lists the protocols offered,
    e.g. ``[b"h2"]``. TLS 1.2 is the minimum.
    """
    server_cert = x509.load_pem_x509_certificate(pki.server_cert)
    server_key = serialization.load_pem_private_key(pki.server_key, password=None)
    ca_certs = x509.load_pem_x509_certificates(pki.ca_cert)
    return CertificateOptions(
        privateKey=pyopenssl_private_key(server_key),
        certificate=pyopenssl_certificate(server_cert),
        verify=True,
        caCerts=[pyopenssl_certificate(c) for c in ca_certs],
        requireCertificate=require_client_cert,
        acceptableProtocols=list(alpn) or None,
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
