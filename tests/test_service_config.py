"""The service's TOML configuration: model, defaults and every refusal message."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    pkcs12,
)
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from txapns.service.config import (
    DEFAULT_LISTEN,
    CertificateCredentials,
    ConfigError,
    TokenCredentials,
    load_config,
)

from .helpers import temp_dir
from .helpers_service import KEY_ID, NOW, TEAM_ID, write_p8


def make_cert(
    not_after: dt.datetime, not_before: dt.datetime | None = None
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Apple Push Services: com.x")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before or not_after - dt.timedelta(days=365))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return key, cert


class ConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)
        write_p8(self.dir / f"AuthKey_{KEY_ID}.p8")
        (self.dir / "api.key").write_text("s3cret-s3cret-s3cret\n")

    def write(self, text: str) -> Path:
        p = self.dir / "txapns.toml"
        p.write_text(text)
        return p

    def load(self, text: str):  # type: ignore[no-untyped-def]
        return load_config(self.write(text), now=NOW)

    def token_app(self, **over: str) -> str:
        fields = {
            "name": "shop",
            "bundle_id": "com.example.shop",
            "environment": "sandbox",
            "key_file": f"AuthKey_{KEY_ID}.p8",
            "key_id": KEY_ID,
            "team_id": TEAM_ID,
        }
        fields.update(over)
        body = "\n".join(f'{k} = "{v}"' for k, v in fields.items() if v != "")
        return f"[[app]]\n{body}\n"

    def assertRefused(self, text: str, *fragments: str) -> str:
        with self.assertRaises(ConfigError) as cm:
            self.load(text)
        message = str(cm.exception)
        for f in fragments:
            self.assertIn(f, message)
        return message

    # -- accepted configurations --

    def test_token_app_and_defaults(self) -> None:
        cfg = self.load('api_key_file = "api.key"\n' + self.token_app())
        self.assertEqual(cfg.listen, (DEFAULT_LISTEN,))
        self.assertEqual(cfg.spool, self.dir / "txapns-spool.sqlite3")
        self.assertEqual(cfg.retention_seconds, 7 * 86400)
        self.assertEqual(cfg.api_key(), b"s3cret-s3cret-s3cret")
        (app,) = cfg.apps
        self.assertEqual(app.name, "shop")
        self.assertEqual(app.protocol, "http2")
        self.assertTrue(app.token_auth)
        self.assertEqual(app.endpoint(), ("api.sandbox.push.apple.com", 443))
        assert isinstance(app.credentials, TokenCredentials)
        self.assertEqual(app.credentials.key_file, self.dir / f"AuthKey_{KEY_ID}.p8")
        self.assertIs(cfg.app("shop"), app)

    def test_service_settings_and_overrides(self) -> None:
        cfg = self.load(
            'listen = ["tcp:1:interface=127.0.0.1", "ssl:2"]\nspool = "/tmp/x.db"\n'
            "retention_days = 0.5\nmax_recipients = 10\n"
            + self.token_app(host="127.0.0.1")
            + "port = 8443\n"
        )
        self.assertEqual(cfg.listen, ("tcp:1:interface=127.0.0.1", "ssl:2"))
        self.assertEqual(cfg.spool, Path("/tmp/x.db"))
        self.assertEqual(cfg.retention_seconds, 43200)
        self.assertEqual(cfg.max_recipients, 10)
        self.assertEqual(cfg.apps[0].endpoint(), ("127.0.0.1", 8443))

    def test_max_queue_time_reaches_the_client(self) -> None:
        """Issue 9 item 1: the queue-time limit is an app setting (300 s by default)."""
        from twisted.internet.task import Clock

        from txapns.http2 import HTTP2Client
        from txapns.service.senders import make_sender

        self.assertEqual(self.load(self.token_app()).apps[0].max_queue_time, 300.0)
        cfg = self.load(self.token_app() + "max_queue_time = 60\n")
        self.assertEqual(cfg.apps[0].max_queue_time, 60.0)
        sender = make_sender(cfg.apps[0], Clock())
        assert isinstance(sender, HTTP2Client)
        assert sender.queue_time is not None
        self.assertEqual(sender.queue_time.limit, 60.0)
        for bad in ("0", "-1", '"5"', "true"):
            self.assertRefused(
                self.token_app() + f"max_queue_time = {bad}\n", "app 'shop'", "max_queue_time"
            )

    def test_certificate_pem_with_encrypted_key(self) -> None:
        key, cert = make_cert(NOW + dt.timedelta(days=30))
        (self.dir / "c.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        (self.dir / "k.pem").write_bytes(
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
        )
        (self.dir / "pass").write_text("pw\n")
        cfg = self.load(
            '[[app]]\nname = "legacy"\nbundle_id = "com.example.legacy"\nprotocol = "binary"\n'
            'cert_file = "c.pem"\nkey_file = "k.pem"\npassphrase_file = "pass"\n'
        )
        app = cfg.apps[0]
        self.assertFalse(app.token_auth)
        self.assertEqual(app.endpoint(), ("gateway.push.apple.com", 2195))
        assert isinstance(app.credentials, CertificateCredentials)
        self.assertEqual(app.credentials.passphrase(), b"pw")

    def test_p12(self) -> None:
        key, cert = make_cert(NOW + dt.timedelta(days=30))
        (self.dir / "c.p12").write_bytes(
            pkcs12.serialize_key_and_certificates(
                b"x", key, cert, None, BestAvailableEncryption(b"pw")
            )
        )
        (self.dir / "pass").write_text("pw")
        cfg = self.load(
            '[[app]]\nname = "p"\nbundle_id = "com.example.p"\np12_file = "c.p12"\n'
            'passphrase_file = "pass"\n'
        )
        self.assertEqual(cfg.apps[0].name, "p")
        (self.dir / "pass").write_text("wrong")
        self.assertRefused(
            '[[app]]\nname = "p"\nbundle_id = "com.example.p"\np12_file = "c.p12"\n'
            'passphrase_file = "pass"\n',
            "p12_file 'c.p12' cannot be opened",
        )

    # -- refusals --

    def test_swapped_ids(self) -> None:
        write_p8(self.dir / f"AuthKey_{TEAM_ID}.p8")
        self.assertRefused(
            self.token_app(key_file=f"AuthKey_{TEAM_ID}.p8"),
            "look swapped",
            f"set key_id = {TEAM_ID!r}",
        )

    def test_key_id_not_matching_file_name(self) -> None:
        self.assertRefused(self.token_app(key_id="ZZZ1234567"), "does not match the key file")

    def test_id_shape(self) -> None:
        self.assertRefused(
            self.token_app(key_id="abc1234567"), "key_id must be 10 characters", "'ABC1234567'"
        )
        self.assertRefused(self.token_app(team_id="TEAM98765"), "team_id must be 10 characters")
        self.assertRefused(self.token_app(team_id=KEY_ID), "are both")

    def test_key_must_be_p256(self) -> None:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / f"AuthKey_{KEY_ID}.p8").write_bytes(
            rsa_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        self.assertRefused(self.token_app(), "not a P-256 EC key")
        p384 = ec.generate_private_key(ec.SECP384R1())
        (self.dir / f"AuthKey_{KEY_ID}.p8").write_bytes(
            p384.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        self.assertRefused(self.token_app(), "not a P-256 EC key")
        (self.dir / f"AuthKey_{KEY_ID}.p8").write_text("not a key")
        self.assertRefused(self.token_app(), "is not a PEM private key")

    def test_missing_key_file(self) -> None:
        (self.dir / f"AuthKey_{KEY_ID}.p8").unlink()
        self.assertRefused(self.token_app(), "key_file", "cannot be read")

    def test_expired_certificate(self) -> None:
        key, cert = make_cert(NOW - dt.timedelta(days=1))
        (self.dir / "c.pem").write_bytes(
            cert.public_bytes(Encoding.PEM)
            + key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        self.assertRefused(
            '[[app]]\nname = "a"\nbundle_id = "com.example.a"\ncert_file = "c.pem"\n',
            "certificate expired on",
        )

    def test_certificate_key_mismatch(self) -> None:
        _, cert = make_cert(NOW + dt.timedelta(days=30))
        other, _ = make_cert(NOW + dt.timedelta(days=30))
        (self.dir / "c.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        (self.dir / "k.pem").write_bytes(
            other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        self.assertRefused(
            '[[app]]\nname = "a"\nbundle_id = "com.example.a"\ncert_file = "c.pem"\n'
            'key_file = "k.pem"\n',
            "does not belong to the certificate",
        )

    def test_encrypted_key_without_passphrase(self) -> None:
        key, cert = make_cert(NOW + dt.timedelta(days=30))
        (self.dir / "c.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        (self.dir / "k.pem").write_bytes(
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
        )
        self.assertRefused(
            '[[app]]\nname = "a"\nbundle_id = "com.example.a"\ncert_file = "c.pem"\n'
            'key_file = "k.pem"\n',
            "encrypted: give passphrase_file",
        )

    def test_bundle_id_environment_protocol(self) -> None:
        self.assertRefused(self.token_app(bundle_id="shop"), "bundle_id must look like")
        self.assertRefused(self.token_app(environment="prod"), "'production' or 'sandbox'")
        self.assertRefused(self.token_app(protocol="http3"), "'http2' or 'binary'")
        self.assertRefused(
            self.token_app(protocol="binary"), "binary protocol only takes certificate"
        )

    def test_structure(self) -> None:
        self.assertRefused("listn = []\n", "unknown setting(s) listn")
        self.assertRefused(self.token_app(colour="blue"), "unknown key(s) colour")
        self.assertRefused(self.token_app() + self.token_app(), "configured twice")
        self.assertRefused(self.token_app(name="has space"), "name must be")
        self.assertRefused("listen = []\n", "listen must be a non-empty list")
        self.assertRefused("retention_days = -1\n", "retention_days must be a positive number")
        self.assertRefused("max_recipients = 1.5\n", "max_recipients must be a positive integer")
        self.assertRefused("[app\n", "not valid TOML")
        self.assertRefused('[[app]]\nname = "a"\nbundle_id = "com.example.a"\n', "no credential")
        self.assertRefused(self.token_app(team_id=""), "token auth needs team_id")
        self.assertRefused(self.token_app(cert_file="c.pem"), "either token auth", "not both")
        self.assertRefused('invalid_token_webhook = "ftp://x"\n', "http(s) URL")

    def test_api_key_file_too_short(self) -> None:
        (self.dir / "short.key").write_text("abc")
        self.assertRefused('api_key_file = "short.key"\n', "at least 16")

    def test_clock_sanity(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            load_config(self.write(self.token_app()), now=dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
        self.assertIn("fix the clock", str(cm.exception))

    def test_check_files_false_skips_credentials(self) -> None:
        (self.dir / f"AuthKey_{KEY_ID}.p8").unlink()
        cfg = load_config(self.write(self.token_app()), now=NOW, check_files=False)
        self.assertEqual(cfg.apps[0].name, "shop")

    def test_unreadable_config(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            load_config(self.dir / "missing.toml")
        self.assertIn("cannot read configuration", str(cm.exception))

    # -- the binary feedback service --

    def load_unchecked(self, text: str):  # type: ignore[no-untyped-def]
        return load_config(self.write(text), now=NOW, check_files=False)

    def binary_app(self, extra: str = "", environment: str = "production") -> str:
        return (
            '[[app]]\nname = "legacy"\nbundle_id = "com.example.legacy"\n'
            f'protocol = "binary"\nenvironment = "{environment}"\ncert_file = "push.pem"\n' + extra
        )

    def test_feedback_interval_and_endpoints(self) -> None:
        cfg = self.load_unchecked(self.binary_app())
        self.assertEqual(cfg.feedback_interval, 3600)
        self.assertEqual(cfg.apps[0].feedback_endpoint(), ("feedback.push.apple.com", 2196))
        sandbox = self.load_unchecked(self.binary_app(environment="sandbox")).apps[0]
        self.assertEqual(sandbox.feedback_endpoint(), ("feedback.sandbox.push.apple.com", 2196))
        # A gateway elsewhere serves its feedback on the same host, unless told otherwise.
        moved = self.load_unchecked(self.binary_app('host = "gw.example"\nport = 12195\n'))
        self.assertEqual(moved.apps[0].feedback_endpoint(), ("gw.example", 2196))
        both = self.load_unchecked(
            "feedback_interval = 0\n"
            + self.binary_app('feedback_host = "fb.example"\nfeedback_port = 12196\n')
        )
        self.assertEqual(both.feedback_interval, 0)
        self.assertEqual(both.apps[0].feedback_endpoint(), ("fb.example", 12196))

    def test_feedback_refusals(self) -> None:
        for bad in ("-1", "true", '"hourly"', "inf"):
            with self.assertRaises(ConfigError) as cm:
                self.load_unchecked(f"feedback_interval = {bad}\n")
            self.assertIn("feedback_interval must be a number of seconds", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            self.load_unchecked(self.binary_app("feedback_port = 70000\n"))
        self.assertIn("feedback_port must be an integer within 1..65535", str(cm.exception))
        self.assertRefused(
            self.token_app(feedback_host="fb.example"), "feedback_host and feedback_port are for"
        )
