"""txapns.testing.pki: the throwaway PKI used by tests, fakes and the demo."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import stat
import tempfile

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import CertificateOptions
from twisted.trial.unittest import SynchronousTestCase

from txapns.testing.pki import APNS_HOSTNAMES, TestPKI, make_test_pki, server_tls_options

DEVELOPMENT_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
PRODUCTION_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")


def _public_der(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ec_key(pem: bytes, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=password)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _temp_dir(test: SynchronousTestCase) -> str:
    """A fresh directory outside the source tree, removed after the test."""
    path = tempfile.mkdtemp(prefix="txapns-test-")
    test.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


class CacheTests(SynchronousTestCase):
    def test_default_is_shared(self) -> None:
        self.assertIs(make_test_pki(), make_test_pki())
        self.assertIs(make_test_pki("com.example.app"), make_test_pki())

    def test_other_arguments_make_fresh_material(self) -> None:
        other = make_test_pki("org.example.other")
        self.assertIsNot(other, make_test_pki("org.example.other"))
        self.assertNotEqual(other.ca_cert, make_test_pki().ca_cert)
        self.assertNotEqual(make_test_pki(expired_client=True).ca_cert, make_test_pki().ca_cert)


class CertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_test_pki()
        self.ca = x509.load_pem_x509_certificate(self.pki.ca_cert)
        self.server = x509.load_pem_x509_certificate(self.pki.server_cert)
        self.client = x509.load_pem_x509_certificate(self.pki.client_cert)
        self.store = verification.Store([self.ca])

    def test_keys_are_p256_and_match(self) -> None:
        for cert_pem, key_pem in [
            (self.pki.ca_cert, self.pki.ca_key),
            (self.pki.server_cert, self.pki.server_key),
            (self.pki.client_cert, self.pki.client_key),
        ]:
            key = _ec_key(key_pem)
            self.assertIsInstance(key.curve, ec.SECP256R1)
            self.assertEqual(
                _public_der(key),
                x509.load_pem_x509_certificate(cert_pem)
                .public_key()
                .public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            )

    def test_ca_is_a_ca(self) -> None:
        constraints = self.ca.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.value.ca)
        self.assertEqual(self.ca.subject, self.ca.issuer)

    def test_server_names(self) -> None:
        san = self.server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            set(san.get_values_for_type(x509.DNSName)),
            {
                "localhost",
                "gateway.push.apple.com",
                "gateway.sandbox.push.apple.com",
                "feedback.push.apple.com",
                "feedback.sandbox.push.apple.com",
                "api.push.apple.com",
                "api.sandbox.push.apple.com",
                "api-manage-broadcast.push.apple.com",
                "api-manage-broadcast.sandbox.push.apple.com",
            },
        )
        self.assertEqual(set(APNS_HOSTNAMES), set(san.get_values_for_type(x509.DNSName)))
        self.assertEqual(
            set(san.get_values_for_type(x509.IPAddress)),
            {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")},
        )

    def test_server_verifies_for_every_apns_host(self) -> None:
        # An independent check of the chain and names, with cryptography's own verifier.
        for name in [*APNS_HOSTNAMES, "127.0.0.1", "::1"]:
            try:
                subject: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(name))
            except ValueError:
                subject = x509.DNSName(name)
            verifier = verification.PolicyBuilder().store(self.store).build_server_verifier(subject)
            chain = verifier.verify(self.server, [])
            self.assertEqual(chain[-1], self.ca, name)

    def test_server_does_not_verify_for_other_names(self) -> None:
        verifier = (
            verification.PolicyBuilder()
            .store(self.store)
            .build_server_verifier(x509.DNSName("api.push.example.com"))
        )
        with self.assertRaises(verification.VerificationError):
            verifier.verify(self.server, [])

    def test_client_verifies_as_a_client(self) -> None:
        # cryptography's client verifier insists on a SAN, which Apple's certificates lack.
        self.client.verify_directly_issued_by(self.ca)
        other_ca = x509.load_pem_x509_certificate(make_test_pki("org.example.other").ca_cert)
        with self.assertRaises(InvalidSignature):
            self.client.verify_directly_issued_by(other_ca)
        usage = self.client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertIn(ExtendedKeyUsageOID.CLIENT_AUTH, usage)

    def test_client_subject_like_apple(self) -> None:
        subject = self.client.subject
        self.assertEqual(
            [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)],
            ["Apple Push Services: com.example.app"],
        )
        self.assertEqual(
            [a.value for a in subject.get_attributes_for_oid(NameOID.USER_ID)],
            ["com.example.app"],
        )
        self.assertEqual(NameOID.USER_ID.dotted_string, "0.9.2342.19200300.100.1.1")

    def test_client_subject_follows_topic(self) -> None:
        client = x509.load_pem_x509_certificate(make_test_pki("org.example.other").client_cert)
        self.assertEqual(
            [a.value for a in client.subject.get_attributes_for_oid(NameOID.USER_ID)],
            ["org.example.other"],
        )

    def test_client_apns_extensions(self) -> None:
        for oid in (DEVELOPMENT_OID, PRODUCTION_OID):
            extension = self.client.extensions.get_extension_for_oid(oid)
            self.assertFalse(extension.critical)
            self.assertIsInstance(extension.value, x509.UnrecognizedExtension)
        for certificate in (self.ca, self.server):
            oids = {extension.oid for extension in certificate.extensions}
            self.assertFalse(oids & {DEVELOPMENT_OID, PRODUCTION_OID})

    def test_validity(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        for certificate in (self.ca, self.server, self.client):
            self.assertLess(certificate.not_valid_before_utc, now)
            self.assertGreater(certificate.not_valid_after_utc, now)

    def test_expired_client(self) -> None:
        pki = make_test_pki(expired_client=True)
        client = x509.load_pem_x509_certificate(pki.client_cert)
        now = datetime.datetime.now(datetime.UTC)
        self.assertLess(client.not_valid_after_utc, now)
        server = x509.load_pem_x509_certificate(pki.server_cert)
        self.assertGreater(server.not_valid_after_utc, now)


class KeyFormatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_test_pki()
        self.client_key = _ec_key(self.pki.client_key)

    def test_encrypted_key(self) -> None:
        self.assertIn(b"-----BEGIN ENCRYPTED PRIVATE KEY-----", self.pki.client_key_encrypted)
        key = _ec_key(self.pki.client_key_encrypted, self.pki.client_key_passphrase)
        self.assertEqual(_public_der(key), _public_der(self.client_key))
        with self.assertRaises(ValueError):
            _ec_key(self.pki.client_key_encrypted, b"wrong")
        with self.assertRaises(TypeError):
            _ec_key(self.pki.client_key_encrypted)

    def test_pkcs12(self) -> None:
        key, certificate, others = pkcs12.load_key_and_certificates(
            self.pki.client_p12, self.pki.client_key_passphrase
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(_public_der(key), _public_der(self.client_key))
        self.assertEqual(certificate, x509.load_pem_x509_certificate(self.pki.client_cert))
        self.assertEqual(others, [])
        with self.assertRaises(ValueError):
            pkcs12.load_key_and_certificates(self.pki.client_p12, b"wrong")

    def test_bundle(self) -> None:
        self.assertEqual(self.pki.client_bundle, self.pki.client_cert + self.pki.client_key)

    def test_token_key_like_an_apple_p8(self) -> None:
        self.assertTrue(self.pki.token_key_p8.startswith(b"-----BEGIN PRIVATE KEY-----\n"))
        key = _ec_key(self.pki.token_key_p8)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        public = serialization.load_pem_public_key(self.pki.token_public_key)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        self.assertEqual(_public_der(public), _public_der(key))
        # ES256 signs with it and its public half verifies.
        signature = key.sign(b"header.claims", ec.ECDSA(hashes.SHA256()))
        public.verify(signature, b"header.claims", ec.ECDSA(hashes.SHA256()))
        self.assertNotEqual(_public_der(key), _public_der(self.client_key))

    def test_ids(self) -> None:
        for value in (self.pki.token_key_id, self.pki.team_id):
            self.assertRegex(value, r"^[A-Z0-9]{10}$")
        self.assertNotEqual(self.pki.token_key_id, self.pki.team_id)
        other = make_test_pki("org.example.other")
        self.assertNotEqual(other.token_key_id, self.pki.token_key_id)
        self.assertNotEqual(other.team_id, self.pki.team_id)

    def test_repr_shows_no_key(self) -> None:
        text = repr(self.pki)
        self.assertIn(self.pki.token_key_id, text)
        self.assertNotIn("PRIVATE KEY", text)
        self.assertNotIn("CERTIFICATE", text)
        self.assertNotIn("passphrase", text)

    def test_not_collected_by_pytest(self) -> None:
        self.assertIs(getattr(TestPKI, "__test__", True), False)


class WriteTests(SynchronousTestCase):
    def test_files(self) -> None:
        pki = make_test_pki()
        directory = os.path.join(_temp_dir(self), "made")
        paths = pki.write(directory)
        expected = {
            "ca_cert": ("ca.pem", pki.ca_cert),
            "server_cert": ("server.pem", pki.server_cert),
            "server_key": ("server-key.pem", pki.server_key),
            "client_cert": ("client.pem", pki.client_cert),
            "client_key": ("client-key.pem", pki.client_key),
            "client_key_encrypted": ("client-key-encrypted.pem", pki.client_key_encrypted),
            "client_p12": ("client.p12", pki.client_p12),
            "client_bundle": ("client-bundle.pem", pki.client_bundle),
            "token_key_p8": (f"AuthKey_{pki.token_key_id}.p8", pki.token_key_p8),
            "token_public_key": ("token-pub.pem", pki.token_public_key),
        }
        self.assertEqual(set(paths), set(expected))
        self.assertEqual(
            sorted(os.listdir(directory)), sorted(name for name, _ in expected.values())
        )
        for field_name, (file_name, content) in expected.items():
            path = paths[field_name]
            self.assertEqual(path, os.path.join(directory, file_name))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), content, field_name)

    def test_private_files_are_owner_only(self) -> None:
        paths = make_test_pki().write(_temp_dir(self))
        private = {
            "server_key",
            "client_key",
            "client_key_encrypted",
            "client_p12",
            "client_bundle",
            "token_key_p8",
        }
        for name, path in paths.items():
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if name in private:
                self.assertEqual(mode & 0o077, 0, name)
            else:
                self.assertTrue(mode & stat.S_IRGRP, name)

    def test_overwrite_tightens_mode(self) -> None:
        directory = _temp_dir(self)
        path = os.path.join(directory, "client-key.pem")
        with open(path, "wb") as f:
            f.write(b"old")
        os.chmod(path, 0o666)
        paths = make_test_pki().write(directory)
        self.assertEqual(stat.S_IMODE(os.stat(paths["client_key"]).st_mode) & 0o077, 0)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), make_test_pki().client_key)

    def test_auth_key_name(self) -> None:
        pki = make_test_pki()
        paths = pki.write(_temp_dir(self))
        self.assertIsNotNone(
            re.fullmatch(r"AuthKey_[A-Z0-9]{10}\.p8", os.path.basename(paths["token_key_p8"]))
        )


class ServerOptionsTests(SynchronousTestCase):
    # Handshakes with these options are exercised in tests/test_credentials.py.
    def test_options(self) -> None:
        pki = make_test_pki()
        options = server_tls_options(pki)
        self.assertIsInstance(options, CertificateOptions)
        self.assertTrue(options.verify)
        self.assertTrue(options.requireCertificate)
        self.assertEqual(
            [c.to_cryptography() for c in options.caCerts or []],
            [x509.load_pem_x509_certificate(pki.ca_cert)],
        )
        assert options.certificate is not None
        self.assertEqual(
            options.certificate.to_cryptography(), x509.load_pem_x509_certificate(pki.server_cert)
        )
        # A context can be made from them (the key matches the certificate).
        self.assertIsNotNone(options.getContext())

    def test_client_certificate_optional(self) -> None:
        options = server_tls_options(make_test_pki(), require_client_cert=False)
        self.assertTrue(options.verify)
        self.assertFalse(options.requireCertificate)
