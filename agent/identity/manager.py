"""The agent's workload certificates: one per service account with an enrolled pod on this node.

Keys are generated here (ECDSA P-256) and never leave the process: only the
CSR goes to the CA, and TLS contexts load keys through memory files. A
certificate is fetched before the first connection needs it, renewed at half
its life, retried with backoff when the CA fails, and kept in use while it is
valid. Each renewal makes a new key. The trust bundle comes with every
signing and is refreshed periodically; a changed bundle rebuilds the contexts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.common.errors import SlipstreamError

from . import tls
from .caclient import CAClient, CARefused, CAUnavailable
from .certs import IdentityError, SpiffeId, generate_key, load_certs, make_csr

log = logging.getLogger("agent.identity")

RETRY_START = 1.0
RETRY_MAX = 60.0


class NoCertificate(SlipstreamError):
    """No valid certificate for an identity (yet): the CA has not signed one."""


@dataclass
class WorkloadCert:
    identity: SpiffeId
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    server_ctx: ssl.SSLContext
    client_ctx: ssl.SSLContext
    not_after: float
    renew_at: float


@dataclass
class _State:
    current: WorkloadCert | None = None
    retry_at: float = 0.0
    backoff: float = RETRY_START
    last_error: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class CertManager:
    def __init__(
        self,
        client: CAClient,
        bundle_pem: str,
        *,
        ttl: dt.timedelta,
        wanted: Callable[[], set[SpiffeId]],
        bundle_refresh: float = 60.0,
        renew_fraction: float = 0.5,
    ) -> None:
        self.client = client
        self.bundle_pem = bundle_pem
        self.ttl = ttl
        self._wanted = wanted
        self.bundle_refresh = bundle_refresh
        self.renew_fraction = renew_fraction
        self._states: dict[SpiffeId, _State] = {}
        self._wake = asyncio.Event()
        self._next_bundle = 0.0

    # ------------------------------------------------------------ for the proxies

    def wake(self) -> None:
        """The wanted set may have changed (the store changed)."""
        self._wake.set()

    def current(self, identity: SpiffeId) -> WorkloadCert | None:
        st = self._states.get(identity)
        if st and st.current and st.current.not_after > time.time():
            return st.current
        return None

    async def get(self, identity: SpiffeId, timeout: float = 10.0) -> WorkloadCert:
        """The identity's certificate, waiting for the first one if needed."""
        cert = self.current(identity)
        if cert is not None:
            return cert
        st = self._states.setdefault(identity, _State())
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(st.ready.wait(), timeout)
        cert = self.current(identity)
        if cert is None:
            why = st.last_error or "the CA has not answered yet"
            raise NoCertificate(f"no certificate for {identity}: {why}")
        return cert

    def client_context(self, identity: SpiffeId) -> ssl.SSLContext:
        cert = self.current(identity)
        if cert is None:
            raise NoCertificate(f"no certificate for {identity}")
        return cert.client_ctx

    def status(self) -> list[dict[str, Any]]:
        out = []
        for ident, st in sorted(self._states.items()):
            c = st.current
            out.append(
                {
                    "identity": str(ident),
                    "state": "valid" if self.current(ident) else ("expired" if c else "pending"),
                    "serial": format(c.cert.serial_number, "x") if c else None,
                    "notAfter": dt.datetime.fromtimestamp(c.not_after, dt.UTC).isoformat()
                    if c
                    else None,
                    "renewAt": dt.datetime.fromtimestamp(c.renew_at, dt.UTC).isoformat()
                    if c
                    else None,
                    "lastError": st.last_error,
                }
            )
        return out

    # ------------------------------------------------------------ component

    async def run(self, drain: asyncio.Event) -> None:
        while not drain.is_set():
            # Cleared before the work, so a wake-up during a fetch is not lost.
            self._wake.clear()
            now = time.time()
            wanted = self._wanted()
            for ident in wanted:
                self._states.setdefault(ident, _State())
            for ident in [i for i in self._states if i not in wanted and self._states[i].current]:
                del self._states[ident]  # no pod needs it any more; its key goes with it
            due = [i for i, st in self._states.items() if self._due(st, now)]
            await asyncio.gather(*(self._fetch(i) for i in due))
            if now >= self._next_bundle:
                await self._refresh_bundle()
            await self._sleep(drain)

    def _due(self, st: _State, now: float) -> bool:
        if now < st.retry_at:
            return False
        return st.current is None or now >= st.current.renew_at

    async def _sleep(self, drain: asyncio.Event) -> None:
        now = time.time()
        times = [self._next_bundle]
        for st in self._states.values():
            times.append(
                st.retry_at
                if st.retry_at > now
                else (st.current.renew_at if st.current else now + 1)
            )
        timeout = max(0.05, min(times) - now)
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(drain.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _fetch(self, identity: SpiffeId) -> None:
        st = self._states[identity]
        key = generate_key()
        try:
            cert_pem, bundle_pem = await self.client.sign(
                identity, make_csr(key, identity), self.ttl.total_seconds(), self.bundle_pem
            )
            if bundle_pem and bundle_pem != self.bundle_pem:
                self._set_bundle(bundle_pem)
            cert = load_certs(cert_pem)[0]
            st.current = self._build(identity, key, cert)
        except (CAUnavailable, CARefused, IdentityError) as exc:
            st.last_error = str(exc)
            # A CA that says when to come back (429 Retry-After) is obeyed, never asked sooner.
            wait = max(st.backoff, exc.retry_after if isinstance(exc, CARefused) else 0.0)
            st.retry_at = time.time() + wait
            st.backoff = min(st.backoff * 2, RETRY_MAX)
            valid = self.current(identity) is not None
            log.warning(
                "certificate request failed" + ("; the current one stays in use" if valid else ""),
                extra={
                    "identity": str(identity),
                    "error": str(exc),
                    "retry_in_s": st.retry_at - time.time(),
                },
            )
            return
        st.last_error, st.backoff, st.retry_at = "", RETRY_START, 0.0
        st.ready.set()
        log.info(
            "certificate issued",
            extra={
                "identity": str(identity),
                "serial": format(cert.serial_number, "x"),
                "not_after": cert.not_valid_after_utc.isoformat(),
            },
        )

    def _build(
        self, identity: SpiffeId, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> WorkloadCert:
        nb, na = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        return WorkloadCert(
            identity,
            key,
            cert,
            server_ctx=tls.server_context([cert], key, self.bundle_pem, alpn=[tls.ALPN_H2]),
            client_ctx=tls.client_context(self.bundle_pem, [cert], key, alpn=[tls.ALPN_H2]),
            not_after=na,
            renew_at=nb + (na - nb) * self.renew_fraction,
        )

    async def _refresh_bundle(self) -> None:
        self._next_bundle = time.time() + self.bundle_refresh
        try:
            bundle = await self.client.bundle(self.bundle_pem)
        except (CAUnavailable, CARefused) as exc:
            log.warning(
                "trust bundle refresh failed; keeping the current one", extra={"error": str(exc)}
            )
            return
        if bundle and bundle != self.bundle_pem:
            self._set_bundle(bundle)

    def _set_bundle(self, bundle_pem: str) -> None:
        try:
            roots = load_certs(bundle_pem)
        except IdentityError as exc:
            log.error(
                "the CA sent an unusable bundle; keeping the current one", extra={"error": str(exc)}
            )
            return
        self.bundle_pem = bundle_pem
        for st in self._states.values():
            if st.current:
                c = st.current
                st.current = self._build(c.identity, c.key, c.cert)
        log.info("trust bundle updated", extra={"roots": len(roots)})
