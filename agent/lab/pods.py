"""Lab pods: a sandbox (namespace, veth, address) and the supervisor that runs its containers.

Creating a pod is two steps so the lab can wait in between: the sandbox and
the pod's object first (the node agent may now enroll it), the containers
after. Nothing here decides anything; lab.py calls these in order.

What a pod's processes can reach of the machine is the supervisor's job (see
supervisor.py); this module tells it what to show: nothing of the lab's directory,
where node credentials and the CA's keys live, except, for a pod annotated for mesh
credentials, its own credentials (and, with the file source, the objects a mesh client
reads).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any

from agent.ca import credentials
from agent.ca.credentials import WORKLOAD
from agent.common import netns
from agent.common.errors import SlipstreamError
from agent.state.objects import Container, Pod

from . import access, cnirun, model, net
from .errors import LabError
from .model import LabDirs, LabState, NodeRecord, PodRecord

log = logging.getLogger("agent.lab")

POD_START_TIMEOUT = 10.0
CREDENTIAL_TTL = dt.timedelta(days=365)
"""Of the credentials the lab mints: longer than any lab lives."""
CREDENTIAL_ID = "credential-id"
WRITABLE = ("/tmp", "/var/tmp")
"""The machine's directories a pod may write (scratch space; everything else of the
machine's filesystem is read-only in a pod)."""


def code_paths() -> list[str]:
    """What the lab's components run: the Slipstream checkout or install, its environment and
    the interpreter's. Read-only in every pod even where it lies under a WRITABLE directory (a
    clone under /tmp): a pod must never write the code the agents run."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return sorted({os.path.realpath(p) for p in (here, sys.prefix, sys.base_prefix)})


CNI_RESULT = "cni.json"
"""In a pod's directory: the CNI ADD's container ID and result, for DEL (libcni's cache)."""
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Children this process started; polled so they never linger as zombies in a
# long-lived caller (the test runner). A CLI caller exits and init adopts them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def spawn(argv: list[str], netns_name: str, log_path: str) -> subprocess.Popen[bytes]:
    """Start a long-lived process inside a lab namespace (or, with "", the caller's),
    detached from the caller."""
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=netns.preexec(netns_name) if netns_name else None,
            start_new_session=True,
            cwd="/",
        )
    _CHILDREN[proc.pid] = proc
    return proc


def pod_path() -> str:
    """PATH inside pods: this interpreter's directory first, so `python3` and
    `slipstream` in a manifest mean the installed Slipstream."""
    return f"{os.path.dirname(sys.executable)}:{SYSTEM_PATH}"


def create_sandbox(state: LabState, dirs: LabDirs, lab: str, pod: Pod, uid: str = "") -> PodRecord:
    """Namespace, veth, address and the files the supervisor will need; no process yet."""
    node = state.nodes[pod.node_name] if pod.node_name else state.choose_node()
    ns, name = pod.meta.namespace, pod.meta.name
    rec = PodRecord(
        ns,
        name,
        node.name,
        "",
        model.pod_netns(lab, ns, name),
        "",
        os.path.join(dirs.pods, f"{ns}_{name}"),
        time.time(),
        uid,
    )
    if pod.spec.host_network:
        # The node's own network: no namespace, no CNI (as a kubelet), the node's address.
        rec.netns, rec.ip, rec.host_network = node.netns, node.ip, True
        state.pods[f"{ns}/{name}"] = rec
        os.makedirs(rec.dir, exist_ok=True)
    elif state.spec.pod_network == "cni":
        _cni_add(state, dirs, node, rec)
    else:
        host = model.free_pod_host(state.used_pod_ips(), node.index)
        if host is None:
            raise LabError(f"node {node.name} has no free pod address left")
        rec.ip, rec.veth = model.pod_ip(node.index, host), model.host_veth(ns, name)
        state.pods[f"{ns}/{name}"] = rec
        net.build_pod(node, rec)
        os.makedirs(rec.dir, exist_ok=True)
    fields = {
        "metadata.name": name,
        "metadata.namespace": ns,
        "spec.nodeName": node.name,
        "spec.serviceAccountName": pod.service_account,
        "status.podIP": rec.ip,
        "status.hostIP": node.ip,
    }
    write_hosts(state, rec)
    extra = mesh_credentials(state, dirs, pod, rec)
    raw_containers = pod.raw.get("spec", {}).get("containers", [])
    spec = {
        "pod": f"{ns}/{name}",
        "hostname": name,
        "hosts": os.path.join(rec.dir, "hosts"),
        "restartPolicy": pod.restart_policy,
        "sandbox": {
            "hide": os.path.dirname(dirs.dir),
            "show": _shown(state, dirs, rec) if extra else [],
            "writable": list(WRITABLE),
            "protect": code_paths(),
        },
        "containers": [
            _container_spec(rec, c, fields, extra, raw, f"spec.containers[{i}]")
            for i, (c, raw) in enumerate(zip(pod.containers, raw_containers, strict=True))
        ],
    }
    with open(os.path.join(rec.dir, "spec.json"), "w") as f:
        json.dump(spec, f, indent=1)
    return rec


def _shown(state: LabState, dirs: LabDirs, rec: PodRecord) -> list[str]:
    """What of the lab's directory a mesh-credential pod sees: its own credentials, and
    the manifest directory when the components read that instead of the API."""
    return [dirs.objects, mesh_dir(rec)] if state.spec.source == "file" else [mesh_dir(rec)]


def mesh_dir(rec: PodRecord) -> str:
    """What a mesh-credential pod is given: its token and the trust bundle to start with."""
    return os.path.join(rec.dir, "mesh")


def mesh_credentials(state: LabState, dirs: LabDirs, pod: Pod, rec: PodRecord) -> dict[str, str]:
    """For a pod annotated MESH_CREDENTIALS: mint a workload credential bound to this pod
    (the CA signs only its own service account's identity with it, while the pod runs),
    and return the environment that points the pod at it: what a cluster would mount as
    the pod's service-account token. The node's credential never goes to a pod."""
    if pod.meta.annotations.get(model.MESH_CREDENTIALS) != "true" or not state.spec.mesh:
        return {}
    td = state.spec.trust_domain
    ns, sa = pod.meta.namespace, pod.service_account
    directory = mesh_dir(rec)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    token = os.path.join(directory, "token")
    record = credentials.mint(
        dirs.credentials,
        WORKLOAD,
        token,
        ttl=CREDENTIAL_TTL,
        namespace=ns,
        service_account=sa,
        pod=pod.meta.name,
    )
    with open(os.path.join(directory, CREDENTIAL_ID), "w") as f:
        f.write(record.id)
    shutil.copyfile(dirs.bundle, os.path.join(directory, "bundle.pem"))
    return {
        "SLIPSTREAM_CA": model.ca_address(),
        "SLIPSTREAM_CA_ROOT": os.path.join(directory, "bundle.pem"),
        "SLIPSTREAM_CA_TOKEN_FILE": token,
        "SLIPSTREAM_IDENTITY": f"spiffe://{td}/ns/{ns}/sa/{sa}",
        "SLIPSTREAM_TRUST_DOMAIN": td,
        **_source_env(state, dirs, pod, directory),
    }


def _source_env(state: LabState, dirs: LabDirs, pod: Pod, directory: str) -> dict[str, str]:
    """Where a mesh client reads the cluster: with the API, a kubeconfig holding its own
    service account's token bound to this pod (what a kubelet projects into a pod);
    what that account may read is the cluster's RBAC, as anywhere."""
    kubeconfig = os.path.join(directory, "kubeconfig")
    flags = access.source_flags(state, dirs, kubeconfig)
    if state.spec.source != "kube":
        return {"SLIPSTREAM_SOURCE": flags[1]}
    access.write_component_kubeconfig(
        dirs, kubeconfig, pod.meta.namespace, pod.service_account, pod=pod.meta.name
    )
    return {"SLIPSTREAM_SOURCE": "kube", "KUBECONFIG": kubeconfig}


def revoke_mesh_credentials(dirs: LabDirs, rec: PodRecord) -> None:
    """A deleted pod's credential is revoked (the CA would refuse it anyway once the pod
    is gone from the objects: it is bound to the pod)."""
    try:
        with open(os.path.join(mesh_dir(rec), CREDENTIAL_ID)) as f:
            cid = f.read().strip()
    except FileNotFoundError:
        return
    try:
        credentials.revoke(dirs.credentials, [cid])
    except SlipstreamError as exc:
        log.warning("could not revoke a deleted pod's credential", extra={"error": str(exc)})


def _container_spec(
    rec: PodRecord,
    c: Container,
    fields: dict[str, str],
    extra: dict[str, str],
    raw: dict[str, Any],
    where: str,
) -> dict[str, Any]:
    env = {
        "PATH": pod_path(),
        "HOSTNAME": rec.name,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    for e in c.env:
        env[e.name] = fields[e.field_ref] if e.field_ref else (e.value or "")
    caps = model.container_capabilities(raw, where)
    return {
        "name": c.name,
        "argv": [*c.command, *c.args],
        "env": env,
        "log": os.path.join(rec.dir, f"{c.name}.log"),
        "capabilities": [model.CAPABILITIES.index(n) for n in caps],
    }


def start(rec: PodRecord) -> None:
    spawn(
        [sys.executable, "-m", "agent.lab.supervisor", rec.dir],
        rec.netns,
        os.path.join(rec.dir, "supervisor.log"),
    )


def wait_started(rec: PodRecord) -> None:
    status_path = os.path.join(rec.dir, "status.json")
    deadline = time.monotonic() + POD_START_TIMEOUT
    while time.monotonic() < deadline:
        status = read_json(status_path)
        if status is not None:
            if status.get("error"):
                raise LabError(f"Pod {rec.namespace}/{rec.name}: {status['error']}")
            return
        time.sleep(0.02)
    raise LabError(
        f"Pod {rec.namespace}/{rec.name}: its containers did not start within "
        f"{POD_START_TIMEOUT:.0f}s; the pod supervisor said:\n"
        f"{tail(os.path.join(rec.dir, 'supervisor.log'))}"
    )


def _node_cni(dirs: LabDirs, node: NodeRecord) -> cnirun.NodeCni:
    return cnirun.NodeCni.under(dirs.cni(node.name), node.netns)


def _cni_pod(rec: PodRecord, container_id: str) -> cnirun.PodNetwork:
    return cnirun.PodNetwork(
        container_id, netns.path_of(rec.netns), rec.namespace, rec.name, rec.uid
    )


def _cni_add(state: LabState, dirs: LabDirs, node: NodeRecord, rec: PodRecord) -> None:
    """The pod's network from the node's CNI chain, as a runtime makes a sandbox: the
    namespace, then ADD through every plugin (slipstream-cni returns once the agent has
    decided). A failed ADD leaves nothing behind (DEL, namespace removed)."""
    os.makedirs(rec.dir, exist_ok=True)
    net.add_netns(rec.netns)
    container_id = uuid.uuid4().hex
    try:
        result = cnirun.add(_node_cni(dirs, node), _cni_pod(rec, container_id))
        rec.ip, rec.veth = cnirun.pod_address(result), cnirun.host_interface(result)
    except BaseException:
        with contextlib.suppress(SlipstreamError):
            cnirun.delete(_node_cni(dirs, node), _cni_pod(rec, container_id), None)
        net.delete_netns(rec.netns)
        shutil.rmtree(rec.dir, ignore_errors=True)
        raise
    with open(os.path.join(rec.dir, CNI_RESULT), "w") as f:
        json.dump({"containerID": container_id, "result": result}, f)
    state.pods[f"{rec.namespace}/{rec.name}"] = rec


def _cni_del(dirs: LabDirs, node: NodeRecord, rec: PodRecord) -> None:
    cached = read_json(os.path.join(rec.dir, CNI_RESULT))
    if cached is None:
        return
    try:
        cnirun.delete(_node_cni(dirs, node), _cni_pod(rec, cached["containerID"]), cached["result"])
    except SlipstreamError as exc:
        log.warning(
            "CNI DEL failed", extra={"pod": f"{rec.namespace}/{rec.name}", "error": str(exc)}
        )


def remove(state: LabState, dirs: LabDirs, rec: PodRecord) -> None:
    """Stop the pod's processes, revoke its credential, remove its namespace and veth (DEL
    through the CNI chain first, with `podNetwork: cni`). A hostNetwork pod's namespace is
    its node's: only its own processes go (its supervisor is pid 1 of their PID namespace)."""
    if rec.host_network:
        sup = supervisor_pid(rec)
        if sup:
            net.stop_pids([sup])
        revoke_mesh_credentials(dirs, rec)
        reap()
        shutil.rmtree(rec.dir, ignore_errors=True)
        return
    net.kill_in([rec.netns])
    revoke_mesh_credentials(dirs, rec)
    reap()
    node = state.nodes.get(rec.node)
    if node is not None and state.spec.pod_network == "cni":
        _cni_del(dirs, node, rec)
    if node is not None:
        # Deleting the node's end takes the pod's end with it at once, even if
        # something still holds the pod's namespace open for a moment.
        net.delete_link(node.netns, rec.veth)
    net.delete_netns(rec.netns)
    shutil.rmtree(rec.dir, ignore_errors=True)


def status(rec: PodRecord) -> dict[str, Any]:
    st = read_json(os.path.join(rec.dir, "status.json"))
    sup_alive = bool(st) and net.alive(int(st["supervisorPid"]))  # type: ignore[index]
    return model.pod_phase(st, sup_alive)


def supervisor_pid(rec: PodRecord) -> int:
    st = read_json(os.path.join(rec.dir, "status.json")) or {}
    pid = int(st.get("supervisorPid", 0))
    return pid if pid and net.alive(pid) else 0


def write_hosts(state: LabState, rec: PodRecord) -> None:
    # In place, never by rename: running pods see this file through a bind mount.
    with open(os.path.join(rec.dir, "hosts"), "a+") as f:
        f.seek(0)
        content = model.hosts_file(state, rec)
        if f.read() != content:
            f.seek(0)
            f.truncate()
            f.write(content)


def write_all_hosts(state: LabState) -> None:
    for rec in state.pods.values():
        if os.path.isdir(rec.dir):
            write_hosts(state, rec)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"
