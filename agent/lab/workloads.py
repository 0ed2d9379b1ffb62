"""What kube-controller-manager does for DaemonSets, Deployments and ReplicaSets, and its
garbage collector for what they own, decided from the objects (sans-IO): the lab's
kubelet process reads the API, asks `plan` and carries the plan out through the API, as
the real controller manager is a client of the API server.

- A DaemonSet runs one pod per node (`spec.nodeName` set, as the lab has no node affinity
  or taints), labelled `controller-revision-hash` with a hash of its template. A pod of an
  older template is replaced one node at a time while fewer than `maxUnavailable`
  (default 1) nodes lack a ready pod (RollingUpdate), all at once with OnDelete: never.
- A Deployment owns one ReplicaSet per template (`<name>-<hash>`, label
  `pod-template-hash`): the current one is scaled to `spec.replicas`, older ones to 0
  once the current one's pods are ready (RollingUpdate) or at once (Recreate).
- A ReplicaSet creates or deletes pods (`generateName: <rs>-`) to have `spec.replicas`.
- Pods, ReplicaSets whose controller is gone are deleted (background cascading deletion).
- Each controller's status: what `kubectl get`, `kubectl rollout status` and `kubectl wait`
  read (observedGeneration, counts of scheduled, ready, updated and available pods).

Deliberate difference: a pod the lab's kubelet could not run (phase Failed, reason
LabCannotRun: what the lab cannot do, or a command that is not there) still counts as the
controller's pod, so it is reported rather than replaced in a loop.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

APPS = "apps/v1"
REVISION_HASH = "controller-revision-hash"
TEMPLATE_HASH = "pod-template-hash"
CANNOT_RUN = "LabCannotRun"

Body = dict[str, Any]


@dataclass
class Plan:
    create: list[Body] = field(default_factory=list)
    """Objects to create (Pods and ReplicaSets), whole."""
    delete: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(apiVersion, kind, namespace, name)."""
    scale: list[tuple[str, str, int]] = field(default_factory=list)
    """ReplicaSets' new spec.replicas: (namespace, name, replicas)."""
    status: list[tuple[str, str, str, Body]] = field(default_factory=list)
    """(kind, namespace, name, status) for DaemonSets, Deployments and ReplicaSets."""


def template_hash(template: Any) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("namespace") or "default")


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def controller_uid(obj: Mapping[str, Any]) -> str:
    for ref in _meta(obj).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return str(ref.get("uid", ""))
    return ""


def owner_ref(owner: Mapping[str, Any]) -> Body:
    return {
        "apiVersion": owner.get("apiVersion", APPS),
        "kind": owner["kind"],
        "name": _meta(owner)["name"],
        "uid": _meta(owner).get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def ready(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _active(pod: Mapping[str, Any]) -> bool:
    """Counts as the controller's pod (see the module docstring for the Failed exception)."""
    status = pod.get("status") or {}
    if _deleting(pod) or status.get("phase") == "Succeeded":
        return False
    return status.get("phase") != "Failed" or status.get("reason") == CANNOT_RUN


def _pod_from(owner: Mapping[str, Any], template: Mapping[str, Any], labels: Body) -> Body:
    tmeta = template.get("metadata") or {}
    meta: Body = {
        "generateName": f"{_meta(owner)['name']}-",
        "namespace": namespace_of(owner),
        "labels": {**(tmeta.get("labels") or {}), **labels},
        "ownerReferences": [owner_ref(owner)],
    }
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": copy.deepcopy(template.get("spec") or {}),
    }


def _max_unavailable(obj: Mapping[str, Any], total: int) -> int:
    strategy = (obj.get("spec") or {}).get("updateStrategy") or {}
    value = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1)
    if isinstance(value, str) and value.endswith("%"):
        return max(1, total * int(value[:-1]) // 100)
    return max(1, int(value))


def _daemonset(ds: Body, nodes: list[str], owned: list[Body], plan: Plan) -> None:
    spec = ds.get("spec") or {}
    template = spec.get("template") or {}
    want = template_hash(template)
    on_delete = (spec.get("updateStrategy") or {}).get("type") == "OnDelete"
    by_node: dict[str, list[Body]] = {}
    for p in owned:
        by_node.setdefault(str((p.get("spec") or {}).get("nodeName", "")), []).append(p)
    for node, pods in by_node.items():
        if node not in nodes:
            plan.delete += [("v1", "Pod", namespace_of(p), _meta(p)["name"]) for p in pods]
    unavailable = sum(
        1 for n in nodes if not any(ready(p) and _active(p) for p in by_node.get(n, []))
    )
    budget = _max_unavailable(ds, len(nodes)) - unavailable
    for node in nodes:
        pods = [p for p in by_node.get(node, []) if _active(p)]
        if not pods:
            if not any(_deleting(p) for p in by_node.get(node, [])):
                pod = _pod_from(ds, template, {REVISION_HASH: want})
                pod["spec"]["nodeName"] = node
                plan.create.append(pod)
            continue
        keep, *extra = sorted(pods, key=lambda p: (not ready(p), _meta(p).get("name", "")))
        plan.delete += [("v1", "Pod", namespace_of(p), _meta(p)["name"]) for p in extra]
        outdated = (_meta(keep).get("labels") or {}).get(REVISION_HASH) != want
        if outdated and not on_delete and (budget > 0 or not ready(keep)):
            plan.delete.append(("v1", "Pod", namespace_of(keep), _meta(keep)["name"]))
            budget -= 1 if ready(keep) else 0
    current = [p for p in owned if _active(p)]
    updated = [p for p in current if (_meta(p).get("labels") or {}).get(REVISION_HASH) == want]
    n_ready = sum(1 for p in current if ready(p))
    plan.status.append(
        ("DaemonSet", namespace_of(ds), _meta(ds)["name"], {
            "desiredNumberScheduled": len(nodes),
            "currentNumberScheduled": len({(p.get("spec") or {}).get("nodeName") for p in current}),
            "numberMisscheduled": 0,
            "numberReady": n_ready,
            "numberAvailable": n_ready,
            "numberUnavailable": max(0, len(nodes) - n_ready),
            "updatedNumberScheduled": len(updated),
            "observedGeneration": _meta(ds).get("generation", 1),
        })
    )  # fmt: skip


def _replicas(obj: Mapping[str, Any]) -> int:
    value = (obj.get("spec") or {}).get("replicas", 1)
    return int(value) if isinstance(value, int) else 1


def _replicaset(rs: Body, owned: list[Body], plan: Plan) -> None:
    spec = rs.get("spec") or {}
    want = _replicas(rs)
    pods = [p for p in owned if _active(p)]
    template = spec.get("template") or {}
    for _ in range(want - len(pods)):
        plan.create.append(_pod_from(rs, template, {}))
    if len(pods) > want:
        doomed = sorted(pods, key=lambda p: (ready(p), _meta(p).get("name", "")))
        plan.delete += [
            ("v1", "Pod", namespace_of(p), _meta(p)["name"]) for p in doomed[: len(pods) - want]
        ]
    n_ready = sum(1 for p in pods if ready(p))
    plan.status.append(
        ("ReplicaSet", namespace_of(rs), _meta(rs)["name"], {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(pods),
            "readyReplicas": n_ready,
            "availableReplicas": n_ready,
            "observedGeneration": _meta(rs).get("generation", 1),
        })
    )  # fmt: skip


def _deployment(
    dep: Body, owned_rs: list[Body], pods_of_rs: dict[str, list[Body]], plan: Plan
) -> None:
    spec = dep.get("spec") or {}

    def pods_of(rs_name: str) -> list[Body]:
        return pods_of_rs.get(f"{namespace_of(dep)}/{rs_name}", [])

    template = copy.deepcopy(spec.get("template") or {})
    h = template_hash(template)
    name = f"{_meta(dep)['name']}-{h}"
    want = _replicas(dep)
    tlabels = (template.setdefault("metadata", {})).setdefault("labels", {})
    tlabels[TEMPLATE_HASH] = h
    current = next((rs for rs in owned_rs if _meta(rs)["name"] == name), None)
    if current is None:
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[TEMPLATE_HASH] = h
        plan.create.append({
            "apiVersion": APPS,
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": namespace_of(dep),
                "labels": dict(tlabels),
                "ownerReferences": [owner_ref(dep)],
            },
            "spec": {"replicas": want, "selector": selector, "template": template},
        })  # fmt: skip
    elif _replicas(current) != want:
        plan.scale.append((namespace_of(dep), name, want))
    new_pods = [p for p in pods_of(name) if _active(p)]
    new_ready = sum(1 for p in new_pods if ready(p))
    recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
    old_pods = old_ready = 0
    for rs in owned_rs:
        if _meta(rs)["name"] == name:
            continue
        alive = [p for p in pods_of(_meta(rs)["name"]) if _active(p)]
        old_pods += len(alive)
        old_ready += sum(1 for p in alive if ready(p))
        if _replicas(rs) != 0 and (recreate or new_ready >= want):
            plan.scale.append((namespace_of(rs), _meta(rs)["name"], 0))
    total = len(new_pods) + old_pods
    available = new_ready + old_ready
    done = new_ready >= want and old_pods == 0
    plan.status.append(
        ("Deployment", namespace_of(dep), _meta(dep)["name"], {
            "observedGeneration": _meta(dep).get("generation", 1),
            "replicas": total,
            "updatedReplicas": len(new_pods),
            "readyReplicas": available,
            "availableReplicas": available,
            "unavailableReplicas": max(0, want - available),
            "conditions": [
                {"type": "Available", "status": "True" if available >= want else "False",
                 "reason": "MinimumReplicasAvailable" if available >= want
                 else "MinimumReplicasUnavailable"},
                {"type": "Progressing", "status": "True",
                 "reason": "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                 "message": f'ReplicaSet "{name}" '
                 + ("has successfully progressed." if done else "is progressing.")},
            ],
        })
    )  # fmt: skip


def plan(
    daemonsets: Iterable[Body],
    deployments: Iterable[Body],
    replicasets: Iterable[Body],
    pods: Iterable[Body],
    nodes: Iterable[str],
) -> Plan:
    """What the controllers would do now, given every object of these kinds."""
    out = Plan()
    node_names = sorted(nodes)
    pods = list(pods)
    by_owner: dict[str, list[Body]] = {}
    for p in pods:
        uid = controller_uid(p)
        if uid:
            by_owner.setdefault(uid, []).append(p)
    live_ds = [d for d in daemonsets if not _deleting(d)]
    live_dep = [d for d in deployments if not _deleting(d)]
    rs_all = list(replicasets)
    dep_uids = {_meta(d).get("uid") for d in live_dep}
    live_rs = [r for r in rs_all if not _deleting(r) and controller_uid(r) in dep_uids | {""}]
    for rs in rs_all:
        if controller_uid(rs) and controller_uid(rs) not in dep_uids and not _deleting(rs):
            out.delete.append((APPS, "ReplicaSet", namespace_of(rs), _meta(rs)["name"]))
    owners = {_meta(o).get("uid") for o in (*live_ds, *live_rs)}
    for p in pods:
        uid = controller_uid(p)
        ref: Mapping[str, Any] = next(iter(_meta(p).get("ownerReferences") or []), {})
        if uid and uid not in owners and not _deleting(p) and ref.get("apiVersion") == APPS:
            out.delete.append(("v1", "Pod", namespace_of(p), _meta(p)["name"]))
    for ds in live_ds:
        _daemonset(ds, node_names, by_owner.get(_meta(ds).get("uid", ""), []), out)
    pods_of_rs: dict[str, list[Body]] = {}
    for rs in live_rs:
        pods_of_rs[f"{namespace_of(rs)}/{_meta(rs)['name']}"] = owned = by_owner.get(
            _meta(rs).get("uid", ""), []
        )
        _replicaset(rs, owned, out)
    for dep in live_dep:
        dep_uid = _meta(dep).get("uid")
        owned_rs = [
            r
            for r in live_rs
            if controller_uid(r) == dep_uid and namespace_of(r) == namespace_of(dep)
        ]
        _deployment(dep, owned_rs, pods_of_rs, out)
    return out
