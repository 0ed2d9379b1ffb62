"""One HTTP/2 connection of HBONE over an asyncio transport, and its streams.

The h2 library is the protocol state machine (sans-IO); this module feeds it
bytes and events. Each stream is an `End` of a Splice, so a stream and a TCP
connection are spliced alike. Backpressure: a paused stream stops
acknowledging received data, so the peer runs out of window and stops
sending; outgoing data waits in the stream's buffer for window, and a full
buffer pauses the splice's other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

from ..identity import tls
from ..proxy.splice import Splice
from . import protocol
from .protocol import TunnelError

log = logging.getLogger("agent.hbone")

SEND_HIGH_WATER = 1 << 20
SEND_LOW_WATER = 256 << 10


class H2Stream:
    """A CONNECT stream: the `End` of a Splice that travels inside an HBONE connection."""

    def __init__(self, endpoint: H2Endpoint, stream_id: int) -> None:
        self.endpoint = endpoint
        self.id = stream_id
        self.splice: Splice | None = None
        self.closed = False
        self.response: asyncio.Future[list[tuple[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._out = bytearray()
        self._out_eof = False
        self.sent_eof = False
        self.remote_ended = False
        self._recv_paused = False
        self._unacked = 0
        self._early: list[bytes] = []
        self._early_eof = False
        self._told_pause = False

    def attach(self, splice: Splice) -> None:
        """Join a splice; what arrived before is handed over now."""
        self.splice = splice
        early, self._early = self._early, []
        for data in early:
            splice.on_data(self, data)
        if self._early_eof:
            splice.on_eof(self)
        if self.closed:
            splice.on_closed(self, None)

    # ------------------------------------------------------------ End (called by the splice)

    def write(self, data: bytes) -> None:
        if self.closed or self._out_eof:
            return
        self._out += data
        self.endpoint.pump(self)
        if len(self._out) > SEND_HIGH_WATER and not self._told_pause and self.splice:
            self._told_pause = True
            self.splice.on_pause(self)

    def write_eof(self) -> None:
        if not self.closed and not self._out_eof:
            self._out_eof = True
            self.endpoint.pump(self)

    def close(self) -> None:
        self.write_eof()

    def reset(self) -> None:
        self.endpoint.reset(self, ErrorCodes.CANCEL)

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
        return bool(self._out) or (self._out_eof and not self.sent_eof)

    def take(self, window: int, max_frame: int) -> bytes:
        n = min(len(self._out), window, max_frame)
        chunk = bytes(self._out[:n])
        del self._out[:n]
        if self._told_pause and len(self._out) < SEND_LOW_WATER and self.splice:
            self._told_pause = False
            self.splice.on_resume(self)
        return chunk

    def wants_eof(self) -> bool:
        return self._out_eof and not self._out and not self.sent_eof

    def on_data(self, data: bytes, flow_len: int) -> None:
        if self.splice is not None:
            self.splice.on_data(self, data)
        else:
            self._early.append(data)
        if self._recv_paused:
            self._unacked += flow_len
        else:
            self.endpoint.acknowledge(self, flow_len)

    def on_end(self) -> None:
        self.remote_ended = True
        if self.splice is not None:
            self.splice.on_eof(self)
        else:
            self._early_eof = True
        self.maybe_closed()

    def maybe_closed(self) -> None:
        if not self.closed and self.sent_eof and self.remote_ended:
            self._finish(None)

    def on_reset(self, reason: str) -> None:
        if not self.response.done():
            self.response.set_exception(TunnelError(reason))
        self._finish(TunnelError(reason))

    def _finish(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.forget(self)
        if self.splice is not None:
            self.splice.on_closed(self, exc)


class H2Endpoint(asyncio.Protocol):
    """An HTTP/2 connection over TLS; subclasses are the HBONE server and client sides."""

    client_side = False

    def __init__(self) -> None:
        config = h2.config.H2Configuration(
            client_side=self.client_side, header_encoding="utf-8", validate_inbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.guard = protocol.FrameGuard(
            protocol.MAX_FRAME_SIZE, 0 if self.client_side else protocol.CLIENT_PREFACE_LEN
        )
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.peer_identity: str | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write_paused = False

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer_identity = tls.peer_spiffe_id(transport.get_extra_info("ssl_object"))
        transport.set_write_buffer_limits(high=4 << 20)
        self.conn.initiate_connection()
        # Through update_settings, so h2 applies each value once the peer acknowledged it.
        self.conn.update_settings(protocol.local_settings())
        self.conn.increment_flow_control_window(protocol.CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.guard.feed(data)
            events = self.conn.receive_data(data)
        except (h2.exceptions.ProtocolError, ValueError, TunnelError) as exc:
            log.warning(
                "HBONE peer broke the HTTP/2 protocol; closing",
                extra={"peer": self.peer_identity, "error": repr(exc)},
            )
            self.flush()  # h2 has queued a GOAWAY
            self.abort()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def _dispatch(self, event: Any) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event.stream_id, [(str(k), str(v)) for k, v in event.headers])
        elif isinstance(event, h2.events.ResponseReceived):
            if stream is not None and not stream.response.done():
                stream.response.set_result([(str(k), str(v)) for k, v in event.headers])
        elif isinstance(event, h2.events.DataReceived):
            if stream is not None:
                stream.on_data(event.data, event.flow_controlled_length)
            else:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                stream.on_reset(f"stream reset by peer ({event.error_code!s})")
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.pump_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.abort(f"peer closed the connection ({event.error_code!s})")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.pump_all()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.on_reset("HBONE connection lost" + (f": {exc}" if exc else ""))
        if not self.lost.done():
            self.lost.set_result(None)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self, reason: str = "closed") -> None:
        for stream in list(self.streams.values()):
            stream.on_reset(reason)
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ streams

    def add_stream(self, stream_id: int) -> H2Stream:
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        return stream

    def forget(self, stream: H2Stream) -> None:
        self.streams.pop(stream.id, None)

    def pump(self, stream: H2Stream) -> None:
        """Send what the stream has, as far as flow-control windows allow."""
        if self.closed or stream.closed:
            return
        try:
            while stream.pending and not self._write_paused:
                if stream.wants_eof():
                    self.conn.end_stream(stream.id)
                    stream.sent_eof = True
                    break
                window = self.conn.local_flow_control_window(stream.id)
                if window <= 0:
                    break
                self.conn.send_data(
                    stream.id, stream.take(window, self.conn.max_outbound_frame_size)
                )
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            stream.on_reset(f"stream closed: {exc}")
            return
        self.flush()
        stream.maybe_closed()

    def pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending:
                self.pump(stream)

    def acknowledge(self, stream: H2Stream, n: int) -> None:
        if self.closed:
            return
        try:
            self.conn.acknowledge_received_data(n, stream.id)
        except h2.exceptions.StreamClosedError:
            return
        self.flush()

    def reset(self, stream: H2Stream, code: ErrorCodes) -> None:
        if stream.closed:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream.id, code)
        self.flush()
        stream.on_reset("stream reset")

    # ------------------------------------------------------------ subclass hooks

    def on_request(self, stream_id: int, headers: list[tuple[str, str]]) -> None:
        self.conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
