"""TickWheel: members spread round robin, each due once a period, a tick costs the slots due; the
cursor wrapping past the last slot, pauses longer than a period, removal while due."""

from __future__ import annotations

import pytest

from sfu.routing.wheel import TickWheel

T0 = 1_000_000  # an arbitrary monotonic start


def wheel(members: int, slots: int = 4, period_ms: int = 100) -> TickWheel[str]:
    w: TickWheel[str] = TickWheel(T0, period_ms=period_ms, slots=slots)
    for i in range(members):
        w.add(f"m{i}")
    return w


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        # (now - T0) at each call -> members due; 4 slots of 25 ms, members m0..m7 in slots 0,1,2,3,0,1,2,3
        ([24], [[]]),
        ([25], [["m0", "m4"]]),
        ([25, 49, 50], [["m0", "m4"], [], ["m1", "m5"]]),
        ([75], [["m0", "m4", "m1", "m5", "m2", "m6"]]),  # three slots at once, in slot order
        ([100, 125], [["m0", "m4", "m1", "m5", "m2", "m6", "m3", "m7"], ["m0", "m4"]]),  # wraps to slot 0
        ([100, 200], [["m0", "m4", "m1", "m5", "m2", "m6", "m3", "m7"], ["m0", "m4", "m1", "m5", "m2", "m6", "m3", "m7"]]),
        # a pause of ten periods: everyone once, not ten times; then the schedule goes on from then
        ([1000, 1024, 1025], [["m0", "m4", "m1", "m5", "m2", "m6", "m3", "m7"], [], ["m0", "m4"]]),
        ([0, -5], [[], []]),  # time standing still or read early: nothing
    ],
)
def test_due_by_time(calls: list[int], expected: list[list[str]]) -> None:
    w = wheel(8)
    assert [w.due(T0 + t) for t in calls] == expected


def test_each_member_once_per_period_and_a_slot_per_tick() -> None:
    """Over ten periods ticked every slot: each member due exactly ten times, never more than
    ceil(members / slots) in one tick."""
    w = wheel(203, slots=50, period_ms=1000)
    seen: dict[str, int] = {}
    biggest = 0
    for step in range(1, 501):
        due = w.due(T0 + step * 20)
        biggest = max(biggest, len(due))
        for m in due:
            seen[m] = seen.get(m, 0) + 1
    assert biggest == 5  # 203 over 50 slots: 3 slots hold 5, the rest 4
    assert set(seen.values()) == {10} and len(seen) == 203


def test_remove_and_readd() -> None:
    w = wheel(8)
    assert w.remove("m4") and not w.remove("m4")
    assert "m4" not in w and len(w) == 7
    assert w.due(T0 + 25) == ["m0"]
    assert w.add("m0") == 0  # already on: its slot, unchanged
    assert w.add("m4") == 0  # round robin carries on: slot 0 again (8 added so far)
    assert w.due(T0 + 125) == ["m1", "m5", "m2", "m6", "m3", "m7", "m0", "m4"]


def test_next_due_ms_follows_the_cursor() -> None:
    w = wheel(0)
    assert w.next_due_ms() == T0 + 25
    w.due(T0 + 30)
    assert w.next_due_ms() == T0 + 50
    w.due(T0 + 10_000)
    assert w.next_due_ms() == T0 + 10_025


@pytest.mark.parametrize(("period_ms", "slots"), [(100, 0), (10, 20), (100, 3)])
def test_bad_shapes(period_ms: int, slots: int) -> None:
    with pytest.raises(ValueError):
        TickWheel(T0, period_ms=period_ms, slots=slots)
