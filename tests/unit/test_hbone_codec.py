"""The HBONE HTTP/2 codec as transcripts: bytes in, events out. The h2 library plays the
other side in the interop tests, as an implementation we did not write."""

from __future__ import annotations

import os
import struct

import h2.config
import h2.connection
import h2.events
import pytest

from agent.hbone import codec
from agent.hbone.codec import (
    DataReceived,
    H2Codec,
    H2ProtocolError,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
    frame,
)

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.2:8080")]


def make(client: bool, **kw) -> H2Codec:
    settings = dict(
        stream_window=1 << 20,
        connection_window=4 << 20,
        max_frame_size=1 << 16,
        max_concurrent_streams=10,
        max_header_list_size=4096,
    )
    settings.update(kw)
    c = H2Codec(client, **settings)
    c.initiate()
    return c


def pair(**kw) -> tuple[H2Codec, H2Codec]:
    client, server = make(True, **kw), make(False, **kw)
    exchange(client, server)
    return client, server


def exchange(a: H2Codec, b: H2Codec) -> tuple[list, list]:
    """Deliver queued bytes both ways until quiet; returns the events each side saw."""
    seen_a, seen_b = [], []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return seen_a, seen_b
        if to_b:
            seen_b += b.receive(to_b)
        if to_a:
            seen_a += a.receive(to_a)


def test_a_tunnel_opens_carries_bytes_both_ways_and_closes():
    client, server = pair()
    sid = client.open_stream(CONNECT)
    _, events = exchange(client, server)
    assert events == [RequestReceived(sid, CONNECT)]
    server.respond(sid, [(":status", "200")])
    events, _ = exchange(client, server)
    assert events == [ResponseReceived(sid, [(":status", "200")])]
    client.send_data(sid, b"ping")
    _, events = exchange(client, server)
    assert events == [DataReceived(sid, b"ping", 4)]
    server.send_data(sid, b"pong", end_stream=True)
    events, _ = exchange(client, server)
    assert events == [DataReceived(sid, b"pong", 4), StreamEnded(sid)]
    client.end_stream(sid)
    _, events = exchange(client, server)
    assert events == [StreamEnded(sid)]
    assert client.streams == {} and server.streams == {}


def test_flow_control_holds_the_sender_until_the_receiver_consumes():
    client, server = pair(stream_window=1 << 16, connection_window=1 << 20)
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    server.respond(sid, [(":status", "200")])
    exchange(client, server)
    assert client.send_window(sid) == 1 << 16
    client.send_data(sid, b"x" * (1 << 16))
    assert client.send_window(sid) == 0
    with pytest.raises(codec.TunnelError, match="do not fit"):
        client.send_data(sid, b"y")
    _, events = exchange(client, server)
    assert [type(e) for e in events] == [DataReceived]
    server.acknowledge(sid, 1 << 16)  # consumed: half a window or more goes back
    events, _ = exchange(client, server)
    assert WindowUpdated(sid) in events and client.send_window(sid) == 1 << 16


def test_a_sender_that_ignores_the_window_is_refused():
    client, server = pair(stream_window=1000, connection_window=1 << 20)
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    events = server.receive(frame(codec.DATA, 0, sid, b"z" * 1001))
    assert events == [StreamReset(sid, codec.FLOW_CONTROL_ERROR, remote=False)]


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        (frame(codec.DATA, 0, 0, b"x"), codec.PROTOCOL_ERROR, "DATA on stream 0"),
        (frame(codec.DATA, 0, 7, b"x"), codec.PROTOCOL_ERROR, "idle stream"),
        (frame(codec.HEADERS, codec.END_HEADERS, 2, b""), codec.PROTOCOL_ERROR, "cannot accept"),
        (
            frame(codec.CONTINUATION, codec.END_HEADERS, 1, b""),
            codec.PROTOCOL_ERROR,
            "without HEADERS",
        ),
        (
            frame(codec.SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01"),
            codec.PROTOCOL_ERROR,
            "MAX_FRAME_SIZE",
        ),
        (
            frame(codec.SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"),
            codec.FLOW_CONTROL_ERROR,
            "INITIAL_WINDOW",
        ),
        (frame(codec.SETTINGS, 0, 0, b"\x00"), codec.FRAME_SIZE_ERROR, "multiple of 6"),
        (
            frame(codec.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"),
            codec.PROTOCOL_ERROR,
            "WINDOW_UPDATE of 0",
        ),
        (
            frame(codec.WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"),
            codec.FLOW_CONTROL_ERROR,
            r"over 2\^31-1",
        ),
        (frame(codec.PING, 0, 0, b"short"), codec.FRAME_SIZE_ERROR, "bad PING"),
        (frame(codec.PUSH_PROMISE, 0, 1, b"\x00\x00\x00\x02"), codec.PROTOCOL_ERROR, "push"),
        (
            frame(codec.HEADERS, codec.END_HEADERS, 1, b"\xff\xff\xff\xff"),
            codec.COMPRESSION_ERROR,
            "decode",
        ),
        (
            struct.pack(">I", (1 << 17) << 8)[:3] + b"\x00\x00\x00\x00\x00\x01",
            codec.FRAME_SIZE_ERROR,
            "over the limit",
        ),
    ],
    ids=[
        "data-0",
        "data-idle",
        "even-headers",
        "lone-continuation",
        "max-frame",
        "window-setting",
        "settings-size",
        "zero-window-update",
        "window-overflow",
        "ping-size",
        "push",
        "hpack",
        "oversized-frame",
    ],
)
def test_protocol_violations_are_connection_errors_with_a_goaway(raw, code, reason):
    _, server = pair()
    with pytest.raises(H2ProtocolError, match=reason) as exc:
        server.receive(raw)
    assert exc.value.code == code
    out = server.data_to_send()
    assert out[3] == codec.GOAWAY and struct.unpack(">I", out[13:17])[0] == code
    assert server.receive(frame(codec.PING, 0, 0, b"12345678")) == [], (
        "a closed codec ignores input"
    )


def test_a_bad_preface_is_refused():
    server = make(False)
    with pytest.raises(H2ProtocolError, match="preface"):
        server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_the_preface_may_arrive_in_pieces():
    client, server = make(True), make(False)
    data = client.data_to_send()
    events = []
    for i in range(0, len(data), 5):
        events += server.receive(data[i : i + 5])
    assert set(map(type, events)) == {WindowUpdated}, "only window grants (connection and SETTINGS)"
    exchange(client, server)


def test_a_header_block_interrupted_by_another_frame_is_refused():
    client, server = pair()
    client.open_stream(CONNECT)
    raw = client.data_to_send()
    headers = frame(codec.HEADERS, 0, 1, raw[9:])  # same block, END_HEADERS cleared
    with pytest.raises(H2ProtocolError, match="interrupted"):
        server.receive(headers + frame(codec.PING, 0, 0, b"12345678"))


def test_large_header_blocks_travel_in_continuations():
    client, server = pair(max_header_list_size=1 << 20, max_frame_size=16384)
    big = [*CONNECT, *((f"x-{i}", os.urandom(100).hex()) for i in range(200))]
    sid = client.open_stream(big)
    raw = client.data_to_send()
    assert raw.count(bytes([codec.CONTINUATION])) >= 1
    assert server.receive(raw) == [RequestReceived(sid, big)]


def test_an_oversized_header_list_is_refused():
    client, server = pair(max_header_list_size=1024)
    client.open_stream([*CONNECT, ("x-pad", "v" * 2000)])
    with pytest.raises(H2ProtocolError, match="header"):
        exchange(client, server)


def test_ping_is_answered_with_its_payload():
    _, server = pair()
    server.receive(frame(codec.PING, 0, 0, b"abcdefgh"))
    assert server.data_to_send() == frame(codec.PING, codec.ACK, 0, b"abcdefgh")


def test_streams_over_the_limit_are_refused_one_by_one():
    client, server = pair(max_concurrent_streams=2)
    sids = [client.open_stream(CONNECT) for _ in range(3)]
    client_events, server_events = exchange(client, server)
    assert [e.stream_id for e in server_events if isinstance(e, RequestReceived)] == sids[:2]
    assert StreamReset(sids[2], codec.REFUSED_STREAM, remote=True) in client_events


def test_padding_counts_against_the_window_but_not_the_data():
    client, server = pair()
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    events = server.receive(frame(codec.DATA, codec.PADDED, sid, b"\x03abc\x00\x00\x00"))
    assert events == [DataReceived(sid, b"abc", 7)]


def test_data_after_the_peer_ended_the_stream_resets_it():
    client, server = pair()
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    client.send_data(sid, b"last", end_stream=True)
    exchange(client, server)
    events = server.receive(frame(codec.DATA, 0, sid, b"late"))
    assert events == [StreamReset(sid, codec.STREAM_CLOSED, remote=False)]


def test_a_larger_initial_window_grows_open_streams():
    client, server = make(True), make(False, stream_window=1 << 20)
    sid = client.open_stream(CONNECT)
    assert client.send_window(sid) == codec.DEFAULT_WINDOW
    exchange(client, server)  # the server's SETTINGS arrive
    assert client.send_window(sid) == min(1 << 20, client.send_conn_window)


# ---------------------------------------------------------------- interop with h2


def h2_side(client: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client, header_encoding="utf-8")
    )
    conn.initiate_connection()
    return conn


def test_an_h2_client_talks_to_our_server():
    theirs, ours = h2_side(True), make(False)
    events = ours.receive(theirs.data_to_send())
    theirs.receive_data(ours.data_to_send())
    theirs.send_headers(1, CONNECT)
    theirs.send_data(1, b"hello")
    events = ours.receive(theirs.data_to_send())
    assert events == [RequestReceived(1, CONNECT), DataReceived(1, b"hello", 5)]
    ours.respond(1, [(":status", "200")])
    ours.send_data(1, b"world", end_stream=True)
    got = theirs.receive_data(ours.data_to_send())
    kinds = [type(e) for e in got]
    assert h2.events.ResponseReceived in kinds and h2.events.StreamEnded in kinds
    assert b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived)) == b"world"


def test_our_client_talks_to_an_h2_server():
    ours, theirs = make(True), h2_side(False)
    theirs.receive_data(ours.data_to_send())
    ours.receive(theirs.data_to_send())
    sid = ours.open_stream(CONNECT)
    payload = b"x" * 60000  # within h2's default window of 65535, in frames of its size
    step = ours.max_outbound_frame_size
    for i in range(0, len(payload), step):
        ours.send_data(sid, payload[i : i + step])
    got = theirs.receive_data(ours.data_to_send())
    request = next(e for e in got if isinstance(e, h2.events.RequestReceived))
    assert dict(request.headers)[":authority"] == "10.0.0.2:8080"
    received = sum(e.flow_controlled_length for e in got if isinstance(e, h2.events.DataReceived))
    assert received == 60000
    theirs.acknowledge_received_data(received, sid)
    theirs.send_headers(sid, [(":status", "200")], end_stream=True)
    events = ours.receive(theirs.data_to_send())
    assert ResponseReceived(sid, [(":status", "200")]) in events and StreamEnded(sid) in events
