"""The gateway routes on exactly what it forwards: path and Host confusion against a real nginx.

Behind the gateway, nginx normalizes every path again (decoding, dot segments,
merged slashes) and reports which location it chose: `/admin` there is what the
gateway protects with key-auth (and a host-bound route with key-auth too). Each
attack is a raw request without a key: it must be refused, or reach nginx's
public location; never nginx's `/admin`. A raw recording upstream shows the
exact bytes forwarded: the routed path, never the client's spelling. A
property test then throws thousands of generated paths at both and checks the
same thing for every one that got through.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .gwkit import (
    Client,
    GatewayProc,
    Recorder,
    oracle_view,
    start_nginx_oracle,
    stop,
)

KEY = "alice-key-123"


def config(upstream: str) -> dict:
    protected = [{"name": "key-auth"}]
    return {
        "workers": 1,
        "backends": [{"name": "up", "endpoints": [upstream]}],
        "consumers": [{"name": "alice", "apiKeys": [KEY]}],
        "routes": [
            {
                "name": "admin",
                "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                "backendRefs": [{"name": "up"}],
                "plugins": protected,
            },
            {
                "name": "admin-host",
                "hostnames": ["admin.example.test"],
                "backendRefs": [{"name": "up"}],
                "plugins": protected,
            },
            {
                "name": "api",
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {
                            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/public"}
                        },
                    }
                ],
                "backendRefs": [{"name": "up"}],
            },
            {"name": "open", "backendRefs": [{"name": "up"}]},
        ],
    }


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-paths")
    port, proc = start_nginx_oracle(tmp)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def with_http(gw: GatewayProc, upstream: str, **http) -> dict:
    listener = {"name": "web", "address": f"127.0.0.1:{gw.port}"}
    if http:
        listener["http"] = http
    return {**config(upstream), "listeners": [listener]}


def start(gw: GatewayProc, upstream: str, **http) -> GatewayProc:
    return gw.start(with_http(gw, upstream, **http))


@pytest.fixture(scope="module")
def gw(nginx, tmp_path_factory):
    g = GatewayProc(tmp_path_factory.mktemp("gw-paths-gw"))
    start(g, nginx)
    yield g
    g.stop()


def ask(port: int, target: str, host: str = "shop.example.test", extra: str = "") -> tuple:
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    with Client(port) as c:
        a = c.send(request.encode()).answer()
    assert a is not None, f"no answer to {target!r}"
    return a.status, oracle_view(a.body) if a.status == 200 else {}, a


ADMIN_SPELLINGS = [
    "/admin",
    "/admin/",
    "/admin/users",
    "/%61dmin",
    "/%61%64%6d%69%6e/users",
    "/ADMIN/../admin",
    "//admin",
    "///admin//users",
    "/./admin",
    "/x/../admin",
    "/x/y/../../admin",
    "/../admin",
    "/x/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/x/.%2e/admin",
    "/%2e/admin",
    "/api/../admin",
    "/api/%2e%2e/admin",
    "/public/..//admin",
    "/admin#fragment",
    "/admin?x=1",
    "/adm%69n/%2e/users",
]


@pytest.mark.parametrize("target", ADMIN_SPELLINGS)
def test_every_spelling_of_admin_is_protected(gw, target) -> None:
    status, seen, _ = ask(gw.port, target)
    assert status == 401, (target, status, seen)
    # the positive control: with the key, the same spelling reaches nginx's /admin, and
    # nginx was handed the one normalized path
    status, seen, _ = ask(gw.port, target, extra=f"apikey: {KEY}\r\n")
    assert status == 200 and seen["loc"] == "admin", (target, seen)
    assert seen["request_uri"] == seen["uri"] + (f"?{seen['args']}" if seen["args"] else "")


REFUSED = [
    ("/admin%2Fsecret", 400),
    ("/admin%2fsecret", 400),
    ("/x/..%2Fadmin", 400),
    ("/x%2F..%2Fadmin", 400),
    ("/admin%5Csecret", 400),
    ("/x\\..\\admin", 400),
    ("/x/..;/admin", 400),
    ("/x/.;/admin", 400),
    ("/admin%00", 400),
    ("/admin%", 400),
    ("/admin%zz", 400),
    ("admin", 400),
    ("*", 400),
]


@pytest.mark.parametrize(("target", "status"), REFUSED)
def test_paths_that_cannot_be_normalized_are_refused(gw, target, status) -> None:
    got, seen, a = ask(gw.port, target)
    assert got == status, (target, got, seen, a.body)


def test_absolute_form_routes_on_its_path_and_authority(gw) -> None:
    status, _, _ = ask(gw.port, "http://shop.example.test/admin")
    assert status == 401  # not the catch-all route
    status, seen, _ = ask(gw.port, "http://shop.example.test/admin", extra=f"apikey: {KEY}\r\n")
    assert status == 200 and seen["loc"] == "admin" and seen["request_uri"] == "/admin"
    status, _, _ = ask(gw.port, "http://admin.example.test/x", host="admin.example.test")
    assert status == 401
    status, _, _ = ask(gw.port, "http://admin.example.test/x", host="shop.example.test")
    assert status == 400  # the authority and the Host header disagree
    status, _, _ = ask(gw.port, "https://shop.example.test/x")
    assert status == 400  # an https target on a plain connection


@pytest.mark.parametrize(
    "host",
    ["admin.example.test", "ADMIN.Example.Test", "admin.example.test.", "admin.example.test:80",
     "Admin.Example.Test.:80", "admin.example.test:"],
)  # fmt: skip
def test_every_spelling_of_a_host_reaches_its_route(gw, host) -> None:
    status, _, _ = ask(gw.port, "/x", host=host)
    assert status == 401, host
    status, seen, _ = ask(gw.port, "/x", host=host, extra=f"apikey: {KEY}\r\n")
    assert status == 200 and seen["host"] == "admin.example.test"


@pytest.mark.parametrize(
    "host",
    ["admin.example.test:poison", "admin.example.test:99999", "admin.example.test..",
     "admin%2eexample.test", "admin.example.test:80:80", "user@admin.example.test"],
)  # fmt: skip
def test_hosts_that_cannot_be_normalized_are_refused(gw, host) -> None:
    status, _, _ = ask(gw.port, "/x", host=host)
    assert status == 400, host


def test_a_rewrite_cannot_be_escaped_with_dot_segments(tmp_path) -> None:
    rec = Recorder()
    g = GatewayProc(tmp_path)
    try:
        start(g, rec.url)
        for target in ("/api/../admin", "/api/%2e%2e/admin", "/api/x/../../admin"):
            status, _, _ = ask(g.port, target)
            assert status == 401, target  # it is /admin, and /admin needs a key
        status, _, a = ask(g.port, "/api/items/./1")
        assert status == 200 and a.body == b"ok"
        heads = rec.heads()
        assert [h.split(b"\r\n")[0] for h in heads] == [b"GET /public/items/1 HTTP/1.1"]
    finally:
        g.stop()
        rec.close()


def test_the_upstream_receives_exactly_the_routed_target_and_host(tmp_path) -> None:
    rec = Recorder()
    g = GatewayProc(tmp_path)
    try:
        start(g, rec.url)
        sent = [
            ("/x/./y/../z//w?q=%2F..&b=1#frag", "Shop.Example.Test.:80", b"/x/z/w?q=%2F..&b=1"),
            ("http://shop.example.test:8080/%7euser/a%20b", "shop.example.test:8080",
             b"/~user/a%20b"),
            ('/a"b<c>', "shop.example.test", b"/a%22b%3Cc%3E"),
        ]  # fmt: skip
        for target, host, _ in sent:
            status, _, _ = ask(g.port, target, host=host)
            assert status == 200
        heads = rec.heads()
        assert len(heads) == len(sent)
        for head, (_, _, path) in zip(heads, sent, strict=True):
            lines = head.split(b"\r\n")
            assert lines[0] == b"GET " + path + b" HTTP/1.1"
            hosts = [ln for ln in lines[1:] if ln.lower().startswith(b"host:")]
            assert len(hosts) == 1
        assert b"host: shop.example.test\r\n" in heads[0] + b"\r\n"
        assert b"x-forwarded-host: shop.example.test\r\n" in heads[0] + b"\r\n"
        assert b"host: shop.example.test:8080\r\n" in heads[1] + b"\r\n"
        access = g.wait_access(3, route="open")
        assert [r["path"] for r in access] == ["/x/z/w", "/~user/a%20b", "/a%22b%3Cc%3E"]
    finally:
        g.stop()
        rec.close()


def test_escaped_slashes_can_be_decoded_or_kept_when_the_listener_says_so(nginx, tmp_path) -> None:
    g = GatewayProc(tmp_path)
    try:
        start(g, nginx, escapedSlashes="decode")
        status, _, _ = ask(g.port, "/admin%2Fsecret")
        assert status == 401  # decoded: it is /admin/secret
        status, _, _ = ask(g.port, "/x/..%2Fadmin")
        assert status == 401
        g.apply(with_http(g, nginx, escapedSlashes="keep", mergeSlashes=False))
        rec_status, seen, _ = ask(g.port, "/files/a%2Fb", extra=f"apikey: {KEY}\r\n")
        assert rec_status == 200 and seen["request_uri"] == "/files/a%2Fb"  # forwarded encoded
    finally:
        g.stop()


# ------------------------------------------------------------------ differential, generated

PIECES = st.sampled_from(
    ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "admin", "%61dmin", "adm",
     "%69n", "in", "%25", "%20", "~", "?", "#", "%", "a", "%2e%2e", "..;", "x", "%41DMIN"]
)  # fmt: skip


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(PIECES, min_size=1, max_size=8))
def test_no_generated_path_reaches_nginx_admin_without_a_key(gw, pieces) -> None:
    target = "/" + "".join(pieces)
    status, seen, _ = ask(gw.port, target)
    if status == 200:
        assert seen["loc"] == "public", (target, seen)
        assert seen["uri"] != "/admin" and not seen["uri"].startswith("/admin/"), (target, seen)
    else:
        assert status in (400, 401), (target, status)
