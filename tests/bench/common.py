"""Shared pieces of the benchmarks: real peers (nginx, wrk), statistics, and the report.

Every benchmark runs its variants in the same run on the same machine and
alternates them round by round, so drift in the machine hits all of them
alike; reports quote medians over rounds and ratios between variants.
"""

from __future__ import annotations

import os
import re
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path

from agent.lab.lab import Lab

RESULTS = Path(__file__).parent / "results"
DURATION = float(os.environ.get("BENCH_DURATION", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(f"unexpected wrk latency {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> WrkResult:
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", text, re.M))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not pct or not rps:
        raise ValueError(f"wrk printed no results:\n{text}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        float(rps.group(1)),
        _ms(pct["50"]),
        _ms(pct["99"]),
        errors + (int(non2xx.group(1)) if non2xx else 0),
    )


def wrk(
    lab: Lab,
    pod: str,
    ns: str,
    url: str,
    *,
    connections: int,
    threads: int = 1,
    close: bool = False,
    duration: float = DURATION,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    for h in headers:
        argv[1:1] = ["-H", h]
    res = lab.exec(pod, argv, namespace=ns, timeout=duration + 30)
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed in {ns}/{pod}: {res.stderr or res.stdout}")
    return parse_wrk(res.stdout)


def reuse_time_wait(lab: Lab, pod: str, ns: str) -> None:
    """Let a client pod reuse its TIME_WAIT ports for new connections (timestamps keep it safe).

    A client that closes first keeps each port in TIME_WAIT for 60 s; at thousands
    of new connections a second the pod's ephemeral ports run out within seconds
    and every connect() then scans the whole range, so whichever variant ran
    later would pay for the earlier ones. Every variant's client gets this.
    """
    res = lab.exec(pod, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"], namespace=ns)
    if res.returncode != 0:
        raise RuntimeError(f"sysctl in {ns}/{pod}: {res.stderr}")


def nginx_conf(
    directory: Path,
    port: int = 8080,
    body: str = "ok",
    *,
    proxy_to: str | None = None,
    workers: int = 1,
) -> Path:
    """nginx answering every request with a small body, or (`proxy_to` host:port) a reverse
    proxy with keep-alive upstream connections; keeps client connections alive, logs nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    location = (
        f'location / {{ return 200 "{body}\\n"; }}'
        if proxy_to is None
        else "location / { proxy_pass http://up; proxy_http_version 1.1; "
        'proxy_set_header Connection ""; }'
    )
    upstream = (
        f"upstream up {{ server {proxy_to}; keepalive 256; }}" if proxy_to is not None else ""
    )
    conf.write_text(
        textwrap.dedent(f"""\
        worker_processes {workers};
        pid {directory}/nginx.pid;
        error_log stderr warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            keepalive_requests 1000000;
            client_body_temp_path {directory}/body;
            proxy_temp_path {directory}/proxy;
            fastcgi_temp_path {directory}/fastcgi;
            uwsgi_temp_path {directory}/uwsgi;
            scgi_temp_path {directory}/scgi;
            {upstream}
            server {{
                listen {port} reuseport backlog=4096;
                {location}
            }}
        }}
        """)
    )
    return conf


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in rows
    ]
    return "\n".join([line, sep, *body])


def svg_bars(title: str, groups: list[str], series: dict[str, list[float]], unit: str) -> str:
    """A grouped bar chart: one group per metric, one bar per variant (values scaled per group)."""
    colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"]
    names = list(series)
    bar_w, gap, group_gap, height, legend_w = 40, 6, 50, 220, 240
    group_w = len(names) * (bar_w + gap) + group_gap
    width = 60 + len(groups) * group_w + legend_w
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 90}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="10" y="18" font-size="14">{title}</text>',
    ]
    for gi, group in enumerate(groups):
        top = max(series[n][gi] for n in names) or 1.0
        x0 = 60 + gi * group_w
        for ni, name in enumerate(names):
            v = series[name][gi]
            h = height * v / top
            x = x0 + ni * (bar_w + gap)
            out.append(
                f'<rect x="{x}" y="{40 + height - h:.1f}" width="{bar_w}" height="{h:.1f}" '
                f'fill="{colors[ni % len(colors)]}"/>'
            )
            label_y = 36 + height - h
            shown = f"{v:.0f}" if v >= 100 else f"{v:.3g}"
            out.append(
                f'<text x="{x + bar_w / 2}" y="{label_y:.1f}" text-anchor="middle">{shown}</text>'
            )
        out.append(f'<text x="{x0}" y="{height + 58}">{group}</text>')
    for ni, name in enumerate(names):
        y = 40 + ni * 16
        color = colors[ni % len(colors)]
        out.append(
            f'<rect x="{width - legend_w + 20}" y="{y}" width="10" height="10" fill="{color}"/>'
        )
        out.append(f'<text x="{width - legend_w + 35}" y="{y + 9}">{name}</text>')
    out.append(f'<text x="10" y="{height + 80}">{unit}</text></svg>')
    return "\n".join(out)


def write_report(name: str, text: str, svg: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.svg").write_text(svg)
    return RESULTS / f"{name}.md"
