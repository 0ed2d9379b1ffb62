"""The engine's server connection, driven byte by byte through a transport of our own.

What one connection may hold and when it stops reading are properties of the
protocol code, not of the machine: here they are checked exactly (how many
bytes reached the parser, when reading paused, what was written in which
order), with no sockets and no clocks.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.http.message import Headers, Request, Response
from gateway.http.server import FRAMING_ALLOWANCE, Exchange, Limits, ServerConnection


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.out += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):  # type: ignore[no-untyped-def]
        return ("127.0.0.1", 5555) if name == "peername" else default


class Recorder:
    """A handler that answers each request with its path, or waits for `release`."""

    def __init__(self, hold: bool = False) -> None:
        self.seen: list[Request] = []
        self.hold = hold
        self.release: asyncio.Event = asyncio.Event()

    async def __call__(self, req: Request, ex: Exchange) -> None:
        self.seen.append(req)
        if self.hold:
            await self.release.wait()
        ex.respond(Response(200, Headers(), req.path.encode()))


def connect(handler, **limits) -> tuple[ServerConnection, Transport]:
    conn = ServerConnection(handler, Limits(**limits))
    t = Transport()
    conn.connection_made(t)
    return conn, t


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_an_unterminated_header_is_cut_off_at_its_budget() -> None:
    h = Recorder()
    conn, t = connect(h, max_header_bytes=4096)
    fed = 0
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk = b"a" * 65536
    while not t.closed and fed < 70 << 20:
        conn.data_received(chunk)
        fed += len(chunk)
    assert t.closed and t.out.startswith(b"HTTP/1.1 431 ")
    assert fed <= 65536  # refused within the first chunk past the budget, not after 70 MiB
    assert h.seen == []


async def test_queued_requests_stop_the_reading_at_max_body_bytes() -> None:
    h = Recorder(hold=True)
    conn, t = connect(h, max_body=1 << 20)
    body = b"x" * (1 << 20)
    post = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    conn.data_received(post)  # being served (held)
    await settle()
    assert len(h.seen) == 1 and t.reading
    conn.data_received(post)  # queued: a body's worth of bytes
    assert not t.reading
    h.release.set()
    await settle()
    assert len(h.seen) == 2 and t.reading  # drained: reading again


async def test_no_request_starts_while_the_client_does_not_read_its_answers() -> None:
    h = Recorder()
    conn, t = connect(h)
    conn.pause_writing()  # the transport's buffer is over its high-water mark
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 40)
    await settle()
    assert h.seen == [] and not t.reading  # nothing started; the queue stopped the reading
    conn.resume_writing()
    await settle()
    assert [r.path for r in h.seen][:3] == ["/a", "/a", "/a"]


async def test_trailers_are_counted_and_never_join_the_head() -> None:
    h = Recorder()
    conn, _ = connect(h)
    conn.data_received(
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nHost: evil\r\napikey: k\r\nAuthorization: Bearer x\r\n\r\n"
    )
    await settle()
    (req,) = h.seen
    assert req.body == b"abc"
    assert req.headers.get_all(b"host") == [b"x"]
    assert b"apikey" not in req.headers and b"authorization" not in req.headers


async def test_chunk_framing_out_of_proportion_to_data_is_refused() -> None:
    h = Recorder()
    conn, t = connect(h)
    conn.data_received(b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    ext = b"1;" + b"e" * 4000 + b"\r\nz\r\n"
    sent = 0
    while not t.closed and sent < 10 * FRAMING_ALLOWANCE:
        conn.data_received(ext)
        sent += len(ext)
    assert t.closed and t.out.startswith(b"HTTP/1.1 400 ")
    assert sent < 2 * FRAMING_ALLOWANCE
    assert h.seen == []


async def test_100_continue_is_held_while_an_earlier_answer_is_owed() -> None:
    h = Recorder(hold=True)
    conn, t = connect(h)
    conn.data_received(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    conn.data_received(
        b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert t.out == b""  # not now: /first is being answered
    h.release.set()
    await settle()
    first_end = bytes(t.out).index(b"/first") + len(b"/first")
    assert bytes(t.out)[first_end:] == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(b"ok")
    await settle()
    assert bytes(t.out).endswith(b"/second")


async def test_no_100_continue_once_the_body_came_anyway() -> None:
    h = Recorder(hold=True)
    conn, t = connect(h)
    conn.data_received(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    conn.data_received(
        b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok"
    )
    h.release.set()
    await settle()
    assert b"100 Continue" not in t.out and bytes(t.out).endswith(b"/second")


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
async def test_a_refused_request_is_answered_after_the_answers_owed_before_it(version) -> None:
    h = Recorder(hold=True)
    conn, t = connect(h)
    conn.data_received(
        b"GET /one HTTP/" + version + b"\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /%zz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await settle()
    assert t.out == b""  # the 400 waits
    h.release.set()
    await settle()
    out = bytes(t.out)
    assert out.index(b"/one") < out.index(b"/two") < out.index(b" 400 ")
    assert t.closed


async def test_nothing_after_a_closing_request_is_read_or_answered() -> None:
    h = Recorder(hold=True)
    conn, t = connect(h)
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    conn.data_received(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not t.reading
    h.release.set()
    await settle()
    conn.data_received(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")  # (a read already under way)
    await settle()
    assert [r.path for r in h.seen] == ["/a", "/b"] and t.closed
