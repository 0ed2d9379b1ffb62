"""The agent's in-memory view of the cluster: one writer, many readers.

Control-plane sources (file, kube) call `StateUpdater.apply`; everything else
reads `StateStore.snapshot`, an immutable `Snapshot` with indexes by pod IP,
by node and by service address. A new snapshot replaces the old one in a
single assignment, so a reader never sees half an update and never locks.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .endpointslice import EndpointSlice
from .objects import Namespace, ObjectKey, Pod, Resource, Service, ServicePort, selects

TERMINATED_PHASES = {"Succeeded", "Failed"}


@dataclass(frozen=True)
class ServiceEndpoint:
    pod: Pod
    ip: str
    port: int


@dataclass(frozen=True)
class ServiceBinding:
    """One port of a Service, with the endpoints that serve it."""

    service: Service
    port: ServicePort
    endpoints: tuple[ServiceEndpoint, ...]


@dataclass(frozen=True)
class Snapshot:
    version: int
    objects: Mapping[ObjectKey, Resource]
    pods_by_ip: Mapping[str, Pod] = field(default_factory=dict)
    pods_by_node: Mapping[str, tuple[Pod, ...]] = field(default_factory=dict)
    services_by_addr: Mapping[tuple[str, int], ServiceBinding] = field(default_factory=dict)
    by_kind: Mapping[str, tuple[Resource, ...]] = field(default_factory=dict)

    # ---- readers --------------------------------------------------------
    def get(self, key: ObjectKey) -> Resource | None:
        return self.objects.get(key)

    def of_kind(self, kind: str) -> tuple[Resource, ...]:
        return self.by_kind.get(kind, ())

    def namespace(self, name: str) -> Namespace | None:
        ns = self.objects.get(ObjectKey("Namespace", "", name))
        return ns if isinstance(ns, Namespace) else None

    def pods(self) -> tuple[Pod, ...]:
        return self.of_kind("Pod")  # type: ignore[return-value]

    def services(self) -> tuple[Service, ...]:
        return self.of_kind("Service")  # type: ignore[return-value]

    def find_pod(self, ip: str) -> Pod | None:
        return self.pods_by_ip.get(ip)

    def pods_on_node(self, node: str) -> tuple[Pod, ...]:
        return self.pods_by_node.get(node, ())

    def find_service(self, ip: str, port: int) -> ServiceBinding | None:
        return self.services_by_addr.get((ip, port))

    # ---- building ---------------------------------------------------------
    @classmethod
    def build(cls, version: int, objects: Mapping[ObjectKey, Resource]) -> Snapshot:
        by_kind: dict[str, list[Resource]] = {}
        for key in sorted(objects):
            by_kind.setdefault(key.kind, []).append(objects[key])
        pods: list[Pod] = [p for p in by_kind.get("Pod", []) if isinstance(p, Pod)]
        pods_by_ip: dict[str, Pod] = {}
        pods_by_node: dict[str, list[Pod]] = {}
        pods_by_ns: dict[str, list[Pod]] = {}
        for pod in pods:
            if pod.phase in TERMINATED_PHASES:
                continue
            if pod.ip:
                pods_by_ip[pod.ip] = pod
            if pod.node_name:
                pods_by_node.setdefault(pod.node_name, []).append(pod)
            pods_by_ns.setdefault(pod.meta.namespace, []).append(pod)
        slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        for es in by_kind.get("EndpointSlice", []):
            if isinstance(es, EndpointSlice) and es.service:
                slices.setdefault((es.meta.namespace, es.service), []).append(es)
        services_by_addr: dict[tuple[str, int], ServiceBinding] = {}
        for svc in by_kind.get("Service", []):
            if not isinstance(svc, Service) or not svc.cluster_ip or svc.cluster_ip == "None":
                continue
            own = slices.get((svc.meta.namespace, svc.meta.name))
            if own is not None:
                for sp in svc.ports:
                    if sp.protocol == "TCP":
                        eps = _slice_endpoints(own, sp, objects)
                        services_by_addr[(svc.cluster_ip, sp.port)] = ServiceBinding(svc, sp, eps)
                continue
            candidates = [
                p
                for p in pods_by_ns.get(svc.meta.namespace, ())
                if p.ip and selects(svc.selector, p.meta.labels)
            ]
            for sp in svc.ports:
                if sp.protocol != "TCP":
                    continue
                eps = tuple(
                    ServiceEndpoint(p, p.ip, port)
                    for p in candidates
                    if (port := _target_port(p, sp)) is not None
                )
                services_by_addr[(svc.cluster_ip, sp.port)] = ServiceBinding(svc, sp, eps)
        return cls(
            version=version,
            objects=dict(objects),
            pods_by_ip=pods_by_ip,
            pods_by_node={n: tuple(ps) for n, ps in pods_by_node.items()},
            services_by_addr=services_by_addr,
            by_kind={k: tuple(v) for k, v in by_kind.items()},
        )


def _slice_endpoints(
    slices: list[EndpointSlice], sp: ServicePort, objects: Mapping[ObjectKey, Resource]
) -> tuple[ServiceEndpoint, ...]:
    """The ready IPv4 endpoints of `sp` in a Service's slices. A slice port matches by
    name (a Service's ports are named when there are several). An endpoint whose pod the
    store does not hold (another node's, for an agent that watches only its own) is left
    out: its service account, hence the identity to demand of it, is unknown, and a guess
    ("default") would let any pod at that address pass as it."""
    out: list[ServiceEndpoint] = []
    for es in slices:
        if es.body.address_type != "IPv4":
            continue
        port = next(
            (p.port for p in es.body.ports if p.name == sp.name and p.protocol == sp.protocol),
            None,
        )
        if port is None:
            continue
        for ep in es.body.endpoints:
            if not ep.ready:
                continue
            key = es.pod_key(ep)
            known = objects.get(key) if key is not None else None
            for ip in ep.addresses[:1]:
                if isinstance(known, Pod) and known.ip == ip:
                    out.append(ServiceEndpoint(known, ip, port))
    return tuple(out)


def _target_port(pod: Pod, sp: ServicePort) -> int | None:
    if isinstance(sp.target_port, int):
        return sp.target_port
    return pod.named_port(sp.target_port)


Listener = Callable[[Snapshot, Snapshot], None]


class StateStore:
    """The read side. Readers take `store.snapshot` and keep it for one decision."""

    def __init__(self) -> None:
        self.snapshot = Snapshot.build(0, {})
        self._listeners: list[Listener] = []
        self._waiters: list[asyncio.Future[None]] = []
        self.synced = False
        """True once every source has delivered its first full view."""
        self.synced_version = 0

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(old, new)` after every change, in the writer's context."""
        self._listeners.append(listener)

    async def wait_for_version(self, version: int) -> Snapshot:
        """Return the first snapshot newer than `version`."""
        while self.snapshot.version <= version:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
        return self.snapshot

    def _publish(self, new: Snapshot) -> None:
        old, self.snapshot = self.snapshot, new
        for listener in self._listeners:
            listener(old, new)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.get_loop().call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class StateUpdater:
    """The single writer. Sources hand it whole objects and deletions."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._objects: dict[ObjectKey, Resource] = dict(store.snapshot.objects)
        self._versions = itertools.count(store.snapshot.version + 1)

    def apply(
        self, upserts: Iterable[Resource] = (), deletes: Iterable[ObjectKey] = ()
    ) -> Snapshot:
        """Apply one batch of changes and publish one new snapshot."""
        for key in deletes:
            self._objects.pop(key, None)
        for obj in upserts:
            self._objects[obj.key] = obj
        snap = Snapshot.build(next(self._versions), self._objects)
        self._store._publish(snap)
        return snap

    def mark_synced(self) -> None:
        self._store.synced = True
        self._store.synced_version = self._store.snapshot.version
