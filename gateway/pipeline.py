"""The request path through the gateway: route, plugins, filters, upstream, response.

    route ─ CORS ─ authentication ─ (consumer's own plugins) ACL ─ rate limit ─ cache
      ─ redirect / rewrite / request headers ─ upstream (retries, timeouts, health)
      ─ response headers ─ plugins' response hooks (reverse order) ─ stream to client

A plugin may answer at its step (401, 403, 429, a cache hit, a preflight);
the response hooks of the plugins that ran still see that answer. Errors of
the gateway's own are plain text with a request id: 404 no route, 502 the
upstream failed, 503 no healthy endpoint, 504 the upstream was too slow.

The request arrives normalized (http/head.py): its path and Host are what the
route matched and what goes upstream. Fields a client could use to make an
upstream serve another URL or method than the one routed (X-Original-URL,
X-HTTP-Method-Override, Forwarded, X-Forwarded-Host...: CLIENT_CANNOT_SET) are
removed before routing; the gateway sets X-Forwarded-For/Proto/Host itself. An
Upgrade passes only if the route allows that protocol, as a valid handshake
(RFC 6455 §4.2.1 for WebSocket), and only a 101 that switches to it is relayed.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable

from .accesslog import AccessLog
from .filters import modify_headers, new_path, redirect
from .http import proxy
from .http.errors import UpstreamError
from .http.message import Headers, Request, Response
from .http.server import Exchange
from .http.upstream import UpstreamEndpoint
from .metrics import Metrics
from .plugins.base import Context, Plugin
from .routing import Candidate
from .runtime import RoutePlan, Runtime

log = logging.getLogger("gateway")

_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

CLIENT_CANNOT_SET = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-override-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"forwarded",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-server",
        b"x-forwarded-scheme",
        b"x-host",
        b"x-original-host",
        b"x-forwarded-ssl",
        b"front-end-https",
        b"x-url-scheme",
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
    }
)
"""Request fields upstream frameworks (Symfony, IIS, Spring, Rails, Express...) may read as
the URL, host, scheme, method or client address to serve: removed, so the upstream serves
what was routed to the client the gateway saw. (X-Forwarded-For is appended to, as nginx and
Envoy do: its last entry is the address the gateway saw.)"""


class Gateway:
    """The handler every listener of a worker serves; `runtime` is swapped on reload."""

    def __init__(self, runtime: Runtime, access_log: AccessLog, metrics: Metrics) -> None:
        self.runtime = runtime
        self.access_log = access_log
        self.metrics = metrics

    async def handle(self, req: Request, ex: Exchange) -> None:
        rt = self.runtime
        cfg = rt.config
        rid_name = cfg.request_id.header
        incoming = req.headers.get(rid_name)
        if incoming is not None and cfg.request_id.trust_incoming and _REQUEST_ID.match(incoming):
            req.id = incoming.decode()
        else:
            req.id = f"{random.getrandbits(96):024x}"  # no syscall per request
        h = req.headers
        for n, _ in h.items:
            if n in CLIENT_CANNOT_SET:
                h.items = [(n, v) for n, v in h.items if n not in CLIENT_CANNOT_SET]
                break
        if req.path == "*":  # OPTIONS * asks about the server, not a resource: we answer it
            self._finish(req, ex, Response(200, Headers([(b"allow", _ALLOW)])), "", None)
            return
        cand = rt.router.route(req)
        if cand is None:
            self._finish(
                req, ex, Response.text(404, f"no route for {req.host}{req.path}"), "", None
            )
            return
        route = cand.route
        if req.upgrade:
            refusal = _upgrade(req, route.upgrades)
            if refusal is not None:
                self._finish(req, ex, refusal, route.name, None)
                return
        plan = rt.plans[route.name]
        ctx = Context(req, route.name)
        up = ctx.upstream_headers = req.headers.copy()
        ran: list[Plugin] = []
        answer = await self._request_hooks(rt, plan, ctx, ran) if plan.plugins else None
        f = route.filters
        if answer is None and f.redirect is not None:
            answer = redirect(req, cand.match.path, f.redirect)
        if answer is not None:
            self._hooks_on(ctx, ran, answer.status, answer.headers)
            self._finish(req, ex, answer, route.name, ctx)
            return
        self._rewrite(req, cand, up)
        attempt_or_error = await self._forward(rt, plan, req, up)
        if isinstance(attempt_or_error, Response):
            self._hooks_on(ctx, ran, attempt_or_error.status, attempt_or_error.headers)
            self._finish(req, ex, attempt_or_error, route.name, ctx)
            return
        attempt, upstream = attempt_or_error
        if attempt.status == 101 and not _switches_to(attempt.headers, req.upgrade):
            attempt.discard()
            answer = Response.text(502, "the upstream switched protocols unasked")
            self._hooks_on(ctx, ran, answer.status, answer.headers)
            self._finish(req, ex, answer, route.name, ctx)
            return
        self.metrics.upstream_time(route.name, time.monotonic() - req.received)
        headers = attempt.headers
        if f.response_headers is not None:
            modify_headers(headers, f.response_headers)
        self._hooks_on(ctx, ran, attempt.status, headers)
        headers.set(rid_name, req.id.encode())
        done = attempt.pipe(ex, headers, _one_tap(ctx.taps))
        if done is not None:
            await done
        self._log(req, attempt.status, attempt.body_bytes, route.name, ctx, upstream)

    # ------------------------------------------------------------ steps

    async def _request_hooks(
        self, rt: Runtime, plan: RoutePlan, ctx: Context, ran: list[Plugin]
    ) -> Response | None:
        for p in plan.before_auth:
            ran.append(p)
            answer = await p.request(ctx)
            if answer is not None:
                return answer
        if plan.auth:
            refusal: Response | None = None
            for p in plan.auth:
                answer = await p.request(ctx)
                if answer is None:
                    ran.append(p)
                    refusal = None
                    break
                refusal = refusal or answer
            if refusal is not None:
                return refusal
        after = plan.after_auth_ordered
        if ctx.consumer is not None:
            own = rt.consumer_plugins.get(ctx.consumer.name)
            if own:
                after = sorted({**plan.after_auth, **own}.values(), key=lambda p: p.phase)
        for p in after:
            ran.append(p)
            answer = await p.request(ctx)
            if answer is not None:
                return answer
        return None

    def _hooks_on(self, ctx: Context, ran: list[Plugin], status: int, headers: Headers) -> None:
        """The plugins' response hooks, last to run first."""
        for p in reversed(ran):
            p.response(ctx, status, headers)

    def _rewrite(self, req: Request, cand: Candidate, up: Headers) -> None:
        f = cand.route.filters
        if f.rewrite is not None:
            if f.rewrite.path is not None:
                req.path = new_path(req.path, cand.match.path, f.rewrite.path)
            if f.rewrite.hostname is not None:
                up.set(b"host", f.rewrite.hostname.encode())
        if f.request_headers is not None:
            modify_headers(up, f.request_headers)
        # X-Forwarded-* and the request id, in one pass over the fields.
        rid = self.runtime.config.request_id.header
        client = req.client[0].encode()
        chain = b", ".join([*up.get_all(b"x-forwarded-for"), client])
        items = [(n, v) for n, v in up.items if n not in _FORWARDED and n != rid]
        items.append((b"x-forwarded-for", chain))
        items.append((b"x-forwarded-proto", req.scheme.encode()))
        if req.authority:
            items.append((b"x-forwarded-host", req.authority))
        items.append((rid, req.id.encode()))
        up.items = items

    async def _forward(
        self, rt: Runtime, plan: RoutePlan, req: Request, up: Headers
    ) -> tuple[proxy.UpstreamAttempt, str] | Response:
        route = plan.route
        retry = route.retry
        deadline = req.received + route.timeouts.request
        tried: set[UpstreamEndpoint] = set()
        failure: UpstreamError | None = None
        for n in range(retry.attempts):
            last = n + 1 == retry.attempts
            backend = rt.backends[plan.backend_ref().name]
            ep = backend.pick(req, tried)
            if ep is None:
                if failure is None:
                    return Response.text(
                        503, f"no healthy endpoint for backend {backend.spec.name}"
                    )
                break
            tried.add(ep.endpoint)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                attempt = await proxy.send(
                    ep.pool, req, up, min(route.timeouts.backend_request, left)
                )
            except UpstreamError as exc:
                backend.report(ep, False)
                failure = exc
                retriable = (exc.kind == "connect" and retry.on_connect_failure) or (
                    exc.kind == "reset" and req.method in retry.methods
                )
                if retriable and not last:
                    continue
                break
            if attempt.status in retry.statuses and req.method in retry.methods and not last:
                backend.report(ep, False)
                attempt.discard()
                continue
            backend.report(ep, attempt.status < 500)
            return attempt, str(ep.endpoint)
        if failure is not None and failure.kind == "timeout":
            return Response.text(504, f"upstream timed out: {failure.detail}")
        if failure is not None:
            return Response.text(502, f"upstream failed: {failure.detail}")
        return Response.text(504, "request timed out")

    def _finish(
        self, req: Request, ex: Exchange, resp: Response, route: str, ctx: Context | None
    ) -> None:
        resp.headers.set(self.runtime.config.request_id.header, req.id.encode())
        ex.respond(resp)
        self._log(req, resp.status, len(resp.body), route, ctx, None)

    def _log(
        self,
        req: Request,
        status: int,
        size: int,
        route: str,
        ctx: Context | None,
        upstream: str | None,
    ) -> None:
        seconds = time.monotonic() - req.received
        consumer = ctx.consumer.name if ctx is not None and ctx.consumer is not None else ""
        m = self.metrics
        m.request(route, status, consumer, seconds)
        notes = ctx.notes if ctx is not None else {}
        if "ratelimit" in notes:
            m.count(m.ratelimit, route, notes["ratelimit"])
        if "cache" in notes:
            m.count(m.cache, route, notes["cache"])
        if self.access_log.format == "off":
            return
        self.access_log.record(
            {
                "request_id": req.id,
                "client": req.client[0],
                "method": req.method,
                "host": req.host,
                "path": req.path,
                "status": status,
                "bytes": size,
                "duration_ms": round(seconds * 1000, 3),
                "route": route,
                "consumer": consumer or None,
                "upstream": upstream,
                **notes,
            }
        )


_ALLOW = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
_WEBSOCKET_KEY = re.compile(rb"^[A-Za-z0-9+/]{22}==$")
"""16 random bytes in base64 (RFC 6455 §4.1)."""


def _upgrade(req: Request, allowed: frozenset[str]) -> Response | None:
    """Decide an upgrade request: keep `req.upgrade` if the route allows it and the handshake
    is valid (a refusal otherwise), or clear it (the request is served as plain HTTP; the
    connection ends after it)."""
    if req.upgrade not in allowed:
        req.upgrade = ""
        return None
    h = req.headers
    if (
        req.method != "GET"
        or req.version != "1.1"
        or req.body
        or not _WEBSOCKET_KEY.match(h.get(b"sec-websocket-key") or b"")
        or h.get(b"sec-websocket-version") != b"13"
        or len(h.get_all(b"sec-websocket-key")) != 1
    ):
        return Response.text(400, "invalid WebSocket handshake")
    return None


def _switches_to(headers: Headers, protocol: str) -> bool:
    """A 101 is relayed only when it switches to the protocol this request asked for."""
    if not protocol:
        return False
    return headers.tokens(b"upgrade") == {protocol.encode("latin-1")}


def _one_tap(taps: list[Callable[[bytes | None], None]]) -> Callable[[bytes | None], None] | None:
    if len(taps) < 2:
        return taps[0] if taps else None

    def all_taps(chunk: bytes | None) -> None:
        for t in taps:
            t(chunk)

    return all_taps
