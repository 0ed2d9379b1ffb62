"""Gateway plugins with real peers: rate limits (local and redis-server), cache, CORS.

The cluster-wide limit is checked the way it is used: two gateway processes
(two workers each) share one redis-server, 200 requests arrive at once, split
over both, and exactly `limit` of them pass.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from .gwkit import GatewayProc, start_echo, start_redis, stop


def route(name: str, *plugins: dict, **extra) -> dict:
    return {
        "name": name,
        "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
        "backendRefs": [{"name": "echo"}],
        "plugins": list(plugins),
        **extra,
    }


def rate_limit(limit: int, window: str, **config) -> dict:
    return {"name": "rate-limit", "config": {"limit": limit, "window": window, **config}}


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-plugins")
    echo = start_echo(tmp, "a")
    redis = start_redis(tmp)
    yield tmp, echo, redis
    stop(echo.proc)
    assert redis.proc is not None
    stop(redis.proc)


def base(echo, routes, **extra) -> dict:
    return {
        "workers": 2,
        "backends": [{"name": "echo", "endpoints": [echo.url]}],
        "consumers": [
            {"name": "alice", "apiKeys": ["alice-key-123"]},
            {"name": "bob", "apiKeys": ["bob-key-4567"],
             "plugins": [rate_limit(2, "1m")]},
        ],
        "routes": routes,
        **extra,
    }  # fmt: skip


@pytest.fixture
def gateway(peers, tmp_path):
    started: list[GatewayProc] = []

    def start(config, subdir="gw"):
        (tmp_path / subdir).mkdir()
        gw = GatewayProc(tmp_path / subdir).start(config)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


async def fetch(session, url, headers=None, method="GET"):
    async with session.request(method, url, headers=headers or {}) as r:
        return r.status, r.headers, await r.read()


# ------------------------------------------------------------------ rate limits


async def test_local_limit_headers_and_retry_after(peers, gateway):
    _, echo, _ = peers
    gw = gateway(base(echo, [route("local", rate_limit(5, "30s", by="ip"))], workers=1))
    async with aiohttp.ClientSession() as s:
        answers = [await fetch(s, gw.url("/local")) for _ in range(7)]
    assert [a[0] for a in answers] == [200] * 5 + [429] * 2
    assert [int(a[1]["RateLimit-Remaining"]) for a in answers[:5]] == [4, 3, 2, 1, 0]
    assert all(a[1]["RateLimit-Limit"] == "5" for a in answers)
    assert 0 < int(answers[5][1]["RateLimit-Reset"]) <= 30
    assert 1 <= int(answers[5][1]["Retry-After"]) <= 30
    text = gw.metrics()
    assert 'slipstream_gateway_ratelimit_total{outcome="limited",route="local"} 2.0' in text


async def test_limits_by_consumer_header_and_consumer_scoped_plugins(peers, gateway):
    _, echo, redis = peers
    key_auth = {"name": "key-auth"}
    gw = gateway(
        base(
            echo,
            [
                route("per-consumer", key_auth, rate_limit(3, "1m", store="redis",
                                                           redis={"url": redis.url})),
                route("per-header", rate_limit(2, "1m", by="header", header="x-tenant",
                                               store="redis", redis={"url": redis.url})),
                route("roomy", key_auth),
            ],
        )
    )  # fmt: skip
    async with aiohttp.ClientSession() as s:
        alice = [(await fetch(s, gw.url("/per-consumer"), {"apikey": "alice-key-123"}))[0]
                 for _ in range(4)]  # fmt: skip
        bob = [(await fetch(s, gw.url("/per-consumer"), {"apikey": "bob-key-4567"}))[0]
               for _ in range(4)]  # fmt: skip
        t1 = [(await fetch(s, gw.url("/per-header"), {"x-tenant": "t1"}))[0] for _ in range(3)]
        t2 = [(await fetch(s, gw.url("/per-header"), {"x-tenant": "t2"}))[0] for _ in range(3)]
        # bob's own plugin (limit 2) also applies on a route that has no limit of its own,
        # and it is one budget for bob across routes: he spent it above.
        roomy_bob = [(await fetch(s, gw.url("/roomy"), {"apikey": "bob-key-4567"}))[0]
                     for _ in range(3)]  # fmt: skip
        roomy_alice = [(await fetch(s, gw.url("/roomy"), {"apikey": "alice-key-123"}))[0]
                       for _ in range(3)]  # fmt: skip
    assert alice == [200, 200, 200, 429]
    # On /per-consumer bob's own rate-limit replaces the route's: 2 per minute.
    assert bob == [200, 200, 429, 429]
    assert t1 == [200, 200, 429] and t2 == [200, 200, 429]
    assert roomy_bob == [429, 429, 429]
    assert roomy_alice == [200, 200, 200]


@pytest.mark.parametrize("algorithm", ["sliding-window", "token-bucket"])
async def test_redis_limit_is_exact_under_200_concurrent_requests_over_two_gateways(
    peers, gateway, algorithm
):
    _, echo, redis = peers
    name = f"shared-{algorithm}"
    config = base(
        echo,
        [route(name, rate_limit(50, "1h", by="route", algorithm=algorithm, store="redis",
                                redis={"url": redis.url, "timeout": "2s"}))],
    )  # fmt: skip
    one, two = gateway(config, "one"), gateway(config, "two")
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        urls = [one.url(f"/{name}"), two.url(f"/{name}")] * 100
        answers = await asyncio.gather(*(fetch(s, u) for u in urls))
    statuses = [a[0] for a in answers]
    assert statuses.count(200) == 50, statuses
    assert statuses.count(429) == 150
    remaining = sorted(int(a[1]["RateLimit-Remaining"]) for a in answers if a[0] == 200)
    assert remaining == list(range(50)), remaining  # each count handed out exactly once


@pytest.mark.parametrize("failure", ["open", "closed"])
async def test_redis_down_fails_open_or_closed_as_configured(peers, gateway, failure):
    tmp, echo, _ = peers
    own = start_redis(tmp)
    config = base(
        echo,
        [route("guarded", rate_limit(100, "1m", store="redis",
                                     redis={"url": own.url, "timeout": "200ms",
                                            "failure": failure}))],
        workers=1,
    )  # fmt: skip
    gw = gateway(config)
    async with aiohttp.ClientSession() as s:
        assert (await fetch(s, gw.url("/guarded")))[0] == 200
        assert own.proc is not None
        stop(own.proc)
        t0 = time.monotonic()
        answers = [(await fetch(s, gw.url("/guarded")))[0] for _ in range(5)]
        took = time.monotonic() - t0
        # other routes and the gateway itself are unaffected
    assert answers == ([200] * 5 if failure == "open" else [503] * 5)
    assert took < 30, took  # a down Redis costs its 200 ms timeout per call, never a hang
    assert f'outcome="store-down-{failure}"' in gw.metrics()


# ------------------------------------------------------------------ cache


async def test_cache_hit_miss_bypass_and_cache_control(peers, gateway):
    _, echo, _ = peers
    cache = {"name": "cache", "config": {"ttl": "30s", "varyQuery": ["page"]}}
    gw = gateway(base(echo, [route("c", cache)], workers=1))

    async def get(path, headers=None, method="GET"):
        async with aiohttp.ClientSession() as s:
            status, h, body = await fetch(s, gw.url(path), headers, method)
            return status, h.get("X-Cache-Status"), json.loads(body) if body else {}, h

    first_at = time.monotonic()
    _, st1, b1, _ = await get("/c/item?page=1&utm=x")
    _, st2, b2, h2 = await get("/c/item?utm=y&page=1")  # utm is not part of the key
    assert (st1, st2) == ("MISS", "HIT") and b1["n"] == b2["n"]
    # the hit says how long it has been stored: less than the time since the first answer
    assert 0 <= int(h2["Age"]) <= time.monotonic() - first_at, h2["Age"]
    assert (await get("/c/item?page=2"))[1] == "MISS"
    # the client may insist on a fresh answer; POST is never cached
    assert (await get("/c/item?page=1", {"Cache-Control": "no-cache"}))[1] == "BYPASS"
    assert (await get("/c/item?page=1", method="POST"))[1] == "BYPASS"
    # the upstream's Cache-Control decides what may be stored
    for cc in ("no-store", "private", "max-age=0"):
        hdr = {"x-echo-header": f"Cache-Control: {cc}"}
        first = await get(f"/c/{cc}", hdr)
        second = await get(f"/c/{cc}", hdr)
        assert (first[1], second[1]) == ("MISS", "MISS"), cc
        assert first[2]["n"] != second[2]["n"]
    # max-age ends the entry: polled for (no sleep), and never before max-age has passed
    # since the first request was sent (the exact edge is tests/unit/test_gateway_cache.py's)
    short = {"x-echo-header": "Cache-Control: public, max-age=3"}
    sent = time.monotonic()
    assert [(await get("/c/short", short))[1] for _ in range(2)] == ["MISS", "HIT"]
    deadline = sent + 30
    while (await get("/c/short", short))[1] == "HIT":
        assert time.monotonic() < deadline, "the entry outlived its max-age"
        await asyncio.sleep(0.1)
    assert time.monotonic() - sent >= 3, "the entry expired before its max-age"
    # s-maxage (for shared caches) wins over max-age
    shared = {"x-echo-header": "Cache-Control: max-age=0, s-maxage=30"}
    assert [(await get("/c/shared", shared))[1] for _ in range(2)] == ["MISS", "HIT"]
    # Vary: one entry per Accept-Language
    vary = {"x-echo-header": "Vary: Accept-Language"}
    en = {**vary, "Accept-Language": "en"}
    de = {**vary, "Accept-Language": "de"}
    assert (await get("/c/vary", en))[1] == "MISS"
    assert (await get("/c/vary", de))[1] == "MISS"
    assert (await get("/c/vary", en))[1] == "HIT"
    assert (await get("/c/vary", de))[1] == "HIT"
    # purge through the admin API
    status, body = gw.get_admin("/cache/purge?path=/c/item", method="POST")
    assert status == 200 and json.loads(body)["purged"] >= 2
    assert (await get("/c/item?page=1"))[1] == "MISS"
    assert 'slipstream_gateway_cache_total{outcome="HIT",route="c"}' in gw.metrics()


# ------------------------------------------------------------------ CORS


async def test_cors_preflight_and_simple_requests(peers, gateway):
    _, echo, _ = peers
    cors = {"name": "cors", "config": {"allowOrigins": ["https://app.example.com",
                                                        "https://*.example.org"],
                                       "allowMethods": ["GET", "POST"],
                                       "allowHeaders": ["content-type", "x-token"],
                                       "exposeHeaders": ["x-request-id"],
                                       "maxAge": "10m"}}  # fmt: skip
    gw = gateway(base(echo, [route("cors", cors), route("plain")], workers=1))
    async with aiohttp.ClientSession() as s:
        pre = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "Content-Type, X-Token"}  # fmt: skip
        status, h, _ = await fetch(s, gw.url("/cors/x"), pre, "OPTIONS")
        assert status == 204
        assert h["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "POST" in h["Access-Control-Allow-Methods"]
        assert "x-token" in h["Access-Control-Allow-Headers"].lower()
        assert h["Access-Control-Max-Age"] == "600"
        for bad in (
            {**pre, "Origin": "https://evil.example.com"},
            {**pre, "Access-Control-Request-Method": "DELETE"},
            {**pre, "Access-Control-Request-Headers": "x-secret"},
        ):
            assert (await fetch(s, gw.url("/cors/x"), bad, "OPTIONS"))[0] == 403
        status, h, _ = await fetch(s, gw.url("/cors/x"), {"Origin": "https://a.b.example.org"})
        assert status == 200
        assert h["Access-Control-Allow-Origin"] == "https://a.b.example.org"
        assert "Origin" in h.getall("Vary")
        assert h["Access-Control-Expose-Headers"].lower() == "x-request-id"
        status, h, _ = await fetch(s, gw.url("/cors/x"), {"Origin": "https://evil.example.com"})
        assert status == 200 and "Access-Control-Allow-Origin" not in h
        status, h, _ = await fetch(s, gw.url("/plain"), {"Origin": "https://app.example.com"})
        assert "Access-Control-Allow-Origin" not in h
