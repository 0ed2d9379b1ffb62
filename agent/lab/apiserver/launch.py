"""Running the lab API server: the command line, a process to start, and tokens for components.

`run(options)` is `slipstream lab apiserver`: it loads the state file,
preloads manifests (CRDs first), makes or reuses the CA and serving
certificate, mints the admin token once (kept in the cert dir, 0600) and
writes a kubeconfig (`system:masters`), then serves until SIGTERM/SIGINT,
compacting the state on the way out.

For `lab up`: `spawn()` starts it as a process (listeners may sit in other
network namespaces), `wait_ready()` waits for its /readyz, and
`request_token()` asks it for a service-account token bound to a pod
(TokenRequest, as a kubelet does for projected tokens). Static tokens for
nodes or components that are not service accounts come from
`--token-auth-file` (kube-apiserver's format: `token,user,uid,"group1,group2"`).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from agent.common.manifest import load_paths

from . import auth
from .core import ApiCore
from .errors import ApiError, ApiServerError
from .persist import StateFile
from .server import ApiServer, Listen
from .tls import ensure_certs, kubeconfig, server_context, write_kubeconfig

log = logging.getLogger("slipstream.apiserver")

ADMIN_USER = "lab-admin"


@dataclass
class Options:
    state: str
    listens: list[Listen]
    cert_dir: str
    kubeconfig: str = ""
    """Default: <cert-dir>/kubeconfig."""
    preload: list[str] = field(default_factory=list)
    token_auth_file: str = ""
    service_cidr: str = "10.96.0.0/16"
    bookmark_interval: float = 60.0
    history: int = 10000
    advertise: str = ""
    """HOST:PORT clients inside the lab use (the kubernetes Service's endpoint)."""


def load_token_file(core: ApiCore, path: str) -> int:
    """Static tokens, as kube-apiserver's --token-auth-file; returns how many."""
    n = 0
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 3:
                raise ApiServerError(f'{path}:{lineno}: expected token,user,uid[,"group1,group2"]')
            token, user, uid = row[0].strip(), row[1].strip(), row[2].strip()
            groups = [g.strip() for g in row[3].split(",") if g.strip()] if len(row) > 3 else []
            _, rec = core.tokens.mint(user, groups, uid=uid)
            # Replace the random token by the file's: only its digest is kept.
            del core.tokens.records[rec.digest]
            rec.digest = auth.digest(token)
            core.tokens.records[rec.digest] = rec
            n += 1
    return n


def _admin_token(core: ApiCore, cert_dir: str) -> str:
    path = os.path.join(cert_dir, "admin.token")
    try:
        with open(path) as f:
            token = f.read().strip()
        if auth.digest(token) in core.tokens.records:
            return token
    except FileNotFoundError:
        pass
    token = core.mint_token(ADMIN_USER, [auth.MASTERS])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def build(opts: Options) -> tuple[ApiCore, ssl.SSLContext, str, str]:
    """The core (state, preloads, tokens), the TLS context, kubeconfig path, admin token."""
    server_addr = opts.advertise or (
        f"{opts.listens[0].host}:{opts.listens[0].port}" if opts.listens else "127.0.0.1:6443"
    )
    core = ApiCore(
        state=StateFile(opts.state),
        history_size=opts.history,
        service_cidr=opts.service_cidr,
        server_address=server_addr,
    )
    if opts.preload:
        docs = load_paths(opts.preload)
        try:
            for line in core.preload([d.body for d in docs if isinstance(d.body, dict)]):
                log.info("preload: %s", line)
        except ApiError as exc:
            raise ApiServerError(f"preload: {exc}") from exc
    if opts.token_auth_file:
        log.info(
            "%d static tokens from %s",
            load_token_file(core, opts.token_auth_file),
            opts.token_auth_file,
        )
    hosts = [lst.host for lst in opts.listens] + (
        [opts.advertise.rpartition(":")[0]] if opts.advertise else []
    )
    paths = ensure_certs(opts.cert_dir, [h for h in hosts if h not in ("0.0.0.0", "")])
    token = _admin_token(core, opts.cert_dir)
    path = opts.kubeconfig or os.path.join(opts.cert_dir, "kubeconfig")
    return core, server_context(paths), path, token


def write_config(opts: Options, path: str, token: str, ports: list[int]) -> None:
    """The admin kubeconfig, naming the first listener of this namespace (its real port)."""
    i = next((i for i, lst in enumerate(opts.listens) if not lst.netns), 0)
    host = opts.listens[i].host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    ca = os.path.join(opts.cert_dir, "ca.crt")
    write_kubeconfig(path, kubeconfig(f"https://{host}:{ports[i]}", ca, token))


def run(opts: Options) -> int:
    core, ctx, path, token = build(opts)
    server = ApiServer(core, ctx, opts.bookmark_interval)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start(opts.listens)
        write_config(opts, path, token, server.ports)
        print(path, flush=True)
        log.info(
            "serving the Kubernetes API on %s; kubeconfig %s",
            ", ".join(map(str, opts.listens)),
            path,
        )
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())
    return 0


# ------------------------------------------------------------------ for lab up


def command(opts: Options) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "agent",
        "lab",
        "apiserver",
        "--state",
        opts.state,
        "--cert-dir",
        opts.cert_dir,
    ]
    for lst in opts.listens:
        argv += ["--listen", str(lst)]
    if opts.kubeconfig:
        argv += ["--kubeconfig", opts.kubeconfig]
    for p in opts.preload:
        argv += ["--preload", p]
    if opts.token_auth_file:
        argv += ["--token-auth-file", opts.token_auth_file]
    if opts.advertise:
        argv += ["--advertise", opts.advertise]
    argv += [
        "--service-cidr",
        opts.service_cidr,
        "--bookmark-interval",
        str(opts.bookmark_interval),
        "--history",
        str(opts.history),
    ]
    return argv


def spawn(opts: Options, log_path: str, netns: str = "") -> subprocess.Popen[bytes]:
    """Start the server as a process (in `netns` if given); its output goes to `log_path`."""
    from agent.common.netns import preexec

    with open(log_path, "ab") as out:
        return subprocess.Popen(
            command(opts),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec(netns) if netns else None,
            start_new_session=True,
        )


def _context(ca_path: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_path)
    return ctx


def wait_ready(
    url: str, ca_path: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ApiServerError(f"the API server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(
                f"{url}/readyz", context=_context(ca_path), timeout=2
            ) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ApiServerError(f"the API server at {url} is not ready after {timeout:.0f}s: {last}")


def request_token(
    url: str,
    ca_path: str,
    admin_token: str,
    namespace: str,
    service_account: str,
    *,
    pod: str | None = None,
    ttl: int = 3600,
    audiences: list[str] | None = None,
) -> str:
    """A service-account token through TokenRequest (bound to `pod` when given)."""
    spec: dict[str, Any] = {"expirationSeconds": ttl}
    if audiences:
        spec["audiences"] = audiences
    if pod:
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod}
    body = json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    ).encode()
    req = urllib.request.Request(
        f"{url}/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=_context(ca_path), timeout=10) as resp:
            return str(json.load(resp)["status"]["token"])
    except urllib.error.HTTPError as exc:
        raise ApiServerError(
            f"TokenRequest for {namespace}/{service_account}: "
            f"{exc.read().decode(errors='replace')[:300]}"
        ) from exc
