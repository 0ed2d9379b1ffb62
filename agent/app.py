"""The node agent process: builds its components and runs them until SIGTERM.

This is the composition root; each component lives in its own module and
meets the others only through the state store.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from .admin import AdminServer
from .errors import SlipstreamError
from .runtime import Component, serve
from .sources.file import FileSource
from .state import StateStore, StateUpdater
from .state.dump import snapshot_json

log = logging.getLogger("agent")


@dataclass
class AgentConfig:
    node: str
    source: str
    """`file:DIR` (later also `kube`)."""
    admin_addr: tuple[str, int] = ("127.0.0.1", 15000)
    ready_addr: tuple[str, int] = ("0.0.0.0", 15021)
    drain_deadline: float = 10.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = StateStore()
        self.updater = StateUpdater(self.store)
        kind, _, arg = config.source.partition(":")
        if kind != "file" or not arg:
            raise SlipstreamError(f"--source {config.source!r}: expected file:DIR")
        self.source = FileSource(arg, self.updater)
        self.admin = AdminServer(
            self.config_dump, self.ready, admin_addr=config.admin_addr, ready_addr=config.ready_addr
        )

    def ready(self) -> bool:
        return self.store.synced

    def config_dump(self) -> dict[str, Any]:
        snap = self.store.snapshot
        return {
            "node": self.config.node,
            "ready": self.ready(),
            "sources": [self.source.status()],
            **snapshot_json(snap),
        }

    def components(self) -> dict[str, Component]:
        return {"source": self.source, "admin": self.admin}

    async def run(self) -> None:
        log.info("agent starting", extra={"node": self.config.node, "source": self.config.source})
        await serve(self.components(), deadline=self.config.drain_deadline)
        log.info("agent stopped", extra={"node": self.config.node})


def main(config: AgentConfig) -> None:
    asyncio.run(Agent(config).run())
