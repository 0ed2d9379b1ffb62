"""Fuzz the HBONE HTTP/2 codec (agent/hbone/codec.py), server side and client side.

Each input drives one codec past a valid handshake, then feeds it either arbitrary bytes
or a sequence of frames built from the input (any type, flags and stream id, header
blocks HPACK-encoded from fields the input chooses), in chunks, with the clock moving,
interleaved with what the endpoint does in return (answer a request, send data within
the window, acknowledge, reset, refuse, ping). Small limits, so the floods trigger.

Invariants: `receive` returns events or raises H2ProtocolError, nothing else, and a
closed codec stays closed; what it keeps stays bounded (one partial frame, one header
block, the stream limit), and what it queues to send stays proportional to what came in.

    FUZZ=h2codec make fuzz          (or: python -m tests.fuzz h2codec --seconds 600)
"""

from __future__ import annotations

import struct

import atheris
import hpack

from agent.hbone import codec
from agent.hbone.codec import H2Codec, H2ProtocolError, frame
from agent.hbone.limits import FrameLimits
from agent.hbone.protocol import TunnelError
from tests.fuzz import harness

MAX_FRAME = 1 << 14
MAX_STREAMS = 4
MAX_HEADER_LIST = 1024
LIMITS = FrameLimits(
    max_continuations=3,
    max_settings_entries=4,
    control_burst=20,
    control_rate=5.0,
    reset_burst=10,
    reset_rate=2.0,
    window_update_allowance=10,
    window_updates_per_data_frame=2,
)
EVENTS = (
    codec.RequestReceived,
    codec.ResponseReceived,
    codec.DataReceived,
    codec.StreamEnded,
    codec.StreamReset,
    codec.WindowUpdated,
    codec.ConnectionTerminated,
)
NAMES = [
    b":method", b":authority", b":path", b":scheme", b":status", b":protocol", b"forwarded",
    b"traceparent", b"te", b"connection", b"Upper", b"", b"x y", b"x:y", b"\xff",
]  # fmt: skip
VALUES = [b"CONNECT", b"GET", b"127.0.0.1:80", b"200", b"/", b"trailers", b" x", b"a\nb", b"\xff"]


def make(client: bool) -> H2Codec:
    return H2Codec(
        client,
        stream_window=1 << 16,
        connection_window=1 << 17,
        max_frame_size=MAX_FRAME,
        max_concurrent_streams=MAX_STREAMS,
        max_header_list_size=MAX_HEADER_LIST,
        limits=LIMITS,
    )


def handshake(client: bool) -> H2Codec:
    """A codec past the peer's preface and SETTINGS."""
    c = make(client)
    c.initiate()
    c.data_to_send()
    peer_settings = frame(codec.SETTINGS, 0, 0, struct.pack(">HI", codec.MAX_FRAME_SIZE, 16384))
    c.receive(peer_settings if client else codec.PREFACE + peer_settings, 0.0)
    if client:
        c.open_stream([(":method", "CONNECT"), (":authority", "10.0.0.2:80")])
    c.data_to_send()
    return c


def header_block(
    fdp: atheris.FuzzedDataProvider, encoder: hpack.Encoder, base: list[tuple[bytes, bytes]]
) -> bytes:
    """`base` (a valid request or response) with some fields changed or added."""
    fields = list(base)
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        name = fdp.PickValueInList(NAMES) if fdp.ConsumeBool() else fdp.ConsumeBytes(6)
        value = fdp.PickValueInList(VALUES) if fdp.ConsumeBool() else fdp.ConsumeBytes(8)
        at = fdp.ConsumeIntInRange(0, len(fields))
        if fdp.ConsumeBool() and at < len(fields):
            fields[at] = (name, value)
        else:
            fields.insert(at, (name, value))
    return encoder.encode(fields)


class Peer:
    """The other side, as the fuzz input has it behave: mostly well-formed frames on streams
    that exist (so the codec gets deep into its states), sometimes anything at all."""

    REQUEST = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")]
    RESPONSE = [(b":status", b"200")]

    def __init__(self, c: H2Codec) -> None:
        self.c = c
        self.encoder = hpack.Encoder()
        self.next_sid = 1

    def stream(self, fdp: atheris.FuzzedDataProvider) -> int:
        known = sorted(self.c.streams) or [1]
        return fdp.PickValueInList([*known, self.next_sid, 0, fdp.ConsumeIntInRange(0, 99)])

    def headers(self, fdp: atheris.FuzzedDataProvider) -> bytes:
        if self.c.client_side:
            sid, base = self.stream(fdp), self.RESPONSE
        else:
            sid, base = self.next_sid, self.REQUEST
            self.next_sid += 2
        flags = codec.END_HEADERS | (codec.END_STREAM if fdp.ConsumeBool() else 0)
        block = header_block(fdp, self.encoder, base)
        if fdp.ConsumeIntInRange(0, 3) == 0:  # split into CONTINUATION frames
            cut = fdp.ConsumeIntInRange(0, len(block))
            out = frame(codec.HEADERS, flags & ~codec.END_HEADERS, sid, block[:cut])
            for _ in range(fdp.ConsumeIntInRange(0, 4)):
                out += frame(codec.CONTINUATION, 0, sid, b"")
            return out + frame(codec.CONTINUATION, codec.END_HEADERS, sid, block[cut:])
        return frame(codec.HEADERS, flags, sid, block)

    def next_frame(self, fdp: atheris.FuzzedDataProvider) -> bytes:
        shape = fdp.ConsumeIntInRange(0, 9)
        if shape == 0:
            kind, flags = fdp.ConsumeIntInRange(0, 11), fdp.ConsumeIntInRange(0, 255)
            sid = self.stream(fdp)
            return frame(kind, flags, sid, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))
        if shape == 1:
            return self.headers(fdp)
        if shape == 2:
            flags = fdp.PickValueInList([0, codec.END_STREAM, codec.PADDED])
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            if flags & codec.PADDED:
                payload = bytes([min(len(payload), 255)]) + payload + b"\0" * len(payload)
            return frame(codec.DATA, flags, self.stream(fdp), payload)
        if shape == 3:
            code = struct.pack(">I", fdp.ConsumeIntInRange(0, 13))
            return frame(codec.RST_STREAM, 0, self.stream(fdp), code)
        if shape == 4:
            increment = fdp.PickValueInList([0, 1, 1 << 16, 2**31 - 1])
            sid = 0 if fdp.ConsumeBool() else self.stream(fdp)
            return frame(codec.WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))
        if shape == 5:
            flags = codec.ACK if fdp.ConsumeBool() else 0
            return frame(codec.PING, flags, 0, fdp.ConsumeBytes(8).ljust(8, b"p"))
        if shape == 6:
            entries = b"".join(
                struct.pack(">HI", fdp.ConsumeIntInRange(0, 8), fdp.ConsumeIntInRange(0, 2**32 - 1))
                for _ in range(fdp.ConsumeIntInRange(0, 6))
            )
            return frame(
                codec.SETTINGS, codec.ACK if not entries and fdp.ConsumeBool() else 0, 0, entries
            )
        if shape == 7:
            dep = struct.pack(">IB", self.stream(fdp), fdp.ConsumeIntInRange(0, 255))
            return frame(codec.PRIORITY, 0, self.stream(fdp), dep)
        if shape == 8:
            return frame(codec.GOAWAY, 0, 0, struct.pack(">II", self.next_sid, 0))
        return frame(fdp.ConsumeIntInRange(10, 255), 0, self.stream(fdp), fdp.ConsumeBytes(8))


def endpoint_acts(fdp: atheris.FuzzedDataProvider, c: H2Codec, events: list) -> None:
    """What an endpoint may do after events: each call as the endpoint makes it."""
    for event in events:
        sid = 0 if isinstance(event, codec.ConnectionTerminated) else event.stream_id
        choice = fdp.ConsumeIntInRange(0, 7)
        if isinstance(event, codec.RequestReceived):
            if choice == 0:
                c.refuse(sid)  # may raise H2ProtocolError: the reset budget
            elif choice < 4:
                c.respond(
                    sid, [(":status", "200" if choice < 3 else "400")], end_stream=choice == 3
                )
        elif isinstance(event, codec.DataReceived):
            c.acknowledge(sid, event.flow_controlled_length)
        if c.client_side and choice == 4 and c.can_open(MAX_STREAMS):
            c.open_stream([(":method", "CONNECT"), (":authority", "10.0.0.2:80")])
        if choice == 5 and sid in c.streams:
            window = min(c.send_window(sid), c.max_outbound_frame_size, 100)
            if window > 0:
                c.send_data(sid, b"d" * window, end_stream=fdp.ConsumeBool())
        elif choice == 6:
            c.reset(sid)
        elif choice == 7:
            c.ping()


def check_bounded(c: H2Codec, fed: int, sent: int) -> None:
    assert len(c._in) <= MAX_FRAME + 9, len(c._in)
    if c._block is not None:
        assert c._block.size <= 2 * MAX_HEADER_LIST, c._block.size
        assert len(c._block.fragments) <= LIMITS.max_continuations + 1
    peer_streams = [s for s in c.streams if (s % 2 == 1) != c.client_side]
    assert len(peer_streams) <= MAX_STREAMS, len(peer_streams)
    assert sent <= 4 * fed + 4096, (sent, fed)


def fuzz_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    client = fdp.ConsumeBool()
    c = handshake(client)
    peer = Peer(c)
    raw_mode = fdp.ConsumeIntInRange(0, 3) == 0
    now, fed, sent = 0.0, 0, 0
    while fdp.remaining_bytes():
        if raw_mode:
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 512))
        else:
            chunk = b"".join(peer.next_frame(fdp) for _ in range(fdp.ConsumeIntInRange(1, 4)))
        now += fdp.ConsumeIntInRange(0, 3000) / 1000
        fed += len(chunk)
        try:
            events = c.receive(chunk, now)
            assert all(isinstance(e, EVENTS) for e in events), events
            endpoint_acts(fdp, c, events)
        except H2ProtocolError:
            assert c.closed, "a connection error leaves the codec closed"
            sent += len(c.data_to_send())
            assert c.receive(chunk, now) == [], "a closed codec ignores what comes"
            check_bounded(c, fed, sent)
            return
        except TunnelError as exc:  # send_data is the only other raiser: never past its window
            raise AssertionError(f"the endpoint's own call failed: {exc}") from exc
        sent += len(c.data_to_send())
        check_bounded(c, fed, sent)


SEEDS = [
    b"\x00\x00" + frame(codec.PING, 0, 0, b"12345678"),
    b"\x01\x00" + frame(codec.HEADERS, 4, 1, b""),
    b"\x00\x01" + b"\x01" * 64,
    b"\x01\x01" + b"\x04\x00\x07" * 40,
]

if __name__ == "__main__":
    harness.main(fuzz_one, SEEDS)
