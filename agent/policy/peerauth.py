"""Which mTLS mode applies to a workload (pure).

The most specific PeerAuthentication wins, as in Istio: one whose selector
matches the pod, then the namespace-wide one, then the mesh-wide one (in the
root namespace). UNSET defers to the next level; no policy at all means
PERMISSIVE. STRICT refuses plaintext (inbound, and outbound to destinations
outside the mesh); PERMISSIVE and DISABLE accept it.

A PeerAuthentication that did not validate never opens plaintext: its last good
version keeps deciding, and without one its stand-in makes every workload in its
scope STRICT, whatever the others say (see state.objects.refused_version).
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.state import Snapshot
from agent.state.objects import PeerAuthentication, Pod, selects

STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"
ROOT_NAMESPACE = "slipstream-system"


def plaintext_refusal(namespace: str) -> str:
    """Why plaintext to a STRICT workload is refused (the agents and `policy check` say it)."""
    return f"plaintext refused: {namespace} requires mTLS (PeerAuthentication STRICT)"


def _policies(snap: Snapshot) -> list[PeerAuthentication]:
    return [p for p in snap.of_kind("PeerAuthentication") if isinstance(p, PeerAuthentication)]


def mode_for(
    snap: Snapshot, pod: Pod | None, namespace: str, root_namespace: str = ROOT_NAMESPACE
) -> str:
    policies = sorted(_policies(snap), key=lambda p: (p.meta.namespace, p.meta.name))
    labels = pod.meta.labels if pod else {}
    for p in policies:
        if p.fail_closed and _covers(p, namespace, labels, root_namespace):
            return STRICT
    levels = [
        [
            p
            for p in policies
            if p.meta.namespace == namespace
            and p.selector
            and all(labels.get(k) == v for k, v in p.selector.items())
        ],
        [p for p in policies if p.meta.namespace == namespace and not p.selector],
        [p for p in policies if p.meta.namespace == root_namespace and not p.selector],
    ]
    for level in levels:
        for p in level:
            if p.mode != "UNSET":
                return STRICT if p.mode == STRICT else PERMISSIVE
    return PERMISSIVE


def _covers(p: PeerAuthentication, namespace: str, labels: Mapping[str, str], root: str) -> bool:
    """Is a workload of `namespace` with `labels` in a refused policy's scope? ("" is a
    namespace that could not be read: everywhere.)"""
    ns = p.meta.namespace
    if ns and ns not in (namespace, root):
        return False
    return p.selector is None or selects(p.selector, labels)
