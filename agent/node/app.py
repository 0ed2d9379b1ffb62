"""The node agent process: builds its components and runs them until SIGTERM.

This is the composition root; each component lives in its own module and
meets the others only through the state store and the shared MeshContext.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.common.constants import DEFAULT_TRUST_DOMAIN
from agent.common.errors import SlipstreamError
from agent.common.runtime import Component, run_main, serve
from agent.hbone.limits import HboneGuard, Limits
from agent.identity.bootstrap import CaAccess
from agent.identity.certs import SpiffeId
from agent.identity.manager import CertManager
from agent.policy.peerauth import ROOT_NAMESPACE
from agent.sources.file import FileSource
from agent.sources.flags import parse_source
from agent.sources.kube import KubeSource, agent_kinds
from agent.sources.kubeclient import KubeClient
from agent.state import Snapshot, StateStore, StateUpdater
from agent.state.dump import snapshot_json
from agent.state.enrollment import decide

from .admin import AdminServer
from .capture import EbpfCapture, IptablesCapture
from .cni import CniPods, CniServer
from .datapath.loader import Programs
from .enroller import Capture, Enroller
from .proxy.context import MeshContext
from .writeback import CaptureWriter

log = logging.getLogger("agent")

CAPTURE_MODES = ("ebpf", "iptables")


@dataclass
class AgentConfig:
    node: str
    source: str
    """`file:DIR`, or `kube` (the Kubernetes API: `kubeconfig`, else in-cluster)."""
    kubeconfig: str | None = None
    kube_all_pods: bool = False
    """Reflect every pod, not only this node's (see agent/sources/kube.py `agent_kinds`)."""
    admin_addr: tuple[str, int] = ("127.0.0.1", 15000)
    ready_addr: tuple[str, int] = ("0.0.0.0", 15021)
    state_dir: str = "/run/slipstream/agent"
    """Where the agent remembers what it changed in pods, across restarts."""
    netns_dir: str = "/run/netns"
    cni_socket: str = ""
    """Where slipstream-cni reports new pod sandboxes (agent/node/cni.py); empty: no
    endpoint (the lab, which is its own CNI, annotates pods instead)."""
    capture: str = "ebpf"
    cleanup: bool = False
    """On exit, remove capture from every pod (otherwise enrolled pods fail closed)."""
    ca: str | None = None
    """host:port of the CA. Without it there are no identities and no HBONE."""
    ca_root: str | None = None
    """PEM file with the first trust bundle (the CA's roots); later ones come from the CA."""
    ca_token_file: str | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = ROOT_NAMESPACE
    """Policies in this namespace apply mesh-wide."""
    cert_ttl: dt.timedelta = dt.timedelta(hours=24)
    bundle_refresh: float = 60.0
    drain_deadline: float = 10.0
    hbone_limits: Limits = field(default_factory=Limits)
    """What one HBONE peer may hold or make this agent do (hbone/limits.py)."""


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = StateStore()
        self.updater = StateUpdater(self.store)
        kind, arg = parse_source(config.source)
        if config.capture not in CAPTURE_MODES:
            raise SlipstreamError(
                f"--capture {config.capture!r}: expected one of {', '.join(CAPTURE_MODES)}"
            )
        self.source: FileSource | KubeSource | None = None
        if kind == "file":
            if not os.path.isdir(arg):
                raise SlipstreamError(f"manifest directory {arg} does not exist")
            self.source = FileSource(arg, self.updater)
        self.admin = AdminServer(
            self.config_dump,
            self.ready,
            admin_addr=config.admin_addr,
            ready_addr=config.ready_addr,
            detail=self._source_detail,
            drain=self.drain,
        )
        self.mesh = MeshContext(
            config.node,
            lambda: self.store.snapshot,
            trust_domain=config.trust_domain,
            root_namespace=config.root_namespace,
            hbone=HboneGuard(config.hbone_limits),
        )
        self._checked_generation = 0
        self.store.subscribe(self._recheck_policy)
        self.certs = self._cert_manager()
        self.mesh.certs = self.certs
        self.programs: Any = None
        self.enroller: Enroller | None = None
        self.cni = CniPods() if config.cni_socket else None
        self.draining = False
        """Set by the preStop drain (`drain`); a stopping agent drains on SIGTERM anyway."""

    def _cert_manager(self) -> CertManager | None:
        c = self.config
        if not c.ca:
            return None
        if not c.ca_root or not c.ca_token_file:
            raise SlipstreamError(
                "--ca needs --ca-root (the trust bundle) and --ca-token-file (this node's token)"
            )
        certs = CaAccess(c.ca, c.ca_root, c.ca_token_file, c.trust_domain).cert_manager(
            ttl=c.cert_ttl, wanted=self._wanted_identities, bundle_refresh=c.bundle_refresh
        )
        self.store.subscribe(lambda old, new: certs.wake())
        return certs

    def _wanted_identities(self) -> set[SpiffeId]:
        """One identity per service account with an enrolled pod on this node."""
        snap = self.store.snapshot
        return {
            self.mesh.identity(p)
            for p in snap.pods_on_node(self.config.node)
            if p.ip and decide(p, snap.namespace(p.meta.namespace)).enroll
        }

    def _capture(self) -> Capture:
        if self.config.capture == "iptables":
            return IptablesCapture(self.mesh)
        self.programs = Programs()
        return EbpfCapture(self.programs, self.mesh)

    def _recheck_policy(self, old: Snapshot, new: Snapshot) -> None:
        """After a change to policy or to this node's pods, close what is now denied."""
        authz = self.mesh.authz
        authz.refresh(new)
        node = self.config.node
        if authz.generation == self._checked_generation and old.pods_on_node(
            node
        ) == new.pods_on_node(node):
            return
        self._checked_generation = authz.generation
        if self.enroller is not None:
            for proxy in self.enroller.proxies():
                proxy.recheck()

    async def _open_source(self) -> FileSource | KubeSource:
        if self.source is None:
            client = await KubeClient.open(self.config.kubeconfig, user_agent="slipstream-agent")
            kinds = agent_kinds(self.config.node, all_pods=self.config.kube_all_pods)
            self.source = KubeSource(client, self.updater, kinds)
        return self.source

    def _source_detail(self) -> str:
        if self.draining:
            return "draining: the agent is being stopped"
        return self.source.readiness() if isinstance(self.source, KubeSource) else ""

    def drain(self, start: bool) -> dict[str, Any]:
        """The preStop drain (`slipstream drain`): from now on unready, and a new pod's
        CNI ADD is refused (it waits for the next agent, never starts uncaptured); the
        pods enrolled keep their capture and connections. Says how many are still open."""
        if start and not self.draining:
            self.draining = True
            log.info("drain started: new pods wait for the next agent")
        proxies = self.enroller.proxies() if self.enroller is not None else []
        return {"draining": self.draining, "connections": sum(p.connections for p in proxies)}

    def ready(self) -> bool:
        return (
            not self.draining
            and self.store.synced
            and self.enroller is not None
            and self.enroller.reconciled_version >= self.store.synced_version
        )

    def config_dump(self) -> dict[str, Any]:
        snap = self.store.snapshot
        return {
            "node": self.config.node,
            "ready": self.ready(),
            "capture": self.config.capture,
            "trustDomain": self.config.trust_domain,
            "sources": [self.source.status()] if self.source else [],
            "workloads": [asdict(w) for w in self.enroller.workloads()] if self.enroller else [],
            "cniSandboxes": self.cni.status() if self.cni is not None else [],
            "certificates": self.certs.status() if self.certs else [],
            "hbone": self.mesh.pool.status(),
            "hboneLimits": self.mesh.hbone.status(),
            "ejectedEndpoints": self.mesh.balancer.status(time.monotonic()),
            "authorizationPolicies": self.mesh.authz.status(snap),
            "datapath": {"counters": self.programs.counters()} if self.programs else {},
            **snapshot_json(snap),
        }

    def components(self) -> dict[str, Component]:
        assert self.enroller is not None and self.source is not None
        parts: dict[str, Component] = {
            "source": self.source,
            "admin": self.admin,
            "enroller": self.enroller,
            "hbone-pool": self.mesh.pool,
        }
        if self.certs is not None:
            parts["certificates"] = self.certs
        if self.cni is not None:
            parts["cni"] = CniServer(
                self.config.cni_socket, self.cni, self.enroller, draining=lambda: self.draining
            )
        if isinstance(self.source, KubeSource):
            enroller = self.enroller
            parts["capture-writeback"] = CaptureWriter(
                self.config.node, self.store, self.source.client, enroller.workloads
            )
        return parts

    async def run(self) -> None:
        log.info(
            "agent starting",
            extra={
                "node": self.config.node,
                "source": self.config.source,
                "capture": self.config.capture,
                "ca": self.config.ca,
            },
        )
        await self._open_source()
        capture = await asyncio.to_thread(self._capture)
        self.enroller = Enroller(
            self.config.node,
            self.store,
            capture,
            state_dir=self.config.state_dir,
            netns_dir=self.config.netns_dir,
            cleanup=self.config.cleanup,
            cni=self.cni,
        )
        await serve(self.components(), deadline=self.config.drain_deadline)
        log.info("agent stopped", extra={"node": self.config.node})


def main(config: AgentConfig) -> None:
    run_main(Agent(config).run())
