"""What every plugin sees and implements: the request context and the two hooks.

A plugin is built once per configuration (per scope) from its typed config.
`request(ctx)` runs before the upstream is called and may answer instead (a
401, a 429, a cache hit, a preflight). `response(ctx, status, headers)` runs on
the response head before it is sent, in reverse order. Plugins keep their
state (counters, caches, key sets) in the instance or in `Shared`.

`PluginSpec` and `Consumer` are configuration: they are models in models.py (which
mypyc does not compile), with every plugin's own configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..http.message import Headers, Request, Response
from .models import Consumer, PluginSpec

S = TypeVar("S")

__all__ = ["Consumer", "Context", "Plugin", "PluginSpec", "Shared"]


# Order of the request hooks; response hooks run in reverse.
PHASE_CORS = 10
PHASE_AUTH = 20
PHASE_ACL = 30
PHASE_RATE_LIMIT = 40
PHASE_CACHE = 50


class Context:
    """One request on its way through the pipeline."""

    __slots__ = (
        "consumer",
        "notes",
        "principal",
        "request",
        "route_name",
        "scratch",
        "taps",
        "upstream_headers",
    )

    def __init__(self, request: Request, route_name: str) -> None:
        self.request = request
        self.route_name = route_name
        self.consumer: Consumer | None = None
        self.principal = ""
        """Who the request's credentials prove is asking ('' when no plugin authenticated it):
        the consumer's name, or for a token that maps to no consumer its issuer and subject.
        Anything kept per caller (the cache) is kept per principal."""
        self.upstream_headers: Headers | None = None
        """The headers that will go upstream (plugins may remove credentials from them)."""
        self.scratch: dict[str, Any] = {}
        """Per-plugin notes between the request and response hooks."""
        self.notes: dict[str, str] = {}
        """For the access log and metrics: ratelimit, cache, auth outcomes."""
        self.taps: list[Callable[[bytes | None], None]] = []
        """Called with each chunk of the upstream's response body, then None at its end."""


class Plugin:
    """Subclasses take (config, shared, scope): scope is global, route:NAME or consumer:NAME."""

    name = ""
    phase = 100
    authenticates = False
    """An auth plugin: the request passes if any one of them accepts it."""

    async def request(self, ctx: Context) -> Response | None:
        return None

    def response(self, ctx: Context, status: int, headers: Headers) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class Shared:
    """What plugins of one configuration share: consumers by credential, and services."""

    consumers: tuple[Consumer, ...] = ()
    by_key: Mapping[str, Consumer] = field(default_factory=dict)
    by_subject: Mapping[str, Consumer] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)
    """Long-lived helpers shared across reloads (Redis clients, JWKS caches), by key."""

    def service(self, key: str, kind: type[S], make: Callable[[], S]) -> S:
        """The shared `kind` under `key`, made on first use (and kept across reloads)."""
        found = self.services.get(key)
        if not isinstance(found, kind):
            found = self.services[key] = make()
        return found

    @classmethod
    def of(cls, consumers: tuple[Consumer, ...], services: dict[str, Any]) -> Shared:
        return cls(
            consumers,
            {k: c for c in consumers for k in c.api_keys},
            {s: c for c in consumers for s in c.jwt_subjects},
            services,
        )
