"""Rate limiting per consumer, client IP, route or header value; local or cluster-wide in Redis.

Algorithms: a sliding window counter or a token bucket (`limit` tokens,
refilled at limit/window per second), both in constant memory per key. The
sliding window counts the current fixed window exactly and adds the previous
window's count weighted by how much of it the sliding window still covers (as
Cloudflare and Kong do): no log of timestamps, which at a limit of millions
would cost millions of entries per key. In Redis, a window decision is one
pipelined atomic INCR (plus the previous window's GET) and a bucket decision
one Lua script on Redis's own clock, so every gateway process sharing that
Redis sees one exact count. The local store counts in this process only (each
worker has its own; use Redis to share), for at most MAX_KEYS keys at once.

`by: header` counts by the header's value (a long value by its digest); a
request without the header is counted by its client IP, so leaving the header
out is no way around the limit.

Every answered request carries `RateLimit-Limit`, `RateLimit-Remaining` and
`RateLimit-Reset` (seconds); a refused one gets 429 with `Retry-After`. When
Redis cannot be reached, `failure: open` lets requests through and `closed`
answers 503; either way Redis is not asked again for a second.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
from typing import Any, NamedTuple

from ..http.message import Headers, Response
from ..redisclient import Redis, RedisReplyError, RedisUnavailable
from .base import PHASE_RATE_LIMIT, Context, Plugin, Shared
from .models import RateLimitConfig

log = logging.getLogger("gateway.ratelimit")

MAX_REMEMBERED = 100_000
"""Finished-window counts a process keeps (then it forgets them all and reads them again)."""
MAX_KEYS = 100_000
"""Keys (clients, header values...) a worker's local store counts at once, per algorithm."""
MAX_KEY_PART = 64
"""A header value longer than this is counted by its digest (keys stay small)."""
_HEADERS = frozenset({b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset"})


class Verdict(NamedTuple):  # (a tuple: made once per request, a frozen dataclass costs more)
    allowed: bool
    remaining: int
    reset: float
    """Seconds until the quota frees up (the oldest request leaves the window / a token)."""


# KEYS[1]: the bucket. ARGV: capacity, window (ms). Refill: capacity tokens per window.
TOKEN_BUCKET = b"""
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local cap, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate = cap / window
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, ts = cap, now end
tokens = math.min(cap, tokens + (now - ts) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], window * 2)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) / rate) end
return {allowed, math.floor(tokens), wait}
"""


def sliding_window(
    state: tuple[int, int, int] | None, now: float, limit: int, window: float
) -> tuple[tuple[int, int, int], Verdict]:
    """One decision of the sliding window counter (pure). `state`: (which fixed window is
    current, counted as now // window; its count; the previous window's count). Windows are
    told apart by that whole number: comparing their float starts at the clock's scale
    (1.7e9 s) is not exact for windows like 0.1 s or 1.1 s."""
    index = int(now // window)
    at, cur, prev = state if state is not None else (index, 0, 0)
    if at != index:
        prev = cur if at == index - 1 else 0
        cur = 0
    into = min(max(now - index * window, 0.0), window)
    verdict = window_verdict(prev, cur, into, limit, window)
    return (index, cur + 1 if verdict.allowed else cur, prev), verdict


def window_verdict(prev: int, before: int, into: float, limit: int, window: float) -> Verdict:
    """The sliding window counter's answer for one more request, `into` seconds into the
    current fixed window, which already counted `before` requests; `prev` is the last one's."""
    weighted = prev * (window - into) / window
    allowed = weighted + before < limit
    cur = before + 1 if allowed else before
    # When a refused request may come back: the next window if this one is full, else once
    # the previous window's weight has slid down far enough.
    wait = window - into
    if cur < limit and prev > 0:
        wait = max(0.0, window * (1 - (limit - cur) / prev) - into)
    return Verdict(allowed, max(0, math.floor(limit - weighted - cur)), wait)


class LocalStore:
    """Counts for this process, exact per limit. One store serves every local limit of the
    process: each key (which names its limit, see RateLimit.key) keeps its own window, and
    the periodic sweep forgets a key only once its state equals a fresh one (both of its
    windows over; its bucket full again), whatever the other limits' windows are."""

    SWEEP_EVERY = 60.0

    def __init__(self) -> None:
        self.windows: dict[str, tuple[int, int, int, float]] = {}
        """key -> (current fixed window (now // window), its count, the previous one's, window)"""
        self.buckets: dict[str, tuple[float, float, float]] = {}
        """key -> (tokens, when they were counted (monotonic), window)"""
        self._sweep_at = time.monotonic() + self.SWEEP_EVERY

    def sliding(self, key: str, limit: int, window: float) -> Verdict:
        now = time.time()  # wall clock: windows align with other stores' (and Redis's)
        self._maybe_sweep()
        known = self.windows.get(key)
        if known is None:
            self._make_room(self.windows)
        state, verdict = sliding_window(known[:3] if known else None, now, limit, window)
        self.windows[key] = (*state, window)
        return verdict

    def bucket(self, key: str, limit: int, window: float) -> Verdict:
        now = time.monotonic()
        self._maybe_sweep()
        rate = limit / window
        if key not in self.buckets:
            self._make_room(self.buckets)
        tokens, ts, _ = self.buckets.get(key, (float(limit), now, window))
        tokens = min(limit, tokens + (now - ts) * rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self.buckets[key] = (tokens, now, window)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
        return Verdict(allowed, math.floor(tokens), wait)

    def _make_room(self, table: dict[str, Any]) -> None:
        """Before a new key: past MAX_KEYS, sweep; if that frees nothing, forget the tenth of
        the keys counted longest ago (the price of a bound: those counts start over)."""
        if len(table) < MAX_KEYS:
            return
        self.sweep(time.time(), time.monotonic())
        if len(table) >= MAX_KEYS:
            for k in list(itertools.islice(table, MAX_KEYS // 10)):
                del table[k]
            log.warning(
                "local rate-limit store full: the oldest counts were forgotten",
                extra={"keys": MAX_KEYS},
            )

    def _maybe_sweep(self) -> None:
        if time.monotonic() >= self._sweep_at:
            self.sweep(time.time(), time.monotonic())

    def sweep(self, wall: float, mono: float) -> None:
        """Forget keys whose state is the same as none (so many clients cannot grow memory
        forever): a window pair entirely in the past, a bucket refilled to full."""
        self._sweep_at = mono + self.SWEEP_EVERY
        self.windows = {k: s for k, s in self.windows.items() if (s[0] + 2) * s[3] > wall}
        self.buckets = {k: b for k, b in self.buckets.items() if mono - b[1] < b[2]}


class RedisStore:
    """Decisions in Redis (one per request, pipelined with the other requests in flight)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.redis = Redis(url, timeout)
        self.down_until = 0.0
        self._finished: dict[str, tuple[int, int]] = {}
        """Per key: the last finished window's start (ms) and its final count."""

    async def decide(self, key: str, config: RateLimitConfig) -> Verdict:
        if time.monotonic() < self.down_until:
            raise RedisUnavailable("recently unreachable")
        window_ms = max(1, int(config.window * 1000))
        try:
            if config.algorithm == "sliding-window":
                return await self._window(key, config.limit, window_ms)
            reply = await self.redis.script(TOKEN_BUCKET, [key.encode()], [config.limit, window_ms])
        except (RedisUnavailable, RedisReplyError) as exc:
            self.down_until = time.monotonic() + 1.0
            log.warning(  # at most once a second: the backoff above
                "rate limiter cannot use Redis; failing as configured for a second",
                extra={"redis": f"{self.redis.host}:{self.redis.port}", "error": str(exc)},
            )
            raise RedisUnavailable(str(exc)) from exc
        allowed, remaining, reset_ms = (int(x) for x in reply)
        return Verdict(bool(allowed), max(0, remaining), max(0, reset_ms) / 1000)

    async def _window(self, key: str, limit: int, window_ms: int) -> Verdict:
        """The sliding window counter as one pipelined INCR of this window's count (atomic:
        concurrent requests get distinct counts, so no more than `limit` pass) and a GET of
        the previous window's. Windows are named by this host's clock (NTP keeps gateways in
        step; a skew only blurs the weighting at a boundary). A refused request is counted
        back out, so only admitted requests use the quota, as in the local store.

        A finished window's count no longer changes, so each process reads it once and
        remembers it: the usual decision is a single INCR."""
        now_ms = int(time.time() * 1000)
        start = now_ms - now_ms % window_ms
        cur_key = f"{key}:{start}".encode()
        known = self._finished.get(key)
        if known is not None and known[0] == start - window_ms:
            prev = known[1]
            count = await self.redis.execute(b"INCR", cur_key)
        else:
            count, got = await self.redis.pipeline(
                [(b"INCR", cur_key), (b"GET", f"{key}:{start - window_ms}".encode())]
            )
            prev = int(got or 0)
            if len(self._finished) >= MAX_REMEMBERED:
                self._finished.clear()
            self._finished[key] = (start - window_ms, prev)
        if count == 1:  # this request opened the window's counter: give it an expiry
            self.redis.send_only(b"PEXPIRE", cur_key, 2 * window_ms)
        w = window_ms / 1000
        verdict = window_verdict(prev, int(count) - 1, (now_ms - start) / 1000, limit, w)
        if not verdict.allowed:
            self.redis.send_only(b"DECR", cur_key)
        return verdict


class RateLimit(Plugin):
    name = "rate-limit"
    phase = PHASE_RATE_LIMIT

    def __init__(self, config: RateLimitConfig, shared: Shared, scope: str) -> None:
        self.config = config
        self.scope = scope
        """What this instance limits: global, route:<name> or consumer:<name>."""
        # The key names the limit itself, not only its scope: counts of another limit (or of
        # this one before a reload changed it) are never read as this one's.
        self._prefix = (
            f"rl:{scope}:{config.by}:{config.algorithm}:{config.limit}/{config.window:g}:"
        )
        self._limit = b"%d" % config.limit
        self.store: RedisStore | LocalStore
        if config.store == "redis":
            self.store = shared.service(
                f"ratelimit:{config.redis.url}",
                RedisStore,
                lambda: RedisStore(config.redis.url, config.redis.timeout),
            )
        else:
            self.store = shared.service("ratelimit:local", LocalStore, LocalStore)

    def key(self, ctx: Context) -> str:
        c = self.config
        if c.by == "consumer":
            who = ctx.consumer.name if ctx.consumer is not None else f"ip:{ctx.request.client[0]}"
        elif c.by == "ip":
            who = ctx.request.client[0]
        elif c.by == "route":
            who = ctx.route_name
        else:
            assert c.header is not None
            raw = ctx.request.headers.get(c.header)
            if raw is None:  # (as Kong does: leaving the header out is no way around the limit)
                who = f"ip:{ctx.request.client[0]}"
            elif len(raw) > MAX_KEY_PART:
                who = "h#" + hashlib.sha256(raw).hexdigest()[:32]
            else:
                who = "h:" + raw.decode("latin-1")
        return self._prefix + who

    async def request(self, ctx: Context) -> Response | None:
        key = self.key(ctx)
        c = self.config
        try:
            if isinstance(self.store, RedisStore):
                verdict = await self.store.decide(key, c)
            elif c.algorithm == "sliding-window":
                verdict = self.store.sliding(key, c.limit, c.window)
            else:
                verdict = self.store.bucket(key, c.limit, c.window)
        except RedisUnavailable:
            ctx.notes["ratelimit"] = f"store-down-{c.redis.failure}"
            if c.redis.failure == "open":
                return None
            return Response.text(503, "rate limiter unavailable")
        headers = [
            (b"ratelimit-limit", self._limit),
            (b"ratelimit-remaining", b"%d" % verdict.remaining),
            (b"ratelimit-reset", b"%d" % math.ceil(verdict.reset)),
        ]
        if verdict.allowed:
            ctx.notes["ratelimit"] = "allowed"
            ctx.scratch.setdefault("ratelimit", []).append(headers)
            return None
        ctx.notes["ratelimit"] = "limited"
        h = Headers(headers)
        h.add(b"retry-after", b"%d" % max(1, math.ceil(verdict.reset)))
        return Response.text(429, "rate limit exceeded", h)

    def response(self, ctx: Context, status: int, headers: Headers) -> None:
        for fields in ctx.scratch.get("ratelimit", ()):
            if any(n in _HEADERS for n, _ in headers.items):  # (the upstream's, or a limit's)
                headers.items = [(n, v) for n, v in headers.items if n not in _HEADERS]
            headers.items += fields
