"""Helpers for lab tests: unique lab names, and looking at a lab from outside."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from agent.lab import model
from agent.lab.lab import Lab

SEND_MARKER = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(sys.argv[3].encode() + b"\\n")
got = b""
while not got.endswith(b"\\n"):
    got += s.recv(4096)
print(got.decode().strip())
"""
"""`python3 -c SEND_MARKER HOST PORT TEXT`: a line to a TCP echo, printing what came back."""

CREATED: set[str] = set()
"""Every lab name a test session used, for the end-of-session leftover check."""


def pod_manifest(
    name: str, ns: str, node: str, command: str, *, sa: str = "default", container_extra: str = ""
) -> str:
    """A Pod document with one container `main` running `command` (a YAML flow list) on
    `node`, labelled app=<name>; `container_extra` is one more line of the container."""
    return textwrap.dedent(f"""\
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
        spec:
          nodeName: {node}
          serviceAccountName: {sa}
          containers:
          - name: main
            command: {command}
            {container_extra}
        """)


def new_lab_name() -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    CREATED.add(name)
    return name


def curl(lab: Lab, pod: str, url: str, namespace: str = "default") -> dict:
    """GET `url` from inside a pod; returns the http-echo server's JSON answer."""
    res = lab.exec(pod, ["curl", "-sS", "--max-time", "5", url], namespace=namespace)
    assert res.returncode == 0, f"curl {url} from {namespace}/{pod} failed: {res.stderr}"
    return json.loads(res.stdout)


def config_dump(lab: Lab, node: str) -> dict:
    status, body = lab.node_http(node, "http://127.0.0.1:15000/config_dump")
    assert status == 200, body
    return json.loads(body)


def access_log(lab: Lab, node: str, since: float = 0.0) -> list[dict]:
    """The node agent's access-log records (JSON log lines with scope "access")."""
    out = []
    with open(lab.agent_log_path(node)) as f:
        for line in f:
            if '"scope": "access"' not in line:
                continue
            rec = json.loads(line)
            if rec["start_time"] >= since:
                out.append(rec)
    return out


def workload(lab: Lab, node: str, namespace: str, pod: str) -> dict:
    for w in config_dump(lab, node)["workloads"]:
        if (w["namespace"], w["name"]) == (namespace, pod):
            return w
    return {}


def netns_view(lab: Lab, pod: str, namespace: str) -> dict[str, str]:
    """What a pod's namespace holds, as `tc`, `ip rule` and `ss` print it."""
    ns = lab.pod(pod, namespace).netns

    def run(*argv: str) -> str:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=False
        )
        return res.stdout

    return {
        "eth0_egress": run("tc", "filter", "show", "dev", "eth0", "egress"),
        "eth0_ingress": run("tc", "filter", "show", "dev", "eth0", "ingress"),
        "lo_ingress": run("tc", "filter", "show", "dev", "lo", "ingress"),
        "qdiscs": run("tc", "qdisc", "show"),
        "rules": run("ip", "rule", "show"),
        "table100": run("ip", "route", "show", "table", "100"),
        "listeners": run("ss", "-H", "-tln"),
        "accept_local": run("cat", "/proc/sys/net/ipv4/conf/lo/accept_local").strip(),
    }


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def lookup_links(lab: Lab, node: str, pod: str, namespace: str) -> int:
    """How many sk_lookup links the node's agent holds into the pod's namespace (from /proc)."""
    pid = next(
        p["pid"] for p in lab.status()["processes"] if p["kind"] == "agent" and p["name"] == node
    )
    inode = os.stat(f"/run/netns/{lab.pod(pod, namespace).netns}").st_ino
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf_link":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        if f"netns_ino:\t{inode}\n" in info and "attach_type:\t36" in info:
            count += 1
    return count


@contextlib.contextmanager
def bridge_capture(lab: Lab, path: Path) -> Iterator[Path]:
    """tcpdump on the lab's bridge (every node's traffic crosses it), written to `path`."""
    argv = ["ip", "netns", "exec", model.bridge_netns(lab.name), "tcpdump", "-i", "any"]
    dump = subprocess.Popen(
        [*argv, "--immediate-mode", "-U", "-s", "0", "-w", str(path), "ip or ip6"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: path.exists() and path.stat().st_size > 0, 15, "tcpdump to start")
        yield path
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
        assert dump.stderr is not None
        dump.stderr.close()


def seen(pcap: Path, expr: str) -> list[str]:
    """The packets of a capture that match a tcpdump expression, a line each."""
    res = subprocess.run(["tcpdump", "-r", str(pcap), "-nn", expr], capture_output=True, text=True)
    return res.stdout.splitlines()
