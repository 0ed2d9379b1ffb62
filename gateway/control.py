"""The master-worker channel: JSON messages, one per line, over a Unix socket pair.

The master sends commands (`config`, `metrics`, `purge`, `status`, `stop`)
with an `id`; the worker answers each with the same `id`. A worker starts by
sending `hello`. `Channel` does the framing and matches answers to requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Any

from .errors import GatewayError

MAX_LINE = 64 << 20


class ChannelClosed(GatewayError):
    pass


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        line = await self.reader.readline()
        if not line:
            raise ChannelClosed("the other side closed the channel")
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ChannelClosed("malformed message")
        return msg

    async def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send a command and wait for its answer (`serve_answers` must be running)."""
        mid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[mid] = fut
        self.send({**message, "id": mid})
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._waiting.pop(mid, None)

    async def serve_answers(self, on_other: Any = None) -> None:
        """Read answers until the channel closes; anything unasked goes to `on_other`."""
        try:
            while True:
                msg = await self.receive()
                fut = self._waiting.get(msg.get("id", -1))
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                elif on_other is not None:
                    on_other(msg)
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ChannelClosed("worker gone"))

    def close(self) -> None:
        self.writer.close()
