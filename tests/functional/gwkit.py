"""Real processes for gateway tests: the gateway itself, echo upstreams, redis-server, nginx.

Everything listens on 127.0.0.1 ports picked free at start, writes its log
under the test's tmp_path, and is stopped by the fixture that started it,
pass or fail.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .cakit import free_port


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Echo:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_echo(tmp: Path, name: str, port: int | None = None) -> Echo:
    port = port or free_port()
    log = tmp / f"echo-{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.functional.echo", "--port", str(port), "--name", name],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_port(port, proc, log)
    return Echo(name, port, proc)


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(tmp: Path, port: int | None = None) -> Redis:
    port = port or free_port()
    log = tmp / "redis.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_port(port, proc, log)
    return Redis(port, proc)


def start_nginx(
    tmp: Path, body: str = "hello from nginx\n", status: int = 200
) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {tmp}/nginx-{port}.pid; error_log stderr warn;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location / {{ return {status} {json.dumps(body)}; }} }} }}
"""
    )
    log = tmp / f"nginx-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_port(port, proc, log)
    return port, proc


@dataclass
class GatewayProc:
    """`slipstream gateway` run as a user runs it: master, workers, admin API, a config file."""

    tmp: Path
    port: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def config_path(self) -> Path:
        return self.tmp / "gateway.yaml"

    @property
    def log(self) -> Path:
        return self.tmp / "gateway.log"

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def with_listener(self, config: dict[str, Any]) -> dict[str, Any]:
        config = dict(config)
        config.setdefault("listeners", [{"name": "web", "address": f"127.0.0.1:{self.port}"}])
        config.setdefault("accessLog", {"format": "json"})
        return config

    def write(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(self.with_listener(config))
        tmp = self.config_path.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)  # whole files only, as an editor or ConfigMap does

    def start(self, config: dict[str, Any] | str) -> GatewayProc:
        self.write(config)
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "gateway", "-c", str(self.config_path),
                 "--admin", f"127.0.0.1:{self.admin}", "--log-format", "json",
                 *self.extra_args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited:\n{self.log.read_text()[-4000:]}")
            if self.get_admin("/ready")[0] == 200:
                return self
            time.sleep(0.05)
        raise AssertionError(f"gateway not ready:\n{self.log.read_text()[-4000:]}")

    def get_admin(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def live_config(self) -> dict[str, Any]:
        return json.loads(self.get_admin("/config")[1])

    def apply(self, config: dict[str, Any] | str, *, expect_ok: bool = True) -> dict[str, Any]:
        """Write a new file and wait until the gateway took it (or refused it)."""
        before = self.live_config()
        time.sleep(0.01)  # a different mtime even on coarse clocks
        self.write(config)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = self.live_config()
            if (
                expect_ok
                and now["version"] > before["version"]
                and self.get_admin("/ready")[0] == 200
            ):
                return now
            if not expect_ok and now["lastError"] and now["lastError"] != before["lastError"]:
                return now
            time.sleep(0.05)
        raise AssertionError(f"config not {'applied' if expect_ok else 'refused'}: {now}")

    def metrics(self) -> str:
        return self.get_admin("/metrics")[1].decode()

    def access_log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "request_id" in rec:
                out.append(rec)
        return out

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=15)


def self_signed(tmp: Path, host: str) -> tuple[str, str]:
    """A certificate for `host` (and its key) in PEM files; returns their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{host}.crt", tmp / f"{host}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are and read until the gateway closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out
