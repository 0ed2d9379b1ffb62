"""Gateway benchmark: the gateway as a reverse proxy against nginx doing the same job.

Variants, in one lab (one node, no mesh), alternating round by round, each run
with the same number of worker processes (1, then 2):
  nginx        nginx as a plain reverse proxy (keep-alive upstream connections);
  gateway      `slipstream gateway`, one route, no plugins;
  gateway+auth the same with key-auth and a Redis-backed rate limit per consumer (a real
               redis-server; the limit is high enough never to refuse).
The upstream is nginx answering 20 bytes. wrk runs in its own pod on keep-alive
connections. Targets: gateway >= 0.5x nginx's requests/s; auth + rate limiting
costs < 25% (gateway+auth >= 0.75x gateway).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml

from agent.common.manifest import load_text
from agent.lab.lab import Lab
from tests.bench.common import (
    DURATION,
    ROUNDS,
    median,
    nginx_conf,
    svg_bars,
    table,
    write_report,
    wrk,
)
from tests.lab.labkit import new_lab_name

VARIANTS = ("nginx", "gateway", "gateway+auth")
WORKERS = (1, 2)
CONNECTIONS = 64
KEY = "bench-key-0123456789"


def gateway_conf(work: Path, name: str, upstream: str, workers: int, auth: bool) -> Path:
    plugins = []
    if auth:
        plugins = [
            {"name": "key-auth"},
            {"name": "rate-limit",
             "config": {"limit": 1_000_000_000, "window": "1h", "by": "consumer",
                        "store": "redis", "redis": {"url": "redis://REDIS:6379/0"}}},
        ]  # fmt: skip
    config = {
        "workers": workers,
        "accessLog": {"format": "off"},
        "listeners": [{"name": "web", "address": "0.0.0.0:8080"}],
        "backends": [{"name": "up", "endpoints": [f"http://{upstream}"]}],
        "consumers": [{"name": "bench", "apiKeys": [KEY]}],
        "routes": [{"name": "all", "backendRefs": [{"name": "up"}], "plugins": plugins}],
    }
    path = work / f"{name}-{workers}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def pod(name: str, command: list[str]) -> str:
    cmd = ", ".join(f'"{c}"' for c in command)
    return (
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench}}\n"
        f"spec:\n  nodeName: n1\n  containers: [{{name: main, command: [{cmd}]}}]\n"
    )


def run() -> str:
    work = Path(tempfile.mkdtemp(prefix="slipstream-bench-gateway-"))
    results: dict[int, dict[str, dict[str, list[float]]]] = {}
    for workers in WORKERS:
        results[workers] = one_setting(work / f"w{workers}", workers)
    return report(results)


def one_setting(work: Path, workers: int) -> dict[str, dict[str, list[float]]]:
    work.mkdir(parents=True)
    lab = Lab(new_lab_name())
    base = (
        "apiVersion: slipstream.dev/v1alpha1\nkind: Lab\nmetadata: {name: bench}\n"
        "spec: {nodes: [n1], mesh: {enabled: false}}\n"
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n"
    )
    try:
        up_conf = nginx_conf(work / "up", body="hello from upstream")
        redis = ["redis-server", "--port", "6379", "--save", "", "--appendonly", "no",
                 "--protected-mode", "no"]  # fmt: skip
        lab.up(
            load_text(
                base
                + pod("up", ["nginx", "-c", str(up_conf), "-g", "daemon off;", "-e", "stderr"])
                + pod("redis", redis)
                + pod("cli", ["sleep", "infinity"]),
                "bench-gateway",
            )
        )
        upstream = f"{lab.pod('up', 'bench').ip}:8080"
        proxy_conf = nginx_conf(work / "proxy", proxy_to=upstream, workers=workers)
        plain = gateway_conf(work, "plain", upstream, workers, auth=False)
        auth = gateway_conf(work, "auth", upstream, workers, auth=True)
        auth.write_text(auth.read_text().replace("REDIS", lab.pod("redis", "bench").ip))
        gw = ["slipstream", "gateway", "--admin", "127.0.0.1:9901", "-c"]
        lab.apply(
            load_text(
                pod("nginx", ["nginx", "-c", str(proxy_conf), "-g", "daemon off;", "-e", "stderr"])
                + pod("gateway", [*gw, str(plain)])
                + pod("gateway-auth", [*gw, str(auth)]),
                "bench-gateway-proxies",
            )
        )
        targets = {
            "nginx": lab.pod("nginx", "bench").ip,
            "gateway": lab.pod("gateway", "bench").ip,
            "gateway+auth": lab.pod("gateway-auth", "bench").ip,
        }
        headers = {"gateway+auth": (f"apikey: {KEY}",)}
        for v, ip in targets.items():
            wait_serving(lab, v, ip, headers.get(v, ()))
        # The auth variant must really count in Redis (a failing-open limiter would be cheaper).
        probe = [
            "curl",
            "-si",
            "-m",
            "2",
            "-H",
            f"apikey: {KEY}",
            f"http://{targets['gateway+auth']}:8080/",
        ]
        answer = lab.exec("cli", probe, namespace="bench").stdout.lower()
        if "ratelimit-remaining" not in answer:
            raise RuntimeError(f"gateway+auth does not count in Redis:\n{answer}")
        results: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
        for _ in range(ROUNDS):
            for v in VARIANTS:
                r = wrk(
                    lab,
                    "cli",
                    "bench",
                    f"http://{targets[v]}:8080/",
                    connections=CONNECTIONS,
                    headers=headers.get(v, ()),
                )
                results[v].setdefault("rps", []).append(r.rps)
                results[v].setdefault("p99", []).append(r.p99_ms)
                results[v].setdefault("errors", []).append(float(r.errors))
        return results
    finally:
        lab.down()


def wait_serving(lab: Lab, variant: str, ip: str, headers: tuple[str, ...]) -> None:
    argv = ["curl", "-sf", "-m", "2", "-o", "/dev/null", f"http://{ip}:8080/"]
    for h in headers:
        argv[1:1] = ["-H", h]
    deadline = time.monotonic() + 20
    while lab.exec("cli", argv, namespace="bench").returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{variant} does not answer at {ip}:8080")
        time.sleep(0.2)


def report(results: dict[int, dict[str, dict[str, list[float]]]]) -> str:
    rows, checks = [], []
    groups, series = [], {v: [] for v in VARIANTS}
    for workers, res in results.items():
        med = {v: {k: median(x) for k, x in r.items()} for v, r in res.items()}
        for v in VARIANTS:
            x = med[v]
            rows.append(
                [str(workers), v, f"{x['rps']:.0f}", f"{x['p99']:.2f}",
                 f"{sum(res[v]['errors']):.0f}"]
            )  # fmt: skip
            series[v].append(x["rps"])
        groups.append(f"{workers} worker{'s' if workers > 1 else ''}")
        n, g, a = med["nginx"]["rps"], med["gateway"]["rps"], med["gateway+auth"]["rps"]
        checks.append([f"{workers}: gateway / nginx req/s", f"{g / n:.2f}", ">= 0.5"])
        checks.append([f"{workers}: auth + Redis rate limit cost", f"{1 - a / g:.0%}", "< 25%"])
    text = "\n".join(
        [
            "# Gateway: reverse proxy against nginx",
            "",
            f"Medians of {ROUNDS} rounds of {DURATION:g} s each, variants alternating; wrk, "
            f"1 thread, {CONNECTIONS} keep-alive connections, from its own pod; upstream nginx "
            "answering 20 bytes. The same number of worker processes for nginx and the gateway "
            "in each setting. Everything shares the machine's cores with wrk.",
            "",
            table(["workers", "variant", "req/s", "p99 ms", "errors"], rows),
            "",
            table(["check", "value", "target"], checks),
            "",
        ]
    )
    svg = svg_bars("Gateway vs nginx (req/s)", groups, series, "requests per second")
    path = write_report("gateway", text, svg)
    return f"{text}\n(report: {path})"
