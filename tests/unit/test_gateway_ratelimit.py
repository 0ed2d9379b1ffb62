"""The sliding window counter's arithmetic (the Redis script does the same in Lua)."""

from __future__ import annotations

from gateway.plugins.ratelimit import sliding_window


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
