"""Rate limiting: the sliding window counter's arithmetic (the Redis script does the same in
Lua), and the local store kept exact per limit."""

from __future__ import annotations

import time

from gateway.http.message import Headers, Request
from gateway.plugins.base import Context, Shared
from gateway.plugins.ratelimit import LocalStore, RateLimit, RateLimitConfig, sliding_window


def run(times: list[float], limit: int, window: float, state=None):
    out = []
    for t in times:
        state, verdict = sliding_window(state, t, limit, window)
        out.append(verdict)
    return state, out


def test_within_one_window_exactly_limit_requests_pass():
    _, verdicts = run([100.0 + i * 0.01 for i in range(8)], limit=5, window=10)
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 3
    assert [v.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    assert all(0 < v.reset <= 10 for v in verdicts[5:])


def test_the_previous_window_counts_by_how_much_it_still_overlaps():
    # 10 requests late in [100, 110); at 112.5 the sliding window still covers 75% of it.
    state, _ = run([109.0 + i * 0.01 for i in range(10)], limit=10, window=10)
    state, verdicts = run([112.5] * 5, limit=10, window=10, state=state)
    assert [v.allowed for v in verdicts] == [True] * 3 + [False] * 2  # 7.5 + 2 < 10 <= 7.5 + 3
    # two windows later nothing of it is left
    _, verdicts = run([131.0] * 10, limit=10, window=10, state=state)
    assert all(v.allowed for v in verdicts)


def test_a_refusal_says_when_to_come_back():
    state, verdicts = run([100.0] * 6, limit=5, window=10)
    refused = verdicts[-1]
    assert not refused.allowed
    # the current window is full until it ends at 110; then its 5 fade as the window slides
    assert refused.reset == 10
    _, later = run([100.0 + refused.reset + 0.01], limit=5, window=10, state=state)
    assert later[0].allowed


def test_state_is_constant_size_whatever_the_limit():
    state, _ = run([100.0 + i * 1e-6 for i in range(10_000)], limit=1_000_000_000, window=3600)
    assert len(state) == 3 and state[1] == 10_000


def test_local_limits_with_different_windows_stay_exact_in_one_store():
    """One store serves every local limit of a worker. A sweep (every minute) must forget only
    state that equals no state: never the counts of a longer window than the caller's."""
    store = LocalStore()
    hourly = [store.sliding("rl:route:a:consumer:sliding-window:3/3600:alice", 3, 3600.0)
              for _ in range(4)]  # fmt: skip
    assert [v.allowed for v in hourly] == [True, True, True, False]
    for _ in range(3):
        store.sliding("rl:route:b:ip:sliding-window:10/1:1.2.3.4", 10, 1.0)
        store.bucket("rl:route:c:ip:token-bucket:2/3600:1.2.3.4", 2, 3600.0)
        store.bucket("rl:route:d:ip:token-bucket:5/1:1.2.3.4", 5, 1.0)
    wall, mono = time.time(), time.monotonic()
    store.sweep(wall + 61, mono + 61)  # a minute on: the 1 s limits' state is as good as none
    assert list(store.windows) == ["rl:route:a:consumer:sliding-window:3/3600:alice"]
    assert list(store.buckets) == ["rl:route:c:ip:token-bucket:2/3600:1.2.3.4"]
    # and the hourly limits still hold exactly what they counted
    assert not store.sliding("rl:route:a:consumer:sliding-window:3/3600:alice", 3, 3600.0).allowed
    assert not store.bucket("rl:route:c:ip:token-bucket:2/3600:1.2.3.4", 2, 3600.0).allowed
    store.sweep(wall + 2 * 3600 + 1, mono + 3601)
    assert not store.windows and not store.buckets


def test_each_limit_has_its_own_key():
    shared = Shared()
    a = RateLimit(RateLimitConfig(limit=3, window=3600.0), shared, "route:x")
    b = RateLimit(RateLimitConfig(limit=100, window=1.0), shared, "route:x")
    assert a.store is b.store
    ctx = Context(Request("GET", "/", "", Headers(), client=("10.0.0.1", 1)), "x")
    assert a.key(ctx) != b.key(ctx)
