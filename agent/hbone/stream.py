"""An HBONE stream as its users see it: one `End` of a connection, or an asyncio transport.

`End` is what a stream (and a TCP connection) offers to whoever carries its
bytes, and `EndListener` what it reports to: the relay's Splice joins two Ends
(agent/node/proxy/splice.py); `StreamTransport` makes a stream the transport of
an asyncio protocol, so an HTTP client (the gateway's, later the waypoint's)
runs over HBONE unchanged. Both live here, below the relay and the gateway, so
that the HBONE layer imports neither.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class End(Protocol):
    """One side of a proxied connection: a TCP connection or an HBONE stream."""

    closed: bool

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    def reset(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class EndListener(Protocol):
    """What an End reports to: a Splice, or anything else that consumes a stream
    (StreamTransport, below)."""

    def on_data(self, end: End, data: bytes) -> None: ...
    def on_eof(self, end: End) -> None: ...
    def on_closed(self, end: End, exc: Exception | None) -> None: ...
    def on_pause(self, end: End) -> None: ...
    def on_resume(self, end: End) -> None: ...


class StreamEnd(End, Protocol):
    """An End that reports to a listener attached later (an HBONE stream, endpoint.py)."""

    def attach(self, listener: EndListener) -> None: ...


class StreamTransport(asyncio.Transport):
    """An HBONE stream presented as a transport, so the HTTP client runs over it unchanged."""

    def __init__(self, stream: StreamEnd, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._stream = stream
        self._protocol = protocol
        self._closing = False
        self._lost = False
        protocol.connection_made(self)
        stream.attach(self)

    # ---------------------------------------------------------------- transport
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._stream.write(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._stream.reset()  # an HTTP client closes a connection it will not reuse
            asyncio.get_running_loop().call_soon(self._connection_lost, None)  # as asyncio does

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self._stream.pause_reading()

    def resume_reading(self) -> None:
        self._stream.resume_reading()

    def is_reading(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    # ---------------------------------------------------------------- EndListener
    def on_data(self, end: End, data: bytes) -> None:
        if not self._lost:
            self._protocol.data_received(data)

    def on_eof(self, end: End) -> None:
        if not self._lost:
            self._protocol.eof_received()
            self._closing = True
            self._stream.close()

    def on_closed(self, end: End, exc: Exception | None) -> None:
        self._closing = True
        self._connection_lost(exc)

    def on_pause(self, end: End) -> None:
        self._protocol.pause_writing()

    def on_resume(self, end: End) -> None:
        self._protocol.resume_writing()

    def _connection_lost(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            self._protocol.connection_lost(exc)
