"""What a client cannot smuggle past the gateway in a request's head, trailer or upgrade.

Each case is sent as raw bytes; a raw recording upstream shows exactly what
reached it. The classes: trailer fields that would route or authenticate;
upgrades the route does not allow (h2c smuggling, Bishop Fox 2020) and upgrade
requests whose answer is not a 101 (WebSocket smuggling, 0ang3el 2019); an
upstream switching protocols unasked; `100 Continue` in the wrong place or to
HTTP/1.0; hop-by-hop fields named in `Connection` (including ones the gateway
sets); duplicated credentials; fields that make frameworks serve another URL or
method; header names with underscores; and answers kept in order when a later
pipelined request is broken.
"""

from __future__ import annotations

import base64
import os
import socket

import pytest

from .gwkit import Client, GatewayProc, Recorder, start_echo, stop

KEY = "alice-key-123"


def config(upstream: str, **route_extra) -> dict:
    return {
        "workers": 1,
        "backends": [{"name": "up", "endpoints": [upstream]}],
        "consumers": [
            {"name": "alice", "apiKeys": [KEY]},
            {"name": "mallory", "apiKeys": ["mallory-key-9"]},
        ],
        "routes": [
            {
                "name": "admin",
                "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                "backendRefs": [{"name": "up"}],
                "plugins": [{"name": "key-auth", "config": {"hideCredentials": False}}],
                **route_extra,
            },
            {
                "name": "admin-host",
                "hostnames": ["admin.example.test"],
                "backendRefs": [{"name": "up"}],
                "plugins": [{"name": "key-auth"}],
            },
            {"name": "open", "backendRefs": [{"name": "up"}], **route_extra},
        ],
    }


@pytest.fixture
def rec():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def gw(tmp_path):
    g = GatewayProc(tmp_path)
    yield g
    g.stop()


def head_lines(head: bytes) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


# ------------------------------------------------------------------ trailers


def test_trailer_fields_never_authenticate_or_route(gw, rec) -> None:
    gw.start(config(rec.url))
    body = (
        b"POST /admin HTTP/1.1\r\nHost: shop.example.test\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: apikey, host\r\n\r\n5\r\nhello\r\n0\r\n"
        b"apikey: " + KEY.encode() + b"\r\nHost: admin.example.test\r\n\r\n"
    )
    with Client(gw.port) as c:
        a = c.send(body).answer()
    assert a is not None and a.status == 401  # the key in the trailer counts for nothing
    body = body.replace(b"POST /admin", b"POST /other")
    with Client(gw.port) as c:
        a = c.send(body).answer()
    assert a is not None and a.status == 200  # routed by the head's Host: the open route
    (head,) = rec.heads()
    fields = head_lines(head)
    assert fields[b"host"] == [b"shop.example.test"]
    assert b"apikey" not in fields and b"trailer" not in fields
    assert fields[b"content-length"] == [b"5"]
    assert rec.received().endswith(b"\r\n\r\nhello")


def test_trailers_are_bounded_like_headers(gw, rec) -> None:
    c = config(rec.url)
    c["listeners"] = [{"name": "web", "address": f"127.0.0.1:{gw.port}",
                       "limits": {"maxHeaderBytes": "4KiB"}}]  # fmt: skip
    gw.start(c)
    trailer = b"".join(b"x-t%d: %s\r\n" % (i, b"v" * 100) for i in range(100))
    with Client(gw.port) as c:
        a = c.send(
            b"POST /x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\n0\r\n" + trailer + b"\r\n"
        ).answer()
    assert a is not None and a.status == 431
    assert rec.heads() == []


# ------------------------------------------------------------------ upgrades


H2C = (
    b"GET /admin HTTP/1.1\r\nHost: shop.example.test\r\napikey: " + KEY.encode() + b"\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_h2c_upgrade_is_never_tunnelled(gw, tmp_path) -> None:
    switching = Recorder(switch=True)  # an upstream that would speak h2c if asked
    try:
        gw.start(config(switching.url))
        with Client(gw.port) as c:
            a = c.send(H2C + PREFACE + b"GET /admin/secrets HTTP/1.1\r\nHost: x\r\n\r\n").answer()
            assert a is not None and a.status == 200 and a.body == b"ok"  # plain HTTP answer
            assert a.header(b"connection") == b"close"
            assert c.closed_by_peer()
        (head,) = switching.heads()
        fields = head_lines(head)
        assert b"upgrade" not in fields and b"http2-settings" not in fields
        assert fields.get(b"connection") is None
        assert PREFACE not in switching.received() and b"/admin/secrets" not in switching.received()
    finally:
        switching.close()


def ws_request(path: bytes = b"/admin", key: bytes | None = None, extra: bytes = b"") -> bytes:
    key = key or base64.b64encode(os.urandom(16))
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: shop.example.test\r\napikey: " + KEY.encode()
        + b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n" + extra + b"\r\n"
    )  # fmt: skip


def test_a_route_without_websocket_does_not_pass_the_upgrade(gw) -> None:
    switching = Recorder(switch=True)
    try:
        gw.start(config(switching.url, upgrades=[]))
        with Client(gw.port) as c:
            a = c.send(ws_request() + b"\x81\x85raw-frame").answer()
            assert a is not None and a.status == 200 and c.closed_by_peer()
        (head,) = switching.heads()
        assert b"upgrade" not in head_lines(head)
        assert b"raw-frame" not in switching.received()
    finally:
        switching.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        ws_request().replace(b"GET ", b"POST ", 1),
        ws_request().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
        ws_request(key=b"too-short"),
        ws_request().replace(b"HTTP/1.1\r\n", b"HTTP/1.0\r\n", 1),
        ws_request(extra=b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"),
    ],
    ids=["POST", "version 8", "bad key", "HTTP/1.0", "two keys"],
)
def test_invalid_websocket_handshakes_are_refused(gw, request_bytes) -> None:
    switching = Recorder(switch=True)
    try:
        gw.start(config(switching.url))
        with Client(gw.port) as c:
            a = c.send(request_bytes).answer()
            assert a is not None and a.status == 400, a
        assert switching.heads() == []
    finally:
        switching.close()


def test_an_upgrade_answered_without_101_ends_the_connection(gw) -> None:
    # WebSocket smuggling: the upstream refuses the upgrade (426); a proxy that then treats
    # the connection as a tunnel lets the client talk to the upstream past the gateway.
    refusing = Recorder(answer=b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n")
    try:
        gw.start(config(refusing.url))
        smuggled = b"GET /admin/secrets HTTP/1.1\r\nHost: shop.example.test\r\n\r\n"
        with Client(gw.port) as c:
            a = c.send(ws_request() + smuggled).answer()
            assert a is not None and a.status == 426
            assert c.closed_by_peer()
        heads = refusing.heads()
        assert len(heads) == 1 and b"/admin/secrets" not in refusing.received()
    finally:
        refusing.close()


def test_an_upstream_switching_protocols_unasked_is_a_502(gw) -> None:
    rogue = Recorder(
        answer=b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    try:
        gw.start(config(rogue.url))
        with Client(gw.port) as c:
            a = c.send(b"GET /x HTTP/1.1\r\nHost: s\r\n\r\n").answer()
            assert a is not None and a.status == 502
            assert c.send(b"GET /y HTTP/1.1\r\nHost: s\r\n\r\n").answer().status == 502
        assert len(rogue.connections) == 2  # the switched connection was not used again
    finally:
        rogue.close()


def test_websocket_through_an_allowed_route_and_the_pool_stays_clean(gw, tmp_path) -> None:
    echo = start_echo(tmp_path, "a")
    try:
        gw.start(config(echo.url))
        with Client(gw.port) as ws:
            ws.send(ws_request(path=b"/ws"))
            a = ws.answer()
            assert a is not None and a.status == 101 and a.header(b"upgrade") == b"websocket"
            # the upgraded upstream connection must not serve anyone else's request
            for _ in range(3):
                with Client(gw.port) as other:
                    b = other.send(b"GET /plain HTTP/1.1\r\nHost: s\r\n\r\n").answer()
                    assert b is not None and b.status == 200 and b'"target": "/plain"' in b.body
            mask = b"\x01\x02\x03\x04"
            frame = (
                bytes([0x81, 0x85]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(b"hello"))
            )
            ws.send(frame)
            assert ws.f.read(2 + len(b"a:hello"))[2:] == b"a:hello"
    finally:
        stop(echo.proc)


def test_connect_is_refused(gw, rec) -> None:
    gw.start(config(rec.url))
    with Client(gw.port) as c:
        a = c.send(
            b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\nSSH-2.0\r\n"
        ).answer()
        assert a is not None and a.status == 405 and c.closed_by_peer()
    assert rec.received() == b""


# ------------------------------------------------------------------ 100 Continue


def test_100_continue_waits_for_the_answer_before_it(gw, tmp_path) -> None:
    echo = start_echo(tmp_path, "a")
    try:
        gw.start(config(echo.url))
        with Client(gw.port) as c:
            c.send(
                b"GET /slow HTTP/1.1\r\nHost: s\r\nx-echo-delay: 0.5\r\n\r\n"
                b"POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            first = c.answer()
            assert first is not None and first.status == 200 and b'"/slow"' in first.body
            interim = c.answer()
            assert interim is not None and interim.status == 100
            second = c.send(b"hello").answer()
            assert second is not None and second.status == 200 and b'"body": "hello"' in second.body
            assert b"expect" not in second.body.lower()  # the expectation is ours, not forwarded
    finally:
        stop(echo.proc)


def test_no_100_continue_to_http10_clients(gw, rec) -> None:
    gw.start(config(rec.url))
    with Client(gw.port) as c:
        c.send(b"POST /x HTTP/1.0\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        c.send(b"abc")
        a = c.answer()
        assert a is not None and a.status == 200  # the first thing sent is the final answer


def test_an_unknown_expectation_is_417(gw, rec) -> None:
    gw.start(config(rec.url))
    with Client(gw.port) as c:
        a = c.send(
            b"POST /x HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 200-ok\r\n\r\n"
        ).answer()
        assert a is not None and a.status == 417
    assert rec.heads() == []


# ------------------------------------------------------------------ fields


def test_http10_requests_are_forwarded_with_a_host(gw, rec) -> None:
    gw.start(config(rec.url))
    with Client(gw.port) as c:
        a = c.send(b"GET /x HTTP/1.0\r\n\r\n").answer()
        assert a is not None and a.status == 200
    (head,) = rec.heads()
    assert head_lines(head)[b"host"] == [f"127.0.0.1:{rec.port}".encode()]


def test_fields_named_in_connection_are_removed_but_never_the_gateways_own(gw, rec) -> None:
    gw.start(config(rec.url))
    with Client(gw.port) as c:
        a = c.send(
            b"GET /x HTTP/1.1\r\nHost: s\r\nConnection: keep-alive, X-Secret, X-Forwarded-For, "
            b"X-Request-Id, Host\r\nX-Secret: 1\r\nX-Forwarded-For: 10.9.9.9\r\nKeep-Alive: 5\r\n"
            b"X-Kept: yes\r\n\r\n"
        ).answer()
        assert a is not None and a.status == 200
    (head,) = rec.heads()
    fields = head_lines(head)
    assert b"x-secret" not in fields and b"keep-alive" not in fields
    assert fields[b"x-forwarded-for"] == [b"127.0.0.1"]  # the client's value went; ours stays
    assert fields[b"x-kept"] == [b"yes"] and fields[b"host"] == [b"s"]
    assert len(fields[b"x-request-id"]) == 1


def test_response_fields_named_in_connection_are_removed_but_never_the_gateways_own(gw) -> None:
    leaky = Recorder(
        answer=b"HTTP/1.1 200 OK\r\nConnection: X-Internal, X-Frame-Options, X-Request-Id\r\n"
        b"X-Internal: secret\r\nX-Public: yes\r\nContent-Length: 2\r\n\r\nok"
    )
    try:
        c = config(leaky.url)
        c["routes"][2]["filters"] = [
            {"type": "ResponseHeaderModifier",
             "responseHeaderModifier": {"set": [{"name": "X-Frame-Options", "value": "DENY"}]}}
        ]  # fmt: skip
        gw.start(c)
        with Client(gw.port) as cl:
            a = cl.send(b"GET /x HTTP/1.1\r\nHost: s\r\n\r\n").answer()
        assert a is not None and a.header(b"x-public") == b"yes"
        assert a.header(b"x-internal") is None
        assert a.header(b"x-frame-options") == b"DENY"  # ours, set after the upstream's went
        assert a.header(b"x-request-id")
    finally:
        leaky.close()


@pytest.mark.parametrize(
    ("target", "extra", "status"),
    [
        (b"/admin", b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", 400),
        (b"/admin", b"Proxy-Authorization: Basic a\r\nProxy-Authorization: Basic b\r\n", 400),
        (b"/admin", b"apikey: " + KEY.encode() + b"\r\napikey: mallory-key-9\r\n", 401),
        (b"/admin?apikey=mallory-key-9", b"apikey: " + KEY.encode() + b"\r\n", 401),
        (b"/admin?apikey=" + KEY.encode() + b"&apikey=mallory-key-9", b"", 401),
    ],
    ids=["two Authorization", "two Proxy-Authorization", "two apikey", "header and query",
         "two in the query"],
)  # fmt: skip
def test_credentials_given_twice_are_refused(gw, rec, target, extra, status) -> None:
    gw.start(config(rec.url))
    with Client(gw.port) as c:
        a = c.send(b"GET " + target + b" HTTP/1.1\r\nHost: s\r\n" + extra + b"\r\n").answer()
        assert a is not None and a.status == status
    assert rec.heads() == []


def test_fields_that_would_change_the_url_or_method_upstream_are_removed(gw, rec) -> None:
    gw.start(config(rec.url))
    overrides = (
        b"X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\n"
        b"X-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\nForwarded: host=admin\r\n"
        b"X-Forwarded-Host: admin.example.test\r\nX-Forwarded-Prefix: /admin\r\n"
        b"X-Forwarded-Proto: https\r\nX-Host: admin\r\nX-Original-Host: admin\r\n"
        b"X_Forwarded_Host: admin.example.test\r\nX-Forwarded-Port: 443\r\n"
    )
    with Client(gw.port) as c:
        a = c.send(b"GET /public HTTP/1.1\r\nHost: s\r\n" + overrides + b"\r\n").answer()
        assert a is not None and a.status == 200
    (head,) = rec.heads()
    fields = head_lines(head)
    for name in (b"x-original-url", b"x-rewrite-url", b"x-http-method-override", b"x-http-method",
                 b"x-method-override", b"forwarded", b"x-forwarded-prefix", b"x-host",
                 b"x-original-host", b"x_forwarded_host", b"x-forwarded-port"):  # fmt: skip
        assert name not in fields, name
    assert fields[b"x-forwarded-host"] == [b"s"] and fields[b"x-forwarded-proto"] == [b"http"]


def test_answers_stay_in_order_when_a_later_pipelined_request_is_broken(gw, tmp_path) -> None:
    echo = start_echo(tmp_path, "a")
    try:
        gw.start(config(echo.url))
        with Client(gw.port) as c:
            c.send(
                b"GET /first HTTP/1.1\r\nHost: s\r\nx-echo-delay: 0.3\r\n\r\n"
                b"GET /second HTTP/1.1\r\nHost: s\r\n\r\n"
                b"GET /%zz HTTP/1.1\r\nHost: s\r\n\r\n"
            )
            answers = [c.answer(), c.answer(), c.answer()]
            assert [a.status for a in answers if a] == [200, 200, 400]
            assert b'"/first"' in answers[0].body and b'"/second"' in answers[1].body
            assert c.closed_by_peer()
    finally:
        stop(echo.proc)


def test_http_versions_other_than_1x_are_refused(gw, rec) -> None:
    gw.start(config(rec.url))
    with Client(gw.port) as c:
        a = c.send(b"GET / HTTP/2.0\r\nHost: s\r\n\r\n").answer()
        assert a is not None and a.status == 505
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    assert rec.heads() == []


def test_options_asterisk_is_answered_by_the_gateway(gw, rec) -> None:
    gw.start(config(rec.url))
    with Client(gw.port) as c:
        a = c.send(b"OPTIONS * HTTP/1.1\r\nHost: s\r\n\r\n").answer()
        assert a is not None and a.status == 200 and b"GET" in (a.header(b"allow") or b"")
        b = c.send(b"GET * HTTP/1.1\r\nHost: s\r\n\r\n").answer()
        assert b is not None and b.status == 400
    assert rec.heads() == []


@pytest.mark.parametrize(
    "extra",
    [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nevil!",
     b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\nevil!"],
    ids=["whole", "partial"],
)  # fmt: skip
def test_an_upstream_answering_more_than_asked_is_not_reused(gw, extra) -> None:
    # Response queue poisoning: bytes after an answer must never be taken for the next one.
    rogue = Recorder(answer=b"HTTP/1.1 204 No Content\r\n\r\n" + extra)
    try:
        gw.start(config(rogue.url))
        for _ in range(3):
            with Client(gw.port) as c:
                a = c.send(b"GET /x HTTP/1.1\r\nHost: s\r\n\r\n").answer()
                assert a is not None and a.status == 204 and a.body == b""
        assert len(rogue.connections) == 3
    finally:
        rogue.close()
