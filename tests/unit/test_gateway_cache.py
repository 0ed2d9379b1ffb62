"""Response cache freshness and reuse (gateway/plugins/cache.py), RFC 9111.

`freshness` is tested as a table (lifetime from s-maxage, max-age, Expires or the
configured ttl, less the upstream's Age). The plugin itself is driven the way the
pipeline drives it (request hook, response hook, body taps) on a clock the test
moves, so expiry is checked at both sides of its edge without waiting.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest

from gateway.http.message import Headers, Response
from gateway.plugins.base import Context, Shared
from gateway.plugins.cache import freshness
from gateway.runtime import build_plugins
from tests.unit.gwunit import head, one_route

NOW = 1_800_000_000.0
"""A wall-clock time for Date and Expires."""


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def h(*fields: tuple[str, str]) -> Headers:
    return Headers((n.encode(), v.encode()) for n, v in fields)


FRESHNESS: list[tuple[str, Headers, float | None]] = [
    # (what, response headers, seconds it may be kept with a configured ttl of 60)
    ("no directives: the configured ttl", h(), 60),
    ("public alone: the configured ttl", h(("cache-control", "public")), 60),
    ("max-age", h(("cache-control", "max-age=100")), 100),
    ("s-maxage over max-age", h(("cache-control", "max-age=100, s-maxage=10")), 10),
    ("s-maxage over max-age, either order", h(("cache-control", "s-maxage=10, max-age=100")), 10),
    ("directives in two fields", h(("cache-control", "public"), ("cache-control", "max-age=7")), 7),
    ("names in any case", h(("cache-control", "Max-Age=9")), 9),
    ("a quoted value", h(("cache-control", 'max-age="12"')), 12),
    ("max-age=0", h(("cache-control", "max-age=0")), None),
    ("no-store", h(("cache-control", "no-store, max-age=100")), None),
    ("no-cache", h(("cache-control", "no-cache")), None),
    ("no-cache with fields", h(("cache-control", 'no-cache="set-cookie", max-age=9')), None),
    ("private", h(("cache-control", "private, max-age=100")), None),
    ("private with fields", h(("cache-control", 'max-age=9, private="x-user"')), None),
    ("upper case NO-STORE", h(("cache-control", "NO-STORE")), None),
    # a directive is a whole token: the tail of an extension is not max-age
    ("x-max-age is not max-age", h(("cache-control", "x-max-age=1000")), 60),
    ("x-max-age beside max-age", h(("cache-control", "max-age=10, x-max-age=1000")), 10),
    ("my-s-maxage is not s-maxage", h(("cache-control", "max-age=10, my-s-maxage=999")), 10),
    ("x-no-store is not no-store", h(("cache-control", "x-no-store, max-age=5")), 5),
    # RFC 9111 §4.2.1: a repeated directive with another value, or a bad one: stale
    ("max-age twice, two values", h(("cache-control", "max-age=100, max-age=5")), None),
    (
        "max-age in two fields, two values",
        h(("cache-control", "max-age=5"), ("cache-control", "max-age=500")),
        None,
    ),
    ("max-age twice, one value", h(("cache-control", "max-age=30, max-age=30")), 30),
    ("max-age not a number", h(("cache-control", "max-age=soon")), None),
    ("max-age negative", h(("cache-control", "max-age=-1")), None),
    ("max-age without a value", h(("cache-control", "max-age")), None),
    ("s-maxage not a number", h(("cache-control", "s-maxage=1e3, max-age=5")), None),
    # Age counts against the lifetime (RFC 9111 §4.2.3)
    ("Age", h(("cache-control", "max-age=100"), ("age", "30")), 70),
    ("Age against s-maxage", h(("cache-control", "s-maxage=100"), ("age", "99")), 1),
    ("Age equal to the lifetime", h(("cache-control", "max-age=100"), ("age", "100")), None),
    ("Age past the lifetime", h(("cache-control", "max-age=100"), ("age", "5000")), None),
    ("Age against the configured ttl", h(("age", "50")), 10),
    ("Age: first member", h(("cache-control", "max-age=100"), ("age", "30, 90")), 70),
    ("Age not a number: ignored", h(("cache-control", "max-age=100"), ("age", "old")), 100),
    ("Age negative: ignored", h(("cache-control", "max-age=100"), ("age", "-50")), 100),
    # Expires minus Date (RFC 9111 §4.2.1), invalid dates in the past (§5.3)
    ("Expires", h(("date", http_date(NOW)), ("expires", http_date(NOW + 120))), 120),
    (
        "Expires less Age",
        h(("date", http_date(NOW)), ("expires", http_date(NOW + 120)), ("age", "20")),
        100,
    ),
    (
        "Expires against Date, not our clock",
        h(("date", http_date(NOW - 1000)), ("expires", http_date(NOW - 900))),
        100,
    ),
    ("Expires without Date: against now", h(("expires", http_date(NOW + 50))), 50),
    ("Expires in the past", h(("date", http_date(NOW)), ("expires", http_date(NOW - 1))), None),
    ("Expires equal to Date", h(("date", http_date(NOW)), ("expires", http_date(NOW))), None),
    ("Expires: 0", h(("expires", "0")), None),
    ("Expires not a date", h(("expires", "tomorrow")), None),
    (
        "Expires twice, two dates",
        h(("expires", http_date(NOW + 10)), ("expires", http_date(NOW + 99))),
        None,
    ),
    (
        "Expires in RFC 850 form",
        h(("date", http_date(NOW)), ("expires", "Friday, 15-Jan-27 08:01:00 GMT")),
        60,
    ),
    (
        "Expires in asctime form",
        h(("date", "Sun Nov  6 08:49:37 1994"), ("expires", "Sun Nov  6 08:50:37 1994")),
        60,
    ),
    (
        "max-age over Expires",
        h(("cache-control", "max-age=10"), ("expires", http_date(NOW + 999))),
        10,
    ),
    ("max-age over a bad Expires", h(("cache-control", "max-age=10"), ("expires", "0")), 10),
]


@pytest.mark.parametrize(
    ("headers", "seconds"), [pytest.param(hh, s, id=n) for n, hh, s in FRESHNESS]
)
def test_freshness(headers: Headers, seconds: float | None) -> None:
    assert freshness(headers, 60.0, NOW) == seconds


# ---------------------------------------------------------------- the plugin


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(config: dict[str, Any] | None = None) -> tuple[Any, Clock]:
    cfg = one_route({"name": "cache", "config": config or {}})
    plugin = build_plugins(cfg.routes[0].plugins, Shared(), "route:r")["cache"]
    clock = Clock()
    plugin.clock = clock
    return plugin, clock


async def ask(
    plugin: Any,
    *,
    target: str = "/a",
    headers: tuple[tuple[str, str], ...] = (),
    answer: tuple[int, Headers, bytes] | None = None,
) -> tuple[str, Response | None]:
    """One request through the plugin: its X-Cache-Status, and the cached answer on a hit.
    On a miss the upstream `answer` (default: 200, max-age=100) goes through the response
    hook and the body taps, as the pipeline sends it."""
    fields = [(b"host", b"example.test"), *((n.encode(), v.encode()) for n, v in headers)]
    req = head(fields, target=target.encode()).request
    ctx = Context(req, "r")
    hit = await plugin.request(ctx)
    if hit is not None:
        return hit.headers.get(b"x-cache-status", b"").decode(), hit
    status, rh, body = answer or (200, h(("cache-control", "max-age=100")), b"body")
    rh = rh.copy()
    plugin.response(ctx, status, rh)
    for tap in ctx.taps:
        tap(body)
        tap(None)
    return rh.get(b"x-cache-status", b"").decode(), None


async def test_a_hit_is_served_until_its_freshness_ends_and_not_after() -> None:
    plugin, clock = cache()
    assert (await ask(plugin))[0] == "MISS"
    clock.now += 99.5
    state, hit = await ask(plugin)
    assert state == "HIT" and hit is not None and hit.body == b"body"
    clock.now += 1
    assert (await ask(plugin))[0] == "MISS"


async def test_the_upstreams_age_shortens_the_stay_and_shows_in_the_hits_age() -> None:
    plugin, clock = cache()
    answer = (200, h(("cache-control", "max-age=100"), ("age", "60")), b"x")
    assert (await ask(plugin, answer=answer))[0] == "MISS"
    clock.now += 25
    state, hit = await ask(plugin)
    assert state == "HIT" and hit is not None
    assert hit.headers.get_all(b"age") == [b"85"]  # 60 upstream + 25 here
    clock.now += 16  # 101 s old in all
    assert (await ask(plugin))[0] == "MISS"


async def test_a_fresh_hits_age_counts_from_when_it_was_stored() -> None:
    plugin, clock = cache()
    await ask(plugin)
    state, hit = await ask(plugin)
    assert state == "HIT" and hit is not None and hit.headers.get_all(b"age") == [b"0"]
    clock.now += 42
    _, hit = await ask(plugin)
    assert hit is not None and hit.headers.get_all(b"age") == [b"42"]


async def test_the_configured_ttl_applies_without_directives() -> None:
    plugin, clock = cache({"ttl": "5s"})
    assert (await ask(plugin, answer=(200, h(), b"x")))[0] == "MISS"
    clock.now += 4.5
    assert (await ask(plugin))[0] == "HIT"
    clock.now += 1
    assert (await ask(plugin))[0] == "MISS"


@pytest.mark.parametrize(
    "headers",
    [
        h(("cache-control", "no-store")),
        h(("cache-control", "max-age=100, max-age=1")),
        h(("expires", "0")),
        h(("cache-control", "max-age=100"), ("age", "100")),
        h(("cache-control", "max-age=100"), ("set-cookie", "s=1")),
        h(("cache-control", "max-age=100"), ("vary", "*")),
    ],
    ids=["no-store", "conflicting max-age", "Expires 0", "Age spent", "Set-Cookie", "Vary *"],
)
async def test_what_is_not_stored(headers: Headers) -> None:
    plugin, _ = cache()
    assert (await ask(plugin, answer=(200, headers, b"x")))[0] == "MISS"
    # the next request misses again: nothing was stored (a stored one would be a HIT)
    assert (await ask(plugin))[0] == "MISS"
    assert (await ask(plugin))[0] == "HIT"  # (and the default answer is stored)


async def test_vary_keeps_variants_apart() -> None:
    plugin, _ = cache()
    vary = h(("cache-control", "max-age=100"), ("vary", "Accept-Language"))
    en = (("accept-language", "en"),)
    de = (("accept-language", "de"),)
    assert (await ask(plugin, headers=en, answer=(200, vary, b"hello")))[0] == "MISS"
    assert (await ask(plugin, headers=de, answer=(200, vary, b"hallo")))[0] == "MISS"
    for headers, body in ((en, b"hello"), (de, b"hallo")):
        state, hit = await ask(plugin, headers=headers)
        assert state == "HIT" and hit is not None and hit.body == body
    # no Accept-Language is a variant of its own, and so are two values
    assert (await ask(plugin, answer=(200, vary, b"?")))[0] == "MISS"
    assert (await ask(plugin, headers=(*en, *de), answer=(200, vary, b"?")))[0] == "MISS"
    state, hit = await ask(plugin, headers=en)
    assert state == "HIT" and hit is not None and hit.body == b"hello"


async def test_a_request_with_credentials_only_gets_shared_answers() -> None:
    plugin, _ = cache()
    auth = (("authorization", "Bearer x"),)
    await ask(plugin, target="/plain")
    assert (await ask(plugin, target="/plain", headers=auth))[0] == "MISS"
    shared = (200, h(("cache-control", "public, max-age=100")), b"s")
    await ask(plugin, target="/public", answer=shared)
    assert (await ask(plugin, target="/public", headers=auth))[0] == "HIT"


@pytest.mark.parametrize("directive", ["no-cache", "no-store"])
async def test_a_request_that_says_no_cache_bypasses_it(directive: str) -> None:
    plugin, _ = cache()
    await ask(plugin)
    assert (await ask(plugin, headers=(("cache-control", directive),)))[0] == "BYPASS"
    assert (await ask(plugin))[0] == "HIT"
