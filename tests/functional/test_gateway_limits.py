"""What one client connection can cost a gateway worker, measured on the real process.

Each attack runs against a one-worker gateway while an unrelated client keeps
asking for a page; the test checks that client was served during the attack,
that the attacker was cut off (answer, close, reset), and that the worker's
resident memory stayed within a bound far below what the attack would have
made it hold. (The exact byte counts are checked in tests/unit/test_gateway_server.py.)
"""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from .gwkit import Client, GatewayProc, Recorder, children, rss_kib, start_echo, stop

MiB = 1 << 20


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    e = start_echo(tmp_path_factory.mktemp("gw-limits"), "a")
    yield e
    stop(e.proc)


def start(gw: GatewayProc, upstream: str, limits: dict | None = None, **extra) -> int:
    listener = {"name": "web", "address": f"127.0.0.1:{gw.port}", "limits": limits or {}}
    gw.start(
        {
            "workers": 1,
            "listeners": [listener],
            "backends": [{"name": "up", "endpoints": [upstream]}],
            "routes": [{"name": "all", "backendRefs": [{"name": "up"}], **extra}],
        }
    )
    (worker,) = children(gw.proc.pid)
    return worker


@pytest.fixture
def gw(tmp_path):
    g = GatewayProc(tmp_path)
    yield g
    g.stop()


class Bystander:
    """An unrelated client asking for a page in a loop; counts its successes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with Client(self.port, timeout=10) as c:
                    a = c.send(b"GET /bystander HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                    answer = a.answer()
                if answer is not None and answer.status == 200:
                    self.ok += 1
                else:
                    self.errors.append(repr(answer))
            except OSError as exc:
                self.errors.append(repr(exc))

    def served_since(self, before: int, timeout: float = 20) -> bool:
        """Wait until the bystander was served again after `before` successes."""
        deadline = time.monotonic() + timeout
        while self.ok <= before + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.ok > before + 2

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def push(sock: socket.socket, data: bytes, limit: int, stall: float = 2.0) -> int:
    """Send `data` repeatedly until `limit` bytes, the peer closes, or no byte can be sent for
    `stall` seconds (the peer stopped reading). Returns the bytes sent."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(data)
    offset = 0
    while sent < limit:
        _, writable, _ = select.select([], [sock], [], stall)
        if not writable:
            break
        try:
            n = sock.send(view[offset:])
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += n
        offset = (offset + n) % len(data)
    return sent


def test_an_unterminated_header_line_is_cut_off_at_its_limit(gw, echo) -> None:
    start(gw, echo.url, {"maxHeaderBytes": "32KiB"})
    by = Bystander(gw.port)
    try:
        before = by.ok
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = push(s, b"a" * 65536, 70 * MiB)
        assert sent < 16 * MiB, f"the gateway read {sent} bytes of one header line"
        assert by.served_since(before)
        assert any(r["status"] == 431 for r in gw.refusals()), "no 431 logged"
    finally:
        by.stop()
    assert not by.errors, by.errors[:3]


def test_pipelined_large_bodies_do_not_pile_up_in_the_worker(gw, echo) -> None:
    worker = start(gw, echo.url, {"maxBody": "8MiB", "idleTimeout": "60s"})
    by = Bystander(gw.port)
    try:
        idle = rss_kib(worker)
        body = b"x" * (8 * MiB)
        post = b"POST /slow HTTP/1.1\r\nHost: x\r\nx-echo-delay: 5\r\nContent-Length: %d\r\n\r\n"
        request = post % len(body) + body
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            before = by.ok
            sent = push(s, request, 24 * len(request))  # 192 MiB offered
            assert by.served_since(before)
            grown = (rss_kib(worker) - idle) // 1024
        # queued: at most a body's worth, plus the one being read and the one being served
        assert sent < 80 * MiB, f"the worker took {sent // MiB} MiB from one connection"
        assert grown < 96, f"the worker grew by {grown} MiB"
    finally:
        by.stop()
    assert not by.errors, by.errors[:3]


def test_answers_a_client_does_not_read_do_not_pile_up_in_the_worker(gw, tmp_path) -> None:
    big = b"y" * (256 * 1024)
    rec = Recorder(
        answer=b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: %d\r\n\r\n"
        % len(big)
        + big
    )
    try:
        worker = start(gw, rec.url, plugins=[{"name": "cache", "config": {"maxBody": "1MiB"}}])
        by = Bystander(gw.port)
        try:
            with Client(gw.port) as warm:  # fill the cache: every later answer is a HIT
                assert warm.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").answer().status == 200
            idle = rss_kib(worker)
            with socket.create_connection(("127.0.0.1", gw.port)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                before = by.ok
                push(s, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 2000, 60_000 * 3)
                assert by.served_since(before)
                grown = (rss_kib(worker) - idle) // 1024
            # 2000 answers of 256 KiB would be 500 MiB in the worker's write buffer
            assert grown < 64, f"the worker grew by {grown} MiB"
        finally:
            by.stop()
        assert not by.errors, by.errors[:3]
    finally:
        rec.close()


def test_chunk_extensions_cannot_stand_in_for_a_body(gw, echo) -> None:
    start(gw, echo.url)
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = push(s, b"1;" + b"e" * 60000 + b"\r\nz\r\n", 64 * MiB)
    assert sent < 16 * MiB
    assert any(r["status"] == 400 for r in gw.refusals())
