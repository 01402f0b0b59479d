"""When the node moves its long-lived objects out of the garbage collector's sight (``gc.freeze``).

A full collection walks every tracked object; with 512 sessions up it stalled the forwarding loop
for 100-400 ms (``sfu_gc_pause_seconds{generation="2"}`` on a loaded 2-core box), once after each
big set-up.  The node's own objects (modules, certificate, ports) are frozen once after start-up;
sessions' objects after a set-up burst: when the participant count has grown by ``grow_by`` since
the last freeze and has not grown for ``quiet_ms`` (the burst is over).  Freezing takes what is
tracked as it is: cyclic garbage among it stays until the count falls below half of what it was at
the last freeze (and by ``grow_by`` at least): then everything is thawed, collected once (what
those sessions left goes) and what survives is frozen again, in one step (one pause, when it
happens).  A plain ``gc.unfreeze`` there thawed the start-up objects too, and every later full
collection walked the whole heap again.  The node breaks its own cycles on close
(``DtlsEndpoint.release``), so what a freeze keeps is small and bounded by the peak it was taken at.

``decide`` is pure (the count and ``now_ms`` passed in); ``apply`` runs an action on ``GcOps``
(the real ``gc`` unless a test passes its own).
"""

from __future__ import annotations

import enum
import gc
from collections.abc import Callable
from dataclasses import dataclass


class GcAction(enum.Enum):
    #: collect the young generations, freeze everything tracked
    FREEZE = "freeze"
    #: thaw everything, collect it all once, freeze what survived
    REFREEZE = "refreeze"


@dataclass(frozen=True)
class GcOps:
    """The collector's calls ``apply`` makes."""

    collect: Callable[[int], int]
    freeze: Callable[[], None]
    unfreeze: Callable[[], None]


REAL_GC = GcOps(gc.collect, gc.freeze, gc.unfreeze)


class GcFreezer:
    def __init__(self, grow_by: int = 64, quiet_ms: int = 2000) -> None:
        if grow_by < 1 or quiet_ms < 0:
            raise ValueError("grow_by must be >= 1 and quiet_ms >= 0")
        self.grow_by = grow_by
        self.quiet_ms = quiet_ms
        self.frozen_at = 0  # participants at the last freeze (0: sessions' objects not frozen)
        self._base = 0  # growth is counted from here: the count at the last freeze or refreeze
        self._last = 0
        self._grew_ms = 0  # when the count last grew
        self.freezes = 0
        self.refreezes = 0

    def decide(self, participants: int, now_ms: int) -> GcAction | None:
        """Called about once a second with the live participant count."""
        if participants > self._last:
            self._grew_ms = now_ms
        self._last = participants
        if participants >= self._base + self.grow_by and now_ms - self._grew_ms >= self.quiet_ms:
            self.frozen_at = self._base = participants
            self.freezes += 1
            return GcAction.FREEZE
        if self.frozen_at and participants < self.frozen_at // 2 and self.frozen_at - participants >= self.grow_by:
            self.frozen_at = 0
            self._base = participants
            self.refreezes += 1
            return GcAction.REFREEZE
        return None


def apply(action: GcAction, ops: GcOps = REAL_GC) -> None:
    if action is GcAction.FREEZE:
        ops.collect(1)  # the young generations only (cheap): their garbage goes, survivors are old
        ops.freeze()
    else:
        ops.unfreeze()
        ops.collect(2)  # the one full pass: what the sessions that left kept in cycles goes
        ops.freeze()  # the start-up objects and the sessions still here stay out of later passes


def freeze_start_up() -> int:
    """After start-up: collect once, then freeze what survived; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
