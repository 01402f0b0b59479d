"""The four units wired together as the node will wire them (see the module docstrings),
over the simulated bottleneck: allocator -> media rate -> pacer -> link -> feedback ->
estimator (+ probe controller) -> allocator.  Proves the closed loop settles within the link,
follows a step down within 3 s, climbs back to the top layer when the limit lifts, and keeps
audio flowing throughout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sfu.routing.allocator import Allocation, Allocator, LayerInfo, TrackInput
from sfu.transport.bwe.estimator import BweConfig, SendSideBwe
from sfu.transport.bwe.feedback import PacketFeedback
from sfu.transport.bwe.pacer import Pacer, PacketKind
from sfu.transport.bwe.probe import ProbeController
from tests.sfu.transport.bwe.linksim import PACKET, Link, Run

F = LayerInfo("f", 1280, 720, (900_000, 1_300_000, 1_700_000))
H = LayerInfo("h", 640, 360, (300_000, 450_000, 600_000))
Q = LayerInfo("q", 320, 180, (100_000, 150_000, 200_000))
TRACKS = [TrackInput("mic", "audio", (LayerInfo(None, bitrates=(40_000,)),)), TrackInput("cam", "video", (F, H, Q))]


@dataclass
class Loop:
    capacity: Callable[[float], float]
    bwe: SendSideBwe = field(default_factory=lambda: SendSideBwe(BweConfig(start_bps=300_000)))
    pacer: Pacer[tuple[int, bool]] = field(default_factory=Pacer)
    probes: ProbeController = field(default_factory=ProbeController)
    allocator: Allocator = field(default_factory=Allocator)
    allocation: Allocation | None = None
    history: list[tuple[float, Allocation, int]] = field(default_factory=list)
    audio_sent: list[int] = field(default_factory=list)
    audio_delay_ms: float = 0.0
    _video_debt: float = 0.0
    _audio_queued: dict[int, float] = field(default_factory=dict)

    def run(self, until_ms: float) -> Run:
        run = Run(self.bwe, Link(self.capacity, queue_ms=200.0), tick_ms=1.0, rate_override=0.0,
                  on_tick=self.tick, on_feedback=self.feedback)
        run.run_until(until_ms)
        return run

    def tick(self, now: float, run: Run) -> None:
        ms = int(now)
        if ms % 100 == 0:  # allocation tick
            self.allocation = a = self.allocator.allocate(self.bwe.estimate_bps, TRACKS, now)
            self.history.append((now, a, self.bwe.estimate_bps))
            cluster = self.probes.want(self.bwe.estimate_bps, a.probe_target_bps, now)
            if cluster is not None:
                self.pacer.start_probe(cluster)
        self.pacer.set_rate(self.bwe.estimate_bps)
        if ms % 20 == 0:  # an audio packet
            self.pacer.enqueue(PacketKind.AUDIO, 120, now, (120, True))
            self._audio_queued[ms] = now
        video = self.allocation.tracks[1].bitrate_bps if self.allocation else 0
        if ms % 33 == 0 and video:  # a video frame, cut into packets
            frame = video / 30 / 8 + self._video_debt
            while frame >= PACKET:
                self.pacer.enqueue(PacketKind.VIDEO, PACKET, now, (PACKET, False))
                frame -= PACKET
            self._video_debt = frame
        result = self.pacer.poll(now)
        for _, (size, is_audio) in result.items:
            seq = run.send_packet(now, size)
            if is_audio:
                self.audio_sent.append(seq)
            if result.probe_id is not None:
                self.probes.on_probe_sent(result.probe_id, seq)
        padding = result.padding_bytes
        while padding > 0:
            seq = run.send_packet(now, min(padding, PACKET))
            if result.probe_id is not None:
                self.probes.on_probe_sent(result.probe_id, seq)
            padding -= PACKET
        # audio never waits in the pacer: it leaves in the poll of the tick it was queued in
        for queued_at in self._audio_queued.values():
            self.audio_delay_ms = max(self.audio_delay_ms, now - queued_at)
        self._audio_queued.clear()

    def feedback(self, packets: list[PacketFeedback], now: float) -> None:
        result = self.probes.on_feedback(packets, now)
        if result is not None:
            self.bwe.on_probe_result(result, now)

    def video(self, start_ms: float, end_ms: float) -> list[tuple[str | None, int, int, int]]:
        """(rid, temporal, allocated total, estimate) per allocation in the span."""
        return [(a.tracks[1].rid, a.tracks[1].temporal, a.total_bps, e)
                for t, a, e in self.history if start_ms <= t < end_ms]


def audio_loss(loop: Loop, run: Run, start_ms: float) -> float:
    reported = {p.seq: p for _, p in run.reported}
    mine = [s for s in loop.audio_sent if s in reported and reported[s].send_ms >= start_ms]
    return sum(1 for s in mine if reported[s].recv_ms is None) / max(len(mine), 1)


@pytest.mark.parametrize(("capacity", "layers"), [(300_000, {"q"}), (700_000, {"q", "h"}),
                                                (1_500_000, {"h"}), (3_000_000, {"f"})])
def test_settles_within_the_link_with_clean_audio(capacity: int, layers: set[str]) -> None:
    loop = Loop(lambda t: capacity)
    run = loop.run(40_000)
    settled = loop.video(20_000, 40_000)
    assert {rid for rid, *_ in settled} <= layers, settled[:5]
    assert all(total <= capacity for *_, total, _ in settled)
    assert all(temporal == 2 for _, temporal, *_ in settled)  # full frame rate
    switches = sum(1 for a, b in zip(settled, settled[1:], strict=False) if a[:2] != b[:2])
    assert switches <= 2
    assert loop.audio_delay_ms == 0.0
    assert audio_loss(loop, run, 20_000) <= 0.02
    assert loop.pacer.dropped_video == 0


def test_step_down_recovers_within_three_seconds() -> None:
    loop = Loop(lambda t: 2_500_000 if t < 30_000 else 500_000)
    run = loop.run(45_000)
    assert {rid for rid, *_ in loop.video(25_000, 30_000)} == {"f"}
    within = [total for _, _, total, _ in loop.video(33_000, 45_000)]
    assert max(within) <= 500_000, within[:10]
    assert audio_loss(loop, run, 34_000) <= 0.02


def test_limit_lifted_back_on_top_within_ten_seconds() -> None:
    loop = Loop(lambda t: 500_000 if t < 20_000 else 2_500_000)
    loop.run(35_000)
    assert "f" not in {rid for rid, *_ in loop.video(10_000, 20_000)}
    top = [t for t, a, _ in loop.history if t >= 20_000 and a.tracks[1].rid == "f"]
    assert top and top[0] <= 30_000, top[:1]
