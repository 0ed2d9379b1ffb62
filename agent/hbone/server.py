"""The HBONE server side: TLS per accepted connection, CONNECT requests handed to a handler.

Each accepted connection gets the listening pod's current certificate (so a
renewal applies to the next handshake), must present a client certificate
from the trust bundle with a SPIFFE ID in the trust domain, and may then open
many CONNECT streams. A bad request gets 400 on its stream; a peer that
breaks HTTP/2 loses its connection; neither touches other connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from ..errors import SlipstreamError
from ..identity.certs import IdentityError, SpiffeId
from . import codec
from .endpoint import H2Endpoint, H2Stream
from .protocol import OK, BadRequest, ConnectRequest, parse_connect

log = logging.getLogger("agent.hbone")

HANDSHAKE_TIMEOUT = 10.0
Handler = Callable[[H2Stream, ConnectRequest, "HboneServerConnection"], Awaitable[None]]


class HboneServerConnection(H2Endpoint):
    client_side = False

    def __init__(self, handler: Handler, trust_domain: str) -> None:
        super().__init__()
        self.handler = handler
        self.trust_domain = trust_domain
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        why = self._refuse_peer()
        if why:
            log.warning(
                "HBONE client refused",
                extra={
                    "peer": self.peer_identity,
                    "reason": why,
                    "addr": str(transport.get_extra_info("peername")),
                },
            )
            self.abort(why)

    def _refuse_peer(self) -> str | None:
        if not self.peer_identity:
            return "the client certificate carries no single SPIFFE ID"
        try:
            ident = SpiffeId.parse(self.peer_identity)
        except IdentityError as exc:
            return str(exc)
        if ident.trust_domain != self.trust_domain:
            return f"{self.peer_identity} is not in trust domain {self.trust_domain}"
        return None

    def on_request(self, stream_id: int, headers: list[tuple[str, str]]) -> None:
        try:
            request = parse_connect(headers)
        except BadRequest as exc:
            log.info("HBONE bad request", extra={"peer": self.peer_identity, "reason": exc.reason})
            self.conn.respond(stream_id, [(":status", str(exc.status))], end_stream=True)
            return
        stream = self.add_stream(stream_id)
        task = asyncio.ensure_future(self._handle(stream, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, stream: H2Stream, request: ConnectRequest) -> None:
        try:
            await self.handler(stream, request, self)
        except Exception:  # a handler bug must not take the connection down
            log.exception("HBONE handler failed", extra={"peer": self.peer_identity})
            self.respond(stream, 503)

    def respond(self, stream: H2Stream, status: int) -> None:
        """Answer a CONNECT: 200 opens the tunnel; anything else ends the stream."""
        if self.closed or stream.closed:
            return
        self.conn.respond(stream.id, [(":status", str(status))], end_stream=status != OK)
        self.flush()
        if status != OK:
            stream.sent_eof = True
            self.reset(stream, codec.NO_ERROR)  # the tunnel never opened

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks:
            task.cancel()
        super().connection_lost(exc)


async def accept_loop(
    listener: socket.socket,
    context: Callable[[], Awaitable[ssl.SSLContext]],
    factory: Callable[[], HboneServerConnection],
    drain: asyncio.Event | None = None,
) -> None:
    """Accept on `listener` until cancelled; each connection gets `await context()` for TLS."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def handshake(conn: socket.socket, addr: object) -> None:
        try:
            ctx = await context()
            await loop.connect_accepted_socket(
                factory, conn, ssl=ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, TimeoutError, SlipstreamError) as exc:
            log.info("HBONE handshake failed", extra={"addr": str(addr), "error": str(exc)})
            conn.close()

    try:
        while drain is None or not drain.is_set():
            conn, addr = await loop.sock_accept(listener)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(handshake(conn, addr))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
