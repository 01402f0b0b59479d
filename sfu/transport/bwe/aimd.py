"""The delay-based rate: AIMD control driven by the overuse detector (gcc-02 §5.5), and the
acknowledged bitrate it decreases from.

Increase is multiplicative (8 %/s) while the link's capacity is unknown or the acknowledged
rate has left the capacity seen at earlier overuses far behind, additive (about one packet per
response time) near it; it never runs more than 1.5 x the acknowledged rate ahead.  On overuse
the rate drops to ``BETA`` x the acknowledged rate, at most once per response time.
Underuse holds the rate (the queue is draining).
"""

from __future__ import annotations

import enum
import math
from collections import deque

from sfu.transport.bwe.feedback import BweState

BETA = 0.85
MULT_PER_S = 1.08
MIN_ADD_BPS_PER_S = 4000.0
PACKET_BITS = 1200 * 8
FRAME_RATE = 30.0
#: the increase stays within this factor of the acknowledged rate (plus ``AHEAD_BPS``)
AHEAD_FACTOR = 1.5
AHEAD_BPS = 10_000.0
#: sliding window of the acknowledged-bitrate estimate
ACKED_WINDOW_MS = 500.0
ACKED_BUCKET_MS = 5.0
ACKED_MAX_BUCKETS = 512


class AckedBitrate:
    """Bits received over the last ``ACKED_WINDOW_MS`` of receiver time; None until that much
    was seen.  Fed in receive order per feedback, counted in ``ACKED_BUCKET_MS`` buckets (a
    packet costs two comparisons and an addition; a reordered one counts in the open bucket).
    Spans whose feedback was lost (``skip``) are left out of the window's time as well as its
    bits, so a lost feedback does not read as a rate drop."""

    __slots__ = ("_window", "_gaps", "_bits", "_first_ms", "_latest_ms", "_open_ms", "_open_bits")

    def __init__(self) -> None:
        self._window: deque[tuple[float, int]] = deque()
        self._gaps: deque[tuple[float, float]] = deque(maxlen=64)
        self._bits = 0
        self._first_ms = -1.0
        self._latest_ms = -1.0
        self._open_ms = -1e18
        self._open_bits = 0

    def add(self, recv_ms: float, size: int) -> None:
        bits = size * 8
        if recv_ms < self._open_ms + ACKED_BUCKET_MS:
            if recv_ms < self._latest_ms - ACKED_WINDOW_MS:
                return  # far out of order: its window is gone
            self._open_bits += bits
            self._bits += bits
            if recv_ms > self._latest_ms:
                self._latest_ms = recv_ms
            return
        if self._first_ms < 0:
            self._first_ms = recv_ms
        window = self._window
        if self._open_bits:
            window.append((self._open_ms, self._open_bits))
        self._open_ms = self._latest_ms = recv_ms
        self._open_bits = bits
        self._bits += bits
        cut = recv_ms - ACKED_WINDOW_MS
        while window and (window[0][0] <= cut or len(window) > ACKED_MAX_BUCKETS):
            self._bits -= window.popleft()[1]

    def skip(self, start_ms: float, end_ms: float) -> None:
        """Nothing is known of the packets received between these times (a lost feedback)."""
        if end_ms > start_ms:
            self._gaps.append((start_ms, end_ms))

    def reset_gap(self) -> None:
        """A gap in the receiver's timeline (feedback lost for long): start the window over."""
        self._window.clear()
        self._gaps.clear()
        self._bits = self._open_bits = 0
        self._first_ms = self._latest_ms = -1.0
        self._open_ms = -1e18

    def bps(self) -> float | None:
        if self._first_ms < 0 or self._latest_ms - self._first_ms < ACKED_WINDOW_MS:
            return None
        cut = self._latest_ms - ACKED_WINDOW_MS
        while self._gaps and self._gaps[0][1] <= cut:
            self._gaps.popleft()
        covered = ACKED_WINDOW_MS - sum(min(end, self._latest_ms) - max(start, cut) for start, end in self._gaps)
        if covered < ACKED_WINDOW_MS / 4:
            return None
        return self._bits * 1000.0 / covered


class _Mode(enum.Enum):
    HOLD = 0
    INCREASE = 1
    DECREASE = 2


class AimdRateControl:
    """The delay-based estimate in bps."""

    __slots__ = ("rate", "min_bps", "max_bps", "rtt_ms", "_mode", "_last_ms", "_last_decrease_ms",
                 "_cap_mean", "_cap_var")

    def __init__(self, start_bps: float, min_bps: float, max_bps: float) -> None:
        self.rate = start_bps
        self.min_bps = min_bps
        self.max_bps = max_bps
        self.rtt_ms = 200.0
        self._mode = _Mode.HOLD
        self._last_ms = -1.0
        self._last_decrease_ms = -1e9
        self._cap_mean = -1.0  # link capacity seen at overuse (kbps); -1: unknown
        self._cap_var = 0.4

    def set_estimate(self, bps: float, now_ms: float) -> None:
        """A probe (or the operator) knows better: jump there."""
        self.rate = min(max(bps, self.min_bps), self.max_bps)
        self._last_ms = now_ms

    def forget_capacity(self) -> None:
        """The path may have changed (feedback stopped): search multiplicatively again."""
        self._cap_mean = -1.0

    def update(self, state: BweState, acked_bps: float | None, now_ms: float) -> float:
        if self._last_ms < 0:
            self._last_ms = now_ms
        dt_ms = min(max(now_ms - self._last_ms, 0.0), 1000.0)
        self._last_ms = now_ms
        if state is BweState.OVERUSING:
            self._mode = _Mode.DECREASE
        elif state is BweState.UNDERUSING:
            self._mode = _Mode.HOLD
        elif self._mode is not _Mode.INCREASE:
            self._mode = _Mode.INCREASE
        if self._mode is _Mode.INCREASE:
            self._increase(acked_bps, dt_ms)
        elif self._mode is _Mode.DECREASE:
            self._decrease(acked_bps, now_ms)
        self.rate = min(max(self.rate, self.min_bps), self.max_bps)
        return self.rate

    def _increase(self, acked_bps: float | None, dt_ms: float) -> None:
        if acked_bps is not None and self._cap_mean >= 0:
            kbps = acked_bps / 1000
            if kbps > self._cap_mean + 3 * self._cap_std():
                self._cap_mean = -1.0  # far beyond: the capacity grew; search quickly again
        if self._cap_mean >= 0:
            packets = max(1.0, math.ceil(self.rate / FRAME_RATE / PACKET_BITS))
            avg_bits = self.rate / FRAME_RATE / packets
            response_s = (self.rtt_ms + 100.0) / 1000.0
            step = max(MIN_ADD_BPS_PER_S, avg_bits / response_s) * dt_ms / 1000.0
            new = self.rate + step
        else:
            new = self.rate * MULT_PER_S ** (dt_ms / 1000.0)
        if acked_bps is not None:
            new = min(new, max(self.rate, AHEAD_FACTOR * acked_bps + AHEAD_BPS))
        self.rate = new

    def _decrease(self, acked_bps: float | None, now_ms: float) -> None:
        if now_ms - self._last_decrease_ms >= self.rtt_ms + 100.0:
            base = acked_bps if acked_bps is not None else self.rate
            self.rate = min(self.rate, BETA * base)
            self._last_decrease_ms = now_ms
            if acked_bps is not None:
                kbps = acked_bps / 1000
                if self._cap_mean >= 0 and kbps < self._cap_mean - 3 * self._cap_std():
                    self._cap_mean = -1.0  # the capacity fell: forget the old one
                self._observe_capacity(kbps)
        self._mode = _Mode.HOLD

    def _observe_capacity(self, kbps: float) -> None:
        if self._cap_mean < 0:
            self._cap_mean = kbps
        else:
            self._cap_mean = 0.95 * self._cap_mean + 0.05 * kbps
        norm = max(self._cap_mean, 1.0)
        err = self._cap_mean - kbps
        self._cap_var = min(max(0.95 * self._cap_var + 0.05 * err * err / norm, 0.4), 2.5)

    def _cap_std(self) -> float:
        return math.sqrt(self._cap_var * max(self._cap_mean, 1.0))
