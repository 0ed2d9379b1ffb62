"""What every pod's proxy shares on a node: the store, identities, the HBONE pool and limits,
the balancer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.common.constants import DEFAULT_TRUST_DOMAIN
from agent.hbone.client import HbonePool
from agent.hbone.limits import HboneGuard
from agent.identity.certs import SpiffeId
from agent.identity.manager import CertManager
from agent.policy.authz import Authorizer
from agent.policy.peerauth import ROOT_NAMESPACE
from agent.state import Snapshot
from agent.state.objects import Pod

from ..balancer import Balancer


@dataclass
class MeshContext:
    node: str
    snapshot: Callable[[], Snapshot]
    certs: CertManager | None = None
    """None when the agent runs without a CA: captured traffic is relayed in plaintext."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = ROOT_NAMESPACE
    pool: HbonePool = field(default_factory=HbonePool)
    hbone: HboneGuard = field(default_factory=HboneGuard)
    """HBONE limits, what each peer identity holds on this node, and what triggered."""
    balancer: Balancer = field(default_factory=Balancer)
    authz: Authorizer = field(init=False)
    connect_timeout: float = 5.0
    max_attempts: int = 3
    """Endpoints of a Service tried for one connection before giving up."""

    def __post_init__(self) -> None:
        self.authz = Authorizer(self.root_namespace)

    def identity(self, pod: Pod) -> SpiffeId:
        return SpiffeId(self.trust_domain, pod.meta.namespace, pod.service_account)
