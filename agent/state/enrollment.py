"""Which pods the mesh captures, and the state the agent reports for each (pure).

A pod is enrolled when its namespace (or the pod itself) is labelled
`slipstream.dev/dataplane-mode: ambient`, unless the pod says `none`.
The lab uses the same rule to hold a pod's start until its agent has enrolled it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .objects import Namespace, Pod
from .store import TERMINATED_PHASES

LABEL_DATAPLANE = "slipstream.dev/dataplane-mode"
ANNOTATION_NETNS = "slipstream.dev/netns"
"""Set by the lab (the lab's stand-in for the CNI plugin): the pod's network namespace."""

CAPTURE_CAPABILITIES = ("NET_ADMIN", "SYS_ADMIN", "ALL")
"""Capabilities that let a container remove or bypass capture in its own network namespace:
NET_ADMIN changes tc filters, routes and rules; SYS_ADMIN reaches the programs' links and
maps; ALL holds both."""

ENROLLED = "enrolled"
PENDING = "pending"
FAILED = "failed"
NOT_ENROLLED = "not-enrolled"


@dataclass(frozen=True)
class EnrollmentDecision:
    enroll: bool
    reason: str


def decide(pod: Pod, namespace: Namespace | None) -> EnrollmentDecision:
    pod_mode = pod.meta.labels.get(LABEL_DATAPLANE)
    if pod_mode == "none":
        return EnrollmentDecision(False, f"pod opted out ({LABEL_DATAPLANE}: none)")
    if pod.phase in TERMINATED_PHASES:
        return EnrollmentDecision(False, f"pod is {pod.phase}")
    if pod.spec.host_network:
        # As Istio: the node's own namespace is not a pod's to capture.
        return EnrollmentDecision(False, "pod uses the node's network (hostNetwork)")
    if pod_mode == "ambient":
        return EnrollmentDecision(True, f"pod labelled {LABEL_DATAPLANE}: ambient")
    if namespace is not None and namespace.meta.labels.get(LABEL_DATAPLANE) == "ambient":
        return EnrollmentDecision(True, f"namespace labelled {LABEL_DATAPLANE}: ambient")
    return EnrollmentDecision(False, "namespace is not in the mesh")


def capture_warning(pod: Pod) -> str:
    """Why capture cannot bind this pod, as Istio's in-pod rules cannot bind such a pod:
    empty when no container is privileged or adds a capability in CAPTURE_CAPABILITIES."""
    holders = []
    for c in pod.containers:
        held = (["privileged"] if c.privileged else []) + [
            a for a in c.capabilities_add if a in CAPTURE_CAPABILITIES
        ]
        if held:
            holders.append(f"{c.name} ({', '.join(held)})")
    if not holders:
        return ""
    return (
        f"container {', '.join(holders)} can remove or bypass capture in the pod's own "
        "network namespace: the mesh does not bind this pod's own traffic"
    )


@dataclass
class WorkloadStatus:
    """What /config_dump says of one pod on this node."""

    namespace: str
    name: str
    ip: str
    state: str
    reason: str
    netns: str = ""
    since: float = 0.0
    connections: int = 0
    warning: str = ""
    """capture_warning: a container of the pod can remove or bypass capture."""
