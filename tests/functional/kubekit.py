"""Helpers for the kube source's tests: a switchable TCP proxy in front of the lab API server,
a hostile HTTPS server wearing its certificate, and a KubeSource on a fresh store.

The proxy lets a test drop every connection mid-stream, refuse or hang new ones,
or send them to the hostile server, while the real server keeps its state; the
client under test only ever knows the proxy's address (its kubeconfig says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from agent.sources.kube import KindSpec, KubeSource, Timing
from agent.sources.kubeclient import KubeClient
from agent.state import StateStore, StateUpdater
from tests.functional.apikit import ApiServerProc

FAST = Timing(request=2.0, watch=30.0, idle_slack=5.0, backoff_base=0.05, backoff_cap=0.5)
"""Short enough that a hang is noticed within a test's time, long enough for a loaded machine."""


class Proxy:
    """A TCP proxy on 127.0.0.1. Modes: pass (to `target`), refuse (close at once),
    hang (accept and say nothing). `cut()` closes every connection it carries."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.mode = "pass"
        self.port = 0
        self.accepted = 0
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._conns.add(writer)
        try:
            if self.mode == "refuse":
                return
            if self.mode == "hang":
                await reader.read()  # until the client gives up
                return
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
            self._conns.add(up_w)

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError):
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                w.close()

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
            self._conns.discard(up_w)
        except OSError:
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    def cut(self) -> None:
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


def kubeconfig_via(api: ApiServerProc, port: int, path: Path) -> str:
    """The server's kubeconfig, pointing at `port` on 127.0.0.1 instead."""
    doc = yaml.safe_load(Path(api.kubeconfig).read_text())
    for c in doc["clusters"]:
        c["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def hostile_server(api: ApiServerProc, handler: Handler) -> tuple[web.AppRunner, int]:
    """An HTTPS server with the lab API server's own certificate (the client trusts it),
    answering every request with `handler`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(api.certs / "apiserver.crt", api.certs / "apiserver.key")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    # Handlers that hang are cancelled at cleanup, not waited for.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def open_source(
    kubeconfig: str, kinds: list[KindSpec], timing: Timing = FAST
) -> tuple[KubeSource, StateStore]:
    store = StateStore()
    client = await KubeClient.open(kubeconfig)
    return KubeSource(client, StateUpdater(store), kinds, timing), store


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll until `pred()` is truthy (a positive marker), failing after `timeout`."""
    async with asyncio.timeout(timeout):
        while not (value := pred()):
            await asyncio.sleep(0.02)
    return value


def post(api: ApiServerProc, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, _, data = api.request("POST", path, body)
    assert status in (200, 201), f"POST {path}: {status} {data[:300]!r}"
    return json.loads(data)  # type: ignore[no-any-return]


def call(api: ApiServerProc, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
    status, _, data = api.request(method, path, body, **kw)
    assert 200 <= status < 300, f"{method} {path}: {status} {data[:300]!r}"
    return json.loads(data)  # type: ignore[no-any-return]
