"""Captured outbound connections (15001): where they go, and over what.

A Service address is resolved to its endpoints (balanced, with retries across
endpoints and outlier ejection); a pod address to that pod. An endpoint in
the mesh is reached over HBONE with the source pod's identity, checking the
destination's; one outside it in plaintext from the pod's own address, unless
the source's PeerAuthentication is STRICT, which refuses it. Anything else
(outside the cluster) is passed through in plaintext, under the same rule.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import time
from collections.abc import Callable

from agent.common.constants import HBONE_PORT
from agent.common.netns import Netns
from agent.hbone import client as hbone
from agent.hbone.protocol import DENIED, TunnelError, connect_headers
from agent.hbone.stream import End
from agent.identity.manager import NoCertificate
from agent.policy.peerauth import STRICT, mode_for
from agent.state.enrollment import decide
from agent.state.objects import Pod
from agent.state.store import ServiceEndpoint

from ..balancer import Addr, Target, resolve
from ..datapath import abi
from .context import MeshContext
from .splice import Splice, TcpEnd, reset_socket

log = logging.getLogger("agent.proxy")


def addr(a: Addr) -> str:
    return f"{a[0]}:{a[1]}"


class DialFailed(Exception):
    """One endpoint failed; `outcome` names how, `retry` whether another endpoint may help."""

    def __init__(self, outcome: str, detail: str, retry: bool = True) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.retry = retry


class Outbound:
    def __init__(
        self,
        pod: Pod,
        ns: Netns,
        mesh: MeshContext,
        make_socket: Callable[[], socket.socket] | None = None,
    ) -> None:
        self.pod = pod
        self.ns = ns
        self.mesh = mesh
        self.make_socket = make_socket or ns.socket
        """Sockets in the pod for connections out of it (with eBPF capture, registered so
        capture lets their SYNs pass)."""

    async def forward(self, splice: Splice, client: TcpEnd, src: Addr, dst: Addr) -> None:
        snap = self.mesh.snapshot()
        target = resolve(snap, dst)
        record = splice.record
        record.dst_workload = target.describe()
        candidates = self.mesh.balancer.candidates(target, time.monotonic())
        if not candidates:
            candidates = [
                ServiceEndpoint(self.pod, dst[0], dst[1])
            ]  # outside the cluster: as addressed
            outside = True
        else:
            outside = False
        last = DialFailed("upstream_error", "no endpoint")
        for ep in candidates[: self.mesh.max_attempts]:
            ep_addr = (ep.ip, ep.port)
            in_mesh = not outside and self.mesh.certs is not None and self._in_mesh(ep.pod)
            try:
                if in_mesh:
                    await self._via_hbone(splice, client, src, ep)
                else:
                    await self._plaintext(splice, client, ep_addr, target, outside)
            except DialFailed as exc:
                last = exc
                if not outside:
                    ejected = self.mesh.balancer.failed(ep_addr, time.monotonic())
                    if ejected:
                        log.warning(
                            "endpoint ejected after consecutive failures",
                            extra={"endpoint": addr(ep_addr), "service": target.describe()},
                        )
                if not exc.retry or target.service is None:
                    break
                continue
            self.mesh.balancer.succeeded(ep_addr)
            self.mesh.balancer.opened(ep_addr)
            splice.on_finish(functools.partial(self.mesh.balancer.closed, ep_addr))
            return
        splice.abort(last.outcome, last.detail)

    def _in_mesh(self, pod: Pod) -> bool:
        snap = self.mesh.snapshot()
        return bool(pod.ip) and decide(pod, snap.namespace(pod.meta.namespace)).enroll

    # ------------------------------------------------------------ HBONE

    async def _via_hbone(
        self, splice: Splice, client: TcpEnd, src: Addr, ep: ServiceEndpoint
    ) -> None:
        certs = self.mesh.certs
        assert certs is not None
        record = splice.record
        src_id, dst_id = self.mesh.identity(self.pod), self.mesh.identity(ep.pod)
        record.transport, record.src_identity, record.dst_identity = (
            "hbone",
            str(src_id),
            str(dst_id),
        )
        record.upstream = addr((ep.ip, ep.port))
        try:
            cert = await certs.get(src_id, timeout=self.mesh.connect_timeout)
        except NoCertificate as exc:
            raise DialFailed("no_certificate", str(exc), retry=False) from exc
        key = hbone.PoolKey(self.pod.ip, str(src_id), str(dst_id), (ep.ip, HBONE_PORT))

        async def dial() -> hbone.HboneClientConnection:
            return await hbone.connect(
                self.make_socket,
                (ep.ip, HBONE_PORT),
                cert.client_ctx,
                str(dst_id),
                key,
                self.mesh.connect_timeout,
                mark=abi.AGENT_MARK,
                guard=self.mesh.hbone,
            )

        try:
            stream = await self.mesh.pool.stream(key, connect_headers((ep.ip, ep.port), src), dial)
        except OSError as exc:  # no socket to dial from
            raise DialFailed("hbone_error", str(exc)) from exc
        except TunnelError as exc:
            if exc.status == DENIED:
                raise DialFailed(
                    "denied", f"{dst_id} refused {src_id}: {exc.reason}", retry=False
                ) from exc
            raise DialFailed(
                "upstream_unreachable" if exc.status else "hbone_error", exc.reason
            ) from exc
        if client.closed:
            stream.reset()
            return
        stream.attach(splice)
        splice.attach_upstream(stream)
        client.resume_reading()

    # ------------------------------------------------------------ plaintext

    async def _plaintext(
        self, splice: Splice, client: TcpEnd, ep: Addr, target: Target, outside: bool
    ) -> None:
        snap = self.mesh.snapshot()
        record = splice.record
        record.transport, record.upstream = "plaintext", addr(ep)
        if (
            self.mesh.certs is not None
            and mode_for(snap, self.pod, self.pod.meta.namespace, self.mesh.root_namespace)
            == STRICT
        ):
            where = "outside the cluster" if outside else "not in the mesh"
            raise DialFailed(
                "refused_plaintext",
                f"{addr(ep)} is {where} and {self.pod.meta.namespace} requires "
                "mTLS (PeerAuthentication STRICT)",
                retry=True,
            )
        await connect_plain(splice, client, self.make_socket, ep, self.mesh.connect_timeout)


async def connect_plain(
    splice: Splice,
    client: End,
    make_socket: Callable[[], socket.socket],
    ep: Addr,
    timeout: float,
    bind: str | None = None,
) -> None:
    """Connect (marked, optionally from a transparent address) and splice. The agent makes the
    socket inside the pod, so it leaves from the pod or, with `bind`, from the real client."""
    loop = asyncio.get_running_loop()
    try:
        sock = make_socket()
    except OSError as exc:
        raise DialFailed("upstream_error", f"no socket to connect from: {exc}") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, abi.AGENT_MARK)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if bind is not None:
        sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        sock.bind((bind, 0))
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ep), timeout)
    except (TimeoutError, OSError) as exc:
        reset_socket(sock)
        raise DialFailed(connect_outcome(exc), str(exc) or type(exc).__name__) from exc
    except asyncio.CancelledError:
        reset_socket(sock)
        raise
    if client.closed:
        sock.close()
        return
    upstream = TcpEnd(splice)
    await loop.create_connection(lambda: upstream, sock=sock)
    splice.attach_upstream(upstream)
    client.resume_reading()


def connect_outcome(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "upstream_timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "upstream_refused"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "upstream_unreachable"
    return "upstream_error"
