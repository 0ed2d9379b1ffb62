"""The lab API server as a real process on 127.0.0.1 with real TLS, for functional tests.

`ApiServerProc` runs `slipstream lab apiserver` on a port of its own, and
can be stopped, killed and started again on the same port and state file.
`kubectl()` runs the machine's kubectl 1.32 against it with a private HOME
(its discovery cache is per test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

KUBECTL = "/usr/bin/kubectl"
DATA = Path(__file__).parent / "apiserver_data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServerProc:
    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.port = free_port()
        self.state = root / "state.json"
        self.certs = root / "certs"
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "apiserver.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> str:
        return str(self.certs / "kubeconfig")

    @property
    def ca(self) -> str:
        return str(self.certs / "ca.crt")

    @property
    def token(self) -> str:
        return (self.certs / "admin.token").read_text().strip()

    def start(self, timeout: float = 30.0) -> ApiServerProc:
        argv = [
            sys.executable,
            "-m",
            "agent",
            "lab",
            "apiserver",
            "--state",
            str(self.state),
            "--cert-dir",
            str(self.certs),
            "--listen",
            f"127.0.0.1:{self.port}",
            *self.args,
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"apiserver exited: {self.log.read_text()[-2000:]}")
            try:
                if self.request("GET", "/readyz", auth=False)[0] == 200:
                    return self
            except (OSError, ssl.SSLError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"apiserver not ready: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool | str = True,
        ctype: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        h = {"Content-Type": ctype, **(headers or {})}
        if auth:
            h["Authorization"] = f"Bearer {self.token if auth is True else auth}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, context=self.context(), timeout=20) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KUBECONFIG": self.kubeconfig,
            **(env or {}),
        }
        out = subprocess.run(
            [KUBECTL, *args], input=input, capture_output=True, text=True, env=full_env, timeout=45
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}"
            )
        return out

    def kubectl_popen(self, *args: str) -> subprocess.Popen[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KUBECONFIG": self.kubeconfig,
        }
        return subprocess.Popen(
            [KUBECTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )


def manifest(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)
