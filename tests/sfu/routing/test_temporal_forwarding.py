"""Temporal layers in the forwarding path, over a real transport: a VP8 L1T3 publisher (30 fps:
T0 T2 T1 T2 ...), a subscriber whose estimate (its REMB) fits only T0, the allocation loop
limiting what it gets to 7.5 fps with consecutive sequence numbers and picture IDs (no loss
seen), a NACKed packet resent as it was, back to 30 fps when the estimate allows; the
subscriber's own ``max_fps`` bound with no estimate at all; a simulcast subscriber whose
estimate fits nothing moved to the lowest layer at T0.  Time is injected (``run_due(now_ms)``, packets stamped with it)."""

from __future__ import annotations

import asyncio

import pytest

from sfu.counters import SwitchDirection, SwitchReason
from sfu.packet import rtcp
from sfu.packet.codecs import vp8_descriptor
from sfu.packet.rtp import RtpPacket
from sfu.packet.temporal import ALL_LAYERS
from sfu.packet.twcc import TWCC_URI
from sfu.routing.allocation import AllocationLoop
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant, ParticipantKind, SubscriberSink
from sfu.routing.simulcast import RidRestrictions, form_groups
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.pacer import PacingConfig
from tests.sfu.routing.harness import Link, rtp_bytes

VP8 = TrackCodec("VP8", 90_000, 96)
T0 = 1_000_000
PATTERN = (0, 2, 1, 2)
#: payload bytes per frame of each temporal layer: T0 2 packets of 1,000, T1 800, T2 500:
#: 120 kbit/s up to T0, 168 up to T1, 228 with T2 (about 8 % more with the headers)
FRAME = {0: (1000, 1000), 1: (800,), 2: (500,)}


def vp8_payload(pid: int, tl0: int, tid: int, *, first: bool, key: bool, size: int) -> bytes:
    """Descriptor X=1 with I (15-bit), L, T; the layer sync bit on T1/T2; then the frame tag."""
    head = bytes([0x90 if first else 0x80, 0xE0, 0x80 | (pid >> 8), pid & 0xFF, tl0, (tid << 6) | (0x20 if tid else 0)])
    return head + bytes([0x00 if key else 0x01]) + bytes(size - len(head) - 1)


class Publisher:
    """L1T3 frames on each of its layers (``rids``: a simulcast group; the n-th layer sends n x 2
    - 1 times the packets of the first); a keyframe on the first frame and, when asked for (a
    PLI), at the layer's next T0 frame."""

    def __init__(self, link: Link, rids: tuple[str | None, ...] = (None,)) -> None:
        self.keys: set[int] = set()  # SSRCs a keyframe was asked for
        self.layers = [
            PublishedTrack(kind="video", ssrc=0x51 + i, codecs=[VP8], mid="0", owner="alice", rid=rid,
                           counters=link.counters, request_keyframe=self.keys.add)
            for i, rid in enumerate(rids)
        ]
        self.group = form_groups([(t, RidRestrictions()) for t in self.layers], T0)[0] if len(rids) > 1 else None
        self.track = self.layers[0]
        self.seq = [65000] * len(rids)
        self.pid = 0x7FF0  # wraps during the test
        self.tl0 = 250
        self.frames = 0

    def run(self, frames: int) -> int:
        """The next ``frames`` frames, at 30 fps from ``T0``; returns the time after them."""
        for _ in range(frames):
            tid = PATTERN[self.frames % 4]
            if tid == 0:
                self.tl0 = (self.tl0 + 1) & 0xFF
            now = T0 + self.frames * 100 // 3
            for i, track in enumerate(self.layers):
                key = self.frames == 0 or (tid == 0 and track.ssrc in self.keys)
                if key:
                    self.keys.discard(track.ssrc)
                for k, size in enumerate(FRAME[tid] * (2 * i + 1)):
                    data = rtp_bytes(self.seq[i], (self.frames * 3000) & 0xFFFFFFFF, ssrc=track.ssrc, pt=96,
                                     payload=vp8_payload((self.pid + 1000 * i) & 0x7FFF, (self.tl0 + 50 * i) & 0xFF,
                                                         tid, first=k == 0, key=key, size=size))
                    self.seq[i] = (self.seq[i] + 1) & 0xFFFF
                    track.on_rtp(memoryview(data), len(data), now)
            self.pid = (self.pid + 1) & 0x7FFF
            self.frames += 1
        return T0 + self.frames * 100 // 3


def packets(first: int, count: int, top: int) -> int:
    """How many packets frames ``first`` to ``first + count - 1`` send up to layer ``top``."""
    return sum(len(FRAME[t]) for i in range(first, first + count) if (t := PATTERN[i % 4]) <= top)


@pytest.fixture(autouse=True)
def unpaced(link: Link) -> None:
    """These tests are about what the temporal filter lets through: they send frames much faster
    than real time at a 140 kbit/s estimate, which the pacer (tests/sfu/routing/test_pacing.py)
    would spread and drop past its delay bound (its clock is the real one, theirs a made-up
    one): paced at 10 Gbit/s whatever the estimate, nothing waits."""
    link.port.set_pacing(PacingConfig(min_rate_bps=10_000_000_000, burst_ms=100.0))


def subscriber(link: Link, publisher: Publisher) -> tuple[Participant, DownTrack]:
    participant = Participant(identity="bob", room_id="room-1", kind=ParticipantKind.WHEP)
    participant.subscriber = link.peer
    link.peer.sink = SubscriberSink(participant, link.counters)
    dt = DownTrack(peer=link.peer, kind="video", mid="0", ssrc=0xBB01, out_payload_types={"VP8": 100},
                   out_ext_ids={TWCC_URI: 3}, counters=link.counters)  # a transport-cc sender, REMB-fed
    participant.downtracks.append(dt)
    dt.bind(publisher.track, T0)
    return participant, dt


async def remb(link: Link, bps: int) -> None:
    before = link.counters.cc.remb_in
    link.client.send(link.client.protect_rtcp(bytes(rtcp.Remb(0x1234, bps, [0xBB01]))), link.port_addr)
    async with asyncio.timeout(5):
        while link.counters.cc.remb_in == before:
            await asyncio.sleep(0.005)


async def drain(link: Link, lose: int = -1) -> list[tuple[int, int, int, int]]:
    """(seq, picture id, TL0PICIDX, TID) of every RTP packet that arrived; the ``lose``-th is
    lost before decryption (as on the way)."""
    out = []
    rx = link.client.rx
    assert rx is not None
    n = 0
    while True:
        try:
            datagram = await link.client.recv(timeout=0.5)
        except TimeoutError:
            return out
        if 192 <= datagram[1] <= 223:
            continue  # RTCP
        n += 1
        if n - 1 == lose:
            continue
        data = rx.unprotect_rtp_bytes(datagram)
        assert data is not None, rx.last_error
        p = RtpPacket.parse(data)
        d = vp8_descriptor(p.payload)
        assert d is not None
        out.append((p.header.sequence_number, d.picture_id, d.tl0picidx, d.tid))


def assert_continuous(got: list[tuple[int, int, int, int]]) -> None:
    for a, b in zip(got, got[1:], strict=False):
        assert b[0] == (a[0] + 1) & 0xFFFF, (a, b)  # no hole: dropped packets are not loss
        assert (b[1] - a[1]) & 0x7FFF in (0, 1), (a, b)  # picture ids consecutive on what is sent


async def test_an_estimate_for_t0_only_gets_a_quarter_of_the_frames_then_all(link: Link) -> None:
    pub = Publisher(link)
    participant, dt = subscriber(link, pub)
    loop = AllocationLoop(link.counters.cc, interval_ms=500)
    loop.watch(participant, T0)
    await remb(link, 140_000)
    loop.run_due(pub.run(30))  # 1 s: all of it (nothing measured yet)
    assert len(await drain(link)) == packets(0, 30, 2)
    loop.run_due(pub.run(30))  # measured: T0 ~115 kbit/s fits 140 k, T0+T1 ~165 k does not
    assert pub.track.tl_top == 2 and len(pub.track.tl_rates) == 3
    assert dt.temporal is not None and dt.temporal.target == 0
    assert link.counters.cc.switches[SwitchDirection.DOWN][SwitchReason.BANDWIDTH] == 1
    await drain(link)
    pub.run(60)  # 2 s: 15 T0 frames of 2 packets; the second packet of the 13th is lost
    got = await drain(link, lose=25)
    lost = ((got[24][0] + 1) & 0xFFFF, got[24][1], got[24][2], 0)
    got.insert(25, lost)
    assert {tid for *_, tid in got} == {0}
    assert len(got) == packets(60, 60, 0) == 30
    assert_continuous(got)
    tl0s = [tl0 for _, _, tl0, _ in got[::2]]
    assert all((b - a) & 0xFF == 1 for a, b in zip(tl0s, tl0s[1:], strict=False))  # wraps at 256
    # NACKed, it comes again with its seq and its picture's id (9 pictures dropped since)
    assert dt.retransmit([lost[0]], T0 + 4000) == 1
    assert await drain(link) == [lost]
    # the limit lifts: up after the allocator's hold, a layer at a time at sync frames
    await remb(link, 2_000_000)
    for _ in range(6):
        loop.run_due(pub.run(15))
    assert dt.temporal.target == ALL_LAYERS
    assert link.counters.cc.switches[SwitchDirection.UP][SwitchReason.BANDWIDTH] == 1
    before = await drain(link)
    pub.run(60)
    got = await drain(link)
    assert_continuous(before + got)
    assert len(got) == packets(210, 60, 2)  # every frame again
    assert {tid for *_, tid in got} == {0, 1, 2}


async def test_the_subscribers_max_fps_bounds_the_layers_without_an_estimate(link: Link) -> None:
    pub = Publisher(link)
    participant, dt = subscriber(link, pub)
    loop = AllocationLoop(link.counters.cc, interval_ms=500)
    loop.watch(participant, T0)
    dt.prefs.max_fps = 15  # update_subscription {"max_fps": 15}
    loop.run_due(pub.run(30))
    now = pub.run(30)
    loop.run_due(now)  # no estimate: only the subscriber's bound (T0+T1 at 15 fps)
    assert dt.temporal is not None and dt.temporal.target == 1, (pub.track.tl_rates, pub.track.tl_fps)
    await drain(link)
    now = pub.run(60)
    got = await drain(link)
    assert {tid for *_, tid in got} == {0, 1} and len(got) == packets(60, 60, 1)
    assert_continuous(got)
    dt.prefs.max_fps = None
    loop.run_due(now + 500)
    assert dt.temporal.target == ALL_LAYERS


async def test_simulcast_the_lowest_layer_at_t0_when_nothing_else_fits(link: Link) -> None:
    """Two layers (q about 130/180/250 kbit/s up to T0/T1/T2, h three times that): an estimate
    under q's T0 moves the subscriber from h to q at q's keyframe and to T0 there, rather than
    pausing it; the stream stays continuous across the layer switch and the drops."""
    pub = Publisher(link, ("q", "h"))
    participant, dt = subscriber(link, pub)
    assert dt.source is pub.layers[1]  # no estimate: the best layer
    loop = AllocationLoop(link.counters.cc, interval_ms=500)
    loop.watch(participant, T0)
    await remb(link, 100_000)
    loop.run_due(pub.run(30))
    got = await drain(link)
    loop.run_due(pub.run(30))  # measured: q T0 does not fit either (paused for congestion)
    assert dt.alloc_rid == "q" and dt.temporal is not None and dt.temporal.target == 0
    assert dt.pending_source is pub.layers[0] and pub.keys == {pub.layers[0].ssrc}  # a PLI on q
    got += await drain(link)
    pub.run(60)  # q's keyframe at its next T0 frame, then q at T0
    got += await drain(link)
    assert dt.source is pub.layers[0]
    assert_continuous(got)
    tail = got[-20:]
    assert {tid for *_, tid in tail} == {0}
    assert [(b[1] - a[1]) & 0x7FFF for a, b in zip(tail[::2], tail[2::2], strict=False)] == [1] * 9
