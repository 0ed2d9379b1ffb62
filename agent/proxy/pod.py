"""The agent's listeners inside one enrolled pod, and the connections they carry.

Per pod: 15001 (captured outbound, transparent), 15006 (captured inbound
plaintext) and 15008 (inbound HBONE). Every socket is created inside the pod's
namespace and carries the agent mark, so capture never takes the agent's own
traffic. Closing a PodProxy closes its listeners and resets its connections.

In this version captured connections are relayed in plaintext: outbound to
the original destination, from the pod's own address; inbound to the app,
from the original client's address (bound transparently), so both servers
see the real client IP.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..datapath import abi
from ..netns import Netns
from ..state import Snapshot
from .accesslog import FlowRecord, emit
from .splice import Splice, TcpEnd, reset_socket

log = logging.getLogger("agent.proxy")

IP_TRANSPARENT = 19
SO_ORIGINAL_DST = 80
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    ip: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def _addr(a: tuple[str, int]) -> str:
    return f"{a[0]}:{a[1]}"


def original_dst_from_sockname(sock: Any) -> tuple[str, int]:
    """eBPF capture: the accepted socket's own address is where the client was going."""
    host, port = sock.getsockname()[:2]
    return host, port


def original_dst_from_conntrack(sock: Any) -> tuple[str, int]:
    """iptables REDIRECT: the kernel keeps the original destination in conntrack."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def describe(snap: Snapshot, ip: str) -> str | None:
    pod = snap.find_pod(ip)
    if pod is not None:
        return f"{pod.meta.namespace}/{pod.meta.name}"
    for svc in snap.services():
        if svc.cluster_ip == ip:
            return f"service/{svc.meta.namespace}/{svc.meta.name}"
    return None


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
        pod: PodRef,
        ns: Netns,
        node: str,
        snapshot: Callable[[], Snapshot],
        *,
        original_dst: Callable[[Any], tuple[str, int]] = original_dst_from_sockname,
        transparent_outbound: bool = True,
    ) -> None:
        self.pod = pod
        self.ns = ns
        self.node = node
        self._snapshot = snapshot
        self._original_dst = original_dst
        self._transparent_outbound = transparent_outbound
        self._servers: list[asyncio.base_events.Server] = []
        self._listener_fds: dict[str, int] = {}
        self._splices: set[Splice] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ listeners

    def _listener(self, port: int, *, transparent: bool) -> socket.socket:
        sock = self.ns.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, abi.AGENT_MARK)
            if transparent:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        specs = (
            (abi.OUTBOUND_PORT, self._transparent_outbound, "outbound"),
            (abi.INBOUND_PORT, False, "inbound"),
            (abi.HBONE_PORT, False, "hbone"),
        )
        try:
            for port, transparent, direction in specs:
                sock = self._listener(port, transparent=transparent)
                self._listener_fds[direction] = sock.fileno()
                server = await loop.create_server(self._factory(direction), sock=sock)
                self._servers.append(server)
        except BaseException:
            await self.close("enrollment failed")
            raise

    async def close(self, reason: str = "unenrolled") -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in list(self._tasks):
            task.cancel()
        for splice in list(self._splices):
            splice.abort(reason)

    def listener_fd(self, direction: str) -> int:
        """The listening socket for outbound, inbound or hbone (for the datapath's socket map)."""
        return self._listener_fds[direction]

    @property
    def connections(self) -> int:
        return len(self._splices)

    # ------------------------------------------------------------ connections

    def _factory(self, direction: str) -> Callable[[], _ClientEnd]:
        return lambda: self._new_client(direction)

    def _new_client(self, direction: str) -> _ClientEnd:
        record = FlowRecord(direction=direction, src="", dst="", node=self.node)
        splice = Splice(record, self._finished)
        end = _ClientEnd(splice, lambda e: self._accepted(e, direction))
        splice.client = end
        self._splices.add(splice)
        return end

    def _finished(self, splice: Splice) -> None:
        self._splices.discard(splice)
        if splice.record.src:
            emit(splice.record)

    def _accepted(self, end: _ClientEnd, direction: str) -> None:
        task = asyncio.ensure_future(self._forward(end, direction))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, end: _ClientEnd, direction: str) -> None:
        splice, record = end.splice, end.splice.record
        assert end.transport is not None
        sock = end.transport.get_extra_info("socket")
        try:
            src = sock.getpeername()[:2]
            dst = self._original_dst(sock)
        except OSError as exc:
            splice.abort("client_reset", str(exc))
            return
        snap = self._snapshot()
        record.src, record.dst = _addr(src), _addr(dst)
        record.src_workload = describe(snap, src[0])
        record.dst_workload = describe(snap, dst[0])
        if direction == "hbone":
            # HBONE (HTTP/2 CONNECT over mTLS) terminates here once identities exist.
            splice.abort("not_supported", "HBONE is not served by this agent version")
            return
        upstream = self._upstream_socket(direction, src)
        record.upstream = _addr(dst)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(upstream, dst), CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            reset_socket(upstream)
            outcome = _connect_outcome(exc)
            splice.abort(outcome, str(exc) or outcome)
            return
        except asyncio.CancelledError:
            reset_socket(upstream)
            raise
        if end.closed:
            upstream.close()
            return
        up_end = TcpEnd(splice)
        await loop.create_connection(lambda: up_end, sock=upstream)
        splice.attach_upstream(up_end)
        end.resume_reading()

    def _upstream_socket(self, direction: str, src: tuple[str, int]) -> socket.socket:
        sock = self.ns.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, abi.AGENT_MARK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if direction == "inbound":
            # The app must see the real client: bind its address (not local here).
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind((src[0], 0))
        sock.setblocking(False)
        return sock


def _connect_outcome(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "upstream_timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "upstream_refused"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "upstream_unreachable"
    return "upstream_error"
