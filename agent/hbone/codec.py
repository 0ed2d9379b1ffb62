"""HTTP/2 as HBONE needs it (sans-IO): CONNECT streams, DATA, flow control, the connection frames.

Bytes in (`receive`) give events; calls (`open_stream`, `send_data`, ...) queue
bytes out (`data_to_send`). Nothing here touches a socket or a clock. It is
not a general HTTP/2 stack: no server push (refused), no priorities (parsed and
ignored), no trailers beyond accepting them. It validates what it receives as
RFC 9113 asks, and a violation is a connection error: a GOAWAY is queued and
`H2ProtocolError` raised, so the caller sends it and closes.

Why not the h2 library: on HBONE's hot path (one DATA frame in, one out) h2's
general state machine cost more than TLS and the syscalls together; here a
DATA frame is a header parse, two window checks and a slice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import hpack
import hpack.exceptions

from .protocol import TunnelError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

(
    DATA,
    HEADERS,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    PUSH_PROMISE,
    PING,
    GOAWAY,
    WINDOW_UPDATE,
    CONTINUATION,
) = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9

(
    HEADER_TABLE_SIZE,
    ENABLE_PUSH,
    MAX_CONCURRENT_STREAMS,
    INITIAL_WINDOW_SIZE,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
) = (1, 2, 3, 4, 5, 6)

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384

_HEADER = struct.Struct(">HBBBI")  # length split in 2+1 bytes, type, flags, stream id


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


class H2ProtocolError(TunnelError):
    """The peer broke HTTP/2; a GOAWAY with `code` is queued and the connection must close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


# ------------------------------------------------------------------ events


@dataclass
class RequestReceived:
    stream_id: int
    headers: list[tuple[str, str]]


@dataclass
class ResponseReceived:
    stream_id: int
    headers: list[tuple[str, str]]


@dataclass
class DataReceived:
    stream_id: int
    data: bytes
    flow_controlled_length: int
    """Counts padding too: give this back with `acknowledge` once the data is consumed."""


@dataclass
class StreamEnded:
    stream_id: int


@dataclass
class StreamReset:
    stream_id: int
    error_code: int
    remote: bool
    """True when the peer reset it; False when this side refused the stream."""


@dataclass
class WindowUpdated:
    stream_id: int
    """0: the connection window grew (or SETTINGS grew every stream's)."""


@dataclass
class ConnectionTerminated:
    error_code: int
    last_stream_id: int


Event = (
    RequestReceived
    | ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | ConnectionTerminated
)


@dataclass
class _Stream:
    id: int
    send_window: int
    recv_window: int
    local_closed: bool = False
    remote_closed: bool = False
    headers_seen: bool = False
    unacked: int = 0


@dataclass
class _HeaderBlock:
    stream_id: int
    flags: int
    fragments: list[bytes] = field(default_factory=list)
    size: int = 0


class H2Codec:
    def __init__(
        self,
        client_side: bool,
        *,
        stream_window: int,
        connection_window: int,
        max_frame_size: int,
        max_concurrent_streams: int,
        max_header_list_size: int,
    ) -> None:
        self.client_side = client_side
        self.local = {
            INITIAL_WINDOW_SIZE: stream_window,
            MAX_FRAME_SIZE: max_frame_size,
            MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            MAX_HEADER_LIST_SIZE: max_header_list_size,
            ENABLE_PUSH: 0,
        }
        self.remote_initial_window = DEFAULT_WINDOW
        self.remote_max_frame = DEFAULT_FRAME
        self.remote_max_streams = 2**31 - 1
        self.connection_window = connection_window
        self.send_conn_window = DEFAULT_WINDOW
        self.recv_conn_window = connection_window
        self._conn_unacked = 0
        self.streams: dict[int, _Stream] = {}
        self.next_stream_id = 1 if client_side else 2
        self.highest_peer_stream = 0
        self.closed = False
        self._out = bytearray()
        self._in = b""
        self._preface_left = 0 if client_side else len(PREFACE)
        self._block: _HeaderBlock | None = None
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=max_header_list_size)

    # ------------------------------------------------------------ output

    def initiate(self) -> None:
        if self.client_side:
            self._out += PREFACE
        payload = b"".join(struct.pack(">HI", k, v) for k, v in self.local.items())
        self._out += frame(SETTINGS, 0, 0, payload)
        if self.connection_window > DEFAULT_WINDOW:
            self._out += frame(
                WINDOW_UPDATE, 0, 0, struct.pack(">I", self.connection_window - DEFAULT_WINDOW)
            )

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _headers(self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool) -> None:
        block = self.encoder.encode(headers)
        size = self.remote_max_frame
        first, rest = block[:size], block[size:]
        flags = (END_STREAM if end_stream else 0) | (0 if rest else END_HEADERS)
        self._out += frame(HEADERS, flags, stream_id, first)
        while rest:
            chunk, rest = rest[:size], rest[size:]
            self._out += frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, chunk)

    def can_open(self, cap: int) -> bool:
        return not self.closed and len(self.streams) < min(cap, self.remote_max_streams)

    def open_stream(self, headers: list[tuple[str, str]]) -> int:
        """Client: a new stream with its request headers (not ended: a tunnel follows)."""
        sid = self.next_stream_id
        self.next_stream_id += 2
        self.streams[sid] = _Stream(
            sid, self.remote_initial_window, self.local[INITIAL_WINDOW_SIZE]
        )
        self._headers(sid, headers, end_stream=False)
        return sid

    def respond(
        self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool = False
    ) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self._headers(stream_id, headers, end_stream)
        if end_stream:
            self._local_end(stream)

    def send_window(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        return min(self.send_conn_window, stream.send_window)

    @property
    def max_outbound_frame_size(self) -> int:
        return self.remote_max_frame

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """`data` must fit the stream's window and the peer's frame size (see send_window)."""
        stream = self.streams[stream_id]
        n = len(data)
        if n > min(self.send_conn_window, stream.send_window) or n > self.remote_max_frame:
            raise TunnelError(f"{n} bytes do not fit the window or the frame size")
        self.send_conn_window -= n
        stream.send_window -= n
        self._out += frame(DATA, END_STREAM if end_stream else 0, stream_id, data)
        if end_stream:
            self._local_end(stream)

    def end_stream(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.local_closed:
            self._out += frame(DATA, END_STREAM, stream_id)
            self._local_end(stream)

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._out += frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))

    def acknowledge(self, stream_id: int, n: int) -> None:
        """`n` received bytes were consumed: give the window back (in batches of half a window)."""
        self._conn_unacked += n
        if self._conn_unacked >= self.connection_window // 2:
            self._out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._conn_unacked))
            self.recv_conn_window += self._conn_unacked
            self._conn_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        stream.unacked += n
        if stream.unacked >= self.local[INITIAL_WINDOW_SIZE] // 2:
            self._out += frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.unacked))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def close(self, code: int = NO_ERROR) -> None:
        if not self.closed:
            self.closed = True
            self._out += frame(GOAWAY, 0, 0, struct.pack(">II", self.highest_peer_stream, code))

    def _local_end(self, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream.id]

    # ------------------------------------------------------------ input

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.closed:
            return events
        buf = self._in + data if self._in else data
        pos = 0
        if self._preface_left:
            take = min(self._preface_left, len(buf))
            start = len(PREFACE) - self._preface_left
            if buf[:take] != PREFACE[start : start + take]:
                self._fail(PROTOCOL_ERROR, "the connection did not start with the HTTP/2 preface")
            self._preface_left -= take
            pos = take
        end = len(buf)
        max_frame = self.local[MAX_FRAME_SIZE]
        while end - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if length > max_frame:
                self._fail(
                    FRAME_SIZE_ERROR, f"a frame of {length} bytes is over the limit of {max_frame}"
                )
            if end - pos - 9 < length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = buf[pos + 9 : pos + 9 + length]
            pos += 9 + length
            self._frame(kind, flags, sid, payload, events)
            if self.closed:
                break
        self._in = buf[pos:] if pos < end else b""
        return events

    def _fail(self, code: int, reason: str) -> None:
        self.close(code)
        raise H2ProtocolError(code, reason)

    def _stream_error(self, sid: int, code: int, events: list[Event]) -> None:
        self.streams.pop(sid, None)
        self._out += frame(RST_STREAM, 0, sid, struct.pack(">I", code))
        events.append(StreamReset(sid, code, remote=False))

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if self._block is not None and (kind != CONTINUATION or sid != self._block.stream_id):
            self._fail(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, sid, payload, events)
        elif kind == HEADERS:
            self._headers_frame(flags, sid, payload, events)
        elif kind == CONTINUATION:
            self._continuation(flags, sid, payload, events)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload, events)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload, events)
        elif kind == PING:
            if sid != 0 or len(payload) != 8:
                self._fail(PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR, "bad PING frame")
            if not flags & ACK:
                self._out += frame(PING, ACK, 0, payload)
        elif kind == RST_STREAM:
            if sid == 0 or len(payload) != 4:
                self._fail(PROTOCOL_ERROR if sid == 0 else FRAME_SIZE_ERROR, "bad RST_STREAM frame")
            self._check_not_idle(sid)
            if self.streams.pop(sid, None) is not None:
                events.append(StreamReset(sid, int.from_bytes(payload, "big"), remote=True))
        elif kind == GOAWAY:
            if sid != 0 or len(payload) < 8:
                self._fail(PROTOCOL_ERROR, "bad GOAWAY frame")
            last, code = struct.unpack(">II", payload[:8])
            self.closed = True
            events.append(ConnectionTerminated(code, last & 0x7FFFFFFF))
        elif kind == PRIORITY:
            if sid == 0 or len(payload) != 5:
                self._fail(PROTOCOL_ERROR if sid == 0 else FRAME_SIZE_ERROR, "bad PRIORITY frame")
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "server push was not allowed")
        # Unknown frame types are ignored (RFC 9113 5.5).

    def _check_not_idle(self, sid: int) -> None:
        ours = (sid % 2 == 1) == self.client_side
        if (ours and sid >= self.next_stream_id) or (not ours and sid > self.highest_peer_stream):
            self._fail(PROTOCOL_ERROR, f"frame on idle stream {sid}")

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            self._fail(PROTOCOL_ERROR, "padding is longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _data(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        if n > self.recv_conn_window:
            self._fail(FLOW_CONTROL_ERROR, "the peer sent more than the connection window")
        self.recv_conn_window -= n
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            self._check_not_idle(sid)
            # A stream that just closed: drop the data but keep the connection's window whole.
            self.acknowledge(0, n)
            if stream is not None:
                self._stream_error(sid, STREAM_CLOSED, events)
            return
        if n > stream.recv_window:
            self._stream_error(sid, FLOW_CONTROL_ERROR, events)
            self.acknowledge(0, n)
            return
        stream.recv_window -= n
        data = self._unpad(flags, payload) if flags & PADDED else payload
        if n:
            events.append(DataReceived(sid, data, n))
        if flags & END_STREAM:
            self._remote_end(stream, events)

    def _remote_end(self, stream: _Stream, events: list[Event]) -> None:
        stream.remote_closed = True
        events.append(StreamEnded(stream.id))
        if stream.local_closed:
            del self.streams[stream.id]

    def _headers_frame(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
        fragment = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(fragment) < 5:
                self._fail(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            fragment = fragment[5:]
        self._block = _HeaderBlock(sid, flags)
        self._add_fragment(fragment, events)

    def _continuation(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if self._block is None:
            self._fail(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        assert self._block is not None
        self._block.flags |= flags & END_HEADERS
        self._add_fragment(payload, events)

    def _add_fragment(self, fragment: bytes, events: list[Event]) -> None:
        block = self._block
        assert block is not None
        block.fragments.append(fragment)
        block.size += len(fragment)
        if block.size > self.local[MAX_HEADER_LIST_SIZE] * 2:
            self._fail(PROTOCOL_ERROR, f"a header block of over {block.size} bytes")
        if block.flags & END_HEADERS:
            self._block = None
            self._header_block(block, events)

    def _header_block(self, block: _HeaderBlock, events: list[Event]) -> None:
        sid = block.stream_id
        try:
            headers = [
                (str(k), str(v))
                for k, v in self.decoder.decode(b"".join(block.fragments), raw=False)
            ]
        except hpack.exceptions.OversizedHeaderListError:
            self._fail(
                PROTOCOL_ERROR, f"a header list over {self.local[MAX_HEADER_LIST_SIZE]} bytes"
            )
        except (hpack.exceptions.HPACKError, UnicodeDecodeError) as exc:
            self._fail(COMPRESSION_ERROR, f"the header block does not decode: {exc}")
        stream = self.streams.get(sid)
        end = bool(block.flags & END_STREAM)
        if stream is None:
            if self.client_side or sid % 2 == 0:
                self._fail(
                    PROTOCOL_ERROR, f"HEADERS on stream {sid}, which this side cannot accept"
                )
            if sid <= self.highest_peer_stream:
                self._fail(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
            self.highest_peer_stream = sid
            if len(self.streams) >= self.local[MAX_CONCURRENT_STREAMS]:
                self._out += frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM))
                return
            stream = _Stream(
                sid, self.remote_initial_window, self.local[INITIAL_WINDOW_SIZE], headers_seen=True
            )
            self.streams[sid] = stream
            events.append(RequestReceived(sid, headers))
        elif stream.remote_closed:
            self._stream_error(sid, STREAM_CLOSED, events)
            return
        elif not stream.headers_seen:
            stream.headers_seen = True
            events.append(ResponseReceived(sid, headers))
        elif not end:
            self._stream_error(sid, PROTOCOL_ERROR, events)  # trailers must end the stream
            return
        if end:
            self._remote_end(stream, events)

    def _settings(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid != 0:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
        grew = False
        for i in range(0, len(payload), 6):
            key, value = struct.unpack(">HI", payload[i : i + 6])
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.remote_initial_window
                self.remote_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        self._fail(FLOW_CONTROL_ERROR, "a stream window grew over 2^31-1")
                grew = grew or delta > 0
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    self._fail(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} is out of range")
                self.remote_max_frame = value
            elif key == MAX_CONCURRENT_STREAMS:
                self.remote_max_streams = value
            elif key == HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif key == ENABLE_PUSH and value > 1:
                self._fail(PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        self._out += frame(SETTINGS, ACK, 0)
        if grew:
            events.append(WindowUpdated(0))

    def _window_update(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_conn_window += increment
            if self.send_conn_window > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "the connection window grew over 2^31-1")
            events.append(WindowUpdated(0))
            return
        stream = self.streams.get(sid)
        if stream is None:
            self._check_not_idle(sid)
            return
        if increment == 0:
            self._stream_error(sid, PROTOCOL_ERROR, events)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR, events)
            return
        events.append(WindowUpdated(sid))
