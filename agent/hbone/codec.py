"""HTTP/2 as HBONE needs it (sans-IO): CONNECT streams, DATA, flow control, the connection frames.

Bytes in (`receive`) give events; calls (`open_stream`, `send_data`, ...) queue
bytes out (`data_to_send`). Nothing here touches a socket or a clock: the caller
passes the time to `receive`, for the flood budgets. It is not a general HTTP/2
stack: no server push (refused), no priorities (parsed and ignored), no
trailers beyond accepting them.

It validates what it receives as RFC 9113 asks. A connection error queues a
GOAWAY and raises `H2ProtocolError` (the only exception `receive` raises), so
the caller sends it and closes. A malformed header block (8.2, 8.3) or another
stream error resets that stream (RST_STREAM, a `StreamReset` event) and the
connection carries on. A peer that floods (limits.FrameLimits: frames that
carry nothing, streams thrown away, CONTINUATION chains, SETTINGS entries,
WINDOW_UPDATEs) gets GOAWAY ENHANCE_YOUR_CALM. What it buffers is bounded: one
partial frame (`max_frame_size`), one header block (twice the header list limit,
`max_continuations` frames), at most `max_concurrent_streams` peer streams.

Why not the h2 library: on HBONE's hot path (one DATA frame in, one out) h2's
general state machine cost more than TLS and the syscalls together; here a
DATA frame is a header parse, two window checks and a slice.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import NoReturn

import hpack
import hpack.exceptions

from .limits import FrameLimits
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
ENHANCE_YOUR_CALM = 0xB

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
DEFAULT_TABLE = 4096
"""Our HPACK encoder never uses a larger dynamic table, whatever the peer allows: every
stream's Forwarded value is new, so a table the peer made huge would only grow."""

_HEADER = struct.Struct(">HBBBI")  # length split in 2+1 bytes, type, flags, stream id


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


class H2ProtocolError(TunnelError):
    """The peer broke HTTP/2 or flooded; a GOAWAY with `code` is queued and the connection
    must close. `limit` names the FrameLimits field a flood exceeded (None: a violation)."""

    def __init__(self, code: int, reason: str, limit: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.limit = limit


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
    """True when the peer reset it; False when this side refused or reset the stream."""
    cause: str = field(default="", compare=False)
    """Ours only: `malformed` (a header block RFC 9113 8.2/8.3 refuses), `refused` (over
    the stream limit), or `stream_error` (flow control, a closed stream...); the
    human-readable reason is in `reason`."""
    reason: str = field(default="", compare=False)


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


# ------------------------------------------------------------ field validation (RFC 9113 8.2, 8.3)

_BAD_NAME = re.compile(rb"[\x00-\x20\x41-\x5a\x7f-\xff:]")
"""8.2.1: no controls, space, uppercase, DEL or non-ASCII; a colon only starts a pseudo-header."""
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
_RESPONSE_PSEUDO = frozenset((b":status",))


def field_problem(
    fields: list[tuple[bytes, bytes]], *, request: bool, trailers: bool = False
) -> str | None:
    """Why a decoded header block is malformed (RFC 9113 8.2, 8.3, 8.5), or None."""
    pseudo: dict[bytes, bytes] = {}
    regular_seen = False
    for name, value in fields:
        if not name:
            return "a field with an empty name"
        if name[0] == 0x3A:
            if trailers:
                return f"pseudo-header {name.decode('latin-1')} in trailers"
            if regular_seen:
                return f"pseudo-header {name.decode('latin-1')} after a regular field"
            if name not in (_REQUEST_PSEUDO if request else _RESPONSE_PSEUDO):
                kind = "request" if request else "response"
                return f"{name.decode('latin-1')!r} is not a {kind} pseudo-header"
            if name in pseudo:
                return f"pseudo-header {name.decode('latin-1')} appears twice"
            pseudo[name] = value
        else:
            regular_seen = True
            if _BAD_NAME.search(name):
                return f"field name {name.decode('latin-1')!r} has uppercase or invalid characters"
            if name in _CONNECTION_SPECIFIC:
                return f"connection-specific field {name.decode()!r}"
            if name == b"te" and value != b"trailers":
                return f"te: {value.decode('latin-1')!r} (only 'trailers' is allowed)"
        if _BAD_VALUE.search(value) or value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
            return f"the value of {name.decode('latin-1')!r} has NUL, CR, LF or edge whitespace"
    if trailers:
        return None
    if not request:
        status = pseudo.get(b":status")
        if status is None or len(status) != 3 or not status.isdigit():
            return "a response without a 3-digit :status"
        return None
    method = pseudo.get(b":method")
    if not method:
        return "a request without :method"
    if method == b"CONNECT":
        if not pseudo.get(b":authority"):
            return "CONNECT without :authority"
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path"
    elif not pseudo.get(b":scheme") or not pseudo.get(b":path"):
        return f"{method.decode('latin-1')} without :scheme and :path"
    return None


# ------------------------------------------------------------------ the connection


@dataclass
class _Stream:
    id: int
    send_window: int
    recv_window: int
    local_closed: bool = False
    remote_closed: bool = False
    headers_seen: bool = False
    answered: bool = False
    """Server: a response was sent. A stream the peer resets before that is thrown away work."""
    unacked: int = 0


@dataclass
class _HeaderBlock:
    stream_id: int
    flags: int
    fragments: list[bytes] = field(default_factory=list)
    size: int = 0
    continuations: int = 0
    self_dependent: bool = False


class _Budget:
    """A token bucket on the caller's clock: `burst` tokens, `rate` more per second."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: int, rate: float) -> None:
        self.burst, self.rate = float(burst), rate
        self.tokens = float(burst)
        self.stamp: float | None = None

    def spend(self, now: float) -> bool:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        if self.stamp is None or now > self.stamp:
            self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


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
        limits: FrameLimits | None = None,
    ) -> None:
        self.client_side = client_side
        self.limits = limits = limits or FrameLimits()
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
        self.preface_received = False
        """The peer's preface (its first SETTINGS) has arrived."""
        self.ping_outstanding: bytes | None = None
        """The payload of our PING that has not been answered yet."""
        self._out = bytearray()
        self._in = b""
        self._preface_left = 0 if client_side else len(PREFACE)
        self._block: _HeaderBlock | None = None
        self._now = 0.0
        self._control = _Budget(limits.control_burst, limits.control_rate)
        self._resets = _Budget(limits.reset_burst, limits.reset_rate)
        self._window_updates = 0
        self._data_frames_sent = 0
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
        stream.answered = True
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
        self._data_frames_sent += 1
        self._out += frame(DATA, END_STREAM if end_stream else 0, stream_id, data)
        if end_stream:
            self._local_end(stream)

    def end_stream(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.local_closed:
            self._data_frames_sent += 1
            self._out += frame(DATA, END_STREAM, stream_id)
            self._local_end(stream)

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._out += frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))

    def refuse(self, stream_id: int) -> None:
        """Server: refuse a stream the peer opened (REFUSED_STREAM: it was not processed, the
        peer may retry it). Refusals count against the reset budget: a peer that keeps opening
        what we cannot take is flooding (H2ProtocolError, as from `receive`)."""
        self.reset(stream_id, REFUSED_STREAM)
        self._spend_reset("streams refused or thrown away")

    def ping(self, payload: bytes = b"slipstrm") -> None:
        """Send a PING; `ping_outstanding` holds its payload until the peer's ACK."""
        self.ping_outstanding = payload
        self._out += frame(PING, 0, 0, payload)

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

    def close(self, code: int = NO_ERROR, debug: str = "") -> None:
        """GOAWAY (once); `debug` tells the peer why, as the RFC's additional debug data."""
        if not self.closed:
            self.closed = True
            payload = struct.pack(">II", self.highest_peer_stream, code) + debug.encode()[:200]
            self._out += frame(GOAWAY, 0, 0, payload)

    def _local_end(self, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream.id]

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Frames in, events out. `now` (seconds, any monotonic clock) refills the flood
        budgets; raises H2ProtocolError and nothing else."""
        events: list[Event] = []
        if self.closed:
            return events
        self._now = now
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
        self._in = buf[pos:] if pos < end and not self.closed else b""
        return events

    def _fail(self, code: int, reason: str, limit: str | None = None) -> NoReturn:
        self.close(code, reason)
        raise H2ProtocolError(code, reason, limit)

    def _flood(self, limit: str, reason: str) -> NoReturn:
        self._fail(ENHANCE_YOUR_CALM, reason, limit)

    def _spend_control(self, what: str) -> None:
        if not self._control.spend(self._now):
            lim = self.limits
            self._flood(
                "control_frames",
                f"more than {lim.control_burst} frames that carry nothing "
                f"(at {lim.control_rate:g}/s), the last {what}",
            )

    def _spend_reset(self, what: str) -> None:
        if not self._resets.spend(self._now):
            lim = self.limits
            self._flood(
                "resets",
                f"more than {lim.reset_burst} {what} (at {lim.reset_rate:g}/s)",
            )

    def _stream_error(
        self, sid: int, code: int, events: list[Event], reason: str, cause: str = "stream_error"
    ) -> None:
        """RST_STREAM for the peer's error on one stream; a thrown-away stream for the budget."""
        self.streams.pop(sid, None)
        self._out += frame(RST_STREAM, 0, sid, struct.pack(">I", code))
        events.append(StreamReset(sid, code, remote=False, cause=cause, reason=reason))
        self._spend_reset("streams refused or thrown away")

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if self._block is not None and (kind != CONTINUATION or sid != self._block.stream_id):
            self._fail(PROTOCOL_ERROR, "a header block was interrupted")
        if not self.preface_received:
            if kind != SETTINGS or flags & ACK:
                self._fail(PROTOCOL_ERROR, "the peer's first frame was not SETTINGS")
            self.preface_received = True
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
            self._spend_control("PING")
            if not flags & ACK:
                self._out += frame(PING, ACK, 0, payload)
            elif payload == self.ping_outstanding:
                self.ping_outstanding = None
        elif kind == RST_STREAM:
            if sid == 0 or len(payload) != 4:
                self._fail(PROTOCOL_ERROR if sid == 0 else FRAME_SIZE_ERROR, "bad RST_STREAM frame")
            self._check_not_idle(sid)
            stream = self.streams.pop(sid, None)
            if stream is None:
                self._spend_control("RST_STREAM on a closed stream")
                return
            events.append(StreamReset(sid, int.from_bytes(payload, "big"), remote=True))
            if not self.client_side and not stream.answered:
                self._spend_reset("streams reset before they were answered")
        elif kind == GOAWAY:
            if sid != 0 or len(payload) < 8:
                self._fail(PROTOCOL_ERROR, "bad GOAWAY frame")
            last, code = struct.unpack(">II", payload[:8])
            self.closed = True
            events.append(ConnectionTerminated(code, last & 0x7FFFFFFF))
        elif kind == PRIORITY:
            if sid == 0 or len(payload) != 5:
                self._fail(PROTOCOL_ERROR if sid == 0 else FRAME_SIZE_ERROR, "bad PRIORITY frame")
            self._spend_control("PRIORITY")
            if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
                self._stream_error(sid, PROTOCOL_ERROR, events, "a stream depends on itself")
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "server push was not allowed")
        else:
            self._spend_control(f"a frame of unknown type {kind}")  # ignored (RFC 9113 5.5)

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
        if not flags & END_STREAM and (n == 0 or (flags & PADDED and n == payload[0] + 1)):
            self._spend_control("an empty DATA frame")  # CVE-2019-9518
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            self._check_not_idle(sid)
            # A stream that just closed: drop the data but keep the connection's window whole.
            self.acknowledge(0, n)
            if stream is not None:
                self._stream_error(sid, STREAM_CLOSED, events, "DATA after END_STREAM")
            return
        if not stream.headers_seen:
            self.acknowledge(0, n)
            self._stream_error(sid, PROTOCOL_ERROR, events, "DATA before the response")
            return
        if n > stream.recv_window:
            self.acknowledge(0, n)
            self._stream_error(sid, FLOW_CONTROL_ERROR, events, "DATA over the stream window")
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
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if len(fragment) < 5:
                self._fail(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            self_dependent = int.from_bytes(fragment[:4], "big") & 0x7FFFFFFF == sid
            fragment = fragment[5:]
        self._block = _HeaderBlock(sid, flags, self_dependent=self_dependent)
        self._add_fragment(fragment, events)

    def _continuation(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        block = self._block
        if block is None:
            self._fail(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        assert block is not None
        block.continuations += 1
        if block.continuations > self.limits.max_continuations:
            self._flood(
                "continuations",
                f"a header block in over {self.limits.max_continuations} CONTINUATION frames",
            )
        block.flags |= flags & END_HEADERS
        self._add_fragment(payload, events)

    def _add_fragment(self, fragment: bytes, events: list[Event]) -> None:
        block = self._block
        assert block is not None
        if not fragment and not block.flags & END_HEADERS:
            self._spend_control("an empty header block fragment")
        block.fragments.append(fragment)
        block.size += len(fragment)
        if block.size > self.local[MAX_HEADER_LIST_SIZE] * 2:
            self._fail(PROTOCOL_ERROR, f"a header block of over {block.size} bytes")
        if block.flags & END_HEADERS:
            self._block = None
            self._header_block(block, events)

    def _header_block(self, block: _HeaderBlock, events: list[Event]) -> None:
        sid = block.stream_id
        # Decoded even when the stream is refused: HPACK's table is shared by the connection.
        try:
            raw = [
                (bytes(k), bytes(v))
                for k, v in self.decoder.decode(b"".join(block.fragments), raw=True)
            ]
        except hpack.exceptions.OversizedHeaderListError:
            self._fail(
                PROTOCOL_ERROR, f"a header list over {self.local[MAX_HEADER_LIST_SIZE]} bytes"
            )
        except hpack.exceptions.HPACKError as exc:
            self._fail(COMPRESSION_ERROR, f"the header block does not decode: {exc}")
        stream = self.streams.get(sid)
        end = bool(block.flags & END_STREAM)
        if stream is None:
            if sid % 2 == (1 if self.client_side else 0):
                # Our own stream id: a response to a stream we reset or closed (a race, not an
                # error, RFC 9113 5.4.2), unless we never opened it.
                self._check_not_idle(sid)
                self._spend_control("HEADERS on a closed stream")
                return
            if self.client_side:
                self._fail(
                    PROTOCOL_ERROR, f"HEADERS on stream {sid}, which this side cannot accept"
                )
            if sid <= self.highest_peer_stream:
                self._spend_control("HEADERS on a closed stream")
                return
            self.highest_peer_stream = sid
            if len(self.streams) >= self.local[MAX_CONCURRENT_STREAMS]:
                self._out += frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM))
                events.append(
                    StreamReset(
                        sid,
                        REFUSED_STREAM,
                        remote=False,
                        cause="refused",
                        reason=f"over {self.local[MAX_CONCURRENT_STREAMS]} concurrent streams",
                    )
                )
                self._spend_reset("streams refused or thrown away")
                return
            headers = self._fields(sid, raw, block, events, request=True)
            if headers is None:
                return
            stream = _Stream(
                sid, self.remote_initial_window, self.local[INITIAL_WINDOW_SIZE], headers_seen=True
            )
            self.streams[sid] = stream
            events.append(RequestReceived(sid, headers))
        elif stream.remote_closed:
            self._stream_error(sid, STREAM_CLOSED, events, "HEADERS after END_STREAM")
            return
        elif not stream.headers_seen:
            headers = self._fields(sid, raw, block, events, request=False)
            if headers is None:
                return
            stream.headers_seen = True
            events.append(ResponseReceived(sid, headers))
        else:
            if not end:
                self._stream_error(
                    sid, PROTOCOL_ERROR, events, "trailers that do not end the stream"
                )
                return
            if (
                self._fields(sid, raw, block, events, request=not self.client_side, trailers=True)
                is None
            ):
                return
        if end:
            self._remote_end(stream, events)

    def _fields(
        self,
        sid: int,
        raw: list[tuple[bytes, bytes]],
        block: _HeaderBlock,
        events: list[Event],
        *,
        request: bool,
        trailers: bool = False,
    ) -> list[tuple[str, str]] | None:
        """The block's fields as text, or None after a stream error for a malformed block."""
        problem = field_problem(raw, request=request, trailers=trailers)
        if problem is None and block.self_dependent:
            problem = "a stream depends on itself"
        if problem is None:
            try:
                return [(k.decode("ascii"), v.decode("utf-8")) for k, v in raw]
            except UnicodeDecodeError:
                problem = "a field value that is not UTF-8"  # all of HBONE's fields are ASCII
        self._stream_error(sid, PROTOCOL_ERROR, events, problem, cause="malformed")
        return None

    def _settings(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid != 0:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        self._spend_control("SETTINGS")
        if flags & ACK:
            if payload:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
        if len(payload) // 6 > self.limits.max_settings_entries:
            self._flood(
                "settings_entries",
                f"a SETTINGS frame with {len(payload) // 6} entries "
                f"(at most {self.limits.max_settings_entries})",
            )
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
                size = min(value, DEFAULT_TABLE)
                if size != self.encoder.header_table_size:
                    self.encoder.header_table_size = size
            elif key == ENABLE_PUSH and (value > 1 or (self.client_side and value == 1)):
                self._fail(
                    PROTOCOL_ERROR,
                    f"ENABLE_PUSH {value} from the {'server' if self.client_side else 'client'}",
                )
        self._out += frame(SETTINGS, ACK, 0)
        if grew:
            events.append(WindowUpdated(0))

    def _window_update(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        self._window_updates += 1
        lim = self.limits
        allowed = (
            lim.window_update_allowance + lim.window_updates_per_data_frame * self._data_frames_sent
        )
        if self._window_updates > allowed:
            self._flood(
                "window_updates",
                f"{self._window_updates} WINDOW_UPDATE frames for {self._data_frames_sent} "
                "DATA frames sent",
            )
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
            self._stream_error(sid, PROTOCOL_ERROR, events, "WINDOW_UPDATE of 0 on a stream")
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR, events, "a stream window grew over 2^31-1")
            return
        events.append(WindowUpdated(sid))
