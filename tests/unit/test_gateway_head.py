"""What the engine makes of a request head alone (gateway/http/head.py): one table per rule."""

from __future__ import annotations

import pytest

from gateway.http.errors import HttpError
from gateway.http.head import HeadRules
from gateway.http.uri import PathRules
from tests.unit.gwunit import head

H = [(b"host", b"example.test")]


def test_a_plain_head() -> None:
    h = head([*H, (b"accept", b"*/*")], target=b"/a/./b?x=1")
    r = h.request
    assert (r.method, r.path, r.query_string, r.host, r.authority) == (
        "GET",
        "/a/b",
        "x=1",
        "example.test",
        b"example.test",
    )
    assert r.headers.items == [(b"accept", b"*/*"), (b"host", b"example.test")]
    assert not h.expect_continue and not h.has_body and r.upgrade == ""


@pytest.mark.parametrize(
    ("fields", "kwargs", "status", "reason"),
    [
        ([], {}, 400, "missing Host"),
        ([*H, *H], {}, 400, "repeated host"),
        ([*H, (b"authorization", b"a"), (b"authorization", b"b")], {}, 400, "authorization"),
        ([*H, (b"proxy-authorization", b"a")] * 2, {}, 400, "repeated"),
        ([*H, (b"expect", b"100-continue")] * 2, {}, 400, "repeated"),
        ([(b"host", b"x:poison")], {}, 400, "port"),
        ([(b"host", b"a b")], {}, 400, "host name"),
        (H, {"version": "0.9"}, 400, "no HTTP version"),
        (H, {"version": "2.0"}, 505, "HTTP/2.0"),
        ([*H, (b"x", b"1")] * 60, {}, 431, "too many"),
        ([(b"transfer-encoding", b"chunked")], {"version": "1.0"}, 400, "HTTP/1.0"),
        ([*H, (b"content-length", b"5000")], {}, 413, "larger"),
        ([*H, (b"expect", b"something-else")], {}, 417, "100-continue"),
        (H, {"target": b"http://other.test/"}, 400, "does not match"),
        (H, {"target": b"http://example.test:8080/"}, 400, "does not match"),
        (H, {"target": b"/%2e%2e%2fadmin"}, 400, "%2F"),
        (H, {"method": "CONNECT", "target": b"example.test:443"}, 405, "CONNECT"),
        (
            [*H, (b"x_forwarded_host", b"evil")],
            {"rules": HeadRules(underscores="reject")},
            400,
            "underscore",
        ),
    ],
)
def test_refused_heads(fields, kwargs, status, reason) -> None:
    with pytest.raises(HttpError) as err:
        head(fields, **kwargs)
    assert err.value.status == status and reason in err.value.reason, err.value.reason


@pytest.mark.parametrize(
    ("target", "host_field", "authority"),
    [
        (b"http://example.test/a", None, b"example.test"),
        (b"http://EXAMPLE.test./a", b"example.test:80", b"example.test"),
        (b"http://example.test:8080/a", b"Example.Test:8080", b"example.test:8080"),
    ],
)
def test_absolute_form_gives_the_host(target, host_field, authority) -> None:
    # (HTTP/1.1 needs a Host even then, RFC 9112 §3.2; an HTTP/1.0 client may send none)
    fields = [(b"host", host_field)] if host_field is not None else []
    r = head(fields, target=target, version="1.1" if fields else "1.0").request
    assert r.path == "/a" and r.authority == authority
    assert r.headers.get_all(b"host") == [authority]


def test_hosts_are_compared_in_one_form() -> None:
    for value in (b"Admin.Example.Test.", b"admin.example.test:80", b"ADMIN.example.test"):
        r = head([(b"host", value)]).request
        assert (r.host, r.authority) == ("admin.example.test", b"admin.example.test")
        assert r.headers.get(b"host") == b"admin.example.test"
    r = head([(b"host", b"admin.example.test:443")], scheme="https").request
    assert r.authority == b"admin.example.test"


def test_http10_may_come_without_host() -> None:
    r = head([], version="1.0").request
    assert r.authority == b"" and r.host == "" and b"host" not in r.headers


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    fields = [
        *H,
        (b"connection", b"close, X-Secret, apikey"),
        (b"x-secret", b"1"),
        (b"apikey", b"k"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"proxy-connection", b"keep-alive"),
        (b"http2-settings", b"AAMAAABkAAQAAP__"),
        (b"upgrade", b"h2c"),
        (b"x-kept", b"yes"),
    ]
    r = head(fields).request
    assert [n for n, _ in r.headers.items] == [b"x-kept", b"host"]
    assert r.upgrade == ""  # Upgrade without Connection: upgrade asks for nothing


def test_underscores_dropped_by_default_kept_when_allowed() -> None:
    fields = [*H, (b"x_forwarded_host", b"evil"), (b"api_key", b"k")]
    assert [n for n, _ in head(fields).request.headers] == [b"host"]
    allowed = head(fields, rules=HeadRules(underscores="allow")).request
    assert [n for n, _ in allowed.headers] == [b"x_forwarded_host", b"api_key", b"host"]


def test_values_lose_trailing_whitespace() -> None:
    r = head([*H, (b"x-version", b"2 \t ")]).request
    assert r.headers.get(b"x-version") == b"2"


def test_expect_100_continue() -> None:
    h = head([*H, (b"expect", b"100-Continue"), (b"content-length", b"3")])
    assert h.expect_continue and h.has_body and b"expect" not in h.request.headers
    h10 = head([(b"expect", b"100-continue")], version="1.0")
    assert not h10.expect_continue  # RFC 9110 §10.1.1: never to HTTP/1.0


@pytest.mark.parametrize(
    ("fields", "protocol"),
    [
        ([(b"connection", b"Upgrade"), (b"upgrade", b"WebSocket")], "websocket"),
        ([(b"connection", b"keep-alive, upgrade"), (b"upgrade", b"h2c")], "h2c"),
        ([(b"upgrade", b"websocket")], ""),
    ],
)
def test_upgrade_requests_are_noted(fields, protocol) -> None:
    r = head([*H, *fields]).request
    assert r.upgrade == protocol
    assert b"upgrade" not in r.headers and b"connection" not in r.headers


def test_escaped_slashes_follow_the_listener() -> None:
    rules = HeadRules(paths=PathRules(escaped_slashes="keep"))
    assert head(H, target=b"/a%2fb", rules=rules).request.path == "/a%2Fb"
