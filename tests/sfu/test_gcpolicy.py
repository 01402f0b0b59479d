"""GcFreezer: freeze after start-up and after a set-up burst has ended, unfreeze when the node has
emptied to below half; the decision on passed-in counts and time, then apply on the real gc."""

from __future__ import annotations

import gc

import pytest

from sfu.gcpolicy import GcAction, GcFreezer, apply, freeze_start_up

F, U = GcAction.FREEZE, GcAction.UNFREEZE


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        # (participants, now_ms) once a second -> action; grow_by 64, quiet 2000 ms
        ([(0, 0), (10, 1000), (63, 2000), (63, 9000)], [None, None, None, None]),  # never 64 more
        ([(100, 0), (100, 1000), (100, 2000), (100, 3000)], [None, None, F, None]),  # 2 s after the last growth
        ([(100, 0), (200, 1000), (300, 2000), (300, 3000), (300, 4000)], [None, None, None, None, F]),  # a burst: after it
        ([(100, 0), (100, 2000), (150, 3000), (170, 6000)], [None, F, None, None]),  # 70 more, growing: not quiet
        ([(100, 0), (100, 2000), (170, 3000), (170, 5000)], [None, F, None, F]),  # 70 more, then quiet
        ([(100, 0), (100, 2000), (90, 3000), (90, 6000)], [None, F, None, None]),  # shrinking: nothing
        ([(200, 0), (200, 2000), (99, 3000), (99, 4000)], [None, F, U, None]),  # below half, by >= 64: unfreeze
        ([(100, 0), (100, 2000), (49, 3000)], [None, F, None]),  # below half but only 51 fewer
        ([(200, 0), (200, 2000), (50, 3000), (150, 4000), (150, 6000)], [None, F, U, None, F]),  # back up: frozen again
        ([(200, 0), (200, 2000), (50, 3000), (100, 4000), (100, 6000)], [None, F, U, None, None]),  # 50 up: not yet
        ([(100, 2000), (100, 2001), (100, 4000)], [None, None, F]),  # growth from 0 seen at the first call
    ],
)
def test_decide(observations: list[tuple[int, int]], expected: list[GcAction | None]) -> None:
    freezer = GcFreezer(grow_by=64, quiet_ms=2000)
    assert [freezer.decide(n, t) for n, t in observations] == expected


def test_decide_wrap_free_of_start_time() -> None:
    """Monotonic time starts anywhere: a large start behaves like zero."""
    base = 10**12
    a, b = GcFreezer(), GcFreezer()
    seq = [(0, 0), (300, 1000), (300, 2000), (300, 3000), (100, 4000)]
    assert [a.decide(n, t) for n, t in seq] == [b.decide(n, base + t) for n, t in seq]


def test_apply_freezes_and_unfreezes() -> None:
    try:
        assert freeze_start_up() > 0
        frozen = gc.get_freeze_count()
        kept = [[i] for i in range(1000)]  # young objects survive, then are frozen with the rest
        apply(F)
        assert gc.get_freeze_count() >= frozen + 1000
        apply(U)
        assert gc.get_freeze_count() == 0
        del kept
    finally:
        gc.unfreeze()
