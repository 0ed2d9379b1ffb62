"""The client side of the engine: an HTTP/1.1 server connection (asyncio protocol on httptools).

One `ServerConnection` per client connection. It parses requests (llhttp via
httptools), normalizes and checks each head (head.py), enforces the listener's
limits, and hands each complete request to the handler with an `Exchange` that
writes the response: whole, or head then streamed body with the client's
backpressure passed on. Requests on one connection are answered in order.

What one connection can hold is bounded while bytes arrive, not only once a
line is complete: a request head is fed to the parser in pieces no larger than
what is left of its budget (an unterminated 70 MiB header line is cut off at
the budget, not buffered), a body's framing overhead (chunk extensions) is
bounded relative to its data, queued requests stop the reading once they hold
`max_body` bytes or PIPELINE_DEPTH requests, and no further request is started
while the client is not reading its answers. Trailer fields are read, counted
and dropped: they never join the head. `100 Continue` goes out only when no
earlier answer is being written on the connection, and never to HTTP/1.0. An
answer the engine makes itself for a broken request waits for the answers owed
before it, then the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import httptools

from .deadlines import Sweeper
from .errors import HttpError
from .head import HeadRules, read_head
from .message import HOP_BY_HOP, Headers, Request, Response, status_line

log = logging.getLogger("gateway.http")


PIPELINE_DEPTH = 16
"""Requests a client may queue on one connection before the gateway stops reading it."""

FRAMING_ALLOWANCE = 256 * 1024
"""Bytes of chunk framing (sizes, extensions, trailers) a body may carry beyond twice its
data before it is refused: chunk extensions carry nothing we use (Go's net/http bounds
them the same way, CVE-2023-39326)."""


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

    def pause_reading(self) -> None:
        """The other end of an upgraded connection cannot keep up: stop reading the client."""
        self._conn._pause_reading()

    def resume_reading(self) -> None:
        self._conn._resume_reading()

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
        rules: HeadRules | None = None,
        scheme: str = "http",
        sweeper: Sweeper | None = None,
        on_close: Callable[[ServerConnection], None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.rules = rules or HeadRules()
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.backpressure: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._on_close = on_close
        self._parser = httptools.HttpRequestParser(self)
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._in_head = True
        """The parser is inside a request head (or before one): its bytes count against
        `_head_budget`."""
        self._head_fed = 0
        self._head_budget = limits.max_uri + limits.max_header_bytes + 4 * limits.max_headers + 1024
        """Bytes a head may take on the wire: target, fields, and their punctuation."""
        self._body_fed = 0
        """Bytes fed while reading the current body (data and chunk framing)."""
        self._request: Request | None = None
        """The request whose head was read, while its body arrives."""
        self._body = bytearray()
        self._pending: deque[Request] = deque()
        self._pending_bytes = 0
        self._current: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._deadline = 0.0
        """When the current wait (idle, headers, body) runs out; 0 while a request is served."""
        self._waiting_for = ""
        self._sweeper = sweeper or Sweeper()
        self._reading_paused = False
        self._writing_paused = False
        self._continue_due = False
        """A request in its body asked for `100 Continue` while an earlier one was answered."""
        self._refusal: bytes | None = None
        """An answer to a broken request, written once the answers owed before it are out."""
        self._raw: tuple[Callable[[bytes], None], Callable[[], None]] | None = None
        self._upgrade_rest = b""
        """Bytes that followed an upgrade request (the new protocol's, if it switches)."""
        self._parser_stopped = False
        self._last_read = False
        """A queued request ends the connection: nothing after it is read."""
        """llhttp stopped at an upgrade request: it reads nothing more on this connection."""
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
        if self._refusal is not None or self.closed:
            return  # broken: nothing more is read from this client
        if self._waiting_for in ("idle", ""):
            # The first bytes of a request: it has header_timeout to finish its headers.
            self._arm(self.limits.header_timeout, "headers")
        if self._parser_stopped:  # after an upgrade request: the new protocol's bytes
            self._upgrade_rest += data
            return
        try:
            self._feed(data)
        except HttpError as exc:
            self._reject(exc.status, exc.reason)
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps what a callback raised; a limit's own answer is in the context
            cause = exc.__context__
            if isinstance(cause, HttpError):
                self._reject(cause.status, cause.reason)
            else:
                self._reject(400, f"malformed request: {exc}")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")

    def _feed(self, data: bytes) -> None:
        """Feed the parser; a head only in pieces that fit what is left of its budget."""
        view = memoryview(data)
        while view:
            if self._in_head:
                room = self._head_budget - self._head_fed
                if room <= 0:
                    raise HttpError(431, "request head too large")
                piece, view = view[:room], view[room:]
                self._head_fed += len(piece)
            else:
                piece, view = view, view[len(view) :]
                self._body_fed += len(piece)
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                offset = exc.args[0] if exc.args else len(piece)
                self._upgrade_rest = bytes(piece[offset:]) + bytes(view)
                self._parser_stopped = True
                return
            if not self._in_head and self._body_fed > 2 * len(self._body) + FRAMING_ALLOWANCE:
                raise HttpError(400, "chunked body framing out of proportion to its data")

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
        self._writing_paused = True
        if self.backpressure is not None:
            self.backpressure[0]()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.backpressure is not None:
            self.backpressure[1]()
        if self._pending and self._current is None:
            self._next()

    # -------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._header_bytes = 0
        self._body.clear()
        self._body_fed = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_uri:
            raise HttpError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Fields after the head are trailers: counted, never merged into the head.
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.limits.max_header_bytes:
            raise HttpError(431, "request headers too large")
        if self._in_head:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._parser
        head = read_head(
            p.get_method().decode("latin-1"),
            p.get_http_version(),
            bytes(self._url),
            self._headers,
            scheme=self.scheme,
            rules=self.rules,
            max_headers=self.limits.max_headers,
            max_body=self.limits.max_body,
        )
        req = self._request = head.request
        req.client, req.sni = self._client, self._sni
        self._url.clear()
        self._headers = []
        if head.expect_continue:
            if self._current is None and not self._pending:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:
                self._continue_due = True  # sent when the answers before it are out
        if head.has_body:
            self._arm(self.limits.body_timeout, "body")
        else:
            self._deadline, self._waiting_for = 0.0, ""  # complete: nothing more to wait for

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.limits.max_body:
            raise HttpError(413, f"request body larger than {self.limits.max_body} bytes")

    def on_message_complete(self) -> None:
        p = self._parser
        req = self._request
        assert req is not None
        self._request = None
        req.body = bytes(self._body)
        req.keep_alive = p.should_keep_alive()
        if p.should_upgrade():
            # llhttp stops here: what follows is the new protocol's, or nothing (the
            # connection ends after the answer unless the handler switches it).
            req.keep_alive = False
        self._body.clear()
        self._in_head, self._head_fed, self._body_fed = True, 0, 0
        self._continue_due = False  # (the body came without it)
        self._pending.append(req)
        self._pending_bytes += len(req.body)
        self._deadline, self._waiting_for = 0.0, ""
        # Keep reading while a request is served (pausing and resuming per request is costly),
        # up to PIPELINE_DEPTH queued requests or max_body queued bytes.
        if not req.keep_alive:
            self._last_read = True  # the connection ends after its answer: read nothing more
        if not self._may_read():
            self._pause_reading()
        if self._current is None:
            self._next()

    def _may_read(self) -> bool:
        """Room for more queued requests (and nothing that ends the reading for good)."""
        return (
            len(self._pending) < PIPELINE_DEPTH
            and self._pending_bytes < self.limits.max_body
            and not self._last_read
            and not self._parser_stopped
            and self._refusal is None
            and not self.closed
        )

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
        request: creating a task costs more than waking one). No request starts while the
        client is not reading: its answers would pile up in memory."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            if not self._pending or self._current is not None or self._writing_paused:
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            req = self._pending.popleft()
            self._pending_bytes -= len(req.body)
            if self._reading_paused and self._may_read():
                self._resume_reading()  # room in the queue again
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
        if self._refusal is not None:
            self.write(self._refusal)
            self.close()
            return
        if self._continue_due:
            self._continue_due = False
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self._waiting_for:  # (not already timing the next request's head or body)
            self._arm(self.limits.idle_timeout, "idle")
        self._resume_reading()

    def upgraded(self, on_data: Callable[[bytes], None], on_close: Callable[[], None]) -> None:
        self._raw = (on_data, on_close)
        self._deadline, self._waiting_for = 0.0, ""
        rest, self._upgrade_rest = self._upgrade_rest, b""
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
        """Malformed or over a limit: answer (after the answers owed before it) and close."""
        log.info(
            "request refused",
            extra={"status": status, "reason": reason, "client": self._client[0]},
        )
        answer = (
            status_line(status)
            + b"content-type: text/plain\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
            % (len(reason) + 1)
            + reason.encode()
            + b"\n"
        )
        self._pause_reading()
        if self._current is None and not self._pending:
            self.write(answer)
            self.close()
        else:  # answers are owed before it: it goes out after them (see finished)
            self._refusal = answer

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
