"""The gateway as a mesh workload: its own SPIFFE identity, HBONE to enrolled Services.

The master holds the settings (`MeshSettings`, from flags or the lab's
environment) and hands them to each worker; every worker joins the mesh as the
agent does (agent/identity/bootstrap.py) and asks the mesh CA for
its own certificate of the gateway's identity (a fresh key per worker, never
written anywhere) with the gateway's own workload credential, which gets that
one identity and nothing else, and keeps it renewed. The credential file is
re-read whenever it changes, so it rotates without a restart. A backend
endpoint that carries a SPIFFE ID is reached over HBONE: an mTLS HTTP/2
connection to the endpoint pod's :15008, checked to present that ID, with one
CONNECT stream per upstream HTTP connection. No agent runs on
the gateway's side; the destination's agent sees the gateway's principal, so
an AuthorizationPolicy can name it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from agent.common.constants import DEFAULT_TRUST_DOMAIN, HBONE_PORT
from agent.common.errors import SlipstreamError
from agent.hbone import client as hbone
from agent.hbone.protocol import TunnelError, connect_headers
from agent.hbone.stream import StreamTransport
from agent.identity.bootstrap import CaAccess
from agent.identity.certs import IdentityError, SpiffeId
from agent.identity.manager import CertManager, NoCertificate

from .errors import GatewayError
from .http.errors import UpstreamError
from .http.upstream import UpstreamEndpoint

log = logging.getLogger("gateway.mesh")

CERT_TTL = dt.timedelta(hours=24)


@dataclass(frozen=True)
class MeshSettings:
    """How the gateway joins the mesh; `identity` is its own SPIFFE ID."""

    ca: str
    ca_root: str
    """PEM trust bundle to start with."""
    ca_token_file: str
    """The gateway's own credential (its service account's), never a node's."""
    identity: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    @property
    def ca_access(self) -> CaAccess:
        return CaAccess(self.ca, self.ca_root, self.ca_token_file, self.trust_domain)

    def check(self) -> None:
        """Fail at start, naming what is wrong, rather than in a worker later."""
        try:
            ident = SpiffeId.parse(self.identity)
        except IdentityError as exc:
            raise GatewayError(f"mesh identity: {exc}") from exc
        try:
            self.ca_access.check()
        except SlipstreamError as exc:
            raise GatewayError(f"mesh: {exc}") from exc
        if ident.trust_domain != self.trust_domain:
            raise GatewayError(
                f"identity {self.identity} is not in trust domain {self.trust_domain}"
            )

    def for_workers(self) -> dict[str, Any]:
        return asdict(self)


class MeshDial:
    """A worker's way into the mesh: its certificate, its HBONE connections."""

    def __init__(self) -> None:
        self.settings: MeshSettings | None = None
        self.identity: SpiffeId | None = None
        self.certs: CertManager | None = None
        self.pool = hbone.HbonePool()
        self._task: asyncio.Task[None] | None = None
        self._drain = asyncio.Event()
        self._ports = itertools.cycle(range(20000, 60000))
        self._sources: dict[str, str] = {}

    def update(self, raw: dict[str, Any]) -> None:
        settings = MeshSettings(**raw)
        if settings == self.settings:
            return
        if self._task is not None:
            self._drain.set()
            self._task.cancel()
        self.settings = settings
        self.identity = SpiffeId.parse(settings.identity)
        identity = self.identity
        self.certs = settings.ca_access.cert_manager(ttl=CERT_TTL, wanted=lambda: {identity})
        self._drain = asyncio.Event()
        self._task = asyncio.ensure_future(self.certs.run(self._drain))

    async def dial(
        self, endpoint: UpstreamEndpoint, factory: Callable[[], asyncio.Protocol]
    ) -> Any:
        """Open an HBONE stream to `endpoint` and run `factory()`'s protocol over it."""
        if self.certs is None or self.identity is None or endpoint.identity is None:
            raise UpstreamError("connect", f"{endpoint}: the gateway has no mesh identity")
        try:
            cert = await self.certs.get(self.identity, timeout=5.0)
        except NoCertificate as exc:
            raise UpstreamError("connect", str(exc)) from exc
        target = (endpoint.host, HBONE_PORT)
        key = hbone.PoolKey("", str(self.identity), endpoint.identity, target)
        expected = endpoint.identity

        async def connect() -> hbone.HboneClientConnection:
            return await hbone.connect(
                lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
                target,
                cert.client_ctx,
                expected,
                key,
                mark=None,
            )

        headers = connect_headers(
            (endpoint.host, endpoint.port), (self._source(endpoint.host), next(self._ports))
        )
        try:
            stream = await self.pool.stream(key, headers, connect)
        except TunnelError as exc:
            raise UpstreamError("connect", f"{endpoint} over HBONE: {exc.reason}") from exc
        protocol = factory()
        StreamTransport(stream, protocol)
        return protocol

    def _source(self, host: str) -> str:
        """The gateway's own address towards `host` (what the destination's app will see)."""
        src = self._sources.get(host)
        if src is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host, HBONE_PORT))  # no packet: this only asks the routing table
                src = self._sources[host] = s.getsockname()[0]
        return src

    def close(self) -> None:
        self._drain.set()
        if self._task is not None:
            self._task.cancel()
