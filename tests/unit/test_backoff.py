"""The one backoff formula every retry loop uses (bridge/backoff.py)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from bridge.backoff import backoff_delay

bounds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    attempt=st.integers(min_value=-3, max_value=10_000),
    lo=bounds,
    hi=bounds,
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_never_below_the_minimum_nor_above_the_maximum(
    attempt: int, lo: float, hi: float, seed: int
) -> None:
    delay = backoff_delay(attempt, lo, hi, random.Random(seed))
    assert lo <= delay <= max(lo, hi)  # hi < lo (a misconfiguration): lo wins


@given(attempt=st.integers(min_value=0, max_value=40), r=st.floats(0.0, 1.0, exclude_max=True))
def test_the_ceiling_doubles_until_the_maximum(attempt: int, r: float) -> None:
    class Fixed(random.Random):
        def random(self) -> float:
            return r

    delay = backoff_delay(attempt, 1.0, 300.0, Fixed())
    assert 1.0 <= delay <= min(300.0, 2.0**attempt)
    # the same draw never waits less after one more failure
    assert backoff_delay(attempt + 1, 1.0, 300.0, Fixed()) >= delay


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    assert {backoff_delay(0, 1.0, 60.0, rng) for _ in range(20)} == {1.0}
    late = [backoff_delay(10, 1.0, 60.0, rng) for _ in range(200)]
    assert min(late) < 10.0 and max(late) > 50.0
    assert backoff_delay(5, 0.0, 60.0, rng) == 0.0  # retry_min_s 0: at once, as configured
