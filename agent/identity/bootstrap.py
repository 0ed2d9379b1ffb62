"""Joining the mesh from flags: the trust bundle, the credential and the CA, wired up.

Every process that holds a mesh identity starts the same way: the node agent
(one identity per service account with a pod on its node), the gateway (its own
one) and, later, the waypoint. `CaAccess` is what they are told (`--ca`,
`--ca-root`, `--ca-token-file`, `--trust-domain`); `cert_manager` reads the
bundle and opens the credential (both checked now, so a bad flag fails at start
with the file named), points a CA client at the CA's own SPIFFE ID, and returns
the CertManager that keeps the process's certificates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from agent.common.constants import DEFAULT_TRUST_DOMAIN
from agent.common.errors import SlipstreamError
from agent.common.units import parse_address

from .caclient import CAClient, TokenFile
from .certs import IdentityError, SpiffeId, ca_identity, load_certs
from .manager import CertManager


@dataclass(frozen=True)
class CaAccess:
    """How a process reaches the mesh CA and proves who it is."""

    ca: str
    """HOST:PORT of the CA (`slipstream ca serve`)."""
    ca_root: str
    """PEM file with the first trust bundle (the CA's roots); later ones come from the CA."""
    ca_token_file: str
    """The process's own credential, re-read when it changes (it rotates without a restart)."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def bundle(self) -> str:
        """The trust bundle, checked to be PEM certificates."""
        try:
            with open(self.ca_root) as f:
                bundle = f.read()
        except OSError as exc:
            raise SlipstreamError(f"cannot read {self.ca_root}: {exc.strerror}") from exc
        try:
            load_certs(bundle)
        except IdentityError as exc:
            raise IdentityError(f"{self.ca_root}: {exc}") from exc
        return bundle

    def client(self) -> CAClient:
        """A client of the CA, which must present the CA's own SPIFFE ID."""
        return CAClient(
            parse_address(self.ca, "127.0.0.1"),
            TokenFile(self.ca_token_file),
            ca_identity(self.trust_domain),
        )

    def check(self) -> None:
        """Everything `cert_manager` reads, read now: a bad flag fails at start, named."""
        self.bundle()
        self.client()

    def cert_manager(
        self,
        *,
        ttl: dt.timedelta,
        wanted: Callable[[], set[SpiffeId]],
        bundle_refresh: float = 60.0,
    ) -> CertManager:
        """The certificates of the identities `wanted()` names, kept signed and renewed."""
        return CertManager(
            self.client(), self.bundle(), ttl=ttl, wanted=wanted, bundle_refresh=bundle_refresh
        )
