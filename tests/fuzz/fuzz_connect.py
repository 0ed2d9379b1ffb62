"""Fuzz target: an HBONE CONNECT header block, and the client address the destination believes.

parse_connect may refuse a block only with BadRequest (a ValueError out of it dropped the
whole connection); when it accepts one, hbone_source must give the connection's own address
whatever Forwarded says, taking a claim's port only when the claim's address is the peer's.
"""

from __future__ import annotations

import atheris

from agent.hbone.protocol import BadRequest, parse_connect
from agent.node.proxy.source import hbone_source
from tests.fuzz import harness

PEER = ("10.244.1.2", 51000)
NAMES = [":method", ":authority", ":path", ":scheme", "forwarded", "traceparent", "baggage", "x"]
VALUES = [
    "CONNECT",
    "10.244.2.2:8080",
    'for="10.244.1.2:41000"',
    'for="127.0.0.1:80"',
    "for=10.244.1.2:",
]

SEEDS = [
    b"\x03\x00\x00\x01\x01\x04\x02",
    b"\x04\x00\x00\x01\x01\x04\x03\x04\x02",
    b"\x02\x00\x00\x04\xff" + "for=[::1]:²".encode(),
]


def fuzz_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    headers = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        name = NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)]
        pick = fdp.ConsumeIntInRange(0, len(VALUES))
        known = VALUES[pick] if pick < len(VALUES) else ""
        value = known + fdp.ConsumeUnicodeNoSurrogates(64)  # a valid start, then anything
        headers.append((name, value))
    try:
        request = parse_connect(headers)
    except BadRequest:
        return
    source = hbone_source(PEER, request)
    assert source.addr[0] == PEER[0], (headers, source)
    if request.client is not None and request.client[0] == PEER[0]:
        assert source.addr == request.client and source.ignored is None
    elif request.forwarded is not None:
        assert source.addr == PEER and source.ignored is not None
    else:
        assert source == type(source)(PEER)


if __name__ == "__main__":
    harness.main(fuzz_one, SEEDS)
