"""Fuzz target: the gateway's HTTP/1.1 front end (server connection, head rules, normalization).

Bytes from the fuzzer are cut into chunks and fed to a ServerConnection over a
transport of our own, whose handler answers every request. It must hold that:
no exception leaves the connection; what it wrote parses as whole HTTP/1.1
responses, in order, at most one per request plus one refusal; every request
the handler saw has a normalized path and Host (a fixed point of uri.py) and no
hop-by-hop or repeated credential field; and nothing it buffers exceeds its
limits. The first bytes also drive uri.py directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import atheris

from tests.fuzz.harness import interpreted, main

interpreted("gateway")

with atheris.instrument_imports():
    import httptools

    from gateway.http.errors import HttpError
    from gateway.http.head import HeadRules
    from gateway.http.message import HOP_BY_HOP, Headers, Response
    from gateway.http.server import Limits, ServerConnection
    from gateway.http.uri import PathRules, normalize_authority, normalize_path

LIMITS = Limits(max_uri=512, max_header_bytes=2048, max_headers=20, max_body=4096)
RULES = [
    HeadRules(),
    HeadRules(PathRules(merge_slashes=False, escaped_slashes="keep"), "allow"),
    HeadRules(PathRules(escaped_slashes="decode"), "reject"),
]
SEEDS = [
    b"\x00\x10GET /a/../b?x=1 HTTP/1.1\r\nHost: Example.Test.:80\r\n\r\n",
    b"\x01\x08POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n"
    b"0\r\napikey: k\r\n\r\nGET /%61dmin HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x02\x04GET http://x/a%2fb HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, x-a\r\n"
    b"Upgrade: h2c\r\nx-a: 1\r\n\r\nPRI * HTTP/2.0\r\n\r\n",
    b"\x00\x30POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
]


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.out += data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):  # type: ignore[no-untyped-def]
        return ("127.0.0.1", 1) if name == "peername" else default


class Responses:
    """Counts the final responses in what the connection wrote (llhttp reads them)."""

    def __init__(self) -> None:
        self.final = 0
        self.status = 0

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.final += 1

    def count(self, data: bytes) -> int:
        self.parser = httptools.HttpResponseParser(self)
        with contextlib.suppress(httptools.HttpParserUpgrade):
            self.parser.feed_data(data)
        return self.final


def check_request(req) -> None:  # type: ignore[no-untyped-def]
    rules = PathRules(merge_slashes=False, escaped_slashes="keep")
    if req.path != "*":
        again = normalize_path(req.path.encode("latin-1"), rules)
        assert again == req.path, (req.path, again)
        assert ".." not in req.path.split("/") and "." not in req.path.split("/")
    if req.authority:
        assert normalize_authority(req.authority, req.scheme) == req.authority
    names = [n for n, _ in req.headers.items]
    assert not HOP_BY_HOP & set(names), names
    for once in (b"host", b"authorization", b"proxy-authorization"):
        assert names.count(once) <= 1, names
    assert len(req.body) <= LIMITS.max_body


LOOP = asyncio.new_event_loop()


async def serve(chunks: list[bytes], rules: HeadRules) -> None:
    handled = []

    async def handler(req, ex) -> None:  # type: ignore[no-untyped-def]
        check_request(req)
        handled.append(req)
        # (no body for HEAD: then every answer can be read back without knowing its request)
        ex.respond(Response(200, Headers(), b"" if req.method == "HEAD" else b"ok"))

    conn = ServerConnection(handler, LIMITS, rules=rules)
    t = Transport()
    conn.connection_made(t)
    for chunk in chunks:
        conn.data_received(chunk)
        assert len(conn._body) <= LIMITS.max_body
        assert conn._pending_bytes <= 2 * LIMITS.max_body
        for _ in range(3):
            await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)
    conn.connection_lost(None)
    out = bytes(t.out).replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    finals = Responses().count(out)
    assert finals <= len(handled) + 1, (finals, len(handled), out[:300])


def fuzz_one(data: bytes) -> None:
    if len(data) < 2:
        return
    rules = RULES[data[0] % len(RULES)]
    size = max(1, data[1])
    body = data[2:]
    try:  # the normalizers alone: any input, a documented refusal or a fixed point
        path = normalize_path(b"/" + body[:64], rules.paths)
        assert normalize_path(path.encode(), rules.paths) == path
    except HttpError as exc:
        assert exc.status == 400
    try:
        host = normalize_authority(body[:32], "http")
        assert normalize_authority(host, "http") == host
    except HttpError as exc:
        assert exc.status == 400
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    LOOP.run_until_complete(serve(chunks, rules))


if __name__ == "__main__":
    sys.setrecursionlimit(5000)
    main(fuzz_one, SEEDS)
