"""Kube source benchmark: an agent's first sync against an API server holding 10,000 pods and
2,000 Services, and its memory.

The lab API server is started with those objects preloaded (pods spread over 100
nodes, 100 on the agent's node; each Service selects 5 pods, so the server keeps
2,000 EndpointSlices too). Then a real agent process (`--source kube`, iptables
capture, which loads nothing until a pod enrolls) is started and timed from its
start to its readiness (every kind listed and in the store, the enroller caught up),
and its RSS read then. Twice: reflecting only its node's pods (the default) and
every pod (`--kube-pods all`).

Not measured here: `kubectl apply` of a policy → enforced on every node, which needs
the lab to run its agents with `--source kube` (issue 14's lab wiring).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.bench.common import ROUNDS, svg_bars, table, write_report
from tests.functional.apikit import DATA, ApiServerProc, free_port

PODS, SERVICES, NODES = 10_000, 2_000, 100


def objects() -> list[dict[str, Any]]:
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
                    "nodeName": f"n{i % NODES}",
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

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    rows = []
    for mode, label in (("node", "its node's pods (default)"), ("all", "every pod")):
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
            "Not measured: kubectl apply of a policy → enforced on every node (needs the lab's"
            " agents on --source kube).",
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
