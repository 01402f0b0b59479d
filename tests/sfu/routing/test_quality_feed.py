"""``LinkMonitor`` (sfu.routing.quality_feed): samples from a real track's receive statistics,
receiver reports against the sender reports sent, and a real transport's state and consent time."""

from __future__ import annotations

import pytest

from sfu.counters import MediaCounters
from sfu.packet.rtcp import ReportBlock
from sfu.routing.participant import Participant, ParticipantKind
from sfu.routing.quality import LinkSample, Quality, QualityConfig
from sfu.routing.quality_feed import MAX_SR_REMEMBERED, LinkMonitor, by_quality
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.dtls import DtlsRole
from sfu.transport.peer import CloseReason, TransportState
from tests.sfu.routing.harness import RawClient, connect, new_peer, open_port

FAST = QualityConfig(down_samples=1, up_hold_ms=0)


def _track(counters: MediaCounters, ssrc: int) -> PublishedTrack:
    return PublishedTrack(
        kind="audio", ssrc=ssrc, codecs=[TrackCodec("opus", 48_000, 111)], mid="0", owner="alice",
        counters=counters, request_keyframe=lambda _ssrc: None,
    )


def _receive(track: PublishedTrack, seqs: range, skip_every: int = 0) -> None:
    for seq in seqs:
        if skip_every and seq % skip_every == 0:
            continue
        track.stats.sequence(seq)
        track.stats.packets += 1


def test_publisher_loss_is_measured_per_window_on_the_worst_stream() -> None:
    counters = MediaCounters()
    p = Participant(identity="alice", room_id="r", kind=ParticipantKind.WHIP)
    p.link = LinkMonitor(FAST)
    assert p.link.update(p, 0) is Quality.EXCELLENT and p.link.last == LinkSample()  # nothing to judge
    a, b = _track(counters, 1), _track(counters, 2)
    p.tracks = {1: a, 2: b}
    _receive(a, range(1, 1001))
    _receive(b, range(1, 1001), skip_every=3)
    assert p.link.update(p, 1000) is Quality.EXCELLENT  # first look: a baseline, no window yet
    assert p.link.last.loss is None
    _receive(a, range(1001, 2001))
    _receive(b, range(1001, 2001), skip_every=20)  # 5 % lost in this window (a third before)
    assert p.link.update(p, 2000) is Quality.GOOD and p.link.last.loss == pytest.approx(0.05, abs=0.002)
    _receive(a, range(2001, 3001), skip_every=5)  # 20 %
    _receive(b, range(2001, 3001))
    assert p.link.update(p, 3000) is Quality.POOR and p.link.last.loss == pytest.approx(0.2, abs=0.002)
    _receive(a, range(3001, 3011))  # too few packets to judge: unchanged
    assert p.link.update(p, 4000) is Quality.POOR and p.link.last.loss is None
    del p.tracks[1]
    _receive(b, range(3001, 4001))
    assert p.link.update(p, 5000) is Quality.EXCELLENT
    assert by_quality([p]) == {Quality.EXCELLENT: 1, Quality.GOOD: 0, Quality.POOR: 0, Quality.LOST: 0}


def test_receiver_reports_give_this_legs_loss_jitter_and_round_trip() -> None:
    link = LinkMonitor(FAST)
    p = Participant(identity="bob", room_id="r", kind=ParticipantKind.RTC)
    ntp = 0x1234_5678_9ABC_DEF0
    link.on_sender_report(ntp, 10_000)
    lsr = (ntp >> 16) & 0xFFFFFFFF
    # first reports: baselines (stream 7: 48 kHz audio, stream 8: 90 kHz video)
    link.on_report_block(ReportBlock(ssrc=7, highest_seq=1000, cumulative_lost=0), 48_000, 1000, 9_000)
    link.on_report_block(ReportBlock(ssrc=8, highest_seq=0xFFFF_FFF0, cumulative_lost=5), 90_000, 50, 9_000)
    # sent at 10 000, answered at 10 180 after holding it 100 ms (6553.6 units): 80 ms round trip;
    # the node sent 100 on 7, 75 of them arrived; the stream's own 25 % fraction_lost says nothing here
    link.on_report_block(ReportBlock(ssrc=7, fraction_lost=64, highest_seq=1100, cumulative_lost=25, jitter=480,
                                     lsr=lsr, dlsr=6554), 48_000, 1100, 10_180)
    # stream 8 wrapped its extended sequence number; the publisher's leg left 20 holes in it that
    # the node never sent: no loss on this leg
    link.on_report_block(ReportBlock(ssrc=8, fraction_lost=50, highest_seq=0x50, cumulative_lost=25, jitter=900),
                         90_000, 50 + 76, 10_190)
    sample = link.sample(p, 10_200)
    assert sample.loss == 0.25 and sample.jitter_ms == 10.0
    assert sample.rtt_ms is not None and abs(sample.rtt_ms - 80) < 0.1
    assert link.sample(p, 11_200).loss is None  # the worst since the last sample, then forgotten
    link.on_report_block(ReportBlock(ssrc=7, highest_seq=1110, cumulative_lost=25), 48_000, 1110, 11_300)
    assert link.sample(p, 11_400).loss is None  # too few packets sent to judge
    # an LSR the node never sent, or an absurd answer, leaves the round trip alone
    link.on_report_block(ReportBlock(ssrc=7, lsr=0xDEAD, dlsr=0), 48_000, 0, 12_000)
    link.on_report_block(ReportBlock(ssrc=7, lsr=lsr, dlsr=10 * 65536), 48_000, 0, 10_300)
    assert link.rtt_ms is not None and abs(link.rtt_ms - 80) < 0.1
    for i in range(MAX_SR_REMEMBERED + 10):  # bounded
        link.on_sender_report((i + 1) << 16, 20_000 + i)
    assert len(link._sr_sent) == MAX_SR_REMEMBERED
    link.sample(p, 30_000)
    assert link._rr_seen == {}  # pruned to the participant's subscriptions (none)


async def test_silence_and_closing_of_a_real_transport_make_it_lost() -> None:
    port = open_port()
    client = RawClient()
    try:
        p = Participant(identity="alice", room_id="r", kind=ParticipantKind.WHIP)
        p.link = LinkMonitor(FAST)
        peer = new_peer(port, client)
        p.publisher = peer
        assert p.link.update(p, peer.created_ms + 60_000) is Quality.EXCELLENT  # not up yet: not silent
        await connect(peer, client, port, DtlsRole.SERVER)  # real ICE and DTLS over loopback
        assert peer.state is TransportState.CONNECTED
        now = peer.last_consent_ms
        lost_after = FAST.lost_after_ms
        assert p.link.update(p, now + lost_after - 1) is Quality.EXCELLENT
        assert p.link.update(p, now + lost_after) is Quality.LOST  # silent too long
        assert p.link.update(p, now) is Quality.EXCELLENT  # heard again
        peer.close(CloseReason.LEFT)
        assert p.link.update(p, now) is Quality.LOST
    finally:
        client.close()
        port.close()
