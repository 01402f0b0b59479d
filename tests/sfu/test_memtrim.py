"""HeapTrimmer: trims after a drop of what clients hold from its peak, follows up while trims
give memory back, and not more often than set.  The trim and RSS reader are injected: RSS is a
script of readings (before, after) for each trim."""

from __future__ import annotations

import pytest

from sfu.memtrim import HeapTrimmer, rss_bytes

MiB = 1 << 20


class Heap:
    """What the trimmer sees: each trim reads RSS before and after; ``gives`` is what each trim
    gives back, in order."""

    def __init__(self, gives: list[int]) -> None:
        self.gives = list(gives)
        self.rss = 100 * MiB
        self.trims = 0

    def read(self) -> int:
        return self.rss

    def trim(self) -> None:
        self.trims += 1
        self.rss -= self.gives.pop(0) if self.gives else 0


# (held, now_ms, trims) in order, and what each trim gives back
CASES: dict[str, tuple[list[int], list[tuple[int, int, bool]]]] = {
    "a drop, follow-ups while they give back, then quiet": (
        [10 * MiB, 8 * MiB, 2 * MiB, 0],
        [
            (100, 0, False),  # the peak
            (95, 1_000, False),  # 5 released: not worth it
            (80, 2_000, True),  # 20 from the peak: 10 MiB back
            (60, 3_000, False),  # 20 more, but within the interval: later
            (60, 7_000, True),  # then (a drop again): 8 MiB
            (60, 12_000, True),  # a follow-up: 2 MiB
            (60, 17_000, True),  # another: nothing back
            (60, 22_000, False),  # so no more
            (200, 23_000, False),  # growth never trims
        ],
    ),
    "a drop whose trim gives back little is still followed up once": (
        [0, 0],
        [(64, 0, False), (0, 1_000, True), (0, 2_000, False), (0, 5_999, False), (0, 6_000, True), (0, 11_000, False)],
    ),
    "follow-ups are bounded": (
        [5 * MiB] * 20,
        [(40, 0, False), (0, 1_000, True)] + [(0, 1_000 + 5_000 * k, True) for k in range(1, 3)]
        + [(0, 16_000, False)],
    ),
    "small wobble never trims": ([], [(50, t * 1_000, False) for t in range(3)] + [(41, 4_000, False), (49, 5_000, False)]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_trims_after_a_drop_and_while_trims_give_back(case: tuple[list[int], list[tuple[int, int, bool]]]) -> None:
    gives, steps = case
    heap = Heap(gives)
    trimmer = HeapTrimmer(threshold=10, min_interval_ms=5_000, follow_up_bytes=1 * MiB, max_follow_ups=2,
                          trim=heap.trim, rss=heap.read)
    for held, now_ms, trims in steps:
        assert trimmer.observe(held, now_ms) is trims, (held, now_ms)
    assert trimmer.trims == heap.trims == sum(t for _, _, t in steps)
    assert trimmer.returned == 100 * MiB - heap.rss


def test_the_real_trim_and_rss() -> None:
    trimmer = HeapTrimmer(threshold=1, min_interval_ms=0)
    assert trimmer.available  # glibc here (the node's Docker image and CI are glibc too)
    assert 10 * MiB < rss_bytes() < 10_000 * MiB
    assert not trimmer.observe(5, 0) and trimmer.observe(0, 1) and trimmer.trims == 1
