"""The agent's end of slipstream-cni (agent/cni/plugin.py): a UNIX socket where the plugin
reports each new pod sandbox and waits for the agent's decision.

The runtime runs the plugin after the primary CNI plugin has made the pod's network
namespace and address, before any of the pod's containers start. ADD records the pod's
namespace path and addresses here (`CniPods`, sans-IO), where the enroller finds them
for a pod the API does not yet show with an IP or a `slipstream.dev/netns` annotation,
and answers once the enroller has decided: enrolled, or not enrolled (not in the mesh),
with the reason. A failed or undecided enrollment is a 503, so the ADD fails and the
runtime tries again: the pod never runs uncaptured. DEL forgets the sandbox; CHECK
answers whether the pod is still as ADD left it.

Only root can reach the socket (0600, in a 0755 directory): a pod's own processes never
see the host's /var/run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from aiohttp import web
from pydantic import Field

from agent.common.errors import FieldError
from agent.common.schema import Model, Str, parse
from agent.state.enrollment import ENROLLED, FAILED, NOT_ENROLLED, WorkloadStatus
from agent.state.objects import ObjectKey

log = logging.getLogger("agent.cni")

DECIDE_TIMEOUT = 25.0
"""How long ADD waits for a decision (the plugin's own default timeout is 30 s)."""
MAX_BODY = 64 * 1024
DRAINING = (
    "the node agent is draining (being upgraded or removed): the pod waits for the next agent"
)


class CniRequest(Model):
    """What the plugin sends (see agent/cni/plugin.py `request`)."""

    command: Literal["ADD", "DEL", "CHECK"]
    container_id: Str = Field("", alias="containerID")
    netns: Str = ""
    ifname: Str = ""
    pod_namespace: Str = ""
    pod_name: Str = ""
    ips: tuple[Str, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ObjectKey("Pod", self.pod_namespace, self.pod_name)


@dataclass(frozen=True)
class Sandbox:
    container_id: str
    netns: str
    ips: tuple[str, ...]

    @property
    def ip(self) -> str:
        return next((ip for ip in self.ips if ":" not in ip), "")


class CniPods:
    """The sandboxes the runtime reported, by pod (sans-IO)."""

    def __init__(self) -> None:
        self._by_pod: dict[ObjectKey, Sandbox] = {}
        self.changed = asyncio.Event()

    def add(self, key: ObjectKey, sandbox: Sandbox) -> None:
        self._by_pod[key] = sandbox
        self.changed.set()

    def remove(self, key: ObjectKey, container_id: str) -> bool:
        """Forget the pod's sandbox if it is this one (a DEL of an old sandbox after a new
        ADD must not forget the new one)."""
        have = self._by_pod.get(key)
        if have is None or (container_id and have.container_id != container_id):
            return False
        del self._by_pod[key]
        self.changed.set()
        return True

    def get(self, key: ObjectKey) -> Sandbox | None:
        return self._by_pod.get(key)

    def status(self) -> list[dict[str, object]]:
        return [
            {"pod": f"{k.namespace}/{k.name}", "containerID": s.container_id,
             "netns": s.netns, "ips": list(s.ips)}
            for k, s in sorted(self._by_pod.items())
        ]  # fmt: skip


def answer(request: CniRequest, status: WorkloadStatus | None) -> tuple[int, dict] | None:
    """The reply to an ADD or CHECK given the enroller's status of the pod, or None while
    the agent has not decided (sans-IO)."""
    if status is None:
        return None
    if status.state in (ENROLLED, NOT_ENROLLED):
        other = status.state == ENROLLED and status.netns
        if other and os.path.realpath(request.netns) != status.netns:
            if request.command == "ADD":
                return None  # enrolled in an older sandbox: wait for this one
            return 409, {"error": f"the pod is captured in {status.netns}, not this sandbox"}
        return 200, {"state": status.state, "reason": status.reason}
    if status.state == FAILED:
        return 503, {"error": f"enrollment failed: {status.reason}"}
    return None


class Decider(Protocol):
    """What the endpoint needs of the enroller."""

    passes_started: int
    passes_done: int
    """The number of the last reconcile pass that finished (they are numbered as they start)."""
    passed: asyncio.Event
    """Set after each pass."""

    def status_of(self, key: ObjectKey) -> WorkloadStatus | None: ...

    def retry_now(self, key: ObjectKey) -> None: ...


class CniServer:
    """The socket (a runtime Component)."""

    def __init__(
        self,
        path: str,
        pods: CniPods,
        enroller: Decider,
        *,
        timeout: float = DECIDE_TIMEOUT,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.path = path
        self.draining = draining
        self.pods = pods
        self.enroller = enroller
        self.timeout = timeout

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/cni", self._handle)
        return app

    async def run(self, drain: asyncio.Event) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket left by an earlier agent
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            old = os.umask(0o177)
            try:
                await web.UnixSite(runner, self.path).start()
            finally:
                os.umask(old)
            log.info("CNI endpoint listening", extra={"socket": self.path})
            await drain.wait()
        finally:
            await runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            req = parse(CniRequest, body, "request")
        except (ValueError, FieldError) as exc:
            return _json(400, {"error": f"bad request: {exc}"})
        if req.command == "DEL":
            self.pods.remove(req.key, req.container_id)
            return _json(200, {"state": "deleted"})
        if not (req.pod_namespace and req.pod_name and req.netns):
            return _json(400, {"error": "podNamespace, podName and netns are required"})
        enroller = self.enroller
        if req.command == "ADD" and self.draining():
            return _json(503, {"error": DRAINING})
        if req.command == "ADD":
            self.pods.add(req.key, Sandbox(req.container_id, req.netns, req.ips))
            enroller.retry_now(req.key)
            log.info(
                "CNI ADD",
                extra={"pod": f"{req.pod_namespace}/{req.pod_name}", "netns": req.netns,
                       "ips": list(req.ips)},
            )  # fmt: skip
        # Only a pass that started after an ADD knows of its sandbox; CHECK asks about now.
        need = enroller.passes_started + 1 if req.command == "ADD" else 0
        deadline = time.monotonic() + self.timeout
        while True:
            if enroller.passes_done >= need:
                reply = answer(req, enroller.status_of(req.key))
                if reply is not None:
                    return _json(*reply)
            left = deadline - time.monotonic()
            if left <= 0:
                status = enroller.status_of(req.key)
                why = status.reason if status else "the pod is not in the agent's view yet"
                return _json(503, {"error": f"not decided within {self.timeout:.0f}s: {why}"})
            enroller.passed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enroller.passed.wait(), min(left, 0.5))


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
