"""The lab's cluster control plane: its Kubernetes API server and the lab's kubelet, as processes.

The API server (agent/lab/apiserver) serves the lab's objects over HTTPS with the
lab's own CA and bearer tokens. It listens in the control-plane namespace
(172.30.0.250:6443, which every node and pod reaches through the bridge) and on
127.0.0.1 of the machine (a port chosen at `lab up`, kept for the lab's life), so
`KUBECONFIG=$(slipstream lab kubeconfig) kubectl ...` works. Its state file lives
in the lab's directory: a restarted server keeps every object and keeps counting
resourceVersions up from where it stopped.

The process itself lives in the machine's network namespace (it opens its
control-plane listener inside that namespace), so it is stopped by its recorded
pid, not by the namespace sweep of `lab down`. The same holds for the kubelet
(`slipstream lab kubelet`), which needs the machine's namespace to build pods.

How the components reach the server, and as whom: agent/lab/access.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time

from agent.lab.apiserver import launch
from agent.lab.apiserver.errors import ApiServerError
from agent.state import crds

from . import access, model, net, pods
from .access import api_dir, ca_path, kubeconfig_path, local_url
from .errors import LabError
from .model import LabDirs, LabState, ProcessRecord

GATEWAY_API_CRDS = os.path.join(os.path.dirname(__file__), "crds.yaml")
"""The Gateway API kinds the gateway reads (Gateway API's own schemas, trimmed), preloaded
into every lab's API server with the policy kinds' CRDs, which come from the models
(agent/state/crds.py, the same as deploy/crds/), and the components' RBAC (access.RBAC)."""
READY_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_policy_crds(directory: str) -> str:
    """The policy kinds' CRDs, generated from the models, as one file to preload."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "policy-crds.yaml")
    with open(path, "w") as f:
        f.write("---\n".join(crds.files().values()))
    return path


def apiserver_argv(state: LabState, dirs: LabDirs, local_port: int) -> list[str]:
    d = api_dir(dirs)
    policy_crds = write_policy_crds(d)
    opts = launch.Options(
        state=f"{d}/state.json",
        listens=[
            launch.Listen("127.0.0.1", local_port),
            launch.Listen("0.0.0.0", access.API_PORT, model.control_plane_netns(state.name)),
        ],
        cert_dir=f"{d}/certs",
        preload=[policy_crds, GATEWAY_API_CRDS, access.RBAC],
        advertise=access.in_cluster_address(),
        bookmark_interval=10.0,
    )
    return launch.command(opts)


def start_apiserver(state: LabState, dirs: LabDirs) -> None:
    os.makedirs(api_dir(dirs), mode=0o700, exist_ok=True)
    argv = apiserver_argv(state, dirs, _free_port())
    spawn(state, dirs, "apiserver", argv)


def restart_apiserver(state: LabState, dirs: LabDirs) -> None:
    """Start the API server again with its first command line (same port, same state)."""
    rec = state.processes["apiserver/apiserver"]
    if net.alive(rec.pid, rec.starttime):
        raise LabError("the lab's API server is running")
    spawn(state, dirs, "apiserver", rec.argv)


def spawn(state: LabState, dirs: LabDirs, kind: str, argv: list[str]) -> None:
    """A control-plane process in the machine's network namespace, recorded by pid."""
    if kind == "apiserver":  # it writes a fresh one once it listens: wait_apiserver's marker
        with contextlib.suppress(FileNotFoundError):
            os.unlink(kubeconfig_path(dirs))
    log_path = f"{dirs.logs}/{kind}.log"
    proc = pods.spawn(argv, "", log_path)
    state.processes[f"{kind}/{kind}"] = ProcessRecord(
        kind, kind, "", proc.pid, net.proc_starttime(proc.pid) or 0, argv, log_path
    )


def wait_apiserver(state: LabState, dirs: LabDirs) -> None:
    """Wait for the server's kubeconfig (written once it listens) and its /readyz."""
    rec = state.processes["apiserver/apiserver"]
    deadline = time.monotonic() + READY_TIMEOUT
    while not os.path.exists(kubeconfig_path(dirs)):
        if not net.alive(rec.pid, rec.starttime):
            raise LabError(f"the lab's API server exited during start:\n{pods.tail(rec.log)}")
        if time.monotonic() > deadline:
            raise LabError(f"the lab's API server did not start:\n{pods.tail(rec.log)}")
        time.sleep(0.05)
    try:
        launch.wait_ready(local_url(dirs), ca_path(dirs), max(deadline - time.monotonic(), 1.0))
    except ApiServerError as exc:
        raise LabError(f"{exc}; its log ends:\n{pods.tail(rec.log)}") from exc


def running(state: LabState, kind: str) -> bool:
    """Whether the control-plane process of `kind` (kubelet, apiserver) is alive."""
    rec = state.processes.get(f"{kind}/{kind}")
    return rec is not None and net.alive(rec.pid, rec.starttime)


def stop(state: LabState | None, kinds: tuple[str, ...] = ("kubelet", "apiserver")) -> None:
    """Stop the control-plane processes that live outside the lab's namespaces (TERM, then
    KILL after a grace period), kubelet first so it builds nothing more."""
    if state is None:
        return
    for kind in kinds:
        rec = state.processes.get(f"{kind}/{kind}")
        if rec is None or rec.netns:
            continue
        if net.alive(rec.pid, rec.starttime):
            os.kill(rec.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while net.alive(rec.pid, rec.starttime) and time.monotonic() < deadline:
                pods.reap()
                time.sleep(0.02)
            if net.alive(rec.pid, rec.starttime):
                os.kill(rec.pid, signal.SIGKILL)
        pods.reap()


def kubelet_argv(lab: str, root: str) -> list[str]:
    return [sys.executable, "-m", "agent", "lab", "kubelet", "--name", lab, "--root", root]
