"""What keeps the forwarding loop from forwarding: loop stalls and garbage-collector pauses.

``LoopLagProbe`` arms a short timer every ``period_s`` and records how late it ran: the time the
loop spent in callbacks (a batch of packets, an HTTP request, a DTLS step, a housekeeping tick,
a collection) when it was due.  uvloop has no per-iteration hook, so this is the loop-iteration
figure the node can get without touching the hot path: 200 timer callbacks a second.
``GcPauses`` times every collection through ``gc.callbacks``, by generation.  Both fill
``Histogram``s exported at scrape time (``sfu_loop_lag_seconds``, ``sfu_gc_pause_seconds``).
"""

from __future__ import annotations

import asyncio
import gc
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

#: bucket upper bounds (seconds) of both histograms: the loop's stalls that matter are 1-50 ms
STALL_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
)


class Histogram:
    """Counts per bucket (``bounds`` ascending, upper bounds inclusive, then +Inf), sum and count."""

    __slots__ = ("bounds", "counts", "count", "sum_s")

    def __init__(self, bounds: Sequence[float] = STALL_BOUNDS) -> None:
        if not bounds or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError("bounds: must be non-empty and strictly ascending")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum_s += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (``le``, cumulative count), ending with +Inf."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out

    def quantile_bound(self, q: float) -> float:
        """The upper bound of the bucket holding quantile ``q`` (inf past the last bound, 0 if empty)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            if total >= rank:
                return bound
        return float("inf")


class LoopLagProbe:
    """A timer every ``period_s``; its lateness goes into ``lag``."""

    def __init__(self, period_s: float = 0.005) -> None:
        if not 0.001 <= period_s <= 1.0:
            raise ValueError(f"period_s: must be in [0.001, 1], got {period_s}")
        self.period_s = period_s
        self.lag = Histogram()
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = time.monotonic() + self.period_s
        self._handle = self._loop.call_later(self.period_s, self._fire)

    def _fire(self) -> None:
        self.lag.observe(max(0.0, time.monotonic() - self._due))
        if self._loop is not None:
            self._arm()


class GcPauses:
    """Collector pauses by generation (0, 1, 2), timed through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pauses = [Histogram(), Histogram(), Histogram()]
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif phase == "stop" and self._started:
            generation = min(2, max(0, int(info.get("generation", 2))))
            self.pauses[generation].observe(time.perf_counter() - self._started)
            self._started = 0.0
