"""Route filters (gateway/filters.py): header modifiers, path rewrites, redirects.

As the pipeline runs them: configs through the public parser, requests through the
engine's head reader, the match the filter rewrites from chosen by the router. The
rewrite table is the Gateway API's (HTTPPathModifier, ReplacePrefixMatch).
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.common.errors import FieldError
from gateway.config import parse_config
from gateway.filters import modify_headers, new_path, redirect
from gateway.http.errors import HttpError
from gateway.http.head import HeadRules
from gateway.http.message import Headers, Request
from gateway.http.uri import PathRules
from gateway.routing import Candidate, Router
from tests.unit.gwunit import head


def config(filters: list[dict[str, Any]], matches: list[dict[str, Any]] | None = None) -> Any:
    route: dict[str, Any] = {"name": "r", "filters": filters}
    if matches is not None:
        route["matches"] = matches
    if not any(f["type"] == "RequestRedirect" for f in filters):
        route["backendRefs"] = [{"name": "b"}]
    return parse_config(
        {
            "listeners": [{"name": "web", "address": "127.0.0.1:8080"}],
            "backends": [{"name": "b", "endpoints": ["http://127.0.0.1:9"]}],
            "routes": [route],
        }
    )


def request(
    target: str,
    host: str = "example.test",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    scheme: str = "http",
    rules: HeadRules | None = None,
) -> Request:
    return head(
        [(b"host", host.encode()), *headers], target=target.encode(), scheme=scheme, rules=rules
    ).request


def routed(cfg: Any, req: Request) -> Candidate | None:
    return Router(cfg.routes).route(req)


def prefix(value: str) -> list[dict[str, Any]]:
    return [{"path": {"type": "PathPrefix", "value": value}}]


# ---------------------------------------------------------------- header modifiers

HEADER_CASES = [
    (
        "set replaces every value",
        {"set": [{"name": "X-A", "value": "new"}]},
        [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-a", b"3")],
        [(b"x-b", b"2"), (b"x-a", b"new")],
    ),
    ("set adds an absent field", {"set": [{"name": "x-a", "value": "v"}]}, [], [(b"x-a", b"v")]),
    (
        "add keeps the values there",
        {"add": [{"name": "X-A", "value": "2"}]},
        [(b"x-a", b"1")],
        [(b"x-a", b"1"), (b"x-a", b"2")],
    ),
    (
        "remove takes every value, any case in the config",
        {"remove": ["X-Secret"]},
        [(b"x-secret", b"1"), (b"x-keep", b"k"), (b"x-secret", b"2")],
        [(b"x-keep", b"k")],
    ),
    ("remove of an absent field", {"remove": ["x-none"]}, [(b"x-a", b"1")], [(b"x-a", b"1")]),
    (
        "remove, then set, then add",
        {
            "remove": ["x-a"],
            "set": [{"name": "x-a", "value": "set"}],
            "add": [{"name": "x-a", "value": "added"}],
        },
        [(b"x-a", b"old")],
        [(b"x-a", b"set"), (b"x-a", b"added")],
    ),
    (
        "several of each",
        {
            "set": [{"name": "x-1", "value": "a"}, {"name": "x-2", "value": "b"}],
            "remove": ["x-3", "x-4"],
        },
        [(b"x-3", b"c"), (b"x-4", b"d"), (b"x-5", b"e")],
        [(b"x-5", b"e"), (b"x-1", b"a"), (b"x-2", b"b")],
    ),
]


@pytest.mark.parametrize(
    ("modifier", "before", "after"),
    [pytest.param(m, b, a, id=name) for name, m, b, a in HEADER_CASES],
)
@pytest.mark.parametrize("direction", ["RequestHeaderModifier", "ResponseHeaderModifier"])
def test_header_modifiers(
    direction: str, modifier: dict[str, Any], before: list, after: list
) -> None:
    key = direction[0].lower() + direction[1:]
    filters = config([{"type": direction, key: modifier}]).routes[0].filters
    mod = filters.request_headers if direction.startswith("Request") else filters.response_headers
    headers = Headers(before)
    modify_headers(headers, mod)
    assert headers.items == after


# ---------------------------------------------------------------- path rewrites

# Gateway API, HTTPPathModifier: request path, the matched prefix, the replacement, the result.
PREFIX_REWRITES = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
    ("/foo/bar", "/foo", "/", "/bar"),
    ("/foo/bar/baz", "/foo/bar", "/x", "/x/baz"),
    ("/anything", "/", "/v2", "/v2/anything"),
    ("/", "/", "/v2", "/v2/"),  # (prefix / matches nothing of "/": its slash stays, as /foo/)
]


@pytest.mark.parametrize(("path", "matched", "replacement", "result"), PREFIX_REWRITES)
def test_replace_prefix_match(path: str, matched: str, replacement: str, result: str) -> None:
    cfg = config(
        [
            {
                "type": "URLRewrite",
                "urlRewrite": {
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": replacement}
                },
            }
        ],
        prefix(matched),
    )
    req = request(path)
    cand = routed(cfg, req)
    assert cand is not None
    rewrite = cand.route.filters.rewrite
    assert new_path(req.path, cand.match.path, rewrite.path) == result


def test_the_prefix_replaced_is_the_one_that_matched() -> None:
    # A route with two prefixes rewrites each request from the prefix it matched by.
    cfg = config(
        [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}},
            }
        ],
        [*prefix("/api"), *prefix("/api/old")],
    )
    for target, want in [("/api/x", "/v2/x"), ("/api/old/x", "/v2/x"), ("/api/older", "/v2/older")]:
        req = request(target)
        cand = routed(cfg, req)
        assert cand is not None
        assert new_path(req.path, cand.match.path, cand.route.filters.rewrite.path) == want


def test_replace_full_path_ignores_the_request_path() -> None:
    cfg = config(
        [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/only"}},
            }
        ],
        prefix("/api"),
    )
    for target in ("/api", "/api/a/b", "/api/x?q=1"):
        req = request(target)
        cand = routed(cfg, req)
        assert cand is not None
        assert new_path(req.path, cand.match.path, cand.route.filters.rewrite.path) == "/only"


# Targets that try to climb out of /api, written every way a client can. Each is refused
# (400), routes elsewhere, or is rewritten to a path under /v2 with no dot segment: never
# a path the upstream would resolve to something outside /v2.
ESCAPES = [
    "/api/..",
    "/api/../admin",
    "/api/x/../../admin",
    "/api/%2e%2e/admin",
    "/api/%2E%2E/%2E%2E/etc/passwd",
    "/api/.%2e/admin",
    "/api/./../admin",
    "/api//../admin",
    "/api/..;/admin",
    "/api/..%2fadmin",
    "/api/..%5cadmin",
    "/api\\..\\admin",
    "/api/%252e%252e/admin",
    "/api/..%00/admin",
]


@pytest.mark.parametrize("escaped", ["reject", "decode"])
@pytest.mark.parametrize("target", ESCAPES)
def test_a_prefix_rewrite_cannot_be_climbed_out_of(target: str, escaped: str) -> None:
    cfg = config(
        [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}},
            }
        ],
        prefix("/api"),
    )
    rules = HeadRules(PathRules(escaped_slashes=escaped))
    try:
        req = request(target, rules=rules)
    except HttpError as exc:
        assert exc.status == 400
        return
    cand = routed(cfg, req)
    if cand is None:
        assert not (req.path == "/api" or req.path.startswith("/api/"))
        return
    out = new_path(req.path, cand.match.path, cand.route.filters.rewrite.path)
    assert out == "/v2" or out.startswith("/v2/")
    segments = out.split("/")
    assert ".." not in segments and "." not in segments
    assert "%2E" not in out.upper().replace("%252E", "")  # (no encoded dot left to decode)


# ---------------------------------------------------------------- redirects

REDIRECTS = [
    # (RequestRedirect config, scheme, host header, target, status, Location)
    ({}, "http", "example.test", "/a?x=1", 302, "http://example.test/a?x=1"),
    ({"scheme": "https"}, "http", "example.test", "/a", 302, "https://example.test/a"),
    # a new scheme without a port: the scheme's well-known port, which is left out
    ({"scheme": "https"}, "http", "example.test:8080", "/a", 302, "https://example.test/a"),
    (
        {"scheme": "https", "port": 8443},
        "http",
        "example.test",
        "/",
        302,
        "https://example.test:8443/",
    ),
    ({"scheme": "https", "port": 443}, "http", "example.test", "/", 302, "https://example.test/"),
    (
        {"scheme": "http", "port": 443},
        "https",
        "example.test",
        "/",
        302,
        "http://example.test:443/",
    ),
    # no scheme and no port: the port the request came to stays
    (
        {"hostname": "other.test"},
        "http",
        "example.test:8080",
        "/a",
        302,
        "http://other.test:8080/a",
    ),
    ({"hostname": "other.test"}, "http", "example.test", "/a", 302, "http://other.test/a"),
    ({"port": 9000}, "http", "example.test:8080", "/a", 302, "http://example.test:9000/a"),
    ({"port": 80}, "http", "example.test:8080", "/a", 302, "http://example.test/a"),
    ({}, "http", "[::1]:8080", "/a", 302, "http://[::1]:8080/a"),
    ({}, "http", "[::1]", "/a", 302, "http://[::1]/a"),
    ({}, "http", "EXAMPLE.test.", "/a", 302, "http://example.test/a"),  # the normalized host
    ({"statusCode": 301}, "http", "example.test", "/a", 301, "http://example.test/a"),
    ({"statusCode": 308}, "http", "example.test", "/a", 308, "http://example.test/a"),
    (
        {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}},
        "http",
        "example.test",
        "/api/x?q=1",
        302,
        "http://example.test/new?q=1",
    ),
    (
        {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}},
        "http",
        "example.test",
        "/api/x/y?q=1&r=2",
        302,
        "http://example.test/v2/x/y?q=1&r=2",
    ),
    # the normalized path is what is redirected to: no dot segment reaches the Location
    ({}, "http", "example.test", "/api/a/../b", 302, "http://example.test/api/b"),
]


@pytest.mark.parametrize(("body", "scheme", "host", "target", "status", "location"), REDIRECTS)
def test_redirect(
    body: dict[str, Any], scheme: str, host: str, target: str, status: int, location: str
) -> None:
    cfg = config([{"type": "RequestRedirect", "requestRedirect": body}], prefix("/"))
    if "path" in body and body["path"]["type"] == "ReplacePrefixMatch":
        cfg = config([{"type": "RequestRedirect", "requestRedirect": body}], prefix("/api"))
    req = request(target, host, scheme=scheme)
    cand = routed(cfg, req)
    assert cand is not None
    answer = redirect(req, cand.match.path, cand.route.filters.redirect)
    assert answer.status == status
    assert answer.headers.get_all(b"location") == [location.encode()]


# ---------------------------------------------------------------- filter configs refused

BAD_FILTERS = [
    # (filters, matches, the field named, words of the reason)
    (
        [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "x", "value": "a\r\nb: c"}]},
            }
        ],
        None,
        "routes[0].filters[0].requestHeaderModifier.set[0].value",
        "one line",
    ),
    (
        [
            {
                "type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"add": [{"name": "x y", "value": "1"}]},
            }
        ],
        None,
        "routes[0].filters[0].responseHeaderModifier.add[0].name",
        "not a header name",
    ),
    (
        [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"replace": []}}],
        None,
        "routes[0].filters[0].requestHeaderModifier.replace",
        "",
    ),
    ([{"type": "Mirror"}], None, "routes[0].filters[0].type", "not one of"),
    (
        [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
        ],
        None,
        "routes[0].filters[1].type",
        "twice",
    ),
    (
        [{"type": "RequestRedirect", "requestRedirect": {"scheme": "ftp"}}],
        None,
        "routes[0].filters[0].requestRedirect.scheme",
        "http or https",
    ),
    (
        [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}],
        None,
        "routes[0].filters[0].requestRedirect.statusCode",
        "not a redirect status",
    ),
    (
        [{"type": "RequestRedirect", "requestRedirect": {"port": 70000}}],
        None,
        "routes[0].filters[0].requestRedirect.port",
        "",
    ),
    (
        [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "x"}},
            }
        ],
        None,
        "routes[0].filters[0].urlRewrite.path.replaceFullPath",
        "start with /",
    ),
    (
        [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceSomething"}}}],
        None,
        "routes[0].filters[0].urlRewrite.path.type",
        "ReplaceFullPath or ReplacePrefixMatch",
    ),
    (
        [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}},
            }
        ],
        [{"path": {"type": "Exact", "value": "/a"}}],
        "routes[0].filters[0].urlRewrite.path",
        "PathPrefix",
    ),
    (
        [
            {"type": "RequestRedirect", "requestRedirect": {}},
            {"type": "URLRewrite", "urlRewrite": {}},
        ],
        None,
        "routes[0].filters",
        "cannot be used together",
    ),
]


@pytest.mark.parametrize(("filters", "matches", "field", "reason"), BAD_FILTERS)
def test_a_bad_filter_is_named(
    filters: list[dict[str, Any]], matches: list[dict[str, Any]] | None, field: str, reason: str
) -> None:
    with pytest.raises(FieldError) as exc:
        config(filters, matches)
    assert exc.value.field == field
    assert reason in exc.value.reason
