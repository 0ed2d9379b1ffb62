"""The mesh processes the lab runs: one agent per node (later the CA, waypoints, gateways).

Each runs inside its node's namespace, detached from the command that started
it, with its log under the lab's directory. The lab talks to them over HTTP
from inside that namespace: readiness, and each pod's enrollment state.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence

from .. import netns
from ..enrollment import ENROLLED
from ..errors import LabError
from . import model, net, pods
from .model import LabState, NodeRecord, PodRecord, ProcessRecord

READY_TIMEOUT = 30.0
ENROLL_TIMEOUT = 15.0
ADMIN = "http://127.0.0.1:15000"
READY = "http://127.0.0.1:15021/healthz/ready"


def node_http(lab: str, node: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET a URL from inside a node's namespace (the agents' admin ports live there)."""

    def _get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return netns.call_in(model.node_netns(lab, node), _get)


def agent_argv(
    lab_dir: str, objects_dir: str, node: NodeRecord, extra: Sequence[str] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent",
        "agent",
        "--node",
        node.name,
        "--source",
        f"file:{objects_dir}",
        "--log-format",
        "json",
        "--state-dir",
        os.path.join(lab_dir, "agents", node.name),
        *extra,
    ]


def start_agent(
    state: LabState,
    lab_dir: str,
    objects_dir: str,
    logs_dir: str,
    node: NodeRecord,
    extra: Sequence[str] = (),
) -> None:
    argv = agent_argv(lab_dir, objects_dir, node, extra)
    log_path = os.path.join(logs_dir, f"agent-{node.name}.log")
    proc = pods.spawn(argv, node.netns, log_path)
    state.processes[f"agent/{node.name}"] = ProcessRecord(
        "agent", node.name, node.netns, proc.pid, net.proc_starttime(proc.pid) or 0, argv, log_path
    )


def agent_alive(state: LabState, node: str) -> bool:
    rec = state.processes.get(f"agent/{node}")
    return rec is not None and net.alive(rec.pid, rec.starttime)


def wait_agent_ready(state: LabState, node: NodeRecord) -> None:
    rec = state.processes[f"agent/{node.name}"]
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not net.alive(rec.pid, rec.starttime):
            raise LabError(
                f"the agent on node {node.name} exited during start:\n{pods.tail(rec.log)}"
            )
        try:
            if node_http(state.name, node.name, READY, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise LabError(
        f"the agent on node {node.name} was not ready within {READY_TIMEOUT:.0f}s:\n"
        + pods.tail(rec.log)
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
        raise LabError(
            f"Pod {key} was not enrolled by its agent within {ENROLL_TIMEOUT:.0f}s ({why})"
        )
