"""How often one credential may have certificates signed (pure: the clock is passed in).

A token bucket per credential: `burst` requests at once, refilled at `rate` per second.
Only authenticated callers reach it, so it holds at most one bucket per credential the
CA knows. The defaults let a node agent that restarts with a hundred service accounts on
its node fetch them all at once, and refuse a caller that asks hundreds of times a minute
(a loop, or an attacker burning the CA's CPU on signatures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_BURST = 100
DEFAULT_RATE = 5.0
"""Requests per second per credential, once the burst is spent."""


@dataclass
class IssueLimiter:
    burst: int = DEFAULT_BURST
    rate: float = DEFAULT_RATE
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    """credential -> (tokens left, when they were counted)."""

    def __post_init__(self) -> None:
        if self.burst < 1 or not math.isfinite(self.rate) or self.rate <= 0:
            raise ValueError("the issuance limit needs a burst of at least 1 and a positive rate")

    def take(self, credential: str, now: float) -> float:
        """Take one request from `credential`'s bucket: 0.0 if allowed, otherwise the
        seconds until one will be (the Retry-After of a 429)."""
        tokens, then = self._buckets.get(credential, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[credential] = (tokens - 1.0, now)
            return 0.0
        self._buckets[credential] = (tokens, now)
        return (1.0 - tokens) / self.rate
