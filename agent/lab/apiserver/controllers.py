"""What kube-controller-manager would do, run by the server after each write.

- EndpointSlices (and the legacy Endpoints) follow Services' selectors and
  their pods' addresses and readiness: one slice per Service, labelled
  `kubernetes.io/service-name`, owned by the Service; each endpoint carries
  its address, `conditions.ready/serving/terminating`, `targetRef` and
  `nodeName`. A pod change touches only its own entry in the slices of the
  Services that select it; a Service change recomputes its slice.
  Deliberate difference: the real controller splits slices at 100 endpoints
  and by port mapping; one slice per Service is what our readers need.
- Every new Namespace gets its `default` ServiceAccount.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .store import Event, Store

SLICES = "endpointslices.discovery.k8s.io"
MANAGED_BY = "endpointslice-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"


def _selects(selector: Any, pod: dict[str, Any] | None) -> bool:
    if not isinstance(selector, dict) or not selector or pod is None:
        return False
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _ready(pod: dict[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def _endpoint(pod: dict[str, Any]) -> dict[str, Any] | None:
    st = pod.get("status") or {}
    ip = st.get("podIP")
    if not ip or st.get("phase") in ("Succeeded", "Failed"):
        return None
    meta = pod["metadata"]
    deleting = bool(meta.get("deletionTimestamp"))
    ready = _ready(pod) and not deleting
    ep: dict[str, Any] = {
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": _ready(pod), "terminating": deleting},
        "targetRef": {
            "kind": "Pod",
            "namespace": meta.get("namespace", ""),
            "name": meta["name"],
            "uid": meta.get("uid", ""),
        },
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        ep["nodeName"] = node
    return ep


def _ports(svc: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in (svc.get("spec") or {}).get("ports") or []:
        if not isinstance(p, dict):
            continue
        target = p.get("targetPort", p.get("port"))
        if isinstance(target, str) and not target.isdigit():
            resolved = None
            for pod in pods:
                for c in (pod.get("spec") or {}).get("containers") or []:
                    for cp in (c or {}).get("ports") or []:
                        if isinstance(cp, dict) and cp.get("name") == target:
                            resolved = cp.get("containerPort")
                if resolved is not None:
                    break
            if resolved is None:
                continue
            target = resolved
        entry: dict[str, Any] = {"port": int(str(target)), "protocol": p.get("protocol", "TCP")}
        entry["name"] = p.get("name", "")
        if p.get("appProtocol"):
            entry["appProtocol"] = p["appProtocol"]
        out.append(entry)
    return out


def slice_name(svc: dict[str, Any]) -> str:
    meta = svc["metadata"]
    suffix = hashlib.sha256(str(meta.get("uid", meta["name"])).encode()).hexdigest()[:5]
    return f"{meta['name'][:57]}-{suffix}"


class EndpointsController:
    """Collects what changed during a request; `sync` then writes the slices it implies."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.services: set[tuple[str, str]] = set()
        self.pods: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
        self.namespaces: set[str] = set()
        self._index: dict[str, dict[tuple[str, str], list[str]]] = {}
        """namespace -> (label, value) of a selector -> Services whose selector has it."""

    def _selecting(self, ns: str, pod: dict[str, Any] | None) -> list[str]:
        """Services of `ns` that may select `pod` (each has one of its labels in its selector)."""
        if pod is None:
            return []
        index = self._index.get(ns)
        if index is None:
            index = {}
            for svc in self.store.items("services", ns):
                sel = (svc.get("spec") or {}).get("selector")
                if isinstance(sel, dict):
                    for k, v in sel.items():
                        index.setdefault((k, v), []).append(svc["metadata"]["name"])
            self._index[ns] = index
        labels = (pod.get("metadata") or {}).get("labels") or {}
        out: list[str] = []
        for k, v in labels.items():
            out += index.get((k, v), [])
        return out

    def observe(self, ev: Event) -> None:
        if ev.key == "services":
            m = ev.obj["metadata"]
            self.services.add((m.get("namespace", ""), m["name"]))
            self._index.pop(m.get("namespace", ""), None)
        elif ev.key == "pods":
            self.pods.append((ev.prev, None if ev.type == "DELETED" else ev.obj))
        elif ev.key == "namespaces" and ev.type == "ADDED":
            self.namespaces.add(ev.obj["metadata"]["name"])

    def sync(self, now: str, new_uid: Any) -> None:
        # Loop: the writes below are events too, but only slices and endpoints, never observed.
        for ns in sorted(self.namespaces):
            if self.store.get("namespaces", "", ns) and not self.store.get(
                "serviceaccounts", ns, "default"
            ):
                self.store.commit(
                    "ADDED",
                    "serviceaccounts",
                    {
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "metadata": {
                            "name": "default",
                            "namespace": ns,
                            "uid": new_uid(),
                            "creationTimestamp": now,
                        },
                    },
                )
        self.namespaces.clear()
        for ns, name in sorted(self.services):
            self._reconcile(ns, name, now)
        touched = self.services
        self.services = set()
        pods, self.pods = self.pods, []
        for old, new in pods:
            ref = new or old
            assert ref is not None
            ns = ref["metadata"].get("namespace", "")
            for name in sorted(set(self._selecting(ns, old) + self._selecting(ns, new))):
                key = (ns, name)
                svc = self.store.get("services", ns, name)
                if key in touched or svc is None:
                    continue
                sel = (svc.get("spec") or {}).get("selector")
                if _selects(sel, old) or _selects(sel, new):
                    self._update_pod(svc, ref, new if _selects(sel, new) else None, now)

    def _reconcile(self, ns: str, name: str, now: str) -> None:
        svc = self.store.get("services", ns, name)
        if svc is None or not (svc.get("spec") or {}).get("selector"):
            self._delete_owned(ns, name)
            return
        sel = svc["spec"]["selector"]
        pods = [p for p in self.store.items("pods", ns) if _selects(sel, p)]
        endpoints = [e for e in (_endpoint(p) for p in pods) if e is not None]
        self._write(svc, endpoints, _ports(svc, pods), now)

    def _update_pod(
        self, svc: dict[str, Any], ref: dict[str, Any], pod: dict[str, Any] | None, now: str
    ) -> None:
        current = self._current_slice(svc)
        uid = ref["metadata"].get("uid")
        endpoints = [
            e
            for e in (current or {}).get("endpoints") or []
            if (e.get("targetRef") or {}).get("uid") != uid
        ]
        ep = _endpoint(pod) if pod is not None else None
        if ep is not None:
            endpoints.append(ep)
        ports = (current or {}).get("ports")
        if not ports or (
            pod is not None and len(ports) < len((svc.get("spec") or {}).get("ports") or [])
        ):
            ports = _ports(svc, [pod] if pod is not None else [])
        self._write(svc, endpoints, ports, now)

    def _current_slice(self, svc: dict[str, Any]) -> dict[str, Any] | None:
        return self.store.get(SLICES, svc["metadata"].get("namespace", ""), slice_name(svc))

    def _write(
        self,
        svc: dict[str, Any],
        endpoints: list[dict[str, Any]],
        ports: list[dict[str, Any]],
        now: str,
    ) -> None:
        meta = svc["metadata"]
        ns = meta.get("namespace", "")
        endpoints.sort(key=lambda e: (e.get("targetRef") or {}).get("name", ""))
        owner = {
            "apiVersion": "v1",
            "kind": "Service",
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "controller": True,
            "blockOwnerDeletion": True,
        }
        current = self._current_slice(svc)
        desired: dict[str, Any] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name(svc),
                "generateName": f"{meta['name']}-",
                "namespace": ns,
                "labels": {
                    SERVICE_NAME: meta["name"],
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
                "ownerReferences": [owner],
                "uid": (current or {}).get("metadata", {}).get("uid")
                or f"{meta.get('uid', '')}-slice",
                "creationTimestamp": (current or {}).get("metadata", {}).get("creationTimestamp")
                or now,
                "generation": 1,
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }
        if current is None or (
            current.get("endpoints"),
            current.get("ports"),
            current["metadata"].get("labels"),
        ) != (endpoints, ports, desired["metadata"]["labels"]):
            if current is not None:
                desired["metadata"]["generation"] = (
                    int(current["metadata"].get("generation", 1)) + 1
                )
            self.store.commit("MODIFIED" if current else "ADDED", SLICES, desired)
        self._write_endpoints(svc, endpoints, ports, owner, now)

    def _write_endpoints(
        self,
        svc: dict[str, Any],
        endpoints: list[dict[str, Any]],
        ports: list[dict[str, Any]],
        owner: dict[str, Any],
        now: str,
    ) -> None:
        meta = svc["metadata"]
        ns = meta.get("namespace", "")
        ready = [e for e in endpoints if e["conditions"]["ready"]]
        not_ready = [e for e in endpoints if not e["conditions"]["ready"]]

        def addr(e: dict[str, Any]) -> dict[str, Any]:
            a: dict[str, Any] = {"ip": e["addresses"][0], "targetRef": e["targetRef"]}
            if e.get("nodeName"):
                a["nodeName"] = e["nodeName"]
            return a

        subsets = []
        if endpoints and ports:
            subset: dict[str, Any] = {
                "ports": [{k: v for k, v in p.items() if k != "appProtocol" or v} for p in ports]
            }
            if ready:
                subset["addresses"] = [addr(e) for e in ready]
            if not_ready:
                subset["notReadyAddresses"] = [addr(e) for e in not_ready]
            subsets.append(subset)
        current = self.store.get("endpoints", ns, meta["name"])
        if current is not None and current.get("subsets", []) == subsets:
            return
        self.store.commit(
            "MODIFIED" if current else "ADDED",
            "endpoints",
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {
                    "name": meta["name"],
                    "namespace": ns,
                    "labels": dict(meta.get("labels") or {}),
                    "uid": (current or {}).get("metadata", {}).get("uid")
                    or f"{meta.get('uid', '')}-ep",
                    "creationTimestamp": (current or {})
                    .get("metadata", {})
                    .get("creationTimestamp")
                    or now,
                },
                "subsets": subsets,
            },
        )

    def _delete_owned(self, ns: str, name: str) -> None:
        for obj in list(self.store.items(SLICES, ns)):
            labels = obj["metadata"].get("labels") or {}
            if (
                labels.get(SERVICE_NAME) == name
                and labels.get("endpointslice.kubernetes.io/managed-by") == MANAGED_BY
            ):
                self.store.commit("DELETED", SLICES, dict(obj, metadata=dict(obj["metadata"])))
        ep = self.store.get("endpoints", ns, name)
        # Only the Endpoints this controller made (a selector-less Service's are its owner's).
        if (
            ep is not None
            and ep["metadata"].get("uid", "").endswith("-ep")
            and not self.store.get("services", ns, name)
        ):
            self.store.commit("DELETED", "endpoints", dict(ep, metadata=dict(ep["metadata"])))
