"""Pure bookkeeping for sinks and reports: sequence continuity and latency percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``q`` in 0..100); NaN for an empty list."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary_ms(latencies_us: list[float]) -> dict[str, float | None]:
    """``{p50, p99, p999}`` in milliseconds (None when there are no samples)."""
    ordered = sorted(latencies_us)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9)):
        value = percentile(ordered, q)
        out[name] = None if math.isnan(value) else round(value / 1000.0, 4)
    return out


@dataclass
class SeqTracker:
    """Follows one stream's 16-bit RTP sequence numbers and counts what arrived out of line.

    ``gaps`` counts forward jumps (``missing_at_gap`` packets were missing at those moments),
    ``late`` counts packets at or behind the highest sequence seen (reordered or duplicated);
    ``extended`` is the highest sequence seen with 16-bit wraps unrolled (-1 before the first).
    """

    received: int = 0
    gaps: int = 0
    missing_at_gap: int = 0
    late: int = 0
    extended: int = -1

    def see(self, seq16: int) -> int:
        """Record one packet; returns its extended sequence number."""
        if not 0 <= seq16 <= 0xFFFF:
            raise ValueError(f"RTP sequence out of range: {seq16}")
        self.received += 1
        if self.extended < 0:
            self.extended = seq16
            return seq16
        delta = (seq16 - self.extended) & 0xFFFF
        if 0 < delta < 0x8000:
            if delta > 1:
                self.gaps += 1
                self.missing_at_gap += delta - 1
            self.extended += delta
            return self.extended
        self.late += 1
        return self.extended - ((self.extended - seq16) & 0xFFFF)

    def next16(self) -> int:
        """The sequence number that would continue the stream in order (-1 before the first)."""
        return -1 if self.extended < 0 else (self.extended + 1) & 0xFFFF

    def in_order(self, count: int) -> None:
        """Record ``count`` packets that each continued the stream exactly (the sinks' fast path)."""
        if self.extended < 0 or count < 0:
            raise ValueError("in_order needs a started stream and a non-negative count")
        self.received += count
        self.extended += count
