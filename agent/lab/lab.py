"""A whole cluster in network namespaces on one machine, from Kubernetes manifests.

`Lab` is the API behind `slipstream lab ...` and the lab tests. It keeps its
state on disk (/run/slipstream/lab/<name>/state.json) and every command takes
the lab's lock, so commands from different processes see one consistent lab.
Nothing runs on behalf of the lab between commands except what it started:
per-pod supervisors and the mesh processes (agents), all inside lab namespaces.

Order of work in every mutating command: validate everything first (errors
name file, line, object and field), then build; if building fails, undo what
this command built and leave the lab as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from agent.state.enrollment import capture_warning, decide
from agent.state.objects import (
    Namespace,
    ObjectKey,
    Pod,
    Resource,
    Service,
    canonical_kind,
    parse_object,
)
from agent.state.store import Snapshot

from . import mesh, model, net, pods
from .errors import LabError
from .model import LabSpec, LabState, NodeRecord, PodRecord

log = logging.getLogger("agent.lab")

DEFAULT_ROOT = os.environ.get("SLIPSTREAM_LAB_ROOT", "/run/slipstream/lab")
IMPLICIT_NAMESPACES = ("default", "kube-system", "slipstream-system")


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
                if spec.mesh:
                    # The CA, then the agents, then pods: a pod in the mesh starts only
                    # once its agent captures it.
                    net.build_control_plane(self.name, state.nodes.values())
                    mesh.start_ca(state, self.dirs)
                    self._save(state)
                    mesh.wait_ca_ready(state, self.dirs)
                    for node in state.nodes.values():
                        mesh.start_agent(state, self.dirs, node)
                    self._save(state)
                    for node in state.nodes.values():
                        mesh.wait_agent_ready(state, node)
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
        with self._locked():
            found = self.exists() or bool(net.list_netns(model.lab_prefix(self.name)))
            self._teardown()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        return found

    def _teardown(self) -> None:
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
        """Create or change objects on a running lab. Returns kubectl-style lines."""
        with self._locked():
            state = self.load()
            for doc in documents:
                if _kind(doc) == "Lab":
                    try:
                        spec = model.parse_lab_spec(doc.body)
                    except FieldError as exc:
                        raise LabError(str(doc.error(exc))) from exc
                    if spec != LabSpec(
                        spec.name, state.spec.nodes, state.spec.mesh, state.spec.capture
                    ):
                        reason = "a running lab's nodes and mesh cannot change; down and up again"
                        raise LabError(str(doc.error(FieldError("spec", reason))))
            checked = self._check(state, [d for d in documents if _kind(d) != "Lab"])
            work = LabState.from_json(state.to_json())
            try:
                results = self._apply_checked(work, checked)
            except BaseException:
                for key in set(work.pods) - set(state.pods):
                    self._remove_pod(work, key)
                for c in checked:  # the agents go back to what the lab still says
                    self._write_object(state, c.obj.key)
                pods.write_all_hosts(state)
                raise
            self._save(work)
            return results

    def delete(self, kind: str, name: str, namespace: str = "default") -> list[str]:
        with self._locked():
            state = self.load()
            key = ObjectKey.parse(kind, name, namespace)
            if str(key) not in state.manifests:
                raise LabError(f"{key} not found in lab {self.name!r}")
            if key.kind == "Namespace" and key.name in IMPLICIT_NAMESPACES:
                raise LabError(f"namespace {key.name!r} is built in and cannot be deleted")
            doomed = [key]
            if key.kind == "Namespace":
                doomed = [k for k in state.object_keys() if k.namespace == key.name] + [key]
            for k in doomed:
                if k.kind == "Pod":
                    self._remove_pod(state, f"{k.namespace}/{k.name}")
                state.manifests.pop(str(k), None)
                state.live.pop(str(k), None)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._object_file(k))
            pods.write_all_hosts(state)
            self._save(state)
            return [f"{k.kind.lower()}/{k.name} deleted" for k in doomed]

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
            ip = state.live.get(str(key), {}).get("clusterIP")
            if ip:
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
            new_spec = dict(pod.raw.get("spec", {}))
            old_spec = dict(old.get("spec", {}))
            live_node = state.live.get(str(pod.key), {}).get("nodeName")
            if "nodeName" not in new_spec and old_spec.get("nodeName") in (None, live_node):
                old_spec.pop("nodeName", None)
            if new_spec != old_spec:
                changed = sorted(
                    k for k in set(new_spec) | set(old_spec) if new_spec.get(k) != old_spec.get(k)
                )
                raise FieldError(
                    f"spec.{changed[0]}",
                    "a running Pod's spec cannot change, only its labels "
                    "and annotations; delete the pod and apply it again",
                )
            return
        path = pods.pod_path()
        raw_containers = pod.raw.get("spec", {}).get("containers", [])
        for i, raw in enumerate(raw_containers):
            model.container_capabilities(raw, f"spec.containers[{i}]")
        for i, c in enumerate(pod.containers):
            argv = list(c.command) + list(c.args)
            where = (
                f"spec.containers[{i}].command[0]" if c.command else f"spec.containers[{i}].args[0]"
            )
            if shutil.which(argv[0], path=path) is None:
                raise FieldError(where, f"cannot start {argv[0]!r}: not found or not executable")

    def _check_service(self, state: LabState, svc: Service, claimed: dict[str, str]) -> None:
        ident = f"{svc.meta.namespace}/{svc.meta.name}"
        current = state.live.get(str(svc.key), {}).get("clusterIP")
        if current and svc.cluster_ip and svc.cluster_ip != current:
            raise FieldError("spec.clusterIP", f"is immutable: the Service has {current}")
        if svc.cluster_ip and svc.cluster_ip != "None":
            owner = claimed.get(svc.cluster_ip)
            if owner and owner != ident:
                raise FieldError(
                    "spec.clusterIP", f"{svc.cluster_ip} is already used by Service {owner}"
                )
            claimed[svc.cluster_ip] = ident

    # ------------------------------------------------------------ building

    def _apply_checked(self, state: LabState, checked: Sequence[Checked]) -> list[str]:
        """Create or update objects. New pods: sandbox and object first, then (once
        their agent has enrolled them) their containers."""
        order = {"Namespace": 0, "ServiceAccount": 1, "Service": 2, "Pod": 3}
        results: list[str] = []
        created: list[tuple[PodRecord, Pod]] = []
        changed: list[ObjectKey] = []
        for c in sorted(checked, key=lambda c: order.get(c.obj.kind, 4)):
            key = c.obj.key
            existing = str(key) in state.manifests
            if not existing or state.manifests[str(key)] != c.obj.raw:
                changed.append(key)
            live = state.live.setdefault(str(key), {"creationTimestamp": _now_iso()})
            if isinstance(c.obj, Pod) and not existing:
                rec = pods.create_sandbox(state, self.dirs, self.name, c.obj)
                created.append((rec, c.obj))
                live.update(
                    nodeName=rec.node,
                    podIP=rec.ip,
                    hostIP=state.nodes[rec.node].ip,
                    phase="Running",
                    netns=os.path.join(net.netns.NETNS_RUN_DIR, rec.netns),
                )
            elif isinstance(c.obj, Service) and not live.get("clusterIP"):
                ip = c.obj.cluster_ip or model.free_service_ip(state.used_service_ips())
                if ip is None:
                    raise LabError("the service range 10.96.0.0/16 is full")
                live["clusterIP"] = ip
            state.manifests[str(key)] = dict(c.obj.raw)
            verb = "unchanged" if key not in changed else ("configured" if existing else "created")
            results.append(f"{key.kind.lower()}/{key.name} {verb}")
        for key in changed:
            self._write_object(state, key)
        pods.write_all_hosts(state)
        if state.spec.mesh:
            mesh.wait_enrolled(state, [rec for rec, pod in created if self._in_mesh(state, pod)])
        for rec, _ in created:
            pods.start(rec)
        for rec, _ in created:
            pods.wait_started(rec)
        return results

    def _in_mesh(self, state: LabState, pod: Pod) -> bool:
        body = state.object(ObjectKey("Namespace", "", pod.meta.namespace))
        ns = parse_object(body) if body else None
        return decide(pod, ns if isinstance(ns, Namespace) else None).enroll

    def _remove_pod(self, state: LabState, key: str) -> None:
        rec = state.pods.pop(key, None)
        if rec is None:
            return
        # The object goes first, so the agent lets go of the pod while it is torn down.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._object_file(ObjectKey("Pod", rec.namespace, rec.name)))
        pods.remove(state, self.dirs, rec)

    def _object_file(self, key: ObjectKey) -> str:
        return os.path.join(
            self.objects_dir, f"{key.kind.lower()}_{key.namespace or '-'}_{key.name}.yaml"
        )

    def _write_object(self, state: LabState, key: ObjectKey) -> None:
        body = state.object(key)
        path = self._object_file(key)
        if body is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        tmp = os.path.join(self.objects_dir, "." + os.path.basename(path) + ".tmp")
        with open(tmp, "w") as f:
            json.dump(body, f, indent=1)
        os.replace(tmp, path)

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
        """Objects of a kind with their live fields; pods also carry container states."""
        state = self.load()
        kind = canonical_kind(kind)
        if kind == "Endpoints":
            return [
                e
                for e in endpoints_objects(self._snapshot(state))
                if namespace is None or e["metadata"]["namespace"] == namespace
            ]
        out = []
        for key in state.object_keys(kind):
            if namespace is not None and key.namespace and key.namespace != namespace:
                continue
            body = state.object(key)
            assert body is not None
            if key.kind == "Pod":
                rec = state.pods[f"{key.namespace}/{key.name}"]
                live = self.pod_status(rec)
                body["status"]["phase"] = live["phase"]
                body["status"]["containerStatuses"] = live["containers"]
            out.append(body)
        return out

    def _snapshot(self, state: LabState) -> Snapshot:
        """The lab's objects as the agents' store sees them (same endpoint rules)."""
        objects = {}
        for key in state.object_keys():
            body = state.object(key)
            if key.kind == "Pod":
                rec = state.pods[f"{key.namespace}/{key.name}"]
                body["status"]["phase"] = self.pod_status(rec)["phase"]  # type: ignore[index]
            obj = parse_object(body)
            objects[obj.key] = obj
        return Snapshot.build(0, objects)

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


def _kind(doc: Document) -> str | None:
    return doc.body.get("kind") if isinstance(doc.body, dict) else None
