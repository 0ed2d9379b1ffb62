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
        ("10.244.2.2", 8080),
        ("10.244.1.2", 41000),
        "00-ab-cd-01",
        forwarded='for="10.244.1.2:41000"',
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
        ([(":method", "CONNECT"), (":authority", "1.2.3.4:0")], "is not a port"),
        # Digits int() refuses (or takes for others) are named, never a ValueError.
        ([(":method", "CONNECT"), (":authority", "1.2.3.4:\u00b2")], "is not a port"),
        ([(":method", "CONNECT"), (":authority", "1.2.3.4:\uff18\uff10")], "is not a port"),
        ([(":method", "CONNECT"), (":authority", "1.2.3.4:" + "1" * 5000)], "is not a port"),
        ([(":method", "CONNECT"), (":authority", "1.2.3.4:080080")], "is not a port"),
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
        ('For="10.0.0.1:5"', ("10.0.0.1", 5)),
        ("for=unknown", None),
        ('for="_hidden"', None),
        ("by=x", None),
        ("for=10.0.0.1", None),  # no port
        ('for="[::1]:80"', None),
        ('for="[::ffff:127.0.0.1]:80"', None),  # never read as 127.0.0.1
        ("for=::ffff:127.0.0.1:80", None),
        ('for="10.0.0.1:5", for="10.0.0.2:6"', None),  # a chain of proxies: whose?
        ('for="10.0.0.1:5";for="10.0.0.2:6"', None),
        ("for=10.0.0.1:\u00b2", None),
        ("for=10.0.0.1:" + "9" * 5000, None),
        ("for=010.0.0.1:80", None),
        ('for="10.0.0.1:5', None),
        ("", None),
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


def test_several_forwarded_fields_are_one_list():
    """RFC 7239 section 4: two Forwarded fields are two elements, so the claim is ambiguous
    (the last one no longer wins), and both are kept for the access record."""
    request = parse_connect(
        [
            (":method", "CONNECT"),
            (":authority", "10.244.2.2:8080"),
            ("forwarded", 'for="10.244.1.2:41000"'),
            ("forwarded", 'for="127.0.0.1:80"'),
        ]
    )
    assert request.client is None
    assert request.forwarded == 'for="10.244.1.2:41000", for="127.0.0.1:80"'
