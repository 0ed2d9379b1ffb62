"""The HBONE client side: pooled mTLS connections, one CONNECT stream per proxied connection.

Connections are pooled per (source pod, source identity, destination identity,
destination address), carry many streams (up to a cap), and close when idle.
The server must prove the expected SPIFFE ID and choose ALPN h2, or the
connection is dropped. Every pooled connection is kept alive with PINGs (see
H2Endpoint): one whose peer stopped answering is closed, so the pool stops
choosing it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import codec
from .endpoint import H2Endpoint, H2Stream
from .limits import HboneGuard
from .protocol import TunnelError

log = logging.getLogger("agent.hbone")

CONNECT_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 10.0


@dataclass(frozen=True)
class PoolKey:
    src_ip: str
    src_identity: str
    dst_identity: str
    dst: tuple[str, int]


class HboneClientConnection(H2Endpoint):
    client_side = True

    def __init__(self, key: PoolKey, guard: HboneGuard | None = None) -> None:
        super().__init__(guard)
        self.key = key
        self.idle_since = time.monotonic()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def has_room(self, cap: int) -> bool:
        return self.conn.can_open(cap)

    def forget(self, stream: H2Stream) -> None:
        super().forget(stream)
        if not self.streams:
            self.idle_since = time.monotonic()

    async def open_stream(
        self, headers: list[tuple[str, str]], timeout: float = RESPONSE_TIMEOUT
    ) -> H2Stream:
        stream = self.add_stream(self.conn.open_stream(headers))
        self.flush()
        try:
            response = await asyncio.wait_for(asyncio.shield(stream.response), timeout)
        except TimeoutError as exc:
            self.reset(stream, codec.CANCEL)
            raise TunnelError("the destination's agent did not answer the CONNECT") from exc
        status = dict(response).get(":status", "")
        if status != "200":
            if not stream.closed:
                self.reset(stream, codec.CANCEL)
            raise TunnelError(
                f"the destination's agent answered {status}",
                int(status) if status.isdigit() else None,
            )
        return stream


async def connect(
    make_socket: Callable[[], socket.socket],
    dst: tuple[str, int],
    context: ssl.SSLContext,
    expected: str,
    key: PoolKey,
    timeout: float = CONNECT_TIMEOUT,
    mark: int | None = None,
    guard: HboneGuard | None = None,
) -> HboneClientConnection:
    """An mTLS HTTP/2 connection to a destination's :15008. `make_socket` gives the socket;
    the agent makes it inside the source pod, so it leaves from the pod's own address, and
    marks it so its own capture lets it pass (`mark` None: a client outside the capture).
    `guard` holds the limits and counts what triggers (the agent's, for /config_dump)."""
    loop = asyncio.get_running_loop()
    sock = make_socket()
    try:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, dst), timeout)
        _, conn = await loop.create_connection(
            lambda: HboneClientConnection(key, guard),
            sock=sock,
            ssl=context,
            server_hostname="",
            ssl_handshake_timeout=timeout,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        sock.close()
        raise TunnelError(
            f"cannot open HBONE to {dst[0]}:{dst[1]}: {exc or type(exc).__name__}"
        ) from exc
    if conn.refused:
        raise TunnelError(f"{dst[0]}:{dst[1]}: {conn.refused}")
    if conn.peer_identity != expected:
        conn.abort("wrong server identity")
        raise TunnelError(f"{dst[0]}:{dst[1]} presented {conn.peer_identity!r}, not {expected}")
    return conn


class HbonePool:
    def __init__(self, max_streams: int = 100, idle_timeout: float = 60.0) -> None:
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self._conns: dict[PoolKey, list[HboneClientConnection]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}

    async def stream(
        self,
        key: PoolKey,
        headers: list[tuple[str, str]],
        dial: Callable[[], Awaitable[HboneClientConnection]],
    ) -> H2Stream:
        conn = await self._connection(key, dial)
        return await conn.open_stream(headers)

    async def _connection(
        self, key: PoolKey, dial: Callable[[], Awaitable[HboneClientConnection]]
    ) -> HboneClientConnection:
        found = self._pick(key)
        if found:
            return found
        async with self._locks.setdefault(key, asyncio.Lock()):
            found = self._pick(key)
            if found:
                return found
            conn = await dial()
            self._conns.setdefault(key, []).append(conn)
            log.debug(
                "HBONE connection opened",
                extra={"dst": f"{key.dst[0]}:{key.dst[1]}", "identity": key.dst_identity},
            )
            return conn

    def _pick(self, key: PoolKey) -> HboneClientConnection | None:
        conns = self._conns.get(key, [])
        conns[:] = [c for c in conns if c.usable]
        for c in conns:
            if c.has_room(self.max_streams):
                return c
        return None

    def close_idle(self) -> None:
        now = time.monotonic()
        for key, conns in list(self._conns.items()):
            for c in list(conns):
                if not c.usable or (not c.streams and now - c.idle_since > self.idle_timeout):
                    conns.remove(c)
                    c.abort("idle")
            if not conns:
                del self._conns[key]
                self._locks.pop(key, None)

    def close_for(self, src_ip: str) -> None:
        """A source pod left the mesh: its pooled connections go with it."""
        for key in [k for k in self._conns if k.src_ip == src_ip]:
            for c in self._conns.pop(key):
                c.abort("source pod unenrolled")

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "dst": f"{k.dst[0]}:{k.dst[1]}",
                "src": k.src_identity,
                "dstIdentity": k.dst_identity,
                "connections": len(v),
                "streams": sum(len(c.streams) for c in v),
            }
            for k, v in self._conns.items()
        ]

    async def run(self, drain: asyncio.Event) -> None:
        try:
            while not drain.is_set():
                try:
                    await asyncio.wait_for(drain.wait(), 5.0)
                except TimeoutError:
                    self.close_idle()
        finally:
            for conns in self._conns.values():
                for c in conns:
                    c.abort("agent stopping")
            self._conns.clear()
