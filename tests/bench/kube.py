"""Kube source benchmark: an agent's first sync against an API server holding 10,000 pods and
2,000 Services, its memory, and `kubectl apply` of a policy → enforced on every node.

1. First sync. The lab API server is started with those objects preloaded (pods spread
   over 100 nodes, 100 on the agent's node; each Service selects 5 pods, so the server
   keeps 2,000 EndpointSlices too). Then a real agent process (`--source kube`, iptables
   capture, which loads nothing until a pod enrolls) is timed from its start to its
   readiness (every kind listed and in the store, the enroller caught up), and its RSS
   read then. Twice: reflecting only its node's pods and every pod (the default).
2. Apply to enforcement, in a lab of three nodes whose agents read its API server
   (`--source kube`, every pod), with the same 10,000 pods (bound to 100 nodes that are
   not the lab's, so nothing runs them) and 2,000 Services created through the API:
   from `kubectl apply` of a DENY policy until a probe in the client pod sees
   connections to a pod on every node refused, and back after `kubectl delete`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from agent.common.manifest import load_text
from agent.lab import access
from agent.lab.lab import Lab
from agent.node.writeback import ANNOTATION_CAPTURE
from agent.state.enrollment import ENROLLED, LABEL_DATAPLANE
from tests.bench import authz
from tests.bench.common import ROUNDS, svg_bars, table, write_report
from tests.functional.apikit import DATA, ApiServerProc, free_port
from tests.lab.labkit import config_dump, new_lab_name

PODS, SERVICES, NODES = 10_000, 2_000, 100


def objects(node_prefix: str = "n") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"team-{t}"}}
        for t in range(20)
    ]
    for i in range(PODS):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"p{i}",
                    "namespace": f"team-{i % 20}",
                    "labels": {"app": f"svc-{i % SERVICES}"},
                },
                "spec": {
                    "nodeName": f"{node_prefix}{i % NODES}",
                    "containers": [
                        {
                            "name": "app",
                            "image": "app",
                            "command": ["app"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ],
                },
            }
        )
    for s in range(SERVICES):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{s}", "namespace": f"team-{s % 20}"},
                "spec": {
                    "selector": {"app": f"svc-{s}"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            }
        )
    return out


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def first_sync(api: ApiServerProc, root: Path, *extra: str) -> tuple[float, float]:
    ready = free_port()
    argv = [
        sys.executable, "-m", "agent", "agent", "--node", "n0", "--source", "kube",
        "--kubeconfig", api.kubeconfig, "--admin", f"127.0.0.1:{free_port()}",
        "--ready", f"127.0.0.1:{ready}", "--state-dir", str(root / "state"),
        "--capture", "iptables", *extra,
    ]  # fmt: skip
    started = time.monotonic()
    with open(root / "agent.log", "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        while not _ready(ready):
            if proc.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError((root / "agent.log").read_text()[-3000:])
            time.sleep(0.02)
        took = time.monotonic() - started
        return took, _rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _load_through_api(lab: Lab, bodies: list[dict[str, Any]]) -> None:
    """Create every object through the lab's API, as clients would (8 at a time)."""

    def create(chunk: list[dict[str, Any]]) -> None:
        api = access.client(lab.dirs)
        for body in chunk:
            rt = api.type_of(body["apiVersion"], body["kind"])
            ns = body["metadata"].get("namespace") if rt.namespaced else None
            api.request("POST", rt.path(ns), body)

    namespaces = [b for b in bodies if b["kind"] == "Namespace"]
    create(namespaces)
    rest = [b for b in bodies if b["kind"] != "Namespace"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, [rest[i::8] for i in range(8)]))


def _kubectl(lab: Lab, *args: str, stdin: str | None = None, took: list | None = None) -> None:
    """Run kubectl against the lab; append how long it ran to `took`."""
    started = time.monotonic()
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is missing: run `make setup` (installs kubernetes-client)")
    subprocess.run(
        [kubectl, *args],
        input=stdin,
        env={**os.environ, "KUBECONFIG": lab.kubeconfig()},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if took is not None:
        took.append(time.monotonic() - started)


def _label_to_enrolled(lab: Lab, rounds: int) -> tuple[list[float], list[float]]:
    """From an API client's label of the namespace until every pod in it is enrolled: as the
    capture annotation the agents write back says (adds the write-back), and as the agents'
    own enrollment times say."""
    api = lab.api()
    pod_rt, ns_rt = api.type_of("v1", "Pod"), api.type_of("v1", "Namespace")

    def states() -> list[str | None]:
        items, _ = api.list(pod_rt, authz.NAMESPACE)
        return [(i["metadata"].get("annotations") or {}).get(ANNOTATION_CAPTURE) for i in items]

    def label(value: str | None) -> None:
        patch = {"metadata": {"labels": {LABEL_DATAPLANE: value}}}
        api.merge_patch(ns_rt, authz.NAMESPACE, None, patch)

    def wait(pred: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while not pred(states()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {states()}")
            time.sleep(0.01)

    written, enrolled = [], []
    for _ in range(rounds):
        label(None)
        wait(lambda st: not any(st), "pods left the mesh")
        started, wall = time.monotonic(), time.time()
        label("ambient")
        wait(lambda st: st and all(x == ENROLLED for x in st), "pods enrolled")
        written.append(time.monotonic() - started)
        # When each agent enrolled its pods (its own clock is this machine's).
        since = [
            w["since"]
            for node in authz.NODES
            for w in config_dump(lab, node)["workloads"]
            if w["namespace"] == authz.NAMESPACE and w["state"] == ENROLLED
        ]
        enrolled.append(max(since) - wall)
    return written, enrolled


def apply_to_enforcement() -> dict[str, Any]:
    lab = Lab(new_lab_name())
    try:
        lab.up(load_text(authz.lab_manifest(source="kube"), "bench-kube"))
        t0 = time.monotonic()
        _load_through_api(lab, objects(node_prefix="far-"))
        for node in authz.NODES:
            while True:
                dump = config_dump(lab, node)
                if len(dump["pods"]) >= PODS and len(dump["services"]) >= SERVICES:
                    break
                if time.monotonic() - t0 > 900:
                    raise RuntimeError(f"{node} did not reflect the objects")
                time.sleep(2)
        load_s = time.monotonic() - t0
        targets = [lab.pod(f"target-{n}", authz.NAMESPACE).ip for n in authz.NODES]
        authz._probe_until(lab, targets, "allowed", lambda: None)
        resource = "authorizationpolicies.slipstream.dev"
        deny, allow, own = [], [], []
        for _ in range(ROUNDS + 2):
            deny.append(
                max(
                    authz._probe_until(
                        lab,
                        targets,
                        "denied",
                        lambda: _kubectl(
                            lab, "apply", "-f", "-", stdin=authz.DENY_CLIENT, took=own
                        ),
                    )
                )
            )
            allow.append(
                max(
                    authz._probe_until(
                        lab,
                        targets,
                        "allowed",
                        lambda: _kubectl(
                            lab, "delete", resource, "deny-client", "-n", authz.NAMESPACE
                        ),
                    )
                )
            )
        # The mesh's own part: from a client's write (server-side apply, a few ms) to
        # enforcement, without kubectl's start, discovery and OpenAPI download.
        api, body = lab.api(), json.loads(authz.DENY_CLIENT)
        rt = api.type_of(body["apiVersion"], body["kind"])
        direct = []
        for _ in range(ROUNDS + 2):
            direct.append(max(authz._probe_until(lab, targets, "denied", lambda: api.apply(body))))
            authz._probe_until(
                lab, targets, "allowed", lambda: api.delete(rt, "deny-client", authz.NAMESPACE)
            )
        written, enroll = _label_to_enrolled(lab, ROUNDS + 2)
        return {
            "enroll_s": enroll,
            "written_s": written,
            "load_s": load_s,
            "deny_s": deny,
            "allow_s": allow,
            "kubectl_s": own,
            "direct_s": direct,
        }
    finally:
        lab.down()


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-kube-") as tmp:
        root = Path(tmp)
        data = root / "objects.yaml"
        data.write_text(yaml.safe_dump_all(objects()))
        t0 = time.monotonic()
        api = ApiServerProc(
            root / "api", "--preload", str(DATA / "crds.yaml"), "--preload", str(data)
        ).start(timeout=600)
        load_s = time.monotonic() - t0
        try:
            results: dict[str, list[tuple[float, float]]] = {"node": [], "all": []}
            for _ in range(max(1, min(ROUNDS, 3))):
                results["node"].append(first_sync(api, root, "--kube-pods", "node"))
                results["all"].append(first_sync(api, root, "--kube-pods", "all"))
        finally:
            api.stop()
    live = apply_to_enforcement()

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    rows = []
    for mode, label in (("node", "its node's pods"), ("all", "every pod (default)")):
        times = [t for t, _ in results[mode]]
        mem = [m for _, m in results[mode]]
        rows.append([label, f"{med(times) * 1000:.0f} ms", f"{max(times) * 1000:.0f} ms",
                     f"{med(mem):.0f} MiB"])  # fmt: skip
    text = "\n".join(
        [
            "# Kube source: an agent's first sync",
            "",
            f"{PODS:,} pods on {NODES} nodes, {SERVICES:,} Services (and as many EndpointSlices)"
            f" in the lab API server (preloaded in {load_s:.0f} s). Agent process start →"
            " /healthz/ready, and its RSS then; "
            f"{len(results['node'])} rounds, machine: {os.cpu_count()} cores.",
            "",
            table(["agent reflects", "first sync, median", "worst", "RSS, median"], rows),
            "",
            "## kubectl apply of a policy → enforced on every node",
            "",
            f"A lab of {len(authz.NODES)} nodes, agents on --source kube reflecting every pod;"
            f" {PODS:,} pods and {SERVICES:,} Services created through the API (every agent"
            f" had them {live['load_s']:.0f} s after the first create). From `kubectl apply`"
            " of a DENY (kubectl's own run included) until a probe in the client pod sees a"
            f" pod on every node refuse it, and back after `kubectl delete`; {len(live['deny_s'])}"
            " rounds.",
            "",
            table(
                ["", "median", "worst"],
                [
                    [
                        "kubectl apply DENY → enforced on all nodes",
                        f"{statistics.median(live['deny_s']) * 1000:.0f} ms",
                        f"{max(live['deny_s']) * 1000:.0f} ms",
                    ],
                    [
                        "of which kubectl apply's own run",
                        f"{statistics.median(live['kubectl_s']) * 1000:.0f} ms",
                        f"{max(live['kubectl_s']) * 1000:.0f} ms",
                    ],
                    [
                        "an API client's write of the DENY → enforced on all nodes",
                        f"{statistics.median(live['direct_s']) * 1000:.0f} ms",
                        f"{max(live['direct_s']) * 1000:.0f} ms",
                    ],
                    [
                        "an API client's namespace label → its 4 pods on 3 nodes enrolled",
                        f"{statistics.median(live['enroll_s']) * 1000:.0f} ms",
                        f"{max(live['enroll_s']) * 1000:.0f} ms",
                    ],
                    [
                        "… and written back (slipstream.dev/capture: enrolled on each)",
                        f"{statistics.median(live['written_s']) * 1000:.0f} ms",
                        f"{max(live['written_s']) * 1000:.0f} ms",
                    ],
                    [
                        "kubectl delete → allowed again on all nodes",
                        f"{statistics.median(live['allow_s']) * 1000:.0f} ms",
                        f"{max(live['allow_s']) * 1000:.0f} ms",
                    ],
                ],
            ),
        ]
    )
    svg = svg_bars(
        "agent first sync (10,000 pods, 2,000 Services)",
        ["first sync (ms)", "RSS (MiB)"],
        {
            "node's pods": [
                med([t for t, _ in results["node"]]) * 1000,
                med([m for _, m in results["node"]]),
            ],
            "every pod": [
                med([t for t, _ in results["all"]]) * 1000,
                med([m for _, m in results["all"]]),
            ],
        },
        "lower is better",
    )
    path = write_report("kube", text, svg)
    return f"{text}\n\nreport: {path}"
