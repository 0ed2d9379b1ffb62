"""Route choice (gateway/routing.py), one table per rule, configs through the public parser.

Precedence is the Gateway API's (HTTPRouteRule, "matching precedence"): hostnames first
(exact, then the longest matching wildcard, then routes without hostnames); then an Exact
path, the longest PathPrefix, a method, more header matches, more query matches; then the
older route; within a route, its first matching rule. RegularExpression paths rank after
every prefix (the spec leaves them to the implementation). Requests are made by the
engine's own head reader, so what is matched is the normalized request a client causes.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import parse_config
from gateway.routing import ROUTE_CACHE_SIZE, Router
from tests.unit.gwunit import head


def router(*routes: dict[str, Any]) -> Router:
    config = parse_config(
        {
            "listeners": [{"name": "web", "address": "127.0.0.1:8080"}],
            "backends": [{"name": "b", "endpoints": ["http://127.0.0.1:9"]}],
            "routes": [{"backendRefs": [{"name": "b"}], **r} for r in routes],
        }
    )
    return Router(config.routes)


def routed(
    r: Router,
    target: str,
    *,
    host: str = "example.test",
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
) -> str | None:
    """`route#rule` of the chosen match, or None for a 404."""
    # (names lower-cased, as both engines hand them to read_head)
    fields = [(b"host", host.encode()), *((n.lower().encode(), v.encode()) for n, v in headers)]
    found = r.route(head(fields, method=method, target=target.encode()).request)
    return None if found is None else f"{found.route.name}#{found.rule}"


def path(ptype: str, value: str) -> dict[str, Any]:
    return {"path": {"type": ptype, "value": value}}


# ---------------------------------------------------------------- one path match

PATHS = [
    # (type, value, request path, matches)
    ("Exact", "/a", "/a", True),
    ("Exact", "/a", "/a/", False),
    ("Exact", "/a", "/ab", False),
    ("Exact", "/a", "/A", False),  # paths are case-sensitive
    ("PathPrefix", "/api", "/api", True),
    ("PathPrefix", "/api", "/api/", True),
    ("PathPrefix", "/api", "/api/v1/users", True),
    ("PathPrefix", "/api", "/apis", False),  # whole segments only
    ("PathPrefix", "/api", "/ap", False),
    ("PathPrefix", "/api", "/API/v1", False),
    ("PathPrefix", "/api/", "/api", True),  # a trailing / is ignored
    ("PathPrefix", "/api/", "/api/x", True),
    ("PathPrefix", "/api/", "/apix", False),
    ("PathPrefix", "/", "/anything/at/all", True),
    ("PathPrefix", "/api", "/api/../admin", False),  # dot segments resolved before matching
    ("PathPrefix", "/admin", "/api/../admin", True),
    ("PathPrefix", "/api", "/%61pi/x", True),  # unreserved escapes decoded before matching
    ("PathPrefix", "/api", "/api?x=/admin", True),  # the query is not the path
    ("PathPrefix", "/admin", "/api?x=/admin", False),
    ("RegularExpression", "/v[0-9]+/.*", "/v1/x", True),
    ("RegularExpression", "/v[0-9]+/.*", "/x/v1/x", False),  # the whole path must match
    ("RegularExpression", "/v[0-9]+/.*", "/v1", False),
    ("RegularExpression", "/v[0-9]+", "/v12/x", False),
]


@pytest.mark.parametrize(("ptype", "value", "target", "hit"), PATHS)
def test_a_path_match(ptype: str, value: str, target: str, hit: bool) -> None:
    r = router({"name": "only", "matches": [path(ptype, value)]})
    assert routed(r, target) == ("only#0" if hit else None)


# ---------------------------------------------------------------- headers, query, method

HEADERS = [
    # (match, request headers, matches)
    ({"name": "X-Env", "value": "canary"}, (("x-env", "canary"),), True),
    ({"name": "x-env", "value": "canary"}, (("X-ENV", "canary"),), True),  # names: any case
    ({"name": "x-env", "value": "canary"}, (("x-env", "Canary"),), False),  # values: exact
    ({"name": "x-env", "value": "canary"}, (), False),
    ({"name": "x-env", "value": "canary"}, (("x-env", "canary2"),), False),
    # a repeated field matches as its values joined by ", " (RFC 9110 §5.3)
    ({"name": "x-env", "value": "a, b"}, (("x-env", "a"), ("x-env", "b")), True),
    ({"name": "x-env", "value": "a"}, (("x-env", "a"), ("x-env", "b")), False),
    ({"name": "x-env", "type": "RegularExpression", "value": "v[0-9]"}, (("x-env", "v1"),), True),
    ({"name": "x-env", "type": "RegularExpression", "value": "v[0-9]"}, (("x-env", "v1x"),), False),
    # an absent header matches nothing, not even a pattern that matches the empty string
    ({"name": "x-env", "type": "RegularExpression", "value": ".*"}, (), False),
    ({"name": "x-env", "type": "RegularExpression", "value": ".*"}, (("x-env", ""),), True),
]


@pytest.mark.parametrize(("match", "headers", "hit"), HEADERS)
def test_a_header_match(match: dict[str, str], headers: tuple, hit: bool) -> None:
    r = router({"name": "only", "matches": [{"headers": [match]}]})
    assert routed(r, "/", headers=headers) == ("only#0" if hit else None)


QUERIES = [
    ({"name": "v", "value": "2"}, "/?v=2", True),
    ({"name": "v", "value": "2"}, "/?v=3", False),
    ({"name": "v", "value": "2"}, "/?V=2", False),  # names are case-sensitive
    ({"name": "v", "value": "2"}, "/?w=2", False),
    ({"name": "v", "value": "2"}, "/?v=2&v=3", True),  # the first value counts
    ({"name": "v", "value": "2"}, "/?v=3&v=2", False),
    ({"name": "v", "value": "a b"}, "/?v=a%20b", True),  # decoded before comparing
    ({"name": "v", "type": "RegularExpression", "value": "[0-9]+"}, "/?v=42", True),
    ({"name": "v", "type": "RegularExpression", "value": "[0-9]+"}, "/?v=42a", False),
]


@pytest.mark.parametrize(("match", "target", "hit"), QUERIES)
def test_a_query_match(match: dict[str, str], target: str, hit: bool) -> None:
    r = router({"name": "only", "matches": [{"queryParams": [match]}]})
    assert routed(r, target) == ("only#0" if hit else None)


@pytest.mark.parametrize(
    ("method", "hit"), [("GET", True), ("POST", False), ("HEAD", False), ("get", False)]
)
def test_a_method_match(method: str, hit: bool) -> None:
    r = router({"name": "only", "matches": [{"method": "GET"}]})
    assert routed(r, "/", method=method) == ("only#0" if hit else None)


def test_every_condition_of_a_match_must_hold() -> None:
    r = router(
        {
            "name": "only",
            "matches": [
                {
                    **path("PathPrefix", "/api"),
                    "method": "PUT",
                    "headers": [{"name": "x-a", "value": "1"}],
                    "queryParams": [{"name": "q", "value": "1"}],
                }
            ],
        }
    )
    full = {"method": "PUT", "headers": (("x-a", "1"),)}
    assert routed(r, "/api?q=1", **full) == "only#0"
    assert routed(r, "/other?q=1", **full) is None
    assert routed(r, "/api?q=1", method="POST", headers=(("x-a", "1"),)) is None
    assert routed(r, "/api?q=1", method="PUT") is None
    assert routed(r, "/api?q=2", **full) is None


# ---------------------------------------------------------------- precedence

# Each case: routes in the order they are defined, a request, the route#rule that must win.
# Every case puts the route that must win somewhere other than first where it can, so
# definition order alone cannot pass it.
PRECEDENCE: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
    (
        "exact beats a prefix of the same path",
        [
            {"name": "prefix", "matches": [path("PathPrefix", "/a")]},
            {"name": "exact", "matches": [path("Exact", "/a")]},
        ],
        {"target": "/a"},
        "exact#0",
    ),
    (
        "exact beats a longer prefix",
        [
            {"name": "prefix", "matches": [path("PathPrefix", "/a/b/c/d")]},
            {"name": "exact", "matches": [path("Exact", "/a/b/c/d")]},
        ],
        {"target": "/a/b/c/d"},
        "exact#0",
    ),
    (
        "the longest prefix wins",
        [
            {"name": "root", "matches": [path("PathPrefix", "/")]},
            {"name": "api", "matches": [path("PathPrefix", "/api")]},
            {"name": "v1", "matches": [path("PathPrefix", "/api/v1")]},
        ],
        {"target": "/api/v1/x"},
        "v1#0",
    ),
    (
        "a longer prefix that does not match whole segments is passed over",
        [
            {"name": "api", "matches": [path("PathPrefix", "/api")]},
            {"name": "apis", "matches": [path("PathPrefix", "/apis")]},
        ],
        {"target": "/api/s"},
        "api#0",
    ),
    (
        "any prefix beats a regular expression",
        [
            {"name": "regex", "matches": [path("RegularExpression", "/api/.*")]},
            {"name": "root", "matches": [path("PathPrefix", "/")]},
        ],
        {"target": "/api/x"},
        "root#0",
    ),
    (
        "the longer regular expression first",
        [
            {"name": "short", "matches": [path("RegularExpression", "/.*")]},
            {"name": "long", "matches": [path("RegularExpression", "/api/[a-z]+")]},
        ],
        {"target": "/api/x"},
        "long#0",
    ),
    (
        "the path decides before the method",
        [
            {"name": "method", "matches": [{**path("PathPrefix", "/api"), "method": "GET"}]},
            {"name": "longer", "matches": [path("PathPrefix", "/api/v1")]},
        ],
        {"target": "/api/v1"},
        "longer#0",
    ),
    (
        "a method beats none",
        [
            {"name": "any", "matches": [path("PathPrefix", "/api")]},
            {"name": "get", "matches": [{**path("PathPrefix", "/api"), "method": "GET"}]},
        ],
        {"target": "/api"},
        "get#0",
    ),
    (
        "a method beats more headers",
        [
            {
                "name": "headers",
                "matches": [
                    {"headers": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "1"}]}
                ],
            },
            {"name": "get", "matches": [{"method": "GET"}]},
        ],
        {"target": "/", "headers": (("x-a", "1"), ("x-b", "1"))},
        "get#0",
    ),
    (
        "more header matches win",
        [
            {"name": "one", "matches": [{"headers": [{"name": "x-a", "value": "1"}]}]},
            {
                "name": "two",
                "matches": [
                    {"headers": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "1"}]}
                ],
            },
        ],
        {"target": "/", "headers": (("x-a", "1"), ("x-b", "1"))},
        "two#0",
    ),
    (
        "headers beat query parameters",
        [
            {"name": "query", "matches": [{"queryParams": [{"name": "q", "value": "1"}]}]},
            {"name": "header", "matches": [{"headers": [{"name": "x-a", "value": "1"}]}]},
        ],
        {"target": "/?q=1", "headers": (("x-a", "1"),)},
        "header#0",
    ),
    (
        "more query matches win",
        [
            {"name": "one", "matches": [{"queryParams": [{"name": "a", "value": "1"}]}]},
            {
                "name": "two",
                "matches": [
                    {
                        "queryParams": [
                            {"name": "a", "value": "1"},
                            {"name": "b", "value": "1"},
                        ]
                    }
                ],
            },
        ],
        {"target": "/?a=1&b=1"},
        "two#0",
    ),
    (
        "a tie goes to the route defined first",
        [
            {"name": "zeta", "matches": [path("PathPrefix", "/api")]},
            {"name": "alpha", "matches": [path("PathPrefix", "/api")]},
        ],
        {"target": "/api"},
        "zeta#0",
    ),
    (
        "within a route, the first matching rule of a tie",
        [
            {"name": "r", "matches": [path("PathPrefix", "/x"), path("PathPrefix", "/api")]},
            {"name": "s", "matches": [path("PathPrefix", "/api")]},
        ],
        {"target": "/api/1"},
        "r#1",
    ),
    (
        "within a route, the more precise rule even when listed last",
        [{"name": "r", "matches": [path("PathPrefix", "/"), path("Exact", "/a")]}],
        {"target": "/a"},
        "r#1",
    ),
    (
        "a more precise match that does not hold is passed over",
        [
            {"name": "any", "matches": [path("PathPrefix", "/")]},
            {"name": "post", "matches": [{**path("Exact", "/a"), "method": "POST"}]},
        ],
        {"target": "/a"},
        "any#0",
    ),
]


@pytest.mark.parametrize(
    ("routes", "request_", "winner"),
    [pytest.param(routes, req, win, id=name) for name, routes, req, win in PRECEDENCE],
)
def test_precedence(routes: list[dict[str, Any]], request_: dict[str, Any], winner: str) -> None:
    r = router(*routes)
    assert routed(r, request_.pop("target"), **request_) == winner


# ---------------------------------------------------------------- hostnames

HOSTS = [
    # (routes: name -> hostnames (and an optional path), request host, path, winner)
    ("exact host", {"a": ["api.example.com"]}, "api.example.com", "/", "a#0"),
    ("another host", {"a": ["api.example.com"]}, "www.example.com", "/", None),
    ("host case and trailing dot", {"a": ["API.Example.com"]}, "api.EXAMPLE.com.", "/", "a#0"),
    (
        "the port is not part of the host",
        {"a": ["api.example.com"]},
        "api.example.com:8443",
        "/",
        "a#0",
    ),
    ("wildcard: one label", {"w": ["*.example.com"]}, "a.example.com", "/", "w#0"),
    ("wildcard: several labels", {"w": ["*.example.com"]}, "a.b.example.com", "/", "w#0"),
    ("wildcard: not the domain itself", {"w": ["*.example.com"]}, "example.com", "/", None),
    ("wildcard: whole labels", {"w": ["*.example.com"]}, "badexample.com", "/", None),
    ("wildcard: not a longer suffix", {"w": ["*.example.com"]}, "a.example.com.evil", "/", None),
    ("no hostnames: any host", {"any": []}, "whatever.test", "/", "any#0"),
]


@pytest.mark.parametrize(
    ("routes", "host", "target", "winner"),
    [pytest.param(routes, h, t, w, id=name) for name, routes, h, t, w in HOSTS],
)
def test_a_hostname_match(
    routes: dict[str, list[str]], host: str, target: str, winner: str | None
) -> None:
    r = router(*({"name": n, "hostnames": hs} for n, hs in routes.items()))
    assert routed(r, target, host=host) == winner


def test_host_precedence_exact_then_longest_wildcard_then_none() -> None:
    # Defined in the reverse of their precedence, and the less specific hosts with the more
    # specific paths: the hostname decides first (Gateway API: "largest number of characters
    # in a matching non-wildcard hostname", then in a matching hostname).
    r = router(
        {"name": "any", "matches": [path("Exact", "/x")]},
        {"name": "wide", "hostnames": ["*.example.com"], "matches": [path("Exact", "/x")]},
        {"name": "narrow", "hostnames": ["*.b.example.com"], "matches": [path("PathPrefix", "/x")]},
        {"name": "exact", "hostnames": ["a.b.example.com"], "matches": [path("PathPrefix", "/")]},
    )
    assert routed(r, "/x", host="a.b.example.com") == "exact#0"
    assert routed(r, "/x", host="c.b.example.com") == "narrow#0"
    assert routed(r, "/x", host="c.example.com") == "wide#0"
    assert routed(r, "/x", host="other.test") == "any#0"


def test_a_host_falls_through_to_less_specific_hosts_when_no_path_matches() -> None:
    r = router(
        {"name": "any", "matches": [path("PathPrefix", "/")]},
        {"name": "wild", "hostnames": ["*.example.com"], "matches": [path("PathPrefix", "/w")]},
        {"name": "exact", "hostnames": ["a.example.com"], "matches": [path("PathPrefix", "/e")]},
    )
    assert routed(r, "/e", host="a.example.com") == "exact#0"
    assert routed(r, "/w", host="a.example.com") == "wild#0"
    assert routed(r, "/z", host="a.example.com") == "any#0"


def test_a_route_with_several_hostnames_serves_each() -> None:
    r = router({"name": "r", "hostnames": ["a.test", "*.b.test"]}, {"name": "s"})
    assert routed(r, "/", host="a.test") == "r#0"
    assert routed(r, "/", host="x.b.test") == "r#0"
    assert routed(r, "/", host="c.test") == "s#0"


# ---------------------------------------------------------------- the remembered answers


def test_remembered_answers_are_kept_apart_by_host_method_and_path() -> None:
    # Without header or query matches the router remembers answers by (host, method, path):
    # asking in every order must give what a fresh router gives.
    routes = (
        {"name": "get", "hostnames": ["a.test"], "matches": [{"method": "GET"}]},
        {"name": "b", "hostnames": ["b.test"], "matches": [path("PathPrefix", "/api")]},
        {"name": "any", "matches": [path("PathPrefix", "/")]},
    )
    asks = [
        ("a.test", "GET", "/api", "get#0"),
        ("a.test", "POST", "/api", "any#0"),
        ("b.test", "GET", "/api", "b#0"),
        ("b.test", "GET", "/other", "any#0"),
    ]
    r = router(*routes)
    for _ in range(2):
        for host, method, target, want in asks + asks[::-1]:
            assert routed(r, target, host=host, method=method) == want


def test_remembered_answers_stay_right_past_the_cache_size() -> None:
    r = router(
        {"name": "api", "matches": [path("PathPrefix", "/api")]},
        {"name": "other", "matches": [path("PathPrefix", "/")]},
    )
    for i in range(ROUTE_CACHE_SIZE + 10):
        assert routed(r, f"/api/{i}") == "api#0"
    assert routed(r, "/x") == "other#0"
    assert routed(r, "/api/0") == "api#0"


def test_header_matches_are_never_answered_from_memory() -> None:
    r = router(
        {"name": "canary", "matches": [{"headers": [{"name": "x-env", "value": "canary"}]}]},
        {"name": "stable"},
    )
    assert routed(r, "/", headers=(("x-env", "canary"),)) == "canary#0"
    assert routed(r, "/") == "stable#0"
    assert routed(r, "/", headers=(("x-env", "canary"),)) == "canary#0"
