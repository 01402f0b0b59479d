"""A leaky-bucket pacer for one subscriber transport (sans-I/O).

``enqueue(kind, size, now_ms, item)`` queues one packet; ``poll(now_ms)`` returns what may go
out now and when to poll next.  Audio goes out at once (it is small and latency-bound; its
bytes still count against the budget), retransmissions next, video last: neither audio nor a
retransmission ever waits behind video.  Paced packets leave at ``rate_bps`` (the estimate x
``PacerConfig.factor``, set by the caller with ``set_rate``): a burst up to ``burst_ms`` worth
of bytes may go at once, the rest is spread.

Bounds: the video queue holds at most ``max_queue_ms`` of sending time at the current rate and
``max_packets`` packets; beyond that the oldest video packets are dropped and counted
(``dropped_video``; the caller asks for a keyframe when it grows).  Retransmissions older than
``max_queue_ms`` are dropped too (``dropped_rtx``), and the audio and retransmission queues
hold at most ``max_packets`` each (``dropped_audio``: only when nobody polls).

Probing and padding: ``start_probe`` raises the rate for a cluster of ``min_bytes``; while the
queue cannot fill it, ``poll`` reports ``padding_bytes`` the caller should send as padding
(RTX of old packets or padding-only packets) with the cluster's id; ``set_padding_rate`` asks
for padding up to a floor rate when the queue is empty (``padding_bytes`` again).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
#: padding is counted (for a probe's packet count) in packets of at most this size
PADDING_PACKET = 1200


class PacketKind(enum.IntEnum):
    AUDIO = 0
    RTX = 1
    VIDEO = 2


@dataclass(frozen=True, slots=True)
class PacerConfig:
    factor: float = 2.5
    burst_ms: float = 5.0
    max_queue_ms: float = 500.0
    max_packets: int = 2048
    min_rate_bps: int = 50_000
    #: longest sleep ``poll`` asks for when nothing is queued
    idle_ms: float = 25.0


@dataclass(frozen=True, slots=True)
class ProbeCluster:
    id: int
    rate_bps: int
    min_bytes: int
    min_packets: int


@dataclass(slots=True)
class Poll(Generic[T]):
    items: list[tuple[PacketKind, T]]
    next_ms: float
    #: bytes of padding to send now (probe filler or the padding floor), and for which cluster
    padding_bytes: int = 0
    probe_id: int | None = None
    #: how long the longest-waiting packet of ``items`` was queued (the pacer-delay metric)
    delay_ms: float = 0.0


class Pacer(Generic[T]):
    __slots__ = ("config", "rate_bps", "dropped_video", "dropped_rtx", "dropped_audio", "queued_video_bytes", "_queues",
                 "_debt", "_last_ms", "_probe", "_probe_sent_bytes", "_probe_sent_packets", "_padding_bps",
                 "_pad_credit", "_video_limit")

    def __init__(self, config: PacerConfig | None = None, estimate_bps: int = 300_000) -> None:
        self.config = config or PacerConfig()
        self.rate_bps = 0.0
        self._video_limit = 0.0
        self.set_rate(estimate_bps)
        self.dropped_video = 0
        self.dropped_rtx = 0
        self.dropped_audio = 0
        self.queued_video_bytes = 0
        self._queues: tuple[deque[tuple[float, int, T]], ...] = (deque(), deque(), deque())
        self._debt = 0.0  # bytes sent beyond what the rate has paid for so far
        self._last_ms = -1.0
        self._probe: ProbeCluster | None = None
        self._probe_sent_bytes = 0
        self._probe_sent_packets = 0
        self._padding_bps = 0
        self._pad_credit = 0.0

    def set_rate(self, estimate_bps: float) -> None:
        self.rate_bps = max(estimate_bps * self.config.factor, float(self.config.min_rate_bps))
        self._video_limit = self.rate_bps * self.config.max_queue_ms / 8000.0

    def set_padding_rate(self, bps: int) -> None:
        self._padding_bps = max(bps, 0)

    def start_probe(self, cluster: ProbeCluster) -> None:
        self._probe = cluster
        self._probe_sent_bytes = self._probe_sent_packets = 0

    @property
    def probing(self) -> ProbeCluster | None:
        return self._probe

    def queue_len(self) -> int:
        return sum(len(q) for q in self._queues)

    def queue_delay_ms(self, now_ms: float) -> float:
        """How long the oldest queued video packet has waited."""
        q = self._queues[PacketKind.VIDEO]
        return now_ms - q[0][0] if q else 0.0

    def enqueue(self, kind: PacketKind, size: int, now_ms: float, item: T) -> None:
        q = self._queues[kind]
        q.append((now_ms, size, item))
        if kind is PacketKind.VIDEO:
            self.queued_video_bytes += size
            if self.queued_video_bytes > self._video_limit or len(q) > self.config.max_packets:
                self._bound_video()
        elif len(q) > self.config.max_packets:  # nobody polls: bounded all the same
            q.popleft()
            if kind is PacketKind.RTX:
                self.dropped_rtx += 1
            else:
                self.dropped_audio += 1

    def _bound_video(self) -> None:
        q = self._queues[PacketKind.VIDEO]
        while q and (self.queued_video_bytes > self._video_limit or len(q) > self.config.max_packets):
            self.queued_video_bytes -= q.popleft()[1]
            self.dropped_video += 1

    def _current_rate(self) -> float:
        if self._probe is not None:
            return max(self.rate_bps, float(self._probe.rate_bps))
        return self.rate_bps

    def poll(self, now_ms: float) -> Poll[T]:
        rate = self._current_rate()
        if self._last_ms >= 0:
            elapsed = min(max(now_ms - self._last_ms, 0.0), 1000.0)
            self._debt = max(0.0, self._debt - rate * elapsed / 8000.0)
            floor = self._padding_bps * self.config.burst_ms / 8000.0
            self._pad_credit = min(self._pad_credit + self._padding_bps * elapsed / 8000.0, floor)
        self._last_ms = now_ms
        self._expire(now_ms)
        out: list[tuple[PacketKind, T]] = []
        oldest = now_ms
        debt = self._debt
        sent_bytes = sent_packets = 0
        audio, rtx, video = self._queues
        while audio:
            queued, size, item = audio.popleft()
            if queued < oldest:
                oldest = queued
            debt += size
            sent_bytes += size
            sent_packets += 1
            out.append((PacketKind.AUDIO, item))
        burst = rate * self.config.burst_ms / 8000.0
        probe_id = self._probe.id if self._probe is not None else None
        while rtx and debt < burst:
            queued, size, item = rtx.popleft()
            if queued < oldest:
                oldest = queued
            debt += size
            sent_bytes += size
            sent_packets += 1
            out.append((PacketKind.RTX, item))
        video_bytes = 0
        while video and debt < burst:
            queued, size, item = video.popleft()
            if queued < oldest:
                oldest = queued
            debt += size
            video_bytes += size
            sent_packets += 1
            out.append((PacketKind.VIDEO, item))
        self.queued_video_bytes -= video_bytes
        sent_bytes += video_bytes
        self._debt = debt
        if sent_bytes:
            self._pad_credit = max(self._pad_credit - sent_bytes, 0.0)
            if self._probe is not None:
                self._probe_sent_bytes += sent_bytes
                self._probe_sent_packets += sent_packets
        padding = 0
        if self._debt < burst and not self._queues[PacketKind.RTX] and not self._queues[PacketKind.VIDEO]:
            padding = self._padding(burst)
        result = Poll(out, self._next_ms(now_ms, rate, burst), padding, probe_id, max(now_ms - oldest, 0.0))
        if self._probe is not None and self._probe_sent_bytes >= self._probe.min_bytes \
                and self._probe_sent_packets >= self._probe.min_packets:
            self._probe = None
        return result

    def _padding(self, burst: float) -> int:
        if self._probe is not None:
            need = max(self._probe.min_bytes - self._probe_sent_bytes,
                       (self._probe.min_packets - self._probe_sent_packets) * PADDING_PACKET)
            size = int(min(burst - self._debt, max(need, 0)))
            if size <= 0:
                return 0
            self._sent(size)
            return size
        size = int(min(self._pad_credit, burst - self._debt))
        if size <= 0:
            return 0
        self._sent(size)
        return size

    def _sent(self, size: int) -> None:
        self._debt += size
        self._pad_credit = max(self._pad_credit - size, 0.0)
        if self._probe is not None:
            self._probe_sent_bytes += size
            self._probe_sent_packets += 1 + (size - 1) // PADDING_PACKET

    def _expire(self, now_ms: float) -> None:
        cut = now_ms - self.config.max_queue_ms
        rtx = self._queues[PacketKind.RTX]
        while rtx and rtx[0][0] < cut:
            rtx.popleft()
            self.dropped_rtx += 1
        video = self._queues[PacketKind.VIDEO]
        while video and video[0][0] < cut:
            self.queued_video_bytes -= video.popleft()[1]
            self.dropped_video += 1

    def _next_ms(self, now_ms: float, rate: float, burst: float) -> float:
        if not self._queues[PacketKind.RTX] and not self._queues[PacketKind.VIDEO] and self._probe is None:
            return now_ms + (self.config.burst_ms if self._padding_bps > 0 else self.config.idle_ms)
        wait = (self._debt - burst) * 8000.0 / rate + 0.5 if self._debt >= burst else 0.0
        return now_ms + max(wait, 1.0)
