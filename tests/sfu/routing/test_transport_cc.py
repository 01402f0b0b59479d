"""Transport-wide congestion control on the subscriber leg, over real transports: each subscriber
transport stamps its own consecutive transport-wide seqs on every packet it sends (fan-out group,
one by one, added where the publisher's packet has no element, retransmissions), records them,
and reads the subscriber's transport-cc feedback (real SRTCP) into its estimate."""

from __future__ import annotations

import asyncio

from sfu import clock
from sfu.packet import rtcp
from sfu.packet.rtp import RtpPacket
from sfu.packet.twcc import TWCC_URI, TransportFeedback
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import Participant, ParticipantKind, SubscriberSink
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.twcc_send import SendHistory
from tests.sfu.routing.harness import OPUS_FRAME, VP8_DELTA, VP8_KEY, Link, open_link, rtp_bytes

VP8 = TrackCodec("VP8", 90_000, 96)
OPUS = TrackCodec("opus", 48_000, 111)
PUB_TW = 5
T0 = 10_000


def publisher_track(link: Link, kind: str = "video", *, tw: int | None = PUB_TW, ssrc: int = 0xAAAA0001) -> PublishedTrack:
    return PublishedTrack(
        kind=kind,
        ssrc=ssrc,
        codecs=[VP8] if kind == "video" else [OPUS],
        mid="0",
        owner="alice",
        counters=link.counters,
        request_keyframe=lambda ssrc: None,
        ext_ids={TWCC_URI: tw} if tw else {},
    )


def downtrack(link: Link, kind: str = "video", *, tw: int | None = PUB_TW, ssrc: int = 0xBBBB0001, mid: str = "0") -> DownTrack:
    return DownTrack(
        peer=link.peer,
        kind=kind,
        mid=mid,
        ssrc=ssrc,
        out_payload_types={"VP8": 100} if kind == "video" else {"opus": 109},
        out_ext_ids={TWCC_URI: tw} if tw else {},
        counters=link.counters,
    )


def push(src: PublishedTrack, seq: int, now_ms: int, *, payload: bytes = VP8_DELTA, tw_value: int | None = 0xABCD) -> int:
    ext = [(PUB_TW, tw_value.to_bytes(2, "big"))] if tw_value is not None else []
    data = rtp_bytes(seq, 3000 * seq, ssrc=src.ssrc, pt=src.codec.payload_type, payload=payload, extensions=ext)
    src.on_rtp(memoryview(data), len(data), now_ms)
    return len(data)


async def transport_seqs(link: Link, count: int, ext_id: int = PUB_TW) -> list[int]:
    return [seq for seq, _ in await stamped(link, count, ext_id)]


async def stamped(link: Link, count: int, ext_id: int = PUB_TW) -> list[tuple[int, RtpPacket]]:
    """The next ``count`` RTP packets with the transport-wide seq each carries (exactly one)."""
    out = []
    for _ in range(count):
        packet = RtpPacket.parse(await link.client.recv_rtp())
        values = [v for i, v in packet.header.extensions if i == ext_id]
        assert len(values) == 1, packet.header.extensions
        out.append((int.from_bytes(values[0], "big"), packet))
    return out


async def test_each_subscriber_transport_numbers_its_packets_itself(link: Link, second_link: Link) -> None:
    third = await open_link(port=link.port)
    try:
        src = publisher_track(link)
        a = downtrack(link)
        b = downtrack(second_link)
        c = downtrack(third, tw=7)  # another id than the publisher's: one by one, renumbered
        for dt in (a, b, c):
            dt.bind(src, T0)
        sizes = [push(src, 100, T0, payload=VP8_KEY)]
        sizes += [push(src, 100 + i, T0 + i) for i in range(1, 40)]
        assert src._fast_members == [a, b]  # a and b in the fan-out group (in-place stamp), c not
        assert await transport_seqs(link, 40) == list(range(40))
        assert await transport_seqs(second_link, 40) == list(range(40))
        assert await transport_seqs(third, 40, ext_id=7) == list(range(40))
        # what the group's inlined copy of SendHistory.record left equals the reference's
        reference = SendHistory()
        for i, size in enumerate(sizes):
            reference.record(T0 + i, size)
        for peer in (link.peer, second_link.peer):
            assert peer.sender is not None
            got = peer.sender.history
            assert got.high == reference.high == 39
            assert list(got.exts) == list(reference.exts)
            assert list(got.send_times) == list(reference.send_times)
            assert list(got.sizes) == list(reference.sizes)
            assert bytes(got.states) == bytes(reference.states)
    finally:
        third.client.close()


async def test_one_transport_numbers_all_its_streams_and_adds_missing_elements(link: Link) -> None:
    video = publisher_track(link, tw=None)  # a publisher without transport-wide cc
    audio = publisher_track(link, "audio", ssrc=0xAAAA0002)
    dv = downtrack(link)
    da = downtrack(link, "audio", ssrc=0xBBBB0002, mid="1")
    dv.bind(video, T0)
    da.bind(audio, T0)
    push(video, 1, T0, payload=VP8_KEY, tw_value=None)
    push(audio, 7, T0, payload=OPUS_FRAME)
    push(video, 2, T0 + 1, tw_value=None)
    push(audio, 8, T0 + 20, payload=OPUS_FRAME)
    got = await stamped(link, 4)
    assert [seq for seq, _ in got] == [0, 1, 2, 3]
    assert [p.header.ssrc for _, p in got] == [dv.ssrc, da.ssrc, dv.ssrc, da.ssrc]
    assert got[1][1].payload == got[3][1].payload == OPUS_FRAME  # the payload moved up intact
    assert link.counters.cc.unstamped == 0
    # a retransmission is a packet of the transport like any other: the next seq (the raw
    # client, which got the original, refuses it as a replay: the history shows it)
    assert dv.retransmit([got[0][1].header.sequence_number], T0 + 50) == 1
    assert link.peer.sender is not None and link.peer.sender.history.high == 4
    assert link.peer.sender.history.send_times[4] == T0 + 50


async def test_feedback_from_the_subscriber_reaches_its_estimate(link: Link) -> None:
    participant = Participant(identity="bob", room_id="room-1", kind=ParticipantKind.WHEP)
    participant.subscriber = link.peer
    link.peer.sink = SubscriberSink(participant, link.counters)
    src = publisher_track(link)
    dt = downtrack(link)
    dt.bind(src, T0)
    participant.downtracks.append(dt)
    sender = link.peer.sender
    assert sender is not None and sender.estimate_bps(T0) is None  # nothing heard yet
    # the node's clock: once the estimate is seeded the transport paces, and its pacer's timer
    # reads that clock: the packets' times are never ahead of it (a packet queued at a time far
    # from it would count as long overdue, or its budget would wait for that time to come)
    now = clock.now_ms()
    base = 0
    for round_ in range(10):  # 100 ms of 30 packets, then their feedback: all received, spaced evenly
        await asyncio.sleep(max(now - clock.now_ms(), 0) / 1000)
        now = max(now, clock.now_ms())
        for i in range(30):
            push(src, 1 + round_ * 30 + i, now, payload=VP8_KEY if round_ == i == 0 else VP8_DELTA)
            now += 3
        seqs = await transport_seqs(link, 30)
        assert seqs == list(range(base, base + 30))
        fb = TransportFeedback(0x1234, dt.ssrc, base, round_ * 2, round_ & 0xFF, [0] + [12] * 29)
        link.client.send(link.client.protect_rtcp(bytes(fb)), link.port_addr)
        base += 30
    async with asyncio.timeout(5):
        while link.counters.cc.feedback_in < 10:
            await asyncio.sleep(0.01)
    estimate = sender.estimate_bps(now)
    assert estimate is not None and estimate > 0
    assert sender.history.states[0] == 2  # reported received
    # a subscriber that sends only REMB is served from it (another transport, no feedback yet)
    remb = rtcp.Remb(0x1234, 640_000, [dt.ssrc])
    link.client.send(link.client.protect_rtcp(bytes(remb)), link.port_addr)
    async with asyncio.timeout(5):
        while link.counters.cc.remb_in < 1:
            await asyncio.sleep(0.01)
    assert sender.remb_bps == 640_000
    assert sender.estimate_bps(now) == estimate  # transport-cc feedback came: it rules


async def test_forward_rtp_stamps_in_place_as_the_reference_records(link: Link) -> None:
    """``PeerTransport.forward_rtp`` inlines ``SendHistory.record``: the same packets leave the
    same history as the reference, and carry its seqs."""
    sender = link.peer.enable_transport_cc(PUB_TW)
    reference = SendHistory()
    for i in range(20):
        data = rtp_bytes(i, 90 * i, ssrc=0x77, pt=96, payload=bytes(30 + i), extensions=[(PUB_TW, b"\x99\x99")])
        pos = 12 + 4 + 1  # the block's header, the element's header byte
        assert link.peer.forward_rtp(memoryview(data), len(data), 96, 500 + i, 9000 * i, 0x88, pos, T0 + 7 * i)
        reference.record(T0 + 7 * i, len(data))
    got = sender.history
    assert got.high == reference.high == 19
    assert list(got.exts) == list(reference.exts) and list(got.send_times) == list(reference.send_times)
    assert list(got.sizes) == list(reference.sizes) and bytes(got.states) == bytes(reference.states)
    assert await transport_seqs(link, 20) == list(range(20))


async def test_a_subscriber_without_transport_cc_gets_the_publishers_element_untouched(link: Link, second_link: Link) -> None:
    """A publisher that stamps transport-wide seqs (every browser does) does not push subscribers
    that did not negotiate them off the fan-out group: the element rides along, unknown to them
    (RFC 8285: ignored), unless the subscriber's offer uses that id for another extension in any
    section (``PeerTransport.foreign_ext_ids``: receivers such as aiortc map ids bundle-wide)."""
    src = publisher_track(link)
    link.peer.foreign_ext_ids = frozenset()  # a WHEP offer that uses no other id
    second_link.peer.foreign_ext_ids = frozenset({PUB_TW})
    plain = downtrack(link, tw=None)
    other = DownTrack(peer=second_link.peer, kind="video", mid="0", ssrc=0xBBBB0002, out_payload_types={"VP8": 100},
                      out_ext_ids={"urn:3gpp:video-orientation": PUB_TW}, counters=link.counters)
    plain.bind(src, T0)
    push(src, 1, T0, payload=VP8_KEY, tw_value=0x0101)
    for i in range(2, 6):
        push(src, i, T0 + i, tw_value=0x0100 + i)
    assert src._fast_members == [plain] and src._fast_next == 6  # the group forwarded them all
    got = [RtpPacket.parse(await link.client.recv_rtp()) for _ in range(5)]
    assert [p.header.extensions for p in got] == [[(PUB_TW, (0x0100 + i).to_bytes(2, "big"))] for i in range(1, 6)]
    assert link.peer.sender is None
    other.bind(src, T0 + 10)
    push(src, 6, T0 + 10, payload=VP8_KEY, tw_value=0x0106)
    (other_got,) = [RtpPacket.parse(await second_link.client.recv_rtp())]
    assert other_got.header.extensions == []  # its id 5 means something else there: dropped
