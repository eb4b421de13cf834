"""The token bucket of cloud.domain.rate_limit: burst, sustained rate, per-key independence, the
wait it reports, and bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.domain.rate_limit import BucketLimit, RateLimiter


def test_a_burst_then_the_sustained_rate() -> None:
    rl = RateLimiter(BucketLimit(rate_per_s=2.0, burst=3))
    assert [rl.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a", 0.0) == pytest.approx(0.5)  # one token comes every 0.5 s
    assert rl.take("a", 0.25) == pytest.approx(0.25)  # a refusal takes nothing
    assert rl.take("a", 0.5) == 0.0
    assert rl.take("a", 0.5) > 0
    assert rl.take("a", 100.0) == 0.0  # refilled, but only up to the burst
    assert [rl.take("a", 100.0) for _ in range(3)][-1] > 0


def test_keys_are_independent_and_wait_s_takes_nothing() -> None:
    rl = RateLimiter(BucketLimit(1.0, 1))
    assert rl.take("flood", 0.0) == 0.0
    assert rl.take("flood", 0.0) == pytest.approx(1.0)
    assert rl.take("calm", 0.0) == 0.0
    assert rl.wait_s("flood", 0.5) == pytest.approx(0.5)
    assert rl.wait_s("unseen", 0.5) == 0.0
    assert rl.wait_s("flood", 1.0) == 0.0 and rl.take("flood", 1.0) == 0.0


def test_a_rate_of_zero_is_no_limit_and_a_clock_step_back_gives_nothing() -> None:
    rl = RateLimiter(BucketLimit(0.0, 1))
    assert all(rl.take("a", 0.0) == 0.0 for _ in range(1000))
    assert len(rl) == 0
    rl = RateLimiter(BucketLimit(1.0, 1))
    assert rl.take("a", 10.0) == 0.0
    assert rl.take("a", 5.0) > 0  # stepped back: no refill
    with pytest.raises(ValueError):
        BucketLimit(1.0, 0)


def test_memory_is_bounded() -> None:
    rl = RateLimiter(BucketLimit(1.0, 5), max_keys=100)
    for i in range(1000):
        rl.take(f"k{i}", float(i) / 1000)
    assert len(rl) <= 100


@given(
    st.floats(0.1, 100.0),
    st.integers(1, 50),
    st.lists(st.floats(0.0, 10.0), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    rl = RateLimiter(BucketLimit(rate, burst))
    now, allowed = 0.0, 0
    for g in gaps:
        now += g
        allowed += rl.take("d", now) == 0.0
    assert allowed <= burst + rate * now + 1e-6
