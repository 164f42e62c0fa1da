"""Reconnect and retry delays: exponential, capped, with jitter (pure: randomness is passed in).

Jitter spreads reconnects of many clients after an outage; the cap keeps a long outage from
turning into hour-long waits.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.5
    factor: float = 2.0
    cap: float = 60.0
    #: Fraction of the delay that is randomised: 0.2 → the delay is within ±20 %.
    jitter: float = 0.2

    def delay(self, failures: int, rnd: float) -> float:
        """Delay before the attempt that follows ``failures`` consecutive failures (≥ 1).

        ``rnd`` is a uniform random number in [0, 1) supplied by the caller.
        """
        if failures <= 0:
            return 0.0
        base = min(self.cap, self.initial * self.factor ** min(failures - 1, 64))
        spread = base * self.jitter
        return max(0.0, min(self.cap, base - spread + 2 * spread * rnd))
