"""Forwarding one request upstream and streaming the answer back to the client.

`send` picks a pooled connection, writes the request and waits (bounded by
the attempt's timeout) for the response head; nothing reaches the client
yet, so the caller may still retry elsewhere or change the head. `UpstreamAttempt.pipe`
then streams the body to the client as it arrives: the client's backpressure
pauses the upstream, an error mid-body closes the client connection (the
only honest signal once a status has been sent), and a 101 turns both
connections into a raw byte pipe (WebSocket).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .deadlines import Sweeper
from .errors import UpstreamError
from .message import HOP_BY_HOP, Headers, Request
from .server import Exchange
from .upstream import Pool, UpstreamConnection

HEAD_DEADLINES = Sweeper(0.05)
"""Response-head timeouts of the attempts in flight, to within 50 ms."""


class UpstreamAttempt:
    """The response of one upstream attempt, as the upstream connection reports it."""

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.status = 0
        self.headers = Headers()
        self.loop = conn.loop
        self.head_received: asyncio.Future[None] = self.loop.create_future()
        self.done: asyncio.Future[None] | None = None
        """Created only if the body is still streaming when pipe() returns."""
        self.finished = False
        self.deadline = 0.0
        """When the response head is due (0: not waiting); checked by HEAD_DEADLINES."""
        self.timeout = 0.0
        self.body_bytes = 0
        self._buffer: list[bytes] = []
        self._ended = False
        self._error: UpstreamError | None = None
        self._out: Exchange | None = None
        self._tap: Callable[[bytes | None], None] | None = None

    # ------------------------------------------------------------ ResponseSink

    def head(self, status: int, headers: Headers) -> None:
        self.status, self.headers = status, headers
        HEAD_DEADLINES.discard(self)
        if not self.head_received.done():
            self.head_received.set_result(None)

    def data(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self._out is None:
            self._buffer.append(chunk)
            return
        self._out.write(chunk)
        if self._tap is not None:
            self._tap(chunk)

    def end(self) -> None:
        self._ended = True
        if self._out is not None:
            self._finish()

    def error(self, exc: UpstreamError) -> None:
        self._error = exc
        HEAD_DEADLINES.discard(self)
        if not self.head_received.done():
            self.head_received.set_exception(exc)
            self._settle()
        elif self._out is not None:
            self._out.abort()
            self._settle()

    def expire(self, now: float) -> None:
        if now < self.deadline:
            return
        HEAD_DEADLINES.discard(self)
        if not self.head_received.done():
            self.discard()
            self.head_received.set_exception(
                UpstreamError(
                    "timeout", f"{self.conn.pool.endpoint}: no response in {self.timeout:g} s"
                )
            )

    # ------------------------------------------------------------ towards the client

    def pipe(
        self,
        out: Exchange,
        headers: Headers,
        tap: Callable[[bytes | None], None] | None = None,
    ) -> asyncio.Future[None] | None:
        """Send the (possibly changed) head and stream the body to `out`. `tap` sees every
        chunk, then None at a clean end (the cache keeps a copy that way). Returns a future
        that resolves when the body is through, or None if it already is."""
        length = _length(self.headers)
        if self.status == 101:
            out.start(101, headers, None)
            self._upgrade(out)
            return self._pending()
        out.start(self.status, headers, length)
        self._out, self._tap = out, tap
        out.on_backpressure(self.conn.pause, self.conn.resume)
        if self._buffer:
            body = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
            self._buffer.clear()
            out.write(body)
            if tap is not None:
                tap(body)
        if self._error is not None:
            out.abort()
            self._settle()
        elif self._ended:
            self._finish()
        return None if self.finished else self._pending()

    def _pending(self) -> asyncio.Future[None]:
        if self.done is None:
            self.done = self.loop.create_future()
            if self.finished:
                self.done.set_result(None)
        return self.done

    def discard(self) -> None:
        """The caller will not use this response (it retries): drop the connection."""
        self.conn.sink = None
        self.conn.pool.release(self.conn, reuse=False)
        self._settle()

    def _finish(self) -> None:
        assert self._out is not None
        self._out.end()
        if self._tap is not None:
            self._tap(None)
        self._settle()

    def _settle(self) -> None:
        self.finished = True
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _upgrade(self, out: Exchange) -> None:
        conn = self.conn

        def client_gone() -> None:
            conn.close()
            self._settle()

        def upstream_gone() -> None:
            out.abort()
            self._settle()

        conn.raw, conn.raw_closed = out.write_raw, upstream_gone
        # Flow control both ways: whichever side cannot take more pauses the other's reading.
        out.on_backpressure(conn.pause, conn.resume)
        conn.backpressure = (out.pause_reading, out.resume_reading)
        out.upgrade(conn.write_raw, client_gone)
        if conn.upgrade_rest:
            out.write_raw(conn.upgrade_rest)


def _length(headers: Headers) -> int | None:
    length = None
    for n, v in headers.items:
        if n == b"transfer-encoding":
            return None
        if n == b"content-length" and v.isdigit():
            length = int(v)
    return length


def encode_request(req: Request, headers: Headers, default_host: bytes) -> bytes:
    """The request as sent upstream: hop-by-hop fields dropped, a Host always (an HTTP/1.0
    client may have sent none: the endpoint's own address then), the body framed by
    Content-Length (it is buffered whole), and the upgrade the route allowed, if any."""
    out = [req.method.encode() + b" " + req.target + b" HTTP/1.1\r\n"]
    host = False
    for n, v in headers.items:
        if n in HOP_BY_HOP or n == b"content-length":
            continue
        if n == b"host":
            host = True
        out.append(n + b": " + v + b"\r\n")
    if not host:
        out.append(b"host: " + default_host + b"\r\n")
    if req.upgrade:
        out.append(b"connection: upgrade\r\nupgrade: " + req.upgrade.encode("latin-1") + b"\r\n")
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        out.append(b"content-length: %d\r\n" % len(req.body))
    out.append(b"\r\n")
    if req.body:
        out.append(req.body)
    return b"".join(out)


async def send(pool: Pool, req: Request, headers: Headers, timeout: float) -> UpstreamAttempt:
    """One attempt: the response head within `timeout`, or UpstreamError."""
    conn = pool.take() or await pool.acquire()
    attempt = UpstreamAttempt(conn)
    data = encode_request(req, headers, str(pool.endpoint).encode())
    conn.send(data, attempt, head_only=req.method == "HEAD", upgrade=bool(req.upgrade))
    attempt.timeout = timeout
    attempt.deadline = time.monotonic() + timeout
    HEAD_DEADLINES.add(attempt)
    try:
        await attempt.head_received
    except asyncio.CancelledError:
        HEAD_DEADLINES.discard(attempt)
        attempt.discard()
        raise
    return attempt
