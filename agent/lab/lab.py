"""A whole cluster in network namespaces on one machine, from Kubernetes manifests.

`Lab` is the API behind `slipstream lab ...` and the lab tests. It keeps its
state on disk (/run/slipstream/lab/<name>/state.json) and every command takes
the lab's lock, so commands from different processes see one consistent lab.

The lab is a Kubernetes cluster (one truth: its API server, cluster.py). `up`,
`apply`, `delete` and `get` read and write objects through the API, as kubectl
does; the lab then plays kubelet and scheduler (`_sync`): it runs the pods bound
to its nodes (a pod without `spec.nodeName` goes to the node with the fewest
pods), writes their status back through the API, stops the pods that are gone,
and writes the components' file source from the API. `_sync` runs in the
command that changed something (so `lab apply` returns once its pods run) and in
the lab's kubelet process (kubelet.py), which watches the API for what kubectl
changes. Both take the lab's lock, so there is one `_sync` at a time. state.json
keeps what only the lab knows (nodes, pod sandboxes, processes) and a cache of
the API's objects as of the last `_sync` (`manifests`).

Order of work in every mutating command: validate everything first (errors
name file, line, object and field), then build; if building fails, undo what
this command built and leave the lab as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agent.common.errors import FieldError, ManifestError, SlipstreamError
from agent.common.manifest import Document
from agent.state.dump import endpoints_objects
from agent.state.enrollment import ANNOTATION_NETNS, capture_warning, decide
from agent.state.objects import (
    Namespace,
    ObjectKey,
    Pod,
    Resource,
    Service,
    parse_object,
)
from agent.state.store import Snapshot

from . import access, cluster, cnirun, mesh, model, net, pods, workloads
from .errors import LabError
from .kubeapi import KubeApiError, KubeClient, ResourceType
from .model import LabSpec, LabState, NodeRecord, PodRecord

log = logging.getLogger("agent.lab")

DEFAULT_ROOT = os.environ.get("SLIPSTREAM_LAB_ROOT", "/run/slipstream/lab")
IMPLICIT_NAMESPACES = ("default", "kube-system", "slipstream-system")
SYNCED = (
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "Service"),
    ("v1", "Pod"),
    ("v1", "ConfigMap"),
    (model.MESH_API, "AuthorizationPolicy"),
    (model.MESH_API, "PeerAuthentication"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("gateway.networking.k8s.io/v1", "GatewayClass"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
)
"""What the components read, and so what the lab writes to their file source (with
`spec.mesh.source: file`) and what `policy check` reads of a lab. Kinds without a
registered CRD are skipped."""
WORKLOAD_KINDS = (
    (workloads.APPS, "DaemonSet"),
    (workloads.APPS, "Deployment"),
    (workloads.APPS, "ReplicaSet"),
)
"""What the lab's controller manager acts on (workloads.py), before it runs pods."""
KUBELET_KINDS = (
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "Service"),
    ("v1", "Pod"),
    *WORKLOAD_KINDS,
)
"""What the lab itself needs to run pods (which pods, on which nodes, in the mesh or not,
and the names in their hosts files): all it follows when the components read the API."""


def followed(spec: LabSpec) -> tuple[tuple[str, str], ...]:
    """The kinds the lab's kubelet follows (and re-reads on every change)."""
    return SYNCED if spec.source == "file" else KUBELET_KINDS


NOT_FOR_COMPONENTS = ("Service default/kubernetes",)
"""The API server's own Service has no selector: the file source could give it no endpoints."""
FAILED_REASON = "LabCannotRun"
SANDBOX_FAILED_REASON = "FailedCreatePodSandBox"
SANDBOX_RETRY_FIRST = 1.0
SANDBOX_RETRY_MAX = 10.0
"""The kubelet's retry of a pod whose CNI ADD failed: doubling from 1 s up to 10 s."""


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Checked:
    """A validated document, ready to apply."""

    doc: Document
    obj: Resource


class Lab:
    def __init__(self, name: str, root: str = DEFAULT_ROOT) -> None:
        try:
            self.name = model.check_lab_name(name)
        except FieldError as exc:
            raise LabError(str(exc)) from exc
        self.root = root
        self.dirs = model.LabDirs(os.path.join(root, name))
        self.dir = self.dirs.dir
        self.objects_dir = self.dirs.objects
        self.state_path = self.dirs.state
        self.lock_path = os.path.join(root, f".{name}.lock")
        self._api: KubeClient | None = None
        self._status_written: dict[str, dict[str, Any]] = {}
        """Pod status last written through the API by this process, by "namespace/name"."""
        self._sandbox_retry: dict[str, tuple[float, float]] = {}
        """Pods whose sandbox the CNI chain refused: when to try again, and the delay."""

    def api(self) -> KubeClient:
        """The lab's client of its API server (admin)."""
        if self._api is None:
            self._api = access.client(self.dirs)
        return self._api

    # ------------------------------------------------------------ discovery

    @staticmethod
    def names(root: str = DEFAULT_ROOT) -> list[str]:
        try:
            return sorted(
                n for n in os.listdir(root) if os.path.exists(os.path.join(root, n, "state.json"))
            )
        except FileNotFoundError:
            return []

    def exists(self) -> bool:
        return os.path.exists(self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.root, exist_ok=True)
        with open(self.lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self) -> LabState:
        try:
            with open(self.state_path) as f:
                return LabState.from_json(f.read())
        except FileNotFoundError:
            raise LabError(
                f"no lab named {self.name!r} is up (see `slipstream lab status`)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LabError(
                f"lab state {self.state_path} is damaged ({exc}); run `slipstream lab down`"
            ) from exc

    def _save(self, state: LabState) -> None:
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(state.to_json())
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------ up / down

    def up(self, documents: Sequence[Document]) -> LabState:
        try:
            return self._up(documents)
        except BaseException:
            if not self.exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock_path)
            raise

    def _up(self, documents: Sequence[Document]) -> LabState:
        with self._locked():
            if self.exists():
                raise LabError(
                    f"lab {self.name!r} is already up; use `lab apply` to change it or `lab down`"
                )
            spec = self._lab_spec(documents)
            stale = net.list_netns(model.lab_prefix(self.name))
            if stale:
                log.warning(
                    "removing leftovers of an earlier lab with this name",
                    extra={"netns": len(stale)},
                )
                self._teardown()
            state = LabState(self.name, spec, time.time())
            for i, name in enumerate(spec.nodes, start=1):
                state.nodes[name] = NodeRecord(
                    name, i, model.node_netns(self.name, name), model.node_ip(i), model.pod_cidr(i)
                )
            implicit = [self._implicit_namespace(ns) for ns in IMPLICIT_NAMESPACES]
            checked = self._check(state, [d for d in documents if _kind(d) != "Lab"])
            try:
                for d in (self.dirs.objects, self.dirs.logs, self.dirs.pods):
                    os.makedirs(d, exist_ok=True)
                net.build_bridge(self.name)
                for node in state.nodes.values():
                    net.build_node(self.name, node, state.nodes.values())
                    if spec.pod_network == "cni":
                        cnirun.install_primary(
                            cnirun.NodeCni.under(self.dirs.cni(node.name), node.netns),
                            node.pod_cidr,
                            model.pod_gateway(node.index),
                        )
                net.build_control_plane(self.name, state.nodes.values())
                cluster.start_apiserver(state, self.dirs)
                self._save(state)
                cluster.wait_apiserver(state, self.dirs)
                self._register_nodes(state)
                if spec.mesh:
                    # The CA, then the agents, then pods: a pod in the mesh starts only
                    # once its agent captures it.
                    mesh.start_ca(state, self.dirs)
                    self._save(state)
                    mesh.wait_ca_ready(state, self.dirs)
                    for node in state.nodes.values():
                        mesh.start_agent(state, self.dirs, node)
                    self._save(state)
                    for node in state.nodes.values():
                        mesh.wait_agent_ready(state, node)
                        if spec.pod_network == "cni":
                            mesh.start_cni_install(state, self.dirs, node)
                    self._save(state)
                cluster.spawn(
                    state, self.dirs, "kubelet", cluster.kubelet_argv(self.name, self.root)
                )
                self._save(state)
                self._apply_checked(state, implicit + checked)
                self._save(state)
            except BaseException:
                self._teardown()
                raise
            log.info(
                "lab up",
                extra={"lab": self.name, "nodes": len(state.nodes), "pods": len(state.pods)},
            )
            return state

    def down(self) -> bool:
        """Remove everything the lab made. True if there was anything to remove."""
        if self._api is not None:
            self._api.close()
            self._api = None
        with self._locked():
            found = self.exists() or bool(net.list_netns(model.lab_prefix(self.name)))
            self._teardown()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        return found

    def _teardown(self) -> None:
        try:
            cluster.stop(self.load() if self.exists() else None)
        except LabError as exc:  # a damaged state file: the namespaces still go
            log.warning("could not read the lab's processes", extra={"error": str(exc)})
        names = net.list_netns(model.lab_prefix(self.name))
        net.kill_in(names)
        pods.reap()
        errors = []
        for name in names:
            try:
                net.delete_netns(name)
            except SlipstreamError as exc:
                errors.append(str(exc))
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise LabError("could not remove every namespace:\n" + "\n".join(errors))

    # ------------------------------------------------------------ apply / delete

    def apply(self, documents: Sequence[Document]) -> list[str]:
        """Create or change objects on a running lab, through its API. Returns kubectl-style
        lines once the new pods run; a pod that cannot run is deleted again and named."""
        self.ensure_kubelet()
        with self._locked():
            state = self.load()
            for doc in documents:
                if _kind(doc) == "Lab":
                    try:
                        spec = model.parse_lab_spec(doc.body)
                    except FieldError as exc:
                        raise LabError(str(doc.error(exc))) from exc
                    if spec != dataclasses.replace(state.spec, name=spec.name):
                        reason = "a running lab's spec cannot change; down and up again"
                        raise LabError(str(doc.error(FieldError("spec", reason))))
            self._refresh(state)
            checked = self._check(state, [d for d in documents if _kind(d) != "Lab"])
            try:
                return self._apply_checked(state, checked)
            finally:
                self._save(state)

    def delete(self, kind: str, name: str, namespace: str = "default") -> list[str]:
        """Delete an object through the API. `kind` as kubectl takes it; a kind two groups
        serve (AuthorizationPolicy: Istio's and ours) is the one that holds `name`, or
        named with its group (`authorizationpolicy.slipstream.dev`) when both do."""
        self.ensure_kubelet()
        with self._locked():
            state = self.load()
            self._refresh(state)
            key = ObjectKey.parse(kind, name, namespace)
            if key.kind == "Namespace" and key.name in IMPLICIT_NAMESPACES:
                raise LabError(f"namespace {key.name!r} is built in and cannot be deleted")
            rt = self._holder(key, "." in kind)
            doomed = [key]
            if key.kind == "Namespace":
                doomed = [k for k in state.object_keys() if k.namespace == key.name] + [key]
            self.api().delete(rt, key.name, key.namespace or None)
            self._sync(state)
            self._save(state)
            return [f"{k.kind.lower()}/{k.name} deleted" for k in doomed]

    def _holder(self, key: ObjectKey, group_given: bool) -> ResourceType:
        """The resource (one per group, whatever its versions) that holds the object."""
        api = self.api()
        found: dict[str, ResourceType] = {}
        for (api_version, kind), rt in api.types().items():
            group = api_version.rpartition("/")[0]
            if kind != key.kind or group in found:
                continue
            if group_given and ObjectKey.parse(kind, "x", "x", api_version).group != key.group:
                continue
            if api.get(rt, key.name, key.namespace or None) is not None:
                found[group] = rt
        if not found:
            raise LabError(f"{key} not found in lab {self.name!r}")
        if len(found) > 1:
            names = " or ".join(f"{key.kind.lower()}.{g}" for g in sorted(found))
            raise LabError(f"{key.kind} {key.name} exists in {len(found)} groups: say {names}")
        return next(iter(found.values()))

    # ------------------------------------------------------------ validation

    def _lab_spec(self, documents: Sequence[Document]) -> LabSpec:
        labs = [d for d in documents if _kind(d) == "Lab"]
        if not labs:
            raise LabError(
                "no Lab object in the manifests: add one with apiVersion "
                f"{model.MESH_API}, kind Lab and spec.nodes"
            )
        if len(labs) > 1:
            raise LabError(f"{labs[1].source}:{labs[1].line}: more than one Lab object")
        try:
            spec = model.parse_lab_spec(labs[0].body)
        except FieldError as exc:
            raise LabError(str(labs[0].error(exc))) from exc
        return spec

    def _implicit_namespace(self, name: str) -> Checked:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        return Checked(Document("<lab>", 0, 0, body), parse_object(body))

    def _check(self, state: LabState, documents: Sequence[Document]) -> list[Checked]:
        """Validate every document against the lab; raise one error listing all problems."""
        errors: list[ManifestError] = []
        checked: list[Checked] = []
        for doc in documents:
            try:
                checked.append(Checked(doc, parse_object(doc.body)))
            except FieldError as exc:
                errors.append(doc.error(exc))
        namespaces = {k.name for k in state.object_keys("Namespace")} | set(IMPLICIT_NAMESPACES)
        namespaces |= {c.obj.meta.name for c in checked if c.obj.kind == "Namespace"}
        claimed_ips: dict[str, str] = {}
        for key in state.object_keys("Service"):
            ip = ((state.object(key) or {}).get("spec") or {}).get("clusterIP")
            if ip and ip != "None":
                claimed_ips[ip] = f"{key.namespace}/{key.name}"
        seen: set[ObjectKey] = set()
        for c in checked:
            try:
                if c.obj.key in seen:
                    raise FieldError("metadata.name", f"{c.obj.key} appears twice in the manifests")
                seen.add(c.obj.key)
                if c.obj.meta.namespace and c.obj.meta.namespace not in namespaces:
                    raise FieldError(
                        "metadata.namespace",
                        f"namespace {c.obj.meta.namespace!r} does not exist "
                        "(add a Namespace document)",
                    )
                if isinstance(c.obj, Pod):
                    self._check_pod(state, c.obj)
                elif isinstance(c.obj, Service):
                    self._check_service(state, c.obj, claimed_ips)
            except FieldError as exc:
                errors.append(c.doc.error(exc))
        if errors:
            errors.sort(key=lambda e: (e.source, e.document or 0, e.line or 0))
            lines = "\n".join(f"  {e}" for e in errors)
            raise LabError(
                f"{len(errors)} problem(s) in the manifests; nothing was changed:\n{lines}"
            )
        return checked

    def _check_pod(self, state: LabState, pod: Pod) -> None:
        if pod.node_name and pod.node_name not in state.nodes:
            raise FieldError(
                "spec.nodeName",
                f"no node {pod.node_name!r} in this lab (nodes: {', '.join(state.spec.nodes)})",
            )
        old = state.manifests.get(str(pod.key))
        if old is not None:
            # The stored spec carries the API server's defaults: the manifest must agree
            # with every field it gives.
            new_spec = dict(pod.raw.get("spec", {}))
            old_spec = dict(old.get("spec", {}))
            changed = sorted(k for k in new_spec if not _covers(old_spec.get(k), new_spec[k]))
            if changed:
                raise FieldError(
                    f"spec.{changed[0]}",
                    "a running Pod's spec cannot change, only its labels "
                    "and annotations; delete the pod and apply it again",
                )
            return
        self._check_runnable(pod)

    def _check_runnable(self, pod: Pod) -> None:
        """What the lab needs to run a pod: commands it can start, capabilities it knows."""
        path = pods.pod_path()
        raw_containers = pod.raw.get("spec", {}).get("containers", [])
        for i, raw in enumerate(raw_containers):
            model.container_capabilities(raw, f"spec.containers[{i}]")
        for i, c in enumerate(pod.containers):
            argv = list(c.command) + list(c.args)
            if not argv:
                raise FieldError(
                    f"spec.containers[{i}].command",
                    "is required: lab pods have no image, so the command to run must be given",
                )
            for j, e in enumerate(c.env):
                at = f"spec.containers[{i}].env[{j}].valueFrom"
                if e.value_from is not None and e.field_ref is None:
                    raise FieldError(at, "only fieldRef is supported in the lab")
                if e.field_ref is not None and e.field_ref not in model.FIELD_REFS:
                    raise FieldError(
                        f"{at}.fieldRef.fieldPath",
                        f"{e.field_ref!r} is not one of {sorted(model.FIELD_REFS)}",
                    )
            where = (
                f"spec.containers[{i}].command[0]" if c.command else f"spec.containers[{i}].args[0]"
            )
            if shutil.which(argv[0], path=path) is None:
                raise FieldError(where, f"cannot start {argv[0]!r}: not found or not executable")

    def _check_service(self, state: LabState, svc: Service, claimed: dict[str, str]) -> None:
        ident = f"{svc.meta.namespace}/{svc.meta.name}"
        current = ((state.object(svc.key) or {}).get("spec") or {}).get("clusterIP")
        if current and svc.cluster_ip and svc.cluster_ip != current:
            raise FieldError("spec.clusterIP", f"is immutable: the Service has {current}")
        if svc.cluster_ip not in ("", "None") and (
            ipaddress.IPv4Address(svc.cluster_ip) not in model.SERVICE_CIDR
        ):
            raise FieldError(
                "spec.clusterIP",
                f"{svc.cluster_ip} is outside the service range {model.SERVICE_CIDR}",
            )
        if svc.cluster_ip and svc.cluster_ip != "None":
            owner = claimed.get(svc.cluster_ip)
            if owner and owner != ident:
                raise FieldError(
                    "spec.clusterIP", f"{svc.cluster_ip} is already used by Service {owner}"
                )
            claimed[svc.cluster_ip] = ident

    # ------------------------------------------------------------ building

    def _register_nodes(self, state: LabState) -> None:
        """A Node object per lab node, Ready, with its address (as a kubelet registers)."""
        api = self.api()
        rt = api.type_of("v1", "Node")
        for node in state.nodes.values():
            api.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": node.name,
                        "labels": {"kubernetes.io/hostname": node.name},
                    },
                    "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
                }
            )
            now = _now_iso()
            api.merge_patch(
                rt,
                node.name,
                None,
                {
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": node.ip},
                            {"type": "Hostname", "address": node.name},
                        ],
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "KubeletReady",
                                "message": "slipstream lab node",
                                "lastHeartbeatTime": now,
                                "lastTransitionTime": now,
                            }
                        ],
                    }
                },
                sub="status",
            )

    def _apply_checked(self, state: LabState, checked: Sequence[Checked]) -> list[str]:
        """Write the objects through the API (server-side apply), then run the lab's sync so
        new pods run before this returns. A new pod that cannot run is deleted again."""
        api = self.api()
        order = {"Namespace": 0, "ServiceAccount": 1, "Service": 2, "Pod": 3}
        results: list[str] = []
        created: dict[str, str] = {}
        used_ips = self._service_ips(state)
        for c in sorted(checked, key=lambda c: order.get(c.obj.kind, 4)):
            body = json.loads(json.dumps(c.obj.raw))
            if isinstance(c.obj, Service) and str(c.obj.key) not in state.manifests:
                # The lab's own range (10.96.0.10 up), as before the API: kubectl's
                # Services get the API server's allocation.
                spec = body.setdefault("spec", {})
                if not spec.get("clusterIP"):
                    ip = model.free_service_ip(used_ips)
                    if ip is None:
                        raise LabError("the service range 10.96.0.0/16 is full")
                    spec["clusterIP"] = ip
                    used_ips.add(ip)
            try:
                stored, verb = api.apply(body)
            except KubeApiError as exc:
                raise LabError(str(c.doc.error(FieldError("", str(exc))))) from exc
            key = c.obj.key
            if key.kind == "Pod" and verb == "created":
                created[f"{key.namespace}/{key.name}"] = stored["metadata"]["uid"]
            state.manifests[str(key)] = stored
            results.append(f"{key.kind.lower()}/{key.name} {verb}")
        # Changes to what runs reach the components now; the sync then reads everything back.
        self._write_objects(state)
        self._sync(state)
        failed = {
            k: self._why_not_running(state, k)
            for k, uid in created.items()
            if k not in state.pods or state.pods[k].uid != uid
        }
        if failed:
            pod_rt = api.type_of("v1", "Pod")
            for k in created:
                ns, _, name = k.partition("/")
                api.delete(pod_rt, name, ns)
            self._sync(state)
            raise LabError(next(iter(failed.values())))
        return results

    def _why_not_running(self, state: LabState, key: str) -> str:
        ns, _, name = key.partition("/")
        body = state.manifests.get(str(ObjectKey("Pod", ns, name))) or {}
        message = (body.get("status") or {}).get("message")
        return str(message or f"Pod {key} was not started")

    def _service_ips(self, state: LabState) -> set[str]:
        return {
            ip
            for key in state.object_keys("Service")
            if (ip := ((state.object(key) or {}).get("spec") or {}).get("clusterIP"))
        }

    # ------------------------------------------------------------ the lab as kubelet

    def kubelet_sync(self, full: bool) -> None:
        """One pass of the lab's kubelet process: everything (`full`), or pod status only."""
        with self._locked():
            if not self.exists():
                raise LabError(f"lab {self.name!r} is down")
            state = self.load()
            if full or self.sandbox_retry_due():
                self._sync(state)
                self._save(state)
            else:
                self._write_statuses(state, None)

    def _refresh(self, state: LabState) -> None:
        """Read every synced kind from the API into the lab's cache (`state.manifests`)."""
        objs: dict[str, dict[str, Any]] = {}
        for api_version, kind, body in self._listed(followed(state.spec)):
            meta = body.get("metadata") or {}
            key = ObjectKey.parse(
                kind, meta.get("name", ""), meta.get("namespace") or "default", api_version
            )
            objs[str(key)] = body
        state.manifests = objs
        state.live = {
            str(ObjectKey("Pod", rec.namespace, rec.name)): self._live(state, rec)
            for rec in state.pods.values()
        }

    def _live(self, state: LabState, rec: PodRecord) -> dict[str, Any]:
        live = {
            "nodeName": rec.node,
            "podIP": rec.ip,
            "hostIP": state.nodes[rec.node].ip,
            "phase": self.pod_status(rec)["phase"],
        }
        if state.spec.pod_network != "cni":  # with a CNI chain, the agent hears it from there
            live["netns"] = os.path.join(net.netns.NETNS_RUN_DIR, rec.netns)
        return live

    def _sync(self, state: LabState) -> None:
        """Make the lab match its API: stop pods that are gone, schedule and run new ones,
        write the components' file source and every pod's status."""
        api = self.api()
        pod_rt = api.type_of("v1", "Pod")
        self._control(state, api)
        self._refresh(state)
        api_pods = {
            f"{b['metadata'].get('namespace', 'default')}/{b['metadata']['name']}": b
            for b in state.manifests.values()
            if b.get("kind") == "Pod"
        }
        for key, rec in list(state.pods.items()):
            body = api_pods.get(key)
            meta = (body or {}).get("metadata") or {}
            if body is None or meta.get("deletionTimestamp") or meta.get("uid") != rec.uid:
                self._remove_pod(state, key)
                state.live.pop(str(ObjectKey("Pod", rec.namespace, rec.name)), None)
        for key in set(self._sandbox_retry) - set(api_pods):
            del self._sandbox_retry[key]  # deleted while it waited
        created: list[tuple[PodRecord, Pod]] = []
        for key, body in sorted(api_pods.items()):
            if key in state.pods or body["metadata"].get("deletionTimestamp"):
                continue
            node = (body.get("spec") or {}).get("nodeName")
            if node and node not in state.nodes:
                continue  # another node's pod: its kubelet's to run, as on a cluster
            if (body.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                continue  # what the lab could not run is not tried again
            if self._sandbox_retry.get(key, (0.0, 0.0))[0] > time.monotonic():
                continue
            try:
                rec, pod = self._create_pod(state, api, pod_rt, body)
            except cnirun.CniError as exc:
                # No sandbox yet: the pod waits, and the kubelet tries again (a real one
                # reports FailedCreatePodSandBox and backs off the same way).
                self._sandbox_failed(api, pod_rt, key, str(exc))
                continue
            except SlipstreamError as exc:
                self._fail(state, api, pod_rt, key, str(exc))
                continue
            self._sandbox_retry.pop(key, None)
            created.append((rec, pod))
        self._write_objects(state)
        pods.write_all_hosts(state)
        for rec, pod in created:
            key = f"{rec.namespace}/{rec.name}"
            try:
                if state.spec.mesh and self._in_mesh(state, pod):
                    mesh.wait_enrolled(state, [rec])
                pods.start(rec)
                pods.wait_started(rec)
            except SlipstreamError as exc:
                self._remove_pod(state, key)
                self._fail(state, api, pod_rt, key, str(exc))
                self._write_objects(state)
                pods.write_all_hosts(state)
        for rec, _ in created:
            state.live[str(ObjectKey("Pod", rec.namespace, rec.name))] = self._live(state, rec)
        self._write_objects(state)
        # Saved before the status says Running: whoever reads that finds the pod's record.
        self._save(state)
        self._write_statuses(state, api_pods)

    def _control(self, state: LabState, api: KubeClient) -> None:
        """The controller manager's pass (workloads.py): pods for DaemonSets and ReplicaSets,
        ReplicaSets for Deployments, what lost its owner deleted, and their status."""
        listed = {kind: api.list(api.type_of(av, kind))[0] for av, kind in WORKLOAD_KINDS}
        pod_rt = api.type_of("v1", "Pod")
        pods_now = api.list(pod_rt)[0]
        plan = workloads.plan(
            listed["DaemonSet"], listed["Deployment"], listed["ReplicaSet"], pods_now, state.nodes
        )
        for body in plan.create:
            rt = api.type_of(body["apiVersion"], body["kind"])
            meta = body["metadata"]
            try:
                api.request("POST", rt.path(meta["namespace"]), body)
            except KubeApiError as exc:
                log.warning(
                    "controller could not create", extra={"object": meta, "error": str(exc)}
                )
        for av, kind, ns, name in plan.delete:
            with contextlib.suppress(KubeApiError):
                api.delete(api.type_of(av, kind), name, ns)
        rs_rt = api.type_of(workloads.APPS, "ReplicaSet")
        for ns, name, replicas in plan.scale:
            with contextlib.suppress(KubeApiError):
                api.merge_patch(rs_rt, name, ns, {"spec": {"replicas": replicas}})
        have = {(kind, workloads.namespace_of(o), o["metadata"]["name"]): o.get("status") or {}
                for kind, objs in listed.items() for o in objs}  # fmt: skip
        for kind, ns, name, status in plan.status:
            if have.get((kind, ns, name)) == status:
                continue
            with contextlib.suppress(KubeApiError):
                api.merge_patch(
                    api.type_of(workloads.APPS, kind), name, ns, {"status": status}, sub="status"
                )

    def _create_pod(
        self, state: LabState, api: KubeClient, pod_rt: ResourceType, body: dict[str, Any]
    ) -> tuple[PodRecord, Pod]:
        """Schedule (if unbound) and build the sandbox of a pod the API holds."""
        meta = body["metadata"]
        ns, name = meta.get("namespace", "default"), meta["name"]
        try:
            pod = parse_object(body)
        except FieldError as exc:
            raise LabError(f"Pod {ns}/{name}: {exc}") from exc
        assert isinstance(pod, Pod)
        try:
            if pod.node_name and pod.node_name not in state.nodes:
                raise FieldError("spec.nodeName", f"no node {pod.node_name!r} in this lab")
            self._check_runnable(pod)
        except FieldError as exc:
            raise LabError(f"Pod {ns}/{name}: {exc}") from exc
        if not pod.node_name:
            # The scheduler's whole rule: the node with the fewest pods.
            node = state.choose_node().name
            api.request(
                "POST",
                pod_rt.path(ns, name, "binding"),
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                },
            )
            body = api.get(pod_rt, name, ns)
            pod = parse_object(body)
            assert isinstance(pod, Pod)
        if state.spec.pod_network == "cni" and state.spec.source == "file":
            # The agent decides a CNI ADD on the pod it reads: it must be there first.
            state.manifests[str(pod.key)] = body
            self._write_objects(state)
        rec = pods.create_sandbox(state, self.dirs, self.name, pod, str(meta.get("uid", "")))
        if state.spec.pod_network != "cni":
            # The agent learns the pod's network namespace from this annotation (the lab
            # is the CNI here); the lab sets it, whatever the manifest said.
            netns_path = os.path.join(net.netns.NETNS_RUN_DIR, rec.netns)
            api.merge_patch(
                pod_rt, name, ns, {"metadata": {"annotations": {ANNOTATION_NETNS: netns_path}}}
            )
        # Its address, as a kubelet reports once the CNI ran: before the containers
        # start, so that the node agent reading the API can enroll the pod first.
        stored = api.merge_patch(
            pod_rt, name, ns, {"status": self._k8s_status(state, rec)}, sub="status"
        )
        self._status_written[f"{ns}/{name}"] = stored.get("status") or {}
        state.manifests[str(pod.key)] = stored
        state.live[str(pod.key)] = self._live(state, rec)
        return rec, pod

    def _sandbox_failed(self, api: KubeClient, pod_rt: ResourceType, key: str, why: str) -> None:
        _, delay = self._sandbox_retry.get(key, (0.0, SANDBOX_RETRY_FIRST / 2))
        delay = min(delay * 2, SANDBOX_RETRY_MAX)
        self._sandbox_retry[key] = (time.monotonic() + delay, delay)
        log.warning("cannot create the pod's sandbox", extra={"pod": key, "reason": why})
        ns, _, name = key.partition("/")
        status = {
            "phase": "Pending",
            "reason": SANDBOX_FAILED_REASON,
            "message": f"Failed to create pod sandbox: {why}",
        }
        with contextlib.suppress(KubeApiError):
            api.merge_patch(pod_rt, name, ns, {"status": status}, sub="status")

    def sandbox_retry_due(self) -> bool:
        now = time.monotonic()
        return any(at <= now for at, _ in self._sandbox_retry.values())

    def _fail(
        self, state: LabState, api: KubeClient, pod_rt: ResourceType, key: str, reason: str
    ) -> None:
        log.warning("cannot run a pod", extra={"pod": key, "reason": reason})
        ns, _, name = key.partition("/")
        status = {"phase": "Failed", "reason": FAILED_REASON, "message": reason}
        try:
            stored = api.merge_patch(pod_rt, name, ns, {"status": status}, sub="status")
        except KubeApiError as exc:
            if exc.code != 404:
                raise
            return
        state.manifests[str(ObjectKey("Pod", ns, name))] = stored

    def _write_statuses(self, state: LabState, api_pods: dict[str, dict[str, Any]] | None) -> None:
        """Each running pod's status through the API when it changed: against what the API
        holds (`api_pods`), or against what this process wrote last."""
        api = self.api()
        pod_rt = api.type_of("v1", "Pod")
        for key, rec in state.pods.items():
            want = self._k8s_status(state, rec)
            if api_pods is not None:
                have = (api_pods.get(key) or {}).get("status") or {}
            else:
                have = self._status_written.get(key, {})
            if _comparable(have) == _comparable(want):
                self._status_written[key] = have
                continue
            try:
                api.merge_patch(pod_rt, rec.name, rec.namespace, {"status": want}, sub="status")
            except KubeApiError as exc:
                if exc.code != 404:
                    raise
                continue
            self._status_written[key] = want

    def _k8s_status(self, state: LabState, rec: PodRecord) -> dict[str, Any]:
        """A pod's status as a kubelet reports it, from the lab's supervisor."""
        st = self.pod_status(rec)
        now = _now_iso()
        containers = []
        for c in st["containers"]:
            if c.get("state") == "running":
                cstate: dict[str, Any] = {"running": {"startedAt": _iso(c.get("started_at"))}}
            elif c.get("state") == "terminated":
                cstate = {
                    "terminated": {
                        "exitCode": c.get("exit_code") or 0,
                        "reason": c.get("reason")
                        or ("Completed" if not c.get("exit_code") else "Error"),
                    }
                }
            else:
                cstate = {"waiting": {"reason": c.get("reason") or "ContainerCreating"}}
            containers.append(
                {
                    "name": c["name"],
                    "ready": c.get("state") == "running",
                    "started": c.get("state") == "running",
                    "restartCount": int(c.get("restarts", 0)),
                    "image": "",
                    "imageID": "",
                    "containerID": f"lab://{c['pid']}" if c.get("pid") else "",
                    "state": cstate,
                }
            )
        ready = (
            st["phase"] == "Running" and bool(containers) and all(c["ready"] for c in containers)
        )
        cond = "True" if ready else "False"
        status: dict[str, Any] = {
            "phase": st["phase"],
            "podIP": rec.ip,
            "podIPs": [{"ip": rec.ip}],
            "hostIP": state.nodes[rec.node].ip,
            "hostIPs": [{"ip": state.nodes[rec.node].ip}],
            "startTime": _iso(rec.created),
            "qosClass": "BestEffort",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": cond, "lastTransitionTime": now},
                {"type": "Ready", "status": cond, "lastTransitionTime": now},
            ],
            "containerStatuses": containers,
        }
        if st["reason"]:
            status["message"] = st["reason"]
        return status

    def _in_mesh(self, state: LabState, pod: Pod) -> bool:
        body = state.object(ObjectKey("Namespace", "", pod.meta.namespace))
        ns = parse_object(body) if body else None
        return decide(pod, ns if isinstance(ns, Namespace) else None).enroll

    def _remove_pod(self, state: LabState, key: str) -> None:
        rec = state.pods.pop(key, None)
        if rec is None:
            return
        self._status_written.pop(key, None)
        # The object goes first, so the agent lets go of the pod while it is torn down.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._object_file(ObjectKey("Pod", rec.namespace, rec.name)))
        pods.remove(state, self.dirs, rec)

    def _object_file(self, key: ObjectKey) -> str:
        return os.path.join(
            self.objects_dir,
            f"{key.kind.lower()}{'.' + key.group if key.group else ''}_"
            f"{key.namespace or '-'}_{key.name}.yaml",
        )

    def _write_objects(self, state: LabState) -> None:
        """The components' file source, from the API's objects: pods once the lab has
        built them (with their address and network namespace). Nothing when they read
        the API."""
        if state.spec.source != "file":
            return
        want: dict[str, str] = {}
        for key in state.object_keys():
            if str(key) in NOT_FOR_COMPONENTS:
                continue
            if key.kind == "Pod" and f"{key.namespace}/{key.name}" not in state.pods:
                continue
            body = state.object(key)
            assert body is not None
            want[self._object_file(key)] = json.dumps(body, indent=1, sort_keys=True)
        os.makedirs(self.objects_dir, exist_ok=True)
        # Only what the lab wrote before goes: a file put there by hand (a test's object
        # past the API's checks, as a small install's user would) stays.
        index = os.path.join(self.objects_dir, ".written")
        try:
            with open(index) as f:
                written = set(json.load(f))
        except (OSError, ValueError):
            written = set()
        for path in written - set(want):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for path, text in want.items():
            try:
                with open(path) as f:
                    if f.read() == text:
                        continue
            except FileNotFoundError:
                pass
            tmp = os.path.join(self.objects_dir, "." + os.path.basename(path) + ".tmp")
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        if written != set(want):
            with open(index + ".tmp", "w") as f:
                json.dump(sorted(want), f)
            os.replace(index + ".tmp", index)

    # ------------------------------------------------------------ mesh processes

    def start_agent(self, node_name: str, wait: bool = True, cleanup: bool = False) -> None:
        """Start a node's agent; with `cleanup` it removes capture from its pods when it stops."""
        with self._locked():
            state = self.load()
            node = self._node(state, node_name)
            if mesh.agent_alive(state, node_name):
                raise LabError(f"the agent on node {node_name} is already running")
            mesh.start_agent(state, self.dirs, node, ["--cleanup"] if cleanup else [])
            self._save(state)
            if wait:
                mesh.wait_agent_ready(state, node)

    def stop_agent(self, node_name: str, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop a node's agent: SIGTERM (a clean drain) or SIGKILL (a crash)."""
        with self._locked():
            state = self.load()
            self._node(state, node_name)
            rec = state.processes.get(f"agent/{node_name}")
            if rec is None or not net.alive(rec.pid, rec.starttime):
                raise LabError(f"no agent is running on node {node_name}")
            os.kill(rec.pid, 9 if kill else 15)
            deadline = time.monotonic() + timeout
            while net.alive(rec.pid, rec.starttime) and time.monotonic() < deadline:
                pods.reap()
                time.sleep(0.02)
            pods.reap()
            if net.alive(rec.pid, rec.starttime):
                raise LabError(f"the agent on node {node_name} did not stop within {timeout:.0f}s")

    def _node(self, state: LabState, name: str) -> NodeRecord:
        if name not in state.nodes:
            raise LabError(
                f"no node {name!r} in lab {self.name!r} (nodes: {', '.join(state.nodes)})"
            )
        return state.nodes[name]

    def node_http(self, node: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET a URL from inside a node's namespace (the agents' admin ports live there)."""
        return mesh.node_http(self.name, node, url, timeout)

    # ------------------------------------------------------------ reading

    def pod(self, name: str, namespace: str = "default") -> PodRecord:
        state = self.load()
        rec = state.pods.get(f"{namespace}/{name}")
        if rec is None:
            raise LabError(f"no pod {namespace}/{name} in lab {self.name!r}")
        return rec

    def pod_status(self, rec: PodRecord) -> dict[str, Any]:
        return pods.status(rec)

    def get(self, kind: str, namespace: str | None = "default") -> list[dict[str, Any]]:
        """Objects of a kind as the API holds them (pods with the status the lab wrote);
        `authorizationpolicy.slipstream.dev` names one group's."""
        kind_given = kind
        state = self.load()
        want = ObjectKey.parse(kind, "x")
        kind = want.kind
        if kind == "Endpoints":
            self._refresh(state)
            return [
                e
                for e in endpoints_objects(self._snapshot(state))
                if namespace is None or e["metadata"]["namespace"] == namespace
            ]
        types = [
            rt
            for (api_version, k), rt in self.api().types().items()
            if k == kind
            and (
                "." not in kind_given
                or ObjectKey.parse(k, "x", "x", api_version).group == want.group
            )
        ]
        if not types:
            raise LabError(f"the lab's API server serves no kind {kind!r}")
        rt = types[0]
        items, _ = self.api().list(rt, namespace if rt.namespaced else None)
        return sorted(
            items,
            key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
        )

    def documents(self) -> list[Document]:
        """Every object the components read, as the API holds it, one document each
        (`policy check` reads a lab this way)."""
        out = []
        for api_version, kind, body in self._listed(SYNCED):
            body = {"apiVersion": api_version, "kind": kind, **body}
            meta = body.get("metadata") or {}
            where = f"{kind} {meta.get('namespace') or ''}/{meta.get('name', '')}"
            out.append(Document(where.replace(" /", " "), 1, 1, body))
        return out

    def _listed(
        self, kinds: Sequence[tuple[str, str]]
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(apiVersion, kind, object) of every object of `kinds` the API serves (a kind whose
        CRD is not registered is skipped)."""
        api = self.api()
        for api_version, kind in kinds:
            rt = api.types().get((api_version, kind))
            if rt is not None:
                for body in api.list(rt)[0]:
                    yield api_version, kind, body

    def _snapshot(self, state: LabState) -> Snapshot:
        """The lab's objects as the agents' store sees them (same endpoint rules)."""
        objects = {}
        for key in state.object_keys():
            if key.kind == "Pod" and f"{key.namespace}/{key.name}" not in state.pods:
                continue
            body = state.object(key)
            try:
                obj = parse_object(body)
            except FieldError:
                continue
            objects[obj.key] = obj
        return Snapshot.build(0, objects)

    # ------------------------------------------------------------ the API server

    def kubeconfig(self) -> str:
        """The path of the admin kubeconfig for kubectl on this machine (and the lab's
        kubelet running, so that what kubectl creates runs)."""
        self.ensure_kubelet()
        return access.kubeconfig_path(self.dirs)

    def ensure_kubelet(self) -> bool:
        """Start the lab's kubelet again if its process is gone (it keeps the API server
        running; `lab` commands keep it): True if it had to."""
        pods.reap()
        if cluster.running(self.load(), "kubelet"):
            return False
        with self._locked():
            state = self.load()
            if cluster.running(state, "kubelet"):
                return False
            log.warning("the lab's kubelet is gone; starting it again")
            cluster.spawn(state, self.dirs, "kubelet", cluster.kubelet_argv(self.name, self.root))
            self._save(state)
            return True

    def stop_apiserver(self, *, kill: bool = False) -> None:
        """Stop the API server (SIGTERM, or SIGKILL for a crash); the kubelet restarts it."""
        with self._locked():
            state = self.load()
            rec = state.processes["apiserver/apiserver"]
            if net.alive(rec.pid, rec.starttime):
                os.kill(rec.pid, 9 if kill else 15)
            deadline = time.monotonic() + 10
            while net.alive(rec.pid, rec.starttime) and time.monotonic() < deadline:
                pods.reap()
                time.sleep(0.02)

    def ensure_apiserver(self) -> bool:
        """Start the API server again if it is not running (same port, same state file);
        True if it had to. The kubelet calls this: the server is supervised."""
        with self._locked():
            state = self.load()
            rec = state.processes["apiserver/apiserver"]
            if net.alive(rec.pid, rec.starttime):
                return False
            log.warning("the lab's API server is gone; starting it again")
            cluster.restart_apiserver(state, self.dirs)
            self._save(state)
            cluster.wait_apiserver(state, self.dirs)
            return True

    def status(self) -> dict[str, Any]:
        state = self.load()
        return {
            "name": self.name,
            "dir": self.dir,
            "objectsDir": self.objects_dir,
            "bridge": {"netns": model.bridge_netns(self.name), "cidr": str(model.NODE_NET)},
            "nodes": [
                {"name": n.name, "netns": n.netns, "ip": n.ip, "podCIDR": n.pod_cidr}
                for n in state.nodes.values()
            ],
            "pods": [
                {
                    "namespace": p.namespace,
                    "name": p.name,
                    "node": p.node,
                    "ip": p.ip,
                    "netns": p.netns,
                    "phase": self.pod_status(p)["phase"],
                    **self._capture_warning(state, p),
                }
                for p in state.pods.values()
            ],
            "processes": [
                {
                    "kind": r.kind,
                    "name": r.name,
                    "netns": r.netns,
                    "pid": r.pid,
                    "alive": net.alive(r.pid, r.starttime),
                    "log": r.log,
                }
                for r in state.processes.values()
            ],
        }

    def _capture_warning(self, state: LabState, rec: PodRecord) -> dict[str, str]:
        body = state.object(ObjectKey("Pod", rec.namespace, rec.name))
        pod = parse_object(body) if body else None
        warning = capture_warning(pod) if isinstance(pod, Pod) else ""
        return {"warning": warning} if warning else {}

    def exec_argv(
        self,
        argv: Sequence[str],
        pod: str | None = None,
        namespace: str = "default",
        node: str | None = None,
    ) -> list[str]:
        """The command line that runs `argv` in a pod's (or node's) namespace."""
        if node is not None:
            return ["ip", "netns", "exec", self._node(self.load(), node).netns, *argv]
        assert pod is not None
        rec = self.pod(pod, namespace)
        sup = pods.supervisor_pid(rec)
        if sup:
            # Join the pod's network, mount (its /etc/hosts, /proc...), UTS, IPC and PID
            # namespaces. As `kubectl debug` rather than `exec`: the command keeps every
            # capability (tests and benchmarks tune the pod's network with it).
            # With -p nsenter forks the command into the PID namespace: the command must die
            # with nsenter (a timeout kills nsenter), or its pipes outlive whoever waits on them.
            return [
                "nsenter", "-t", str(sup), "-n", "-m", "-u", "-i", "-p", "--",
                "setpriv", "--pdeathsig", "KILL", "--", *argv,
            ]  # fmt: skip
        return ["ip", "netns", "exec", rec.netns, *argv]

    def exec(
        self, pod: str, argv: Sequence[str], namespace: str = "default", **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run(self.exec_argv(argv, pod, namespace), check=False, **kwargs)

    def log_paths(
        self, pod: str, namespace: str = "default", container: str | None = None
    ) -> list[str]:
        rec = self.pod(pod, namespace)
        spec = pods.read_json(os.path.join(rec.dir, "spec.json")) or {"containers": []}
        paths = [c["log"] for c in spec["containers"] if container in (None, c["name"])]
        if container and not paths:
            raise LabError(f"pod {namespace}/{pod} has no container {container!r}")
        return paths

    def agent_log_path(self, node: str) -> str:
        rec = self.load().processes.get(f"agent/{node}")
        if rec is None:
            raise LabError(f"no agent was started on node {node!r}")
        return rec.log


def _covers(stored: Any, given: Any) -> bool:
    """`given` (a manifest's value) agrees with `stored` (the API's, with its defaults)."""
    if isinstance(given, dict):
        return isinstance(stored, dict) and all(_covers(stored.get(k), v) for k, v in given.items())
    if isinstance(given, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(given)
            and all(_covers(a, b) for a, b in zip(stored, given, strict=True))
        )
    return bool(stored == given)


def _comparable(status: dict[str, Any]) -> Any:
    """A pod status without the times a kubelet stamps on every write."""
    out = json.loads(json.dumps(status))
    for c in out.get("conditions") or []:
        c.pop("lastTransitionTime", None)
        c.pop("lastProbeTime", None)
    return out


def _iso(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts or time.time()))


def _kind(doc: Document) -> str | None:
    return doc.body.get("kind") if isinstance(doc.body, dict) else None
