"""Backends at run time: endpoints with their connection pools, balancing, and health.

Balancing: round robin (smooth weighted, as nginx does it: exact proportions
over any run of requests), least-request (fewest requests in flight per
unit of weight), or a consistent-hash ring on a header or cookie (a key keeps
its endpoint while the set of endpoints stays; one that leaves moves only its
own keys). Health: active HTTP probes mark an endpoint down after
`unhealthyThreshold` failures and up after `healthyThreshold` successes;
passive checks eject an endpoint after `consecutiveFailures` failed requests
in a row, for `ejection` times the number of its ejections, up to `maxEjection`
(the agent's rule too: agent/common/outlier.py). An endpoint is used only when
both say it is fine; with none left the request gets 503.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import TypeVar

from agent.common.outlier import EjectionRule, Outlier

from .config import BackendSpec, EndpointSpec
from .http.message import Request
from .http.upstream import Pool, UpstreamEndpoint

log = logging.getLogger("gateway.backends")


class EndpointState:
    def __init__(self, spec: EndpointSpec, pool: Pool) -> None:
        self.spec = spec
        self.endpoint = spec.endpoint
        self.weight = spec.weight
        self.pool = pool
        self.healthy = True
        """As the active probes see it."""
        self.outlier = Outlier()
        """As passive health (outlier ejection) sees it."""
        self.probe_ok = 0
        self.probe_failed = 0
        self.current = 0
        """Smooth weighted round robin's running weight."""

    def available(self, now: float) -> bool:
        return self.healthy and not self.outlier.ejected(now)

    def status(self, now: float) -> dict[str, object]:
        return {
            "endpoint": str(self.endpoint),
            "weight": self.weight,
            "healthy": self.healthy,
            "ejected": self.outlier.ejected(now),
            "ejectedFor": round(max(0.0, self.outlier.ejected_until - now), 1),
            "active": self.pool.active,
        }


T = TypeVar("T")


def smooth_pick(items: list[T], weight: Callable[[T], int], state: dict[int, int]) -> T:
    """nginx's smooth weighted round robin over `items` (state: running weight by id)."""
    total = 0
    best: T | None = None
    best_w = 0
    for it in items:
        w = weight(it)
        cur = state.get(id(it), 0) + w
        state[id(it)] = cur
        total += w
        if best is None or cur > best_w:
            best, best_w = it, cur
    assert best is not None
    state[id(best)] -= total
    return best


class Backend:
    def __init__(self, spec: BackendSpec, pools: PoolRegistry) -> None:
        self.spec = spec
        self.endpoints = [EndpointState(e, pools.get(e.endpoint, spec)) for e in spec.endpoints]
        p = spec.passive
        self._ejection = EjectionRule(p.consecutive_failures, p.ejection, p.max_ejection)
        self._wrr: dict[int, int] = {}
        self._ring: list[tuple[int, int]] = []
        # (read on every request: kept here, not behind the model's properties)
        self.load_balancer = spec.load_balancer
        self.hash_header = spec.hash_header
        self.hash_cookie = spec.hash_cookie or ""
        if self.load_balancer == "hash":
            for i, ep in enumerate(self.endpoints):
                for v in range(100 * ep.weight):
                    self._ring.append((_hash(f"{ep.endpoint}#{v}"), i))
            self._ring.sort()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ choosing

    def pick(self, req: Request, exclude: set[UpstreamEndpoint]) -> EndpointState | None:
        now = time.monotonic()
        if len(self.endpoints) == 1:
            only = self.endpoints[0]
            return only if only.available(now) and only.endpoint not in exclude else None
        live = [e for e in self.endpoints if e.available(now) and e.endpoint not in exclude]
        if not live:
            return None
        lb = self.load_balancer
        if lb == "least-request":
            return min(live, key=lambda e: (e.pool.active + 1) / e.weight)
        if lb == "hash":
            key = self._hash_key(req)
            if key is not None:
                return self._on_ring(key, live)
        return smooth_pick(live, lambda e: e.weight, self._wrr)

    def _hash_key(self, req: Request) -> str | None:
        if self.hash_header is not None:
            raw = req.headers.get(self.hash_header)
            return raw.decode("latin-1") if raw is not None else None
        name = self.hash_cookie
        for raw in req.headers.get_all(b"cookie"):
            try:
                jar = SimpleCookie(raw.decode("latin-1"))
            except CookieError:
                continue
            if name in jar:
                return jar[name].value
        return None

    def _on_ring(self, key: str, live: list[EndpointState]) -> EndpointState:
        allowed = {id(e) for e in live}
        start = bisect.bisect(self._ring, (_hash(key), -1))
        for k in range(len(self._ring)):
            ep = self.endpoints[self._ring[(start + k) % len(self._ring)][1]]
            if id(ep) in allowed:
                return ep
        return live[0]

    # ------------------------------------------------------------ passive health

    def report(self, ep: EndpointState, ok: bool) -> None:
        if ok:
            ep.outlier.succeeded()
            return
        seconds = ep.outlier.failed(self._ejection, time.monotonic())
        if seconds:
            log.warning(
                "endpoint ejected",
                extra={"backend": self.spec.name, "endpoint": str(ep.endpoint), "seconds": seconds},
            )

    # ------------------------------------------------------------ active health

    def start(self) -> None:
        if self.spec.active is not None and self._task is None:
            self._task = asyncio.ensure_future(self._probe_loop())

    async def _probe_loop(self) -> None:
        check = self.spec.active
        assert check is not None
        while True:
            await asyncio.gather(*(self._probe(ep) for ep in self.endpoints))
            await asyncio.sleep(check.interval)

    async def _probe(self, ep: EndpointState) -> None:
        check = self.spec.active
        assert check is not None
        ok = await probe(ep.endpoint, check.path, check.timeout, check.statuses)
        if ok:
            ep.probe_ok, ep.probe_failed = ep.probe_ok + 1, 0
            if not ep.healthy and ep.probe_ok >= check.healthy_threshold:
                ep.healthy = True
                log.info(
                    "endpoint healthy again",
                    extra={"backend": self.spec.name, "endpoint": str(ep.endpoint)},
                )
        else:
            ep.probe_failed, ep.probe_ok = ep.probe_failed + 1, 0
            if ep.healthy and ep.probe_failed >= check.unhealthy_threshold:
                ep.healthy = False
                log.warning(
                    "endpoint unhealthy",
                    extra={"backend": self.spec.name, "endpoint": str(ep.endpoint)},
                )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        return {"name": self.spec.name, "endpoints": [e.status(now) for e in self.endpoints]}


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


async def probe(
    endpoint: UpstreamEndpoint, path: str, timeout: float, statuses: tuple[tuple[int, int], ...]
) -> bool:
    """One active health check: GET path on a fresh connection; a status in range is healthy."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=True if endpoint.tls else None
            )
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {endpoint.host}\r\n"
                    "User-Agent: slipstream-health\r\nConnection: close\r\n\r\n".encode()
                )
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False
    status = int(parts[1])
    return any(lo <= status <= hi for lo, hi in statuses)


class PoolRegistry:
    """Connection pools by endpoint, kept across configuration reloads (warm connections)."""

    def __init__(self, make: Callable[[UpstreamEndpoint, BackendSpec], Pool]) -> None:
        self._make = make
        self.pools: dict[tuple[UpstreamEndpoint, float], Pool] = {}

    def get(self, endpoint: UpstreamEndpoint, spec: BackendSpec) -> Pool:
        key = (endpoint, spec.connect_timeout)
        pool = self.pools.get(key)
        if pool is None or pool.closed:
            pool = self.pools[key] = self._make(endpoint, spec)
        return pool

    def retain(self, used: set[int]) -> None:
        """Close the pools no current backend uses (their lent connections finish first)."""
        for key, pool in list(self.pools.items()):
            if id(pool) not in used:
                pool.close()
                del self.pools[key]
