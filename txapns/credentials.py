"""Client TLS credentials and options: where txapns meets Twisted's TLS and pyOpenSSL.

* :class:`ClientCertificate` loads an APNs provider certificate and its key from PEM (separate
  files, one combined bundle, encrypted keys) or PKCS#12, and reads what matters about it: the
  topic it is for, the environments it may use, when it expires.
* :func:`client_tls_options` makes the options to connect to APNs. The server certificate and
  the host name are always verified; there is no switch to turn that off. Tests pass their own
  CA with ``ca_pem`` instead.
* :func:`classify_tls_failure` and :func:`as_connection_error` tell a TLS failure (a bad
  certificate, a failed handshake: retrying will not help) from a plain connection failure.

Errors about the credential itself are :class:`~txapns.core.errors.CredentialError`; their
messages never contain key material.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast

import service_identity
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import error as net_error
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure

from txapns.core.errors import ConnectionFailedError, CredentialError, TLSFailureError
from txapns.core.jwt import ProviderToken

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

#: :class:`~txapns.core.jwt.ProviderToken`, the credential of token authentication, is
#: importable from here with the certificate's :class:`ClientCertificate`.
__all__ = [
    "APNS_DEVELOPMENT_OID",
    "APNS_PRODUCTION_OID",
    "DEVELOPMENT",
    "PRODUCTION",
    "ClientCertificate",
    "ClientPrivateKey",
    "FailureKind",
    "ProviderToken",
    "as_connection_error",
    "classify_tls_failure",
    "client_tls_options",
    "is_tls_failure",
    "pyopenssl_certificate",
    "pyopenssl_private_key",
]

#: Extension Apple puts in certificates allowed on the development (sandbox) environment.
APNS_DEVELOPMENT_OID: Final = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
#: Extension Apple puts in certificates allowed on the production environment.
APNS_PRODUCTION_OID: Final = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")
DEVELOPMENT: Final = "development"
PRODUCTION: Final = "production"
_ENVIRONMENT_OIDS: Final = {APNS_DEVELOPMENT_OID: DEVELOPMENT, APNS_PRODUCTION_OID: PRODUCTION}

#: Key types a TLS client certificate can use.
ClientPrivateKey: TypeAlias = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
_CLIENT_KEY_TYPES: Final = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

_PEM_BLOCK: Final = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL
)
_CERTIFICATE_LABEL: Final = b"CERTIFICATE"
_KEY_LABELS: Final = frozenset(
    {
        b"PRIVATE KEY",
        b"ENCRYPTED PRIVATE KEY",
        b"RSA PRIVATE KEY",
        b"EC PRIVATE KEY",
        b"DSA PRIVATE KEY",
    }
)


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(label, block)`` pairs of every PEM block in *data*, in order."""
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def _load_certificates(blocks: Sequence[bytes], what: str) -> list[x509.Certificate]:
    certificates = []
    for block in blocks:
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            raise CredentialError(
                f"{what} holds a PEM block that is not a valid certificate"
            ) from None
    return certificates


def _load_private_key(label: bytes, block: bytes, passphrase: bytes | None) -> ClientPrivateKey:
    """Load one PEM private key. Messages say what is wrong, never what the key is."""
    encrypted = label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block
    if encrypted and passphrase is None:
        raise CredentialError("the private key is encrypted: a passphrase is needed")
    try:
        # A passphrase given for a key that is not encrypted is ignored.
        key = serialization.load_pem_private_key(block, password=passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise CredentialError(
                "cannot decrypt the private key: the passphrase is wrong"
            ) from None
        raise CredentialError("the private key is not valid PEM") from None
    except (TypeError, UnsupportedAlgorithm):
        raise CredentialError("the private key is of an unsupported format or algorithm") from None
    return _check_key_type(key)


def _check_key_type(key: PrivateKeyTypes) -> ClientPrivateKey:
    if not isinstance(key, _CLIENT_KEY_TYPES):
        raise CredentialError(
            f"a {type(key).__name__} cannot sign a TLS handshake; use an RSA or EC key"
        )
    return key


def _public_der(key: ClientPrivateKey | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _matches(key: ClientPrivateKey, certificate: x509.Certificate) -> bool:
    try:
        return _public_der(key) == _public_der(certificate)
    except (ValueError, UnsupportedAlgorithm):
        return False


def pyopenssl_certificate(certificate: x509.Certificate) -> crypto.X509:
    """The pyOpenSSL form of a ``cryptography`` certificate."""
    return crypto.X509.from_cryptography(certificate)


def pyopenssl_private_key(key: PrivateKeyTypes) -> crypto.PKey:
    """The pyOpenSSL form of a ``cryptography`` private key (RSA, EC, Ed25519 or Ed448)."""
    # The types-pyOpenSSL stubs only list RSA and DSA keys; pyOpenSSL itself takes more.
    return crypto.PKey.from_cryptography_key(cast(Any, _check_key_type(key)))


@dataclass(frozen=True)
class ClientCertificate:
    """An APNs provider (client) certificate with its private key.

    Build it with :meth:`from_pem`, :meth:`from_files` or :meth:`from_pkcs12`. The key never
    appears in ``repr`` and does not take part in equality (the certificate identifies it).
    ``chain`` holds any intermediate certificates that came with it; they are sent in the
    handshake after the certificate.
    """

    certificate: x509.Certificate
    private_key: ClientPrivateKey = field(repr=False, compare=False)
    chain: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        _check_key_type(self.private_key)
        if not _matches(self.private_key, self.certificate):
            raise CredentialError("the private key does not belong to the certificate")

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pem(
        cls, cert_pem: bytes, key_pem: bytes | None = None, passphrase: bytes | None = None
    ) -> ClientCertificate:
        """Load from PEM.

        *cert_pem* holds the certificate, optionally followed by intermediates and, when
        *key_pem* is not given, by the private key (a combined bundle). The certificate the
        key belongs to is the client certificate, wherever it is in the bundle; the others
        form the chain. An encrypted key (PKCS#8 or legacy OpenSSL) needs *passphrase*.
        """
        blocks = _pem_blocks(cert_pem)
        certificates = _load_certificates(
            [block for label, block in blocks if label == _CERTIFICATE_LABEL], "the certificate PEM"
        )
        if not certificates:
            raise CredentialError("no certificate found in the certificate PEM")
        if key_pem is None:
            keys = [(label, block) for label, block in blocks if label in _KEY_LABELS]
            where = "the certificate PEM (pass the key separately, or append it to it)"
        else:
            keys = [(label, block) for label, block in _pem_blocks(key_pem) if label in _KEY_LABELS]
            where = "the key PEM"
        if not keys:
            raise CredentialError(f"no private key found in {where}")
        if len(keys) > 1:
            raise CredentialError(f"{len(keys)} private keys found in {where}; expected one")
        key = _load_private_key(*keys[0], passphrase)
        return cls._from_parts(key, certificates)

    @classmethod
    def from_files(
        cls,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str] | None = None,
        passphrase: bytes | None = None,
    ) -> ClientCertificate:
        """Load from files: see :meth:`from_pem`.

        Without *key_path*, a certificate file that is not PEM is read as PKCS#12 (``.p12``,
        ``.pfx``), so one path and a passphrase cover every usual export.
        """
        cert_data = _read(cert_path, "certificate")
        if key_path is None and b"-----BEGIN" not in cert_data:
            return cls.from_pkcs12(cert_data, passphrase)
        key_data = None if key_path is None else _read(key_path, "key")
        return cls.from_pem(cert_data, key_data, passphrase)

    @classmethod
    def from_pkcs12(cls, data: bytes, passphrase: bytes | None) -> ClientCertificate:
        """Load the key and certificate (plus any other certificates as chain) of PKCS#12."""
        try:
            key, certificate, others = pkcs12.load_key_and_certificates(data, passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            hint = "a passphrase is probably needed" if passphrase is None else "wrong passphrase?"
            raise CredentialError(f"cannot read the PKCS#12 data ({hint})") from None
        if key is None:
            raise CredentialError("the PKCS#12 data holds no private key")
        certificates = [c for c in [certificate, *others] if c is not None]
        if not certificates:
            raise CredentialError("the PKCS#12 data holds no certificate")
        return cls._from_parts(_check_key_type(key), certificates)

    @classmethod
    def _from_parts(
        cls, key: ClientPrivateKey, certificates: Sequence[x509.Certificate]
    ) -> ClientCertificate:
        for index, certificate in enumerate(certificates):
            if _matches(key, certificate):
                chain = tuple(certificates[:index]) + tuple(certificates[index + 1 :])
                return cls(certificate=certificate, private_key=key, chain=chain)
        raise CredentialError("the private key does not belong to the certificate")

    # --- what the certificate says ---------------------------------------------------------

    @property
    def subject(self) -> str:
        """The subject, RFC 4514 style (``UID=com.example.app,CN=Apple Push Services: …``)."""
        return self.certificate.subject.rfc4514_string()

    @property
    def not_before(self) -> datetime.datetime:
        """Start of validity (aware, UTC)."""
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        """End of validity (aware, UTC)."""
        return self.certificate.not_valid_after_utc

    @property
    def subject_topic(self) -> str | None:
        """The topic (bundle id) Apple put in the subject's UID, or None."""
        for attribute in self.certificate.subject.get_attributes_for_oid(NameOID.USER_ID):
            value = attribute.value
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
        return None

    @property
    def environments(self) -> frozenset[str]:
        """``{"development", "production"}`` or a part of it, from Apple's extensions."""
        try:
            extensions = self.certificate.extensions
        except ValueError:  # malformed or duplicated extensions
            return frozenset()
        return frozenset(
            _ENVIRONMENT_OIDS[ext.oid] for ext in extensions if ext.oid in _ENVIRONMENT_OIDS
        )

    def is_expired(self, now: datetime.datetime) -> bool:
        """Whether the certificate has expired at *now* (an aware datetime)."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        return now > self.not_after

    def to_private_certificate(self) -> PrivateCertificate:
        """The certificate and key as Twisted's :class:`PrivateCertificate`."""
        private: PrivateCertificate = PrivateCertificate.fromCertificateAndKeyPair(
            Certificate(pyopenssl_certificate(self.certificate)),
            KeyPair(pyopenssl_private_key(self.private_key)),
        )
        return private


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise CredentialError(
            f"cannot read the {what} file {os.fspath(path)!r}: {reason}"
        ) from None


# --- client TLS options ----------------------------------------------------------------------


def _trust_root(ca_pem: bytes) -> IOpenSSLTrustRoot:
    blocks = [block for label, block in _pem_blocks(ca_pem) if label == _CERTIFICATE_LABEL]
    if not blocks:
        raise CredentialError("no CA certificate found in ca_pem")
    root: IOpenSSLTrustRoot = trustRootFromCertificates(
        [Certificate(pyopenssl_certificate(c)) for c in _load_certificates(blocks, "ca_pem")]
    )
    return root


def client_tls_options(
    hostname: str,
    *,
    certificate: ClientCertificate | None = None,
    ca_pem: bytes | None = None,
    alpn: Sequence[bytes] = (),
) -> IOpenSSLClientConnectionCreator:
    """Client TLS options for connecting to the APNs host *hostname*.

    The server's certificate is verified against the platform's trust store, or against the
    CA certificate(s) in *ca_pem* instead, and must be valid for *hostname* (checked with
    ``service_identity``; SNI carries *hostname*). There is no way to turn that off.
    *certificate* is presented when the server asks for one; *alpn* lists the protocols
    offered (the HTTP/2 client passes ``[b"h2"]``). TLS 1.2 is the minimum.
    """
    protocols = list(alpn)
    if not all(isinstance(protocol, bytes) for protocol in protocols):
        raise TypeError("alpn is a sequence of protocol names as bytes, such as [b'h2']")
    trust_root: IOpenSSLTrustRoot = platformTrust() if ca_pem is None else _trust_root(ca_pem)
    extra: dict[str, Any] = {"raiseMinimumTo": TLSVersion.TLSv1_2}
    client_certificate = None
    if certificate is not None:
        client_certificate = certificate.to_private_certificate()
        if certificate.chain:
            extra["extraCertChain"] = [pyopenssl_certificate(c) for c in certificate.chain]
    return optionsForClientTLS(
        hostname,
        trustRoot=trust_root,
        clientCertificate=client_certificate,
        acceptableProtocols=protocols or None,
        extraCertificateOptions=extra,
    )


# --- telling TLS failures from connection failures -------------------------------------------

FailureKind: TypeAlias = Literal["tls", "connection", "other"]

_CONNECTION_ERRORS: Final = (
    net_error.ConnectError,  # refused, DNS, timeout, no route…
    net_error.ConnectionClosed,  # ConnectionLost, ConnectionDone
    net_error.ConnectingCancelledError,
    SSL.SysCallError,  # the socket failed under TLS: not a certificate problem
    OSError,
)
_TLS_ERRORS: Final = (
    SSL.Error,
    service_identity.VerificationError,
    service_identity.CertificateError,
)


def _ssl_reasons(error: SSL.Error) -> list[str]:
    """The reason strings OpenSSL gave (``"certificate verify failed"``…)."""
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return reasons


def _exception(reason: Failure | BaseException) -> BaseException:
    if isinstance(reason, Failure):
        return reason.value if reason.value is not None else Exception(reason.getErrorMessage())
    return reason


def classify_tls_failure(reason: Failure | BaseException) -> FailureKind:
    """Tell why a connection failed or was lost, from the error or ``Failure`` Twisted gave.

    ``"tls"``: the handshake failed or a certificate was refused, by either side (OpenSSL
    errors, host name mismatch): the same attempt will fail again. ``"connection"``: the
    network failed (refused, reset, timed out, closed, including a peer that hangs up during
    the handshake): retrying may help. ``"other"``: anything else (a bug, most likely).

    With TLS 1.3 a server rejects the client certificate only after the client considers the
    handshake done, so classify the reason the connection was *lost*, not only failed
    connection attempts.
    """
    error = _exception(reason)
    if isinstance(error, _CONNECTION_ERRORS):
        return "connection"
    if isinstance(error, SSL.Error):
        if any("unexpected eof" in r.lower() for r in _ssl_reasons(error)):
            return "connection"
        return "tls"
    if isinstance(error, _TLS_ERRORS):
        return "tls"
    return "other"


def is_tls_failure(reason: Failure | BaseException) -> bool:
    """Whether *reason* is a TLS failure: see :func:`classify_tls_failure`."""
    return classify_tls_failure(reason) == "tls"


def as_connection_error(reason: Failure | BaseException) -> ConnectionFailedError:
    """The txapns error for a failed or lost connection: a :class:`TLSFailureError` for TLS
    failures (don't retry blindly), else a :class:`ConnectionFailedError`."""
    error = _exception(reason)
    if isinstance(error, ConnectionFailedError):
        return error
    if classify_tls_failure(error) == "tls":
        detail = (
            "; ".join(_ssl_reasons(error)) if isinstance(error, SSL.Error) else str(error)
        ) or type(error).__name__
        return TLSFailureError(f"TLS handshake or certificate verification failed: {detail}")
    return ConnectionFailedError(f"connection failed: {type(error).__name__}: {error}")
