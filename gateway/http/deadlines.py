"""Deadlines checked by a periodic sweep instead of a timer each.

A timer per request costs more than the request's own bookkeeping (creating
and cancelling a loop timer is ~1.7 µs); most deadlines never fire. A
Sweeper holds the objects that have a deadline and calls `expire(now)` on
each a few times a second, only while it holds any. The granularity is the
sweep interval: a deadline fires up to one interval late.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Expiring(Protocol):
    def expire(self, now: float) -> None:
        """Act if this object's deadline is at or before `now` (it stays registered)."""


class Sweeper:
    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self._members: set[Expiring] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, member: Expiring) -> None:
        self._members.add(member)
        loop = asyncio.get_running_loop()
        if self._handle is None or self._loop is not loop:
            self._loop = loop
            self._handle = loop.call_later(self.interval, self._sweep)

    def discard(self, member: Expiring) -> None:
        self._members.discard(member)

    def _sweep(self) -> None:
        now = time.monotonic()
        for member in list(self._members):
            member.expire(now)
        if self._members and self._loop is not None:
            self._handle = self._loop.call_later(self.interval, self._sweep)
        else:
            self._handle = None
