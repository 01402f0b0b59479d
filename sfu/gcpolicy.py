"""When the node moves its long-lived objects out of the garbage collector's sight (``gc.freeze``).

A full collection walks every tracked object; with 512 sessions up it stalled the forwarding loop
for 100-400 ms (``sfu_gc_pause_seconds{generation="2"}`` on a loaded 2-core box), once after each
big set-up.  The node's own objects (modules, certificate, ports) are frozen once after start-up;
sessions' objects after a set-up burst: when the participant count has grown by ``grow_by`` since
the last freeze and has not grown for ``quiet_ms`` (the burst is over).  Freezing takes what is
tracked as it is: cyclic garbage among it stays until ``gc.unfreeze``, which comes when the count
falls below half of what it was at the last freeze (and by ``grow_by`` at least), so a later full
collection can reclaim what those sessions left.  The node breaks its own cycles on close
(``DtlsEndpoint.release``), so what a freeze keeps is small and bounded by the peak it was taken at.

``decide`` is pure (the count and ``now_ms`` passed in); ``apply`` touches ``gc``.
"""

from __future__ import annotations

import enum
import gc


class GcAction(enum.Enum):
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"


class GcFreezer:
    def __init__(self, grow_by: int = 64, quiet_ms: int = 2000) -> None:
        if grow_by < 1 or quiet_ms < 0:
            raise ValueError("grow_by must be >= 1 and quiet_ms >= 0")
        self.grow_by = grow_by
        self.quiet_ms = quiet_ms
        self.frozen_at = 0  # participants at the last freeze (0: sessions' objects not frozen)
        self._base = 0  # growth is counted from here: the count at the last freeze or unfreeze
        self._last = 0
        self._grew_ms = 0  # when the count last grew
        self.freezes = 0
        self.unfreezes = 0

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
            self.unfreezes += 1
            return GcAction.UNFREEZE
        return None


def apply(action: GcAction) -> None:
    if action is GcAction.FREEZE:
        gc.collect(1)  # the young generations only (cheap): their garbage goes, survivors are old
        gc.freeze()
    else:
        gc.unfreeze()


def freeze_start_up() -> int:
    """After start-up: collect once, then freeze what survived; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
