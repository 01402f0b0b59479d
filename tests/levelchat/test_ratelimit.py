from __future__ import annotations

import pytest

from levelchat.ratelimit import Limit, TokenBuckets


@pytest.mark.parametrize(
    ("rate", "burst", "times", "allowed"),
    [
        (1.0, 3, [0, 0, 0, 0], [True, True, True, False]),  # burst then refuse
        (1.0, 3, [0, 0, 0, 0, 1.0], [True, True, True, False, True]),  # one token back after 1 s
        (2.0, 1, [0, 0.25, 0.5, 0.5], [True, False, True, False]),  # 2/s: a token every 0.5 s
        (10.0, 2, [0, 0, 100, 100, 100], [True, True, True, True, False]),  # refills only to burst
    ],
)
def test_bucket_decisions(rate: float, burst: int, times: list[float], allowed: list[bool]) -> None:
    buckets = TokenBuckets(Limit(rate, burst))
    got = [buckets.take("k", t) == 0.0 for t in times]
    assert got == allowed


def test_wait_and_reset_times() -> None:
    buckets = TokenBuckets(Limit(rate_per_s=2.0, burst=4))
    for _ in range(4):
        assert buckets.take("a", 10.0) == 0.0
    assert buckets.take("a", 10.0) == pytest.approx(0.5)
    assert buckets.full_in("a", 10.0) == pytest.approx(2.0)
    assert buckets.take("b", 10.0) == 0.0  # keys are independent


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_bad_limits_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Limit(rate, burst)
