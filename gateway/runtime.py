"""One configuration, compiled for serving: router, backends, plugin chains per route.

A new Runtime is built on every reload; requests in flight keep the one they
started with. What must survive a reload lives outside it: connection pools
(`PoolRegistry`), JWKS caches, rate-limit stores and response caches
(`services`, keyed by what they are for).
"""

from __future__ import annotations

from .backends import Backend, PoolRegistry, smooth_pick
from .config import BackendRef, GatewayConfig, RouteSpec
from .plugins import CLASSES
from .plugins.base import PHASE_AUTH, Plugin, PluginSpec, Shared
from .routing import Router


def build_plugins(specs: tuple[PluginSpec, ...], shared: Shared, scope: str) -> dict[str, Plugin]:
    return {s.name: CLASSES[s.name](s.config, shared, scope) for s in specs}  # type: ignore[call-arg]


class RoutePlan:
    """What runs for one route: plugins before and after authentication, and its backends."""

    def __init__(self, route: RouteSpec, merged: dict[str, Plugin]) -> None:
        self.route = route
        self.plugins = bool(merged)
        ordered = sorted(merged.values(), key=lambda p: p.phase)
        self.before_auth = [p for p in ordered if p.phase < PHASE_AUTH]
        self.auth = [p for p in ordered if p.authenticates]
        self.after_auth = {p.name: p for p in ordered if p.phase > PHASE_AUTH}
        """By name, so a consumer's own plugin can take the place of the route's."""
        self.after_auth_ordered = list(self.after_auth.values())
        """The same, in phase order (`ordered` is sorted already)."""
        self._wrr: dict[int, int] = {}
        self._refs = [r for r in route.backends if r.weight > 0]

    def backend_ref(self) -> BackendRef:
        if len(self._refs) == 1:
            return self._refs[0]
        return smooth_pick(self._refs, lambda r: r.weight, self._wrr)


class Runtime:
    def __init__(
        self, config: GatewayConfig, pools: PoolRegistry, services: dict[str, object]
    ) -> None:
        self.config = config
        self.router = Router(config.routes)
        self.backends = {name: Backend(spec, pools) for name, spec in config.backends.items()}
        pools.retain({id(ep.pool) for b in self.backends.values() for ep in b.endpoints})
        shared = Shared.of(config.consumers, services)
        global_plugins = build_plugins(config.plugins, shared, "global")
        self.plans: dict[str, RoutePlan] = {}
        for route in config.routes:
            merged = dict(global_plugins)
            merged.update(build_plugins(route.plugins, shared, f"route:{route.name}"))
            self.plans[route.name] = RoutePlan(route, merged)
        self.consumer_plugins = {
            c.name: build_plugins(c.plugins, shared, f"consumer:{c.name}") for c in config.consumers
        }

    def start(self) -> None:
        for b in self.backends.values():
            b.start()

    def stop(self) -> None:
        for b in self.backends.values():
            b.stop()
