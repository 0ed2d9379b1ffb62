"""Capture benchmark: pod to pod across nodes, (a) direct, (b) eBPF capture + plaintext relay,
(c) iptables REDIRECT + SO_ORIGINAL_DST relay (the pre-eBPF way, same relay code).

Only the client side is captured in (b) and (c), so both do the same relay
work and differ only in how packets reach the agent. nginx serves a small
body on node n2; wrk runs in the client pod on node n1:
  - new connections: every request on a new connection (Connection: close);
  - request latency: one keep-alive connection, one request at a time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from agent.common.manifest import load_text
from agent.lab.lab import Lab
from tests.bench.common import (
    DURATION,
    ROUNDS,
    median,
    nginx_conf,
    reuse_time_wait,
    svg_bars,
    table,
    write_report,
    wrk,
)
from tests.lab.labkit import new_lab_name


def manifest(capture: str, conf: Path) -> str:
    return f"""\
apiVersion: slipstream.dev/v1alpha1
kind: Lab
metadata: {{name: bench}}
spec:
  nodes: [n1, n2]
  mesh: {{capture: {capture}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: bench}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: bench, labels: {{app: server}}}}
spec:
  nodeName: n2
  containers:
  - name: nginx
    command: [nginx, -c, "{conf}", -g, "daemon off;"]
---
apiVersion: v1
kind: Pod
metadata: {{name: direct, namespace: bench}}
spec:
  nodeName: n1
  containers: [{{name: main, command: [sleep, infinity]}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: captured
  namespace: bench
  labels: {{slipstream.dev/dataplane-mode: ambient}}
spec:
  nodeName: n1
  containers: [{{name: main, command: [sleep, infinity]}}]
"""


VARIANTS = [
    ("direct", "ebpf", "direct"),
    ("eBPF capture + relay", "ebpf", "captured"),
    ("iptables REDIRECT + relay", "iptables", "captured"),
]


def run() -> str:
    work = Path(tempfile.mkdtemp(prefix="slipstream-bench-"))
    labs: dict[str, Lab] = {}
    try:
        for capture in ("ebpf", "iptables"):
            lab = Lab(new_lab_name())
            lab.up(load_text(manifest(capture, nginx_conf(work / capture)), f"bench-{capture}"))
            labs[capture] = lab
        url = {c: f"http://{lab.pod('server', 'bench').ip}:8080/" for c, lab in labs.items()}
        for lab in labs.values():
            for _, _, pod in VARIANTS:
                reuse_time_wait(lab, pod, "bench")
        for c, lab in labs.items():  # warm up, and make sure nginx answers
            deadline = time.monotonic() + 10
            while lab.exec("direct", ["curl", "-sf", url[c]], namespace="bench").returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not answer")
                time.sleep(0.1)
        results: dict[str, dict[str, list[float]]] = {v[0]: {} for v in VARIANTS}
        for _ in range(ROUNDS):
            for name, capture, pod in VARIANTS:
                lab = labs[capture]
                new = wrk(lab, pod, "bench", url[capture], connections=8, threads=2, close=True)
                one = wrk(lab, pod, "bench", url[capture], connections=1)
                r = results[name]
                for key, value in (
                    ("conn/s", new.rps),
                    ("conn p50", new.p50_ms),
                    ("conn p99", new.p99_ms),
                    ("req p50", one.p50_ms),
                    ("req p99", one.p99_ms),
                    ("errors", float(new.errors + one.errors)),
                ):
                    r.setdefault(key, []).append(value)
    finally:
        for lab in labs.values():
            lab.down()
    return report(results)


def report(results: dict[str, dict[str, list[float]]]) -> str:
    med = {name: {k: median(v) for k, v in r.items()} for name, r in results.items()}
    rows = [
        [
            name,
            f"{m['conn/s']:.0f}",
            f"{m['conn p50']:.2f}",
            f"{m['conn p99']:.2f}",
            f"{m['req p50']:.3f}",
            f"{m['req p99']:.3f}",
            f"{sum(results[name]['errors']):.0f}",
        ]
        for name, m in med.items()
    ]
    a, b, c = (med[v[0]] for v in VARIANTS)
    metrics = [
        ("new connections/s", "conn/s"),
        ("connection p50 latency", "conn p50"),
        ("connection p99 latency", "conn p99"),
        ("request p50 latency", "req p50"),
        ("request p99 latency", "req p99"),
    ]
    ratios = [[label, f"{b[k] / a[k]:.2f}", f"{b[k] / c[k]:.2f}"] for label, k in metrics]
    text = "\n".join(
        [
            "# Capture: pod to pod across nodes",
            "",
            f"Medians of {ROUNDS} rounds of {DURATION:g} s each, variants alternating. "
            "New connections: wrk, 2 threads, 8 connections, `Connection: close` (one request "
            "per connection). Request: wrk, one keep-alive connection. Server: nginx (1 worker) "
            "returning 3 bytes. Latencies in ms. Client pods run with "
            "`net.ipv4.tcp_tw_reuse=1`, so one round's TIME_WAIT ports do not slow the next.",
            "",
            table(
                ["variant", "conn/s", "conn p50", "conn p99", "req p50", "req p99", "errors"], rows
            ),
            "",
            table(["ratio", "(b) eBPF / (a) direct", "(b) eBPF / (c) iptables"], ratios),
            "",
            "Target: (b) at least as fast as (c): conn/s ratio >= 1, latency ratios <= 1.",
            "",
        ]
    )
    svg = svg_bars(
        "Capture: pod to pod across nodes",
        ["conn/s", "conn p99 ms", "req p99 ms"],
        {name: [m["conn/s"], m["conn p99"], m["req p99"]] for name, m in med.items()},
        "bars scaled per group; higher conn/s and lower latency are better",
    )
    path = write_report("capture", text, svg)
    return text + f"\n(written to {path} and capture.svg)\n"
