"""The agent's HTTP endpoints: admin (localhost only), readiness, later metrics.

Admin on 127.0.0.1:15000 serves `/config_dump` (the store and each
component's view as JSON), `/logging` (read or change log levels) and `/drain`
(POST starts a drain before the agent is stopped, as the DaemonSet's preStop hook
does with `slipstream drain`; GET tells how far it got). Readiness on :15021 answers
`/healthz/ready` with 200 once every source has synced and every component reports
ready, 503 before and while draining.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agent.common import log as logsetup

log = logging.getLogger("agent.admin")


def parse_address(value: str, default_host: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return default_host, int(value)
    return host or default_host, int(port)


class AdminServer:
    def __init__(
        self,
        config_dump: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        *,
        admin_addr: tuple[str, int] = ("127.0.0.1", 15000),
        ready_addr: tuple[str, int] = ("0.0.0.0", 15021),
        detail: Callable[[], str] = lambda: "",
        drain: Callable[[bool], dict[str, Any]] | None = None,
    ) -> None:
        self._config_dump = config_dump
        self._drain = drain
        """Starts the drain (True) or only reports it (False)."""
        self._ready = ready
        self._detail = detail
        """What is not synced or stale (one line each), said after ready / not ready."""
        self.admin_addr = admin_addr
        self.ready_addr = ready_addr

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/config_dump", self._handle_config_dump)
        app.router.add_get("/logging", self._handle_logging)
        app.router.add_post("/logging", self._handle_logging)
        if self._drain is not None:
            app.router.add_get("/drain", self._handle_drain)
            app.router.add_post("/drain", self._handle_drain)
        return app

    def ready_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz/ready", self._handle_ready)
        return app

    async def _handle_config_dump(self, request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(self._config_dump(), indent=2, default=str),
            content_type="application/json",
        )

    async def _handle_logging(self, request: web.Request) -> web.Response:
        level = request.query.get("level")
        if level:
            try:
                logsetup.set_level(level, request.query.get("scope"))
            except ValueError as exc:
                return web.Response(status=400, text=f"{exc}\n")
            log.info(
                "log level changed",
                extra={"level": level, "scope": request.query.get("scope", "root")},
            )
        root = logging.getLogger()
        return web.json_response({"level": logging.getLevelName(root.level).lower()})

    async def _handle_drain(self, request: web.Request) -> web.Response:
        assert self._drain is not None
        return web.json_response(self._drain(request.method == "POST"))

    async def _handle_ready(self, request: web.Request) -> web.Response:
        detail = self._detail()
        detail = f"{detail}\n" if detail else ""
        if self._ready():
            return web.Response(text=f"ready\n{detail}")
        return web.Response(status=503, text=f"not ready\n{detail}")

    async def run(self, drain: asyncio.Event) -> None:
        runners = []
        try:
            for app, (host, port) in (
                (self.admin_app(), self.admin_addr),
                (self.ready_app(), self.ready_addr),
            ):
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                runners.append(runner)
                await web.TCPSite(runner, host, port, reuse_address=True).start()
            log.info(
                "admin listening",
                extra={
                    "admin": "{}:{}".format(*self.admin_addr),
                    "ready": "{}:{}".format(*self.ready_addr),
                },
            )
            await drain.wait()
        finally:
            for runner in runners:
                await runner.cleanup()
