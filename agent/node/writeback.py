"""Capture state written back to the API: each pod of this node says whether it is captured.

With `--source kube`, the agent keeps annotation `slipstream.dev/capture` of every pod
on its node at `enrolled`, `pending` or `failed` (removed when the pod is not in the
mesh) with a JSON merge patch, and records why in an Event on the pod when the state
changes, so `kubectl get pod -o yaml` and `kubectl describe pod` tell a user what the
agent did. An annotation rather than a label: nothing selects on it, and labels are
the user's.

`plan` is sans-IO: the patches and events wanted, from the store's pods and the
enroller's statuses. It only ever names pods whose spec.nodeName is this node (the
API server's RBAC will enforce the same later; the agent must never try others),
whatever else the store holds (`--kube-pods all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.sources.kubeclient import KubeClient, KubeError
from agent.state import Pod, StateStore
from agent.state.enrollment import ENROLLED, FAILED, PENDING, WorkloadStatus
from agent.state.objects import ObjectKey

log = logging.getLogger("agent.writeback")

ANNOTATION_CAPTURE = "slipstream.dev/capture"
REPORTED = (ENROLLED, PENDING, FAILED)
EVENT_REASONS = {ENROLLED: "CaptureEnrolled", PENDING: "CapturePending", FAILED: "CaptureFailed"}


@dataclass(frozen=True)
class Write:
    pod: Pod
    state: str
    """One of REPORTED, or "" to remove the annotation."""
    reason: str
    event: bool
    """The state changed from what we last reported: say why in an Event."""


def plan(
    node: str,
    pods: Iterable[Pod],
    statuses: Iterable[WorkloadStatus],
    reported: dict[ObjectKey, tuple[str, str]],
) -> list[Write]:
    """The writes that make every pod of `node` show its state. `reported` is what we last
    wrote (state, reason) per pod, for deciding when an Event is due."""
    by_key = {ObjectKey("Pod", s.namespace, s.name): s for s in statuses}
    out = []
    for pod in pods:
        if pod.node_name != node:
            continue  # never another node's pod
        status = by_key.get(pod.key)
        if status is None:
            continue  # the enroller has not looked at it yet
        state = status.state if status.state in REPORTED else ""
        shown = pod.meta.annotations.get(ANNOTATION_CAPTURE, "")
        last = reported.get(pod.key)
        if last is not None and last[0] == state:
            continue  # written; the store shows it once the watch brings the pod back
        if shown != state or state:
            out.append(Write(pod, state, status.reason, event=bool(state)))
    return out


class CaptureWriter:
    """Runs `plan` after each change and sends what it asks for."""

    def __init__(
        self,
        node: str,
        store: StateStore,
        client: KubeClient,
        statuses: Callable[[], list[WorkloadStatus]],
        interval: float = 0.2,
    ) -> None:
        self.node = node
        self.store = store
        self.client = client
        self.statuses = statuses
        self.interval = interval
        self.reported: dict[ObjectKey, tuple[str, str]] = {}
        self.failed: dict[ObjectKey, str] = {}

    async def write(self, w: Write) -> None:
        pod = w.pod
        assert pod.node_name == self.node  # plan() guarantees it; never patch another's
        path = f"/api/v1/namespaces/{pod.meta.namespace}/pods/{pod.meta.name}"
        patch = {"metadata": {"annotations": {ANNOTATION_CAPTURE: w.state or None}}}
        await self.client.call(
            "PATCH", path, body=patch, content_type="application/merge-patch+json", timeout=10
        )
        if w.event:
            await self.client.call(
                "POST",
                f"/api/v1/namespaces/{pod.meta.namespace}/events",
                body=self._event(w),
                timeout=10,
            )
        self.reported[pod.key] = (w.state, w.reason)

    def _event(self, w: Write) -> dict[str, Any]:
        pod = w.pod
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        uid = pod.raw.get("metadata", {}).get("uid", "")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{pod.meta.name}.", "namespace": pod.meta.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": pod.meta.namespace,
                "name": pod.meta.name,
                **({"uid": uid} if uid else {}),
            },
            "reason": EVENT_REASONS[w.state],
            "message": w.reason or w.state,
            "type": "Warning" if w.state == FAILED else "Normal",
            "source": {"component": "slipstream-agent", "host": self.node},
            "reportingComponent": "slipstream-agent",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    async def sync(self) -> None:
        snap = self.store.snapshot
        live = {p.key for p in snap.pods_on_node(self.node)}
        for key in [k for k in self.reported if k not in live]:
            del self.reported[key]
        for w in plan(self.node, snap.pods_on_node(self.node), self.statuses(), self.reported):
            try:
                await self.write(w)
                self.failed.pop(w.pod.key, None)
            except KubeError as exc:
                if self.failed.get(w.pod.key) != str(exc):
                    log.warning(
                        "cannot write a pod's capture state; will retry",
                        extra={"pod": str(w.pod.key), "error": str(exc)},
                    )
                self.failed[w.pod.key] = str(exc)

    async def run(self, drain: asyncio.Event) -> None:
        while not drain.is_set():
            if self.store.synced:
                try:
                    await self.sync()
                except Exception:  # the write-back must never stop the agent (or its drain)
                    log.exception("capture write-back failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain.wait(), self.interval)
