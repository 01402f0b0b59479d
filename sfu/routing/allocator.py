"""Stream allocation for one subscriber: spend its bandwidth estimate on its tracks.

Decide, then apply: ``Allocator.allocate(estimate_bps, tracks, now_ms)`` returns a frozen
``Allocation`` (per track: the simulcast layer and temporal layer to forward, or paused, and
whether to ask the publisher for a keyframe) and applies nothing itself.

Order: audio first (always, at its measured rate), then video by priority (higher first, then
track id): every video track gets its lowest option before any gets more, then each in turn
takes the best option the rest of the budget allows.  A video track's options are its
publisher's active layers ranked by resolution (width x height) and then bitrate, never by
rid order, each with its temporal layers (cumulative bitrates); the subscriber's bounds
(``max_rid`` by rank, ``max_width`` / ``max_height``, ``max_fps`` (with ``FPS_SLACK`` for a
measured rate), ``max_temporal``) cut the list from above but never below its lowest option.

Frame rate before resolution: above the lowest layer only full-rate temporal layers (or those
at ``min_fps`` and more) are options, so a squeezed subscriber gets a smaller picture that
moves rather than a big one at 7.5 fps; the lowest layer offers all its temporal layers.

Hysteresis: moving down (or staying) needs only the option's bitrate; moving up (and resuming
a track paused for lack of budget) needs ``(1 + up_margin)`` x the option's bitrate to have fit
for the track's hold time without a break; the move then goes straight to the best option that
fits with the margin.  The hold starts at ``up_hold_ms`` and doubles each time a move up is
undone within ``flap_ms`` (an estimate that swings around a layer's need), up to
``max_hold_ms``.  A track seen for the first time, or whose current option disappeared
(bound, layer stopped), takes the best that fits with the margin at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

AUDIO_DEFAULT_BPS = 40_000
#: a layer whose bitrate is not measured yet is assumed to need this much
UNKNOWN_LAYER_BPS = 150_000
#: a temporal layer measured at up to this much above ``max_fps`` is within it (a 30 fps bound
#: keeps a stream measured at 30.4 fps over a one-second window)
FPS_SLACK = 1.1


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One spatial layer (simulcast encoding) of a published video track, or the one layer of
    a non-simulcast track (``rid`` None) or of an audio track."""

    rid: str | None
    width: int = 0  # 0: not known (from keyframes / a=rid)
    height: int = 0
    #: measured bps up to each temporal layer (T0, T0+T1, ...); empty: not measured yet
    bitrates: tuple[int, ...] = ()
    #: frame rate up to each temporal layer; empty: not known (no fps bound applies)
    fps: tuple[float, ...] = ()
    active: bool = True


@dataclass(frozen=True, slots=True)
class Bounds:
    max_rid: str | None = None
    max_width: int | None = None
    max_height: int | None = None
    max_fps: float | None = None
    max_temporal: int | None = None


@dataclass(frozen=True, slots=True)
class TrackInput:
    track: str
    kind: Literal["audio", "video"]
    layers: tuple[LayerInfo, ...]
    priority: int = 0
    bounds: Bounds = Bounds()
    paused: bool = False  # by the subscriber (update_subscription enabled=false)


@dataclass(frozen=True, slots=True)
class TrackDecision:
    track: str
    rid: str | None
    spatial: int  # rank of the chosen layer (0: lowest); -1 when paused
    temporal: int  # -1 when paused
    bitrate_bps: int
    paused: str | None = None  # None | "subscriber" | "congestion" | "unavailable"
    keyframe: bool = False  # a new spatial layer (or a resume): ask its publisher for a keyframe
    switch: str | None = None  # "up" | "down" when the choice changed since the last allocation
    #: why it switched (or paused): "bandwidth" | "subscriber" (its bounds, pause, resume) |
    #: "publisher" (the layer stopped or appeared)
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    tracks: tuple[TrackDecision, ...]
    total_bps: int
    #: an estimate that would let the next video step up happen (for the probe controller)
    probe_target_bps: int | None
    #: some video track gets less than its bounds allow
    deficient: bool


@dataclass(frozen=True, slots=True)
class AllocatorConfig:
    up_margin: float = 0.1
    up_hold_ms: float = 2000.0
    #: a move down within ``flap_ms`` of a move up doubles the track's hold (up to
    #: ``max_hold_ms``); ``flap_ms`` x 3 without a move down brings it back to ``up_hold_ms``
    flap_ms: float = 10_000.0
    max_hold_ms: float = 30_000.0
    #: above the lowest layer, a reduced frame rate is an option only at this many fps or more
    #: (resolution is given up before frame rate); the lowest layer offers all of its rates
    min_fps: float = 20.0


@dataclass(slots=True)
class _State:
    rid: str | None = None
    spatial: int = -1
    temporal: int = -1
    paused: str | None = None
    up_since: float | None = None
    hold_ms: float = 0.0
    last_up_ms: float = -1e18
    last_down_ms: float = -1e18


@dataclass(frozen=True, slots=True)
class _Option:
    layer: LayerInfo
    spatial: int
    temporal: int
    bps: int


@dataclass(slots=True)
class _Work:
    track: TrackInput
    options: list[_Option]
    state: _State
    fresh: bool
    current: int  # index into options, -1: none
    reason: str  # of a switch, should there be one
    chosen: int = -1
    moved_up: bool = False


def _layer_key(layer: LayerInfo) -> tuple[int, int]:
    return (layer.width * layer.height, max(layer.bitrates, default=0))


def video_options(track: TrackInput, min_fps: float = 0.0) -> list[_Option]:
    """The track's options, low to high, within the subscriber's bounds."""
    ranked = sorted((layer for layer in track.layers if layer.active), key=_layer_key)
    b = track.bounds
    if b.max_rid is not None:
        cut = next((i for i, layer in enumerate(ranked) if layer.rid == b.max_rid), None)
        if cut is not None:
            ranked = ranked[: cut + 1]
    out: list[_Option] = []
    for spatial, layer in enumerate(ranked):
        too_big = (b.max_width is not None and layer.width > b.max_width) or (
            b.max_height is not None and layer.height > b.max_height)
        if too_big and spatial > 0:
            break
        rates = layer.bitrates or (UNKNOWN_LAYER_BPS,)
        top = top_temporal(layer, b)
        for temporal in range(top + 1):
            fps = layer.fps[temporal] if temporal < len(layer.fps) else None
            if spatial > 0 and temporal < top and (fps is None or fps < min_fps):
                continue  # a higher layer at a reduced rate: take a lower layer at the full one
            out.append(_Option(layer, spatial, temporal, max(rates[temporal], 1)))
    return out


def top_temporal(layer: LayerInfo, b: Bounds) -> int:
    """The highest temporal layer of ``layer`` within the bounds' ``max_fps`` / ``max_temporal``
    (never below T0)."""
    top = max(len(layer.bitrates) - 1, 0)
    if b.max_temporal is not None:
        top = max(min(top, b.max_temporal), 0)
    while top > 0 and b.max_fps is not None and top < len(layer.fps) and layer.fps[top] > b.max_fps * FPS_SLACK:
        top -= 1
    return top


class Allocator:
    __slots__ = ("config", "_states")

    def __init__(self, config: AllocatorConfig | None = None) -> None:
        self.config = config or AllocatorConfig()
        self._states: dict[str, _State] = {}

    def forget(self, track: str) -> None:
        self._states.pop(track, None)

    def allocate(self, estimate_bps: int, tracks: Sequence[TrackInput], now_ms: float) -> Allocation:
        budget = float(estimate_bps)
        decisions: dict[str, TrackDecision] = {}
        for t in tracks:
            if t.kind == "audio":
                bps = max((max(layer.bitrates, default=0) for layer in t.layers), default=0) or AUDIO_DEFAULT_BPS
                decisions[t.track] = self._audio(t, bps)
                if not t.paused:
                    budget -= bps
        work: list[_Work] = []
        for t in sorted((t for t in tracks if t.kind != "audio"), key=lambda t: (-t.priority, t.track)):
            state = self._states.get(t.track)
            fresh = state is None
            if state is None:
                state = self._states[t.track] = _State(hold_ms=self.config.up_hold_ms)
            options = video_options(t, self.config.min_fps)
            if t.paused or not options:
                why = ("subscriber", "subscriber") if t.paused else ("unavailable", "publisher")
                decisions[t.track] = self._paused(t, state, *why)
                continue
            current = next((i for i, o in enumerate(options)
                            if o.layer.rid == state.rid and o.temporal == state.temporal), -1)
            # its option went away, or the subscriber resumed it: no hold, as for a new track
            forced = current < 0 and state.paused != "congestion"
            reason = "bandwidth"
            if forced and not fresh:
                stopped = state.paused == "unavailable" or (state.paused is None and not any(
                    layer.rid == state.rid and layer.active for layer in t.layers))
                reason = "publisher" if stopped else "subscriber"
            work.append(_Work(t, options, state, fresh or forced, current, reason))
        for w in work:  # pass 1: everyone's lowest option
            budget -= self._lowest(w, budget, now_ms)
        for w in work:  # pass 2: upgrades, by priority
            if w.chosen >= 0:
                budget -= self._upgrade(w, budget, now_ms)
        probe_target: int | None = None
        deficient = False
        spent = estimate_bps - budget
        for w in work:
            decisions[w.track.track] = d = self._decide(w)
            self._flaps(w.state, d.switch if d.reason == "bandwidth" else None, now_ms)
            if w.chosen < len(w.options) - 1:
                deficient = True
                if probe_target is None:
                    have = w.options[w.chosen].bps if w.chosen >= 0 else 0
                    need = w.options[w.chosen + 1].bps * (1 + self.config.up_margin)
                    probe_target = int(spent - have + need)
        live = {t.track for t in tracks}
        for gone in [k for k in self._states if k not in live]:
            del self._states[gone]
        ordered = tuple(decisions[t.track] for t in tracks)
        total = sum(d.bitrate_bps for d in ordered)
        return Allocation(ordered, total, probe_target, deficient)

    def _held(self, w: _Work, now_ms: float) -> bool:
        """An up move is possible now: has it been for the hold time (or needs none)?"""
        if w.fresh:
            return True
        if w.state.up_since is None:
            w.state.up_since = now_ms
        return now_ms - w.state.up_since >= w.state.hold_ms

    def _lowest(self, w: _Work, budget: float, now_ms: float) -> float:
        need = w.options[0].bps
        if w.current >= 0 or w.fresh:
            fits = need <= budget
        elif need * (1 + self.config.up_margin) <= budget:  # resuming: an up move
            fits = self._held(w, now_ms)
            w.moved_up = fits
        else:
            fits = False
            w.state.up_since = None
        w.chosen = 0 if fits else -1
        return need if fits else 0

    def _upgrade(self, w: _Work, budget: float, now_ms: float) -> float:
        have = w.options[w.chosen].bps
        avail = budget + have
        margin = 1 + self.config.up_margin
        fit = max(i for i in range(len(w.options)) if i <= w.chosen or w.options[i].bps <= avail)
        fit_up = max((i for i in range(len(w.options)) if w.options[i].bps * margin <= avail), default=-1)
        base = w.current if w.current >= 0 else w.chosen
        choice = min(base, fit)
        if fit_up > base:
            if self._held(w, now_ms):
                choice = fit_up
                w.moved_up = True
        else:
            w.state.up_since = None
        w.chosen = max(choice, w.chosen)
        return w.options[w.chosen].bps - have

    def _decide(self, w: _Work) -> TrackDecision:
        state, t = w.state, w.track
        if w.moved_up:
            state.up_since = None
        if w.chosen < 0:
            return self._paused(t, state, "congestion", "bandwidth")
        o = w.options[w.chosen]
        playing = state.temporal >= 0
        switch: str | None = None
        if playing and (o.layer.rid, o.temporal) != (state.rid, state.temporal):
            switch = "up" if (o.spatial, o.temporal) > (state.spatial, state.temporal) else "down"
        elif not playing and state.paused is not None:
            switch = "up"
        keyframe = not playing or o.layer.rid != state.rid
        state.rid, state.spatial, state.temporal, state.paused = o.layer.rid, o.spatial, o.temporal, None
        return TrackDecision(t.track, o.layer.rid, o.spatial, o.temporal, o.bps, None, keyframe, switch,
                             w.reason if switch else None)

    def _flaps(self, state: _State, switch: str | None, now_ms: float) -> None:
        c = self.config
        if switch == "up":
            state.last_up_ms = now_ms
        elif switch == "down":
            if now_ms - state.last_up_ms < c.flap_ms:
                state.hold_ms = min(state.hold_ms * 2, c.max_hold_ms)
            state.last_down_ms = now_ms
        elif now_ms - state.last_down_ms > 3 * c.flap_ms:
            state.hold_ms = c.up_hold_ms

    @staticmethod
    def _paused(t: TrackInput, state: _State, paused: str, reason: str) -> TrackDecision:
        switch = "down" if state.temporal >= 0 else None
        state.paused = paused
        state.rid, state.spatial, state.temporal = None, -1, -1
        return TrackDecision(t.track, None, -1, -1, 0, paused, False, switch, reason if switch else None)

    def _audio(self, t: TrackInput, bps: int) -> TrackDecision:
        if t.paused:
            return TrackDecision(t.track, None, -1, -1, 0, "subscriber")
        return TrackDecision(t.track, t.layers[0].rid if t.layers else None, 0, 0, bps)
