"""Send-side bandwidth estimate for one subscriber transport, from transport-cc feedback.

Per feedback (``on_feedback``, not per packet): the received packets, in arrival order, feed
the delay-based chain (``delay.InterArrival`` -> ``delay.Trendline`` -> ``delay.OveruseDetector``
-> ``aimd.AimdRateControl``, which decreases from ``aimd.AckedBitrate``) and the reported
losses feed ``loss.LossBasedLimit``.  The estimate is the lower of the two, within the
configured bounds.

Robustness: ``seq`` must be the unwrapped transport-wide sequence number; packets reported
again by a later feedback (seq at or below the highest seq of an earlier one, by less than
``SEQ_RESTART``) are ignored; a reordered packet older than the group in progress does not count
as delay; a lost feedback only leaves a gap (the next group's deltas span it, both in send and
in arrival time, so no queue growth is invented); a receiver-side jump of more than 3 s
restarts grouping and the acknowledged-rate window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sfu.transport.bwe.aimd import AckedBitrate, AimdRateControl
from sfu.transport.bwe.delay import RESET_MS, InterArrival, OveruseDetector, Trendline
from sfu.transport.bwe.feedback import BweState, PacketFeedback
from sfu.transport.bwe.loss import LossBasedLimit

#: a feedback whose last seq is this far below the highest seen starts the numbering over
SEQ_RESTART = 0x8000
FEEDBACK_TIMEOUT_MS = 1000.0
TIMEOUT_FACTOR = 0.8


@dataclass(frozen=True, slots=True)
class BweConfig:
    start_bps: int = 300_000
    min_bps: int = 30_000
    max_bps: int = 20_000_000


def _recv_key(p: PacketFeedback) -> tuple[float, float]:
    return (p.recv_ms if p.recv_ms is not None else 0.0, p.send_ms)


class SendSideBwe:
    __slots__ = ("config", "state", "trend", "_inter", "_trend", "_detector", "_aimd", "_acked", "_loss",
                 "_max_seq", "_last_recv_ms", "_estimate", "_last_feedback_ms", "_last_timeout_ms")

    def __init__(self, config: BweConfig | None = None) -> None:
        self.config = config or BweConfig()
        c = self.config
        self.state = BweState.NORMAL
        self.trend = 0.0
        self._inter = InterArrival()
        self._trend = Trendline()
        self._detector = OveruseDetector()
        self._aimd = AimdRateControl(c.start_bps, c.min_bps, c.max_bps)
        self._acked = AckedBitrate()
        self._loss = LossBasedLimit()
        self._max_seq = -1
        self._last_recv_ms = -1.0
        self._last_feedback_ms = -1.0
        self._last_timeout_ms = -1e18
        self._estimate = float(c.start_bps)

    @property
    def estimate_bps(self) -> int:
        return int(self._estimate)

    @property
    def acked_bps(self) -> int | None:
        acked = self._acked.bps()
        return None if acked is None else int(acked)

    @property
    def loss_fraction(self) -> float:
        return self._loss.last_fraction

    def set_rtt(self, rtt_ms: float) -> None:
        rtt = min(max(rtt_ms, 0.0), 2000.0)
        self._aimd.rtt_ms = rtt
        self._loss.rtt_ms = rtt

    def tick(self, now_ms: float, sending: bool) -> int:
        """Call about once a second: while the transport sends but no feedback has come for
        ``FEEDBACK_TIMEOUT_MS``, the estimate falls by ``TIMEOUT_FACTOR`` (once per timeout),
        so a subscriber whose feedback stopped is not sent at its last rate for ever."""
        if self._last_feedback_ms < 0:
            self._last_feedback_ms = now_ms
        quiet = now_ms - self._last_feedback_ms >= FEEDBACK_TIMEOUT_MS
        if sending and quiet and now_ms - self._last_timeout_ms >= FEEDBACK_TIMEOUT_MS:
            self._last_timeout_ms = now_ms
            self._aimd.set_estimate(self._estimate * TIMEOUT_FACTOR, now_ms)
            self._aimd.forget_capacity()
            self._settle()
        return self.estimate_bps

    def on_probe_result(self, bps: float, now_ms: float) -> None:
        """A probe cluster got through at ``bps``: raise the estimate to it (never lowers)."""
        if bps > self._aimd.rate:
            self._aimd.set_estimate(bps, now_ms)
        if self._loss.limit is not None and bps > self._loss.limit:
            self._loss.limit = None
        self._settle()

    def on_feedback(self, packets: Sequence[PacketFeedback], now_ms: float) -> int:
        """Take one feedback's packet results; returns the new estimate (bps)."""
        self._last_feedback_ms = now_ms
        floor = self._max_seq
        if packets and floor - max(p.seq for p in packets) > SEQ_RESTART:
            floor = -1  # far behind what was seen: the caller restarted (or wrapped) its numbering
        fresh = [p for p in packets if p.seq > floor]
        if not fresh:
            return self.estimate_bps
        received = sorted((p for p in fresh if p.recv_ms is not None), key=_recv_key)
        first_seq = min(p.seq for p in fresh)
        if floor >= 0 and first_seq > floor + 1 and received and self._last_recv_ms >= 0:
            # the feedback(s) for floor+1 .. first_seq-1 were lost: that time holds unknown bits
            first_recv = received[0].recv_ms
            assert first_recv is not None
            self._acked.skip(self._last_recv_ms, first_recv)
        self._max_seq = max(p.seq for p in fresh)
        lost = len(fresh) - len(received)
        state: BweState | None = None
        for p in received:
            recv = p.recv_ms
            assert recv is not None
            if self._last_recv_ms >= 0 and abs(recv - self._last_recv_ms) > RESET_MS:
                self._acked.reset_gap()
            self._last_recv_ms = recv
            self._acked.add(recv, p.size)
            deltas = self._inter.add(p.send_ms, recv)
            if deltas is None:
                continue
            trend = self._trend.update(*deltas)
            if trend is None:
                continue
            self.trend = trend
            seen = self._detector.detect(trend, deltas[0], deltas[2])  # adapts on arrival time
            if state is not BweState.OVERUSING:
                state = seen
        if state is not None:
            self.state = state
        if received:
            self._aimd.update(self.state, self._acked.bps(), now_ms)
        self._loss.update(lost, len(fresh), self._estimate, self._aimd.rate, now_ms)
        self._settle()
        return self.estimate_bps

    def _settle(self) -> None:
        rate = self._aimd.rate
        if self._loss.limit is not None:
            rate = min(rate, self._loss.limit)
        self._estimate = min(max(rate, self.config.min_bps), self.config.max_bps)
