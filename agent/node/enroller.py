"""Enrolling this node's pods: keeps each pod's capture and listeners in line with the store.

For every pod on the node the rule in enrollment.py says yes to: install
capture in its namespace (datapath.pod) and open its listeners (proxy.pod).
For every pod it says no to, or that is gone: close its listeners (resetting
its connections) and remove capture. A failure leaves the pod `failed` with
the reason and is retried with backoff; no input stops the loop.

On SIGTERM the listeners close but capture stays installed, so an enrolled
pod's traffic fails (never bypasses the mesh) until the agent is back; with
`cleanup` the agent removes capture from every pod before it exits. A
restarted agent re-adopts its pods: attach replaces, it never adds twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from agent.common import netns
from agent.common.errors import SlipstreamError
from agent.state import Pod, StateStore
from agent.state.enrollment import (
    ANNOTATION_NETNS,
    ENROLLED,
    FAILED,
    NOT_ENROLLED,
    PENDING,
    WorkloadStatus,
    capture_warning,
    decide,
)
from agent.state.objects import ObjectKey

from . import procscan
from .capture import Binding
from .cni import CniPods
from .proxy.pod import PodProxy, PodRef

log = logging.getLogger("agent.enroll")

RETRY_START = 0.5
RETRY_MAX = 30.0


class Capture(Protocol):
    """How packets get to the agent in a pod: eBPF (the default) or iptables (for comparison)."""

    def make_proxy(self, pod: Pod, ns: netns.Netns) -> PodProxy: ...
    def bind(self, pod: Pod, ns: netns.Netns, proxy: PodProxy) -> Binding: ...
    def unbind(self, binding: Binding) -> None: ...
    def attach(self, netns_path: str) -> str: ...
    def detach(self, netns_path: str, accept_local: str) -> None: ...
    def installed(self, netns_path: str) -> bool: ...


class EnrollError(SlipstreamError):
    pass


class NotYet(EnrollError):
    """The pod cannot be enrolled yet (no IP, or no known namespace): pending, not failed."""


@dataclass
class _Active:
    pod: Pod
    ns: netns.Netns
    proxy: PodProxy
    binding: Binding
    since: float = field(default_factory=time.time)


class Enroller:
    def __init__(
        self,
        node: str,
        store: StateStore,
        capture: Capture,
        *,
        state_dir: str,
        netns_dir: str = netns.NETNS_RUN_DIR,
        cleanup: bool = False,
        cni: CniPods | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.capture = capture
        self.state_dir = state_dir
        self.netns_dir = os.path.realpath(netns_dir)
        self.cleanup = cleanup
        self.active: dict[ObjectKey, _Active] = {}
        self.status: dict[ObjectKey, WorkloadStatus] = {}
        self._failures: dict[ObjectKey, tuple[float, float]] = {}
        """key -> (retry at, next backoff)"""
        self.reconciled_version = -1
        """Store version of the last completed reconcile (readiness waits for the synced one)."""
        self._swept = False
        self.cni = cni
        """Sandboxes slipstream-cni reported: a pod's namespace and address before the API
        shows them (agent/node/cni.py)."""
        self.passes_started = 0
        self.passes_done = 0
        self.passed = asyncio.Event()

    # ------------------------------------------------------------ component

    async def run(self, drain: asyncio.Event) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        try:
            while not drain.is_set():
                version = self.store.snapshot.version
                await self.reconcile()
                self.reconciled_version = version
                # Wait from the version reconciled, not the current one: a change
                # that landed during reconcile must start the next round at once.
                await self._wait(drain, version)
        finally:
            await self._stop()

    async def _wait(self, drain: asyncio.Event, version: int) -> None:
        timeout = None
        if self._failures:
            timeout = max(0.0, min(at for at, _ in self._failures.values()) - time.monotonic())
        waiters = {
            asyncio.ensure_future(self.store.wait_for_version(version)),
            asyncio.ensure_future(drain.wait()),
        }
        if self.cni is not None:
            waiters.add(asyncio.ensure_future(self.cni.changed.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            if self.cni is not None:
                self.cni.changed.clear()

    async def _stop(self) -> None:
        for key in list(self.active):
            if self.cleanup:
                await self._unenroll(key, "agent stopping with --cleanup")
            else:
                # Capture stays: until an agent is back, the pod's traffic fails closed.
                active = self.active.pop(key)
                self.capture.unbind(active.binding)
                await active.proxy.close("agent_stopping")
        log.info("enroller stopped", extra={"cleanup": self.cleanup})

    # ------------------------------------------------------------ reconcile

    def status_of(self, key: ObjectKey) -> WorkloadStatus | None:
        return self.status.get(key)

    def retry_now(self, key: ObjectKey) -> None:
        """A new sandbox of the pod: try it at the next pass, whatever the backoff said."""
        self._failures.pop(key, None)

    async def reconcile(self) -> None:
        self.passes_started += 1
        number = self.passes_started
        try:
            await self._reconcile()
        finally:
            self.passes_done = number
            self.passed.set()

    def _with_sandbox(self, pod: Pod) -> Pod:
        """The pod with what slipstream-cni told of it filled in where the API has nothing
        yet (its address, its namespace path); the API's own values win."""
        sandbox = self.cni.get(pod.key) if self.cni is not None else None
        if sandbox is None or (pod.ip and _netns_of(pod)):
            return pod
        annotations = dict(pod.meta.annotations)
        annotations.setdefault(ANNOTATION_NETNS, sandbox.netns)
        return replace(
            pod,
            meta=pod.meta.model_copy(update={"annotations": annotations}),
            status=pod.status.model_copy(update={"pod_ip": pod.ip or sandbox.ip}),
        )

    async def _reconcile(self) -> None:
        snap = self.store.snapshot
        desired: dict[ObjectKey, Pod] = {}
        seen = set()
        for pod in map(self._with_sandbox, snap.pods_on_node(self.node)):
            key = pod.key
            seen.add(key)
            decision = decide(pod, snap.namespace(pod.meta.namespace))
            if decision.enroll:
                desired[key] = pod
            else:
                self.status[key] = WorkloadStatus(
                    pod.meta.namespace,
                    pod.meta.name,
                    pod.ip,
                    NOT_ENROLLED,
                    decision.reason,
                    warning=capture_warning(pod),
                )
                if not self._swept:
                    await self._sweep(pod)
        self._swept = True
        for key in list(self.active):
            want = desired.get(key)
            have = self.active[key].pod
            if want is None or want.ip != have.ip or _netns_of(want) != _netns_of(have):
                await self._unenroll(key, "no longer enrolled" if want is None else "pod changed")
        for key in list(self.status):
            if key not in seen:
                del self.status[key]
                self._failures.pop(key, None)
        for key, pod in desired.items():
            if key in self.active:
                self.status[key].connections = self.active[key].proxy.connections
                continue
            failure = self._failures.get(key)
            if failure and failure[0] > time.monotonic():
                continue
            await self._enroll(pod)
        if self.cni is not None:
            self._let_go_of_found()

    def _let_go_of_found(self) -> None:
        """Names given to namespaces found in /proc whose pod is no longer enrolled here
        (deleted while the agent was down, say): removed, so they keep nothing alive."""
        held = {os.path.basename(a.ns.path) for a in self.active.values()}
        try:
            names = os.listdir(self.netns_dir)
        except OSError:
            return
        for name in names:
            if name.startswith(procscan.ATTACHED_PREFIX) and name not in held:
                procscan.detach(self.netns_dir, name)

    async def _enroll(self, pod: Pod) -> None:
        key = pod.key
        ref = PodRef(pod.meta.namespace, pod.meta.name, pod.ip)
        ns: netns.Netns | None = None
        proxy: PodProxy | None = None
        binding: Binding | None = None
        try:
            path = self._netns_path(pod)
            ns = netns.Netns(path)
            if ns.inode == netns.own_inode():
                raise EnrollError(f"{path} is the agent's own namespace, not a pod's")
            # Listeners first, capture last: a captured packet never finds the agent unready.
            proxy = self.capture.make_proxy(pod, ns)
            await proxy.start()
            binding = self.capture.bind(pod, ns, proxy)
            before = await asyncio.to_thread(self.capture.attach, path)
            self._remember(pod, path, before)
        except Exception as exc:  # never let one pod stop the agent
            if binding is not None:
                self.capture.unbind(binding)
            if proxy is not None:
                await proxy.close("enrollment failed")
            if ns is not None:
                ns.close()
            if isinstance(exc, SlipstreamError | OSError):
                self._fail(pod, str(exc), PENDING if isinstance(exc, NotYet) else FAILED)
            else:
                log.exception("unexpected error enrolling pod", extra={"pod": str(ref)})
                self._fail(pod, f"internal error: {exc!r}")
            return
        self.active[key] = _Active(pod, ns, proxy, binding)
        self._failures.pop(key, None)
        self.status[key] = WorkloadStatus(
            ref.namespace,
            ref.name,
            ref.ip,
            ENROLLED,
            decide(pod, self.store.snapshot.namespace(ref.namespace)).reason,
            netns=path,
            since=time.time(),
            warning=capture_warning(pod),
        )
        log.info("pod enrolled", extra={"pod": str(ref), "ip": ref.ip, "netns": path})
        if self.status[key].warning:
            log.warning(
                "enrolled pod can remove or bypass capture",
                extra={"pod": str(ref), "warning": self.status[key].warning},
            )

    async def _unenroll(self, key: ObjectKey, reason: str) -> None:
        active = self.active.pop(key)
        self.capture.unbind(active.binding)
        await active.proxy.close("unenrolled")
        path = active.ns.path
        try:
            if os.path.exists(path):
                await asyncio.to_thread(
                    self.capture.detach, path, self._original_accept_local(active.pod)
                )
        except (SlipstreamError, OSError) as exc:
            log.warning(
                "could not remove capture from pod", extra={"pod": str(key), "error": str(exc)}
            )
        finally:
            active.ns.close()
            self._forget(active.pod)
            if os.path.basename(path).startswith(procscan.ATTACHED_PREFIX):
                procscan.detach(self.netns_dir, os.path.basename(path))
        log.info("pod unenrolled", extra={"pod": f"{key.namespace}/{key.name}", "reason": reason})

    async def _sweep(self, pod: Pod) -> None:
        """At start: a pod we must not capture may still hold capture from before (labels
        changed while the agent was down). Remove it."""
        path = pod.meta.annotations.get(ANNOTATION_NETNS)
        if not path or not os.path.exists(path):
            return
        try:
            if await asyncio.to_thread(self.capture.installed, path):
                await asyncio.to_thread(self.capture.detach, path, self._original_accept_local(pod))
                self._forget(pod)
                log.info("removed capture left from before", extra={"pod": str(pod.key)})
        except (SlipstreamError, OSError) as exc:
            log.warning(
                "could not check a pod for old capture",
                extra={"pod": str(pod.key), "error": str(exc)},
            )

    def _fail(self, pod: Pod, reason: str, state: str = FAILED) -> None:
        key = pod.key
        _, backoff = self._failures.get(key, (0.0, RETRY_START))
        self._failures[key] = (time.monotonic() + backoff, min(backoff * 2, RETRY_MAX))
        self.status[key] = WorkloadStatus(
            pod.meta.namespace, pod.meta.name, pod.ip, state, reason, warning=capture_warning(pod)
        )
        log.warning(
            "pod enrollment failed, will retry",
            extra={"pod": str(key), "error": reason, "retry_in_s": backoff},
        )

    def _netns_path(self, pod: Pod) -> str:
        path = pod.meta.annotations.get(ANNOTATION_NETNS)
        if not pod.ip:
            raise NotYet("the pod has no IP yet")
        if not path and self.cni is not None:
            return self._found_in_proc(pod)
        if not path:
            raise NotYet(
                f"the pod's network namespace is not known (no {ANNOTATION_NETNS} annotation)"
            )
        real = os.path.realpath(path)
        if os.path.dirname(real) != self.netns_dir:
            raise EnrollError(
                f"{ANNOTATION_NETNS}={path} is outside the namespace directory {self.netns_dir}"
            )
        return real

    def _found_in_proc(self, pod: Pod) -> str:
        """A pod from before slipstream-cni was installed: its namespace found by its
        address among the host's processes (agent/node/procscan.py)."""
        name = procscan.attached_name(pod.meta.namespace, pod.meta.name)
        path = os.path.join(self.netns_dir, name)
        if os.path.exists(path):
            return path
        if self.netns_dir != os.path.realpath(netns.NETNS_RUN_DIR):
            raise NotYet(f"no sandbox reported by slipstream-cni, and {self.netns_dir} is not"
                         f" where `ip netns attach` names a namespace found in /proc")  # fmt: skip
        pid = procscan.pick(pod.ip, procscan.scan(netns.own_inode()))
        if pid is None:
            raise NotYet(f"no sandbox reported by slipstream-cni, and no network namespace on"
                         f" this node holds {pod.ip}")  # fmt: skip
        log.info("found a pod's namespace in /proc", extra={"pod": str(pod.key), "pid": pid})
        return procscan.attach(self.netns_dir, name, pid)

    # ------------------------------------------------ what we changed, kept across restarts

    def _record_path(self, pod: Pod) -> str:
        return os.path.join(self.state_dir, f"{pod.meta.namespace}_{pod.meta.name}.json")

    def _remember(self, pod: Pod, path: str, accept_local_before: str) -> None:
        rec = self._record_path(pod)
        try:
            with open(rec) as f:
                if json.load(f).get("netns") == path:
                    return  # re-adopted: keep the value from before our first change
        except (OSError, ValueError):
            pass
        with open(rec, "w") as f:
            json.dump({"netns": path, "accept_local": accept_local_before}, f)

    def _original_accept_local(self, pod: Pod) -> str:
        try:
            with open(self._record_path(pod)) as f:
                return str(json.load(f).get("accept_local", "0"))
        except (OSError, ValueError):
            return "0"

    def _forget(self, pod: Pod) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._record_path(pod))

    def proxies(self) -> list[PodProxy]:
        return [a.proxy for a in self.active.values()]

    def workloads(self) -> list[WorkloadStatus]:
        return [self.status[k] for k in sorted(self.status)]


def _netns_of(pod: Pod) -> str | None:
    return pod.meta.annotations.get(ANNOTATION_NETNS)


StatusSource = Callable[[], list[WorkloadStatus]]
