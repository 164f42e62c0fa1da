"""Provider-token (JWT) authentication for the HTTP/2 API, sans-IO.

APNs token authentication uses a compact JWS signed with ES256 (ECDSA P-256, SHA-256) by the
team's ``AuthKey_<KEYID>.p8`` key::

    header  {"alg": "ES256", "kid": "<10-char key id>"}
    claims  {"iss": "<10-char team id>", "iat": <UNIX seconds>}

Apple's rules that shape this module (the docs' :ref:`apns-tokens`):

* a token older than one hour is rejected (``403 ExpiredProviderToken``);
* a connection that changes tokens more often than every 20 minutes is rejected
  (``429 TooManyProviderTokenUpdates``), so tokens are refreshed between 20 and 50 minutes,
  with jitter (10 minutes' margin under the hour for clock drift and long-lived streams), one
  :class:`ProviderTokenSource` per connection;
* after ``ExpiredProviderToken`` the client mints a new token (:meth:`ProviderTokenSource.
  force_refresh`) and uses it on a *new* connection;
* a wrong local clock makes every token look expired: :func:`clock_skew_warning`.

Nothing here reads a clock or draws unseeded randomness: the current time is passed in as
``now`` (UNIX seconds) and jitter comes from an injected :class:`random.Random`. Error messages
never contain key material or a whole token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .errors import APNsError, CredentialError

__all__ = [
    "CLOCK_SKEW_TOLERANCE",
    "EXPIRED_PROVIDER_TOKEN",
    "INVALID_PROVIDER_TOKEN",
    "MISSING_PROVIDER_TOKEN",
    "TOKEN_MAX_AGE",
    "TOKEN_MAX_REFRESH",
    "TOKEN_MIN_REFRESH",
    "ProviderToken",
    "ProviderTokenSource",
    "TokenRejected",
    "VerifiedToken",
    "clock_skew_warning",
    "load_signing_key",
    "load_verifying_key",
    "parse_http_date",
    "sign_provider_token",
    "validate_ids",
    "verify_provider_token",
]

#: Apple rejects a token whose ``iat`` is older than this (seconds).
TOKEN_MAX_AGE = 60 * 60
#: Apple rejects token changes on one connection more often than this (seconds).
TOKEN_MIN_REFRESH = 20 * 60
#: A token is replaced at the latest at this age (seconds): a margin under ``TOKEN_MAX_AGE``
#: for a local clock a few minutes off and for the time between minting and use.
TOKEN_MAX_REFRESH = 50 * 60
#: Local clock vs. server ``Date`` difference above which :func:`clock_skew_warning` warns.
CLOCK_SKEW_TOLERANCE = 5 * 60

#: Apple's ``reason`` strings for token problems (all with HTTP status 403).
INVALID_PROVIDER_TOKEN = "InvalidProviderToken"
EXPIRED_PROVIDER_TOKEN = "ExpiredProviderToken"
MISSING_PROVIDER_TOKEN = "MissingProviderToken"

_ID = re.compile(r"\A[A-Z0-9]{10}\Z")
_KEY_FILE = re.compile(r"AuthKey_([A-Za-z0-9]+)\.p8\Z")
_B64URL = re.compile(r"\A[A-Za-z0-9_-]*\Z")
_P256_BYTES = 32


class TokenRejected(APNsError):
    """A provider token fails APNs' checks; ``reason`` is Apple's reason string.

    ``reason`` is one of :data:`INVALID_PROVIDER_TOKEN`, :data:`EXPIRED_PROVIDER_TOKEN` or
    :data:`MISSING_PROVIDER_TOKEN`; ``detail`` says what exactly was wrong (never the token).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class VerifiedToken(NamedTuple):
    """What :func:`verify_provider_token` learned from a valid token."""

    key_id: str
    team_id: str
    issued_at: int


# --- keys -----------------------------------------------------------------------------------


def load_signing_key(p8_pem: bytes, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key from an ``AuthKey_<KEYID>.p8`` file's contents (PEM PKCS#8).

    DER is accepted too. Raises :class:`~txapns.core.errors.CredentialError` (without echoing
    the key) when the data is not a private key or not a P-256 EC key.
    """
    if not isinstance(p8_pem, (bytes, bytearray)):
        raise CredentialError(
            f"the token signing key must be bytes (the .p8 file's contents), "
            f"not {type(p8_pem).__name__}"
        )
    data = bytes(p8_pem)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=password)
        else:
            key = serialization.load_der_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The library's message can quote the input: do not chain or repeat it.
        raise CredentialError(
            f"could not read the token signing key ({len(data)} bytes): expected the PEM "
            "contents of an AuthKey_<KEYID>.p8 file (PKCS#8 EC private key)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialError(
            f"the token signing key is a {type(key).__name__.lstrip('_')}, "
            "not an EC P-256 key; APNs needs the .p8 key from Apple's developer portal"
        )
    if key.curve.name != "secp256r1":
        raise CredentialError(
            f"the token signing key uses curve {key.curve.name}; APNs (ES256) needs P-256"
        )
    return key


def load_verifying_key(
    data: bytes | ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey,
) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM (public key, certificate-free) or a private key/PEM.

    For servers and tests that check tokens (e.g. :mod:`txapns.testing.http2_server`).
    """
    if isinstance(data, ec.EllipticCurvePublicKey):
        key: object = data
    elif isinstance(data, ec.EllipticCurvePrivateKey):
        key = data.public_key()
    else:
        raw = bytes(data)
        if b"PRIVATE KEY" in raw:
            key = load_signing_key(raw).public_key()
        else:
            try:
                key = serialization.load_pem_public_key(raw)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise CredentialError("could not read the token verifying key (PEM)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CredentialError("the token verifying key is not an EC P-256 public key")
    return key


def validate_ids(key_id: str, team_id: str, *, key_file_name: str | None = None) -> None:
    """Check the key id and team id: exactly 10 characters, upper-case letters and digits.

    With ``key_file_name`` (the ``.p8`` file's name, ``AuthKey_<KEYID>.p8`` as Apple names
    it) it also checks that the key id is the one in the file name, and says when the two ids
    look swapped (the team id equals the file name's key id), a common mistake.
    """
    for label, value in (("key id", key_id), ("team id", team_id)):
        if not isinstance(value, str):
            raise CredentialError(f"the {label} must be a str, not {type(value).__name__}")
        if not _ID.match(value):
            hint = ""
            if len(value) == 10 and _ID.match(value.upper()):
                hint = " (it must be upper case)"
            elif value != value.strip():
                hint = " (it has surrounding whitespace)"
            raise CredentialError(
                f"the {label} must be exactly 10 characters A-Z/0-9, got {value!r}{hint}"
            )
    if key_file_name is None:
        return
    base = key_file_name.replace("\\", "/").rsplit("/", 1)[-1]
    match = _KEY_FILE.search(base)
    if match is None:
        return  # renamed file: nothing reliable to compare with
    file_key_id = match.group(1)
    if file_key_id == key_id:
        return
    if file_key_id == team_id:
        raise CredentialError(
            f"key id and team id look swapped: the key file {base} is for key id "
            f"{file_key_id}, which was given as the team id"
        )
    raise CredentialError(
        f"key id {key_id} does not match the key file {base} (key id {file_key_id})"
    )


# --- signing and verifying ------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_segment(obj: Mapping[str, object]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def sign_provider_token(
    key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, issued_at: int
) -> str:
    """An ES256 provider token (compact JWS) for APNs.

    The signature is in JOSE form (raw ``r || s``, 64 bytes), not DER. ``issued_at`` is UNIX
    seconds. The ids are checked with :func:`validate_ids`.
    """
    validate_ids(key_id, team_id)
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or issued_at < 0:
        raise CredentialError(f"issued_at must be non-negative UNIX seconds, not {issued_at!r}")
    signing_input = (
        _json_segment({"alg": "ES256", "kid": key_id})
        + "."
        + _json_segment({"iss": team_id, "iat": issued_at})
    )
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
    return signing_input + "." + _b64url(raw)


def _invalid(detail: str) -> TokenRejected:
    return TokenRejected(INVALID_PROVIDER_TOKEN, detail)


def _decode_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64url_decode(segment))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid(f"the {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise _invalid(f"the {what} is not a JSON object")
    return value


def verify_provider_token(
    token: str | bytes | None,
    public_key: ec.EllipticCurvePublicKey | Mapping[str, ec.EllipticCurvePublicKey],
    *,
    now: float,
    max_age: float = TOKEN_MAX_AGE,
    team_id: str | None = None,
    max_future: float | None = None,
) -> VerifiedToken:
    """Check a provider token the way APNs does; return its key id, team id and ``iat``.

    ``public_key`` is the key to verify with, or a mapping from key id (``kid``) to key; an
    unknown ``kid`` is an invalid token. With ``team_id`` the ``iss`` claim must equal it.
    ``now`` is the verifier's clock (UNIX seconds): an ``iat`` more than ``max_age`` seconds
    old is expired; with ``max_future`` an ``iat`` that far ahead of ``now`` is invalid.
    A leading ``bearer `` is stripped.

    Raises :class:`TokenRejected` with reason ``MissingProviderToken`` (empty),
    ``InvalidProviderToken`` (malformed, wrong algorithm, unknown key, bad signature, wrong
    team) or ``ExpiredProviderToken`` (too old; checked after the signature).
    """
    if isinstance(token, (bytes, bytearray)):
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise _invalid("the token is not ASCII") from None
    if token is not None and token[:7].lower() == "bearer ":
        token = token[7:]
    if not token or not token.strip():
        raise TokenRejected(MISSING_PROVIDER_TOKEN, "no provider token")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise _invalid(f"a JWT has 3 dot-separated parts, this one has {len(parts)}")
    header = _decode_object(parts[0], "header")
    claims = _decode_object(parts[1], "claims")
    if header.get("alg") != "ES256":
        raise _invalid(f"alg must be ES256, not {header.get('alg')!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _ID.match(kid):
        raise _invalid("kid must be a 10-character key id")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not _ID.match(iss):
        raise _invalid("iss must be a 10-character team id")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int):
        raise _invalid("iat must be an integer (UNIX seconds)")
    if isinstance(public_key, Mapping):
        key = public_key.get(kid)
        if key is None:
            raise _invalid(f"unknown key id {kid}")
    else:
        key = public_key
    try:
        raw = _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        raise _invalid("the signature is not base64url") from None
    if len(raw) != 2 * _P256_BYTES:
        raise _invalid(
            f"the ES256 signature must be 64 bytes (raw r||s), not {len(raw)}"
            + (" (DER-encoded?)" if raw[:1] == b"\x30" else "")
        )
    der = encode_dss_signature(
        int.from_bytes(raw[:_P256_BYTES], "big"), int.from_bytes(raw[_P256_BYTES:], "big")
    )
    try:
        key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _invalid(f"bad signature for key id {kid}") from None
    if team_id is not None and iss != team_id:
        raise _invalid(f"team id {iss} is not the team of key id {kid}")
    if now - iat > max_age:
        raise TokenRejected(
            EXPIRED_PROVIDER_TOKEN, f"issued {now - iat:.0f} s ago; the limit is {max_age:.0f} s"
        )
    if max_future is not None and iat - now > max_future:
        raise _invalid(f"issued {iat - now:.0f} s in the future")
    return VerifiedToken(kid, iss, iat)


# --- clock skew -----------------------------------------------------------------------------


def parse_http_date(value: str | bytes | None) -> float | None:
    """UNIX seconds from an HTTP ``Date`` header value, or ``None`` if absent/unparseable."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def clock_skew_warning(
    now: float, server_date: float | None, *, tolerance: float = CLOCK_SKEW_TOLERANCE
) -> str | None:
    """A warning text when the local clock and a server's ``Date`` differ by more than
    ``tolerance`` seconds, else ``None``. A skewed local clock makes APNs reject tokens as
    expired (or invalid when in the future)."""
    if server_date is None or not math.isfinite(server_date) or not math.isfinite(now):
        return None
    skew = now - server_date
    if abs(skew) <= tolerance:
        return None
    direction = "ahead of" if skew > 0 else "behind"
    return (
        f"the local clock is {abs(skew):.0f} s {direction} the server's Date header; "
        "provider tokens are judged by Apple's clock and will be rejected as "
        "ExpiredProviderToken or InvalidProviderToken: fix the clock (NTP)"
    )


# --- one token per connection ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderToken:
    """The credential of token authentication: the ``.p8`` signing key (EC P-256), its key id
    and the team id, checked when made (ids: 10 upper-case letters or digits). The key never
    appears in ``repr``."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    key_id: str
    team_id: str

    def __post_init__(self) -> None:
        validate_ids(self.key_id, self.team_id)
        key = self.key
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise CredentialError("the token signing key must be an EC P-256 private key")

    @classmethod
    def from_p8(
        cls, p8: bytes, key_id: str, team_id: str, *, key_file_name: str | None = None
    ) -> ProviderToken:
        """From an ``AuthKey_<KEYID>.p8`` file's contents; ``key_file_name`` (the file's
        name) is checked against ``key_id`` (see :func:`validate_ids`)."""
        validate_ids(key_id, team_id, key_file_name=key_file_name)
        return cls(load_signing_key(p8), key_id, team_id)

    def source(self, rng: random.Random) -> ProviderTokenSource:
        """A fresh token source (one per connection)."""
        return ProviderTokenSource(self.key, self.key_id, self.team_id, rng=rng)


class ProviderTokenSource:
    """The provider token of one connection, refreshed with jitter.

    :meth:`token` returns the current token and mints a new one when there is none or when
    its refresh age has passed; that age is drawn uniformly from ``[min_age, max_age]`` for
    each token, so connections opened together do not rotate together. A token is never
    replaced before ``min_age`` (Apple answers ``TooManyProviderTokenUpdates`` to faster
    rotation on one connection) except by :meth:`force_refresh`, which is for
    ``ExpiredProviderToken``: the new token is meant for a *new* connection.

    :attr:`generation` counts minted tokens (1 after the first); encoders cache header blocks
    per generation.
    """

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        key_id: str,
        team_id: str,
        *,
        rng: random.Random,
        min_age: float = TOKEN_MIN_REFRESH,
        max_age: float = TOKEN_MAX_REFRESH,
    ) -> None:
        validate_ids(key_id, team_id)
        if not 0 <= min_age <= max_age:
            raise ValueError(f"need 0 <= min_age <= max_age, got {min_age} and {max_age}")
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise CredentialError("the token signing key must be an EC P-256 private key")
        self._key = key
        self.key_id = key_id
        self.team_id = team_id
        self._rng = rng
        self.min_age = min_age
        self.max_age = max_age
        self.generation = 0
        self._token: str | None = None
        self._issued_at = 0
        self._refresh_at = 0.0

    def __repr__(self) -> str:
        # Never the token itself.
        return (
            f"<ProviderTokenSource kid={self.key_id} team={self.team_id} "
            f"generation={self.generation}>"
        )

    @property
    def issued_at(self) -> int | None:
        """``iat`` of the current token, or ``None`` before the first."""
        return self._issued_at if self._token is not None else None

    @property
    def refresh_at(self) -> float | None:
        """When (UNIX seconds) :meth:`token` will mint the next token, or ``None``."""
        return self._refresh_at if self._token is not None else None

    def current(self) -> str | None:
        """The current token without minting one."""
        return self._token

    def needs_refresh(self, now: float) -> bool:
        return self._token is None or now >= self._refresh_at

    def token(self, now: float) -> str:
        """The token to send at ``now`` (UNIX seconds), minting one when due."""
        if self._token is None or now >= self._refresh_at:
            return self._mint(now)
        return self._token

    def force_refresh(self, now: float) -> str:
        """Mint a new token now, regardless of age (after ``ExpiredProviderToken``).

        Use the result on a new connection: the old one may stay wedged, and switching it
        there could draw ``TooManyProviderTokenUpdates``.
        """
        return self._mint(now)

    def _mint(self, now: float) -> str:
        issued_at = max(0, math.floor(now))
        token = sign_provider_token(self._key, self.key_id, self.team_id, issued_at)
        # The age is measured from the integer iat APNs sees, so a token is not used past
        # max_age; and never sooner than min_age after this mint by the caller's clock.
        age = self._rng.uniform(self.min_age, self.max_age)
        self._refresh_at = max(issued_at + age, now + self.min_age)
        self._token = token
        self._issued_at = issued_at
        self.generation += 1
        return token

    def clock_skew_warning(self, now: float, server_date: float | None) -> str | None:
        """See :func:`clock_skew_warning`."""
        return clock_skew_warning(now, server_date)
