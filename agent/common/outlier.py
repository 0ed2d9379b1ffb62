"""Outlier ejection: the one rule for the node agent's Service endpoints and the gateway's backends.

An endpoint that fails `consecutive_failures` times in a row is ejected (left
out of balancing) for `base_ejection` seconds times the number of times it has
been ejected, up to `max_ejection`. This is Envoy's rule, which Istio's
`outlierDetection` configures: "the base time multiplied by the number of times
the host has been ejected", capped by `max_ejection_time` (300 s by default). The
agent's balancer had it; the gateway doubled the time instead (30, 60, 120 s...),
and now takes the same steps as the agent (30, 60, 90 s...).

What we leave out of Envoy's rule: Envoy lowers the multiplier again while a host
stays healthy (one step per 10 s check); ours only grows, as both did before. A
failure while ejected (a request that was already in flight) neither counts nor
extends the ejection: only a new run of failures after it ends does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EjectionRule:
    consecutive_failures: int
    """Failures in a row (connect failures, resets, timeouts; 5xx for the gateway) that eject."""
    base_ejection: float
    """Seconds of the first ejection; the n-th lasts n times as long."""
    max_ejection: float = 300.0
    """No ejection lasts longer (Envoy's default)."""

    def ejection(self, times: int) -> float:
        """Seconds of the `times`-th ejection."""
        return min(self.max_ejection, self.base_ejection * times)


@dataclass
class Outlier:
    """One endpoint's record: failures in a row, ejections so far, until when it is out."""

    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def failed(self, rule: EjectionRule, now: float) -> float:
        """Count a failure; the seconds of the ejection it starts, 0.0 if it starts none."""
        if self.ejected(now):
            return 0.0
        self.failures += 1
        if self.failures < rule.consecutive_failures:
            return 0.0
        self.failures = 0
        self.ejections += 1
        seconds = rule.ejection(self.ejections)
        self.ejected_until = now + seconds
        return seconds

    def succeeded(self) -> None:
        self.failures = 0

    @property
    def spotless(self) -> bool:
        """Never ejected and no failure pending: nothing worth keeping."""
        return self.failures == 0 and self.ejections == 0
