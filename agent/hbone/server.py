"""The HBONE server side: TLS per accepted connection, CONNECT requests handed to a handler.

Each accepted connection gets the listening pod's current certificate (so a
renewal applies to the next handshake), must present a client certificate
from the trust bundle with a SPIFFE ID in the trust domain, must negotiate
ALPN h2 and send its preface within `preface_timeout`, and may then open
many CONNECT streams. A bad request gets 400 on its stream; a peer that
breaks HTTP/2 loses its connection; neither touches other connections.

What one peer can make this side do is bounded (limits.py): streams whose
dial is in flight per connection, connections and streams per peer identity
across the agent (HboneGuard), and a connection with no stream for
`idle_timeout` is closed. A stream that ends before its dial finished,
whichever side ended it, cancels the dial: a reset stream costs the app
nothing (Rapid Reset had each dialled the app).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from agent.common.errors import SlipstreamError
from agent.identity.certs import IdentityError, SpiffeId

from . import codec
from .endpoint import H2Endpoint, H2Stream
from .limits import HboneGuard
from .protocol import OK, BadRequest, ConnectRequest, parse_connect

log = logging.getLogger("agent.hbone")

HANDSHAKE_TIMEOUT = 10.0
Handler = Callable[[H2Stream, ConnectRequest, "HboneServerConnection"], Awaitable[None]]


class HboneServerConnection(H2Endpoint):
    client_side = False

    def __init__(
        self, handler: Handler, trust_domain: str, guard: HboneGuard | None = None
    ) -> None:
        super().__init__(guard)
        self.handler = handler
        self.trust_domain = trust_domain
        self._tasks: dict[int, asyncio.Task[None]] = {}
        """Handlers still running (their dial in flight), by stream id."""
        self._counted = False
        """This connection holds one of its identity's connection slots in the guard."""
        self._streams_counted: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.refused:
            return
        why = self._refuse_peer()
        if why:
            log.warning(
                "HBONE client refused",
                extra={"peer": self.peer_identity, "reason": why, "addr": self.peer_addr},
            )
            self.refused = why
            self.abort(why)
            return
        assert self.peer_identity is not None
        if not self.guard.admit_connection(self.peer_identity):
            self.guard.hit("identity_connections_refused")
            limit = self.guard.limits.peers.max_connections_per_identity
            self.refused = f"{self.peer_identity} holds {limit} connections to this agent already"
            log.warning(
                "HBONE connection refused",
                extra={"peer": self.peer_identity, "addr": self.peer_addr, "reason": self.refused},
            )
            self.abort(self.refused, codec.ENHANCE_YOUR_CALM)
            return
        self._counted = True

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
            self.note("bad_requests", exc.reason)
            self.conn.respond(stream_id, [(":status", str(exc.status))], end_stream=True)
            self.conn.reset(stream_id, codec.NO_ERROR)  # nothing more to read on it
            return
        limits = self.guard.limits
        assert self.peer_identity is not None
        if len(self._tasks) >= self.limits.max_pending_dials:
            self.note(
                "pending_dials_refused",
                f"{self.limits.max_pending_dials} streams of this connection are dialling",
            )
            self.conn.refuse(stream_id)
            return
        if not self.guard.admit_stream(self.peer_identity):
            self.note(
                "identity_streams_refused",
                f"{self.peer_identity} holds {limits.peers.max_streams_per_identity} "
                "streams on this agent already",
            )
            self.conn.refuse(stream_id)
            return
        self._streams_counted.add(stream_id)
        stream = self.add_stream(stream_id)
        task = asyncio.ensure_future(self._handle(stream, request))
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(stream_id, None))

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

    def forget(self, stream: H2Stream) -> None:
        """The stream is over: its dial, if still in flight, is cancelled (whoever ended
        the stream), and its identity's slot is free again."""
        super().forget(stream)
        task = self._tasks.pop(stream.id, None)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            self.note(
                "dials_cancelled",
                "the stream ended before its dial finished",
                "HBONE dial cancelled",
            )
        if stream.id in self._streams_counted:
            self._streams_counted.discard(stream.id)
            assert self.peer_identity is not None
            self.guard.release_stream(self.peer_identity)

    def _deadlines(self) -> list[tuple[float, str, str]]:
        out = super()._deadlines()
        lim = self.limits
        if not self.conn.preface_received:
            out.append(
                (
                    self._made_at + lim.preface_timeout,
                    "preface_timeouts",
                    f"no HTTP/2 preface within {lim.preface_timeout:g} s of the handshake",
                )
            )
        if not self.streams and not self._tasks:
            out.append(
                (
                    self._idle_since + lim.idle_timeout,
                    "idle_timeouts",
                    f"no stream for {lim.idle_timeout:g} s",
                )
            )
        return out

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # resets every stream, which cancels its dial
        for task in list(self._tasks.values()):
            task.cancel()
        if self._counted:
            self._counted = False
            assert self.peer_identity is not None
            self.guard.release_connection(self.peer_identity)


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
