"""Provider tokens, the edges mutation testing found unpinned (``tools/mutation.py
core/jwt.py``): exact error messages (what an operator reads), boundaries (``iat`` 0, a
future ``iat`` exactly at the limit, ``min_age`` 0), keys in every form the loaders take,
and base64url details a token's bytes depend on.
"""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.errors import CredentialError
from txapns.core.jwt import (
    ProviderTokenSource,
    TokenRejected,
    _b64url,
    _b64url_decode,
    clock_skew_warning,
    load_signing_key,
    load_verifying_key,
    sign_provider_token,
    validate_ids,
    verify_provider_token,
)

KEY_ID = "ABC123DEFG"
TEAM_ID = "TEAM456XYZ"
NOW = 1_700_000_000
KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = KEY.public_key()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: object) -> str:
    return b64(json.dumps(obj).encode())


def forge(header: object, claims: object, signature: bytes | None = None) -> str:
    """A token with any header and claims, signed by KEY (or with the given signature)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    if signature is None:
        r, s = decode_dss_signature(KEY.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{b64(signature)}"


HEADER = {"alg": "ES256", "kid": KEY_ID}
CLAIMS = {"iss": TEAM_ID, "iat": NOW}


class MessagesTests(SynchronousTestCase):
    """What a refused token says: the reason and the exact detail."""

    def rejected(self, token: str | bytes | None, **options: object) -> str:
        kw: dict[str, object] = {"now": NOW, **options}
        with self.assertRaises(TokenRejected) as cm:
            verify_provider_token(token, PUBLIC, **kw)  # type: ignore[arg-type]
        error = cm.exception
        self.assertEqual(str(error), f"{error.reason}: {error.detail}")
        return str(error)

    def test_refusals(self) -> None:
        good = forge(HEADER, CLAIMS)
        head, claims, signature = good.split(".")
        invalid = "InvalidProviderToken: "
        for token, expected in [
            ("", "MissingProviderToken: no provider token"),
            ("bearer  ", "MissingProviderToken: no provider token"),
            ("é".encode(), invalid + "the token is not ASCII"),
            ("a.b", invalid + "a JWT has 3 dot-separated parts, this one has 2"),
            (f"!!.{claims}.{signature}", invalid + "the header is not base64url JSON"),
            (f"{head}.!!.{signature}", invalid + "the claims is not base64url JSON"),
            (f"{segment([1])}.{claims}.{signature}", invalid + "the header is not a JSON object"),
            (f"{head}.{segment(2)}.{signature}", invalid + "the claims is not a JSON object"),
            (forge({"kid": KEY_ID}, CLAIMS), invalid + "alg must be ES256, not None"),
            (forge({**HEADER, "alg": "HS256"}, CLAIMS), invalid + "alg must be ES256, not 'HS256'"),
            (forge({"alg": "ES256"}, CLAIMS), invalid + "kid must be a 10-character key id"),
            (forge(HEADER, {"iat": NOW}), invalid + "iss must be a 10-character team id"),
            (forge(HEADER, {"iss": TEAM_ID}), invalid + "iat must be an integer (UNIX seconds)"),
            (f"{head}.{claims}.{signature}!", invalid + "the signature is not base64url"),
            (
                forge(HEADER, CLAIMS, b"\x30" + b"\x01" * 69),
                invalid + "the ES256 signature must be 64 bytes (raw r||s), not 70 (DER-encoded?)",
            ),
            (
                forge(HEADER, CLAIMS, b"\x01" * 63),
                invalid + "the ES256 signature must be 64 bytes (raw r||s), not 63",
            ),
        ]:
            self.assertEqual(self.rejected(token), expected, token)

    def test_unknown_key_wrong_team_expired_future(self) -> None:
        token = forge(HEADER, CLAIMS)
        self.assertEqual(self.unknown_key(token), "InvalidProviderToken: unknown key id ABC123DEFG")
        self.assertEqual(
            self.rejected(token, team_id="OTHER12345"),
            "InvalidProviderToken: team id TEAM456XYZ is not the team of key id ABC123DEFG",
        )
        self.assertEqual(
            self.rejected(token, now=NOW + 3700),
            "ExpiredProviderToken: issued 3700 s ago; the limit is 3600 s",
        )
        self.assertEqual(
            self.rejected(token, now=NOW - 100, max_future=60),
            "InvalidProviderToken: issued 100 s in the future",
        )

    def unknown_key(self, token: str) -> str:
        with self.assertRaises(TokenRejected) as cm:
            verify_provider_token(token, {"OTHER12345": PUBLIC}, now=NOW)
        return str(cm.exception)

    def test_a_future_iat_up_to_the_limit_passes(self) -> None:
        token = forge(HEADER, CLAIMS)
        for ahead in (0, 30, 60):
            verified = verify_provider_token(token, PUBLIC, now=NOW - ahead, max_future=60)
            self.assertEqual(verified.issued_at, NOW)
        self.rejected(token, now=NOW - 61, max_future=60)

    def test_a_signature_with_characters_outside_base64url_is_refused(self) -> None:
        """A lenient decoder would drop the stray characters and accept the signature."""
        head, claims, signature = forge(HEADER, CLAIMS).split(".")
        for stray in ("$$$$", "+", "/", "=", " "):
            token = f"{head}.{claims}.{signature[:8]}{stray}{signature[8:]}"
            self.assertEqual(
                self.rejected(token), "InvalidProviderToken: the signature is not base64url"
            )


class Base64Tests(SynchronousTestCase):
    @given(st.binary(max_size=70))
    def test_round_trip_without_padding(self, data: bytes) -> None:
        text = _b64url(data)
        self.assertEqual(text, base64.urlsafe_b64encode(data).decode().rstrip("="))
        self.assertEqual(_b64url_decode(text), data)

    def test_an_encoding_may_end_in_x(self) -> None:
        self.assertEqual(_b64url(b"\x00\x00\x17"), "AAAX")
        self.assertEqual(_b64url(b"\x05\xd7"), "Bdc")

    def test_lengths(self) -> None:
        self.assertEqual(_b64url_decode("AAAA"), b"\x00\x00\x00")
        for bad in ("AAAAA", "A", "AA$A", "AA=A"):
            with self.assertRaises(ValueError):
                _b64url_decode(bad)


class SigningTests(SynchronousTestCase):
    def test_issued_at_zero_is_allowed_negative_is_not(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, TEAM_ID, 0)
        self.assertEqual(verify_provider_token(token, PUBLIC, now=0).issued_at, 0)
        with self.assertRaises(CredentialError) as cm:
            sign_provider_token(KEY, KEY_ID, TEAM_ID, -1)
        self.assertEqual(str(cm.exception), "issued_at must be non-negative UNIX seconds, not -1")

    def test_source_at_time_zero_and_min_age_zero(self) -> None:
        import random

        source = ProviderTokenSource(
            KEY, KEY_ID, TEAM_ID, rng=random.Random(1), min_age=0, max_age=0
        )
        self.assertTrue(source.needs_refresh(0.5))
        source.token(0.5)
        self.assertEqual(source.issued_at, 0)
        self.assertEqual(source.refresh_at, 0.5)

    def test_needs_refresh(self) -> None:
        import random

        source = ProviderTokenSource(KEY, KEY_ID, TEAM_ID, rng=random.Random(1))
        self.assertTrue(source.needs_refresh(NOW))
        source.token(NOW)
        due = source.refresh_at
        assert due is not None
        self.assertFalse(source.needs_refresh(NOW))
        self.assertFalse(source.needs_refresh(due - 0.001))
        self.assertTrue(source.needs_refresh(due))
        self.assertTrue(source.needs_refresh(due + 1))

    def test_source_refusals(self) -> None:
        import random

        rng = random.Random(1)
        with self.assertRaises(ValueError) as cm:
            ProviderTokenSource(KEY, KEY_ID, TEAM_ID, rng=rng, min_age=-1)
        self.assertEqual(str(cm.exception), "need 0 <= min_age <= max_age, got -1 and 3000")
        rsa_key: object = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        for bad in (rsa_key, ec.generate_private_key(ec.SECP384R1())):
            with self.assertRaises(CredentialError) as cm2:
                ProviderTokenSource(bad, KEY_ID, TEAM_ID, rng=rng)  # type: ignore[arg-type]
            self.assertEqual(
                str(cm2.exception), "the token signing key must be an EC P-256 private key"
            )


def pkcs8(key: object, encoding: serialization.Encoding, password: bytes | None = None) -> bytes:
    algorithm: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, algorithm)  # type: ignore[attr-defined,no-any-return]


class KeyTests(SynchronousTestCase):
    def test_encrypted_keys_pem_and_der(self) -> None:
        for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
            data = pkcs8(KEY, encoding, b"pass phrase")
            key = load_signing_key(data, b"pass phrase")
            self.assertEqual(key.private_numbers(), KEY.private_numbers())

    def test_pem_after_white_space(self) -> None:
        key = load_signing_key(b"\n  " + pkcs8(KEY, serialization.Encoding.PEM))
        self.assertEqual(key.private_numbers(), KEY.private_numbers())

    def test_signing_key_messages(self) -> None:
        with self.assertRaises(CredentialError) as cm:
            load_signing_key("text")  # type: ignore[arg-type]
        self.assertEqual(
            str(cm.exception),
            "the token signing key must be bytes (the .p8 file's contents), not str",
        )
        with self.assertRaises(CredentialError) as cm:
            load_signing_key(b"junk")
        self.assertEqual(
            str(cm.exception),
            "could not read the token signing key (4 bytes): expected the PEM contents of an "
            "AuthKey_<KEYID>.p8 file (PKCS#8 EC private key)",
        )
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        with self.assertRaises(CredentialError) as cm:
            load_signing_key(pkcs8(rsa_key, serialization.Encoding.PEM))
        self.assertEqual(
            str(cm.exception),
            f"the token signing key is a {type(rsa_key).__name__.lstrip('_')}, not an EC P-256 "
            "key; APNs needs the .p8 key from Apple's developer portal",
        )
        self.assertNotIn("NoneType", str(cm.exception))
        with self.assertRaises(CredentialError) as cm:
            load_signing_key(pkcs8(x25519.X25519PrivateKey.generate(), serialization.Encoding.PEM))
        self.assertTrue(
            str(cm.exception).startswith("the token signing key is a X25519PrivateKey,")
        )

    def test_verifying_key_forms(self) -> None:
        self.assertIs(load_verifying_key(PUBLIC), PUBLIC)
        self.assertEqual(load_verifying_key(KEY).public_numbers(), PUBLIC.public_numbers())
        pem = PUBLIC.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertEqual(load_verifying_key(pem).public_numbers(), PUBLIC.public_numbers())

    def test_verifying_key_refusals(self) -> None:
        not_p256 = "the token verifying key is not an EC P-256 public key"
        rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
        p384_public = ec.generate_private_key(ec.SECP384R1()).public_key()
        for key in (rsa_public, p384_public):
            pem = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            with self.assertRaises(CredentialError) as cm:
                load_verifying_key(pem)
            self.assertEqual(str(cm.exception), not_p256)
        with self.assertRaises(CredentialError) as cm:
            load_verifying_key(p384_public)  # type: ignore[arg-type]
        self.assertEqual(str(cm.exception), not_p256)
        with self.assertRaises(CredentialError) as cm:
            load_verifying_key(b"-----BEGIN PUBLIC KEY-----\njunk\n-----END PUBLIC KEY-----\n")
        self.assertEqual(str(cm.exception), "could not read the token verifying key (PEM)")


class IdsTests(SynchronousTestCase):
    def message(self, *args: str, **kw: str) -> str:
        with self.assertRaises(CredentialError) as cm:
            validate_ids(*args, **kw)
        return str(cm.exception)

    def test_messages(self) -> None:
        self.assertEqual(
            self.message(1, TEAM_ID),  # type: ignore[arg-type]
            "the key id must be a str, not int",
        )
        self.assertEqual(
            self.message(KEY_ID, None),  # type: ignore[arg-type]
            "the team id must be a str, not NoneType",
        )
        self.assertEqual(
            self.message("abc123defg", TEAM_ID),
            "the key id must be exactly 10 characters A-Z/0-9, got 'abc123defg' "
            "(it must be upper case)",
        )
        self.assertEqual(
            self.message(KEY_ID, " TEAM456XY"),
            "the team id must be exactly 10 characters A-Z/0-9, got ' TEAM456XY' "
            "(it has surrounding whitespace)",
        )
        for value in ("ABC123DEF!", "ABC", "ABC123DEFGH"):
            self.assertEqual(
                self.message(KEY_ID, value),
                f"the team id must be exactly 10 characters A-Z/0-9, got {value!r}",
            )

    def test_the_file_name_is_its_last_path_component(self) -> None:
        for path in (
            "/etc/apns keys/v2/AuthKey_ZZZ123DEFG.p8",
            "C:\\apns keys\\v2\\AuthKey_ZZZ123DEFG.p8",
            "AuthKey_ZZZ123DEFG.p8",
        ):
            self.assertEqual(
                self.message(KEY_ID, TEAM_ID, key_file_name=path),
                "key id ABC123DEFG does not match the key file AuthKey_ZZZ123DEFG.p8 "
                "(key id ZZZ123DEFG)",
                path,
            )
            self.assertEqual(
                self.message("ABC123DEFG", "ZZZ123DEFG", key_file_name=path),
                "key id and team id look swapped: the key file AuthKey_ZZZ123DEFG.p8 is for key "
                "id ZZZ123DEFG, which was given as the team id",
            )


class ClockSkewTests(SynchronousTestCase):
    def test_exact_text_and_direction(self) -> None:
        tail = (
            "; provider tokens are judged by Apple's clock and will be rejected as "
            "ExpiredProviderToken or InvalidProviderToken: fix the clock (NTP)"
        )
        self.assertEqual(
            clock_skew_warning(1000.0, 400.0),
            "the local clock is 600 s ahead of the server's Date header" + tail,
        )
        self.assertEqual(
            clock_skew_warning(400.0, 1000.0),
            "the local clock is 600 s behind the server's Date header" + tail,
        )

    def test_a_skew_of_exactly_the_tolerance_is_quiet(self) -> None:
        self.assertIsNone(clock_skew_warning(1300.0, 1000.0))
        self.assertIsNone(clock_skew_warning(700.0, 1000.0))
        self.assertIsNone(clock_skew_warning(5.0, 5.0, tolerance=0))
        self.assertIsNotNone(clock_skew_warning(1300.5, 1000.0))

    def test_direction_of_a_small_skew(self) -> None:
        warning = clock_skew_warning(1000.5, 1000.0, tolerance=0)
        assert warning is not None
        self.assertIn("ahead of", warning)
        warning = clock_skew_warning(1000.0, 1000.5, tolerance=0)
        assert warning is not None
        self.assertIn("behind", warning)
