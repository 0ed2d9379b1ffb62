"""The upstream side of the engine: HTTP/1.1 client connections to backends, pooled per endpoint.

An `UpstreamConnection` sends one request at a time and reports the response
to a `ResponseSink` as it is parsed: the head, then body chunks, then the end
(or an error). A connection whose response ended cleanly and allows keep-alive
goes back to its `Pool` for the next request. A 101 switches the connection to
raw bytes (WebSocket pass-through). Backends are plain TCP or TLS; reaching a
mesh Service over HBONE plugs in through `Pool(dial=...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

from .errors import UpstreamError
from .message import Headers


@dataclass(frozen=True)
class UpstreamEndpoint:
    host: str
    port: int
    tls: bool = False
    identity: str | None = None
    """A mesh endpoint's SPIFFE ID: reached over HBONE, and it must prove this identity."""

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class ResponseSink(Protocol):
    def head(self, status: int, headers: Headers) -> None: ...
    def data(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...
    def error(self, exc: UpstreamError) -> None: ...


Dial = Callable[[UpstreamEndpoint, Callable[[], asyncio.Protocol]], Awaitable[asyncio.Protocol]]
"""Open a transport to an endpoint running the protocol the factory makes; return it."""


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop
        self.closed = False
        self.sink: ResponseSink | None = None
        self.raw: Callable[[bytes], None] | None = None
        """After a 101: where the upstream's bytes go."""
        self.raw_closed: Callable[[], None] | None = None
        self.backpressure: tuple[Callable[[], None], Callable[[], None]] | None = None
        """Called when writes to this upstream pile up and drain (an upgraded connection
        pauses its client with it)."""
        self._reading_paused = False
        self.last_used = time.monotonic()
        self.lent = False
        """Counted in the pool's `active` (between acquire and release)."""
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_only = False
        self._done = False
        self._reusable = True
        """False after a request that asked to upgrade: whatever the answer, not reused."""
        self.upgrade_rest = b""
        """Bytes that came after a 101's head (the new protocol's)."""

    # ------------------------------------------------------------ use

    def send(
        self, data: bytes, sink: ResponseSink, *, head_only: bool = False, upgrade: bool = False
    ) -> None:
        """Write one request; its response goes to `sink`. `head_only`: a HEAD request;
        `upgrade`: it asks to switch protocols (the connection is not reused after it)."""
        assert self.transport is not None and self.sink is None
        self.sink = sink
        self._head_only = head_only
        self._reusable = not upgrade
        self._done = False
        self._headers = []
        self.transport.write(data)

    def pause(self) -> None:
        if self.transport is not None and not self.closed and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.backpressure is not None:
            self.backpressure[0]()

    def resume_writing(self) -> None:
        if self.backpressure is not None:
            self.backpressure[1]()

    def write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if self.raw is not None:
            self.raw(data)
            return
        if self.sink is None:
            self.close()  # bytes nobody asked for: the connection is not reusable
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self.upgrade_rest = data[offset:]
        except httptools.HttpParserError as exc:
            self._fail("reset", f"malformed response from {self.pool.endpoint}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.raw_closed is not None:
            raw_closed, self.raw_closed = self.raw_closed, None
            self.pool.release(self, reuse=False)
            raw_closed()
            return
        if self.sink is not None and not self._done:
            self._fail("reset", f"{self.pool.endpoint} closed the connection")

    def eof_received(self) -> bool | None:
        return None  # a half-closed upstream ends the connection (connection_lost follows)

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self.sink is None:
            # A response nobody asked for (bytes after the last one's end, in the same read):
            # left in the parser it would be taken for the next request's answer.
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        sink = self.sink
        status = self._parser.get_status_code()
        if sink is None:
            return
        if 100 <= status < 200 and status != 101:
            self._headers = []  # interim response (100 Continue): wait for the real one
            return
        sink.head(status, _without_connection_named(self._headers))
        if self._head_only:
            # llhttp cannot know this answered a HEAD: end the exchange here.
            keep_alive = self._keep_alive()
            self._parser = httptools.HttpResponseParser(self)
            self._complete(keep_alive)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self._done:
            self.sink.data(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101:
            # Switched: the connection stays lent to this exchange (relayed raw, or dropped
            # by UpstreamAttempt.discard); never back in the pool, where another request could be
            # written into someone's WebSocket.
            self._done = True
            return
        if status < 200:
            return
        if not self._done:
            self._complete(self._parser.should_keep_alive())

    def _keep_alive(self) -> bool:
        """For an answer llhttp did not read to its end (HEAD): Connection, and the version's
        default (an HTTP/1.0 answer closes unless it says keep-alive)."""
        tokens: set[bytes] = set()
        for n, v in self._headers:
            if n == b"connection":
                tokens.update(t.strip().lower() for t in v.split(b","))
        if self._parser.get_http_version() == "1.0":
            return b"keep-alive" in tokens
        return b"close" not in tokens

    def _complete(self, keep_alive: bool) -> None:
        self._done = True
        sink, self.sink = self.sink, None
        self.last_used = time.monotonic()
        # A slow client may have paused this connection in the read that ended the answer:
        # the pool must never hand out a connection nobody will resume.
        self.resume()
        if self.raw is None:  # an upgraded connection stays lent out until it closes
            self.pool.release(self, reuse=keep_alive and self._reusable and not self.closed)
        if sink is not None:
            sink.end()

    def _fail(self, kind: str, detail: str) -> None:
        self._done = True
        sink, self.sink = self.sink, None
        self.pool.release(self, reuse=False)
        if sink is not None:
            sink.error(UpstreamError(kind, detail))


_FRAMING = frozenset({b"connection", b"content-length", b"transfer-encoding", b"upgrade"})


def _without_connection_named(fields: list[tuple[bytes, bytes]]) -> Headers:
    """The response head without the fields its `Connection` names (RFC 9110 §7.6.1): they
    are for this hop, and taken out here, before the gateway adds fields of its own that an
    upstream could otherwise name. (Framing fields stay: the proxy reads them.)"""
    named: set[bytes] = set()
    for n, v in fields:
        if n == b"connection":
            named.update(t.strip().lower() for t in v.split(b","))
    named -= _FRAMING
    if not named:
        return Headers(fields)
    return Headers([(n, v) for n, v in fields if n not in named])


async def tcp_dial(
    endpoint: UpstreamEndpoint,
    factory: Callable[[], asyncio.Protocol],
    ssl_context: ssl.SSLContext | None = None,
) -> asyncio.Protocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        factory,
        endpoint.host,
        endpoint.port,
        ssl=ssl_context if endpoint.tls else None,
        server_hostname=endpoint.host if endpoint.tls else None,
    )
    return proto


class Pool:
    """Idle keep-alive connections to one endpoint, and how to open more."""

    def __init__(
        self,
        endpoint: UpstreamEndpoint,
        *,
        connect_timeout: float = 5.0,
        max_idle: int = 256,
        idle_timeout: float = 60.0,
        dial: Dial | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._dial = dial
        self._ssl = ssl_context
        self._idle: deque[UpstreamConnection] = deque()
        self.active = 0
        """Connections lent out (requests in flight): least-request balancing reads it."""
        self.closed = False

    def take(self) -> UpstreamConnection | None:
        """An idle connection, if there is one (no waiting: the common case, kept cheap)."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.last_used < self.idle_timeout:
                self.active += 1
                conn.lent = True
                return conn
            conn.close()
        return None

    async def acquire(self) -> UpstreamConnection:
        """An idle connection, or a new one."""
        conn = self.take()
        if conn is not None:
            return conn
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self._dial is not None:
                    proto = await self._dial(self.endpoint, lambda: UpstreamConnection(self))
                else:
                    proto = await tcp_dial(
                        self.endpoint, lambda: UpstreamConnection(self), self._ssl
                    )
        except TimeoutError as exc:
            raise UpstreamError("connect", f"{self.endpoint}: connect timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError("connect", f"{self.endpoint}: {exc}") from exc
        conn = cast(UpstreamConnection, proto)
        self.active += 1
        conn.lent = True
        return conn

    def release(self, conn: UpstreamConnection, *, reuse: bool) -> None:
        """A lent connection comes back: kept for the next request, or closed."""
        if conn.lent:
            conn.lent = False
            self.active -= 1
        if reuse and not conn.closed and not self.closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed by itself: an idle one leaves the pool."""
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop().close()
