"""The recorder's jitter buffer: order restored, holes waited for then given up, bounded."""

from __future__ import annotations

import pytest

from sfu.packet.jitter import Gap, JitterBuffer


def _run(pushes: list[tuple[int, int]], *, max_packets: int = 8, max_delay_ms: int = 100) -> tuple[list[object], JitterBuffer[int]]:
    jb: JitterBuffer[int] = JitterBuffer(max_packets=max_packets, max_delay_ms=max_delay_ms)
    out: list[object] = []
    for seq, now in pushes:
        out += jb.push(seq, now, seq)
    return out, jb


@pytest.mark.parametrize(
    ("pushes", "expected", "lost"),
    [
        ([(1, 0), (2, 0), (3, 0)], [1, 2, 3], 0),  # in order
        ([(1, 0), (3, 0), (2, 10)], [1, 2, 3], 0),  # reordered: waits for 2
        ([(1, 0), (3, 0), (4, 50), (5, 100)], [1, Gap(1), 3, 4, 5], 1),  # 2 never comes: given up at 100 ms
        ([(1, 0), (3, 0), (4, 50)], [1], 0),  # still waiting for 2
        ([(65534, 0), (65535, 0), (0, 0), (1, 0)], [65534, 65535, 0, 1], 0),  # wrap
        ([(65535, 0), (1, 0), (0, 5)], [65535, 0, 1], 0),  # reordered across the wrap
        ([(5, 0), (4, 0), (6, 0)], [5, 6], 0),  # 4 is behind the first: late
        ([(1, 0), (1, 0), (2, 0)], [1, 2], 0),  # duplicate
    ],
)
def test_order(pushes: list[tuple[int, int]], expected: list[object], lost: int) -> None:
    out, jb = _run(pushes)
    assert out == expected
    assert jb.lost == lost


def test_bounded_by_packets() -> None:
    # 2 is missing; 8 more are held, the 9th (over max_packets) gives the hole up at once
    out, jb = _run([(1, 0)] + [(s, 0) for s in range(3, 12)], max_packets=8, max_delay_ms=10_000)
    assert out == [1, Gap(1), *range(3, 12)]
    assert len(jb._held) == 0


def test_late_after_gap_and_flush() -> None:
    out, jb = _run([(1, 0), (4, 0), (5, 200), (2, 210)])
    assert out == [1, Gap(2), 4, 5]
    assert jb.late == 1
    jb2: JitterBuffer[int] = JitterBuffer(max_packets=8, max_delay_ms=1000)
    jb2.push(1, 0, 1)
    jb2.push(3, 0, 3)
    jb2.push(6, 0, 6)
    assert jb2.flush() == [Gap(1), 3, Gap(2), 6]
    assert jb2.lost == 3


def test_poll_gives_up_without_new_packets() -> None:
    jb: JitterBuffer[int] = JitterBuffer(max_packets=8, max_delay_ms=100)
    assert jb.push(1, 0, 1) == [1]
    assert jb.push(3, 10, 3) == []
    assert jb.poll(50) == []
    assert jb.poll(110) == [Gap(1), 3]


def test_bad_bounds() -> None:
    with pytest.raises(ValueError, match="max_packets"):
        JitterBuffer(max_packets=0)
