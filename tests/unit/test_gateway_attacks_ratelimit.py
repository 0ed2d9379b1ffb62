"""The local sliding window at real clock values: a window that is not a binary fraction.

`LocalStore.sliding` reads `time.time()` (about 1.7e9, where a float step is 2.4e-7 s) and
finds the previous window by comparing its start with `now - now % window` minus one window,
to within 1e-9 s. For windows such as 100 ms, 300 ms or 1.1 s the two starts differ by a
float step at a good share of boundaries: the previous window's count is then forgotten and
a client gets a fresh `limit` right after it spent one (up to twice the limit in any window).

Also (holds): one store serves every local limit, and sweeping it for a short limit never
resets a long one.
"""

from __future__ import annotations

import time

import pytest

from gateway.plugins.ratelimit import LocalStore, sliding_window

EPOCH = 1_700_000_000.0


@pytest.mark.parametrize("window", [0.1, 0.3, 1.1, 3.3, 60.0])
def test_the_previous_window_is_remembered_at_every_boundary(window: float) -> None:
    limit = 10
    leaks = []
    for k in range(200):
        full = EPOCH + k * 0.37 * window  # somewhere in a window: spend the whole limit there
        state = None
        for _ in range(limit):
            state, verdict = sliding_window(state, full, limit, window)
            assert verdict.allowed
        # 1% into the next window, the last one still weighs 99% of its 10 requests:
        # 9.9 + 0 < 10 lets one more through, 9.9 + 1 does not.
        after = full - full % window + 1.01 * window
        passed = 0
        for _ in range(limit):
            state, verdict = sliding_window(state, after, limit, window)
            passed += verdict.allowed
        if passed > 1:
            leaks.append((k, passed))
    assert not leaks, f"{len(leaks)} of 200 boundaries forgot the full window before: {leaks[:5]}"


def test_a_short_limits_sweep_never_resets_a_long_one() -> None:
    """One local store serves every limit of a process; its sweep (run whenever any limit
    decides, once a minute) must forget only keys whose own windows are over."""
    store = LocalStore()
    for _ in range(5):
        assert store.sliding("rl:hour", 5, 3600.0).allowed
        assert store.bucket("rl:hour-bucket", 5, 3600.0).allowed
        assert store.sliding("rl:second", 5, 1.0).allowed
        assert store.bucket("rl:second-bucket", 5, 1.0).allowed
    assert not store.sliding("rl:hour", 5, 3600.0).allowed
    assert not store.bucket("rl:hour-bucket", 5, 3600.0).allowed
    # Ten seconds on: the one-second limits are over and forgotten, the hour ones are not.
    store.sweep(time.time() + 10, time.monotonic() + 10)
    assert "rl:second" not in store.windows and "rl:second-bucket" not in store.buckets
    assert not store.sliding("rl:hour", 5, 3600.0).allowed
    assert not store.bucket("rl:hour-bucket", 5, 3600.0).allowed
