"""What a rejection says about a device token, and when it says more about the configuration.

Apps delete the device tokens the service reports as invalid, so a wrong report cuts a user
off for good. Each report therefore carries its *kind* of evidence (:func:`evidence_kind`):

* ``unregistered``: HTTP/2 410 (``Unregistered``, ``ExpiredToken``), with Apple's timestamp:
  the app was removed from the device (or the token expired) at that time;
* ``bad_token``: HTTP/2 400 ``BadDeviceToken``: not a token of this app *in this environment*;
* ``invalid_token``: binary status 8 ``InvalidToken``: the binary protocol's ``bad_token``;
* ``feedback``: listed by the binary feedback service, with the time it was removed.

``bad_token`` and ``invalid_token`` are also what APNs answers to *every* token when the
provider talks to the other environment (a sandbox token sent to production, or the reverse).
:class:`MismatchDetector` tells the two apart over a sliding window of an app's answers: when
most answers are such rejections, across many different tokens, the configuration is wrong
and none of those tokens may be reported. Pure: the caller passes the time.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from dataclasses import dataclass, field

from .result import Outcome, Result

__all__ = [
    "MISMATCH_HINT",
    "SUSPECT_KINDS",
    "EvidenceKind",
    "MismatchDetector",
    "MismatchPolicy",
    "Verdict",
    "answered_by_apns",
    "environment_verdict",
    "evidence_kind",
    "mismatch_message",
    "recorded_kind",
]


class EvidenceKind(enum.StrEnum):
    UNREGISTERED = "unregistered"
    BAD_TOKEN = "bad_token"
    INVALID_TOKEN = "invalid_token"
    FEEDBACK = "feedback"


#: Kinds that the other environment's tokens also get: the evidence the detector weighs.
SUSPECT_KINDS = frozenset({EvidenceKind.BAD_TOKEN, EvidenceKind.INVALID_TOKEN})


def evidence_kind(result: Result) -> EvidenceKind | None:
    """The kind of evidence ``result`` gives that its token is invalid; ``None``: none."""
    if not result.token_invalid:
        return None
    if result.status == 8:
        return EvidenceKind.INVALID_TOKEN
    if result.reason == "BadDeviceToken":
        return EvidenceKind.BAD_TOKEN
    return EvidenceKind.UNREGISTERED


def recorded_kind(source: str, status: int | None, reason: str | None) -> EvidenceKind:
    """The kind of a feed entry recorded before kinds were (an older spool's rows)."""
    if source == "feedback":
        return EvidenceKind.FEEDBACK
    if status == 8:
        return EvidenceKind.INVALID_TOKEN
    if reason == "BadDeviceToken":
        return EvidenceKind.BAD_TOKEN
    return EvidenceKind.UNREGISTERED


def answered_by_apns(result: Result) -> bool:
    """APNs itself answered about this notification (as opposed to a local outcome)."""
    return result.local is None and result.outcome is not Outcome.UNKNOWN


class Verdict(enum.Enum):
    #: Suspect answers are a minority: the environment is right (a wrong one accepts
    #: nothing), so the suspect tokens are really invalid: report them.
    CLEAN = "clean"
    #: Mostly suspect answers, but from too few tokens to call a mismatch yet.
    UNDECIDED = "undecided"
    #: Most answers reject many different tokens: the environment (or topic) is wrong.
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class MismatchPolicy:
    """When an app's answers mean "wrong environment" rather than "dead tokens".

    A wrong environment accepts no token at all, so suspect answers that are a minority of
    the window mean the environment is right, however few answers there are; a majority
    from at least ``min_tokens`` different tokens means it is wrong.

    :param window: seconds of answers weighed.
    :param min_tokens: different suspect tokens needed to call a mismatch; 0 turns detection
        off (every suspect token is reported at once).
    :param ratio: share of suspect answers (of all APNs answers in the window) from which
        the answers are "mostly" suspect.
    :param hold: seconds a suspect token waits for a verdict (more answers); if the window
        is still mostly suspect then, the token is not reported (held back).
    """

    window: float = 300.0
    min_tokens: int = 10
    ratio: float = 0.5
    hold: float = 10.0

    def __post_init__(self) -> None:
        if self.window <= 0 or self.hold < 0 or self.min_tokens < 0:
            raise ValueError("window must be positive, hold and min_tokens not negative")
        if not 0 < self.ratio <= 1:
            raise ValueError("ratio must be in (0, 1]")

    @property
    def enabled(self) -> bool:
        return self.min_tokens > 0


@dataclass(slots=True)
class _Bucket:
    start: float
    answers: int = 0
    suspects: int = 0
    #: Short digests of the suspect tokens seen (bounded: only "at least min_tokens" matters).
    tokens: set[bytes] = field(default_factory=set)


class MismatchDetector:
    """A sliding window of one app's APNs answers, in ``window / buckets`` second buckets.

    Memory is bounded whatever the rate: per bucket two counts and at most ``min_tokens``
    token digests.
    """

    def __init__(self, policy: MismatchPolicy | None = None, *, buckets: int = 30) -> None:
        self.policy = policy or MismatchPolicy()
        self._width = self.policy.window / buckets
        self._buckets: deque[_Bucket] = deque()

    def observe(self, now: float, token: bytes, suspect: bool) -> None:
        """Count one APNs answer about ``token``; ``suspect``: a ``bad_token`` or
        ``invalid_token`` rejection."""
        self._prune(now)
        b = self._buckets[-1] if self._buckets else None
        if b is None or now >= b.start + self._width:
            b = _Bucket(now)
            self._buckets.append(b)
        b.answers += 1
        if suspect:
            b.suspects += 1
            if len(b.tokens) < self.policy.min_tokens:
                b.tokens.add(hashlib.blake2b(token, digest_size=8).digest())

    def reset(self) -> None:
        self._buckets.clear()

    def counts(self, now: float) -> tuple[int, int, int]:
        """``(answers, suspect answers, different suspect tokens)`` in the window."""
        self._prune(now)
        answers = sum(b.answers for b in self._buckets)
        suspects = sum(b.suspects for b in self._buckets)
        tokens: set[bytes] = set()
        for b in self._buckets:
            tokens |= b.tokens
        return answers, suspects, len(tokens)

    def verdict(self, now: float) -> Verdict:
        p = self.policy
        if not p.enabled:
            return Verdict.CLEAN
        answers, suspects, tokens = self.counts(now)
        if suspects < p.ratio * answers:
            return Verdict.CLEAN
        if tokens >= p.min_tokens:
            return Verdict.MISMATCH
        return Verdict.UNDECIDED

    def _prune(self, now: float) -> None:
        horizon = now - self.policy.window
        buckets = self._buckets
        while buckets and buckets[0].start + self._width <= horizon:
            buckets.popleft()


MISMATCH_HINT = (
    "most tokens are rejected as {reason}: is `environment` right? (a token of the other "
    "environment gets the same answer)"
)


def mismatch_message(kind: EvidenceKind | str, answers: int, suspects: int, tokens: int) -> str:
    reason = "InvalidToken" if kind == EvidenceKind.INVALID_TOKEN else "BadDeviceToken"
    return (
        MISMATCH_HINT.format(reason=reason)
        + f"; {suspects} of {answers} recent answers, {tokens}+ different tokens"
    )


def environment_verdict(
    environment: str, here: list[Result], other: list[Result] | None
) -> tuple[bool, str]:
    """What probes of known device tokens say about ``environment`` (``"production"`` or
    ``"sandbox"``): ``(ok, line)``. ``here``: the answers in the configured environment;
    ``other``: the same tokens' answers in the other one (``None``: not probed)."""
    other_env = "sandbox" if environment == "production" else "production"
    answered = [r for r in here if answered_by_apns(r)]
    if not answered:
        return False, f"no answer from APNs to the {len(here)} token probe(s) in {environment}"
    bad = [r for r in answered if evidence_kind(r) in SUSPECT_KINDS]
    if len(bad) * 2 < len(answered) or len(bad) == 0:
        return True, (
            f"environment {environment!r} fits: {len(answered) - len(bad)} of {len(answered)} "
            "probed token(s) accepted or known"
        )
    there = [r for r in other or [] if answered_by_apns(r)]
    if there and all(r.accepted for r in there):
        return False, (
            f"most tokens are rejected as BadDeviceToken in {environment} and accepted in "
            f"{other_env}: set environment = {other_env!r}"
        )
    if other is None:
        return False, (
            f"most tokens are rejected as BadDeviceToken in {environment}: is `environment` "
            "right? (the other environment was not probed)"
        )
    return False, (
        f"the probed tokens are rejected as BadDeviceToken in {environment}, and not accepted "
        f"in {other_env} either: they are not tokens of this app (check bundle_id and the "
        "tokens)"
    )
