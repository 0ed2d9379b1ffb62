"""A small Redis client for the rate limiter: one connection, commands pipelined automatically.

Every command sent while others are in flight goes out in the same write, and
replies come back in order (Redis answers one connection in order), so many
concurrent requests cost one round trip and a few syscalls, not one each.
Replies are parsed by hiredis. Scripts run by EVALSHA, loaded on NOSCRIPT.
A lost connection fails what was in flight with `RedisUnavailable`; the next
command reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis

from .errors import GatewayError


class RedisUnavailable(GatewayError):
    """Redis could not be reached or did not answer in time."""


class RedisReplyError(GatewayError):
    """Redis answered with an error."""


def encode(*args: bytes | str | int | float) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        """Commands in flight, oldest first, with the time their answer is due."""
        self.out: list[bytes] = []
        self.lost = False
        self.timeout = timeout
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes, fut: asyncio.Future[Any]) -> None:
        loop = asyncio.get_running_loop()
        self.waiting.append((fut, loop.time() + self.timeout))
        if not self.out:
            loop.call_soon(self._flush)
        self.out.append(data)
        if self._watch is None:
            self._watch = loop.call_later(self.timeout / 2, self._check)

    def _check(self) -> None:
        """One timer for the connection, not one per command: a late oldest answer means
        Redis is stuck, and every later answer would come out of step; drop the connection."""
        self._watch = None
        if not self.waiting or self.lost:
            return
        loop = asyncio.get_running_loop()
        if self.waiting[0][1] < loop.time():
            self._fail(RedisUnavailable(f"no answer within {self.timeout:g} s"))
            if self.transport is not None:
                self.transport.abort()
            return
        self._watch = loop.call_later(self.timeout / 2, self._check)

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.lost:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not self.waiting:
                continue
            fut, _ = self.waiting.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(RedisReplyError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(f"connection lost: {exc or 'closed'}"))

    def _fail(self, exc: RedisUnavailable) -> None:
        self.lost = True
        while self.waiting:
            fut, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)


def _ignore(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved, so asyncio does not log it


class Redis:
    def __init__(self, url: str, timeout: float = 0.25) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise GatewayError(f"{url!r}: only redis:// URLs are supported")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.strip("/") or 0)
        self.password = parts.password
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._scripts: dict[bytes, bytes] = {}

    async def _connection(self) -> _Connection:
        if self._conn is not None and not self._conn.lost:
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.timeout), self.host, self.port
                )
                self._conn = conn
                if self.password:
                    await self._call(conn, "AUTH", self.password)
                if self.db:
                    await self._call(conn, "SELECT", self.db)
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"{self.host}:{self.port}: {exc or 'timed out'}") from exc
        return conn

    async def _call(self, conn: _Connection, *args: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.send(encode(*args), fut)
        return await fut

    async def execute(self, *args: Any) -> Any:
        conn = self._conn
        if conn is None or conn.lost:  # (the usual case skips two coroutine levels)
            conn = await self._connection()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.send(encode(*args), fut)
        return await fut

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands in one write; their replies in order (the first error raises)."""
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connection()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        for cmd, fut in zip(commands, futures, strict=True):
            conn.send(encode(*cmd), fut)
        await futures[-1]  # replies come in order: the last one means all are in
        return [f.result() for f in futures]

    def send_only(self, *args: Any) -> None:
        """Fire and forget on the current connection (its reply is read and dropped)."""
        conn = self._conn
        if conn is not None and not conn.lost:
            fut = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_ignore)
            conn.send(encode(*args), fut)

    async def script(self, source: bytes, keys: list[bytes], args: list[Any]) -> Any:
        sha = self._scripts.get(source)
        if sha is None:
            sha = self._scripts[source] = hashlib.sha1(source).hexdigest().encode()
        try:
            return await self.execute(b"EVALSHA", sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            return await self.execute(b"EVAL", source, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
