"""Running long-lived components together, and stopping them cleanly.

Every component has `async def run(self, drain)`: it works until `drain` is
set, then finishes what it is doing and returns. `serve` starts them in a
TaskGroup with names, sets `drain` on SIGTERM or SIGINT, and cancels whatever
is still running when the deadline passes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

import uvloop

log = logging.getLogger("agent.runtime")


class Component(Protocol):
    async def run(self, drain: asyncio.Event) -> None: ...


async def serve(
    components: Mapping[str, Component],
    *,
    deadline: float = 10.0,
    drain: asyncio.Event | None = None,
) -> None:
    drain = drain or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, drain.set)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c.run(drain), name=name) for name, c in components.items()]
            tg.create_task(_enforce_deadline(drain, tasks, deadline), name="drain-deadline")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _enforce_deadline(
    drain: asyncio.Event, tasks: list[asyncio.Task[None]], deadline: float
) -> None:
    await drain.wait()
    log.info("draining", extra={"deadline_s": deadline})
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        log.warning(
            "component did not drain in time, cancelled", extra={"component": task.get_name()}
        )
        task.cancel()


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine on uvloop: the proxies' per-message cost is mostly the
    event loop's, and uvloop's is a fraction of the default one's."""
    uvloop.run(main)
