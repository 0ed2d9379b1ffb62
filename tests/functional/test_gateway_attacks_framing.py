"""Outside attacks on request framing (Kettle, "HTTP Desync Attacks" 2019; llhttp/Node.js
CVE-2022-32213/32214/32215, CVE-2023-30589, CVE-2024-27982, CVE-2025-23167; RFC 9112
corner cases): what the upstream receives is exactly what the gateway routed.

Each vector hides a second request (`/smuggled-N`) where one reading of the bytes sees a body
and another sees a request. Whatever the gateway decides (refuse, or read it one way), the
raw recording upstream must receive exactly the requests the gateway answered for, each
framed by a Content-Length the gateway set: never a request the gateway did not route, never
a body that an HTTP/1.1 parser could read as another request's start. The gateway must also
close or answer cleanly, and keep serving others.
"""

from __future__ import annotations

import pytest

from .gwkit import Client, GatewayProc, Recorder, raw_exchange

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def post(*fields: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    head = (
        b"POST /front HTTP/" + version + b"\r\nHost: x\r\n" + b"".join(f + b"\r\n" for f in fields)
    )
    return head + b"\r\n" + body


def chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"


CL = b"Content-Length: %d"
VECTORS = {
    "CL.TE": post(CL % 40, b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "TE.CL": post(b"Transfer-Encoding: chunked", CL % 4, body=chunked(SMUGGLED)),
    "TE twice": post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity",
                     body=chunked(SMUGGLED)),
    "TE list identity,chunked": post(b"Transfer-Encoding: identity, chunked",
                                     body=chunked(SMUGGLED)),
    "TE list chunked,identity": post(b"Transfer-Encoding: chunked, identity", CL % 5,
                                     body=b"0\r\n\r\n" + SMUGGLED),
    "TE xchunked": post(b"Transfer-Encoding: xchunked", CL % 5, body=b"0\r\n\r\n" + SMUGGLED),
    "TE leading tab": post(b"Transfer-Encoding:\tchunked", body=chunked(SMUGGLED)),
    "TE vertical tab": post(b"Transfer-Encoding: \x0bchunked", CL % 5,
                            body=b"0\r\n\r\n" + SMUGGLED),
    "TE trailing junk": post(b"Transfer-Encoding: chunked;q=1", CL % 5,
                             body=b"0\r\n\r\n" + SMUGGLED),
    "TE upper case": post(b"Transfer-Encoding: CHUNKED", body=chunked(SMUGGLED)),
    "TE obs-fold": post(b"Transfer-Encoding:\r\n chunked", CL % 5, body=b"0\r\n\r\n" + SMUGGLED),
    "TE space before colon": post(b"Transfer-Encoding : chunked", CL % 5,
                                  body=b"0\r\n\r\n" + SMUGGLED),
    "TE with underscore": post(b"Transfer_Encoding: chunked", CL % (5 + len(SMUGGLED)),
                               body=b"0\r\n\r\n" + SMUGGLED),
    "TE in HTTP/1.0": post(b"Transfer-Encoding: chunked", CL % 5, body=b"0\r\n\r\n" + SMUGGLED,
                           version=b"1.0"),
    "CL twice": post(CL % 5, CL % len(SMUGGLED), body=b"0\r\n\r\n" + SMUGGLED),
    "CL list": post(b"Content-Length: 5, 5", body=b"0\r\n\r\n" + SMUGGLED),
    "CL plus": post(b"Content-Length: +5", body=b"0\r\n\r\n" + SMUGGLED),
    "CL hex": post(b"Content-Length: 0x5", body=b"0\r\n\r\n" + SMUGGLED),
    "CL leading zeros": post(b"Content-Length: 0005", body=b"0\r\n\r\n" + SMUGGLED),
    "CL obs-fold": post(b"Content-Length:\r\n 5", body=b"0\r\n\r\n" + SMUGGLED),
    "CL space inside": post(b"Content-Length: 1 5", body=b"0\r\n\r\n" + SMUGGLED),
    "chunk size overflow": post(b"Transfer-Encoding: chunked",
                                body=b"10000000000000003\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
    "chunk size 0x": post(b"Transfer-Encoding: chunked", body=b"0x3\r\nabc\r\n0\r\n\r\n"),
    "chunk size with spaces": post(b"Transfer-Encoding: chunked",
                                   body=b"3 \r\nabc\r\n0\r\n\r\n" + SMUGGLED),
    "chunk size leading zeros": post(b"Transfer-Encoding: chunked",
                                     body=b"0" * 64 + b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
    "chunk ext bare LF": post(b"Transfer-Encoding: chunked",
                              body=b"3;x\nabc\r\n0\r\n\r\n" + SMUGGLED),
    "chunk ext quoted CRLF": post(b"Transfer-Encoding: chunked",
                                  body=b'3;x="a\r\n0\r\n\r\n"\r\nabc\r\n0\r\n\r\n' + SMUGGLED),
    "chunk data overrun": post(b"Transfer-Encoding: chunked",
                               body=b"3\r\nabcXX\r\n0\r\n\r\n" + SMUGGLED),
    "chunk data bare LF": post(b"Transfer-Encoding: chunked", body=b"3\r\nabc\n0\r\n\r\n"),
    "last chunk bare LF": post(b"Transfer-Encoding: chunked", body=b"0\n\n" + SMUGGLED),
    "bare LF line endings": b"POST /front HTTP/1.1\nHost: x\nContent-Length: 5\n\n0\r\n\r\n"
                            + SMUGGLED,
    "bare CR in a field": post(b"X: a\rContent-Length: 0", CL % 5, body=b"0\r\n\r\n" + SMUGGLED),
    "NUL in a field": post(b"X: a\x00b", CL % 5, body=b"0\r\n\r\n" + SMUGGLED),
    "GET with a body": b"GET /front HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                       % len(SMUGGLED) + SMUGGLED,
    "upgrade with a body": b"POST /front HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                           b"Upgrade: foo\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
                           + SMUGGLED,
}  # fmt: skip


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of every request in `data` as the upstream received it; asserts the bytes
    are exactly requests framed by Content-Length (no leftover, no chunked framing)."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"a partial head reached the upstream: {head!r}"
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            assert name.strip().lower() != b"transfer-encoding", head
            if name.strip().lower() == b"content-length":
                length = int(value)
        out.append((head, data[:length]))
        data = data[length:]
    return out


def answers(port: int, data: bytes) -> list[int]:
    """The statuses the gateway sends back, until it closes or has nothing more (the first
    may take long on a loaded machine; later ones come right after it)."""
    with Client(port, timeout=15) as c:
        c.send(data)
        out = []
        while (a := c.answer()) is not None:
            out.append(a.status)
            c.sock.settimeout(1.5)
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rec = Recorder()
    gw = GatewayProc(tmp_path_factory.mktemp("gw-framing"))
    gw.start(
        {
            "workers": 1,
            "backends": [{"name": "up", "endpoints": [rec.url]}],
            "routes": [{"name": "all", "backendRefs": [{"name": "up"}]}],
        }
    )
    yield gw, rec
    gw.stop()
    rec.close()


@pytest.mark.parametrize("vector", list(VECTORS))
def test_the_upstream_receives_exactly_what_the_gateway_answered_for(world, vector) -> None:
    gw, rec = world
    tag = vector.replace(" ", "-").replace(".", "-").replace(",", "-").replace("/", "-").encode()
    data = (
        VECTORS[vector]
        .replace(b"/front", b"/front-" + tag)
        .replace(b"/smuggled", b"/smuggled-" + tag)
    )
    statuses = answers(gw.port, data)
    assert statuses, f"{vector}: no answer"
    forwarded = [  # (pooled connections carry other vectors' requests too: match the tag)
        head.split(b" ")[1]
        for conn in list(rec.connections)
        for head, _ in frames(bytes(conn))
        if tag in head.split(b"\r\n")[0]
    ]
    assert len(forwarded) == statuses.count(200), (
        f"{vector}: the gateway answered {statuses}, the upstream got {forwarded}"
    )
    if statuses[0] != 200:  # refused: nothing after it was read, let alone forwarded
        assert forwarded == [], (vector, forwarded)
    others = raw_exchange(gw.port, b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert others.startswith(b"HTTP/1.1 200 ")
