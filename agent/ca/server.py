"""The CA's HTTPS API on :15012 (JSON over TLS 1.3; the CA serves with its own SPIFFE ID).

POST /v1/certificates   Authorization: Bearer <node token>
    {"identity": "spiffe://td/ns/<ns>/sa/<sa>", "csr": PEM, "ttlSeconds": N}
    -> 200 {"certificate": PEM, "bundle": PEM, "notAfter": ISO-8601}
    -> 400 bad request, 401 unknown token, 403 node not authorized (with the reason)
GET  /v1/bundle         the trust bundle (every root agents must trust), PEM
GET  /v1/issued         the last certificates issued (who, for whom, until when)
GET  /healthz/ready
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import ssl
from typing import Any

from aiohttp import web

from ..identity import tls
from ..identity.certs import IdentityError, SpiffeId, cert_pem, generate_key
from ..state import StateStore
from .authority import Authority, CAError, NodeTokens, authorize

log = logging.getLogger("ca")

ROOT_POLL = 1.0


class CAServer:
    def __init__(
        self,
        authority: Authority,
        tokens: NodeTokens,
        store: StateStore,
        listen: tuple[str, int] = ("0.0.0.0", 15012),
    ) -> None:
        self.authority = authority
        self.tokens = tokens
        self.store = store
        self.listen = listen
        self.issued: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/v1/certificates", self._sign)
        app.router.add_get("/v1/bundle", self._bundle)
        app.router.add_get("/v1/issued", self._issued)
        app.router.add_get("/healthz/ready", self._ready)
        return app

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
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        ctx = self._ssl()
        site = web.TCPSite(runner, *self.listen, ssl_context=ctx, reuse_address=True)
        await site.start()
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
            await runner.cleanup()

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

    async def _issued(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.issued))

    async def _sign(self, request: web.Request) -> web.Response:
        node = None
        try:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                raise CAError(401, "no node credential (Authorization: Bearer <token>)")
            node = self.tokens.node_of(auth[len("Bearer ") :].strip())
            if node is None:
                raise CAError(401, "the node credential is not known")
            try:
                body = await request.json()
            except ValueError as exc:
                raise CAError(400, "the body is not JSON") from exc
            if not isinstance(body, dict):
                raise CAError(400, "the body must be a JSON object")
            identity_text, csr, ttl = (
                body.get("identity"),
                body.get("csr"),
                body.get("ttlSeconds", 86400),
            )
            if not isinstance(identity_text, str) or not isinstance(csr, str):
                raise CAError(400, "identity and csr must be strings")
            if not isinstance(ttl, int | float) or isinstance(ttl, bool):
                raise CAError(400, "ttlSeconds must be a number")
            try:
                identity = SpiffeId.parse(identity_text)
            except IdentityError as exc:
                raise CAError(400, str(exc)) from exc
            why_not = authorize(self.store.snapshot, node, identity, self.authority.trust_domain)
            if why_not:
                raise CAError(403, why_not)
            cert = self.authority.sign(csr, identity, dt.timedelta(seconds=float(ttl)))
        except CAError as exc:
            log.warning(
                "certificate refused",
                extra={
                    "node": node,
                    "status": exc.status,
                    "reason": exc.reason,
                    "peer": request.remote,
                },
            )
            return web.json_response({"error": exc.reason}, status=exc.status)
        record = {
            "node": node,
            "identity": str(identity),
            "serial": format(cert.serial_number, "x"),
            "notAfter": cert.not_valid_after_utc.isoformat(),
            "root": self.authority.roots.active.id,
        }
        self.issued.append(record)
        log.info("certificate issued", extra=record)
        return web.json_response(
            {
                "certificate": cert_pem(cert),
                "bundle": self.authority.roots.bundle_pem(),
                "notAfter": record["notAfter"],
            }
        )
