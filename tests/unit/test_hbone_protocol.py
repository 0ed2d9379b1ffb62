"""HBONE requests and the frame guard, without sockets."""

import pytest

from agent.hbone.protocol import (
    BadRequest,
    ConnectRequest,
    FrameGuard,
    TunnelError,
    connect_headers,
    parse_connect,
    parse_forwarded,
)


def test_our_own_headers_parse_back():
    headers = connect_headers(
        ("10.244.2.2", 8080), ("10.244.1.2", 41000), traceparent="00-ab-cd-01"
    )
    assert parse_connect(headers) == ConnectRequest(
        ("10.244.2.2", 8080), ("10.244.1.2", 41000), "00-ab-cd-01"
    )


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(":method", "GET"), (":authority", "1.2.3.4:80")], "method must be CONNECT"),
        ([(":method", "CONNECT")], "without :authority"),
        (
            [(":method", "CONNECT"), (":authority", "1.2.3.4:80"), (":path", "/")],
            "must not carry :path",
        ),
        (
            [(":method", "CONNECT"), (":authority", "1.2.3.4:80"), (":scheme", "https")],
            "must not carry :scheme",
        ),
        ([(":method", "CONNECT"), (":authority", "example.com:80")], "not an IPv4 address"),
        ([(":method", "CONNECT"), (":authority", "1.2.3.4")], "not ip:port"),
        ([(":method", "CONNECT"), (":authority", "1.2.3.4:0")], "port out of range"),
        (
            [(":method", "CONNECT"), (":method", "CONNECT"), (":authority", "1.2.3.4:1")],
            "appears twice",
        ),
    ],
)
def test_bad_requests_say_why(headers, reason):
    with pytest.raises(BadRequest, match=reason) as exc:
        parse_connect(headers)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('for="10.0.0.1:5"', ("10.0.0.1", 5)),
        ("for=10.0.0.1:5", ("10.0.0.1", 5)),
        ('proto=https;for="10.0.0.1:5";by=x', ("10.0.0.1", 5)),
        ("for=unknown", None),
        ("by=x", None),
    ],
)
def test_forwarded(value, expected):
    assert parse_forwarded(value) == expected


def frame(length: int) -> bytes:
    return length.to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + b"x" * length


def test_frame_guard_passes_frames_up_to_the_limit_in_any_chunking():
    data = b"P" * 24 + frame(0) + frame(100) + frame(1000)
    for step in (1, 7, 9, 64, len(data)):
        guard = FrameGuard(1000, preface=24)
        for i in range(0, len(data), step):
            guard.feed(data[i : i + step])


def test_frame_guard_refuses_an_oversized_frame_at_its_header():
    guard = FrameGuard(1000, preface=24)
    guard.feed(b"P" * 24 + frame(10))
    with pytest.raises(TunnelError, match="6383461 bytes"):
        guard.feed(b"age-garba")  # a header announcing ~6 MB; nothing else sent yet
