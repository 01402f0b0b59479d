"""MediaCounters and DropReason: the plain-integer counters behind the node's metrics."""

from __future__ import annotations

import pytest

from sfu.counters import Direction, DropReason, MediaCounters

BOUNDS = MediaCounters.LATENCY_BOUNDS


def test_drop_reasons_index_the_drop_list_and_have_unique_labels() -> None:
    assert [r.value for r in DropReason] == list(range(len(DropReason)))
    labels = [r.name.lower() for r in DropReason]
    assert len(set(labels)) == len(labels)
    assert all(label.replace("_", "").isalpha() and label.islower() for label in labels)
    counters = MediaCounters()
    assert len(counters.drops) == len(DropReason)
    assert [d.value for d in Direction] == [0, 1] and len(counters.srtp_errors) == 2


def test_drop_counts_reports_every_reason_by_label() -> None:
    counters = MediaCounters()
    for i, reason in enumerate(DropReason):
        counters.drops[reason] += i * 3 + 1
    counts = counters.drop_counts()
    assert list(counts) == [r.name.lower() for r in DropReason]
    assert counts["too_short"] == DropReason.TOO_SHORT * 3 + 1
    assert counts["srtp_unknown_address"] == DropReason.SRTP_UNKNOWN_ADDRESS * 3 + 1
    assert sum(counts.values()) == sum(counters.drops)


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, 0),
        (BOUNDS[0], 0),  # a bound is inclusive ("le")
        (BOUNDS[0] * 1.01, 1),
        (0.00025, BOUNDS.index(0.0003)),
        (BOUNDS[3], 3),
        (0.00095, BOUNDS.index(0.001)),
        (0.002, BOUNDS.index(0.0025)),
        (BOUNDS[-1], len(BOUNDS) - 1),
        (BOUNDS[-1] + 1e-9, len(BOUNDS)),  # past the last bound: the +Inf bucket
        (7.0, len(BOUNDS)),
    ],
)
def test_observe_latency_picks_the_first_bucket_whose_bound_holds_it(seconds: float, bucket: int) -> None:
    counters = MediaCounters()
    counters.observe_latency(seconds)
    expected = [0] * (len(BOUNDS) + 1)
    expected[bucket] = 1
    assert counters.latency_buckets == expected
    assert counters.latency_count == 1 and counters.latency_sum_s == pytest.approx(seconds)


def test_observe_latency_accumulates() -> None:
    counters = MediaCounters()
    values = [0.00005, 0.00005, 0.004, 0.2, 0.0009]
    for v in values:
        counters.observe_latency(v)
    assert counters.latency_count == len(values)
    assert counters.latency_sum_s == pytest.approx(sum(values))
    assert sum(counters.latency_buckets) == len(values)
    assert counters.latency_buckets[0] == 2 and counters.latency_buckets[-1] == 1


def test_bounds_increase() -> None:
    assert list(BOUNDS) == sorted(set(BOUNDS)) and BOUNDS[0] > 0


def test_bounds_below_one_ms_are_at_most_a_tenth_of_a_ms_apart() -> None:
    """So a p99 below 1 ms shows as such (a bucket bound of 0.9 ms or lower)."""
    below = [b for b in BOUNDS if b <= 0.001]
    assert below[-1] == 0.001 and below[0] <= 0.0001
    assert all(b - a <= 0.0001 + 1e-12 for a, b in zip(below, below[1:], strict=False))
