"""The CA's HTTPS API on :15012 (JSON over TLS 1.3; the CA serves with its own SPIFFE ID).

POST /v1/certificates   Authorization: Bearer <credential>
    {"identity": "spiffe://td/ns/<ns>/sa/<sa>", "csr": PEM, "ttlSeconds": N}
    -> 200 {"certificate": PEM, "bundle": PEM, "notAfter": ISO-8601}
    -> 400 malformed request (the field named), 401 no, unknown, expired or revoked
       credential, 403 not this credential's identity, 408 too slow, 413 body too large,
       415 compressed body, 429 too many for this credential (Retry-After)
GET  /v1/issued         the last certificates issued, as far as the credential may see them:
                        an admin credential all, a node's its node's, a workload's its own
GET  /v1/bundle         the trust bundle (every root agents must trust), PEM; open
GET  /metrics           Prometheus counters; open (no secrets: credential ids and counts)
GET  /healthz/ready

Every refusal is JSON {"error": reason} with a 4xx status and a log line naming the
credential; a 500 means a bug. A connection gets `request_timeout` to finish its TLS
handshake and again to deliver one whole request (else 408), serves one request, and
closes; connections are capped in total and per peer address.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agent.identity import tls
from agent.identity.certs import IdentityError, SpiffeId, cert_pem, generate_key
from agent.state import StateStore

from .authority import Authority, CAError, authorize, check_ttl
from .credentials import ADMIN, NODE, TOKEN, Authenticator, Caller, Unauthenticated
from .limits import IssueLimiter

log = logging.getLogger("ca")

ROOT_POLL = 1.0
MAX_BODY = 16 * 1024
"""A signing request is about 1 KiB."""
MAX_IDENTITY_CHARS = 512
REQUEST_TIMEOUT = 10.0
LINGER = 1.0
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_PEER = 64
FIELDS = ("identity", "csr", "ttlSeconds")
DEFAULT_TTL_S = 86400


@dataclass
class _Conn:
    """One client connection, as the guard and the handlers both see it."""

    peer: str
    handling: bool = False


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: caps connections, and answers 408 and
    closes a connection that has not delivered a request within the deadline (aiohttp
    itself waits for ever for the first request)."""

    def __init__(self, server: CAServer, inner: asyncio.Protocol) -> None:
        self._server = server
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is a Transport in all but its class
        transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else "?"
        why = self._server.admit(peer)
        if why:
            self._server.metrics.connections_refused.labels(why).inc()
            transport.abort()
            return
        self._transport = transport
        self._conn = self._server.open_conn(transport, peer)
        self._timer = asyncio.get_running_loop().call_later(
            self._server.request_timeout, self._expire
        )
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        conn, transport = self._conn, self._transport
        if conn is None or transport is None or transport.is_closing() or conn.handling:
            return  # a handler runs: it has deadlines of its own, and closes when done
        self._server.metrics.timeouts.inc()
        reason = f"no complete request within {self._server.request_timeout:g}s of the connection"
        body = json.dumps({"error": reason}).encode()
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        transport.close()
        log.warning("request timed out", extra={"peer": conn.peer, "reason": reason})

    def data_received(self, data: bytes) -> None:
        if self._conn is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._conn is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._conn is not None and self._transport is not None:
            self._server.close_conn(self._transport, self._conn)
            self._conn = None
            self._inner.connection_lost(exc)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "slipstream_ca_requests", "Requests answered, by endpoint and status",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.issued = Counter(
            "slipstream_ca_certificates_issued", "Certificates signed, by credential kind",
            ["kind"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "slipstream_ca_rate_limited", "Signing requests refused with 429, by credential",
            ["credential"], registry=r,
        )  # fmt: skip
        self.timeouts = Counter(
            "slipstream_ca_request_timeouts", "Connections closed with 408 (too slow)",
            registry=r,
        )  # fmt: skip
        self.open_connections = Gauge(
            "slipstream_ca_open_connections", "Client connections open now (after TLS)",
            registry=r,
        )  # fmt: skip
        self.connections_refused = Counter(
            "slipstream_ca_connections_refused", "Connections closed at once, by reason",
            ["reason"], registry=r,
        )  # fmt: skip


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CAServer:
    def __init__(
        self,
        authority: Authority,
        authenticators: list[Authenticator],
        store: StateStore,
        listen: tuple[str, int] = ("0.0.0.0", 15012),
        *,
        limiter: IssueLimiter | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER,
    ) -> None:
        self.authority = authority
        self.authenticators = authenticators
        self.store = store
        self.listen = listen
        self.limiter = limiter or IssueLimiter()
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        self.metrics = Metrics()
        self.metrics.open_connections.set_function(lambda: len(self._conns))
        self.issued: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self._per_peer: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------ connections

    def admit(self, peer: str) -> str:
        """Why a new connection from `peer` is refused ("" if it is not)."""
        if len(self._conns) >= self.max_connections:
            return "too_many_connections"
        if self._per_peer[peer] >= self.max_connections_per_peer:
            return "too_many_from_peer"
        return ""

    def open_conn(self, transport: asyncio.BaseTransport, peer: str) -> _Conn:
        conn = self._conns[transport] = _Conn(peer)
        self._per_peer[peer] += 1
        return conn

    def close_conn(self, transport: asyncio.BaseTransport, conn: _Conn) -> None:
        self._conns.pop(transport, None)
        self._per_peer[conn.peer] -= 1
        if self._per_peer[conn.peer] <= 0:
            del self._per_peer[conn.peer]

    # ------------------------------------------------------------ the app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app.router.add_post("/v1/certificates", self._sign)
        app.router.add_get("/v1/bundle", self._bundle)
        app.router.add_get("/v1/issued", self._issued)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz/ready", self._ready)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy (the guard's deadline leaves it alone), turns every
        refusal into JSON with a reason, counts answers, and closes after one request."""
        conn = self._conns.get(request.transport) if request.transport else None
        if conn is not None:
            conn.handling = True
        endpoint = request.path if request.path in _ENDPOINTS else "other"
        try:
            response = await handler(request)
        except CAError as exc:
            response = self._refusal(request, exc)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413...
            reason = exc.reason if exc.status != 413 else f"the body is over {MAX_BODY} bytes"
            response = web.json_response({"error": reason}, status=exc.status)
            for name in ("Allow",):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
        except Exception:
            log.exception("bug while answering", extra={"path": request.path})
            response = web.json_response({"error": "internal error (a bug: see the CA's log)"},
                                         status=500)  # fmt: skip
        response.force_close()
        self.metrics.requests.labels(endpoint, str(response.status)).inc()
        return response

    def _refusal(self, request: web.Request, exc: CAError) -> web.Response:
        response = web.json_response({"error": exc.reason}, status=exc.status)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="slipstream-ca"'
        for name, value in exc.headers.items():
            response.headers[name] = value
        caller = exc.caller
        log.warning(
            "certificate refused" if request.path == "/v1/certificates" else "request refused",
            extra={
                "path": request.path,
                "credential": caller.credential if caller else None,
                "kind": caller.kind if caller else None,
                "node": caller.node or None if caller else None,
                "status": exc.status,
                "reason": exc.reason,
                "peer": request.remote,
            },
        )
        return response

    def _ssl(self) -> ssl.SSLContext:
        key = generate_key()
        cert = self.authority.server_certificate(key)
        return tls.server_context(
            [cert], key, self.authority.roots.bundle_pem(), require_client_cert=False
        )

    def _reissue(self, ctx: ssl.SSLContext) -> None:
        """A serving certificate from the (maybe new) active root, in the live context: new
        handshakes get it at once and the listener never closes."""
        key = generate_key()
        tls.load_chain(ctx, [self.authority.server_certificate(key)], key)

    async def run(self, drain: asyncio.Event) -> None:
        # auto_decompress off: a CA has no reason to inflate what a client compressed.
        # Lingering (reading what is left of a refused body, so the client's kernel does not
        # reset the answer away) is bounded: a slow sender does not hold a connection long.
        runner = web.AppRunner(
            self.app(), access_log=None, auto_decompress=False, lingering_time=LINGER
        )
        await runner.setup()
        ctx = self._ssl()
        factory = runner.server
        assert factory is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Guard(self, factory()),
            *self.listen,
            ssl=ctx,
            ssl_handshake_timeout=self.request_timeout,
            reuse_address=True,
        )
        stamp = self.authority.roots.stamp()
        log.info(
            "CA listening",
            extra={
                "listen": f"{self.listen[0]}:{self.listen[1]}",
                "active_root": self.authority.roots.active.id,
                "trust_domain": self.authority.trust_domain,
            },
        )
        try:
            while not drain.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drain.wait(), ROOT_POLL)
                if self.authority.roots.stamp() != stamp:
                    stamp = self.authority.roots.stamp()
                    try:
                        self.authority.roots.load(create=False)
                    except CAError as exc:
                        log.error(
                            "roots changed but cannot be read; keeping the old ones",
                            extra={"error": str(exc)},
                        )
                        continue
                    self._reissue(ctx)
                    log.info(
                        "roots reloaded",
                        extra={
                            "active_root": self.authority.roots.active.id,
                            "bundle": len(self.authority.roots.roots),
                        },
                    )
        finally:
            server.close()
            await runner.cleanup()

    # ------------------------------------------------------------ authentication

    async def _caller(self, request: web.Request) -> Caller:
        """The authenticated caller, or CAError(401) saying why not."""
        values = request.headers.getall("Authorization", [])
        if not values:
            raise CAError(401, "no credential (Authorization: Bearer <token>)")
        if len(values) > 1:
            raise CAError(401, "more than one Authorization header")
        scheme, _, token = values[0].partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise CAError(401, "the credential must be sent as Authorization: Bearer <token>")
        if not TOKEN.match(token):
            raise CAError(401, "the bearer token is malformed")
        for authenticator in self.authenticators:
            try:
                caller = await authenticator.authenticate(token)
            except Unauthenticated as exc:
                raise CAError(401, str(exc)) from exc
            if caller is not None:
                return caller
        raise CAError(401, "the credential is not known to this CA")

    # ------------------------------------------------------------ handlers

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(
            text="ready\n" if self.store.synced else "not ready\n",
            status=200 if self.store.synced else 503,
        )

    async def _bundle(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.authority.roots.bundle_pem(), content_type="application/x-pem-file"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _issued(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        if caller.kind == ADMIN:
            records = list(self.issued)
        elif caller.kind == NODE:
            records = [r for r in self.issued if r["kind"] == NODE and r["node"] == caller.node]
        else:
            records = [r for r in self.issued if r["credential"] == caller.credential]
        return web.json_response(records)

    async def _body(self, request: web.Request, started: float) -> dict[str, Any]:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise CAError(415, f"Content-Encoding {encoding!r} is not accepted")
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise CAError(413, f"the body is over {MAX_BODY} bytes")
        remaining = started + self.request_timeout - time.monotonic()
        try:
            raw = await asyncio.wait_for(request.read(), max(0.0, remaining))
        except TimeoutError as exc:
            self.metrics.timeouts.inc()
            raise CAError(408, f"the body did not arrive within {self.request_timeout:g}s") from exc
        return parse_request(raw)

    async def _sign(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        caller = await self._caller(request)
        try:
            wait = self.limiter.take(caller.credential, started)
            if wait > 0:
                self.metrics.rate_limited.labels(caller.credential).inc()
                retry = max(1, math.ceil(wait))
                raise CAError(
                    429,
                    f"credential {caller.credential} asks for certificates faster than "
                    f"{self.limiter.rate:g}/s (burst {self.limiter.burst}); retry in {retry}s",
                    headers={"Retry-After": str(retry)},
                )
            body = await self._body(request, started)
            try:
                identity = SpiffeId.parse(body["identity"])
            except IdentityError as exc:
                raise CAError(400, f"identity: {exc}") from exc
            ttl = check_ttl(body.get("ttlSeconds", DEFAULT_TTL_S), self.authority.max_ttl)
            why_not = authorize(self.store.snapshot, caller, identity, self.authority.trust_domain)
            if why_not:
                raise CAError(403, why_not)
            cert = self.authority.sign(body["csr"], identity, ttl)
        except CAError as exc:
            exc.caller = caller
            raise
        record = {
            "credential": caller.credential,
            "kind": caller.kind,
            "node": caller.node or None,
            "identity": str(identity),
            "serial": format(cert.serial_number, "x"),
            "notAfter": cert.not_valid_after_utc.isoformat(),
            "root": self.authority.roots.active.id,
        }
        self.issued.append(record)
        self.metrics.issued.labels(caller.kind).inc()
        log.info("certificate issued", extra=record)
        return web.json_response(
            {
                "certificate": cert_pem(cert),
                "bundle": self.authority.roots.bundle_pem(),
                "notAfter": record["notAfter"],
            }
        )


_ENDPOINTS = {"/v1/certificates", "/v1/bundle", "/v1/issued", "/metrics", "/healthz/ready"}


def parse_request(raw: bytes) -> dict[str, Any]:
    """The signing request's JSON, strictly: UTF-8, no repeated or unknown fields, bounded
    nesting; `identity` and `csr` strings (`ttlSeconds` is checked by `check_ttl`).
    CAError(400) names what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CAError(400, f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from exc

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise CAError(400, f"field {k!r} appears twice")
            out[k] = v
        return out

    try:
        # NaN and Infinity parse (as Python's json does) so the field check names the field.
        doc = json.loads(text, object_pairs_hook=pairs)
    except ValueError as exc:
        raise CAError(400, f"the body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise CAError(400, "the body is nested too deeply") from exc
    if not isinstance(doc, dict):
        raise CAError(400, f"the body must be a JSON object, not {type(doc).__name__}")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise CAError(400, f"unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    for name in ("identity", "csr"):
        if name not in doc:
            raise CAError(400, f"{name}: required")
        if not isinstance(doc[name], str):
            raise CAError(400, f"{name}: must be a string, not {type(doc[name]).__name__}")
    if len(doc["identity"]) > MAX_IDENTITY_CHARS:
        raise CAError(400, f"identity: longer than {MAX_IDENTITY_CHARS} characters")
    return doc
