"""One HTTP/2 connection of HBONE over an asyncio transport, and its streams.

The codec (codec.py) is the protocol, sans-IO; this module feeds it bytes and
turns its events into stream callbacks. Each stream is an `End` (stream.py), so
a stream and a TCP connection are spliced alike. Backpressure: a paused stream
stops acknowledging received data, so the peer runs out of window and stops
sending; outgoing data waits in the stream's buffer for window, and a full
buffer pauses the splice's other end.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import cast

from agent.identity import tls

from . import codec, protocol
from .limits import HboneGuard
from .protocol import TunnelError
from .stream import EndListener

log = logging.getLogger("agent.hbone")

SEND_HIGH_WATER = 1 << 20
SEND_LOW_WATER = 256 << 10


class H2Stream:
    """A CONNECT stream: the `End` of a Splice that travels inside an HBONE connection."""

    def __init__(self, endpoint: H2Endpoint, stream_id: int) -> None:
        self.endpoint = endpoint
        self.id = stream_id
        self.listener: EndListener | None = None
        self.closed = False
        self.response: asyncio.Future[list[tuple[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._out: collections.deque[bytes] = collections.deque()
        self._out_len = 0
        """Bytes waiting for flow-control window, kept as the chunks that came (no copying)."""
        self._out_eof = False
        self.sent_eof = False
        self.remote_ended = False
        self._recv_paused = False
        self._unacked = 0
        self._early: list[bytes] = []
        self._early_eof = False
        self._told_pause = False

    def attach(self, listener: EndListener) -> None:
        """Report to `listener` (a Splice, a StreamTransport); what arrived before is handed
        over now."""
        self.listener = listener
        early, self._early = self._early, []
        for data in early:
            listener.on_data(self, data)
        if self._early_eof:
            listener.on_eof(self)
        if self.closed:
            listener.on_closed(self, None)

    # ------------------------------------------------------------ End (called by the splice)

    def write(self, data: bytes) -> None:
        if self.closed or self._out_eof:
            return
        self._out.append(data)
        self._out_len += len(data)
        self.endpoint.pump(self)
        if self._out_len > SEND_HIGH_WATER and not self._told_pause and self.listener:
            self._told_pause = True
            self.listener.on_pause(self)

    def write_eof(self) -> None:
        if not self.closed and not self._out_eof:
            self._out_eof = True
            self.endpoint.pump(self)

    def close(self) -> None:
        self.write_eof()

    def reset(self) -> None:
        self.endpoint.reset(self, codec.CANCEL)

    def pause_reading(self) -> None:
        self._recv_paused = True

    def resume_reading(self) -> None:
        self._recv_paused = False
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.endpoint.acknowledge(self, n)

    # ------------------------------------------------------------ from the endpoint

    @property
    def pending(self) -> bool:
        return self._out_len > 0 or (self._out_eof and not self.sent_eof)

    def take(self, limit: int) -> bytes:
        """Up to `limit` bytes for one DATA frame."""
        first = self._out[0]
        if len(first) <= limit and (len(self._out) == 1 or len(first) + len(self._out[1]) > limit):
            chunk = self._out.popleft()  # the common case: a whole chunk, no copy
        else:
            parts, size = [], 0
            while self._out and size < limit:
                head = self._out[0]
                if size + len(head) <= limit:
                    parts.append(self._out.popleft())
                    size += len(head)
                else:
                    cut = limit - size
                    parts.append(head[:cut])
                    self._out[0] = head[cut:]
                    size = limit
            chunk = b"".join(parts)
        self._out_len -= len(chunk)
        if self._told_pause and self._out_len < SEND_LOW_WATER and self.listener:
            self._told_pause = False
            self.listener.on_resume(self)
        return chunk

    def wants_eof(self) -> bool:
        return self._out_eof and not self._out_len and not self.sent_eof

    def on_data(self, data: bytes, flow_len: int) -> None:
        if self.listener is not None:
            self.listener.on_data(self, data)
        else:
            self._early.append(data)
        if self._recv_paused:
            self._unacked += flow_len
        else:
            self.endpoint.acknowledge(self, flow_len, flush=False)

    def on_end(self) -> None:
        self.remote_ended = True
        if self.listener is not None:
            self.listener.on_eof(self)
        else:
            self._early_eof = True
        self.maybe_closed()

    def maybe_closed(self) -> None:
        if not self.closed and self.sent_eof and self.remote_ended:
            self._finish(None)

    def on_reset(self, reason: str) -> None:
        if not self.response.done():
            self.response.set_exception(TunnelError(reason))
            self.response.exception()  # retrieved: nobody may be waiting for it
        self._finish(TunnelError(reason))

    def _finish(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.forget(self)
        if self.listener is not None:
            self.listener.on_closed(self, exc)


class H2Endpoint(asyncio.Protocol):
    """An HTTP/2 connection over TLS; subclasses are the HBONE server and client sides.

    Both sides refuse a peer that did not negotiate ALPN h2, PING a peer that has sent
    nothing for `keepalive_interval` and close the connection when it does not answer, or
    has read nothing we sent, within `keepalive_timeout` (limits.ConnectionLimits). One
    timer per connection, due at the nearest deadline.
    """

    client_side = False

    def __init__(self, guard: HboneGuard | None = None) -> None:
        self.guard = guard or HboneGuard()
        self.limits = self.guard.limits.connection
        self.conn = codec.H2Codec(
            self.client_side,
            stream_window=protocol.STREAM_WINDOW,
            connection_window=protocol.CONNECTION_WINDOW,
            max_frame_size=protocol.MAX_FRAME_SIZE,
            max_concurrent_streams=protocol.MAX_CONCURRENT_STREAMS,
            max_header_list_size=protocol.MAX_HEADER_LIST_SIZE,
            limits=self.guard.limits.frames,
        )
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.peer_identity: str | None = None
        self.peer_addr = ""
        self.closed = False
        self.refused: str | None = None
        """Why this side refused the connection as soon as it was made (ALPN, identity...)."""
        self._loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self._write_paused = False
        now = self._loop.time()
        self._made_at = self._last_received = self._idle_since = now
        self._ping_sent_at = self._write_paused_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._logged: set[str] = set()

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        # The clocks start now, after the TLS handshake (which has its own timeout).
        self._made_at = self._last_received = self._idle_since = self._loop.time()
        ssl_object = transport.get_extra_info("ssl_object")
        self.peer_identity = tls.peer_spiffe_id(ssl_object)
        self.peer_addr = str(transport.get_extra_info("peername"))
        self.transport.set_write_buffer_limits(high=4 << 20)
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != tls.ALPN_H2:
            # It may not speak HTTP/2 at all: no SETTINGS, no GOAWAY, just close.
            self.conn.closed = True
            self.refuse(f"the peer did not negotiate ALPN h2 (got {alpn!r})", "alpn_refused")
            return
        self.conn.initiate()
        self.flush()
        self._schedule(self._made_at)

    def refuse(self, reason: str, counter: str, code: int = codec.NO_ERROR) -> None:
        """Refuse the connection at its start: count, log, GOAWAY `code` and close."""
        self.refused = reason
        self.guard.hit(counter)
        log.warning(
            "HBONE connection refused",
            extra={"peer": self.peer_identity, "addr": self.peer_addr, "reason": reason},
        )
        self.abort(reason, code)

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self._last_received = now
        try:
            for event in self.conn.receive(data, now):
                self._dispatch(event)
        except codec.H2ProtocolError as exc:
            if exc.limit:
                self.guard.hit(f"flood_{exc.limit}")
                message = "HBONE peer flooded; GOAWAY ENHANCE_YOUR_CALM"
            else:
                self.guard.hit("protocol_errors")
                message = "HBONE peer broke the HTTP/2 protocol; closing"
            log.warning(
                message,
                extra={"peer": self.peer_identity, "addr": self.peer_addr, "error": str(exc)},
            )
            self.flush()  # the codec has queued a GOAWAY
            self.abort(str(exc))
            return
        self.flush()

    def _dispatch(self, event: codec.Event) -> None:
        if isinstance(event, codec.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_data(event.data, event.flow_controlled_length)
            else:
                self.conn.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, codec.RequestReceived):
            self.on_request(event.stream_id, event.headers)
        elif isinstance(event, codec.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.response.done():
                stream.response.set_result(event.headers)
        elif isinstance(event, codec.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, codec.StreamReset):
            if not event.remote:
                self._stream_refused(event)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                side = "peer" if event.remote else "this agent"
                stream.on_reset(f"stream reset by {side} (code {event.error_code})")
        elif isinstance(event, codec.WindowUpdated):
            if event.stream_id == 0:
                self.pump_all()
            elif (stream := self.streams.get(event.stream_id)) is not None:
                self.pump(stream)
        elif isinstance(event, codec.ConnectionTerminated):
            self.abort(f"peer closed the connection (code {event.error_code})")

    def _stream_refused(self, event: codec.StreamReset) -> None:
        """The codec reset a stream for the peer's fault: count it, log the first of a kind."""
        counter = {"malformed": "malformed_headers", "refused": "concurrent_streams_refused"}
        self.note(counter.get(event.cause, "stream_errors"), event.reason)

    def note(self, counter: str, reason: str, message: str = "HBONE stream refused") -> None:
        """Count a limit or refusal; log it once per connection and counter (a peer that
        triggers one thousands of times must not flood the log too)."""
        self.guard.hit(counter)
        if counter not in self._logged:
            self._logged.add(counter)
            log.info(
                message,
                extra={
                    "peer": self.peer_identity,
                    "addr": self.peer_addr,
                    "limit": counter,
                    "reason": reason,
                },
            )

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_paused_since = now = self._loop.time()
        self._wake_by(now + self.limits.keepalive_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        self.pump_all()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stream in list(self.streams.values()):
            stream.on_reset("HBONE connection lost" + (f": {exc}" if exc else ""))
        if not self.lost.done():
            self.lost.set_result(None)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self, reason: str = "closed", code: int = codec.NO_ERROR, hard: bool = False) -> None:
        """Reset every stream and close, after a GOAWAY with `code`. `hard`: the peer is dead
        or reads nothing, so drop the connection at once (a TLS close would wait for it)."""
        for stream in list(self.streams.values()):
            stream.on_reset(reason)
        if not self.conn.closed:
            self.conn.close(code, reason)
            self.flush()
        if self.transport is not None:
            if hard or self._write_paused:
                self.transport.abort()
            else:
                self.transport.close()

    # ------------------------------------------------------------ timers

    def _deadlines(self) -> list[tuple[float, str, str]]:
        """(when, counter, reason) of everything that closes the connection if it comes due."""
        lim = self.limits
        out = []
        if self.conn.ping_outstanding is not None:
            out.append(
                (
                    self._ping_sent_at + lim.keepalive_timeout,
                    "keepalive_timeouts",
                    f"no answer to a keepalive PING within {lim.keepalive_timeout:g} s",
                )
            )
        if self._write_paused:
            out.append(
                (
                    self._write_paused_since + lim.keepalive_timeout,
                    "write_stalls",
                    f"the peer read nothing we sent for {lim.keepalive_timeout:g} s",
                )
            )
        return out

    def _tick(self) -> None:
        self._timer = None
        if self.closed or self.conn.closed:
            return
        now = self._loop.time()
        for when, counter, reason in self._deadlines():
            if now >= when:
                self.guard.hit(counter)
                log.warning(
                    "HBONE connection closed",
                    extra={"peer": self.peer_identity, "addr": self.peer_addr, "reason": reason},
                )
                self.abort(reason, hard=counter != "idle_timeouts")
                return
        if (
            self.conn.ping_outstanding is None
            and now - self._last_received >= self.limits.keepalive_interval
        ):
            self._ping_sent_at = now
            self.conn.ping()
            self.flush()
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        whens = [when for when, _, _ in self._deadlines()]
        if self.conn.ping_outstanding is None:
            whens.append(self._last_received + self.limits.keepalive_interval)
        self._wake_by(max(min(whens), now))

    def _wake_by(self, when: float) -> None:
        if self.closed:
            return
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._tick)

    # ------------------------------------------------------------ streams

    def add_stream(self, stream_id: int) -> H2Stream:
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        return stream

    def forget(self, stream: H2Stream) -> None:
        self.streams.pop(stream.id, None)
        if not self.streams:
            self._idle_since = self._loop.time()

    def pump(self, stream: H2Stream) -> None:
        """Send what the stream has, as far as flow-control windows allow."""
        if self.closed or stream.closed:
            return
        conn = self.conn
        while stream.pending and not self._write_paused:
            if stream.wants_eof():
                conn.end_stream(stream.id)
                stream.sent_eof = True
                break
            window = conn.send_window(stream.id)
            if window <= 0:
                break
            conn.send_data(stream.id, stream.take(min(window, conn.remote_max_frame)))
        self.flush()
        stream.maybe_closed()

    def pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending:
                self.pump(stream)

    def acknowledge(self, stream: H2Stream, n: int, flush: bool = True) -> None:
        """Give `n` bytes of window back. While handling received data the flush is left
        to the end of data_received, so a batch of frames costs one write."""
        if self.closed:
            return
        self.conn.acknowledge(stream.id, n)
        if flush:
            self.flush()

    def reset(self, stream: H2Stream, code: int) -> None:
        if stream.closed:
            return
        self.conn.reset(stream.id, code)
        self.flush()
        stream.on_reset("stream reset")

    # ------------------------------------------------------------ subclass hooks

    def on_request(self, stream_id: int, headers: list[tuple[str, str]]) -> None:
        self.conn.reset(stream_id, codec.REFUSED_STREAM)
