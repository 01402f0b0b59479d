"""Receive statistics of one incoming RTP stream (RFC 3550 A.3 and A.8), for receiver reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportFigures:
    fraction_lost: int  # 8-bit fixed point
    cumulative_lost: int
    highest_seq: int  # extended
    jitter: int  # in timestamp units


class ReceiveStats:
    __slots__ = (
        "clock_rate",
        "packets",
        "base_seq",
        "cycles",
        "max_seq",
        "jitter_q4",
        "transit",
        "_expected_prior",
        "_received_prior",
        "started",
    )

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.packets = 0
        self.base_seq = 0
        self.cycles = 0
        self.max_seq = 0
        self.jitter_q4 = 0  # jitter × 16, integer arithmetic as in RFC 3550 A.8
        #: the last packet's relative transit time (timestamp units), None before the first
        self.transit: int | None = None
        self._expected_prior = 0
        self._received_prior = 0
        self.started = False

    def update(self, seq: int, ts: int, now_ms: int) -> None:
        """One received packet.  (``PublishedTrack.on_rtp`` inlines this: keep the two alike.)"""
        self.packets += 1
        self.sequence(seq)
        arrival = now_ms * self.clock_rate // 1000
        transit = (arrival - ts) & 0xFFFFFFFF
        if self.transit is not None:
            d = (transit - self.transit) & 0xFFFFFFFF
            if d > 0x7FFFFFFF:
                d = 0x100000000 - d
            self.jitter_q4 += d - ((self.jitter_q4 + 8) >> 4)
        self.transit = transit

    def sequence(self, seq: int) -> None:
        """The sequence number part of ``update`` (packets not counted)."""
        if not self.started:
            self.started = True
            self.base_seq = seq
            self.max_seq = seq
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if seq < self.max_seq:
                    self.cycles += 0x10000
                self.max_seq = seq

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    def report(self) -> ReportFigures:
        """Figures for a report block; resets the interval counters."""
        expected = self.extended_max - self.base_seq + 1 if self.started else 0
        lost = max(0, expected - self.packets)
        expected_interval = expected - self._expected_prior
        received_interval = self.packets - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.packets
        lost_interval = expected_interval - received_interval
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 and lost_interval > 0 else 0
        return ReportFigures(
            fraction_lost=min(fraction, 255),
            cumulative_lost=min(lost, 0x7FFFFF),
            highest_seq=self.extended_max & 0xFFFFFFFF,
            jitter=self.jitter_q4 >> 4,
        )


#: the shortest window a rate is measured over; a sooner look gets the last rate again
RATE_MIN_WINDOW_MS = 500


class RateMeter:
    """A bit rate from a growing octet count, measured between two looks (the participants API's
    listing), never per packet: ``bps(octets, now_ms)`` is the rate since the previous look at
    least ``RATE_MIN_WINDOW_MS`` ago (0 at the first look)."""

    __slots__ = ("_ms", "_octets", "_bps")

    def __init__(self) -> None:
        self._ms: int | None = None
        self._octets = 0
        self._bps = 0

    def bps(self, octets: int, now_ms: int) -> int:
        if self._ms is None:
            self._ms, self._octets = now_ms, octets
            return 0
        elapsed = now_ms - self._ms
        if elapsed < RATE_MIN_WINDOW_MS:
            return self._bps
        self._bps = max(0, octets - self._octets) * 8000 // elapsed
        self._ms, self._octets = now_ms, octets
        return self._bps
