"""How the lab's processes reach its API server, and as whom.

The machine's admin (the user's kubectl, `lab` commands, the lab's kubelet) uses the
admin kubeconfig on 127.0.0.1. The components (CA, agents, mesh-client pods) reach
the server at its in-cluster address (172.30.0.250:6443) with a token of their own
service account, got by TokenRequest as a kubelet gets a projected token: the CA and
agents as slipstream-system/slipstream-{ca,agent} (deploy/base/rbac.yaml, which the lab
loads, says what they may do), a mesh-client pod as its own service account, bound
to the pod so that it dies with it. Where the components read the cluster from
(`spec.mesh.source` of the Lab: the API, or the manifest directory the lab writes
from it for the file source) is decided here, in `source_flags`.
"""

from __future__ import annotations

import os

import yaml

from agent.lab.apiserver import launch
from agent.lab.apiserver.errors import ApiServerError
from agent.lab.apiserver.tls import kubeconfig, write_kubeconfig

from . import model
from .errors import LabError
from .kubeapi import KubeClient
from .model import LabDirs, LabState

API_PORT = 6443
SYSTEM_NAMESPACE = "slipstream-system"
RBAC = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "base", "rbac.yaml")
"""The components' service accounts and roles: the install's own file."""
TOKEN_TTL = 365 * 24 * 3600
"""Components' tokens live as long as a lab may (no kubelet here rotates them)."""


def api_dir(dirs: LabDirs) -> str:
    return f"{dirs.dir}/apiserver"


def kubeconfig_path(dirs: LabDirs) -> str:
    """The admin kubeconfig for the machine (https://127.0.0.1:<port>)."""
    return f"{api_dir(dirs)}/certs/kubeconfig"


def ca_path(dirs: LabDirs) -> str:
    return f"{api_dir(dirs)}/certs/ca.crt"


def in_cluster_address() -> str:
    return f"{model.node_ip(model.CONTROL_PLANE_INDEX)}:{API_PORT}"


def local_url(dirs: LabDirs) -> str:
    try:
        with open(kubeconfig_path(dirs)) as f:
            doc = yaml.safe_load(f)
        return str(doc["clusters"][0]["cluster"]["server"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError) as exc:
        raise LabError(
            f"the lab's kubeconfig {kubeconfig_path(dirs)} is missing or damaged: {exc}"
        ) from exc


def admin_token(dirs: LabDirs) -> str:
    try:
        with open(f"{api_dir(dirs)}/certs/admin.token") as f:
            return f.read().strip()
    except OSError as exc:
        raise LabError(f"the lab's API server has no admin token yet: {exc}") from exc


def client(dirs: LabDirs) -> KubeClient:
    return KubeClient(local_url(dirs), ca_path(dirs), admin_token(dirs))


def source_flags(state: LabState, dirs: LabDirs, kubeconfig_file: str) -> list[str]:
    """A component's `--source` (and `--kubeconfig`) flags."""
    if state.spec.source == "file":
        return ["--source", f"file:{dirs.objects}"]
    return ["--source", "kube", "--kubeconfig", kubeconfig_file]


def write_component_kubeconfig(
    dirs: LabDirs, path: str, namespace: str, service_account: str, pod: str | None = None
) -> None:
    """A kubeconfig for the in-cluster address with a token of the service account."""
    try:
        token = launch.request_token(
            local_url(dirs),
            ca_path(dirs),
            admin_token(dirs),
            namespace,
            service_account,
            pod=pod,
            ttl=TOKEN_TTL,
        )
    except ApiServerError as exc:
        raise LabError(str(exc)) from exc
    write_kubeconfig(path, kubeconfig(f"https://{in_cluster_address()}", ca_path(dirs), token))
