"""The pacer with an injected clock: a keyframe burst is spread at the pacing rate, audio and
retransmissions never wait behind video, the queue is bounded, probes and padding are filled."""

from __future__ import annotations

import pytest

from sfu.transport.bwe.pacer import Pacer, PacerConfig, PacketKind, ProbeCluster

V, A, R = PacketKind.VIDEO, PacketKind.AUDIO, PacketKind.RTX


def drive(pacer: Pacer[str], until_ms: float, start_ms: float = 0.0,
          arrivals: dict[float, list[tuple[PacketKind, int, str]]] | None = None) -> list[tuple[float, str]]:
    """Poll the pacer when it asks to be polled (and when packets arrive); (time, item) sent."""
    sent: list[tuple[float, str]] = []
    now = start_ms
    pending = sorted((arrivals or {}).items())
    next_poll = start_ms
    while now <= until_ms:
        while pending and pending[0][0] <= now:
            for kind, size, item in pending.pop(0)[1]:
                pacer.enqueue(kind, size, now, item)
            next_poll = now
        if now >= next_poll:
            result = pacer.poll(now)
            sent.extend((now, item) for _, item in result.items)
            assert result.next_ms > now
            next_poll = result.next_ms
        now = min(next_poll, pending[0][0] if pending else next_poll)
    return sent


@pytest.mark.parametrize("estimate_bps", [300_000, 1_000_000, 4_000_000])
def test_keyframe_burst_is_spread_at_the_pacing_rate(estimate_bps: int) -> None:
    rate = estimate_bps * 2.5
    # the first 5 ms worth goes at once, the rest (but the last packet) is paid for at the rate
    expected_ms = (20 * 1200 - 1200 - rate * 0.005 / 8) * 8000 / rate
    pacer: Pacer[str] = Pacer(PacerConfig(factor=2.5), estimate_bps)
    burst = [(V, 1200, f"v{i}") for i in range(20)]
    sent = drive(pacer, 500.0, arrivals={0.0: burst})
    assert [item for _, item in sent] == [f"v{i}" for i in range(20)]
    span = sent[-1][0] - sent[0][0]
    assert expected_ms * 0.85 <= span <= expected_ms * 1.15, span
    # in any 5 ms: at most the burst allowance plus 5 ms at the rate (+ a packet of overshoot each)
    allowance = 2 * rate * 0.005 / 8 / 1200 + 2
    for t, _ in sent:
        assert sum(1 for u, _ in sent if t <= u < t + 5.0) <= allowance


def test_audio_is_not_delayed_behind_video() -> None:
    pacer: Pacer[str] = Pacer(PacerConfig(factor=2.5), 300_000)
    arrivals = {0.0: [(V, 1200, f"v{i}") for i in range(30)]}
    for k in range(10):
        arrivals[3.0 + 20 * k] = [(A, 100, f"a{k}")]
    sent = drive(pacer, 1000.0, arrivals=arrivals)
    at = dict((item, t) for t, item in sent)
    for k in range(10):
        assert at[f"a{k}"] == 3.0 + 20 * k  # sent the moment it was queued
    assert at["v29"] > 150.0  # while video was still being spread


def test_retransmissions_go_ahead_of_queued_video() -> None:
    pacer: Pacer[str] = Pacer(PacerConfig(), 300_000)
    for i in range(10):
        pacer.enqueue(V, 1200, 0.0, f"v{i}")
    pacer.enqueue(R, 1200, 1.0, "r0")
    first = pacer.poll(1.0)
    assert [item for _, item in first.items] == ["r0"]
    assert first.delay_ms == 0.0  # queued in the same ms
    later = pacer.poll(41.0)
    assert [item for _, item in later.items] == ["v0"] and later.delay_ms == 41.0


def test_video_queue_is_bounded_by_time_and_counts_drops() -> None:
    pacer: Pacer[str] = Pacer(PacerConfig(factor=2.5, max_queue_ms=500.0), 100_000)
    for i in range(200):
        pacer.enqueue(V, 1200, 0.0, f"v{i}")
    # 250 kbit/s x 500 ms = 15,625 bytes: 13 packets of 1,200
    assert pacer.queue_len() == 13
    assert pacer.dropped_video == 187
    assert pacer.queued_video_bytes == 13 * 1200
    first = pacer.poll(0.0)
    assert [item for _, item in first.items] == ["v187"]  # the oldest ones went


def test_stale_video_and_retransmissions_expire() -> None:
    pacer: Pacer[str] = Pacer(PacerConfig(max_queue_ms=500.0, max_packets=4), 10_000_000)
    for i in range(6):
        pacer.enqueue(V, 100, 0.0, f"v{i}")
    pacer.enqueue(R, 100, 0.0, "r0")
    assert pacer.dropped_video == 2  # packet-count bound
    result = pacer.poll(600.0)  # nobody polled for 600 ms
    assert result.items == []
    assert pacer.dropped_video == 6 and pacer.dropped_rtx == 1
    assert pacer.queue_len() == 0 and pacer.queued_video_bytes == 0


def test_probe_cluster_is_filled_with_padding_when_no_media() -> None:
    pacer: Pacer[str] = Pacer(PacerConfig(), 300_000)
    cluster = ProbeCluster(id=7, rate_bps=3_000_000, min_bytes=3_000_000 * 15 // 8000, min_packets=5)
    pacer.start_probe(cluster)
    now, padding, ids = 0.0, 0, set()
    while pacer.probing is not None and now < 200:
        result = pacer.poll(now)
        padding += result.padding_bytes
        if result.padding_bytes:
            ids.add(result.probe_id)
        now = result.next_ms
    assert pacer.probing is None
    assert padding >= cluster.min_bytes and ids == {7}
    assert 10.0 <= now <= 40.0  # at the cluster's rate, not the estimate's


def test_probe_uses_queued_media_first() -> None:
    pacer: Pacer[str] = Pacer(PacerConfig(), 300_000)
    for i in range(10):
        pacer.enqueue(V, 1200, 0.0, f"v{i}")
    pacer.start_probe(ProbeCluster(id=1, rate_bps=3_000_000, min_bytes=5625, min_packets=5))
    sent = drive(pacer, 100.0)
    assert len(sent) == 10
    assert sent[4][0] <= 20.0  # the first five at the probe's rate (the estimate's would take 26 ms)


def test_padding_floor_tops_up_only_what_media_does_not_send() -> None:
    pacer: Pacer[str] = Pacer(PacerConfig(), 1_000_000)
    pacer.set_padding_rate(400_000)
    total = 0
    for t in range(0, 1000, 5):
        total += pacer.poll(float(t)).padding_bytes
    assert 0.85 * 50_000 <= total <= 1.05 * 50_000  # 400 kbit/s for 1 s
    busy = 0
    for t in range(1000, 2000, 5):
        pacer.enqueue(V, 1200, float(t), "v")  # 1.92 Mbit/s of media
        busy += pacer.poll(float(t)).padding_bytes
    assert busy == 0


def test_audio_and_retransmission_queues_are_bounded_without_polls() -> None:
    pacer: Pacer[str] = Pacer(PacerConfig(max_packets=8), 300_000)
    for i in range(100):
        pacer.enqueue(A, 100, 0.0, f"a{i}")
        pacer.enqueue(R, 1200, 0.0, f"r{i}")
    assert pacer.queue_len() == 16
    assert pacer.dropped_audio == 92 and pacer.dropped_rtx == 92
    assert [item for _, item in pacer.poll(0.0).items][:2] == ["a92", "a93"]  # the newest kept
