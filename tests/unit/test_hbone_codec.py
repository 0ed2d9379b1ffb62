"""The HBONE HTTP/2 codec as transcripts: bytes in, events out. The h2 library plays the
other side in the interop tests, as an implementation we did not write."""

from __future__ import annotations

import os
import struct

import h2.config
import h2.connection
import h2.events
import hpack
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
from agent.hbone.limits import FrameLimits

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


def feed(c: H2Codec, data: bytes, now: float = 0.0) -> list:
    return c.receive(data, now)


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
            seen_b += feed(b, to_b)
        if to_a:
            seen_a += feed(a, to_a)


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
    events = feed(server, frame(codec.DATA, 0, sid, b"z" * 1001))
    assert events == [StreamReset(sid, codec.FLOW_CONTROL_ERROR, remote=False)]


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        (frame(codec.DATA, 0, 0, b"x"), codec.PROTOCOL_ERROR, "DATA on stream 0"),
        (frame(codec.DATA, 0, 7, b"x"), codec.PROTOCOL_ERROR, "idle stream"),
        (frame(codec.HEADERS, codec.END_HEADERS, 2, b""), codec.PROTOCOL_ERROR, "idle stream 2"),
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
        feed(server, raw)
    assert exc.value.code == code
    out = server.data_to_send()
    assert out[3] == codec.GOAWAY and struct.unpack(">I", out[13:17])[0] == code
    assert feed(server, frame(codec.PING, 0, 0, b"12345678")) == [], "a closed codec ignores input"


def test_a_bad_preface_is_refused():
    server = make(False)
    with pytest.raises(H2ProtocolError, match="preface"):
        feed(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_the_preface_may_arrive_in_pieces():
    client, server = make(True), make(False)
    data = client.data_to_send()
    events = []
    for i in range(0, len(data), 5):
        events += feed(server, data[i : i + 5])
    assert set(map(type, events)) == {WindowUpdated}, "only window grants (connection and SETTINGS)"
    exchange(client, server)


def test_a_header_block_interrupted_by_another_frame_is_refused():
    client, server = pair()
    client.open_stream(CONNECT)
    raw = client.data_to_send()
    headers = frame(codec.HEADERS, 0, 1, raw[9:])  # same block, END_HEADERS cleared
    with pytest.raises(H2ProtocolError, match="interrupted"):
        feed(server, headers + frame(codec.PING, 0, 0, b"12345678"))


def test_large_header_blocks_travel_in_continuations():
    client, server = pair(max_header_list_size=1 << 20, max_frame_size=16384)
    big = [*CONNECT, *((f"x-{i}", os.urandom(100).hex()) for i in range(200))]
    sid = client.open_stream(big)
    raw = client.data_to_send()
    assert raw.count(bytes([codec.CONTINUATION])) >= 1
    assert feed(server, raw) == [RequestReceived(sid, big)]


def test_an_oversized_header_list_is_refused():
    client, server = pair(max_header_list_size=1024)
    client.open_stream([*CONNECT, ("x-pad", "v" * 2000)])
    with pytest.raises(H2ProtocolError, match="header"):
        exchange(client, server)


def test_ping_is_answered_with_its_payload():
    _, server = pair()
    feed(server, frame(codec.PING, 0, 0, b"abcdefgh"))
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
    events = feed(server, frame(codec.DATA, codec.PADDED, sid, b"\x03abc\x00\x00\x00"))
    assert events == [DataReceived(sid, b"abc", 7)]


def test_data_after_the_peer_ended_the_stream_resets_it():
    client, server = pair()
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    client.send_data(sid, b"last", end_stream=True)
    exchange(client, server)
    events = feed(server, frame(codec.DATA, 0, sid, b"late"))
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
    events = feed(ours, theirs.data_to_send())
    theirs.receive_data(ours.data_to_send())
    theirs.send_headers(1, CONNECT)
    theirs.send_data(1, b"hello")
    events = feed(ours, theirs.data_to_send())
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
    feed(ours, theirs.data_to_send())
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
    events = feed(ours, theirs.data_to_send())
    assert ResponseReceived(sid, [(":status", "200")]) in events and StreamEnded(sid) in events


# ---------------------------------------------------------------- malformed header blocks
# RFC 9113 8.2 and 8.3: a malformed request or response is a stream error PROTOCOL_ERROR.
# The stream is reset and never surfaces; the connection serves on.


def block(fields: list[tuple[bytes, bytes]], encoder: hpack.Encoder | None = None) -> bytes:
    """A header block exactly as given: hpack's encoder neither lowercases nor validates."""
    return (encoder or hpack.Encoder()).encode(fields)


C = (b":method", b"CONNECT")
A = (b":authority", b"10.0.0.2:8080")

MALFORMED_REQUESTS = {
    "uppercase-name": [C, A, (b"Forwarded", b'for="1.2.3.4:5"')],
    "pseudo-after-regular": [C, (b"traceparent", b"x"), A],
    "unknown-pseudo": [C, A, (b":protocol", b"websocket")],
    "response-pseudo": [C, A, (b":status", b"200")],
    "duplicate-pseudo": [C, A, A],
    "missing-method": [A],
    "connect-without-authority": [C],
    "connect-with-path": [C, A, (b":path", b"/")],
    "connect-with-scheme": [C, A, (b":scheme", b"https")],
    "get-without-path": [(b":method", b"GET"), (b":scheme", b"https"), A],
    "connection": [C, A, (b"connection", b"close")],
    "keep-alive": [C, A, (b"keep-alive", b"timeout=5")],
    "proxy-connection": [C, A, (b"proxy-connection", b"keep-alive")],
    "transfer-encoding": [C, A, (b"transfer-encoding", b"chunked")],
    "upgrade": [C, A, (b"upgrade", b"h2c")],
    "te-gzip": [C, A, (b"te", b"gzip")],
    "empty-name": [C, A, (b"", b"")],
    "space-in-name": [C, A, (b"x y", b"1")],
    "control-in-name": [C, A, (b"x\x01", b"1")],
    "non-ascii-name": [C, A, (b"x\xc3\xa9", b"1")],
    "colon-in-name": [C, A, (b"x:y", b"1")],
    "nul-in-value": [C, A, (b"x", b"a\x00b")],
    "cr-in-value": [C, A, (b"x", b"a\rb")],
    "lf-in-value": [C, A, (b"x", b"a\nb")],
    "leading-space": [C, A, (b"x", b" a")],
    "trailing-tab": [C, A, (b"x", b"a\t")],
    "not-utf8": [C, A, (b"x", b"\xff")],
}


@pytest.mark.parametrize("fields", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_a_malformed_request_is_reset_and_the_connection_serves_on(fields):
    client, server = pair()
    events = feed(server, frame(codec.HEADERS, codec.END_HEADERS, 1, block(fields)))
    assert events == [StreamReset(1, codec.PROTOCOL_ERROR, remote=False)]
    assert events[0].cause == "malformed" and events[0].reason
    assert server.data_to_send() == frame(codec.RST_STREAM, 0, 1, struct.pack(">I", 1))
    assert server.streams == {}, "the stream never opened"
    client.next_stream_id = 3
    sid = client.open_stream(CONNECT)
    assert feed(server, client.data_to_send()) == [RequestReceived(sid, CONNECT)]


def test_well_formed_fields_pass():
    _, server = pair()
    fields = [C, A, (b"te", b"trailers"), (b"x-empty", b""), (b"x-inner", b"a b\tc")]
    events = feed(server, frame(codec.HEADERS, codec.END_HEADERS, 1, block(fields)))
    assert events == [RequestReceived(1, [(k.decode(), v.decode()) for k, v in fields])]


def test_a_stream_that_depends_on_itself_is_reset():
    _, server = pair()
    priority = struct.pack(">IB", 1, 15)
    raw = frame(codec.HEADERS, codec.END_HEADERS | codec.PRIORITY_FLAG, 1, priority + block([C, A]))
    assert feed(server, raw) == [StreamReset(1, codec.PROTOCOL_ERROR, remote=False)]


MALFORMED_RESPONSES = {
    "no-status": [(b"x", b"1")],
    "long-status": [(b":status", b"2000")],
    "text-status": [(b":status", b"OK!")],
    "two-statuses": [(b":status", b"200"), (b":status", b"200")],
    "request-pseudo": [(b":status", b"200"), (b":path", b"/")],
    "uppercase": [(b":status", b"200"), (b"Server", b"x")],
    "connection": [(b":status", b"200"), (b"connection", b"close")],
}


@pytest.mark.parametrize("fields", MALFORMED_RESPONSES.values(), ids=MALFORMED_RESPONSES.keys())
def test_a_malformed_response_resets_the_stream(fields):
    client, server = pair()
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    events = feed(
        client, frame(codec.HEADERS, codec.END_HEADERS, sid, block(fields, server.encoder))
    )
    assert events == [StreamReset(sid, codec.PROTOCOL_ERROR, remote=False)]
    assert events[0].cause == "malformed"
    assert client.streams == {}


def test_pseudo_headers_in_trailers_reset_the_stream():
    client, server = pair()
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    trailers = block([(b":authority", b"x")], client.encoder)
    events = feed(server, frame(codec.HEADERS, codec.END_HEADERS | codec.END_STREAM, sid, trailers))
    assert events == [StreamReset(sid, codec.PROTOCOL_ERROR, remote=False)]


def test_data_before_the_response_resets_the_stream():
    client, server = pair()
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    events = feed(client, frame(codec.DATA, 0, sid, b"early"))
    assert events == [StreamReset(sid, codec.PROTOCOL_ERROR, remote=False)]
    given_back = client.recv_conn_window + client._conn_unacked
    assert given_back == client.connection_window, "its bytes go back to the window"


def test_a_response_to_a_stream_we_reset_is_ignored():
    """RFC 9113 5.4.2: frames in flight on a stream we reset are not an error."""
    client, server = pair()
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    server.respond(sid, [(":status", "200")])
    client.reset(sid)
    assert feed(client, server.data_to_send()) == []
    assert not client.closed
    sid2 = client.open_stream(CONNECT)
    _, events = exchange(client, server)
    assert RequestReceived(sid2, CONNECT) in events


# ---------------------------------------------------------------- the connection's own rules


def test_the_first_frame_must_be_settings():
    client, server = make(True), make(False)
    client.data_to_send()
    with pytest.raises(H2ProtocolError, match="first frame was not SETTINGS"):
        feed(server, codec.PREFACE + frame(codec.PING, 0, 0, b"12345678"))


def test_a_server_may_not_enable_push():
    client = make(True)
    with pytest.raises(H2ProtocolError, match="ENABLE_PUSH 1"):
        feed(client, frame(codec.SETTINGS, 0, 0, struct.pack(">HI", codec.ENABLE_PUSH, 1)))


def test_the_encoder_table_stays_small_whatever_the_peer_allows():
    """Each stream's Forwarded value is new: in a table the peer made huge it would pile up."""
    client = make(True)
    feed(
        client, frame(codec.SETTINGS, 0, 0, struct.pack(">HI", codec.HEADER_TABLE_SIZE, 2**32 - 1))
    )
    for port in range(1000):
        client.open_stream([*CONNECT, ("forwarded", f'for="10.0.0.1:{port}"')])
    table = client.encoder.header_table
    assert table.maxsize <= codec.DEFAULT_TABLE
    assert sum(32 + len(k) + len(v) for k, v in table.dynamic_entries) <= codec.DEFAULT_TABLE
    client.data_to_send()


def test_a_goaway_says_why():
    _, server = pair()
    with pytest.raises(H2ProtocolError):
        feed(server, frame(codec.DATA, 0, 0, b"x"))
    out = server.data_to_send()
    assert out[3] == codec.GOAWAY and out[17:] == b"DATA on stream 0"


def test_our_ping_is_outstanding_until_its_ack():
    client, server = pair()
    client.ping(b"abcdefgh")
    assert client.ping_outstanding == b"abcdefgh"
    feed(client, frame(codec.PING, codec.ACK, 0, b"otherone"))
    assert client.ping_outstanding == b"abcdefgh", "only its own ACK answers it"
    exchange(client, server)
    assert client.ping_outstanding is None


def test_at_most_one_partial_frame_is_buffered():
    def header(length: int) -> bytes:
        return struct.pack(">I", length << 8)[:3] + bytes([codec.DATA, 0]) + struct.pack(">I", 1)

    _, server = pair(max_frame_size=1 << 16)
    feed(server, header(1 << 16) + b"x" * 60000)
    assert len(server._in) <= (1 << 16) + 9
    _, server = pair(max_frame_size=1 << 16)
    with pytest.raises(H2ProtocolError, match="over the limit"):
        feed(server, header((1 << 16) + 1))


# ---------------------------------------------------------------- floods (limits.FrameLimits)
# Each is a connection error ENHANCE_YOUR_CALM naming the limit, with a GOAWAY; up to the
# limit the same frames are served, and a budget refills with the time the caller passes.


def frames_of(out: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each frame in `out`."""
    found, pos = [], 0
    while pos < len(out):
        length = int.from_bytes(out[pos : pos + 3], "big")
        kind, flags = out[pos + 3], out[pos + 4]
        sid = int.from_bytes(out[pos + 5 : pos + 9], "big")
        found.append((kind, flags, sid, out[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return found


def goaway_code(c: H2Codec) -> int:
    goaways = [p for kind, _, _, p in frames_of(c.data_to_send()) if kind == codec.GOAWAY]
    assert goaways, "a GOAWAY was queued"
    return struct.unpack(">I", goaways[-1][4:8])[0]


def flooded(c: H2Codec, raw: bytes, limit: str, now: float = 0.0) -> None:
    with pytest.raises(H2ProtocolError) as exc:
        feed(c, raw, now)
    assert (exc.value.code, exc.value.limit) == (codec.ENHANCE_YOUR_CALM, limit), exc.value
    assert goaway_code(c) == codec.ENHANCE_YOUR_CALM
    assert c.closed and feed(c, raw) == []


SMALL = FrameLimits(control_burst=50, control_rate=10, reset_burst=20, reset_rate=5)


def test_a_ping_flood_gets_goaway_after_the_burst_and_the_budget_refills():  # CVE-2019-9512
    _, server = pair(limits=SMALL)
    ping = frame(codec.PING, 0, 0, b"12345678")
    server.receive(ping * 48, 0.0)  # the handshake's SETTINGS and its ACK took two tokens
    assert server.data_to_send() == frame(codec.PING, codec.ACK, 0, b"12345678") * 48
    server.receive(ping * 10, 1.0)  # 10 tokens a second
    assert len(server.data_to_send()) == 17 * 10
    flooded(server, ping, "control_frames", now=1.0)


@pytest.mark.parametrize(
    "raw",
    [
        frame(codec.SETTINGS, 0, 0),  # CVE-2019-9515
        frame(codec.SETTINGS, codec.ACK, 0),
        frame(codec.PING, codec.ACK, 0, b"unasked!"),
        frame(codec.PRIORITY, 0, 3, struct.pack(">IB", 5, 1)),  # 9513
        frame(0x42, 0, 0, b"unknown"),
        frame(codec.RST_STREAM, 0, 1, struct.pack(">I", 8)),  # on a closed stream
        frame(codec.DATA, 0, 1, b""),  # 9518, on an open stream
        frame(codec.DATA, codec.PADDED, 1, b"\x02\x00\x00"),  # padding only
    ],
    ids=["settings", "settings-ack", "ping-ack", "priority", "unknown", "rst-closed",
         "empty-data", "padding-only-data"],
)  # fmt: skip
def test_frames_that_carry_nothing_are_a_flood_past_the_burst(raw):
    client, server = pair(limits=SMALL)
    client.open_stream(CONNECT)
    exchange(client, server)
    if raw[3] == codec.RST_STREAM:
        client.next_stream_id = 5
        feed(server, frame(codec.HEADERS, codec.END_HEADERS | codec.END_STREAM, 3, block([C, A])))
        feed(server, frame(codec.RST_STREAM, 0, 3, struct.pack(">I", 8)))
        raw = frame(codec.RST_STREAM, 0, 3, struct.pack(">I", 8))
    for _ in range(40):
        feed(server, raw)
    with pytest.raises(H2ProtocolError) as exc:
        for _ in range(20):
            feed(server, raw)
    assert (exc.value.code, exc.value.limit) == (codec.ENHANCE_YOUR_CALM, "control_frames")
    assert goaway_code(server) == codec.ENHANCE_YOUR_CALM


def test_a_settings_frame_with_too_many_entries_is_a_flood():  # CVE-2020-11080
    _, server = pair()
    entries = struct.pack(">HI", codec.MAX_CONCURRENT_STREAMS, 100)
    feed(server, frame(codec.SETTINGS, 0, 0, entries * 32))
    flooded(server, frame(codec.SETTINGS, 0, 0, entries * 33), "settings_entries")


def test_endless_empty_continuations_are_a_flood():  # CVE-2024-27316 and friends
    _, server = pair()
    start = frame(codec.HEADERS, 0, 1, block([C, A])[:3])
    feed(server, start + frame(codec.CONTINUATION, 0, 1) * 8)
    assert server._block is not None and len(server._block.fragments) == 9
    flooded(server, frame(codec.CONTINUATION, 0, 1), "continuations")


def test_a_header_block_in_eight_continuations_is_served():
    _, server = pair()
    raw = block([C, A])
    parts = [raw[:2], *(raw[2 + i : 3 + i] for i in range(7)), raw[9:]]
    wire = frame(codec.HEADERS, 0, 1, parts[0])
    wire += b"".join(frame(codec.CONTINUATION, 0, 1, p) for p in parts[1:-1])
    wire += frame(codec.CONTINUATION, codec.END_HEADERS, 1, parts[-1])
    assert feed(server, wire) == [RequestReceived(1, CONNECT)]


def rapid_reset(sid: int) -> bytes:
    return frame(codec.HEADERS, codec.END_HEADERS, sid, block([C, A])) + frame(
        codec.RST_STREAM, 0, sid, struct.pack(">I", codec.CANCEL)
    )


def test_rapid_reset_is_a_flood_past_the_burst():  # CVE-2023-44487
    _, server = pair(limits=SMALL)
    events = feed(server, b"".join(rapid_reset(1 + 2 * i) for i in range(20)))
    assert [type(e) for e in events] == [RequestReceived, StreamReset] * 20
    assert server.streams == {}
    server.receive(rapid_reset(41), 0.2)  # 5 a second: one more token
    flooded(server, rapid_reset(43), "resets", now=0.2)


def test_resets_of_answered_streams_are_normal_traffic():
    """Apps close connections with RST: a tunnel reset after its 200 is not thrown-away work."""
    client, server = pair(limits=SMALL)
    for _ in range(100):
        sid = client.open_stream(CONNECT)
        feed(server, client.data_to_send())
        server.respond(sid, [(":status", "200")])
        feed(client, server.data_to_send())
        client.reset(sid)
        assert feed(server, client.data_to_send()) == [StreamReset(sid, codec.CANCEL, remote=True)]
    assert not server.closed


def test_streams_we_reset_for_the_peers_errors_count_too():  # MadeYouReset, CVE-2025-8671
    client, server = pair(limits=SMALL)
    zero = struct.pack(">I", 0)
    for i in range(21):
        sid = client.open_stream(CONNECT)
        wire = client.data_to_send() + frame(codec.WINDOW_UPDATE, 0, sid, zero)
        if i < 20:
            events = feed(server, wire)
            assert events[-1] == StreamReset(sid, codec.PROTOCOL_ERROR, remote=False)
        else:
            flooded(server, wire, "resets")


def test_streams_refused_over_the_limit_count_too():
    client, server = pair(max_concurrent_streams=1, limits=SMALL)
    client.open_stream(CONNECT)
    exchange(client, server)
    wire = b"".join(
        frame(codec.HEADERS, codec.END_HEADERS, 3 + 2 * i, block([C, A], client.encoder))
        for i in range(20)
    )
    events = feed(server, wire)
    assert all(e.cause == "refused" for e in events) and len(events) == 20
    flooded(
        server, frame(codec.HEADERS, codec.END_HEADERS, 43, block([C, A], client.encoder)), "resets"
    )


def test_refusing_a_stream_spends_the_reset_budget():
    client, server = pair(limits=SMALL)
    for _ in range(20):
        sid = client.open_stream(CONNECT)
        (event,) = feed(server, client.data_to_send())
        server.refuse(event.stream_id)
    sent = frames_of(server.data_to_send())
    assert [p for kind, _, _, p in sent] == [struct.pack(">I", codec.REFUSED_STREAM)] * 20
    sid = client.open_stream(CONNECT)
    feed(server, client.data_to_send())
    with pytest.raises(H2ProtocolError) as exc:
        server.refuse(sid)
    assert exc.value.limit == "resets" and goaway_code(server) == codec.ENHANCE_YOUR_CALM


def test_window_updates_beyond_what_we_sent_are_a_flood():
    client, server = pair()
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    server.respond(sid, [(":status", "200")])
    exchange(client, server)
    one = frame(codec.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))
    used = server._window_updates  # the handshake's connection window grant
    feed(server, one * (100 - used))
    server.send_data(sid, b"x")  # one DATA frame sent: ten more allowed
    feed(server, one * 10)
    flooded(server, one, "window_updates")


def test_a_bulk_transfer_with_small_windows_is_no_flood():
    """A peer that credits every frame we send stays far inside the window-update ratio."""
    client, server = pair(stream_window=1 << 16, connection_window=1 << 16, max_frame_size=1 << 14)
    sid = client.open_stream(CONNECT)
    exchange(client, server)
    server.respond(sid, [(":status", "200")])
    exchange(client, server)
    sent = 0
    for _ in range(500):
        n = min(server.send_window(sid), server.max_outbound_frame_size)
        server.send_data(sid, b"y" * n)
        sent += n
        for e in feed(client, server.data_to_send()):
            if isinstance(e, DataReceived):
                client.acknowledge(sid, e.flow_controlled_length)
        feed(server, client.data_to_send())
    assert sent >= 500 * 8192 and not server.closed
