"""HeapTrimmer: trims after a drop of live participants from their peak, not more often than set."""

from __future__ import annotations

from sfu.memtrim import HeapTrimmer


def test_trims_after_a_bulk_release_and_not_more_often_than_its_interval() -> None:
    trimmer = HeapTrimmer(threshold=10, min_interval_ms=5_000)
    assert trimmer.available  # glibc here (the node's Docker image and CI are glibc too)
    assert not trimmer.observe(100, 0)  # the peak
    assert not trimmer.observe(95, 1_000)  # 5 released: not worth it
    assert trimmer.observe(80, 2_000) and trimmer.trims == 1
    assert not trimmer.observe(60, 3_000)  # 20 more, but within the interval: later
    assert trimmer.observe(60, 7_000) and trimmer.trims == 2  # then
    assert not trimmer.observe(60, 20_000) and not trimmer.observe(200, 21_000)  # growth never trims
    assert trimmer.observe(150, 30_000) and trimmer.trims == 3
