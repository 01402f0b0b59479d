"""bench.stats: sequence continuity across 16-bit wraps and nearest-rank percentiles."""

from __future__ import annotations

import math

import pytest

from bench.stats import SeqTracker, latency_summary_ms, percentile


@pytest.mark.parametrize(
    ("seqs", "extended", "gaps", "missing", "late"),
    [
        ([5, 6, 7], 7, 0, 0, 0),
        ([65534, 65535, 0, 1], 65537, 0, 0, 0),
        ([10, 13], 13, 1, 2, 0),
        ([10, 12, 11], 12, 1, 1, 1),
        ([10, 10], 10, 0, 0, 1),
        ([65535, 2, 65534], 65538, 1, 2, 1),
    ],
)
def test_tracker_counts(seqs: list[int], extended: int, gaps: int, missing: int, late: int) -> None:
    tracker = SeqTracker()
    for s in seqs:
        tracker.see(s)
    assert (tracker.extended, tracker.gaps, tracker.missing_at_gap, tracker.late) == (extended, gaps, missing, late)
    assert tracker.received == len(seqs)


def test_late_packet_gets_the_previous_cycle() -> None:
    tracker = SeqTracker()
    tracker.see(65535)
    tracker.see(1)
    assert tracker.see(65534) == 65534
    assert tracker.see(0) == 65536


def test_in_order_fast_path_matches_see() -> None:
    fast, slow = SeqTracker(), SeqTracker()
    fast.see(65530)
    fast.in_order(10)
    for s in range(65530, 65541):
        slow.see(s & 0xFFFF)
    assert (fast.extended, fast.received, fast.next16()) == (slow.extended, slow.received, slow.next16())
    assert fast.next16() == 5


@pytest.mark.parametrize("bad", [-1, 65536])
def test_tracker_rejects_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        SeqTracker().see(bad)


def test_in_order_needs_a_started_stream() -> None:
    with pytest.raises(ValueError):
        SeqTracker().in_order(3)


@pytest.mark.parametrize(
    ("q", "expected"), [(0, 1.0), (50, 50.0), (99, 99.0), (99.9, 100.0), (100, 100.0)]
)
def test_percentile_nearest_rank(q: float, expected: float) -> None:
    assert percentile([float(v) for v in range(1, 101)], q) == expected


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert latency_summary_ms([]) == {"p50": None, "p99": None, "p999": None}
    assert latency_summary_ms([1000.0, 3000.0, 2000.0])["p50"] == 2.0
