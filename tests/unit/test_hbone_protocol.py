"""HBONE CONNECT requests, without sockets (frame-level checks: test_hbone_codec.py)."""

import pytest

from agent.hbone.protocol import (
    BadRequest,
    ConnectRequest,
    connect_headers,
    parse_connect,
    parse_forwarded,
    target_refusal,
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


@pytest.mark.parametrize(
    ("destination", "reason"),
    [
        (("10.244.2.2", 8080), None),
        (("10.244.2.2", 14999), None),
        (("10.244.2.2", 15022), None),
        (("10.244.2.3", 8080), "is not this pod"),
        *((("10.244.2.2", port), "is a mesh port") for port in (15000, 15001, 15006, 15008, 15021)),
    ],
)
def test_a_connect_reaches_only_the_pods_own_app_ports(destination, reason):
    got = target_refusal(destination, "10.244.2.2")
    assert got == reason if reason is None else reason in got
