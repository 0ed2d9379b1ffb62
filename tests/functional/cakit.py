"""A real CA process on loopback for functional tests, with pods placed on two nodes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agent.ca.authority import ca_identity
from agent.ca.cli import mint_token
from agent.identity.caclient import CAClient

TD = "cluster.local"

OBJECTS = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  nodeName: n1
  serviceAccountName: web
  containers: [{name: c, command: [x]}]
status: {podIP: 10.244.1.2, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: web2, namespace: shop}
spec:
  nodeName: n1
  serviceAccountName: web2
  containers: [{name: c, command: [x]}]
status: {podIP: 10.244.1.3, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop}
spec:
  nodeName: n2
  serviceAccountName: db
  containers: [{name: c, command: [x]}]
status: {podIP: 10.244.2.2, phase: Running}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningCA:
    dir: Path
    port: int
    proc: subprocess.Popen

    @property
    def root_dir(self) -> Path:
        return self.dir / "roots"

    def token(self, node: str) -> str:
        return (self.dir / f"{node}.token").read_text()

    def client(self, node: str) -> CAClient:
        return CAClient(("127.0.0.1", self.port), self.token(node), ca_identity(TD))

    def bundle(self) -> str:
        return "".join(
            (self.root_dir / f"{e['id']}.crt").read_text()
            for e in json.loads((self.root_dir / "roots.json").read_text())
        )

    def log(self) -> list[dict]:
        return [
            json.loads(line)
            for line in (self.dir / "ca.log").read_text().splitlines()
            if line.startswith("{")
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_ca(directory: Path, port: int | None = None, max_ttl: str = "24h") -> RunningCA:
    (directory / "objects").mkdir(exist_ok=True)
    (directory / "objects" / "pods.yaml").write_text(OBJECTS)
    for node in ("n1", "n2"):
        if not (directory / f"{node}.token").exists():
            mint_token(node, str(directory / "tokens.json"), str(directory / f"{node}.token"))
    port = port or free_port()
    with open(directory / "ca.log", "a") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "ca",
                "serve",
                "--root-dir",
                str(directory / "roots"),
                "--source",
                f"file:{directory / 'objects'}",
                "--node-tokens",
                str(directory / "tokens.json"),
                "--listen",
                f"127.0.0.1:{port}",
                "--max-ttl",
                max_ttl,
                "--log-format",
                "json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, (directory / "ca.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return RunningCA(directory, port, proc)
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the CA did not start")
