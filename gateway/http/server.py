"""The client side of the engine: an HTTP/1.1 server connection (asyncio protocol on httptools).

One `ServerConnection` per client connection. It parses requests (llhttp via
httptools), enforces the listener's limits (URI, header count and size, body
size, time to send the headers: slow clients get 408), and hands each
complete request to the handler with an `Exchange` that writes the response:
whole, or head then streamed body with the client's backpressure passed on.
Requests on one connection are answered in order; reading pauses while one
is being answered. An `Upgrade` request (WebSocket) can be switched to raw
bytes once the handler has the upstream's 101.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import httptools

from .deadlines import Sweeper
from .message import HOP_BY_HOP, Headers, Request, Response, status_line

log = logging.getLogger("gateway.http")


PIPELINE_DEPTH = 16
"""Requests a client may queue on one connection before the gateway stops reading it."""


@dataclass(frozen=True)
class Limits:
    max_uri: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    """All header names and values of one request together."""
    max_headers: int = 100
    max_body: int = 10 * 1024 * 1024
    header_timeout: float = 10.0
    """From the first byte of a request to the end of its headers (slowloris)."""
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    """A keep-alive connection with no request in flight is closed after this."""


Handler = Callable[[Request, "Exchange"], Awaitable[None]]


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Exchange:
    """Writes the response to one request."""

    __slots__ = ("_chunked", "_conn", "_head", "_left", "finished", "request", "started", "status")

    def __init__(self, conn: ServerConnection, request: Request) -> None:
        self._conn = conn
        self.request = request
        self.started = False
        self.finished = False
        self.status = 0
        self._chunked = False
        self._left: int | None = None
        self._head = b""
        """The status line and headers, sent with the first body bytes (one write, not two)."""

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def respond(self, resp: Response) -> None:
        self.start(resp.status, resp.headers, len(resp.body))
        if resp.body and self.request.method != "HEAD":
            self.write(resp.body)
        self.end()

    def start(self, status: int, headers: Headers, length: int | None) -> None:
        """Send the status line and headers; `length` None means the size is not known yet."""
        assert not self.started
        self.started = True
        self.status = status
        req = self.request
        lines = [status_line(status)]
        for n, v in headers.items:
            if n not in HOP_BY_HOP and n != b"content-length":
                lines.append(n + b": " + v + b"\r\n")
        bodyless = req.method == "HEAD" or status in (204, 304) or status < 200
        if status == 101:
            lines.append(b"connection: upgrade\r\n")
            for v in headers.get_all(b"upgrade"):
                lines.append(b"upgrade: " + v + b"\r\n")
        elif length is not None:
            lines.append(b"content-length: %d\r\n" % length)
            self._left = 0 if bodyless else length
        elif bodyless:
            self._left = 0
        elif req.version == "1.1":
            lines.append(b"transfer-encoding: chunked\r\n")
            self._chunked = True
        else:
            req.keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        if status >= 200 and not req.keep_alive:
            lines.append(b"connection: close\r\n")
        elif status >= 200 and req.version == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self._head = b"".join(lines)
        if status == 101:
            self._flush(b"")

    def write(self, data: bytes) -> None:
        if not data or (self._left == 0 and not self._chunked):
            return
        if self._chunked:
            self._flush(b"%x\r\n" % len(data) + data + b"\r\n")
            return
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
        self._flush(data)

    def _flush(self, data: bytes) -> None:
        if self._head:
            data, self._head = self._head + data, b""
        if data:
            self._conn.write(data)

    def end(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._flush(b"0\r\n\r\n" if self._chunked else b"")
        if self._left:
            # Fewer bytes than announced: the client cannot tell where the body ends otherwise.
            self._conn.close()
            return
        self._conn.finished(self)

    def abort(self) -> None:
        """The response cannot be completed: close the connection so the client sees it."""
        self.finished = True
        self._conn.close()

    # flow control: the handler is told when the client cannot keep up
    def on_backpressure(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._conn.backpressure = (pause, resume)

    def upgrade(self, on_data: Callable[[bytes], None], on_close: Callable[[], None]) -> None:
        """After a 101: the connection carries raw bytes both ways from now on."""
        self._conn.upgraded(on_data, on_close)

    def write_raw(self, data: bytes) -> None:
        self._conn.write(data)


class ServerConnection(asyncio.Protocol):
    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        *,
        scheme: str = "http",
        sweeper: Sweeper | None = None,
        on_close: Callable[[ServerConnection], None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.backpressure: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._on_close = on_close
        self._parser = httptools.HttpRequestParser(self)
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body = bytearray()
        self._pending: deque[Request] = deque()
        self._current: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._deadline = 0.0
        """When the current wait (idle, headers, body) runs out; 0 while a request is served."""
        self._waiting_for = ""
        self._sweeper = sweeper or Sweeper()
        self._reading_paused = False
        self._raw: tuple[Callable[[bytes], None], Callable[[], None]] | None = None
        self._client: tuple[str, int] = ("0.0.0.0", 0)
        self._sni: str | None = None
        self.requests = 0

    # -------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self._client = (peer[0], peer[1])
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None:
            self._sni = getattr(ssl_obj, "sni", None)  # set by the listener's SNI callback
        self._sweeper.add(self)
        self._arm(self.limits.idle_timeout, "idle")

    def data_received(self, data: bytes) -> None:
        if self._raw is not None:
            self._raw[0](data)
            return
        if self._waiting_for in ("idle", ""):
            # The first bytes of a request: it has header_timeout to finish its headers.
            self._arm(self.limits.header_timeout, "headers")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._upgrade_rest = data[offset:]
        except _Reject as exc:
            self._reject(exc.status, str(exc))
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps what a callback raised; a limit's own answer is in the context
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, str(cause))
            else:
                self._reject(400, f"malformed request: {exc}")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")

    def eof_received(self) -> bool | None:
        if self._raw is not None:
            self._raw[1]()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._sweeper.discard(self)
        if self._raw is not None:
            raw, self._raw = self._raw, None
            raw[1]()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        if self.backpressure is not None:
            self.backpressure[0]()

    def resume_writing(self) -> None:
        if self.backpressure is not None:
            self.backpressure[1]()

    # -------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._header_bytes = 0
        self._body.clear()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_uri:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # (the count is checked once the head is in; the byte limit bounds it meanwhile)
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, "request headers too large")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if len(self._headers) > self.limits.max_headers:
            raise _Reject(431, "too many request headers")
        hosts = 0
        host = b""
        body = False
        for name, value in self._headers:
            if name == b"host":
                hosts += 1
                host = value
            elif name == b"content-length":
                if value.isdigit() and int(value) > self.limits.max_body:
                    raise _Reject(413, f"request body larger than {self.limits.max_body} bytes")
                body = value != b"0"
            elif name == b"transfer-encoding":
                body = True
            elif name == b"expect" and value.lower() == b"100-continue":
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if hosts > 1 or not _valid_host(
            host, hosts == 0 and self._parser.get_http_version() == "1.0"
        ):
            raise _Reject(400, "missing, repeated or invalid Host header")
        if body:
            self._arm(self.limits.body_timeout, "body")
        else:
            self._deadline, self._waiting_for = 0.0, ""  # complete: nothing more to wait for

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.limits.max_body:
            raise _Reject(413, f"request body larger than {self.limits.max_body} bytes")

    def on_message_complete(self) -> None:
        p = self._parser
        req = Request(
            p.get_method().decode("latin-1"),
            bytes(self._url),
            Headers(self._headers),
            bytes(self._body),
            version=p.get_http_version(),
            client=self._client,
            scheme=self.scheme,
            sni=self._sni,
            keep_alive=p.should_keep_alive(),
            upgrade=p.should_upgrade(),
        )
        self._url.clear()
        self._headers = []
        self._pending.append(req)
        self._deadline, self._waiting_for = 0.0, ""
        # Keep reading while a request is served (pausing and resuming per request is costly),
        # up to PIPELINE_DEPTH queued requests; after an upgrade the bytes are the new protocol's.
        if req.upgrade or len(self._pending) >= PIPELINE_DEPTH:
            self._pause_reading()
        if self._current is None:
            self._next()

    # -------------------------------------------------------------- requests

    def _next(self) -> None:
        """A request is waiting: start the connection's worker, or wake it."""
        if not self._pending or self.closed:
            return
        if self._task is None:
            self._task = asyncio.ensure_future(self._work())
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _work(self) -> None:
        """Answer this connection's requests in order (one task per connection, not per
        request: creating a task costs more than waking one)."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            if not self._pending or self._current is not None:
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            req = self._pending.popleft()
            self.requests += 1
            ex = self._current = Exchange(self, req)
            try:  # (inline, not a coroutine of its own: one level less to resume per await)
                await self.handler(req, ex)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler failed", extra={"path": req.path})
                if not ex.started:
                    ex.respond(Response.text(500, "internal error"))
                else:
                    ex.abort()
                continue
            if not ex.finished:  # the handler returned without finishing its answer
                if ex.started:
                    ex.abort()
                else:
                    ex.respond(Response.text(500, "no response"))

    def finished(self, ex: Exchange) -> None:
        """The response is written: next request, or close."""
        self._current = None
        self.backpressure = None
        if not ex.request.keep_alive or (ex.status == 101 and self._raw is None):
            self.close()
            return
        if self._raw is not None:
            return
        if self._pending:
            self._next()
            return
        if not self._waiting_for:  # (not already timing the next request's head or body)
            self._arm(self.limits.idle_timeout, "idle")
        self._resume_reading()

    def upgraded(self, on_data: Callable[[bytes], None], on_close: Callable[[], None]) -> None:
        self._raw = (on_data, on_close)
        self._deadline, self._waiting_for = 0.0, ""
        rest = getattr(self, "_upgrade_rest", b"")
        if rest:
            on_data(rest)
        self._resume_reading()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    # -------------------------------------------------------------- output

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _reject(self, status: int, reason: str) -> None:
        """Malformed or over a limit: answer (if nothing is being answered) and close."""
        log.info(
            "request refused",
            extra={"status": status, "reason": reason, "client": self._client[0]},
        )
        if self._current is None and not self.closed:
            self.write(
                status_line(status)
                + b"content-type: text/plain\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
                % (len(reason) + 1)
                + reason.encode()
                + b"\n"
            )
        self.close()

    def _arm(self, seconds: float, what: str) -> None:
        self._deadline, self._waiting_for = time.monotonic() + seconds, what

    def expire(self, now: float) -> None:
        """Called by the sweeper: close the connection if its wait ran out."""
        if not self._deadline or now < self._deadline or self._current is not None:
            return
        what, self._deadline, self._waiting_for = self._waiting_for, 0.0, ""
        if what == "idle":
            self.close()  # a quiet keep-alive connection just ends
        else:
            self._reject(408, f"request {what} not received in time")


_HOST_BAD = re.compile(rb"[^\x21-\x7e]|[/\\?#@\"<>{}|^`]")


def _valid_host(host: bytes, may_be_absent: bool) -> bool:
    """RFC 9112 3.2: HTTP/1.1 needs exactly one Host; it must look like host[:port]."""
    if not host:
        return may_be_absent
    return len(host) <= 255 and not _HOST_BAD.search(host)
