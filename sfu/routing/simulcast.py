"""Simulcast: the layers of one published video source, and which one each subscriber gets.

A publisher that simulcasts (``a=simulcast:send`` with ``a=rid`` lines, as Chromium does) sends
one RTP stream per layer, each with its own SSRC that the offer does not name: every layer is a
``PublishedTrack`` with its ``rid`` whose SSRC ``PublisherSink`` learns from the rtp-stream-id
header extension of its first packets.  The layers of one media section form a
``SimulcastGroup``; a subscriber receives one layer at a time.

Ranking (low to high quality), never by the offer's order alone (Firefox lists its encodings
high first: f, h, q): by what each layer carries, the coded size of its keyframes (width x
height, read by ``PublishedTrack`` from each keyframe it looks at: a layer's first, and those
subscribers wait for); ties, and the places of layers without a size yet (a top layer the
publisher starts paused), by the a=rid restrictions (max-width x max-height, else max-br) when
every layer has them, then by the packet rates measured per layer (a higher layer sends more
packets per frame) once they tell the layers apart, last by the offer's order (low first, as
"q", "h", "f").  A keyframe of a new size
(an encoder that scales a layer down under a bandwidth limit) re-ranks at once; a layer whose
packet rate moves by ``RECHECK_RATIO`` has its next keyframe looked at again, if one comes within
``SIZE_WATCH_MS`` (a new size comes with a keyframe; no per-packet parsing otherwise).  Whatever the ranks, a rid names one
encoding: ``set_layer`` and WHEP layer requests keep their meaning.

Choice: a downtrack's bound (``bound_rid``: its ``target_rid``, None: the highest layer, lowered
by its ``prefs.max_width`` / ``max_height`` to the highest layer whose keyframes fit) and its
``alloc_rid`` (the allocator's choice within the subscriber's estimate, sfu.routing.allocation;
None: no cap), the lower of the two by rank; the best *active* layer at or below it, else the lowest active one above it, else the target itself (waiting for it).
A layer is active while packets arrive: ``tick`` (once a second) marks one that sent nothing
since the previous tick as stopped (the publisher paused it), and moves its subscribers down to
the next active layer, and back up when it resumes.  Moves happen at the new layer's keyframe
(``DownTrack.switch_to``), so the subscriber's stream stays continuous.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sfu.packet.rtp import get_extension
from sfu.routing.allocator import LayerInfo
from sfu.routing.subscription import fitting_rank
from sfu.routing.track import PublishedTrack

if TYPE_CHECKING:
    from sfu.routing.downtrack import DownTrack

HDREXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
HDREXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
HDREXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
#: weight of the newest packet-rate sample in a layer's average
RATE_WEIGHT = 0.5
#: a measured ranking replaces the current one only when each step up is at least this much faster
RANK_MARGIN = 1.2
#: a layer whose packet rate moved this much since its size was last read has its next keyframe read
RECHECK_RATIO = 1.5
#: ... if it comes within this long (keyframes are looked for packet by packet meanwhile)
SIZE_WATCH_MS = 10_000


@dataclass(frozen=True)
class RidRestrictions:
    """The restrictions of an ``a=rid`` line (RFC 8851) that say something about quality."""

    max_width: int | None = None
    max_height: int | None = None
    max_fps: int | None = None
    max_br: int | None = None

    @classmethod
    def parse(cls, params: str) -> RidRestrictions:
        """``"max-width=1280;max-height=720"``; ``pt=`` and unknown restrictions are ignored."""
        values: dict[str, int] = {}
        for item in params.split(";"):
            key, sep, value = item.strip().partition("=")
            key = key.strip().lower()
            if not sep or key not in ("max-width", "max-height", "max-fps", "max-br"):
                continue
            try:
                number = int(float(value.strip()))
            except ValueError:
                raise ValueError(f"a=rid restriction {key} is not a number: {value.strip()!r}") from None
            if number < 0:
                raise ValueError(f"a=rid restriction {key} is negative: {number}")
            values[key.replace("-", "_")] = number
        return cls(**values)

    @property
    def rank_key(self) -> tuple[int, int] | None:
        """(pixels, bitrate) to order layers by, or None when neither is restricted."""
        pixels = self.max_width * self.max_height if self.max_width and self.max_height else 0
        if not pixels and not self.max_br:
            return None
        return pixels, self.max_br or 0


class SimulcastGroup:
    """The layers of one simulcast source and the downtracks that receive one of them."""

    def __init__(
        self, layers: list[PublishedTrack], restrictions: list[RidRestrictions] | None = None, now_ms: int = 0
    ) -> None:
        if not layers or any(layer.rid is None for layer in layers):
            raise ValueError("a simulcast group needs layers, each with a rid")
        if len({layer.rid for layer in layers}) != len(layers):
            raise ValueError("the layers of a simulcast group need distinct rids")
        self.layers = list(layers)  # the offer's order
        self.mid = layers[0].mid
        restrictions = restrictions or [RidRestrictions()] * len(layers)
        self._restriction_keys = [r.rank_key for r in restrictions]
        self.ranked_by_restrictions = all(k is not None for k in self._restriction_keys)
        #: positions in the offer, by measured packet rate (low first) once the rates told them apart
        self._rate_order: list[int] | None = None
        #: low to high quality
        self.ranked: list[PublishedTrack] = list(layers)
        self.subscribers: list[DownTrack] = []
        self._seen = [0] * len(layers)  # packets counted at the last tick
        self._active: list[bool | None] = [None] * len(layers)  # None: not sampled yet
        self._rate = [0.0] * len(layers)  # packets per second, averaged
        self._peak = [0.0] * len(layers)
        self._checked_rate = [0.0] * len(layers)  # the packet rate when the size was last looked for
        self._watch_since = [0] * len(layers)  # when a rate change started looking for a keyframe; 0: not
        self._sampled_ms = now_ms
        for layer in layers:
            layer.group = self
        self._rerank()

    @property
    def primary(self) -> PublishedTrack:
        """The layer that stands for the group where one track per source is listed."""
        return self.layers[0]

    @property
    def rids(self) -> list[str]:
        """Rids low to high."""
        return [layer.rid or "" for layer in self.ranked]

    def layer(self, rid: str) -> PublishedTrack | None:
        return next((layer for layer in self.layers if layer.rid == rid), None)

    def is_active(self, layer: PublishedTrack) -> bool:
        active = self._active[self.layers.index(layer)]
        return layer.stats.packets > 0 if active is None else active

    # -- choosing ------------------------------------------------------------------------------
    def choose(self, target_rid: str | None, cap_rid: str | None = None) -> PublishedTrack:
        """The layer a subscriber that wants ``target_rid`` should receive now, within the
        allocator's ``cap_rid`` (None: no cap) as well: the lower of the two, by rank."""
        ranked = self.ranked
        target = self.layer(target_rid) if target_rid is not None else None
        top = ranked.index(target) if target is not None else len(ranked) - 1
        cap = self.layer(cap_rid) if cap_rid is not None else None
        if cap is not None:
            top = min(top, ranked.index(cap))
        for layer in reversed(ranked[: top + 1]):
            if self.is_active(layer):
                return layer
        for layer in ranked[top + 1 :]:
            if self.is_active(layer):
                return layer
        return ranked[top]

    def bound_rank(self, dt: DownTrack) -> int:
        """The rank of the highest layer ``dt``'s subscriber takes by its own choice: its
        ``target_rid`` and, by the layers' keyframe sizes, its ``max_width`` / ``max_height``."""
        target = self.layer(dt.target_rid) if dt.target_rid is not None else None
        top = self.ranked.index(target) if target is not None else len(self.ranked) - 1
        return min(top, fitting_rank(self.ranked, dt.prefs.max_width, dt.prefs.max_height))

    def bound_rid(self, dt: DownTrack) -> str | None:
        """``bound_rank`` as a rid (None: no bound, the top layer)."""
        rank = self.bound_rank(dt)
        return None if rank == len(self.ranked) - 1 else self.ranked[rank].rid

    def attach(self, dt: DownTrack, now_ms: int) -> None:
        """``dt`` receives this source: the chosen layer, from its next keyframe."""
        if dt.target_rid is not None and self.layer(dt.target_rid) is None:
            dt.target_rid = None  # a rid of a previous publisher
        if dt not in self.subscribers:
            self.subscribers = [d for d in self.subscribers if d.source is not None and d.source.group is self]
            self.subscribers.append(dt)
        chosen = self.choose(self.bound_rid(dt), dt.alloc_rid)
        if dt.source is not None and dt.source.group is self:
            dt.switch_to(chosen, now_ms)
        else:
            dt.bind_layer(chosen, now_ms)

    def set_target(self, dt: DownTrack, rid: str | None, now_ms: int) -> PublishedTrack:
        """Make ``rid`` (None: the highest) what ``dt`` receives; returns the layer it moves to
        (an inactive target is replaced by the best active layer until it sends again).
        Raises ``KeyError`` for a rid the group does not have."""
        if rid is not None and self.layer(rid) is None:
            raise KeyError(rid)
        dt.target_rid = rid
        self.attach(dt, now_ms)
        return dt.pending_source or self.choose(self.bound_rid(dt), dt.alloc_rid)

    # -- once a second ---------------------------------------------------------------------------
    def tick(self, now_ms: int) -> None:
        """Measure each layer's packet rate, re-rank, and move subscribers to their best layer."""
        elapsed = now_ms - self._sampled_ms
        if elapsed <= 0:
            return
        self._sampled_ms = now_ms
        for i, layer in enumerate(self.layers):
            count = layer.stats.packets
            delta = count - self._seen[i]
            self._seen[i] = count
            self._active[i] = delta > 0
            rate = delta * 1000 / elapsed
            self._rate[i] = rate if self._peak[i] == 0 else RATE_WEIGHT * rate + (1 - RATE_WEIGHT) * self._rate[i]
            self._peak[i] = max(self._peak[i], self._rate[i])
            checked = self._checked_rate[i]
            if not checked:
                self._checked_rate[i] = self._rate[i]  # the first rate: the first keyframe is read anyway
            elif not checked * RECHECK_RATIO >= self._rate[i] >= checked / RECHECK_RATIO:
                self._checked_rate[i] = self._rate[i]
                if not layer.keyframe_pending:
                    layer.keyframe_pending = True  # its next keyframe's size is read
                    self._watch_since[i] = now_ms
            since = self._watch_since[i]
            if since and (not layer.keyframe_pending or now_ms - since >= SIZE_WATCH_MS):
                self._watch_since[i] = 0
                if layer.keyframe_pending and not layer.keyframe_wanted():
                    layer.keyframe_pending = False  # none came: stop looking at every packet
        self._rank_by_rate()
        self._rerank()
        self.subscribers = [d for d in self.subscribers if d.source is not None and d.source.group is self]
        for dt in self.subscribers:
            chosen = self.choose(self.bound_rid(dt), dt.alloc_rid)
            if chosen is dt.source:
                dt.cancel_switch()
            elif chosen is not dt.pending_source:
                dt.switch_to(chosen, now_ms)

    def _rank_by_rate(self) -> None:
        peaks = self._peak
        if not all(peaks):
            return  # a layer never sent yet: keep the order we have
        order = sorted(range(len(self.layers)), key=lambda i: (peaks[i], i))
        if order != self._rate_order and all(
            peaks[b] >= RANK_MARGIN * peaks[a] for a, b in zip(order, order[1:], strict=False)
        ):
            self._rate_order = order

    def resized(self) -> None:
        """A layer's keyframe showed a new size (``PublishedTrack``): rank again.  Subscribers
        move at the next ``tick``."""
        self._rerank()

    def _rerank(self) -> None:
        """Rank by the restrictions (when every layer has them), then the measured packet rates
        (once they told the layers apart), then the offer's order; then the layers whose size is
        known are put in size order within the places they hold (a layer not seen yet, such as a
        top layer the publisher starts paused, keeps its place)."""
        layers = self.layers
        restrictions = self._restriction_keys
        rate_rank = [0] * len(layers)
        if self._rate_order is not None:
            for rank, i in enumerate(self._rate_order):
                rate_rank[i] = rank

        def key(i: int) -> tuple[tuple[int, int], int, int]:
            restricted = restrictions[i] if self.ranked_by_restrictions else None
            return restricted or (0, 0), rate_rank[i], i

        order = sorted(range(len(layers)), key=key)
        places = [at for at, i in enumerate(order) if layers[i].width and layers[i].height]
        sized = sorted((order[at] for at in places), key=lambda i: layers[i].width * layers[i].height)
        for at, i in zip(places, sized, strict=True):
            order[at] = i
        self.ranked = [layers[i] for i in order]

    def layer_infos(self) -> tuple[LayerInfo, ...]:
        """The layers as the allocator takes them, low to high (the allocator keeps this order
        where sizes and bitrates do not decide): rid, keyframe size, active.  Bitrates are not
        measured per layer here (packet rates are), so they are left for the allocator's default."""
        return tuple(
            LayerInfo(layer.rid, layer.width, layer.height, active=self.is_active(layer))
            for layer in self.ranked
        )

    def describe(self, dt: DownTrack | None = None) -> dict[str, object]:
        out: dict[str, object] = {
            "layers": [
                {
                    "rid": layer.rid,
                    "active": self.is_active(layer),
                    "width": layer.width or None,
                    "height": layer.height or None,
                }
                for layer in self.ranked
            ],
        }
        if dt is not None:
            out["target"] = dt.target_rid
            out["current"] = dt.source.rid if dt.source is not None and dt.source.group is self else None
            out["switching_to"] = dt.pending_source.rid if dt.pending_source is not None else None
        return out


def form_groups(
    layers: Iterable[tuple[PublishedTrack, RidRestrictions]], now_ms: int
) -> list[SimulcastGroup]:
    """One group per media section (mid) of the given layers, in their order."""
    by_mid: dict[str, list[tuple[PublishedTrack, RidRestrictions]]] = {}
    for layer, restrictions in layers:
        by_mid.setdefault(layer.mid, []).append((layer, restrictions))
    return [
        SimulcastGroup([t for t, _ in items], [r for _, r in items], now_ms) for items in by_mid.values()
    ]


def sources(tracks: Iterable[PublishedTrack]) -> Iterator[PublishedTrack]:
    """One track per published source: a simulcast group shows as its ``primary`` layer."""
    for track in tracks:
        if track.group is None or track is track.group.primary:
            yield track


def groups_of(tracks: Iterable[PublishedTrack]) -> list[SimulcastGroup]:
    seen: dict[int, SimulcastGroup] = {}
    for track in tracks:
        if track.group is not None:
            seen.setdefault(id(track.group), track.group)
    return list(seen.values())


def _ext_text(view: memoryview, length: int, ext_id: int | None) -> str | None:
    if ext_id is None:
        return None
    loc = get_extension(view, length, ext_id)
    if loc is None:
        return None
    try:
        return bytes(view[loc[0] : loc[0] + loc[1]]).rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        return None


def learn_layer(
    tracks: dict[int, PublishedTrack],
    rtx_ssrcs: dict[int, PublishedTrack],
    view: memoryview,
    length: int,
    ssrc: int,
) -> PublishedTrack | None:
    """A packet of an SSRC no track has: the simulcast layer it names, if any.

    Its rtp-stream-id extension names a layer whose SSRC is not known yet: the layer takes
    ``ssrc`` (``tracks`` is re-keyed) and is returned.  Its repaired-rtp-stream-id names a layer
    without an RTX SSRC: ``ssrc`` becomes that layer's RTX SSRC (added to ``rtx_ssrcs``) and None
    is returned, as for a packet that names nothing.  The sdes:mid extension, when present, must
    match the layer's section (several sections may use the same rids)."""
    found: PublishedTrack | None = None
    repaired = False
    for track in tracks.values():
        if track.group is None or track.rid is None:
            continue
        ids = track.ext_ids
        mid = _ext_text(view, length, ids.get(HDREXT_MID))
        if mid is not None and mid != track.mid:
            continue
        if track.ssrc < 0 and _ext_text(view, length, ids.get(HDREXT_RID)) == track.rid:
            found = track
            break
        if track.rtx_ssrc is None and _ext_text(view, length, ids.get(HDREXT_REPAIRED_RID)) == track.rid:
            found, repaired = track, True
            break
    if found is None:
        return None
    if repaired:
        found.rtx_ssrc = ssrc
        rtx_ssrcs[ssrc] = found
        return None
    del tracks[found.ssrc]
    found.ssrc = ssrc
    tracks[ssrc] = found
    return found
