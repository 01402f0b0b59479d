"""The allocation loop over real transports: a subscriber's estimate (its REMB, or its transport-cc
feedback) picks the simulcast layer it receives, within its own bound (``set_layer``); the moves
happen at the new layer's keyframe; probes go as padding-only RTX packets with transport-wide seqs.
Time is injected (``run_due(now_ms)``, packets stamped with it)."""

from __future__ import annotations

import asyncio

from sfu.counters import SwitchDirection, SwitchReason
from sfu.packet import rtcp
from sfu.packet.rtp import RtpPacket
from sfu.packet.twcc import TWCC_URI
from sfu.routing.allocation import AllocationLoop
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant, ParticipantKind, SubscriberSink
from sfu.routing.simulcast import RidRestrictions, form_groups
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.bwe.pacer import ProbeCluster
from tests.sfu.routing.harness import VP8_DELTA, VP8_KEY, Link, rtp_bytes

VP8 = TrackCodec("VP8", 90_000, 96)
TW = 3
RTX_SSRC = 0xBB02
RTX_PT = 101
T0 = 1_000_000
#: bytes per 100 ms of each layer: 160, 480 and 1,600 kbit/s
BYTES_PER_100MS = {"q": 2_000, "h": 6_000, "f": 20_000}


class Source:
    def __init__(self, link: Link) -> None:
        self.plis: list[int] = []
        self.layers = {
            rid: PublishedTrack(kind="video", ssrc=0x50 + i, codecs=[VP8], mid="0", owner="alice",
                                counters=link.counters, request_keyframe=self.plis.append, rid=rid)
            for i, rid in enumerate(("q", "h", "f"))
        }
        (self.group,) = form_groups([(t, RidRestrictions()) for t in self.layers.values()], T0)
        self.seq = dict.fromkeys(self.layers, 100)

    def run(self, start_ms: int, ms: int, *, keyframe: str | None = None) -> int:
        """Every layer sends its rate for ``ms`` (1,000-byte packets, a burst every 100 ms);
        ``keyframe`` starts with a keyframe on that layer.  Returns the end time."""
        now = start_ms
        while now < start_ms + ms:
            for rid, layer in self.layers.items():
                for k in range(BYTES_PER_100MS[rid] // 1000):
                    key = keyframe == rid and now == start_ms and k == 0
                    data = rtp_bytes(self.seq[rid], now * 90, ssrc=layer.ssrc, pt=96,
                                     payload=(VP8_KEY if key else VP8_DELTA) + bytes(960))
                    self.seq[rid] += 1
                    layer.on_rtp(memoryview(data), len(data), now)
            now += 100
        return now


def subscriber(link: Link, source: Source) -> tuple[Participant, DownTrack]:
    participant = Participant(identity="bob", room_id="room-1", kind=ParticipantKind.WHEP)
    participant.subscriber = link.peer
    link.peer.sink = SubscriberSink(participant, link.counters)
    dt = DownTrack(peer=link.peer, kind="video", mid="0", ssrc=0xBB01, out_payload_types={"VP8": 100},
                   out_ext_ids={TWCC_URI: TW}, counters=link.counters, rtx_ssrc=RTX_SSRC, rtx_pt=RTX_PT)
    participant.downtracks.append(dt)
    dt.bind(source.layers["q"], T0)
    return participant, dt


async def remb(link: Link, bps: int) -> None:
    before = link.counters.cc.remb_in
    link.client.send(link.client.protect_rtcp(bytes(rtcp.Remb(0x1234, bps, [0xBB01]))), link.port_addr)
    async with asyncio.timeout(5):
        while link.counters.cc.remb_in == before:
            await asyncio.sleep(0.005)


async def test_the_estimate_picks_the_layer_within_the_subscribers_bound(link: Link) -> None:
    source = Source(link)
    participant, dt = subscriber(link, source)
    loop = AllocationLoop(link.counters.cc, interval_ms=500)
    loop.watch(participant, T0)
    now = source.run(T0, 1000, keyframe="f")
    assert dt.source is source.layers["f"]  # no estimate yet: the best layer, as before
    assert loop.run_due(now) == 1 and dt.alloc_rid is None  # nothing heard from the subscriber
    await remb(link, 700_000)
    now = source.run(now, 1000)
    loop.run_due(now)  # bitrates measured over the last second: h (480k) fits 700k, f does not
    assert dt.alloc_rid == "h"
    assert dt.pending_source is source.layers["h"] and source.plis  # at h's keyframe, asked for
    now = source.run(now, 500, keyframe="h")
    assert dt.source is source.layers["h"]
    switches = link.counters.cc.switches
    assert switches[SwitchDirection.DOWN][SwitchReason.BANDWIDTH] >= 1
    await remb(link, 3_000_000)
    loop.run_due(now)
    assert dt.alloc_rid == "h"  # up only after the hold time (2 s) with room to spare
    for _ in range(6):
        now = source.run(now, 500)
        loop.run_due(now)
    assert dt.alloc_rid == "f"
    assert switches[SwitchDirection.UP][SwitchReason.BANDWIDTH] >= 1
    now = source.run(now, 100, keyframe="f")
    assert dt.source is source.layers["f"]
    # the subscriber's own choice bounds the allocator's
    source.group.set_target(dt, "q", now)
    now = source.run(now, 100, keyframe="q")
    loop.run_due(now + 500)
    assert dt.source is source.layers["q"] and dt.alloc_rid is not None
    # a subscriber that leaves is dropped from the loop
    participant.closed = True
    loop.run_due(now + 5000)
    assert len(loop) == 0


async def test_a_probe_is_padding_on_the_rtx_stream_with_transport_wide_seqs(link: Link) -> None:
    source = Source(link)
    _, dt = subscriber(link, source)
    source.run(T0, 100, keyframe="q")
    sender = link.peer.sender
    assert sender is not None and sender.padding == [RTX_SSRC, RTX_PT, 0]
    sent_before = sender.history.high
    packets = link.peer.send_probe(ProbeCluster(7, 2_000_000, 3_000, 5), T0)
    assert packets == 12  # 3,000 bytes of 260-byte packets
    got: list[RtpPacket] = []
    async with asyncio.timeout(5):
        while len(got) < packets:
            p = RtpPacket.parse(await link.client.recv_rtp())
            if p.header.ssrc == RTX_SSRC:
                got.append(p)
    assert all(p.header.payload_type == RTX_PT and p.payload == b"" and p.header.padding_size == 240 for p in got)
    assert [p.header.sequence_number for p in got] == list(range(packets))
    seqs = [int.from_bytes(dict(p.header.extensions)[TW], "big") for p in got]
    assert seqs == list(range(sent_before + 1, sent_before + 1 + packets))
    assert sender.history.high == sent_before + packets


async def test_a_track_its_subscriber_paused_keeps_its_layer_and_sends_nothing(link: Link) -> None:
    """update_subscription's pause: the allocator leaves the paused downtrack's layer alone (it
    resumes where it was) and frees its budget; nothing more is numbered for the subscriber."""
    source = Source(link)
    participant, dt = subscriber(link, source)
    loop = AllocationLoop(link.counters.cc, interval_ms=500)
    loop.watch(participant, T0)
    now = source.run(T0, 1000, keyframe="f")
    loop.run_due(now)
    await remb(link, 700_000)
    now = source.run(now, 1000)
    loop.run_due(now)
    assert dt.alloc_rid == "h"
    now = source.run(now, 500, keyframe="h")
    dt.prefs.enabled = False
    dt.paused = True
    sender = link.peer.sender
    assert sender is not None
    sent = sender.history.high
    for _ in range(4):
        now = source.run(now, 500)
        loop.run_due(now)
    assert dt.alloc_rid == "h" and dt.source is source.layers["h"]
    last = loop.last(participant)
    assert last is not None and last.tracks[0].paused == "subscriber" and last.total_bps == 0
    assert sender.history.high == sent  # nothing numbered for this subscriber
