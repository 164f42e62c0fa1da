"""Counters every client keeps, with the invariant that proves nothing was lost.

``submitted == accepted + rejected + unknown + pending`` at every instant, where *pending* is
what the client still holds (queued or in flight). A notification counts once in ``submitted``
and once in a final outcome, however often it was retried or replayed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .result import Outcome, Result, counter_key

_ACCEPTED = Outcome.ACCEPTED
_REJECTED = Outcome.REJECTED

__all__ = ["Counters"]


@dataclass
class Counters:
    submitted: int = 0
    accepted: int = 0
    rejected: int = 0
    unknown: int = 0
    #: Final rejections and unknowns by reason (binary status name or APNs reason).
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    unknown_by_reason: Counter[str] = field(default_factory=Counter)
    #: Writes after the first: transient-status retries and replays after an error/close.
    retried: int = 0
    replayed: int = 0
    #: Notifications whose outcome became unknown on a silent close/reset and that the
    #: policy re-sent (they may be delivered twice).
    resent_unknown: int = 0
    #: Final results flagged ``may_duplicate`` (written again after an unknown outcome).
    may_duplicate: int = 0
    connections_made: int = 0
    reconnects: int = 0
    connection_failures: int = 0
    window_high_water: int = 0

    def finished(self) -> int:
        return self.accepted + self.rejected + self.unknown

    def record(self, result: Result) -> None:
        """Count one final result: its outcome; a rejection or unknown under its label,
        :func:`~txapns.core.result.counter_key` (the one rule for labels); a possible
        duplicate in ``may_duplicate``."""
        outcome = result.outcome
        if outcome is _ACCEPTED:
            self.accepted += 1
        elif outcome is _REJECTED:
            self.rejected += 1
            self.rejected_by_reason[counter_key(result)] += 1
        else:
            self.unknown += 1
            self.unknown_by_reason[counter_key(result)] += 1
        if result.may_duplicate:
            self.may_duplicate += 1

    def record_accepted(self, n: int = 1, duplicates: int = 0) -> None:
        """``n`` accepted results at once (``duplicates`` of them flagged ``may_duplicate``):
        the same as :meth:`record` for each, for the binary client's bulk confirmations."""
        self.accepted += n
        self.may_duplicate += duplicates

    def note_window(self, size: int) -> None:
        if size > self.window_high_water:
            self.window_high_water = size

    def check(self, pending: int) -> None:
        """Raise AssertionError unless ``submitted == finished + pending``."""
        if self.submitted != self.finished() + pending:
            raise AssertionError(
                f"counters do not sum: submitted={self.submitted} accepted={self.accepted} "
                f"rejected={self.rejected} unknown={self.unknown} pending={pending}"
            )

    def as_dict(self) -> dict[str, object]:
        return {
            "submitted": self.submitted,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "unknown": self.unknown,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "unknown_by_reason": dict(self.unknown_by_reason),
            "retried": self.retried,
            "replayed": self.replayed,
            "resent_unknown": self.resent_unknown,
            "may_duplicate": self.may_duplicate,
            "connections_made": self.connections_made,
            "reconnects": self.reconnects,
            "connection_failures": self.connection_failures,
            "window_high_water": self.window_high_water,
        }
