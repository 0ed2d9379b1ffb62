"""Mesh benchmark: pod to pod across nodes over mTLS, against an stunnel pair doing the same hop.

Variants, all in one lab and alternating round by round:
  direct   plaintext, pod to pod;
  mesh     both pods enrolled: eBPF capture, HBONE (HTTP/2 CONNECT, mTLS 1.3) between agents;
  stunnel  stunnel (C, OpenSSL) in the client pod and in the server pod, mTLS 1.3 with P-256
           certificates, one TLS connection per TCP connection.
Measured: bulk throughput (iperf3, one connection and 8 in parallel), request latency
(wrk, one keep-alive connection, nginx returning 3 bytes) and new connections per second
(wrk, Connection: close).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import textwrap
import time
from pathlib import Path

from agent.ca.authority import Authority, RootStore
from agent.common.manifest import load_text
from agent.identity.certs import SpiffeId, cert_pem, generate_key, issue, key_pem
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

VARIANTS = ("direct", "mesh", "stunnel")


def stunnel_files(work: Path) -> tuple[Path, Path]:
    """Certificates from a CA of their own, and the two stunnel configurations."""
    roots = RootStore(str(work / "stunnel-ca"))
    roots.load()
    auth = Authority(roots, "cluster.local", dt.timedelta(days=1))
    now = dt.datetime.now(dt.UTC)
    for side in ("client", "server"):
        key = generate_key()
        cert = issue(
            issuer_key=roots.active.key,
            issuer_cert=roots.active.cert,
            public_key=key.public_key(),
            uri=str(SpiffeId("cluster.local", "tls", side)),
            not_before=now - dt.timedelta(minutes=1),
            not_after=now + dt.timedelta(hours=4),
        )
        (work / f"{side}.pem").write_text(cert_pem(cert) + key_pem(key).decode())
    (work / "ca.pem").write_text(auth.roots.bundle_pem())
    common = f"""\
        foreground = yes
        pid =
        output = /dev/stderr
        sslVersionMin = TLSv1.3
        CAfile = {work}/ca.pem
        verifyChain = yes
        socket = l:TCP_NODELAY=1
        socket = r:TCP_NODELAY=1
        TIMEOUTclose = 0
        debug = 3
        libwrap = no
        """
    client = work / "stunnel-client.conf"
    client.write_text(
        textwrap.dedent(common)
        + textwrap.dedent(f"""\
        client = yes
        cert = {work}/client.pem
        [http]
        accept = 127.0.0.1:18080
        connect = SERVER:8443
        [iperf]
        accept = 127.0.0.1:15201
        connect = SERVER:5443
        """)
    )
    server = work / "stunnel-server.conf"
    server.write_text(
        textwrap.dedent(common)
        + textwrap.dedent(f"""\
        cert = {work}/server.pem
        requireCert = yes
        [http]
        accept = 0.0.0.0:8443
        connect = 127.0.0.1:8080
        [iperf]
        accept = 0.0.0.0:5443
        connect = 127.0.0.1:5201
        """)
    )
    return client, server


def manifest(work: Path, stunnel_server: Path) -> str:
    nginx = nginx_conf(work / "nginx")
    servers = []
    for ns in VARIANTS:
        containers = [
            f'  - {{name: nginx, command: [nginx, -c, "{nginx}", -g, "daemon off;", -e, stderr]}}',
            "  - {name: iperf, command: [iperf3, -s, -p, '5201']}",
        ]
        if ns == "stunnel":
            containers.append(f'  - {{name: stunnel, command: [stunnel, "{stunnel_server}"]}}')
        servers.append(
            f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: srv, namespace: {ns}}}\n"
            "spec:\n  nodeName: n2\n  containers:\n" + "\n".join(containers) + "\n"
        )
        servers.append(
            f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: cli, namespace: {ns}}}\n"
            "spec:\n  nodeName: n1\n  containers: [{name: main, command: [sleep, infinity]}]\n"
        )
    namespaces = "".join(
        f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        + ("  labels: {slipstream.dev/dataplane-mode: ambient}\n" if ns == "mesh" else "")
        for ns in VARIANTS
    )
    return (
        "apiVersion: slipstream.dev/v1alpha1\nkind: Lab\nmetadata: {name: bench}\n"
        "spec: {nodes: [n1, n2]}\n" + namespaces + "".join(servers)
    )


def iperf(lab: Lab, ns: str, host: str, port: int, parallel: int) -> float:
    """Receiver throughput in Gbit/s."""
    argv = ["iperf3", "-c", host, "-p", str(port), "-t", f"{DURATION:g}", "-P", str(parallel), "-J"]
    res = lab.exec("cli", argv, namespace=ns, timeout=DURATION + 30)
    if res.returncode != 0:
        raise RuntimeError(f"iperf3 failed in {ns}: {res.stdout[-500:]} {res.stderr[-500:]}")
    return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def run() -> str:
    work = Path(tempfile.mkdtemp(prefix="slipstream-bench-mesh-"))
    client_conf, server_conf = stunnel_files(work)
    lab = Lab(new_lab_name())
    try:
        lab.up(load_text(manifest(work, server_conf), "bench-mesh"))
        srv_tls = lab.pod("srv", "stunnel").ip
        client_conf.write_text(client_conf.read_text().replace("SERVER", srv_tls))
        # stunnel's client side runs next to the benchmark tools in the client pod.
        stunnel = lab.exec(
            "cli", ["sh", "-c", f"stunnel {client_conf} >/dev/null 2>&1 &"], namespace="stunnel"
        )
        assert stunnel.returncode == 0, stunnel.stderr
        targets = {
            "direct": (lab.pod("srv", "direct").ip, 8080, 5201),
            "mesh": (lab.pod("srv", "mesh").ip, 8080, 5201),
            "stunnel": ("127.0.0.1", 18080, 15201),
        }
        for ns, (host, http, _) in targets.items():
            reuse_time_wait(lab, "cli", ns)
            deadline = time.monotonic() + 15
            while (
                lab.exec("cli", ["curl", "-sf", f"http://{host}:{http}/"], namespace=ns).returncode
                != 0
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ns}: the server does not answer")
                time.sleep(0.2)
        results: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
        for _ in range(ROUNDS):
            for ns in VARIANTS:
                host, http, iperf_port = targets[ns]
                url = f"http://{host}:{http}/"
                r = results[ns]
                r.setdefault("bulk 1", []).append(iperf(lab, ns, host, iperf_port, 1))
                r.setdefault("bulk 8", []).append(iperf(lab, ns, host, iperf_port, 8))
                one = wrk(lab, "cli", ns, url, connections=1)
                r.setdefault("p50", []).append(one.p50_ms)
                r.setdefault("p99", []).append(one.p99_ms)
                new = wrk(lab, "cli", ns, url, connections=8, threads=2, close=True)
                r.setdefault("conn/s", []).append(new.rps)
                r.setdefault("errors", []).append(float(one.errors + new.errors))
    finally:
        lab.down()
    return report(results)


def report(results: dict[str, dict[str, list[float]]]) -> str:
    med = {v: {k: median(x) for k, x in r.items()} for v, r in results.items()}
    d, m, s = med["direct"], med["mesh"], med["stunnel"]
    rows = [
        [
            v,
            f"{x['bulk 1']:.2f}",
            f"{x['bulk 8']:.2f}",
            f"{x['p50']:.3f}",
            f"{x['p99']:.3f}",
            f"{x['conn/s']:.0f}",
            f"{sum(results[v]['errors']):.0f}",
        ]
        for v, x in med.items()
    ]
    added_mesh, added_tls = m["p50"] - d["p50"], s["p50"] - d["p50"]
    checks = [
        ["throughput, 1 connection", f"{m['bulk 1'] / s['bulk 1']:.2f}", ">= 0.7"],
        ["throughput, 8 connections", f"{m['bulk 8'] / s['bulk 8']:.2f}", ">= 0.7"],
        [
            "added median latency",
            f"{added_mesh / added_tls:.2f}" if added_tls > 0 else "n/a",
            "<= 2",
        ],
        ["new connections/s", f"{m['conn/s'] / s['conn/s']:.2f}", ">= 1"],
    ]
    text = "\n".join(
        [
            "# Mesh: pod to pod across nodes over mTLS",
            "",
            f"Medians of {ROUNDS} rounds of {DURATION:g} s each, variants alternating. "
            "Throughput: iperf3 (Gbit/s, received). Latency: wrk, one keep-alive connection, ms. "
            "New connections: wrk, 2 threads, 8 connections, Connection: close. Client pods "
            "run with `net.ipv4.tcp_tw_reuse=1`, so one round's TIME_WAIT ports do not slow "
            "the next.",
            "",
            table(
                [
                    "variant",
                    "bulk 1 conn",
                    "bulk 8 conns",
                    "p50 ms",
                    "p99 ms",
                    "new conn/s",
                    "errors",
                ],
                rows,
            ),
            "",
            f"Added median latency over direct: mesh {added_mesh:.3f} ms, "
            f"stunnel {added_tls:.3f} ms.",
            "",
            table(["mesh / stunnel", "ratio", "target"], checks),
            "",
        ]
    )
    svg = svg_bars(
        "Mesh vs stunnel, pod to pod across nodes",
        ["bulk 1 Gbit/s", "bulk 8 Gbit/s", "p50 ms", "new conn/s"],
        {v: [x["bulk 1"], x["bulk 8"], x["p50"], x["conn/s"]] for v, x in med.items()},
        "bars scaled per group",
    )
    path = write_report("mesh", text, svg)
    return text + f"\n(written to {path} and mesh.svg)\n"
