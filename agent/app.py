"""The node agent process: builds its components and runs them until SIGTERM.

This is the composition root; each component lives in its own module and
meets the others only through the state store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

from .admin import AdminServer
from .capture import EbpfCapture, IptablesCapture
from .enroller import Capture, Enroller
from .errors import SlipstreamError
from .runtime import Component, serve
from .sources.file import FileSource
from .state import StateStore, StateUpdater
from .state.dump import snapshot_json

log = logging.getLogger("agent")

CAPTURE_MODES = ("ebpf", "iptables")


@dataclass
class AgentConfig:
    node: str
    source: str
    """`file:DIR` (later also `kube`)."""
    admin_addr: tuple[str, int] = ("127.0.0.1", 15000)
    ready_addr: tuple[str, int] = ("0.0.0.0", 15021)
    state_dir: str = "/run/slipstream/agent"
    """Where the agent remembers what it changed in pods, across restarts."""
    netns_dir: str = "/run/netns"
    capture: str = "ebpf"
    cleanup: bool = False
    """On exit, remove capture from every pod (otherwise enrolled pods fail closed)."""
    drain_deadline: float = 10.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = StateStore()
        self.updater = StateUpdater(self.store)
        kind, _, arg = config.source.partition(":")
        if kind != "file" or not arg:
            raise SlipstreamError(f"--source {config.source!r}: expected file:DIR")
        if config.capture not in CAPTURE_MODES:
            raise SlipstreamError(
                f"--capture {config.capture!r}: expected one of {', '.join(CAPTURE_MODES)}"
            )
        if not os.path.isdir(arg):
            raise SlipstreamError(f"manifest directory {arg} does not exist")
        self.source = FileSource(arg, self.updater)
        self.admin = AdminServer(
            self.config_dump, self.ready, admin_addr=config.admin_addr, ready_addr=config.ready_addr
        )
        self.programs: Any = None
        self.enroller: Enroller | None = None

    def _capture(self) -> Capture:
        snapshot = lambda: self.store.snapshot  # noqa: E731
        if self.config.capture == "iptables":
            return IptablesCapture(self.config.node, snapshot)
        from .datapath.loader import Programs

        self.programs = Programs()
        return EbpfCapture(self.programs, self.config.node, snapshot)

    def ready(self) -> bool:
        return (
            self.store.synced
            and self.enroller is not None
            and self.enroller.reconciled_version >= self.store.synced_version
        )

    def config_dump(self) -> dict[str, Any]:
        snap = self.store.snapshot
        return {
            "node": self.config.node,
            "ready": self.ready(),
            "capture": self.config.capture,
            "sources": [self.source.status()],
            "workloads": [asdict(w) for w in self.enroller.workloads()] if self.enroller else [],
            "datapath": {"counters": self.programs.counters()} if self.programs else {},
            **snapshot_json(snap),
        }

    def components(self) -> dict[str, Component]:
        assert self.enroller is not None
        return {"source": self.source, "admin": self.admin, "enroller": self.enroller}

    async def run(self) -> None:
        log.info(
            "agent starting",
            extra={
                "node": self.config.node,
                "source": self.config.source,
                "capture": self.config.capture,
            },
        )
        capture = await asyncio.to_thread(self._capture)
        self.enroller = Enroller(
            self.config.node,
            self.store,
            capture,
            state_dir=self.config.state_dir,
            netns_dir=self.config.netns_dir,
            cleanup=self.config.cleanup,
        )
        await serve(self.components(), deadline=self.config.drain_deadline)
        log.info("agent stopped", extra={"node": self.config.node})


def main(config: AgentConfig) -> None:
    asyncio.run(Agent(config).run())
