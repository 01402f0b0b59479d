"""Dynacast: which layers of a simulcast source anyone needs, told to its publisher so that it
stops encoding the others (``subscribed_layers``, issue 12).  Pure: the time is passed in.

What a subscriber needs is its *bound* (``SimulcastGroup.bound_rank``: ``set_layer`` /
``max_layer``, WHEP's layer route, ``max_width`` / ``max_height``), not the layer its bandwidth
estimate allows at the moment: the allocator only picks among layers being sent, so a layer
paused because the estimate was short could never be asked for again, and an estimate swinging
around a layer's need would switch the publisher's encoder on and off.  Every layer up to the
highest one needed stays on (the allocator may move a subscriber down to any of them at once); a
recording needs the layer it records; a paused subscription (or one its participant may not
receive now) needs the lowest layer only.

``Dynacast.decide`` turns that into the layers' states: a layer needed is active at once, one no
longer needed turns inactive only after nobody needed it for ``OFF_DELAY_MS`` (a viewer that
flips its bound does not pause and resume the encoder each time); the lowest layer is never
paused (a new subscriber starts on it at once, and the node keeps seeing the source).  A decision
is returned only when it differs from what the publisher was last told (nothing told yet: it
sends every layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.routing.simulcast import SimulcastGroup

#: a layer nobody needed for this long is paused at its publisher
OFF_DELAY_MS = 3000


@dataclass(frozen=True, slots=True)
class LayerState:
    rid: str
    active: bool

    def describe(self) -> dict[str, object]:
        return {"rid": self.rid, "active": self.active}


class Dynacast:
    """What one source's publisher was told, and since when each layer was last needed."""

    __slots__ = ("off_delay_ms", "told", "_needed_ms")

    def __init__(self, off_delay_ms: int = OFF_DELAY_MS) -> None:
        self.off_delay_ms = off_delay_ms
        #: rid -> active, as last told (a rid not in it: never told, so sent)
        self.told: dict[str, bool] = {}
        self._needed_ms: dict[str, int] = {}

    def decide(self, rids: Sequence[str], top: int, now_ms: int) -> tuple[LayerState, ...] | None:
        """``rids`` low to high, ``top`` the highest rank anyone needs (-1: nobody subscribes):
        every layer's state when it changed since the last decision told, else None."""
        top = max(top, 0)  # the lowest layer stays on
        needed = self._needed_ms
        want: dict[str, bool] = {}
        for rank, rid in enumerate(rids):
            if rank <= top:
                needed[rid] = now_ms
                want[rid] = True
            else:
                since = needed.setdefault(rid, now_ms)  # a layer first seen now: as if just needed
                want[rid] = now_ms - since < self.off_delay_ms
        for gone in [rid for rid in needed if rid not in want]:
            del needed[gone]
        if all(self.told.get(rid, True) == active for rid, active in want.items()):
            return None
        self.told = want
        return tuple(LayerState(rid, want[rid]) for rid in rids)


def needed_rank(group: SimulcastGroup) -> int:
    """The highest rank (0: lowest) any subscriber or recording of ``group`` needs, -1: none."""
    top = -1
    for dt in group.subscribers:
        source = dt.source
        if source is None or source.group is not group:
            continue
        top = max(top, 0 if dt.withheld else group.bound_rank(dt))
    for rank, layer in enumerate(group.ranked):
        if layer.tap is not None:  # a recording's: it keeps its layer for the whole recording
            top = max(top, rank)
    return top
