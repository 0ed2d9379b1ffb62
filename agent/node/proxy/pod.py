"""The agent's listeners inside one enrolled pod, and the connections they carry.

Per pod: 15001 (captured outbound), 15006 (captured inbound plaintext) and
15008 (inbound HBONE). Every socket is created inside the pod's namespace and
carries the agent mark, so capture never takes the agent's own traffic.
Closing a PodProxy closes its listeners and resets its connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.common.constants import HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT
from agent.common.errors import SlipstreamError
from agent.common.netns import Netns
from agent.hbone import server as hbone_server
from agent.hbone.stream import End
from agent.identity.manager import NoCertificate
from agent.policy.authz import Decision, PolicyPeer
from agent.state.objects import Pod

from ..datapath import abi
from .accesslog import FlowRecord, emit
from .context import MeshContext
from .inbound import HboneInbound, authorize, plaintext_refused
from .outbound import DialFailed, Outbound, addr, connect_plain
from .splice import Splice, TcpEnd

log = logging.getLogger("agent.proxy")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; the socket module does not name it


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    ip: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def original_dst_from_sockname(sock: Any) -> tuple[str, int]:
    """eBPF capture: the accepted socket's own address is where the client was going."""
    host, port = sock.getsockname()[:2]
    return host, port


def original_dst_from_conntrack(sock: Any) -> tuple[str, int]:
    """iptables REDIRECT: the kernel keeps the original destination in conntrack."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


class _ClientEnd(TcpEnd):
    """The captured side: reading waits until the upstream is connected."""

    def __init__(self, splice: Splice, on_made: Callable[[_ClientEnd], None]) -> None:
        super().__init__(splice)
        self._on_made = on_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Python 3.11 registers the reader after this returns and ignores a pause
        # made here, so pause once it has; early bytes wait in the splice meanwhile.
        asyncio.get_running_loop().call_soon(self.pause_reading)
        self._on_made(self)


class PodProxy:
    def __init__(
        self,
        pod: Pod,
        ns: Netns,
        mesh: MeshContext,
        *,
        original_dst: Callable[[Any], tuple[str, int]] = original_dst_from_sockname,
        transparent_outbound: bool = True,
        outbound_socket: Callable[[], socket.socket] | None = None,
    ) -> None:
        self.pod = pod
        self.ref = PodRef(pod.meta.namespace, pod.meta.name, pod.ip)
        self.ns = ns
        self.mesh = mesh
        self._original_dst = original_dst
        self._transparent_outbound = transparent_outbound
        self._servers: list[asyncio.base_events.Server] = []
        self._listener_fds: dict[str, int] = {}
        self._splices: set[Splice] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._hbone_conns: set[hbone_server.HboneServerConnection] = set()
        self._outbound = Outbound(pod, ns, mesh, outbound_socket or ns.socket)
        self._hbone = HboneInbound(pod, mesh, self._dial_app, self._new_splice, self._authorize)
        self._watched: dict[Splice, PolicyPeer] = {}
        """Open inbound connections, checked again when policy changes."""

    # ------------------------------------------------------------ listeners

    def _listener(self, port: int, *, transparent: bool) -> socket.socket:
        sock = self.ns.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, abi.AGENT_MARK)
            if transparent:
                sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for port, transparent, direction in (
                (OUTBOUND_PORT, self._transparent_outbound, "outbound"),
                (INBOUND_PORT, False, "inbound"),
            ):
                sock = self._listener(port, transparent=transparent)
                self._listener_fds[direction] = sock.fileno()
                self._servers.append(await loop.create_server(self._factory(direction), sock=sock))
            hbone = self._listener(HBONE_PORT, transparent=False)
            self._listener_fds["hbone"] = hbone.fileno()
            self._spawn(self._serve_hbone(hbone))
        except BaseException:
            await self.close("enrollment failed")
            raise

    async def close(self, reason: str = "unenrolled") -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._hbone_conns):
            conn.abort(reason)
        for splice in list(self._splices):
            splice.abort(reason)
        self.mesh.pool.close_for(self.ref.ip)

    def listener_fd(self, direction: str) -> int:
        """The listening socket for outbound, inbound or hbone (for the datapath's socket map)."""
        return self._listener_fds[direction]

    @property
    def connections(self) -> int:
        return len(self._splices)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ captured plaintext (15001, 15006)

    def _factory(self, direction: str) -> Callable[[], _ClientEnd]:
        return lambda: self._new_client(direction)

    def _new_splice(self, record: FlowRecord) -> Splice:
        splice = Splice(record, self._finished)
        self._splices.add(splice)
        return splice

    def _new_client(self, direction: str) -> _ClientEnd:
        splice = self._new_splice(
            FlowRecord(direction=direction, src="", dst="", node=self.mesh.node)
        )
        end = _ClientEnd(splice, lambda e: self._spawn(self._accepted(e, direction)))
        splice.client = end
        return end

    def _finished(self, splice: Splice) -> None:
        self._splices.discard(splice)
        self._watched.pop(splice, None)
        if splice.record.src:
            emit(splice.record)

    async def _accepted(self, end: _ClientEnd, direction: str) -> None:
        splice, record = end.splice, end.splice.record
        assert end.transport is not None
        sock = end.transport.get_extra_info("socket")
        try:
            src = sock.getpeername()[:2]
            dst = self._original_dst(sock)
        except OSError as exc:
            splice.abort("client_reset", str(exc))
            return
        snap = self.mesh.snapshot()
        record.src, record.dst = addr(src), addr(dst)
        src_pod = snap.find_pod(src[0])
        record.src_workload = f"{src_pod.meta.namespace}/{src_pod.meta.name}" if src_pod else None
        if direction == "outbound":
            await self._outbound.forward(splice, end, src, dst)
            return
        record.dst_workload = f"{self.ref.namespace}/{self.ref.name}"
        record.transport = "plaintext"
        why = plaintext_refused(self.mesh, self.pod)
        if why:
            log.info(
                "inbound plaintext refused", extra={"pod": str(self.ref), "client": record.src}
            )
            splice.abort("refused_plaintext", why)
            return
        decision = self._authorize(splice, PolicyPeer(src[0], None, *dst))
        if not decision.allow:
            splice.abort("denied", decision.reason)
            return
        record.upstream = addr(dst)
        try:
            await self._dial_app(splice, end, dst, src[0])
        except DialFailed as exc:
            splice.abort(exc.outcome, exc.detail)

    async def _dial_app(
        self, splice: Splice, client: End, dst: tuple[str, int], client_ip: str
    ) -> None:
        """Deliver to the app from the real client's address (not local here: transparent)."""
        await connect_plain(
            splice, client, self.ns.socket, dst, self.mesh.connect_timeout, bind=client_ip
        )

    # ------------------------------------------------------------ authorization

    def _authorize(self, splice: Splice, peer: PolicyPeer) -> Decision:
        decision = authorize(self.mesh, self.pod, splice, peer)
        if decision.allow:
            self._watched[splice] = peer
        return decision

    def recheck(self) -> int:
        """Policy changed: close the open inbound connections it now denies. Returns how many."""
        closed = 0
        for splice, peer in list(self._watched.items()):
            decision = authorize(self.mesh, self.pod, splice, peer)
            if decision.allow:
                continue
            del self._watched[splice]
            splice.abort("denied", f"policy changed: {decision.reason}")
            closed += 1
        if closed:
            log.info(
                "open connections closed by a policy change",
                extra={"pod": str(self.ref), "connections": closed},
            )
        return closed

    # ------------------------------------------------------------ HBONE (15008)

    async def _serve_hbone(self, listener: socket.socket) -> None:
        try:
            await hbone_server.accept_loop(listener, self._server_context, self._new_hbone)
        finally:
            listener.close()

    async def _server_context(self) -> ssl.SSLContext:
        if self.mesh.certs is None:
            raise SlipstreamError("this agent has no CA: HBONE is off")
        try:
            return (await self.mesh.certs.get(self.mesh.identity(self.pod))).server_ctx
        except NoCertificate as exc:
            raise SlipstreamError(str(exc)) from exc

    def _new_hbone(self) -> hbone_server.HboneServerConnection:
        conn = hbone_server.HboneServerConnection(
            self._hbone.handle, self.mesh.trust_domain, self.mesh.hbone
        )
        self._hbone_conns.add(conn)
        conn.lost.add_done_callback(lambda _: self._hbone_conns.discard(conn))
        return conn
