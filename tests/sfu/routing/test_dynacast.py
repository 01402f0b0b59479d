"""Dynacast's decision (pure, the time injected), what a source's subscribers need, and layers
bounded by size (``fitting_rank``, ``SimulcastGroup.bound_rank``), over real groups and a real
CONNECTED transport."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sfu.routing.dynacast import OFF_DELAY_MS, Dynacast, LayerState, needed_rank
from sfu.routing.subscription import fitting_rank
from tests.sfu.routing.harness import Link
from tests.sfu.routing.test_simulcast import T0, Publisher, subscriber

RIDS = ("q", "h", "f")
ALL_ON = ("q", "h", "f")


def states(*active: str) -> tuple[LayerState, ...]:
    return tuple(LayerState(rid, rid in active) for rid in RIDS)


# (ms after the start, highest rank needed, the decision: None when nothing is to be told)
STEPS: dict[str, list[tuple[int, int, tuple[LayerState, ...] | None]]] = {
    "everyone on f: nothing to tell (the publisher sends all)": [
        (0, 2, None), (10_000, 2, None)],
    "f unneeded: paused only after the delay": [
        (0, 1, None), (OFF_DELAY_MS - 1, 1, None), (OFF_DELAY_MS, 1, states("q", "h")), (OFF_DELAY_MS + 500, 1, None)],
    "needed again: active at once": [
        (0, 0, None), (OFF_DELAY_MS, 0, states("q")), (OFF_DELAY_MS + 100, 2, states("q", "h", "f"))],
    "a flip within the delay tells nothing; the delay counts from the last need": [
        (0, 2, None), (1000, 0, None), (2000, 2, None), (2000 + OFF_DELAY_MS - 1, 0, None),
        (2000 + OFF_DELAY_MS, 0, states("q"))],
    "nobody subscribes: the lowest stays on": [
        (0, -1, None), (OFF_DELAY_MS, -1, states("q"))],
    "every layer below the highest needed stays on": [
        (0, 2, None), (1000, 1, None), (OFF_DELAY_MS - 1, 1, None), (OFF_DELAY_MS, 1, states("q", "h")),
        (10 * OFF_DELAY_MS, 1, None)],
    "h paused, then f wanted: both at once": [
        (0, 0, None), (OFF_DELAY_MS, 0, states("q")), (OFF_DELAY_MS + 1, 2, states(*ALL_ON))],
}


@pytest.mark.parametrize("steps", list(STEPS.values()), ids=list(STEPS))
def test_decide(steps: list[tuple[int, int, tuple[LayerState, ...] | None]]) -> None:
    d = Dynacast()
    for at, top, expected in steps:
        assert d.decide(RIDS, top, T0 + at) == expected, (at, top)


def test_a_new_layer_counts_as_needed_when_first_seen_and_a_gone_one_is_forgotten() -> None:
    d = Dynacast()
    assert d.decide(("q", "h"), 0, T0) is None
    assert d.decide(("q", "h"), 0, T0 + OFF_DELAY_MS) == (LayerState("q", True), LayerState("h", False))
    # "f" appears (the group re-ranked after a renegotiation): it is given the delay as well
    assert d.decide(RIDS, 0, T0 + OFF_DELAY_MS + 1) is None
    assert d.decide(RIDS, 0, T0 + 2 * OFF_DELAY_MS + 1) == states("q")
    assert d.decide(("q",), 0, T0 + 3 * OFF_DELAY_MS) is None
    assert "h" not in d._needed_ms


@dataclass
class Layer:
    width: int
    height: int


LADDER = [Layer(320, 180), Layer(640, 360), Layer(1280, 720)]


@pytest.mark.parametrize(
    ("layers", "max_width", "max_height", "rank"),
    [
        (LADDER, None, None, 2),
        (LADDER, 1280, 720, 2),
        (LADDER, 1279, None, 1),
        (LADDER, None, 360, 1),
        (LADDER, 640, 720, 1),
        (LADDER, 100, 100, 0),  # nothing fits: the lowest, never below
        ([Layer(320, 180), Layer(0, 0), Layer(1280, 720)], 2000, 2000, 2),
        ([Layer(320, 180), Layer(0, 0), Layer(1280, 720)], 700, 400, 0),  # h's size unknown: not counted
        ([Layer(0, 0), Layer(0, 0)], 640, 360, 0),
    ],
)
def test_fitting_rank(layers: list[Layer], max_width: int | None, max_height: int | None, rank: int) -> None:
    assert fitting_rank(layers, max_width, max_height) == rank


FIREFOX_SIZES = {"f": (640, 480), "h": (320, 240), "q": (160, 120)}


async def test_bounds_by_size_and_what_subscribers_need(link: Link) -> None:
    """Firefox's order (f, h, q high first) with sizes from keyframes: ``max_width`` picks by
    size, not by the offer's order; the group's need is the highest bound, a paused subscription
    needs the lowest layer, a recording its own layer."""
    pub = Publisher(link.counters, ("f", "h", "q"))
    for rid, size in FIREFOX_SIZES.items():
        pub.send(rid, True, T0, size=size)
    pub.group.tick(T0 + 1000)
    group = pub.group
    assert group.rids == ["q", "h", "f"]
    assert needed_rank(group) == -1
    a, b = subscriber(link), subscriber(link)
    a.prefs.max_width = 400
    group.attach(a, T0 + 1000)
    assert group.bound_rank(a) == 1 and group.bound_rid(a) == "h"
    assert a.pending_source is group.layer("h") or a.source is group.layer("h")
    assert needed_rank(group) == 1
    a.prefs.max_width = None
    a.target_rid = "q"
    assert needed_rank(group) == 0
    group.attach(b, T0 + 1000)
    assert needed_rank(group) == 2  # b: no bound
    b.prefs.max_height = 240
    b.prefs.max_width = 10_000
    assert group.bound_rank(b) == 1
    b.prefs.enabled = False
    assert needed_rank(group) == 0
    layer = group.layer("f")
    assert layer is not None
    layer.tap = lambda view, length, now_ms: None  # a recording of f
    assert needed_rank(group) == 2
    layer.tap = None
    b.close()
    a.close()
    assert needed_rank(group) == -1
