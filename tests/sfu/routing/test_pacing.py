"""Pacing over real transports (real sockets, DTLS, SRTP): a subscriber whose estimate is known
(its own REMB, real SRTCP) receives a keyframe burst spread at about estimate x 2.5, its audio
is not held behind that burst, and every packet carries the transport-wide seq it got when it
left (consecutive in arrival order, audio that overtook included).  Two subscribers of one
track (the fan-out group) are paced each at its own rate."""

from __future__ import annotations

import asyncio
import time

from sfu import clock
from sfu.packet import rtcp
from sfu.packet.rtp import RtpPacket
from sfu.packet.twcc import TWCC_URI
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant, ParticipantKind, SubscriberSink
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.pacer import PacingConfig
from tests.sfu.routing.harness import OPUS_FRAME, VP8_CONTINUATION, VP8_KEY, Link, rtp_bytes

VP8 = TrackCodec("VP8", 90_000, 96)
OPUS = TrackCodec("opus", 48_000, 111)
TW = 5
PAYLOAD = 1100  # + 12 header + 8 extension block: 1,120-byte packets
BURST = 40
#: a loaded machine may stall the loop for seconds: nothing is dropped for waiting in these tests
NO_DROPS = PacingConfig(max_delay_ms=5000.0, burst_ms=5.0)


def track(link: Link, kind: str, ssrc: int) -> PublishedTrack:
    return PublishedTrack(kind=kind, ssrc=ssrc, codecs=[VP8 if kind == "video" else OPUS], mid="0" if kind == "video" else "1",
                          owner="alice", counters=link.counters, request_keyframe=lambda ssrc: None,
                          ext_ids={TWCC_URI: TW})


def subscribe(link: Link, src: PublishedTrack, ssrc: int) -> DownTrack:
    video = src.kind == "video"
    dt = DownTrack(peer=link.peer, kind=src.kind, mid="0" if video else "1", ssrc=ssrc,
                   out_payload_types={"VP8": 100} if video else {"opus": 109}, out_ext_ids={TWCC_URI: TW},
                   counters=link.counters)
    dt.bind(src, clock.now_ms())
    return dt


async def remb(link: Link, bps: int, media_ssrc: int) -> None:
    """The subscriber's estimate, as its own REMB over SRTCP (it negotiated transport-cc but sends
    no feedback: the REMB is its estimate)."""
    participant = Participant(identity=f"viewer-{media_ssrc}", room_id="room-1", kind=ParticipantKind.WHEP)
    participant.subscriber = link.peer
    link.peer.sink = SubscriberSink(participant, link.counters)
    before = link.counters.cc.remb_in
    link.client.send(link.client.protect_rtcp(bytes(rtcp.Remb(0x1234, bps, [media_ssrc]))), link.port_addr)
    async with asyncio.timeout(5):
        while link.counters.cc.remb_in == before:
            await asyncio.sleep(0.005)


def push(src: PublishedTrack, seq: int, payload: bytes, size: int = 0) -> None:
    data = rtp_bytes(seq, 3000 * (seq // 100), ssrc=src.ssrc, pt=src.codec.payload_type,
                     payload=payload.ljust(size, b"\x00"), extensions=[(TW, b"\x00\x00")])
    src.on_rtp(memoryview(data), len(data), clock.now_ms())


async def receive(link: Link, count: int) -> list[tuple[float, RtpPacket]]:
    """``count`` packets with their arrival times (s, monotonic)."""
    out = []
    for _ in range(count):
        data = await link.client.recv_rtp(timeout=10.0)
        out.append((time.monotonic(), RtpPacket.parse(data)))
    return out


def tw_seq(packet: RtpPacket) -> int:
    return int.from_bytes(next(v for i, v in packet.header.extensions if i == TW), "big")


async def test_a_keyframe_burst_is_spread_at_the_pacing_rate_and_audio_goes_first(link: Link) -> None:
    link.port.set_pacing(NO_DROPS)
    video = track(link, "video", 0xAAAA0001)
    audio = track(link, "audio", 0xAAAA0002)
    dv = subscribe(link, video, 0xBBBB0001)
    da = subscribe(link, audio, 0xBBBB0002)
    push(audio, 1, OPUS_FRAME)  # before any estimate: not paced
    push(video, 1, VP8_KEY)
    before = await receive(link, 2)
    await remb(link, 400_000, dv.ssrc)  # 400 kbit/s x 2.5: paced at 1 Mbit/s, 125 bytes a ms
    pacer = link.peer.pacer
    assert pacer is not None and pacer.rate == 125.0
    await asyncio.sleep(0.05)  # the budget is a burst's worth, whatever the wait
    delays_before = link.counters.cc.pacer_delay_count
    for i in range(BURST):  # one keyframe of 40 packets (44.8 kB), at once
        push(video, 2 + i, VP8_KEY if i == 0 else VP8_CONTINUATION, PAYLOAD)
    for i in range(3):  # audio right behind it
        push(audio, 2 + i, OPUS_FRAME)
    got = await receive(link, BURST + 3)
    assert await link.client.nothing_arrives(0.1)
    kinds = ["audio" if p.header.ssrc == da.ssrc else "video" for _, p in got]
    # audio left at once, ahead of all the video still queued (a burst's worth, saved up while
    # idle, went before it: up to two packets)
    first = kinds.index("audio")
    assert first <= 2 and kinds[first : first + 3] == ["audio"] * 3, kinds
    # the transport-wide seqs were given as packets left: consecutive in arrival order
    seqs = [tw_seq(p) for _, p in before + got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # spread at about the pacing rate (~0.35 s at 1 Mbit/s; unpaced, the 40 arrive within a few
    # ms): by the arrival times, with a margin for a loaded machine (a late first read shortens
    # the span), and exactly by the node's send times below
    times = [t for (t, _), k in zip(got, kinds, strict=True) if k == "video"]
    span_s = times[-1] - times[0]
    sent_bytes = (BURST - 1) * (12 + 8 + PAYLOAD)
    rate_bps = sent_bytes * 8 / span_s
    assert 0.3e6 <= rate_bps <= 1.5e6, (rate_bps, times)
    # never ahead of the rate (a stalled loop makes it late, and then it catches up to the rate,
    # not beyond): by the node's send times (the send history's, whole ms), each packet left only
    # once the budget had paid for it and all before it: up to two bursts' worth saved up, one
    # packet on credit, a millisecond of rounding
    sender = link.peer.sender
    assert sender is not None
    history = sender.history
    video_seqs = [tw_seq(p) for (_, p), k in zip(got, kinds, strict=True) if k == "video"]
    sent_ms = [history.send_times[seq & history.mask] for seq in video_seqs]
    size = 12 + 8 + PAYLOAD
    for i, t in enumerate(sent_ms):
        assert i * size <= 2 * 625 + size + 125 * (t - sent_ms[0] + 1), (i, sent_ms)
    # the queued packets' waits are in the histogram; nothing was dropped
    assert link.counters.cc.pacer_delay_count - delays_before >= BURST - 2
    assert link.counters.cc.pacer_drops == [0, 0]
    assert not pacer.pending


async def test_two_subscribers_of_one_track_each_at_their_own_rate(link: Link, second_link: Link) -> None:
    link.port.set_pacing(NO_DROPS)
    video = track(link, "video", 0xAAAA0001)
    slow = subscribe(link, video, 0xBBBB0001)
    fast = subscribe(second_link, video, 0xBBBB0002)
    push(video, 1, VP8_KEY)
    await receive(link, 1)
    await receive(second_link, 1)
    await remb(link, 300_000, slow.ssrc)  # 750 kbit/s
    await remb(second_link, 900_000, fast.ssrc)  # 2.25 Mbit/s
    push(video, 2, VP8_CONTINUATION)
    assert video._fast_members == [slow, fast]  # the fan-out group forwards for both
    await receive(link, 1)
    await receive(second_link, 1)
    await asyncio.sleep(0.05)
    for i in range(BURST):
        push(video, 3 + i, VP8_KEY if i == 0 else VP8_CONTINUATION, PAYLOAD)
    got_slow, got_fast = await asyncio.gather(receive(link, BURST), receive(second_link, BURST))
    sent_bytes = (BURST - 1) * (12 + 8 + PAYLOAD)
    spans = [got[-1][0] - got[0][0] for got in (got_slow, got_fast)]
    rates = [sent_bytes * 8 / s for s in spans]  # ~750 kbit/s and ~2.25 Mbit/s
    assert 0.2e6 <= rates[0] <= 750_000 * 1.5, rates
    assert rates[1] <= 2_250_000 * 1.5, rates
    assert spans[0] > spans[1] * 1.5, spans  # 3x
    # by the node's send times: the slow one never ahead of its 93.75 B/ms, the fast one of its 281.25
    for link_, got, per_ms in ((link, got_slow, 93.75), (second_link, got_fast, 281.25)):
        assert link_.peer.sender is not None
        history = link_.peer.sender.history
        sent_ms = [history.send_times[tw_seq(p) & history.mask] for _, p in got]
        for i, t in enumerate(sent_ms):
            assert i * (12 + 8 + PAYLOAD) <= 2 * per_ms * 5 + (12 + 8 + PAYLOAD) + per_ms * (t - sent_ms[0] + 1)
    for got in (got_slow, got_fast):  # in order, none lost
        seqs = [p.header.sequence_number for _, p in got]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(BURST)]
    # drained, and their budgets back (a packet right after the burst would wait), both rejoin the group
    assert not link.peer.pacer.pending and not second_link.peer.pacer.pending  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    push(video, 3 + BURST, VP8_CONTINUATION)
    assert video._fast_members == [slow, fast]
