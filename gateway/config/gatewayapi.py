"""What the gateway reads from the cluster: Gateway API objects, Services and their pods.

`--source file:DIR` is the same directory of manifests the agents and the CA
watch (the lab writes it); `--source kube` reads the same kinds from the
Kubernetes API (agent/sources/kube.py: Gateways, HTTPRoutes, Services,
EndpointSlices, Namespaces and every pod, since any may be a backend). From it
the master:

- turns each `HTTPRoute` attached to a `Gateway` of class `slipstream` into
  routes of the gateway's own model (the YAML file's routes keep precedence
  by order; Gateway API precedence applies across all of them), and each
  Service backendRef into a backend;
- resolves every backend naming a Service (from HTTPRoutes or the YAML file's
  `service:`) into its endpoints: the ready pods the Service selects, at the
  target port. A pod of an enrolled namespace gets its SPIFFE ID, so the
  gateway reaches it over HBONE (mesh.py) when it has a mesh identity.

A bad HTTPRoute is left out, with the reason in `/config` (`gatewayApi`), like
a route whose `Accepted` condition is False; the rest keeps serving.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from agent.common.errors import FieldError, SlipstreamError
from agent.identity.certs import SpiffeId
from agent.sources.file import FileSource
from agent.sources.flags import parse_source
from agent.sources.kube import ENDPOINT_SLICES, NAMESPACES, SERVICES, KindSpec, KubeSource, pods
from agent.sources.kubeclient import KubeClient
from agent.state import StateStore, StateUpdater
from agent.state.enrollment import decide
from agent.state.objects import Pod, Resource
from agent.state.store import Snapshot

from ..errors import ConfigError
from .model import parse_config

log = logging.getLogger("gateway.gatewayapi")

GATEWAY_CLASS = "slipstream"
GATEWAY_API = "gateway.networking.k8s.io/"
ROUTE_FIELDS = ("matches", "filters", "timeouts")


GATEWAY_KINDS = [
    NAMESPACES,
    pods(),
    SERVICES,
    ENDPOINT_SLICES,
    KindSpec("Gateway", "gateway.networking.k8s.io", "v1", "gateways"),
    KindSpec("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes"),
]
"""What the gateway reads with --source kube."""


class ClusterSource:
    def __init__(
        self, spec: str, trust_domain: str, mesh: bool, kubeconfig: str | None = None
    ) -> None:
        try:
            kind, directory = parse_source(spec)
        except SlipstreamError as exc:
            raise ConfigError(str(exc)) from exc
        self.trust_domain = trust_domain
        self.mesh = mesh
        """Whether enrolled endpoints get identities (the gateway has a mesh identity)."""
        self.store = StateStore()
        self.kubeconfig = kubeconfig
        self.source: FileSource | KubeSource | None = (
            FileSource(directory, StateUpdater(self.store)) if kind == "file" else None
        )
        self._drain = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._merged = -1
        self.problems: list[str] = []

    async def start(self) -> None:
        if self.source is None:
            client = await KubeClient.open(self.kubeconfig, user_agent="slipstream-gateway")
            self.source = KubeSource(client, StateUpdater(self.store), GATEWAY_KINDS)
        self._task = asyncio.ensure_future(self.source.run(self._drain))
        while not self.store.synced:
            if self._task.done():
                self._task.result()  # the directory is unreadable: say so
            await asyncio.sleep(0.05)

    def changed(self) -> bool:
        return self.store.snapshot.version != self._merged

    def status(self) -> dict[str, Any]:
        return {
            "source": self.source.status() if self.source else {},
            "problems": self.problems,
        }

    def merge(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The YAML file's config plus the cluster's routes, with Services resolved."""
        snap = self.store.snapshot
        self._merged = snap.version
        out = copy.deepcopy(raw)
        problems: list[str] = []
        for route, backends in self._routes(snap, problems):
            candidate = copy.deepcopy(out)
            candidate.setdefault("routes", []).append(route)
            known = {b.get("name") for b in out.get("backends", []) if isinstance(b, dict)}
            candidate.setdefault("backends", []).extend(
                b for b in backends if b["name"] not in known
            )
            try:
                parse_config(self.resolve(snap, candidate))
            except FieldError as exc:
                problems.append(f"{route['name']}: {exc}")
                continue
            out = candidate
        self.problems = problems
        for p in problems:
            log.warning("HTTPRoute left out", extra={"problem": p})
        return self.resolve(snap, out)

    # ------------------------------------------------------------ HTTPRoute → routes

    def _routes(
        self, snap: Snapshot, problems: list[str]
    ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        gateways = {
            (g.meta.namespace, g.meta.name)
            for g in snap.of_kind("Gateway")
            if g.api_version.startswith(GATEWAY_API)
            and (g.raw.get("spec") or {}).get("gatewayClassName") == GATEWAY_CLASS
        }
        found = []
        for hr in snap.of_kind("HTTPRoute"):
            if not hr.api_version.startswith(GATEWAY_API):
                continue
            spec = hr.raw.get("spec") or {}
            ns = hr.meta.namespace
            parents = spec.get("parentRefs") or []
            if not any(
                isinstance(p, dict) and (p.get("namespace") or ns, p.get("name")) in gateways
                for p in parents
            ):
                continue
            rules = spec.get("rules") or [{}]
            if not isinstance(rules, list):
                problems.append(f"HTTPRoute {ns}/{hr.meta.name}: spec.rules must be a list")
                continue
            for i, rule in enumerate(rules):
                found.append(self._route(hr, ns, spec, i, rule if isinstance(rule, dict) else {}))
        return found

    def _route(
        self, hr: Resource, ns: str, spec: dict[str, Any], i: int, rule: dict[str, Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        route: dict[str, Any] = {"name": f"httproute.{ns}.{hr.meta.name}.{i}"}
        if spec.get("hostnames"):
            route["hostnames"] = spec["hostnames"]
        for key in ROUTE_FIELDS:
            if key in rule:
                route[key] = rule[key]
        refs, backends = [], []
        for ref in rule.get("backendRefs") or []:
            if not isinstance(ref, dict):
                continue
            if ref.get("kind", "Service") != "Service" or ref.get("group", "") != "":
                continue  # only core Services are backends here
            svc_ns, name, port = ref.get("namespace") or ns, ref.get("name"), ref.get("port")
            bname = f"service.{svc_ns}.{name}.{port}"
            refs.append({"name": bname, "weight": ref.get("weight", 1)})
            backends.append(
                {"name": bname, "service": {"namespace": svc_ns, "name": name, "port": port}}
            )
        if refs:
            route["backendRefs"] = refs
        return route, backends

    # ------------------------------------------------------------ Services → endpoints

    def resolve(self, snap: Snapshot, raw: dict[str, Any]) -> dict[str, Any]:
        out = dict(raw)
        backends = []
        for b in raw.get("backends") or []:
            svc = b.get("service") if isinstance(b, dict) else None
            if isinstance(svc, dict):
                b = {**b, "endpoints": self._endpoints(snap, svc)}
            backends.append(b)
        out["backends"] = backends
        return out

    def _endpoints(self, snap: Snapshot, ref: dict[str, Any]) -> list[dict[str, Any]]:
        ns, name, port = ref.get("namespace") or "default", ref.get("name"), ref.get("port")
        svc = next(
            (s for s in snap.services() if s.meta.namespace == ns and s.meta.name == name), None
        )
        if svc is None:
            return []
        binding = snap.find_service(svc.cluster_ip, port) if isinstance(port, int) else None
        if binding is None:
            return []
        out = []
        for ep in binding.endpoints:
            entry: dict[str, Any] = {"url": f"http://{ep.ip}:{ep.port}"}
            if self.mesh and self._enrolled(snap, ep.pod):
                entry["identity"] = str(
                    SpiffeId(self.trust_domain, ep.pod.meta.namespace, ep.pod.service_account)
                )
            out.append(entry)
        return out

    @staticmethod
    def _enrolled(snap: Snapshot, pod: Pod) -> bool:
        return decide(pod, snap.namespace(pod.meta.namespace)).enroll

    def close(self) -> None:
        self._drain.set()
        if self._task is not None:
            self._task.cancel()


def uses_services(raw: dict[str, Any]) -> bool:
    return any(isinstance(b, dict) and "service" in b for b in raw.get("backends") or [])
