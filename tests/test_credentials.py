"""txapns.credentials: loading client certificates, client TLS options, failure classification.

The TLS tests make real connections on 127.0.0.1 with the reactor, between an echo server
using :func:`txapns.testing.pki.server_tls_options` and a client using
:func:`txapns.credentials.client_tls_options`.
"""

from __future__ import annotations

import datetime
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IReactorSSL,
)
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory, connectionDone
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txapns.core.errors import ConnectionFailedError, CredentialError, TLSFailureError
from txapns.credentials import (
    APNS_DEVELOPMENT_OID,
    ClientCertificate,
    as_connection_error,
    classify_tls_failure,
    client_tls_options,
    is_tls_failure,
)
from txapns.testing.pki import TestPKI, make_test_pki, server_tls_options

UTC = datetime.UTC


def _pem_body(pem: bytes) -> bytes:
    """The base64 lines of a PEM block, to check that no message ever contains them."""
    return b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))[:40]


def _assert_no_key_material(test: SynchronousTestCase, text: str, *pems: bytes) -> None:
    for pem in pems:
        test.assertNotIn(_pem_body(pem).decode("ascii"), text)


def _self_signed(
    key: Any,
    subject: x509.Name,
    *,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any, encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return cast(
        bytes,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            encryption or serialization.NoEncryption(),
        ),
    )


def _temp_dir(test: SynchronousTestCase) -> str:
    """A fresh directory outside the source tree, removed after the test."""
    path = tempfile.mkdtemp(prefix="txapns-test-")
    test.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


# --- loading ---------------------------------------------------------------------------------


class FromPEMTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_test_pki()
        self.expected = x509.load_pem_x509_certificate(self.pki.client_cert)

    def test_separate_cert_and_key(self) -> None:
        credential = ClientCertificate.from_pem(self.pki.client_cert, self.pki.client_key)
        self.assertEqual(credential.certificate, self.expected)
        self.assertEqual(credential.chain, ())

    def test_combined_bundle(self) -> None:
        credential = ClientCertificate.from_pem(self.pki.client_bundle)
        self.assertEqual(credential.certificate, self.expected)

    def test_bundle_with_key_first(self) -> None:
        credential = ClientCertificate.from_pem(self.pki.client_key + self.pki.client_cert)
        self.assertEqual(credential.certificate, self.expected)

    def test_encrypted_key_with_passphrase(self) -> None:
        credential = ClientCertificate.from_pem(
            self.pki.client_cert, self.pki.client_key_encrypted, self.pki.client_key_passphrase
        )
        self.assertEqual(credential, ClientCertificate.from_pem(self.pki.client_bundle))

    def test_encrypted_key_with_wrong_passphrase(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(
                self.pki.client_cert, self.pki.client_key_encrypted, b"not the passphrase"
            )
        message = str(caught.exception)
        self.assertIn("passphrase is wrong", message)
        _assert_no_key_material(self, message, self.pki.client_key_encrypted, self.pki.client_key)
        # The library's own exception is not chained to one that might say more.
        self.assertIsNone(caught.exception.__cause__)
        self.assertTrue(caught.exception.__suppress_context__)

    def test_encrypted_key_without_passphrase(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_cert, self.pki.client_key_encrypted)
        self.assertIn("passphrase is needed", str(caught.exception))

    def test_passphrase_for_unencrypted_key_is_ignored(self) -> None:
        credential = ClientCertificate.from_pem(self.pki.client_bundle, passphrase=b"unused")
        self.assertEqual(credential.certificate, self.expected)

    def test_legacy_encrypted_pem(self) -> None:
        # "-----BEGIN EC PRIVATE KEY-----" with Proc-Type/DEK-Info headers (openssl's old style).
        key = serialization.load_pem_private_key(self.pki.client_key, password=None)
        legacy = _key_pem(key, serialization.BestAvailableEncryption(b"secret"))
        self.assertIn(b"Proc-Type: 4,ENCRYPTED", legacy)
        credential = ClientCertificate.from_pem(self.pki.client_cert, legacy, b"secret")
        self.assertEqual(credential.certificate, self.expected)
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_cert, legacy, b"wrong")
        self.assertIn("passphrase is wrong", str(caught.exception))
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_cert, legacy)
        self.assertIn("passphrase is needed", str(caught.exception))

    def test_missing_key(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_cert)
        self.assertIn("no private key found in the certificate PEM", str(caught.exception))
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_cert, self.pki.ca_cert)
        self.assertIn("no private key found in the key PEM", str(caught.exception))

    def test_two_keys(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_bundle + self.pki.server_key)
        self.assertIn("2 private keys", str(caught.exception))

    def test_missing_certificate(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_key)
        self.assertIn("no certificate found", str(caught.exception))

    def test_invalid_certificate(self) -> None:
        garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(garbage, self.pki.client_key)
        self.assertIn("not a valid certificate", str(caught.exception))

    def test_invalid_key(self) -> None:
        garbage = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_cert, garbage)
        self.assertIn("not valid PEM", str(caught.exception))

    def test_key_of_another_certificate(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_cert, self.pki.server_key)
        self.assertIn("does not belong to the certificate", str(caught.exception))
        _assert_no_key_material(self, str(caught.exception), self.pki.server_key)

    def test_constructor_checks_the_key(self) -> None:
        server_key = serialization.load_pem_private_key(self.pki.server_key, password=None)
        assert isinstance(server_key, ec.EllipticCurvePrivateKey)
        with self.assertRaises(CredentialError):
            ClientCertificate(certificate=self.expected, private_key=server_key)

    def test_key_type_that_cannot_sign(self) -> None:
        key = x25519.X25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pem(self.pki.client_cert, pem)
        self.assertIn("cannot sign", str(caught.exception))

    def test_chain_is_kept_apart_from_the_leaf(self) -> None:
        # The bundle lists the CA first; the leaf is found by its key, the rest is the chain.
        credential = ClientCertificate.from_pem(self.pki.ca_cert + self.pki.client_bundle)
        self.assertEqual(credential.certificate, self.expected)
        self.assertEqual(credential.chain, (x509.load_pem_x509_certificate(self.pki.ca_cert),))

    def test_repr_has_no_key(self) -> None:
        credential = ClientCertificate.from_pem(self.pki.client_bundle)
        text = repr(credential)
        self.assertIn("Apple Push Services", text)
        self.assertNotIn("private_key", text)
        _assert_no_key_material(self, text, self.pki.client_key)

    def test_rsa_key(self) -> None:
        # Apple issues RSA keys; the test PKI uses EC. Both must load and convert.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.USER_ID, "com.example.rsa")])
        certificate = _self_signed(key, name)
        credential = ClientCertificate.from_pem(_pem(certificate), _key_pem(key))
        self.assertEqual(credential.subject_topic, "com.example.rsa")
        private = credential.to_private_certificate()
        self.assertEqual(private.original.to_cryptography(), certificate)


class FromFilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_test_pki()
        self.paths = self.pki.write(_temp_dir(self))
        self.expected = ClientCertificate.from_pem(self.pki.client_bundle)

    def test_separate_files(self) -> None:
        credential = ClientCertificate.from_files(
            self.paths["client_cert"], self.paths["client_key"]
        )
        self.assertEqual(credential, self.expected)

    def test_bundle_file(self) -> None:
        self.assertEqual(ClientCertificate.from_files(self.paths["client_bundle"]), self.expected)

    def test_encrypted_key_file(self) -> None:
        credential = ClientCertificate.from_files(
            self.paths["client_cert"],
            self.paths["client_key_encrypted"],
            self.pki.client_key_passphrase,
        )
        self.assertEqual(credential, self.expected)

    def test_pkcs12_file_is_recognised(self) -> None:
        credential = ClientCertificate.from_files(
            self.paths["client_p12"], passphrase=self.pki.client_key_passphrase
        )
        self.assertEqual(credential, self.expected)

    def test_missing_file(self) -> None:
        missing = os.path.join(os.path.dirname(self.paths["client_cert"]), "nope.pem")
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_files(missing)
        self.assertIn("cannot read the certificate file", str(caught.exception))
        self.assertIn("nope.pem", str(caught.exception))
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_files(self.paths["client_cert"], missing)
        self.assertIn("cannot read the key file", str(caught.exception))


class FromPKCS12Tests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_test_pki()

    def test_round_trip(self) -> None:
        credential = ClientCertificate.from_pkcs12(
            self.pki.client_p12, self.pki.client_key_passphrase
        )
        self.assertEqual(credential, ClientCertificate.from_pem(self.pki.client_bundle))
        # And back: the loaded key and certificate make a PKCS#12 that loads the same.
        again = pkcs12.serialize_key_and_certificates(
            b"again",
            credential.private_key,
            credential.certificate,
            None,
            serialization.BestAvailableEncryption(b"pw"),
        )
        self.assertEqual(ClientCertificate.from_pkcs12(again, b"pw"), credential)

    def test_wrong_passphrase(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pkcs12(self.pki.client_p12, b"wrong")
        self.assertIn("wrong passphrase", str(caught.exception))

    def test_missing_passphrase(self) -> None:
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pkcs12(self.pki.client_p12, None)
        self.assertIn("passphrase is probably needed", str(caught.exception))

    def test_not_pkcs12(self) -> None:
        with self.assertRaises(CredentialError):
            ClientCertificate.from_pkcs12(b"\x30\x03\x02\x01\x00", b"x")

    def test_unencrypted_with_chain(self) -> None:
        ca = x509.load_pem_x509_certificate(self.pki.ca_cert)
        key = serialization.load_pem_private_key(self.pki.client_key, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        certificate = x509.load_pem_x509_certificate(self.pki.client_cert)
        data = pkcs12.serialize_key_and_certificates(
            None, key, certificate, [ca], serialization.NoEncryption()
        )
        credential = ClientCertificate.from_pkcs12(data, None)
        self.assertEqual(credential.certificate, certificate)
        self.assertEqual(credential.chain, (ca,))

    def test_without_key(self) -> None:
        certificate = x509.load_pem_x509_certificate(self.pki.client_cert)
        data = pkcs12.serialize_key_and_certificates(
            None, None, certificate, None, serialization.NoEncryption()
        )
        with self.assertRaises(CredentialError) as caught:
            ClientCertificate.from_pkcs12(data, None)
        self.assertIn("no private key", str(caught.exception))


# --- what the certificate says ---------------------------------------------------------------


class CertificateInfoTests(SynchronousTestCase):
    def test_topic_and_environments(self) -> None:
        credential = ClientCertificate.from_pem(make_test_pki().client_bundle)
        self.assertEqual(credential.subject_topic, "com.example.app")
        self.assertEqual(credential.environments, frozenset({"development", "production"}))
        self.assertIn("CN=Apple Push Services: com.example.app", credential.subject)

    def test_other_topic(self) -> None:
        credential = ClientCertificate.from_pem(make_test_pki("org.example.other").client_bundle)
        self.assertEqual(credential.subject_topic, "org.example.other")

    def test_no_topic_no_environment(self) -> None:
        # The server certificate has neither a UID nor Apple's extensions.
        pki = make_test_pki()
        credential = ClientCertificate.from_pem(pki.server_cert, pki.server_key)
        self.assertIsNone(credential.subject_topic)
        self.assertEqual(credential.environments, frozenset())

    def test_development_only(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _self_signed(
            key,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]),
            extensions=[x509.UnrecognizedExtension(APNS_DEVELOPMENT_OID, b"\x05\x00")],
        )
        credential = ClientCertificate.from_pem(_pem(certificate), _key_pem(key))
        self.assertEqual(credential.environments, frozenset({"development"}))

    def test_validity(self) -> None:
        credential = ClientCertificate.from_pem(make_test_pki().client_bundle)
        now = datetime.datetime.now(UTC)
        self.assertLess(credential.not_before, now)
        self.assertGreater(credential.not_after, now)
        self.assertFalse(credential.is_expired(now))
        self.assertFalse(credential.is_expired(credential.not_after))
        self.assertTrue(credential.is_expired(credential.not_after + datetime.timedelta(seconds=1)))
        # Any time zone works; only the instant matters.
        tz = datetime.timezone(datetime.timedelta(hours=-7))
        self.assertTrue(
            credential.is_expired(
                (credential.not_after + datetime.timedelta(seconds=1)).astimezone(tz)
            )
        )

    def test_expired_client(self) -> None:
        credential = ClientCertificate.from_pem(make_test_pki(expired_client=True).client_bundle)
        self.assertTrue(credential.is_expired(datetime.datetime.now(UTC)))
        self.assertFalse(credential.is_expired(credential.not_before))

    def test_naive_datetime_refused(self) -> None:
        credential = ClientCertificate.from_pem(make_test_pki().client_bundle)
        with self.assertRaises(ValueError):
            credential.is_expired(datetime.datetime(2030, 1, 1))

    def test_to_private_certificate(self) -> None:
        pki = make_test_pki()
        credential = ClientCertificate.from_pem(pki.client_bundle)
        private = credential.to_private_certificate()
        self.assertIsInstance(private, PrivateCertificate)
        self.assertEqual(private.original.to_cryptography(), credential.certificate)
        key = private.privateKey.original.to_cryptography_key()
        self.assertEqual(
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            credential.certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )


# --- client options, without a connection ----------------------------------------------------


class ClientOptionsTests(SynchronousTestCase):
    def test_provides_the_interface(self) -> None:
        pki = make_test_pki()
        options = client_tls_options(
            "api.push.apple.com",
            certificate=ClientCertificate.from_pem(pki.client_bundle),
            ca_pem=pki.ca_cert,
            alpn=[b"h2"],
        )
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, options))

    def test_platform_trust_by_default(self) -> None:
        self.assertTrue(
            IOpenSSLClientConnectionCreator.providedBy(client_tls_options("api.push.apple.com"))
        )

    def test_ca_pem_without_certificate(self) -> None:
        with self.assertRaises(CredentialError):
            client_tls_options("localhost", ca_pem=b"")
        with self.assertRaises(CredentialError):
            client_tls_options("localhost", ca_pem=make_test_pki().client_key)

    def test_alpn_must_be_a_sequence_of_bytes(self) -> None:
        with self.assertRaises(TypeError):
            client_tls_options("localhost", alpn=cast(Sequence[bytes], b"h2"))
        with self.assertRaises(TypeError):
            client_tls_options("localhost", alpn=cast(Sequence[bytes], ["h2"]))

    def test_no_way_to_disable_verification(self) -> None:
        # The only knobs are the ones below: nothing turns verification or host names off.
        import inspect

        parameters = set(inspect.signature(client_tls_options).parameters)
        self.assertEqual(parameters, {"hostname", "certificate", "ca_pem", "alpn"})


# --- failure classification ------------------------------------------------------------------


class ClassifyTests(SynchronousTestCase):
    def test_tls_failures(self) -> None:
        verify_failed = SSL.Error([("SSL routines", "", "certificate verify failed")])
        for error in [
            verify_failed,
            SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]),
            service_identity.VerificationError(errors=[]),
        ]:
            self.assertEqual(classify_tls_failure(error), "tls", error)
            self.assertEqual(classify_tls_failure(Failure(error)), "tls", error)
            self.assertTrue(is_tls_failure(error))
            self.assertIsInstance(as_connection_error(Failure(error)), TLSFailureError)
        self.assertIn("certificate verify failed", str(as_connection_error(verify_failed)))

    def test_connection_failures(self) -> None:
        for error in [
            net_error.ConnectionRefusedError(),
            net_error.DNSLookupError(),
            net_error.TimeoutError(),
            net_error.ConnectionLost(),
            net_error.ConnectionDone(),
            ConnectionResetError(),
            SSL.SysCallError(-1, "Unexpected EOF"),
            SSL.Error([("SSL routines", "", "unexpected eof while reading")]),
        ]:
            self.assertEqual(classify_tls_failure(Failure(error)), "connection", error)
            self.assertFalse(is_tls_failure(error))
            converted = as_connection_error(error)
            self.assertIsInstance(converted, ConnectionFailedError)
            self.assertNotIsInstance(converted, TLSFailureError)

    def test_other(self) -> None:
        self.assertEqual(classify_tls_failure(ValueError("bug")), "other")
        self.assertFalse(is_tls_failure(ValueError("bug")))

    def test_txapns_errors_pass_through(self) -> None:
        error = TLSFailureError("already one")
        self.assertIs(as_connection_error(Failure(error)), error)


# --- real TLS on 127.0.0.1 -------------------------------------------------------------------


def _reactor() -> IReactorSSL:
    from twisted.internet import reactor

    return cast(IReactorSSL, reactor)


@dataclass
class _Side:
    """What one end of a test connection saw."""

    lost: Deferred[None] = field(default_factory=Deferred)
    reason: Failure | None = None
    handshake_completed: bool = False
    received: bytes = b""
    negotiated: bytes | None = None
    peer_certificate: x509.Certificate | None = None


@implementer(IHandshakeListener)
class _TLSProtocol(Protocol):
    """Echo server, or a client that sends a message and hangs up once it comes back."""

    def __init__(self, side: _Side, send: bytes | None = None) -> None:
        self.side = side
        self.send = send

    def connectionMade(self) -> None:
        if self.send is not None:
            self._transport.write(self.send)

    @property
    def _transport(self) -> Any:
        return self.transport

    def handshakeCompleted(self) -> None:
        self.side.handshake_completed = True
        self.side.negotiated = self._transport.negotiatedProtocol
        peer = self._transport.getPeerCertificate()
        self.side.peer_certificate = None if peer is None else peer.to_cryptography()

    def dataReceived(self, data: bytes) -> None:
        self.side.received += data
        if self.send is None:
            self._transport.write(data)
        elif self.side.received == self.send:
            self._transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.side.reason = reason
        self.side.lost.callback(None)


class _ServerFactory(ServerFactory):
    def __init__(self, side: _Side) -> None:
        self.side = side

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _TLSProtocol(self.side)


class _ClientFactory(ClientFactory):
    def __init__(self, side: _Side, send: bytes) -> None:
        self.side = side
        self.send = send

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _TLSProtocol(self.side, self.send)


def _listen(side: _Side, options: CertificateOptions) -> tuple[IListeningPort, int]:
    """Listen on 127.0.0.1, on a port the system picks; return the port and its number."""
    port = _reactor().listenSSL(0, _ServerFactory(side), options, interface="127.0.0.1")
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return port, address.port


async def _stop(port: IListeningPort) -> None:
    stopped = port.stopListening()
    if stopped is not None:
        await stopped


@dataclass
class _Outcome:
    client: _Side
    server: _Side
    client_reason: Failure
    server_reason: Failure

    @property
    def echoed(self) -> bool:
        return self.client.received == MESSAGE


MESSAGE = b"ping over TLS"


class TLSConnectionTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.pki = make_test_pki()
        self.credential = ClientCertificate.from_pem(self.pki.client_bundle)

    async def exchange(
        self, server_options: CertificateOptions, client_options: IOpenSSLClientConnectionCreator
    ) -> _Outcome:
        """Connect, send MESSAGE, wait for the echo or a failure, and for both ends to close."""
        server, client = _Side(), _Side()
        port, number = _listen(server, server_options)
        self.addCleanup(_stop, port)
        endpoint = SSL4ClientEndpoint(_reactor(), "127.0.0.1", number, client_options)
        await endpoint.connect(_ClientFactory(client, MESSAGE))
        await client.lost
        await server.lost
        assert client.reason is not None and server.reason is not None
        return _Outcome(client, server, client.reason, server.reason)

    def client_options(self, hostname: str = "localhost", **kwargs: Any) -> Any:
        kwargs.setdefault("certificate", self.credential)
        kwargs.setdefault("ca_pem", self.pki.ca_cert)
        return client_tls_options(hostname, **kwargs)

    async def test_handshake_and_client_certificate(self) -> None:
        outcome = await self.exchange(server_tls_options(self.pki), self.client_options())
        self.assertTrue(outcome.client.handshake_completed)
        self.assertTrue(outcome.echoed)
        self.assertEqual(outcome.server.received, MESSAGE)
        self.assertEqual(outcome.server.peer_certificate, self.credential.certificate)
        self.assertEqual(
            outcome.client.peer_certificate, x509.load_pem_x509_certificate(self.pki.server_cert)
        )
        self.assertEqual(outcome.client.negotiated, None)
        # A clean close is not a TLS failure.
        self.assertFalse(is_tls_failure(outcome.client_reason))

    async def test_apns_host_names_and_ip_address(self) -> None:
        for hostname in ["api.sandbox.push.apple.com", "gateway.push.apple.com", "127.0.0.1"]:
            outcome = await self.exchange(
                server_tls_options(self.pki), self.client_options(hostname)
            )
            self.assertTrue(outcome.echoed, hostname)

    async def test_wrong_hostname(self) -> None:
        outcome = await self.exchange(
            server_tls_options(self.pki), self.client_options("wrong.example.net")
        )
        self.assertFalse(outcome.echoed)
        self.assertEqual(outcome.server.received, b"")
        self.assertIsInstance(outcome.client_reason.value, service_identity.VerificationError)
        self.assertEqual(classify_tls_failure(outcome.client_reason), "tls")
        error = as_connection_error(outcome.client_reason)
        self.assertIsInstance(error, TLSFailureError)
        self.assertIn("wrong.example.net", str(error))

    async def test_untrusted_ca(self) -> None:
        other = make_test_pki("org.example.other")
        outcome = await self.exchange(
            server_tls_options(self.pki), self.client_options(ca_pem=other.ca_cert)
        )
        self.assertFalse(outcome.echoed)
        self.assertEqual(outcome.server.received, b"")
        self.assertEqual(classify_tls_failure(outcome.client_reason), "tls")
        self.assertIn("certificate verify failed", str(as_connection_error(outcome.client_reason)))

    async def test_server_requires_client_certificate(self) -> None:
        outcome = await self.exchange(
            server_tls_options(self.pki), self.client_options(certificate=None)
        )
        self.assertFalse(outcome.echoed)
        self.assertEqual(outcome.server.received, b"")
        self.assertFalse(outcome.server.handshake_completed)
        self.assertEqual(classify_tls_failure(outcome.client_reason), "tls")
        self.assertEqual(classify_tls_failure(outcome.server_reason), "tls")

    async def test_client_certificate_optional(self) -> None:
        outcome = await self.exchange(
            server_tls_options(self.pki, require_client_cert=False),
            self.client_options(certificate=None),
        )
        self.assertTrue(outcome.echoed)
        self.assertIsNone(outcome.server.peer_certificate)

    async def test_untrusted_client_certificate(self) -> None:
        other = ClientCertificate.from_pem(make_test_pki("org.example.other").client_bundle)
        outcome = await self.exchange(
            server_tls_options(self.pki), self.client_options(certificate=other)
        )
        self.assertFalse(outcome.echoed)
        self.assertEqual(outcome.server.received, b"")
        self.assertEqual(classify_tls_failure(outcome.client_reason), "tls")

    async def test_expired_client_certificate(self) -> None:
        expired = make_test_pki(expired_client=True)
        credential = ClientCertificate.from_pem(expired.client_bundle)
        self.assertTrue(credential.is_expired(datetime.datetime.now(UTC)))
        outcome = await self.exchange(
            server_tls_options(expired),
            client_tls_options("localhost", certificate=credential, ca_pem=expired.ca_cert),
        )
        self.assertFalse(outcome.echoed)
        self.assertEqual(outcome.server.received, b"")
        self.assertEqual(classify_tls_failure(outcome.client_reason), "tls")
        self.assertIn("expired", str(as_connection_error(outcome.client_reason)))

    async def test_alpn_h2(self) -> None:
        outcome = await self.exchange(
            server_tls_options(self.pki, alpn=[b"h2"]),
            self.client_options(alpn=[b"h2", b"http/1.1"]),
        )
        self.assertTrue(outcome.echoed)
        self.assertEqual(outcome.client.negotiated, b"h2")
        self.assertEqual(outcome.server.negotiated, b"h2")

    async def test_alpn_not_offered_by_server(self) -> None:
        # The HTTP/2 client must never believe h2 was agreed when it was not. Twisted 26 fails
        # the handshake when nothing overlaps; older Twisted connects without a protocol.
        outcome = await self.exchange(
            server_tls_options(self.pki, alpn=[b"http/1.1"]), self.client_options(alpn=[b"h2"])
        )
        self.assertIsNone(outcome.client.negotiated)
        if not outcome.echoed:
            self.assertEqual(classify_tls_failure(outcome.client_reason), "tls")

    async def test_client_without_alpn(self) -> None:
        # The binary-protocol client offers no ALPN; a server that offers h2 still talks to it.
        outcome = await self.exchange(
            server_tls_options(self.pki, alpn=[b"h2"]), self.client_options()
        )
        self.assertTrue(outcome.echoed)
        self.assertIsNone(outcome.client.negotiated)
        self.assertIsNone(outcome.server.negotiated)

    async def test_intermediate_sent_from_the_chain(self) -> None:
        leaf_pem, intermediate_pem, key_pem = _issue_via_intermediate(self.pki)
        with_chain = ClientCertificate.from_pem(leaf_pem + intermediate_pem, key_pem)
        self.assertEqual(len(with_chain.chain), 1)
        outcome = await self.exchange(
            server_tls_options(self.pki), self.client_options(certificate=with_chain)
        )
        self.assertTrue(outcome.echoed)
        self.assertEqual(outcome.server.peer_certificate, with_chain.certificate)
        # Without the intermediate the server cannot build a path to its CA.
        leaf_only = ClientCertificate.from_pem(leaf_pem, key_pem)
        outcome = await self.exchange(
            server_tls_options(self.pki), self.client_options(certificate=leaf_only)
        )
        self.assertFalse(outcome.echoed)
        self.assertEqual(classify_tls_failure(outcome.client_reason), "tls")

    async def test_connection_refused_is_not_tls(self) -> None:
        port, number = _listen(_Side(), server_tls_options(self.pki))
        await _stop(port)
        endpoint = SSL4ClientEndpoint(_reactor(), "127.0.0.1", number, self.client_options())
        try:
            await endpoint.connect(_ClientFactory(_Side(), MESSAGE))
        except Exception as e:
            self.assertEqual(classify_tls_failure(e), "connection")
            self.assertNotIsInstance(as_connection_error(e), TLSFailureError)
        else:
            self.fail("connected to a closed port")


def _issue_via_intermediate(pki: TestPKI) -> tuple[bytes, bytes, bytes]:
    """A client certificate issued by an intermediate CA under the test CA (like Apple's WWDR)."""
    now = datetime.datetime.now(UTC)
    day = datetime.timedelta(days=1)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert)
    ca_key = serialization.load_pem_private_key(pki.ca_key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")])
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(intermediate_name)
        .issuer_name(ca_cert.subject)
        .public_key(intermediate_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.USER_ID, "com.example.app")]))
        .issuer_name(intermediate_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + day)
        .sign(intermediate_key, hashes.SHA256())
    )
    return _pem(leaf), _pem(intermediate), _key_pem(leaf_key)


class ProviderTokenTests(SynchronousTestCase):
    """The credential of token auth: a frozen value, checked when made, key never shown."""

    def setUp(self) -> None:
        from txapns.testing.pki import make_test_pki

        self.pki = make_test_pki("com.example.app")

    def test_from_p8_checks_the_ids_and_hides_the_key(self) -> None:
        from txapns.credentials import ProviderToken

        pki = self.pki
        token = ProviderToken.from_p8(pki.token_key_p8, pki.token_key_id, pki.team_id)
        self.assertEqual((token.key_id, token.team_id), (pki.token_key_id, pki.team_id))
        self.assertEqual(
            repr(token), f"ProviderToken(key_id={pki.token_key_id!r}, team_id={pki.team_id!r})"
        )
        self.assertRaises(AttributeError, setattr, token, "key_id", "ABCDEFGHIJ")
        source = token.source(random.Random(1))
        self.assertEqual((source.key_id, source.team_id), (token.key_id, token.team_id))

    def test_bad_ids_keys_and_file_names_fail_when_made(self) -> None:
        from txapns.credentials import ProviderToken

        pki = self.pki
        self.assertRaises(
            CredentialError, ProviderToken.from_p8, pki.token_key_p8, "short", pki.team_id
        )
        self.assertRaises(
            CredentialError,
            ProviderToken.from_p8,
            pki.token_key_p8,
            pki.token_key_id,
            pki.team_id,
            key_file_name="AuthKey_ZZZZZZZZZZ.p8",
        )
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.assertRaises(CredentialError, ProviderToken, rsa_key, pki.token_key_id, pki.team_id)
        self.assertRaises(
            CredentialError, ProviderToken.from_p8, b"not a key", pki.token_key_id, pki.team_id
        )
