"""The mesh processes the lab runs: the CA, one agent per node (later waypoints, gateways).

Each runs inside a lab namespace (the CA in the control-plane one, agents in
their nodes), detached from the command that started it, with its log under
the lab's directory. The lab mints each node's CA credential, hands agents the
CA's trust bundle, and talks to them over HTTP from inside their namespace:
readiness, and each pod's enrollment state.

A node's credential goes to its agent only (agents/<node>/ca-token, 0600 in a 0700
directory, under the lab's directory that pods cannot see: see pods.py); a pod annotated
for mesh credentials gets a workload credential of its own (`pods.mesh_credentials`).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence

from agent.ca import credentials
from agent.ca.authority import RootStore
from agent.ca.credentials import NODE
from agent.common import constants, netns
from agent.common.errors import SlipstreamError
from agent.state.enrollment import ENROLLED

from . import access, cnirun, model, net, pods
from .errors import LabError
from .model import LabDirs, LabState, NodeRecord, PodRecord, ProcessRecord

READY_TIMEOUT = 30.0
ENROLL_TIMEOUT = 15.0
ADMIN = f"http://127.0.0.1:{constants.ADMIN_PORT}"
READY = f"http://127.0.0.1:{constants.READY_PORT}/healthz/ready"


def http_get(netns_name: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET a URL from inside a lab namespace (TLS is not verified: this is a probe)."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE

    def _get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=insecure) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return netns.call_in(netns_name, _get)


def node_http(lab: str, node: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET a URL from inside a node's namespace (the agents' admin ports live there)."""
    return http_get(model.node_netns(lab, node), url, timeout)


def _spawn(
    state: LabState, kind: str, name: str, netns_name: str, argv: list[str], log_path: str
) -> None:
    proc = pods.spawn(argv, netns_name, log_path)
    state.processes[f"{kind}/{name}"] = ProcessRecord(
        kind, name, netns_name, proc.pid, net.proc_starttime(proc.pid) or 0, argv, log_path
    )


def _wait(state: LabState, key: str, ready: Callable[[], bool], what: str) -> None:
    """Until `ready()`, while the process `key` lives, for at most READY_TIMEOUT."""
    rec = state.processes[key]
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not net.alive(rec.pid, rec.starttime):
            raise LabError(f"{what} exited during start:\n{pods.tail(rec.log)}")
        if ready():
            return
        time.sleep(0.05)
    raise LabError(f"{what} was not ready within {READY_TIMEOUT:.0f}s:\n{pods.tail(rec.log)}")


def _serving(netns_name: str, url: str) -> Callable[[], bool]:
    def ok() -> bool:
        try:
            return http_get(netns_name, url, timeout=1.0)[0] == 200
        except OSError:
            return False

    return ok


# ------------------------------------------------------------------ the CA


def start_ca(state: LabState, dirs: LabDirs) -> None:
    """Mint every node's credential and start the CA in the control-plane namespace."""
    os.makedirs(dirs.ca, mode=0o700, exist_ok=True)
    for node in state.nodes:
        os.makedirs(dirs.agent(node), mode=0o700, exist_ok=True)
        credentials.mint(
            dirs.credentials, NODE, node_token_path(dirs, node), ttl=pods.CREDENTIAL_TTL, node=node
        )
    argv = [
        sys.executable,
        "-m",
        "agent",
        "ca",
        "serve",
        "--root-dir",
        f"{dirs.ca}/roots",
        *component_source(state, dirs, f"{dirs.ca}/kubeconfig", "slipstream-ca"),
        "--credentials",
        dirs.credentials,
        "--listen",
        f"0.0.0.0:{model.CA_PORT}",
        "--trust-domain",
        state.spec.trust_domain,
        "--max-ttl",
        state.spec.certificate_ttl,
        "--log-format",
        "json",
    ]
    _spawn(state, "ca", "ca", model.control_plane_netns(state.name), argv, f"{dirs.logs}/ca.log")


def wait_ca_ready(state: LabState, dirs: LabDirs) -> None:
    _wait(
        state,
        "ca/ca",
        _serving(
            model.control_plane_netns(state.name),
            f"https://127.0.0.1:{model.CA_PORT}/healthz/ready",
        ),
        "the CA",
    )
    try:
        roots = RootStore(f"{dirs.ca}/roots")
        roots.load(create=False)
    except SlipstreamError as exc:
        raise LabError(f"the CA is up but its roots are not readable: {exc}") from exc
    with open(dirs.bundle, "w") as f:
        f.write(roots.bundle_pem())


def component_source(
    state: LabState, dirs: LabDirs, kubeconfig: str, service_account: str
) -> list[str]:
    """The `--source` flags of a CA or agent; with the API, a kubeconfig of its own
    service account in slipstream-system (made once, kept across restarts)."""
    if state.spec.source == "kube" and not os.path.exists(kubeconfig):
        access.write_component_kubeconfig(
            dirs, kubeconfig, access.SYSTEM_NAMESPACE, service_account
        )
    return access.source_flags(state, dirs, kubeconfig)


def node_token_path(dirs: LabDirs, node: str) -> str:
    """The node's credential: its agent's alone."""
    return f"{dirs.agent(node)}/ca-token"


# ------------------------------------------------------------------ agents


def agent_argv(
    state: LabState, dirs: LabDirs, node: NodeRecord, extra: Sequence[str] = ()
) -> list[str]:
    spec = state.spec
    return [
        sys.executable,
        "-m",
        "agent",
        "agent",
        "--node",
        node.name,
        *component_source(state, dirs, f"{dirs.agent(node.name)}/kubeconfig", "slipstream-agent"),
        "--log-format",
        "json",
        "--state-dir",
        dirs.agent(node.name),
        "--capture",
        spec.capture,
        "--ca",
        model.ca_address(),
        "--ca-root",
        dirs.bundle,
        "--ca-token-file",
        node_token_path(dirs, node.name),
        "--trust-domain",
        spec.trust_domain,
        "--cert-ttl",
        spec.certificate_ttl,
        "--bundle-refresh",
        spec.bundle_refresh,
        *(["--cni-socket", cni_socket(dirs, node.name)] if spec.pod_network == "cni" else []),
        *spec.agent_args,
        *extra,
    ]


def start_agent(
    state: LabState, dirs: LabDirs, node: NodeRecord, extra: Sequence[str] = ()
) -> None:
    _spawn(
        state,
        "agent",
        node.name,
        node.netns,
        agent_argv(state, dirs, node, extra),
        f"{dirs.logs}/agent-{node.name}.log",
    )


def cni_socket(dirs: LabDirs, node: str) -> str:
    return f"{dirs.cni(node)}/cni.sock"


def cni_install_argv(dirs: LabDirs, node: str) -> list[str]:
    """The DaemonSet's install step (deploy/base/agent.yaml, container cni-install), with the
    lab node's directories for the host's."""
    cni = cnirun.NodeCni.under(dirs.cni(node), "")
    return [
        sys.executable, "-m", "agent", "cni", "install",
        "--cni-bin-dir", cni.bin_dir, "--cni-conf-dir", cni.conf_dir,
        "--state-dir", f"{dirs.cni(node)}/install", "--socket", cni_socket(dirs, node),
        "--log-format", "json",
    ]  # fmt: skip


def start_cni_install(state: LabState, dirs: LabDirs, node: NodeRecord) -> None:
    """Run the install step on the node and wait until slipstream-cni is chained."""
    _spawn(
        state,
        "cni-install",
        node.name,
        node.netns,
        cni_install_argv(dirs, node.name),
        f"{dirs.logs}/cni-install-{node.name}.log",
    )
    conf_dir = cnirun.NodeCni.under(dirs.cni(node.name), "").conf_dir
    _wait(
        state,
        f"cni-install/{node.name}",
        lambda: cnirun.chained(conf_dir),
        f"the CNI install step on node {node.name} (slipstream-cni chained)",
    )


def agent_alive(state: LabState, node: str) -> bool:
    rec = state.processes.get(f"agent/{node}")
    return rec is not None and net.alive(rec.pid, rec.starttime)


def wait_agent_ready(state: LabState, node: NodeRecord) -> None:
    _wait(
        state, f"agent/{node.name}", _serving(node.netns, READY), f"the agent on node {node.name}"
    )


def workloads(state: LabState, node: str) -> dict[str, dict[str, object]]:
    """The agent's view of its pods, by "namespace/name"."""
    status, body = node_http(state.name, node, f"{ADMIN}/config_dump")
    if status != 200:
        return {}
    return {f"{w['namespace']}/{w['name']}": w for w in json.loads(body).get("workloads", [])}


def wait_enrolled(state: LabState, recs: Iterable[PodRecord]) -> None:
    """Hold pod start until each pod's agent has captured it, so no early packet escapes
    (what the CNI plugin does on a real node)."""
    waiting = {f"{r.namespace}/{r.name}": r for r in recs}
    for rec in waiting.values():
        if not agent_alive(state, rec.node):
            raise LabError(
                f"Pod {rec.namespace}/{rec.name} must be captured by the agent on node "
                f"{rec.node}, which is not running (`slipstream lab agent start {rec.node}`)"
            )
    deadline = time.monotonic() + ENROLL_TIMEOUT
    last: dict[str, dict[str, object]] = {}
    while waiting and time.monotonic() < deadline:
        for node in {r.node for r in waiting.values()}:
            try:
                last.update(workloads(state, node))
            except (OSError, ValueError):
                continue
        waiting = {k: r for k, r in waiting.items() if last.get(k, {}).get("state") != ENROLLED}
        if waiting:
            time.sleep(0.03)
    if waiting:
        key = next(iter(waiting))
        seen = last.get(key, {})
        why = f"{seen.get('state')}: {seen.get('reason')}" if seen else "the agent has not seen it"
        agent = state.processes[f"agent/{waiting[key].node}"]
        raise LabError(
            f"Pod {key} was not enrolled by its agent within {ENROLL_TIMEOUT:.0f}s ({why}); "
            f"the agent's log ends:\n{pods.tail(agent.log)}"
        )
