"""GcFreezer: freeze after start-up and after a set-up burst has ended; when the node has emptied
to below half, thaw, collect once and freeze again (the start-up objects stay frozen); the
decision on passed-in counts and time, the actions on recorded collector calls, then on the real gc."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from sfu.gcpolicy import GcAction, GcFreezer, GcOps, apply, freeze_start_up

F, U = GcAction.FREEZE, GcAction.REFREEZE


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
        ([(200, 0), (200, 2000), (99, 3000), (99, 4000)], [None, F, U, None]),  # below half, by >= 64: refreeze
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


@pytest.mark.parametrize(("action", "calls"), [
    (F, [("collect", 1), ("freeze",)]),  # the young generations only, then everything tracked
    (U, [("unfreeze",), ("collect", 2), ("freeze",)]),  # one full pass, then frozen again: never left thawed
])
def test_apply_calls_the_collector(action: GcAction, calls: list[tuple[Any, ...]]) -> None:
    made: list[tuple[Any, ...]] = []

    def collect(generation: int) -> int:
        made.append(("collect", generation))
        return 0

    apply(action, GcOps(collect, lambda: made.append(("freeze",)), lambda: made.append(("unfreeze",))))
    assert made == calls


class Session:
    """A session's objects, in a cycle (what a freeze may keep after the session left)."""

    def __init__(self) -> None:
        self.me = self


def test_a_refreeze_reclaims_what_left_and_keeps_start_up_objects_frozen() -> None:
    start_up = Session()  # made before start-up's freeze, alive throughout
    try:
        assert freeze_start_up() > 0
        burst = [Session() for _ in range(1000)]
        left = weakref.ref(burst[0])
        apply(F)
        frozen = gc.get_freeze_count()
        del burst  # the sessions leave: their cycles are frozen garbage
        gc.collect()
        assert left() is not None  # a full pass does not see frozen objects
        apply(U)
        assert left() is None  # the refreeze's one full pass reclaimed them
        assert 0 < gc.get_freeze_count() <= frozen - 1000  # the rest is frozen again
        assert all(o is not start_up for o in gc.get_objects())  # start-up objects out of later passes
    finally:
        gc.unfreeze()
