"""The HTTPS side of the lab API server (aiohttp): bytes in, `ApiCore.handle`, bytes out.

It reads at most `MAX_BODY` bytes of a body, authenticates nothing itself
(the core does, from the bearer token), and streams watches: the initial
frames, then whatever the watcher queues, a BOOKMARK every
`bookmark_interval` when the client allowed them, until the watch's timeout,
the client leaving or the watcher being closed.

Listeners may live in other network namespaces (`NETNS@HOST:PORT`): the
socket is made there and served from here, so one server answers the
machine's kubectl on 127.0.0.1 and the lab's nodes in the control-plane
namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass

from aiohttp import web

from agent.common.netns import Netns

from . import errors as E
from .core import MAX_BODY, ApiCore, Request, Response, WatchStream, dumps

log = logging.getLogger("slipstream.apiserver")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    netns: str = ""

    @classmethod
    def parse(cls, text: str) -> Listen:
        netns, _, addr = text.rpartition("@")
        host, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise E.ApiServerError(f"--listen {text!r}: expected [NETNS@]HOST:PORT")
        return cls(host.strip("[]"), int(port), netns)

    def __str__(self) -> str:
        return f"{self.netns + '@' if self.netns else ''}{self.host}:{self.port}"


def make_socket(listen: Listen) -> socket.socket:
    sock = (
        Netns(listen.netns).socket()
        if listen.netns
        else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as exc:
        sock.close()
        raise E.ApiServerError(f"cannot listen on {listen}: {exc.strerror}") from exc
    sock.listen(512)
    sock.setblocking(False)
    return sock


class ApiServer:
    """Serves one `ApiCore` on any number of listeners; `start`, then `stop`."""

    def __init__(
        self, core: ApiCore, ssl_ctx: ssl.SSLContext | None, bookmark_interval: float = 60.0
    ) -> None:
        self.core = core
        self.ssl_ctx = ssl_ctx
        self.bookmark_interval = bookmark_interval
        self.app = web.Application(client_max_size=MAX_BODY + 1)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        self.ports: list[int] = []
        self._streams: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Future[None] | None = None

    async def start(self, listens: list[Listen]) -> None:
        self._collector = asyncio.ensure_future(self._collect())
        await self.runner.setup()
        for listen in listens:
            sock = make_socket(listen)
            self.ports.append(sock.getsockname()[1])
            site = web.SockSite(self.runner, sock, ssl_context=self.ssl_ctx, shutdown_timeout=1.0)
            await site.start()

    async def _collect(self) -> None:
        """The namespace controller between requests (ApiCore.collect)."""
        while True:
            await asyncio.sleep(0.25)
            self.core.collect()

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
        for w in list(self.core.watchers):
            w.close("the server is shutting down")
        await self.runner.cleanup()
        self.core.close()

    async def _read_body(self, request: web.Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY:
                raise E.too_large(f"limit is {MAX_BODY}")
            chunks.append(chunk)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
        except E.ApiError as err:
            return web.Response(
                status=err.code, body=dumps(err.status()), content_type="application/json"
            )
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        query: dict[str, list[str]] = {}
        for k, v in request.query.items():
            query.setdefault(k, []).append(v)
        req = Request(
            request.method,
            request.path,
            query,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            token,
        )
        out = self.core.handle(req)
        if isinstance(out, Response):
            resp = web.Response(status=out.status, body=out.body)
            resp.headers["Content-Type"] = out.content_type
            for k, v in out.headers:
                resp.headers.add(k, v)
            return resp
        return await self._stream(request, out)

    async def _stream(self, request: web.Request, ws: WatchStream) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        resp.headers["Content-Type"] = ws.content_type
        resp.headers["Cache-Control"] = "no-cache, private"
        resp.enable_chunked_encoding()
        ready = asyncio.Event()
        ws.watcher.wake = ready.set
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ws.timeout
        try:
            await resp.prepare(request)
            if ws.initial:
                await resp.write(b"".join(ws.initial))
            next_bookmark = loop.time() + self.bookmark_interval
            while not ws.watcher.closed and ws.timeout > 0:
                frames = ws.watcher.take()
                if frames:
                    await resp.write(b"".join(frames))
                    continue
                now = loop.time()
                if now >= deadline:
                    break
                if ws.bookmarks and now >= next_bookmark:
                    await resp.write(ws.bookmark())
                    next_bookmark = now + self.bookmark_interval
                    continue
                wait = deadline - now
                if ws.bookmarks:
                    wait = min(wait, next_bookmark - now)
                ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), timeout=max(wait, 0.0))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        except ConnectionError:
            pass  # the client left
        finally:
            ws.watcher.wake = None
            ws.close()
        return resp


async def serve_forever(
    server: ApiServer, listens: list[Listen], started: asyncio.Event | None = None
) -> None:
    await server.start(listens)
    if started is not None:
        started.set()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
