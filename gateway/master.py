"""The gateway's master process: configuration, workers, and the admin API.

It reads and validates the configuration (the file, plus Gateway API objects
from `--source`), starts `workers` worker processes and sends each the
configuration, restarts a worker that dies, and watches for changes (the
file's directory through inotify, as the agents watch theirs: agent/common/watch.py;
the cluster source wakes it too): a change that validates is sent to every
worker (which swap it in without dropping anything); one that does not is
logged with file, line and field, shown on /config, and the previous
configuration keeps serving.

Admin API (on `admin.address`, 127.0.0.1:9901 by default):
    GET  /config       the live configuration, its version, the last error
    GET  /healthz      the master is up
    GET  /ready        every worker serves the current configuration
    GET  /metrics      Prometheus metrics, summed over the workers
    GET  /backends     endpoint health as each worker sees it
    POST /cache/purge  ?route=NAME&path=PREFIX (both optional): drop cached responses
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent.common.errors import FieldError, ManifestError, SlipstreamError
from agent.common.manifest import load_file
from agent.common.watch import DirectoryWatcher

from . import metrics
from .config import ClusterSource, GatewayConfig, parse_config, uses_services
from .control import Channel, ChannelClosed
from .errors import ConfigError, GatewayError
from .mesh import MeshSettings
from .tls import CertificateSet

log = logging.getLogger("gateway")

SUPERVISE = 0.5
"""How often the master checks that its workers are alive."""


@dataclass
class WorkerHandle:
    index: int
    proc: subprocess.Popen[bytes]
    channel: Channel
    version: int = 0
    reader: asyncio.Task[None] | None = None
    hello: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Master:
    def __init__(
        self,
        config_path: str,
        *,
        source: str | None = None,
        mesh: MeshSettings | None = None,
        workers: int | None = None,
        admin: tuple[str, int] | None = None,
        log_format: str = "json",
        log_level: str = "info",
        kubeconfig: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.workers_override = workers
        self.admin_override = admin
        self.log_format = log_format
        self.log_level = log_level
        self.config: GatewayConfig | None = None
        self.raw: dict[str, Any] = {}
        self.version = 0
        self.last_error: str | None = None
        self.workers: list[WorkerHandle] = []
        self.stopping = False
        self._stamp: tuple[int, int, int] | None = None
        self._reload_lock = asyncio.Lock()
        self.mesh = mesh
        """How workers join the mesh (mesh.py), when a CA is configured."""
        self.sources = (
            ClusterSource(source, mesh.trust_domain if mesh else "", mesh is not None, kubeconfig)
            if source
            else None
        )
        """Gateway API objects and Services (gatewayapi.py), when --source is given."""

    # ------------------------------------------------------------ configuration

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> tuple[GatewayConfig, dict[str, Any]]:
        """Read and validate everything; ConfigError names the file, line and field."""
        try:
            docs = load_file(self.config_path)
        except ManifestError as exc:
            raise ConfigError(str(exc)) from exc
        if len(docs) != 1 or not isinstance(docs[0].body, dict):
            raise ConfigError(f"{self.config_path}: expected one YAML mapping")
        raw = dict(docs[0].body)
        if self.workers_override is not None:
            raw["workers"] = self.workers_override
        if self.sources is not None:
            raw = self.sources.merge(raw)
        elif uses_services(raw):
            raise ConfigError(f"{self.config_path}: backends name a Service, which needs --source")
        try:
            config = parse_config(raw)
        except FieldError as exc:
            if exc.field.startswith("gatewayapi:"):
                raise ConfigError(exc.reason) from exc
            raise ConfigError(str(docs[0].error(exc))) from exc
        for li in config.listeners:
            if li.tls:
                CertificateSet(li.certificates)  # the files must load now, not in a worker
        return config, raw

    async def reload(self, reason: str) -> bool:
        async with self._reload_lock:
            try:
                config, raw = await asyncio.to_thread(self.load)
            except ConfigError as exc:
                self.last_error = str(exc)
                log.error(
                    "configuration rejected; the previous one keeps serving",
                    extra={"error": str(exc), "reason": reason},
                )
                return False
            if raw == self.raw and self.config is not None:
                self.last_error = None
                return True
            if self.config is not None and config.workers != self.config.workers:
                log.warning("a change of `workers` takes effect at the next start")
            self.config, self.raw = config, raw
            self.version += 1
            self.last_error = None
            await asyncio.gather(*(self._send_config(w) for w in self.workers))
            log.info("configuration applied", extra={"version": self.version, "reason": reason})
            return True

    async def _send_config(self, w: WorkerHandle) -> None:
        msg: dict[str, Any] = {"type": "config", "config": self.raw, "version": self.version}
        if self.mesh is not None:
            msg["mesh"] = self.mesh.for_workers()
        try:
            answer = await w.channel.request(msg, timeout=30)
        except (ChannelClosed, TimeoutError) as exc:
            log.error(
                "worker did not take the configuration",
                extra={"worker": w.index, "error": str(exc)},
            )
            return
        if answer.get("ok"):
            w.version = answer.get("version", 0)
        else:
            log.error(
                "worker refused the configuration",
                extra={"worker": w.index, "error": answer.get("error")},
            )

    # ------------------------------------------------------------ workers

    async def spawn(self, index: int) -> WorkerHandle:
        parent, child = socket.socketpair()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.worker",
                "--fd",
                str(child.fileno()),
                "--log-format",
                self.log_format,
                "--log-level",
                self.log_level,
            ],
            pass_fds=[child.fileno()],
        )
        child.close()
        channel = await Channel.open(parent)
        w = WorkerHandle(index, proc, channel)
        w.reader = asyncio.ensure_future(channel.serve_answers(lambda m: self._unasked(w, m)))
        await asyncio.wait_for(asyncio.shield(w.hello), 30)
        await self._send_config(w)
        return w

    def _unasked(self, w: WorkerHandle, msg: dict[str, Any]) -> None:
        if msg.get("type") == "hello" and not w.hello.done():
            w.hello.set_result(msg)

    async def supervise(self) -> None:
        while not self.stopping:
            await asyncio.sleep(SUPERVISE)
            for i, w in enumerate(self.workers):
                if w.proc.poll() is not None and not self.stopping:
                    log.error(
                        "worker exited; starting another",
                        extra={"worker": i, "code": w.proc.returncode},
                    )
                    w.channel.close()
                    try:
                        self.workers[i] = await self.spawn(i)
                    except (GatewayError, OSError, TimeoutError) as exc:
                        log.error("cannot start a worker", extra={"error": str(exc)})

    async def watch(self, watcher: DirectoryWatcher, stop: asyncio.Event) -> None:
        """Reload when the file changes (its directory is watched, so a file replaced by a
        rename counts) or the cluster source has a new snapshot."""
        while await watcher.wait(stop):
            stamp = self._stat()
            changed = stamp != self._stamp
            if self.sources is not None and self.sources.changed():
                changed = True
            if changed:
                self._stamp = stamp
                await self.reload("configuration changed")

    async def broadcast(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        async def one(w: WorkerHandle) -> dict[str, Any]:
            try:
                return await w.channel.request(message, timeout=5)
            except (ChannelClosed, TimeoutError) as exc:
                return {"ok": False, "error": str(exc)}

        return list(await asyncio.gather(*(one(w) for w in self.workers)))

    def ready(self) -> bool:
        return (
            self.config is not None
            and bool(self.workers)
            and all(w.version == self.version and w.proc.poll() is None for w in self.workers)
        )

    # ------------------------------------------------------------ admin API

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/config", self._config)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/backends", self._backends)
        app.router.add_post("/cache/purge", self._purge)
        return app

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "version": self.version,
                "file": self.config_path,
                "lastError": self.last_error,
                "workers": [{"pid": w.proc.pid, "version": w.version} for w in self.workers],
                "identity": self.mesh.identity if self.mesh else None,
                "gatewayApi": self.sources.status() if self.sources else None,
                "config": self.raw,
            }
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _ready(self, request: web.Request) -> web.Response:
        ok = self.ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        answers = await self.broadcast({"type": "metrics"})
        merged = metrics.merge(a["metrics"] for a in answers if a.get("ok"))
        return web.Response(body=metrics.render(merged), content_type="text/plain", charset="utf-8")

    async def _backends(self, request: web.Request) -> web.Response:
        answers = await self.broadcast({"type": "status"})
        return web.json_response({"workers": answers})

    async def _purge(self, request: web.Request) -> web.Response:
        msg = {
            "type": "purge",
            "route": request.query.get("route"),
            "path": request.query.get("path"),
        }
        answers = await self.broadcast(msg)
        return web.json_response({"purged": sum(a.get("purged", 0) for a in answers)})

    # ------------------------------------------------------------ life

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        if self.mesh is not None:
            self.mesh.check()
        # The configuration file's directory is watched, not the file: editors and ConfigMaps
        # replace a file by renaming another over it.
        watcher = DirectoryWatcher(os.path.dirname(os.path.abspath(self.config_path)))
        try:
            watcher.open()
        except SlipstreamError as exc:
            raise GatewayError(f"cannot start: {exc}") from exc
        try:
            await self._serve(watcher, stop)
        finally:
            watcher.close()

    async def _serve(self, watcher: DirectoryWatcher, stop: asyncio.Event) -> None:
        if self.sources is not None:
            self.sources.store.subscribe(lambda old, new: watcher.poke())
            try:
                await self.sources.start()
            except SlipstreamError as exc:
                raise GatewayError(f"cannot start: {exc}") from exc
        self._stamp = self._stat()  # before reading: a change made while starting is seen
        try:
            config, self.raw = await asyncio.to_thread(self.load)
        except ConfigError as exc:
            raise GatewayError(f"cannot start: {exc}") from exc
        self.config, self.version = config, 1
        admin = self.admin_override or config.admin.address
        runner = web.AppRunner(self.admin_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, admin[0], admin[1])
        await site.start()
        log.info("admin API listening", extra={"address": f"{admin[0]}:{admin[1]}"})
        tasks: list[asyncio.Future[None]] = []
        try:
            for i in range(config.workers):
                self.workers.append(await self.spawn(i))
            log.info("gateway ready", extra={"workers": len(self.workers), "version": self.version})
            tasks = [
                asyncio.ensure_future(self.watch(watcher, stop)),
                asyncio.ensure_future(self.supervise()),
            ]
            await stop.wait()
        finally:
            self.stopping = True
            await self.shutdown()
            await runner.cleanup()
            if self.sources is not None:
                self.sources.close()
        for t in tasks:
            t.cancel()

    async def shutdown(self, deadline: float = 10.0) -> None:
        await self.broadcast({"type": "stop", "deadline": deadline})
        end = time.monotonic() + deadline + 2
        for w in self.workers:
            while w.proc.poll() is None and time.monotonic() < end:
                await asyncio.sleep(0.05)
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            w.channel.close()
            if w.reader is not None:
                w.reader.cancel()
