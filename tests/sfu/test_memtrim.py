"""HeapTrimmer: trims after a drop of what clients hold from its peak, once more an interval
later (the rest of a burst), and not more often than set."""

from __future__ import annotations

import pytest

from sfu.memtrim import HeapTrimmer

# (held, now_ms, trims) in order: what observe() is told and whether it trims
CASES = {
    "bulk release, then the follow-up, then quiet": [
        (100, 0, False),  # the peak
        (95, 1_000, False),  # 5 released: not worth it
        (80, 2_000, True),  # 20 from the peak
        (60, 3_000, False),  # 20 more, but within the interval: later
        (60, 7_000, True),  # then (a drop, so a follow-up is due)
        (60, 12_000, True),  # the follow-up, with no new drop
        (60, 20_000, False),  # nothing more: no drop, no follow-up
        (200, 21_000, False),  # growth never trims
        (150, 30_000, True),
        (150, 35_000, True),  # its follow-up
        (150, 60_000, False),
    ],
    "a follow-up waits for the interval": [
        (64, 0, False),
        (0, 1_000, True),
        (0, 2_000, False),
        (0, 5_999, False),
        (0, 6_000, True),
        (0, 11_000, False),
    ],
    "small wobble never trims": [(50, t * 1_000, False) for t in range(3)] + [(41, 4_000, False), (49, 5_000, False)],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_trims_after_a_drop_and_once_more_after_it(steps: list[tuple[int, int, bool]]) -> None:
    trimmer = HeapTrimmer(threshold=10, min_interval_ms=5_000)
    assert trimmer.available  # glibc here (the node's Docker image and CI are glibc too)
    for held, now_ms, trims in steps:
        assert trimmer.observe(held, now_ms) is trims, (held, now_ms)
    assert trimmer.trims == sum(t for _, _, t in steps)
