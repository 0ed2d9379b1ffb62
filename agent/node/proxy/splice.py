"""Splicing two ends of a proxied connection: bytes both ways, half-close, resets, backpressure.

An end is anything with the `End` methods (agent/hbone/stream.py): a TCP
connection (`TcpEnd`) or an HBONE stream. Ends report to the Splice, their
`EndListener`; the Splice decides what the other end does. The access-log record
is finished when both ends are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import cast

from agent.hbone.stream import End

from .accesslog import FlowRecord

WRITE_HIGH_WATER = 512 * 1024


class Splice:
    """One proxied connection: `client` is the side that was captured, `upstream` where it goes."""

    def __init__(self, record: FlowRecord, on_done: Callable[[Splice], None]) -> None:
        self.record = record
        self.client: End | None = None
        self.upstream: End | None = None
        self._eof: set[int] = set()
        self._on_done = on_done
        self._done = False
        self._pending: list[bytes] = []
        """Client bytes that arrived before the upstream was attached."""
        self._finishers: list[Callable[[], None]] = []

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, when the connection is over."""
        self._finishers.append(callback)

    # -- called by ends ----------------------------------------------------------
    def on_data(self, end: End, data: bytes) -> None:
        other = self._other(end)
        if end is self.client:
            self.record.bytes_sent += len(data)
        else:
            self.record.bytes_received += len(data)
        if other is None:
            self._pending.append(data)
        elif not other.closed:
            other.write(data)

    def attach_upstream(self, end: End) -> None:
        """The upstream is connected: hand it what the client already sent."""
        self.upstream = end
        pending, self._pending = self._pending, []
        for data in pending:
            end.write(data)
        if self.client is not None and id(self.client) in self._eof:
            end.write_eof()

    def on_eof(self, end: End) -> None:
        self._eof.add(id(end))
        other = self._other(end)
        if other is not None and not other.closed:
            other.write_eof()
        if self.client is not None and self.upstream is not None and len(self._eof) == 2:
            self.record.finish("ok")
            self.client.close()
            self.upstream.close()

    def on_closed(self, end: End, exc: Exception | None) -> None:
        other = self._other(end)
        if exc is not None:
            side = "client" if end is self.client else "upstream"
            self.record.finish(f"{side}_reset", str(exc))
            if other is not None and not other.closed:
                other.reset()
        elif other is not None and not other.closed and id(end) not in self._eof:
            # Closed without EOF (aborted by us, or the peer vanished): pass it on.
            other.close()
        self._maybe_done()

    def on_pause(self, end: End) -> None:
        other = self._other(end)
        if other is not None and not other.closed:
            other.pause_reading()

    def on_resume(self, end: End) -> None:
        other = self._other(end)
        if other is not None and not other.closed:
            other.resume_reading()

    # -- called by the owner --------------------------------------------------------
    def abort(self, outcome: str, detail: str = "") -> None:
        """End the connection at once, resetting both sides."""
        self.record.finish(outcome, detail)
        for end in (self.client, self.upstream):
            if end is not None and not end.closed:
                end.reset()
        self._maybe_done()

    def _other(self, end: End) -> End | None:
        return self.upstream if end is self.client else self.client

    def _maybe_done(self) -> None:
        ends = [e for e in (self.client, self.upstream) if e is not None]
        if not self._done and all(e.closed for e in ends):
            self._done = True
            self.record.finish("ok" if len(self._eof) == 2 else "closed")
            for callback in self._finishers:
                callback()
            self._on_done(self)


class TcpEnd(asyncio.Protocol):
    """A TCP connection as one end of a Splice."""

    def __init__(self, splice: Splice) -> None:
        self.splice = splice
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.splice.on_data(self, data)

    def eof_received(self) -> bool:
        self.splice.on_eof(self)
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.splice.on_closed(self, exc)

    def pause_writing(self) -> None:
        self.splice.on_pause(self)

    def resume_writing(self) -> None:
        self.splice.on_resume(self)

    # -- End --------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        if (
            self.transport is not None
            and not self.transport.is_closing()
            and self.transport.can_write_eof()
        ):
            self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def reset(self) -> None:
        """Close with RST, so the peer sees a reset, not a clean end of stream."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def reset_socket(sock: socket.socket) -> None:
    """Close a raw socket with RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
