"""Outside attacks on what one client can make a gateway worker hold in memory.

Each attack runs against the real gateway (one worker) and measures the worker's resident
memory from /proc before and after: whatever a fix does (pause the reading, cap or refuse
keys), one connection must not pin hundreds of MiB. Every test then checks that an unrelated
request on the same worker is still served.

- A WebSocket tunnel is a raw byte pipe with no flow control: a client that does not read the
  echoes of what it sends (the echo upstream), or an upstream that does not read what the
  client sends (a stalled app), makes the worker buffer everything in memory.
- A paused upstream connection (its client stopped reading) can go back to the pool paused:
  the next request on it, anyone's, times out (504).
- `rate-limit` with `by: header` keeps one key per distinct header value, with the value in
  it, for two windows: unique 30 KiB values pin 30 KiB each, with nothing bounding how many.

What holds (issue 11's limits, not covered elsewhere): a 70 MiB line that never ends (header
value or name, target, trailer, chunk extension) is cut off while it arrives; pipelined 9 MiB
bodies stop being read; answers a client does not read stop further requests; an endless
answer to a client that reads nothing pauses the upstream.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from .gwkit import Client, GatewayProc, Recorder, start_echo, stop

MiB = 1 << 20
PUSH = 256 * MiB
"""What the attacker tries to make the worker hold."""
BOUND = 96 * MiB
"""Growth of the worker's memory that counts as 'held': well above what buffers, allocator
slack and the requests themselves account for (a few MiB), well below PUSH."""
STALL = 5.0
"""A send that makes no progress for this long: the gateway stopped reading (flow control)."""

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def worker_pid(gw: GatewayProc) -> int:
    assert gw.proc is not None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == gw.proc.pid:
            return int(stat.parent.name)
    raise AssertionError("the gateway has no worker process")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def binary_frame(payload: bytes) -> bytes:
    """A client's WebSocket binary frame (RFC 6455 §5.2), masked with a zero key."""
    return b"\x82\xff" + struct.pack("!Q", len(payload)) + b"\0\0\0\0" + payload


def push(sock: socket.socket, total: int, chunk: bytes) -> int:
    """Send up to `total` bytes; stop at the first send that stalls. Returns what went out."""
    sock.settimeout(STALL)
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except (TimeoutError, OSError):
        pass
    return sent


def served(gw: GatewayProc, path: bytes = b"/fine") -> bool:
    with Client(gw.port) as c:
        a = c.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").answer()
    return a is not None and a.status == 200


@pytest.fixture
def gw(tmp_path):
    g = GatewayProc(tmp_path)
    yield g
    g.stop()


def with_fine_route(config: dict, upstream: str) -> dict:
    """`/fine` on its own backend: an unrelated request that shares only the worker."""
    config["backends"].append({"name": "other", "endpoints": [upstream]})
    config["routes"].insert(
        0,
        {
            "name": "fine",
            "matches": [{"path": {"type": "PathPrefix", "value": "/fine"}}],
            "backendRefs": [{"name": "other"}],
        },
    )
    return config


def one_route(upstream: str, **route) -> dict:
    return {
        "workers": 1,
        "accessLog": {"format": "off"},
        "backends": [{"name": "up", "endpoints": [upstream]}],
        "routes": [{"name": "r", "backendRefs": [{"name": "up"}], **route}],
    }


# ------------------------------------------------------------------ WebSocket tunnels


def test_a_client_that_never_reads_its_websocket_echoes_cannot_fill_the_worker(gw, tmp_path):
    echo = start_echo(tmp_path, "ws")  # aiohttp's WebSocket echo: every frame comes back
    try:
        gw.start(one_route(echo.url))
        pid = worker_pid(gw)
        before = rss(pid)
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(HANDSHAKE)
            assert s.recv(4096).startswith(b"HTTP/1.1 101 ")
            # Frames go in, echoes come back to a client that never reads them.
            sent = push(s, PUSH, binary_frame(b"e" * MiB))
            held = rss(pid) - before
            assert held < BOUND, (
                f"the worker holds {held // MiB} MiB more after the client sent {sent // MiB} "
                "MiB it never read back"
            )
        assert served(gw)
    finally:
        stop(echo.proc)


def test_an_upstream_that_stops_reading_its_websocket_cannot_make_the_worker_buffer(gw):
    stalled = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def app() -> None:  # switches to WebSocket, then never reads again (a stuck app)
        conn, _ = stalled.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            )
            release.wait(60)

    threading.Thread(target=app, daemon=True).start()
    other = Recorder()
    try:
        config = one_route(f"http://127.0.0.1:{stalled.getsockname()[1]}")
        gw.start(with_fine_route(config, other.url))
        pid = worker_pid(gw)
        before = rss(pid)
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(HANDSHAKE)
            assert s.recv(4096).startswith(b"HTTP/1.1 101 ")
            sent = push(s, PUSH, binary_frame(b"u" * MiB))
            held = rss(pid) - before
            assert held < BOUND, (
                f"the worker holds {held // MiB} MiB more after the client pushed {sent // MiB} "
                "MiB into a tunnel whose upstream reads nothing"
            )
            assert served(gw)
    finally:
        release.set()
        stalled.close()
        other.close()


# ------------------------------------------------------------------ rate-limit keys


def test_unique_header_values_cannot_grow_a_rate_limits_memory_without_bound(gw):
    rec = Recorder()
    try:
        limit = {"limit": 5, "window": "1h", "by": "header", "header": "x-tenant"}
        gw.start(one_route(rec.url, plugins=[{"name": "rate-limit", "config": limit}]))
        pid = worker_pid(gw)
        before = rss(pid)
        value = b"t" * (30 * 1024)  # (the listener's header budget is 32 KiB)
        count = 6000  # 6000 x 30 KiB: 176 MiB if every key is kept whole
        with Client(gw.port) as c:
            for i in range(count):
                c.send(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Tenant: %d-%s\r\n\r\n" % (i, value))
                a = c.answer()
                assert a is not None and a.status in (200, 429), a
        held = rss(pid) - before
        assert held < BOUND, (
            f"{count} distinct X-Tenant values left the worker holding {held // MiB} MiB more"
        )
        assert served(gw)
    finally:
        rec.close()


def test_leaving_out_the_limited_header_does_not_escape_the_limit(gw):
    """`by: header` with the header absent counted nothing: unlimited (Kong falls back to the
    client IP; refusing would do too). Fail closed: at most `limit` requests pass."""
    rec = Recorder()
    try:
        limit = {"limit": 3, "window": "1h", "by": "header", "header": "x-tenant"}
        gw.start(one_route(rec.url, plugins=[{"name": "rate-limit", "config": limit}]))
        statuses = []
        with Client(gw.port) as c:
            for _ in range(10):
                statuses.append(c.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").answer().status)
        with Client(gw.port) as c:  # the same client with the header is limited, as it should be
            tenant = [
                c.send(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Tenant: a\r\n\r\n").answer().status
                for _ in range(5)
            ]
        assert tenant == [200, 200, 200, 429, 429]
        assert statuses.count(200) <= 3, f"without the header: {statuses}"
    finally:
        rec.close()


# ------------------------------------------------------------------ heads, bodies, answers


@pytest.mark.parametrize(
    ("what", "opening"),
    [
        ("header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: "),
        ("header name", b"GET / HTTP/1.1\r\nHost: x\r\nX-"),
        ("request target", b"GET /"),
        ("trailer", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: "),
        (
            "chunk extension",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;x=",
        ),
    ],
)
def test_an_unterminated_70_mib_line_is_cut_off_while_it_arrives(gw, what, opening) -> None:
    rec = Recorder()
    try:
        gw.start(one_route(rec.url))
        pid = worker_pid(gw)
        before = rss(pid)
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(opening)
            sent = push(s, 70 * MiB, b"a" * (64 * 1024))
        held = rss(pid) - before
        assert sent < 70 * MiB, f"the gateway read a 70 MiB {what} without ending it"
        assert held < BOUND, f"an unterminated {what} left the worker {held // MiB} MiB larger"
        assert rec.heads() == []
        assert served(gw)
    finally:
        rec.close()


def test_pipelined_large_bodies_are_not_all_buffered(gw) -> None:
    rec = Recorder()
    try:
        gw.start(one_route(rec.url))  # maxBody 10 MiB: each body is accepted
        pid = worker_pid(gw)
        before = rss(pid)
        body = b"b" * (9 * MiB)
        request = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            sent = push(s, PUSH, request)  # never reads an answer
            held = rss(pid) - before
        assert held < BOUND, (
            f"{sent // MiB} MiB of pipelined bodies left the worker {held // MiB} MiB larger"
        )
        assert served(gw)
    finally:
        rec.close()


def test_answers_a_client_does_not_read_are_not_piled_up(gw) -> None:
    big = 4 * MiB
    rec = Recorder(answer=b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % big + b"r" * big)
    other = Recorder()
    try:
        gw.start(with_fine_route(one_route(rec.url), other.url))
        pid = worker_pid(gw)
        before = rss(pid)
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            # 64 GETs for 4 MiB each (256 MiB of answers), never read.
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 64)
            # The attack succeeding is the positive marker: all 64 forwarded (a broken gateway
            # gets there in well under a second). Held, a few are, then the connection stalls.
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and len(rec.heads()) < 64:
                time.sleep(0.1)
            held = rss(pid) - before
        assert len(rec.heads()) < 64, "every request was forwarded while no answer was read"
        assert held < BOUND, f"answers nobody read left the worker {held // MiB} MiB larger"
        assert served(gw)
    finally:
        rec.close()
        other.close()


def test_an_endless_response_to_a_client_that_does_not_read_pauses_the_upstream(gw) -> None:
    streamer = socket.create_server(("127.0.0.1", 0))
    pushed = [0]
    done = threading.Event()

    def app() -> None:  # answers with a chunked body that never ends
        conn, _ = streamer.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % MiB + b"s" * MiB + b"\r\n"
            pushed[0] = push(conn, PUSH, chunk)
        done.set()

    threading.Thread(target=app, daemon=True).start()
    other = Recorder()
    try:
        config = one_route(f"http://127.0.0.1:{streamer.getsockname()[1]}")
        gw.start(with_fine_route(config, other.url))
        pid = worker_pid(gw)
        before = rss(pid)
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            assert done.wait(60), "the upstream neither finished nor stalled"
            held = rss(pid) - before
            assert served(gw)
        assert pushed[0] < PUSH, (
            "the gateway read the whole endless answer for a client that reads nothing"
        )
        assert held < BOUND, f"the worker is {held // MiB} MiB larger"
    finally:
        streamer.close()
        other.close()


def test_a_client_that_stops_reading_leaves_no_stalled_upstream_connection_for_others(gw):
    """A client that stops reading pauses the upstream connection its answer comes from
    (backpressure). When the answer's last bytes arrive in the read that pauses it, the
    connection went back to the pool still paused, and the exchange's resume hook was
    dropped with it: the next request that takes it from the pool (anyone's) is written,
    answered by the upstream, and never read: 504 after the backend timeout.

    Whether the end of the answer falls into that read depends on socket buffers, so the
    attack is repeated; a gateway that never pools a paused connection passes every time."""
    big = 4 * MiB
    rec = Recorder(answer=b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % big + b"r" * big)
    try:
        config = one_route(rec.url)
        config["routes"][0]["timeouts"] = {"backendRequest": "2s"}
        gw.start(config)
        for attempt in range(12):
            with socket.create_connection(("127.0.0.1", gw.port)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 64)  # never read
                time.sleep(1)  # (lets the worker fill the client's buffers)
                with Client(gw.port) as c:  # someone else, on the same route
                    a = c.send(b"HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n").answer(head_request=True)
                assert a is not None and a.status == 200, (
                    f"attempt {attempt}: an unrelated client got "
                    f"{a.status if a else 'nothing'} after another stopped reading"
                )
    finally:
        rec.close()
