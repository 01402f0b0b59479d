"""The stream allocator: budget and the subscriber's bounds to layers (table-driven), and its
hysteresis over an injected clock."""

from __future__ import annotations

import pytest

from sfu.routing.allocator import Allocation, Allocator, Bounds, LayerInfo, TrackDecision, TrackInput

# listed high first, as Firefox does: the rank must come from what the layers carry
F = LayerInfo("f", 1280, 720, (900_000, 1_300_000, 1_700_000), (7.5, 15.0, 30.0))
H = LayerInfo("h", 640, 360, (300_000, 450_000, 600_000), (7.5, 15.0, 30.0))
Q = LayerInfo("q", 320, 180, (100_000, 150_000, 200_000), (7.5, 15.0, 30.0))
AUDIO = TrackInput("mic", "audio", (LayerInfo(None, bitrates=(40_000,)),))


def cam(track: str = "cam", layers: tuple[LayerInfo, ...] = (F, H, Q), **kw: object) -> TrackInput:
    return TrackInput(track, "video", layers, **kw)  # type: ignore[arg-type]


def pick(a: Allocation, track: str = "cam") -> tuple[str | None, int, str | None]:
    d = next(d for d in a.tracks if d.track == track)
    return d.rid, d.temporal, d.paused


@pytest.mark.parametrize(
    ("estimate", "video", "expected"),
    [
        (3_000_000, cam(), ("f", 2, None)),
        (1_000_000, cam(), ("h", 2, None)),  # f T0 would need 990 k with the margin, 960 k left
        (250_000, cam(), ("q", 1, None)),  # q T2 x 1.1 = 220 k > 210 k left
        (50_000, cam(), (None, -1, "congestion")),
        (3_000_000, cam(bounds=Bounds(max_rid="h")), ("h", 2, None)),
        (3_000_000, cam(bounds=Bounds(max_width=400, max_height=400)), ("q", 2, None)),
        (3_000_000, cam(bounds=Bounds(max_width=100)), ("q", 2, None)),  # never below the lowest
        (3_000_000, cam(bounds=Bounds(max_fps=15)), ("f", 1, None)),
        (3_000_000, cam(layers=(LayerInfo("f", 1280, 720, F.bitrates, active=False), H, Q)), ("h", 2, None)),
        (3_000_000, cam(paused=True), (None, -1, "subscriber")),
        (3_000_000, cam(layers=()), (None, -1, "unavailable")),
        # no resolution known: ranked by bitrate, whatever the rid order
        (500_000, cam(layers=(LayerInfo("a", bitrates=(900_000,)), LayerInfo("b", bitrates=(120_000,)),
                             LayerInfo("c", bitrates=(400_000,)))), ("c", 0, None)),
        # a single-layer (non-simulcast) track, temporal layers only
        (220_000, cam(layers=(LayerInfo(None, 640, 360, (100_000, 160_000, 220_000)),)), (None, 1, None)),
        # not measured yet: assumed to need 150 k
        (300_000, cam(layers=(LayerInfo("q", 320, 180),)), ("q", 0, None)),
    ],
)
def test_budget_and_bounds_to_layers(estimate: int, video: TrackInput, expected: tuple[object, ...]) -> None:
    a = Allocator().allocate(estimate, [AUDIO, video], 0.0)
    assert pick(a) == expected
    assert pick(a, "mic") == (None, 0, None)  # audio first, always
    assert a.total_bps == sum(d.bitrate_bps for d in a.tracks)
    assert a.total_bps <= max(estimate, 40_000)


def test_audio_is_served_before_video_and_counts() -> None:
    a = Allocator().allocate(140_000, [cam(), AUDIO], 0.0)
    assert pick(a, "mic") == (None, 0, None)
    assert pick(a) == ("q", 0, None)  # 100 k left: q T0 just fits
    a = Allocator().allocate(130_000, [cam(), AUDIO], 0.0)
    assert pick(a, "mic") == (None, 0, None)
    assert pick(a) == (None, -1, "congestion")
    # an audio-only subscriber behind a thin link still gets its audio
    b = Allocator().allocate(30_000, [AUDIO], 0.0)
    assert b.tracks == (TrackDecision("mic", None, 0, 0, 40_000),)


def test_every_video_gets_its_lowest_before_any_gets_more() -> None:
    tracks = [AUDIO, cam("low", priority=0), cam("high", priority=5), cam("mid", priority=1)]
    a = Allocator().allocate(1_400_000, tracks, 0.0)
    # 1,400 - 40 audio - 3 x 100 lowest = 1,060 k: "high" has 1,160 k -> h T2 (660 k with the
    # margin; f T2 needs 1,870 k); "mid" then has 660 k -> h T2; "low" 160 k -> q T0 (q T1: 165 k)
    assert [pick(a, t)[:2] for t in ("high", "mid", "low")] == [("h", 2), ("h", 2), ("q", 0)]
    tight = Allocator().allocate(300_000, tracks, 0.0)
    assert [pick(tight, t)[2] for t in ("high", "mid", "low")] == [None, None, "congestion"]


def test_up_needs_margin_for_the_hold_time_down_is_at_once() -> None:
    alloc = Allocator()
    first = alloc.allocate(1_000_000, [AUDIO, cam()], 0.0)
    assert pick(first) == ("h", 2, None)
    d = first.tracks[1]
    assert d.keyframe and d.switch is None  # the first choice: a keyframe to start, no switch
    for now in range(100, 2200, 100):  # room for f T2 from t=100, held for 2 s
        a = alloc.allocate(3_000_000, [AUDIO, cam()], float(now))
        if now < 2100:
            assert pick(a) == ("h", 2, None), now
    assert pick(a) == ("f", 2, None)
    assert a.tracks[1].keyframe and a.tracks[1].switch == "up" and a.tracks[1].reason == "bandwidth"
    same = alloc.allocate(3_000_000, [AUDIO, cam()], 2150.0)
    assert not same.tracks[1].keyframe and same.tracks[1].switch is None
    down = alloc.allocate(1_000_000, [AUDIO, cam()], 2200.0)
    assert pick(down) == ("h", 2, None)  # f at 7.5 or 15 fps is no option: h at 30
    assert down.tracks[1].switch == "down" and down.tracks[1].keyframe
    lower = alloc.allocate(550_000, [AUDIO, cam()], 2300.0)
    assert pick(lower) == ("q", 2, None)
    assert lower.tracks[1].switch == "down" and lower.tracks[1].keyframe
    again = alloc.allocate(690_000, [AUDIO, cam()], 2400.0)  # h T2 fits, not with the margin
    assert pick(again) == ("q", 2, None) and again.tracks[1].switch is None
    lowest = alloc.allocate(200_000, [AUDIO, cam()], 2500.0)
    assert pick(lowest) == ("q", 1, None)  # the lowest layer trades frame rate
    assert lowest.tracks[1].switch == "down" and not lowest.tracks[1].keyframe


def test_flapping_estimate_never_moves_up() -> None:
    alloc = Allocator()
    alloc.allocate(1_000_000, [AUDIO, cam()], 0.0)
    for k in range(1, 40):
        a = alloc.allocate(3_000_000 if k % 2 else 1_000_000, [AUDIO, cam()], k * 500.0)
        assert pick(a) == ("h", 2, None)


def test_within_the_margin_is_not_enough_to_move_up() -> None:
    alloc = Allocator()
    alloc.allocate(1_000_000, [AUDIO, cam()], 0.0)
    for now in range(0, 10_000, 500):
        a = alloc.allocate(40_000 + 1_750_000, [AUDIO, cam()], float(now))  # f T2 fits, not x 1.1
    assert pick(a) == ("h", 2, None)  # and f at 15 fps is no option


def test_paused_for_congestion_resumes_after_the_hold() -> None:
    alloc = Allocator()
    alloc.allocate(1_000_000, [AUDIO, cam()], 0.0)
    paused = alloc.allocate(100_000, [AUDIO, cam()], 100.0)
    assert pick(paused) == (None, -1, "congestion") and paused.tracks[1].switch == "down"
    assert paused.tracks[1].reason == "bandwidth"
    assert pick(alloc.allocate(420_000, [AUDIO, cam()], 200.0)) == (None, -1, "congestion")
    assert pick(alloc.allocate(420_000, [AUDIO, cam()], 2100.0)) == (None, -1, "congestion")
    back = alloc.allocate(420_000, [AUDIO, cam()], 2200.0)
    assert pick(back) == ("q", 2, None)  # straight to what fits: 200 k x 1.1 <= 380 k
    assert back.tracks[1].keyframe and back.tracks[1].switch == "up"


def test_subscriber_resume_and_vanished_layer_need_no_hold() -> None:
    alloc = Allocator()
    alloc.allocate(3_000_000, [AUDIO, cam()], 0.0)

    def step(now: float, video: TrackInput) -> tuple[object, ...]:
        d = alloc.allocate(3_000_000, [AUDIO, video], now).tracks[1]
        return d.rid, d.temporal, d.paused, d.switch, d.reason

    assert step(100.0, cam(paused=True)) == (None, -1, "subscriber", "down", "subscriber")
    assert step(200.0, cam()) == ("f", 2, None, "up", "subscriber")
    no_f = (LayerInfo("f", 1280, 720, F.bitrates, active=False), H, Q)
    assert step(300.0, cam(layers=no_f)) == ("h", 2, None, "down", "publisher")
    assert step(400.0, cam()) == ("h", 2, None, None, None)  # f is back: an up move, held
    assert step(2400.0, cam()) == ("f", 2, None, "up", "bandwidth")
    assert step(2500.0, cam(bounds=Bounds(max_rid="q"))) == ("q", 2, None, "down", "subscriber")
    assert step(2600.0, cam(layers=())) == (None, -1, "unavailable", "down", "publisher")
    d = alloc.allocate(100_000, [AUDIO, cam()], 2700.0).tracks[1]
    assert (d.paused, d.switch, d.reason) == ("congestion", None, None)  # was not playing


def test_probe_target_is_what_the_next_step_needs() -> None:
    alloc = Allocator()
    a = alloc.allocate(1_000_000, [AUDIO, cam()], 0.0)
    # 40 k audio + f T2 1,700 k x 1.1
    assert a.deficient and a.probe_target_bps == 40_000 + 1_870_000
    full = alloc.allocate(3_000_000, [AUDIO, cam()], 5000.0)
    full = alloc.allocate(3_000_000, [AUDIO, cam()], 8000.0)
    assert pick(full) == ("f", 2, None)
    assert not full.deficient and full.probe_target_bps is None
    bounded = Allocator().allocate(1_000_000, [AUDIO, cam(bounds=Bounds(max_rid="h"))], 0.0)
    assert not bounded.deficient and bounded.probe_target_bps is None


def test_state_is_bounded_to_the_tracks_given() -> None:
    alloc = Allocator()
    for i in range(100):
        alloc.allocate(1_000_000, [AUDIO, cam(f"cam{i}")], float(i))
    assert len(alloc._states) == 1


def test_reduced_frame_rate_above_the_lowest_layer_only_at_min_fps() -> None:
    f60 = LayerInfo("f", 1280, 720, (900_000, 1_300_000, 1_700_000), (15.0, 30.0, 60.0))
    a = Allocator().allocate(1_500_000, [AUDIO, cam(layers=(f60, H, Q))], 0.0)
    assert pick(a) == ("f", 1, None)  # 30 fps is enough: 1,300 k x 1.1 <= 1,460 k
    b = Allocator().allocate(1_500_000, [AUDIO, cam(layers=(f60, H, Q), bounds=Bounds(max_fps=15))], 0.0)
    assert pick(b) == ("f", 0, None)  # the subscriber's bound wins: its top rate within it


def test_a_flapping_layer_doubles_its_hold() -> None:
    alloc = Allocator()
    now = 0.0
    alloc.allocate(1_000_000, [AUDIO, cam()], now)
    ups = []
    for _ in range(6):  # the estimate swings: room for f for a while, then not
        while pick(alloc.allocate(3_000_000, [AUDIO, cam()], now))[0] != "f":
            now += 100
        ups.append(now)
        now += 1000
        assert pick(alloc.allocate(1_000_000, [AUDIO, cam()], now))[0] == "h"
        now += 100
    waits = [round(b - a) for a, b in zip(ups, ups[1:], strict=False)]
    # each wait: the hold (2, 4, 8, 16, 30 s) + the 1.1 s spent on f
    assert waits == [5100, 9100, 17100, 31100, 31100], waits
    for _ in range(400):  # then a long calm on h: the hold is back to 2 s
        alloc.allocate(1_000_000, [AUDIO, cam()], now)
        now += 100
    start = now
    while pick(alloc.allocate(3_000_000, [AUDIO, cam()], now))[0] != "f":
        now += 100
    assert now - start == 2000


# one layer (no simulcast) with temporal layers: 7.5, 15 and 30 fps
L1T3 = LayerInfo(None, 0, 0, (120_000, 170_000, 230_000), (7.5, 15.0, 30.0))


@pytest.mark.parametrize(
    ("estimate", "bounds", "temporal"),
    [
        (1_000_000, Bounds(), 2),
        (200_000, Bounds(), 1),  # T2 x 1.1 = 253 k does not fit: half the frame rate
        (140_000, Bounds(), 0),  # a quarter before pausing
        (1_000_000, Bounds(max_temporal=0), 0),
        (1_000_000, Bounds(max_fps=15), 1),
        (1_000_000, Bounds(max_fps=30), 2),  # 30 fps measured a little over is within a 30 fps bound
        (1_000_000, Bounds(max_fps=1), 0),  # never below T0
    ],
)
def test_temporal_layers_of_one_layer(estimate: int, bounds: Bounds, temporal: int) -> None:
    a = Allocator().allocate(estimate, [cam(layers=(L1T3,), bounds=bounds)], 0.0)
    assert pick(a) == (None, temporal, None)


def test_the_lowest_layer_drops_temporal_layers_before_pausing_then_goes_back_up() -> None:
    alloc = Allocator()
    assert pick(alloc.allocate(1_000_000, [cam(layers=(L1T3,))], 0.0)) == (None, 2, None)
    d = alloc.allocate(150_000, [cam(layers=(L1T3,))], 500.0).tracks[0]
    assert (d.temporal, d.switch, d.keyframe) == (0, "down", False)  # same layer: no keyframe asked
    assert pick(alloc.allocate(1_000_000, [cam(layers=(L1T3,))], 1000.0)) == (None, 0, None)  # the hold
    assert pick(alloc.allocate(1_000_000, [cam(layers=(L1T3,))], 3000.0)) == (None, 2, None)
