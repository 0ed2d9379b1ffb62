"""Response caching: bounded, in memory, honouring Cache-Control and Vary.

Key: route, method, the normalized Host (the one routing used: case, trailing
dot and default port cannot split or poison an entry), the normalized path, the
query (all parameters sorted, or only those in `varyQuery`), the values of
`varyHeaders`, and the principal: the consumer, or for a token that maps to no
consumer its issuer and subject (so one caller's answer never reaches another).
A response is stored when its status is cacheable, its body is within
`maxBody`, it carries no Set-Cookie, and its Cache-Control allows a shared
cache (no `no-store`, no `private`).

A request with credentials the upstream may answer personally (`Authorization`,
`Proxy-Authorization`, and `Cookie` unless `requestCookies: ignore`) is only
answered from, and its response only stored in, the cache when the response
says it may be shared: `public` or `s-maxage` (RFC 9111 §3.5, which also names
must-revalidate: we do not revalidate, so we do not count it). Fields an
upstream may read as another URL or method (X-Original-URL...) never reach it
(pipeline.CLIENT_CANNOT_SET), so they cannot make one key hold another answer.

Freshness (RFC 9111 §4.2): the lifetime is `s-maxage`, else `max-age`, else
`Expires` minus `Date` (or minus now, without a Date), else the configured `ttl`
(our heuristic); the upstream's `Age` (its first member, when a non-negative
integer) counts against it, and a response whose lifetime is spent is not
stored. A directive given twice with different values, a `max-age` that is not
a number, and an `Expires` that is not a date (`0`) make a response stale, as
§4.2.1 and §5.3 allow: we do not revalidate, so stale is not stored. We do not
add the apparent age (now minus `Date`): a skewed upstream clock would then
decide what is cached. A hit's `Age` is the upstream's plus the time it spent
here. A stored response's `Vary` fields are compared with the next request's
before reuse.

`X-Cache-Status`: HIT (served from here), MISS (looked up, fetched; stored if
allowed), BYPASS (the request cannot use a cache: method, body, upgrade, or
its own Cache-Control: no-cache/no-store). Entries are evicted least-recently
used beyond `maxEntries` or `maxBytes`; the admin API purges them.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from ..http.message import Headers, Response
from .base import PHASE_CACHE, Context, Plugin, Shared
from .models import CacheConfig

MAX_VARIANTS = 8
"""Answers kept per key that differ by their Vary fields (an upstream varying on User-Agent
would otherwise make each lookup scan thousands)."""


@dataclass
class Entry:
    status: int
    headers: Headers
    body: bytes
    stored: float
    expires: float
    vary: tuple[tuple[bytes, tuple[bytes, ...]], ...]
    """The request's values of the response's Vary fields, when it was stored."""
    route: str
    path: str
    shared: bool
    """The response said it may be shared (public, s-maxage): usable for credentialed
    requests."""
    age: float = 0.0
    """The response's age when it was stored (its upstream `Age`)."""

    @property
    def cost(self) -> int:
        return len(self.body) + sum(len(n) + len(v) for n, v in self.headers) + 200


class Store:
    """LRU over variants: key -> list of entries differing by their Vary values."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, list[Entry]] = OrderedDict()
        self.bytes = 0
        self.count = 0

    def get(self, key: str, headers: Headers, now: float, credentialed: bool) -> Entry | None:
        variants = self.entries.get(key)
        if not variants:
            return None
        for e in variants:
            if credentialed and not e.shared:
                continue
            if e.expires > now and all(tuple(headers.get_all(n)) == v for n, v in e.vary):
                self.entries.move_to_end(key)
                return e
        return None

    def put(self, key: str, entry: Entry, config: CacheConfig) -> None:
        old = self.entries.pop(key, [])
        self._drop(old)
        variants = [e for e in old if e.vary != entry.vary and e.expires > entry.stored]
        variants = variants[-(MAX_VARIANTS - 1) :]  # (a lookup scans them: keep it short)
        variants.append(entry)
        self.entries[key] = variants
        self._add(variants)
        while self.entries and (self.count > config.max_entries or self.bytes > config.max_bytes):
            _, evicted = self.entries.popitem(last=False)
            self._drop(evicted)

    def _add(self, entries: list[Entry]) -> None:
        self.bytes += sum(e.cost for e in entries)
        self.count += len(entries)

    def _drop(self, entries: list[Entry]) -> None:
        self.bytes -= sum(e.cost for e in entries)
        self.count -= len(entries)

    def purge(self, route: str | None = None, path_prefix: str | None = None) -> int:
        removed = 0
        for key in list(self.entries):
            variants = self.entries[key]
            keep = [
                e
                for e in variants
                if not (
                    (route is None or e.route == route)
                    and (path_prefix is None or e.path.startswith(path_prefix))
                )
            ]
            gone = [e for e in variants if e not in keep]
            if gone:
                removed += len(gone)
                self._drop(gone)
                if keep:
                    self.entries[key] = keep
                else:
                    del self.entries[key]
        return removed


_AGES = re.compile(rb"(?:^|[,\s])(s-maxage|max-age)\s*(?:=\s*(\"?)([^,\s\"]*)\2)?", re.IGNORECASE)
"""A max-age or s-maxage directive, whole (not the tail of `x-max-age`), and its value."""
_NOT_STORED = re.compile(rb"(?:^|[,\s])(?:no-store|no-cache|private)\s*(?:[,=]|$)", re.IGNORECASE)


def _name(pair: tuple[str, str]) -> str:
    return pair[0]


def explicitly_shared(headers: Headers) -> bool:
    cc = headers.tokens(b"cache-control")
    return b"public" in cc or any(t.startswith(b"s-maxage") for t in cc)


def _date(value: bytes | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7, all three forms) in seconds, or None."""
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # (asctime and "-0000" forms: HTTP dates are always GMT)
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def initial_age(headers: Headers) -> float:
    """The upstream's Age: its first member if a non-negative integer, else 0 (RFC 9111
    §5.1: an invalid Age is ignored)."""
    raw = headers.get(b"age")
    if raw is None:
        return 0.0
    first = raw.split(b",")[0].strip()
    return float(first) if first.isdigit() else 0.0


def lifetime(headers: Headers, default: float, now: float) -> float | None:
    """The freshness lifetime (RFC 9111 §4.2.1) in seconds, None if the response must not be
    stored. `no-cache` and `private` in any form, with field names too
    (`no-cache="Set-Cookie"`), keep it out: we would have to strip those fields, and do not
    revalidate (RFC 9111 §5.2.2.4, §5.2.2.7). `now` is the wall clock, for Expires."""
    values = headers.get_all(b"cache-control")
    for v in values:
        if _NOT_STORED.search(v):
            return None
    ages: dict[bytes, bytes] = {}
    for v in values:
        for m in _AGES.finditer(v):
            name, value = m.group(1).lower(), m.group(3) or b""
            if not value.isdigit() or ages.get(name, value) != value:
                return None  # not a number, or two different answers: stale
            ages[name] = value
    if b"s-maxage" in ages:
        return float(ages[b"s-maxage"])
    if b"max-age" in ages:
        return float(ages[b"max-age"])
    expires = headers.get_all(b"expires")
    if expires:
        when = _date(expires[0]) if len(set(expires)) == 1 else None
        if when is None:
            return None  # RFC 9111 §5.3: an invalid date, "0" above all, is in the past
        date = _date(headers.get(b"date"))
        return when - (date if date is not None else now)
    return default


def freshness(headers: Headers, default: float, now: float | None = None) -> float | None:
    """Seconds a shared cache may still keep this response (its lifetime less its Age), or
    None if it must not be stored."""
    life = lifetime(headers, default, time.time() if now is None else now)
    if life is None:
        return None
    left = life - initial_age(headers)
    return left if left > 0 else None


class Cache(Plugin):
    name = "cache"
    phase = PHASE_CACHE

    def __init__(self, config: CacheConfig, shared: Shared, scope: str) -> None:
        self.config = config
        self.store = shared.service(f"cache:{scope}", Store, Store)
        self.clock: Callable[[], float] = time.monotonic
        """Seconds for entry lifetimes and Age (tests set it: no test waits for an expiry)."""

    def key(self, ctx: Context) -> str:
        req = ctx.request
        c = self.config
        # Sorted by name only (a stable sort): a repeated parameter keeps its order, which an
        # upstream that reads the first (or last) value answers by.
        if c.vary_query is None:
            query = sorted(req.query, key=_name)
        else:
            query = sorted(((k, v) for k, v in req.query if k in c.vary_query), key=_name)
        varied = [req.headers.get_all(h) for h in c.vary_headers]
        # (repr of a tuple: no two different keys can print the same)
        return repr(
            (ctx.route_name, req.method, req.authority, req.path, query, varied, ctx.principal)
        )

    def credentialed(self, headers: Headers) -> bool:
        """The request carries credentials an upstream may answer personally."""
        return (
            b"authorization" in headers
            or b"proxy-authorization" in headers
            or (self.config.request_cookies == "private" and b"cookie" in headers)
        )

    async def request(self, ctx: Context) -> Response | None:
        req = ctx.request
        cc = req.headers.tokens(b"cache-control")
        if (
            req.method not in self.config.methods
            or req.body
            or req.upgrade
            or b"no-store" in cc
            or b"no-cache" in cc
        ):
            ctx.notes["cache"] = "BYPASS"
            ctx.scratch["cache"] = ("BYPASS", "", False)
            return None
        key = self.key(ctx)
        now = self.clock()
        credentialed = self.credentialed(req.headers)
        entry = self.store.get(key, req.headers, now, credentialed)
        if entry is None:
            ctx.notes["cache"] = "MISS"
            ctx.scratch["cache"] = ("MISS", key, credentialed)
            return None
        ctx.notes["cache"] = "HIT"
        h = entry.headers.copy()
        h.set(b"age", b"%d" % int(entry.age + now - entry.stored))
        h.set(b"x-cache-status", b"HIT")
        return Response(entry.status, h, entry.body)

    def response(self, ctx: Context, status: int, headers: Headers) -> None:
        state, key, credentialed = ctx.scratch.get("cache", (None, "", False))
        if state is None:
            return
        headers.set(b"x-cache-status", state.encode())
        if state != "MISS" or status not in self.config.statuses:
            return
        ttl = freshness(headers, self.config.ttl)
        age = initial_age(headers)
        vary = headers.tokens(b"vary")
        if not ttl or b"set-cookie" in headers or b"*" in vary:
            return
        shared = explicitly_shared(headers)
        if credentialed and not shared:
            return
        req = ctx.request
        stored_headers = Headers((n, v) for n, v in headers if n not in (b"x-cache-status", b"age"))
        chunks: list[bytes] = []
        total = [0]
        limit = self.config.max_body

        def tap(chunk: bytes | None) -> None:
            if chunk is not None:
                total[0] += len(chunk)
                if total[0] <= limit:
                    chunks.append(chunk)
                return
            if total[0] > limit:
                return
            now = self.clock()
            self.store.put(
                key,
                Entry(
                    status,
                    stored_headers,
                    b"".join(chunks),
                    now,
                    now + ttl,
                    tuple((n, tuple(req.headers.get_all(n))) for n in sorted(vary)),
                    ctx.route_name,
                    req.path,
                    shared,
                    age,
                ),
                self.config,
            )

        ctx.taps.append(tap)
