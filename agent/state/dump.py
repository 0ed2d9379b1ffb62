"""The store as JSON, for the admin `/config_dump` endpoint and `slipstream status`."""

from __future__ import annotations

from typing import Any

from .authz import AuthorizationPolicy
from .objects import PeerAuthentication, Pod, Resource, Service
from .store import Snapshot


def pod_json(pod: Pod) -> dict[str, Any]:
    return {
        "namespace": pod.meta.namespace,
        "name": pod.meta.name,
        "ip": pod.ip,
        "node": pod.node_name,
        "serviceAccount": pod.service_account,
        "phase": pod.phase,
        "labels": dict(pod.meta.labels),
        "annotations": dict(pod.meta.annotations),
    }


def service_json(svc: Service, snap: Snapshot) -> dict[str, Any]:
    ports = []
    for sp in svc.ports:
        binding = snap.find_service(svc.cluster_ip, sp.port)
        ports.append(
            {
                "name": sp.name,
                "port": sp.port,
                "targetPort": sp.target_port,
                "protocol": sp.protocol,
                "endpoints": [f"{e.ip}:{e.port}" for e in binding.endpoints] if binding else [],
            }
        )
    return {
        "namespace": svc.meta.namespace,
        "name": svc.meta.name,
        "clusterIP": svc.cluster_ip,
        "labels": dict(svc.meta.labels),
        "annotations": dict(svc.meta.annotations),
        "ports": ports,
    }


def endpoints_objects(snap: Snapshot) -> list[dict[str, Any]]:
    """Kubernetes `Endpoints` for every Service with a cluster IP, one subset per port."""
    out = []
    for svc in snap.services():
        subsets = []
        for sp in svc.ports:
            binding = snap.find_service(svc.cluster_ip, sp.port)
            if binding is None or not binding.endpoints:
                continue
            addresses = [
                {
                    "ip": e.ip,
                    "nodeName": e.pod.node_name,
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": e.pod.meta.namespace,
                        "name": e.pod.meta.name,
                    },
                }
                for e in binding.endpoints
            ]
            port = binding.endpoints[0].port
            subsets.append(
                {
                    "addresses": addresses,
                    "ports": [{"name": sp.name, "port": port, "protocol": sp.protocol}],
                }
            )
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": svc.meta.name, "namespace": svc.meta.namespace},
                "subsets": subsets,
            }
        )
    return out


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    typed = {"Namespace", "Pod", "Service"}
    return {
        "version": snap.version,
        "namespaces": [
            {
                "name": ns.meta.name,
                "labels": dict(ns.meta.labels),
                "annotations": dict(ns.meta.annotations),
            }
            for ns in snap.of_kind("Namespace")
        ],
        "pods": [pod_json(p) for p in snap.pods()],
        "services": [service_json(s, snap) for s in snap.services()],
        "objects": [
            object_json(o)
            for kind, objs in sorted(snap.by_kind.items())
            if kind not in typed
            for o in objs
        ],
    }


def object_json(o: Resource) -> dict[str, Any]:
    """An object's identity, and for a policy whose newest version was refused, why and
    what enforces instead (what the Kubernetes source will write to its status)."""
    out: dict[str, Any] = {
        "kind": o.kind,
        "apiVersion": o.api_version,
        "namespace": o.meta.namespace,
        "name": o.meta.name,
    }
    if isinstance(o, AuthorizationPolicy | PeerAuthentication) and o.refused is not None:
        out["refused"] = {
            "field": o.refused.field,
            "reason": o.refused.reason,
            "source": o.refused.where,
            "enforcing": "fail-closed stand-in" if o.fail_closed else "last good version",
        }
    return out
