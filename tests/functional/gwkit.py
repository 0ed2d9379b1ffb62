"""Real processes for gateway tests: the gateway itself, echo upstreams, redis-server, nginx.

Everything listens on 127.0.0.1 ports picked free at start, writes its log
under the test's tmp_path, and is stopped by the fixture that started it,
pass or fail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
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


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
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


def run_nginx(tmp: Path, locations: str) -> tuple[int, subprocess.Popen[bytes]]:
    """nginx on a free loopback port with one server of the given `location` blocks."""
    port = free_port()
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {tmp}/nginx-{port}.pid; error_log stderr warn;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; {locations} }} }}
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


def start_nginx(
    tmp: Path, body: str = "hello from nginx\n", status: int = 200
) -> tuple[int, subprocess.Popen[bytes]]:
    return run_nginx(tmp, f"location / {{ return {status} {json.dumps(body)}; }}")


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
        deadline = time.monotonic() + 40  # (master + workers start slowly on a loaded machine)
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
        deadline = time.monotonic() + 20
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

    async def logged(self, request_id: str, timeout: float = 15) -> dict[str, Any]:
        """The access-log record of one request, once it is written (polled, never slept for:
        a worker writes it after the response, on a loaded machine maybe much later)."""
        deadline = time.monotonic() + timeout
        while True:
            for rec in self.access_log():
                if rec["request_id"] == request_id:
                    return rec
            if time.monotonic() >= deadline:
                raise AssertionError(f"no access-log record for request {request_id}")
            await asyncio.sleep(0.05)

    def refusals(self, timeout: float = 20) -> list[dict[str, Any]]:
        """The engine's "request refused" log records, once there is at least one."""
        deadline = time.monotonic() + timeout
        while True:
            recs = []
            for line in self.log.read_text().splitlines():
                if '"request refused"' in line:
                    recs.append(json.loads(line))
            if recs or time.monotonic() > deadline:
                return recs
            time.sleep(0.05)

    def wait_access(self, count: int, route: str | None = None, timeout: float = 20) -> list:
        """The access-log records (of `route`), once there are `count` of them (lines are
        flushed in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = [r for r in self.access_log() if route is None or r.get("route") == route]
            if len(recs) >= count or time.monotonic() > deadline:
                return recs
            time.sleep(0.05)

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


def start_nginx_oracle(tmp: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """nginx as the upstream a real deployment has: it normalizes the path again (decoding,
    dot segments, merge_slashes) and says which location it chose, for a request the gateway
    let through. `/admin` and below (whole segments, as a Gateway API PathPrefix) is what the
    gateway's ACL must protect."""
    report = (
        "loc=$loc\\nuri=$uri\\nrequest_uri=$request_uri\\nhost=$host\\nargs=$args\\n"
        "authorization=$http_authorization\\napikey=$http_apikey\\n"
    )
    return run_nginx(
        tmp,
        f'location ~ ^/admin(/|$) {{ set $loc admin; return 200 "{report}"; }}\n'
        f'    location / {{ set $loc public; return 200 "{report}"; }}',
    )


def oracle_view(body: bytes) -> dict[str, str]:
    """What start_nginx_oracle reported, as a dict."""
    out = {}
    for line in body.decode("latin-1").splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


class Recorder:
    """A raw upstream on loopback that keeps every byte it receives, per connection, and answers
    each request `200 ok` (keep-alive). With `switch=True` it answers any request carrying
    `Upgrade` with `101` for that protocol and from then on only records (what an h2c or
    WebSocket server behind the gateway would see); `answer` replaces the 200 when set."""

    def __init__(self, *, switch: bool = False, answer: bytes | None = None) -> None:
        self.switch = switch
        self.answer = answer or b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        self.connections: list[bytearray] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c) for c in self.connections)

    def heads(self) -> list[bytes]:
        """The request heads received, in order (bodies and raw bytes left out)."""
        return [h for c in self.connections for h in _heads(bytes(c))]

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buf = bytearray()
            with self._lock:
                self.connections.append(buf)
            threading.Thread(target=self._serve, args=(conn, buf), daemon=True).start()

    def _serve(self, conn: socket.socket, buf: bytearray) -> None:
        pending = b""
        switched = False
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    buf += data
                if switched:
                    continue
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, rest = pending.partition(b"\r\n\r\n")
                    length = 0
                    upgrade = None
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value.strip())
                        if name.strip().lower() == b"upgrade":
                            upgrade = value.strip()
                    if len(rest) < length:
                        break
                    pending = rest[length:]
                    if self.switch and upgrade is not None:
                        conn.sendall(
                            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                            b"upgrade: " + upgrade + b"\r\n\r\n"
                        )
                        switched = True
                        break
                    try:
                        conn.sendall(self.answer)
                    except OSError:  # the gateway closed it mid-answer (a test's own doing)
                        return

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _heads(data: bytes) -> list[bytes]:
    out = []
    while b"\r\n\r\n" in data:
        head, _, data = data.partition(b"\r\n\r\n")
        if not head.split(b" ", 1)[0].isalpha():
            break
        out.append(head)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        data = data[length:]
    return out


def read_answers(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the gateway sends until it closes the connection or goes quiet."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


@dataclass
class Answer:
    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def read_answer(f: Any, *, head_request: bool = False) -> Answer | None:
    """One HTTP/1.1 response from a socket file (interim 1xx included as they come); None at
    the end of the connection."""
    line = f.readline()
    if not line:
        return None
    parts = line.split(b" ", 2)
    status = int(parts[1])
    headers: dict[bytes, list[bytes]] = {}
    while (h := f.readline()) not in (b"\r\n", b""):
        name, _, value = h.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if status < 200 or status in (204, 304) or head_request:
        return Answer(status, headers, b"")
    if headers.get(b"transfer-encoding"):
        body = b""
        while (size := int(f.readline().split(b";")[0], 16)) > 0:
            body += f.read(size)
            f.readline()
        while f.readline() not in (b"\r\n", b""):
            pass
        return Answer(status, headers, body)
    if b"content-length" in headers:
        return Answer(status, headers, f.read(int(headers[b"content-length"][0])))
    return Answer(status, headers, f.read())


class Client:
    """A raw client connection: send bytes exactly as given, read answers one by one."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def send(self, data: bytes) -> Client:
        self.sock.sendall(data)
        return self

    def answer(self, *, head_request: bool = False) -> Answer | None:
        try:
            return read_answer(self.f, head_request=head_request)
        except (ConnectionResetError, TimeoutError):
            return None

    def closed_by_peer(self) -> bool:
        """True once the gateway has closed its side (reads end-of-file)."""
        try:
            return self.f.read(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.f.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (a gateway master's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
