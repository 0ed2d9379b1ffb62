"""Where a captured connection goes, and which endpoint takes it (pure: state, no I/O).

`resolve` turns an original destination into a Target: a Service's endpoints,
one pod, or an address outside the cluster. `Balancer` orders a Service's
endpoints for one connection (round robin by default, least connections when
the Service is annotated `slipstream.dev/load-balancer: least-connections`)
and ejects an endpoint for a while after consecutive failures (outlier
detection: the rule the gateway uses too, agent/common/outlier.py), as long as
something else is left to try.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.common.outlier import EjectionRule, Outlier
from agent.state import Snapshot
from agent.state.objects import Pod, Service
from agent.state.store import ServiceEndpoint

LB_ANNOTATION = "slipstream.dev/load-balancer"
ROUND_ROBIN = "round-robin"
LEAST_CONNECTIONS = "least-connections"
LB_POLICIES = (ROUND_ROBIN, LEAST_CONNECTIONS)

Addr = tuple[str, int]


@dataclass(frozen=True)
class Target:
    dst: Addr
    service: Service | None = None
    endpoints: tuple[ServiceEndpoint, ...] = ()
    """The Service's endpoints, or the one pod addressed directly; empty outside the cluster."""

    @property
    def policy(self) -> str:
        if self.service is None:
            return ROUND_ROBIN
        chosen = self.service.meta.annotations.get(LB_ANNOTATION, ROUND_ROBIN)
        return chosen if chosen in LB_POLICIES else ROUND_ROBIN

    def describe(self) -> str | None:
        if self.service is not None:
            return f"service/{self.service.meta.namespace}/{self.service.meta.name}"
        if self.endpoints:
            pod = self.endpoints[0].pod
            return f"{pod.meta.namespace}/{pod.meta.name}"
        return None


def resolve(snap: Snapshot, dst: Addr) -> Target:
    binding = snap.find_service(*dst)
    if binding is not None:
        return Target(dst, binding.service, binding.endpoints)
    pod = snap.find_pod(dst[0])
    if pod is not None:
        return Target(dst, None, (ServiceEndpoint(pod, dst[0], dst[1]),))
    return Target(dst)


def pod_of(target: Target) -> Pod | None:
    return target.endpoints[0].pod if target.service is None and target.endpoints else None


@dataclass
class Balancer:
    consecutive_failures: int = 3
    base_ejection: float = 10.0
    max_ejection: float = 300.0
    _next: dict[tuple[str, str, int], int] = field(default_factory=dict)
    _active: dict[Addr, int] = field(default_factory=dict)
    _health: dict[Addr, Outlier] = field(default_factory=dict)

    @property
    def rule(self) -> EjectionRule:
        return EjectionRule(self.consecutive_failures, self.base_ejection, self.max_ejection)

    def candidates(self, target: Target, now: float) -> list[ServiceEndpoint]:
        """Endpoints in the order to try them; ejected ones only if nothing else is left."""
        eps: Sequence[ServiceEndpoint] = target.endpoints
        if len(eps) <= 1 or target.service is None:
            return list(eps)
        if target.policy == LEAST_CONNECTIONS:
            ordered = sorted(eps, key=lambda e: (self._active.get((e.ip, e.port), 0), e.ip, e.port))
        else:
            svc = target.service.meta
            key = (svc.namespace, svc.name, target.dst[1])
            start = self._next.get(key, 0) % len(eps)
            self._next[key] = start + 1
            ordered = list(eps[start:]) + list(eps[:start])
        healthy = [e for e in ordered if not self.ejected((e.ip, e.port), now)]
        return healthy or ordered

    def ejected(self, addr: Addr, now: float) -> bool:
        h = self._health.get(addr)
        return h is not None and h.ejected(now)

    def opened(self, addr: Addr) -> None:
        self._active[addr] = self._active.get(addr, 0) + 1

    def closed(self, addr: Addr) -> None:
        n = self._active.get(addr, 0) - 1
        if n > 0:
            self._active[addr] = n
        else:
            self._active.pop(addr, None)

    def failed(self, addr: Addr, now: float) -> bool:
        """Record a failed attempt; True if it ejects the endpoint (agent/common/outlier.py)."""
        return self._health.setdefault(addr, Outlier()).failed(self.rule, now) > 0

    def succeeded(self, addr: Addr) -> None:
        h = self._health.get(addr)
        if h is not None:
            h.succeeded()
            if h.spotless:
                self._health.pop(addr, None)

    def status(self, now: float) -> list[dict[str, object]]:
        return [
            {
                "endpoint": f"{a[0]}:{a[1]}",
                "ejectedFor": round(h.ejected_until - now, 1),
                "failures": h.failures,
                "ejections": h.ejections,
            }
            for a, h in sorted(self._health.items())
            if h.ejected_until > now or h.failures
        ]
