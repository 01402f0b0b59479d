"""The loss-based limit (gcc-02 §6): more than ``HIGH`` of the packets lost lowers it by half
the loss fraction (at most once per ``DECREASE_GAP_MS`` + rtt); less than ``LOW`` raises it by
8 % over the lowest value of the last second; in between it holds.  The limit only exists after
a decrease, and lapses once it has climbed back above the delay-based estimate: random loss
below ``HIGH`` (Wi-Fi) never lowers the estimate."""

from __future__ import annotations

from collections import deque

LOW = 0.02
HIGH = 0.10
#: loss is judged over at least this many reported packets
MIN_PACKETS = 20
DECREASE_GAP_MS = 300.0
HISTORY_MS = 1000.0


class LossBasedLimit:
    __slots__ = ("limit", "rtt_ms", "_lost", "_expected", "_last_decrease_ms", "_history", "last_fraction")

    def __init__(self) -> None:
        self.limit: float | None = None
        self.rtt_ms = 200.0
        self.last_fraction = 0.0
        self._lost = 0
        self._expected = 0
        self._last_decrease_ms = -1e9
        self._history: deque[tuple[float, float]] = deque()

    def update(self, lost: int, expected: int, current_bps: float, delay_bps: float, now_ms: float) -> None:
        """Count one feedback's packets; ``current_bps``: the estimate now (the loss limit starts
        from it), ``delay_bps``: the delay-based estimate (the limit lapses above it)."""
        self._lost += lost
        self._expected += expected
        if self._expected < MIN_PACKETS:
            return
        fraction = self._lost / self._expected
        self.last_fraction = fraction
        self._lost = self._expected = 0
        if fraction > HIGH:
            if now_ms - self._last_decrease_ms >= DECREASE_GAP_MS + self.rtt_ms:
                base = current_bps if self.limit is None else min(self.limit, current_bps)
                self.limit = base * (1 - 0.5 * fraction)
                self._last_decrease_ms = now_ms
                self._remember(self.limit, now_ms)
        elif fraction < LOW and self.limit is not None:
            lowest = min((v for _, v in self._history), default=self.limit)
            self.limit = max(self.limit, 1.08 * lowest + 1000.0)
            self._remember(self.limit, now_ms)
            if self.limit >= delay_bps:
                self.limit = None
                self._history.clear()

    def _remember(self, bps: float, now_ms: float) -> None:
        self._history.append((now_ms, bps))
        while self._history and self._history[0][0] < now_ms - HISTORY_MS:
            self._history.popleft()
