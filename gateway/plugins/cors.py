"""CORS: answers preflights and marks responses for allowed origins (per route or global).

Origins are exact (`https://app.example.com`), a wildcard subdomain
(`https://*.example.com`) or `*` (not with credentials: browsers refuse it).
A preflight (OPTIONS with Access-Control-Request-Method) from an allowed
origin, for an allowed method and headers, gets 204 with the allowances;
one that is not allowed gets 403 and no CORS headers.
"""

from __future__ import annotations

import re

from ..http.message import Headers, Response
from .base import PHASE_CORS, Context, Plugin, Shared
from .models import CorsConfig


class Cors(Plugin):
    name = "cors"
    phase = PHASE_CORS

    def __init__(self, config: CorsConfig, shared: Shared, scope: str) -> None:
        self.config = config
        self._exact = frozenset(o for o in config.allow_origins if "*" not in o)
        self._any = "*" in config.allow_origins
        self._wild = [
            re.compile(re.escape(o).replace(r"\*\.", r"[a-z0-9-]+(\.[a-z0-9-]+)*\."))
            for o in config.allow_origins
            if "*." in o
        ]

    def allowed(self, origin: str) -> bool:
        return self._any or origin in self._exact or any(w.fullmatch(origin) for w in self._wild)

    async def request(self, ctx: Context) -> Response | None:
        req = ctx.request
        raw = req.headers.get(b"origin")
        if raw is None:
            return None
        origin = raw.decode("latin-1")
        wanted = req.headers.get(b"access-control-request-method")
        if req.method == "OPTIONS" and wanted is not None:
            return self._preflight(ctx, origin, wanted.decode("latin-1"))
        if self.allowed(origin):
            ctx.scratch["cors"] = origin
        return None

    def _preflight(self, ctx: Context, origin: str, method: str) -> Response:
        c = self.config
        asked = ctx.request.headers.tokens(b"access-control-request-headers")
        ok = self.allowed(origin) and method.upper() in c.allow_methods
        if ok and c.allow_headers:
            ok = all(h.decode("latin-1") in c.allow_headers for h in asked)
        ctx.notes["cors"] = "preflight-ok" if ok else "preflight-refused"
        if not ok:
            return Response.text(
                403, "CORS preflight refused: origin, method or headers not allowed"
            )
        h = Headers()
        self._mark(h, origin)
        h.add(b"access-control-allow-methods", ", ".join(c.allow_methods).encode())
        allow = (
            ", ".join(c.allow_headers) if c.allow_headers else b", ".join(sorted(asked)).decode()
        )
        if allow:
            h.add(b"access-control-allow-headers", allow.encode("latin-1"))
        h.add(b"access-control-max-age", b"%d" % c.max_age)
        h.add(b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        return Response(204, h)

    def _mark(self, h: Headers, origin: str) -> None:
        c = self.config
        wildcard = self._any and not c.allow_credentials
        h.set(b"access-control-allow-origin", b"*" if wildcard else origin.encode("latin-1"))
        if c.allow_credentials:
            h.set(b"access-control-allow-credentials", b"true")
        if not wildcard:
            h.add(b"vary", b"Origin")

    def response(self, ctx: Context, status: int, headers: Headers) -> None:
        origin = ctx.scratch.get("cors")
        if origin is None:
            return
        self._mark(headers, origin)
        if self.config.expose_headers:
            headers.set(
                b"access-control-expose-headers", ", ".join(self.config.expose_headers).encode()
            )
