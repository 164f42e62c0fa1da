"""Provider tokens (``txapns.core.jwt``): signing, verifying, keys, ids and rotation."""

from __future__ import annotations

import base64
import itertools
import json
import math
import random

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.errors import APNsError, CredentialError
from txapns.core.jwt import (
    EXPIRED_PROVIDER_TOKEN,
    INVALID_PROVIDER_TOKEN,
    MISSING_PROVIDER_TOKEN,
    ProviderTokenSource,
    TokenRejected,
    clock_skew_warning,
    load_signing_key,
    load_verifying_key,
    parse_http_date,
    sign_provider_token,
    validate_ids,
    verify_provider_token,
)

KEY_ID = "ABC123DEFG"
TEAM_ID = "TEAM456XYZ"
NOW = 1_700_000_000


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: object, claims: object, key: ec.EllipticCurvePrivateKey = KEY) -> str:
    """A token with arbitrary header/claims, correctly ES256-signed."""
    signing_input = (
        _b64encode(json.dumps(header).encode()) + "." + _b64encode(json.dumps(claims).encode())
    )
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return signing_input + "." + _b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class LoadKeyTests(SynchronousTestCase):
    def test_loads_p256_pkcs8_pem(self) -> None:
        key = load_signing_key(_pem(KEY))
        self.assertEqual(key.private_numbers(), KEY.private_numbers())

    def test_loads_der(self) -> None:
        der = KEY.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.assertEqual(load_signing_key(der).private_numbers(), KEY.private_numbers())

    def test_rejects_other_curve(self) -> None:
        p384 = ec.generate_private_key(ec.SECP384R1())
        with self.assertRaises(CredentialError) as cm:
            load_signing_key(_pem(p384))
        self.assertIn("P-256", str(cm.exception))

    def test_rejects_rsa(self) -> None:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        with self.assertRaises(CredentialError) as cm:
            load_signing_key(_pem(rsa_key))
        self.assertIn("not an EC P-256 key", str(cm.exception))

    def test_garbage_is_not_echoed(self) -> None:
        secret = b"-----BEGIN PRIVATE KEY-----\nSECRETSECRETSECRET\n-----END PRIVATE KEY-----\n"
        with self.assertRaises(CredentialError) as cm:
            load_signing_key(secret)
        self.assertNotIn("SECRET", str(cm.exception))
        self.assertIsNone(cm.exception.__cause__)
        self.assertTrue(cm.exception.__suppress_context__)

    def test_rejects_str(self) -> None:
        with self.assertRaises(CredentialError):
            load_signing_key(_pem(KEY).decode())  # type: ignore[arg-type]

    def test_verifying_key_from_public_pem_and_private(self) -> None:
        public_pem = KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        expected = KEY.public_key().public_numbers()
        self.assertEqual(load_verifying_key(public_pem).public_numbers(), expected)
        self.assertEqual(load_verifying_key(_pem(KEY)).public_numbers(), expected)
        self.assertEqual(load_verifying_key(KEY).public_numbers(), expected)
        with self.assertRaises(CredentialError):
            load_verifying_key(b"not a key")


class IdTests(SynchronousTestCase):
    def test_valid(self) -> None:
        validate_ids(KEY_ID, TEAM_ID)
        validate_ids(KEY_ID, TEAM_ID, key_file_name=f"/keys/AuthKey_{KEY_ID}.p8")

    def test_wrong_length_or_charset(self) -> None:
        for key_id, team_id in [
            ("ABC123DEF", TEAM_ID),
            (KEY_ID, "TEAM456XYZ1"),
            ("ABC-23DEFG", TEAM_ID),
            (KEY_ID, ""),
        ]:
            with self.assertRaises(CredentialError, msg=(key_id, team_id)):
                validate_ids(key_id, team_id)

    def test_lower_case_hint(self) -> None:
        with self.assertRaises(CredentialError) as cm:
            validate_ids(KEY_ID.lower(), TEAM_ID)
        self.assertIn("upper case", str(cm.exception))
        self.assertIn("key id", str(cm.exception))

    def test_swapped_ids_detected_from_file_name(self) -> None:
        with self.assertRaises(CredentialError) as cm:
            validate_ids(TEAM_ID, KEY_ID, key_file_name=f"AuthKey_{KEY_ID}.p8")
        self.assertIn("look swapped", str(cm.exception))

    def test_key_id_not_the_file_name_id(self) -> None:
        with self.assertRaises(CredentialError) as cm:
            validate_ids(KEY_ID, TEAM_ID, key_file_name="AuthKey_ZZZZZZZZZZ.p8")
        self.assertNotIn("swapped", str(cm.exception))
        self.assertIn("ZZZZZZZZZZ", str(cm.exception))

    def test_renamed_file_is_not_judged(self) -> None:
        validate_ids(KEY_ID, TEAM_ID, key_file_name="/etc/apns/token.p8")


class SignTests(SynchronousTestCase):
    def test_golden_header_and_claims(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW)
        header, claims, signature = token.split(".")
        self.assertEqual(_b64decode(header), b'{"alg":"ES256","kid":"ABC123DEFG"}')
        self.assertEqual(_b64decode(claims), b'{"iss":"TEAM456XYZ","iat":1700000000}')
        for segment in (header, claims, signature):
            self.assertNotIn("=", segment)
        self.assertEqual(len(_b64decode(signature)), 64)

    def test_signature_is_raw_r_s_verified_independently(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW)
        header, claims, signature = token.split(".")
        raw = _b64decode(signature)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        # Raises InvalidSignature if the JOSE r||s form were wrong.
        KEY.public_key().verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))

    def test_round_trip(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW)
        verified = verify_provider_token(token, KEY.public_key(), now=NOW + 10)
        self.assertEqual(verified, (KEY_ID, TEAM_ID, NOW))
        self.assertEqual(verified.key_id, KEY_ID)
        self.assertEqual(verified.issued_at, NOW)

    def test_round_trip_with_bearer_prefix_and_key_map(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW)
        verified = verify_provider_token(
            f"bearer {token}", {KEY_ID: KEY.public_key()}, now=NOW, team_id=TEAM_ID
        )
        self.assertEqual(verified.team_id, TEAM_ID)

    def test_bad_ids_or_iat_refused(self) -> None:
        with self.assertRaises(CredentialError):
            sign_provider_token(KEY, "short", TEAM_ID, NOW)
        with self.assertRaises(CredentialError):
            sign_provider_token(KEY, KEY_ID, TEAM_ID, -1)
        with self.assertRaises(CredentialError):
            sign_provider_token(KEY, KEY_ID, TEAM_ID, 1.5)  # type: ignore[arg-type]


class VerifyTests(SynchronousTestCase):
    def assertRejected(self, reason: str, token: str | None, **kwargs: object) -> TokenRejected:
        params: dict[str, object] = {"now": NOW}
        params.update(kwargs)
        key = params.pop("key", KEY.public_key())
        with self.assertRaises(TokenRejected) as cm:
            verify_provider_token(token, key, **params)  # type: ignore[arg-type]
        self.assertEqual(cm.exception.reason, reason)
        self.assertIsInstance(cm.exception, APNsError)
        if token:
            self.assertNotIn(token, str(cm.exception))
        return cm.exception

    def test_missing(self) -> None:
        self.assertRejected(MISSING_PROVIDER_TOKEN, None)
        self.assertRejected(MISSING_PROVIDER_TOKEN, "")
        self.assertRejected(MISSING_PROVIDER_TOKEN, "bearer ")

    def test_expired_after_one_hour(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW)
        verify_provider_token(token, KEY.public_key(), now=NOW + 3600)
        self.assertRejected(EXPIRED_PROVIDER_TOKEN, token, now=NOW + 3601)
        self.assertRejected(EXPIRED_PROVIDER_TOKEN, token, now=NOW + 61, max_age=60)

    def test_future_iat_only_with_max_future(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW + 600)
        verify_provider_token(token, KEY.public_key(), now=NOW)
        self.assertRejected(INVALID_PROVIDER_TOKEN, token, max_future=300)

    def test_bad_signature(self) -> None:
        token = sign_provider_token(OTHER_KEY, KEY_ID, TEAM_ID, NOW)
        error = self.assertRejected(INVALID_PROVIDER_TOKEN, token)
        self.assertIn("signature", error.detail)

    def test_tampered_claims(self) -> None:
        header, _, signature = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW).split(".")
        claims = _b64encode(b'{"iss":"TEAM456XYZ","iat":1700009999}')
        self.assertRejected(INVALID_PROVIDER_TOKEN, f"{header}.{claims}.{signature}")

    def test_der_signature_refused(self) -> None:
        header, claims, _ = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW).split(".")
        der = KEY.sign(f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
        error = self.assertRejected(INVALID_PROVIDER_TOKEN, f"{header}.{claims}.{_b64encode(der)}")
        self.assertIn("DER", error.detail)

    def test_wrong_team(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, "OTHERTEAM1", NOW)
        self.assertRejected(INVALID_PROVIDER_TOKEN, token, team_id=TEAM_ID)

    def test_unknown_key_id(self) -> None:
        token = sign_provider_token(KEY, "ZZZZZZZZZZ", TEAM_ID, NOW)
        self.assertRejected(INVALID_PROVIDER_TOKEN, token, key={KEY_ID: KEY.public_key()})

    def test_malformed(self) -> None:
        good = {"alg": "ES256", "kid": KEY_ID}
        claims = {"iss": TEAM_ID, "iat": NOW}
        cases = [
            "a.b",
            "a.b.c.d",
            "!!!.e30.e30",
            _forge({"alg": "HS256", "kid": KEY_ID}, claims),
            _forge({"alg": "ES256"}, claims),
            _forge(good, {"iss": TEAM_ID, "iat": str(NOW)}),
            _forge(good, {"iss": TEAM_ID, "iat": True}),
            _forge(good, {"iat": NOW}),
            _forge(good, [1, 2]),
        ]
        for token in cases:
            self.assertRejected(INVALID_PROVIDER_TOKEN, token)
        # The forging helper itself makes valid tokens.
        verify_provider_token(_forge(good, claims), KEY.public_key(), now=NOW)

    def test_bytes_token(self) -> None:
        token = sign_provider_token(KEY, KEY_ID, TEAM_ID, NOW)
        self.assertEqual(
            verify_provider_token(token.encode(), KEY.public_key(), now=NOW).key_id, KEY_ID
        )


class TokenSourceTests(SynchronousTestCase):
    def source(self, seed: int = 1, **kwargs: float) -> ProviderTokenSource:
        return ProviderTokenSource(KEY, KEY_ID, TEAM_ID, rng=random.Random(seed), **kwargs)

    def test_first_token_minted_on_demand(self) -> None:
        source = self.source()
        self.assertIsNone(source.current())
        self.assertEqual(source.generation, 0)
        token = source.token(NOW + 0.7)
        self.assertEqual(source.generation, 1)
        self.assertEqual(source.issued_at, NOW)
        self.assertEqual(verify_provider_token(token, KEY.public_key(), now=NOW).issued_at, NOW)
        self.assertNotIn(token, repr(source))

    def test_same_token_until_refresh_age(self) -> None:
        source = self.source()
        first = source.token(NOW)
        refresh_at = source.refresh_at
        assert refresh_at is not None
        self.assertGreaterEqual(refresh_at, NOW + 20 * 60)
        self.assertLessEqual(refresh_at, NOW + 60 * 60)
        self.assertIs(source.token(refresh_at - 0.001), first)
        self.assertEqual(source.generation, 1)
        second = source.token(refresh_at)
        self.assertNotEqual(second, first)
        self.assertEqual(source.generation, 2)
        self.assertEqual(source.issued_at, math.floor(refresh_at))

    def test_jitter_uniform_within_bounds_with_seeded_rng(self) -> None:
        ages = []
        for seed in range(200):
            source = self.source(seed)
            source.token(NOW)
            refresh_at = source.refresh_at
            assert refresh_at is not None
            ages.append(refresh_at - NOW)
        # Between 20 and 50 minutes: at least 10 minutes' margin under Apple's hour.
        self.assertGreaterEqual(min(ages), 20 * 60)
        self.assertLessEqual(max(ages), 50 * 60)
        # Spread: both ends of the range are used, not one fixed age.
        self.assertTrue(any(a < 25 * 60 for a in ages))
        self.assertTrue(any(a > 45 * 60 for a in ages))
        # Deterministic for a seed.
        a, b = self.source(7), self.source(7)
        a.token(NOW)
        b.token(NOW)
        self.assertEqual(a.refresh_at, b.refresh_at)

    def test_never_refreshes_before_min_age(self) -> None:
        source = self.source(3)
        mints = []
        now = float(NOW) + 0.999
        for _ in range(2000):
            before = source.generation
            source.token(now)
            if source.generation != before:
                mints.append(now)
            now += 37.3
        self.assertGreater(len(mints), 10)
        gaps = [b - a for a, b in itertools.pairwise(mints)]
        self.assertGreaterEqual(min(gaps), 20 * 60)
        # And never used past 50 minutes (plus one step of this loop): a margin under the hour.
        self.assertLessEqual(max(gaps), 50 * 60 + 37.3)

    def test_min_age_even_with_fractional_now(self) -> None:
        # iat is floored; the next refresh is still at least min_age after the mint.
        source = self.source(0, min_age=100.0, max_age=100.0)
        source.token(NOW + 0.9)
        self.assertEqual(source.refresh_at, NOW + 0.9 + 100)

    def test_force_refresh_ignores_min_age(self) -> None:
        source = self.source()
        first = source.token(NOW)
        forced = source.force_refresh(NOW + 1)
        self.assertNotEqual(forced, first)
        self.assertEqual(source.generation, 2)
        self.assertIs(source.token(NOW + 2), forced)

    def test_clock_going_backwards_keeps_token(self) -> None:
        source = self.source()
        first = source.token(NOW)
        self.assertIs(source.token(NOW - 500), first)

    def test_bad_configuration(self) -> None:
        with self.assertRaises(ValueError):
            self.source(min_age=3600, max_age=1200)
        with self.assertRaises(CredentialError):
            ProviderTokenSource(KEY, "bad", TEAM_ID, rng=random.Random(0))
        with self.assertRaises(CredentialError):
            ProviderTokenSource(
                ec.generate_private_key(ec.SECP384R1()), KEY_ID, TEAM_ID, rng=random.Random(0)
            )


class ClockSkewTests(SynchronousTestCase):
    def test_within_tolerance(self) -> None:
        self.assertIsNone(clock_skew_warning(NOW, NOW + 299))
        self.assertIsNone(clock_skew_warning(NOW, None))
        self.assertIsNone(clock_skew_warning(NOW, float("nan")))

    def test_ahead_and_behind(self) -> None:
        ahead = clock_skew_warning(NOW + 3600, NOW)
        behind = clock_skew_warning(NOW, NOW + 400)
        assert ahead is not None and behind is not None
        self.assertIn("3600 s ahead", ahead)
        self.assertIn("400 s behind", behind)
        self.assertIsNotNone(self_source().clock_skew_warning(NOW, NOW - 1000))

    def test_parse_http_date(self) -> None:
        self.assertEqual(parse_http_date(b"Tue, 14 Nov 2023 22:13:20 GMT"), 1_700_000_000)
        self.assertIsNone(parse_http_date("yesterday"))
        self.assertIsNone(parse_http_date(None))


def self_source() -> ProviderTokenSource:
    return ProviderTokenSource(KEY, KEY_ID, TEAM_ID, rng=random.Random(0))
