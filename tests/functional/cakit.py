"""A real CA process on loopback for functional tests, with pods placed on two nodes, and a
raw HTTPS client to send it what our own client never would."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.ca import credentials
from agent.ca.credentials import ADMIN, NODE, Credential
from agent.identity.caclient import CAClient
from agent.identity.certs import ca_identity

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
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return str(self.json["error"])


@dataclass
class RunningCA:
    dir: Path
    port: int
    proc: subprocess.Popen

    @property
    def root_dir(self) -> Path:
        return self.dir / "roots"

    @property
    def credentials(self) -> str:
        return str(self.dir / "credentials.json")

    def token(self, node: str) -> str:
        """A token file's content: a node's (`n1`) or any other minted into the directory."""
        return (self.dir / f"{node}.token").read_text()

    def client(self, node: str | Callable[[], str]) -> CAClient:
        token = node if callable(node) else self.token(node)
        return CAClient(("127.0.0.1", self.port), token, ca_identity(TD))

    def mint(
        self, kind: str, file: str, ttl: dt.timedelta | None = None, **fields: Any
    ) -> tuple[Credential, str]:
        """A new credential; its token goes to `<file>.token` and is returned too."""
        out = self.dir / f"{file}.token"
        rec = credentials.mint(self.credentials, kind, str(out), ttl=ttl, **fields)
        return rec, out.read_text()

    def admin(self) -> str:
        if not (self.dir / "admin.token").exists():
            self.mint(ADMIN, "admin", name="ops")
        return self.token("admin")

    def tls(self, source: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
        """A TLS connection to the CA, checked against its bundle (its SPIFFE ID is not)."""
        ctx = ssl.create_default_context(cadata=self.bundle())
        ctx.check_hostname = False
        sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout=timeout, source_address=(source, 0)
        )
        return ctx.wrap_socket(sock)

    def https(self, raw: bytes, source: str = "127.0.0.1") -> Answer:
        """Send `raw` (a whole HTTP/1.1 request, as written) and read the answer to the end."""
        with self.tls(source) as conn:
            conn.sendall(raw)
            return read_answer(conn)

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes | dict[str, Any] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        source: str = "127.0.0.1",
    ) -> Answer:
        data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        head = [f"{method} {path} HTTP/1.1", "Host: ca", f"Content-Length: {len(data)}"]
        if token is not None:
            head.append(f"Authorization: Bearer {token}")
        head += [f"{k}: {v}" for k, v in headers]
        return self.https(("\r\n".join(head) + "\r\n\r\n").encode() + data, source)

    def metrics(self) -> str:
        return self.request("GET", "/metrics").body.decode()

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


def read_answer(conn: ssl.SSLSocket) -> Answer:
    data = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0]:
        return Answer(0, {}, b"")  # closed without an answer
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def start_ca(
    directory: Path, port: int | None = None, max_ttl: str = "24h", extra: tuple[str, ...] = ()
) -> RunningCA:
    (directory / "objects").mkdir(exist_ok=True)
    (directory / "objects" / "pods.yaml").write_text(OBJECTS)
    for node in ("n1", "n2"):
        if not (directory / f"{node}.token").exists():
            credentials.mint(
                str(directory / "credentials.json"),
                NODE,
                str(directory / f"{node}.token"),
                ttl=None,
                node=node,
            )
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
                "--credentials",
                str(directory / "credentials.json"),
                "--listen",
                f"127.0.0.1:{port}",
                "--max-ttl",
                max_ttl,
                "--log-format",
                "json",
                *extra,
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
