"""PublisherSink's upstream loss recovery over real transports: the node NACKs a publisher's lost
packets, unwraps its RTX (an a=ssrc-group:FID SSRC, or a simulcast layer's RTX named by the
repaired-rtp-stream-id extension) and forwards the recovered packet in its place."""

from __future__ import annotations

from sfu.counters import DropReason, MediaCounters, RecoveredVia
from sfu.packet import rtcp
from sfu.packet.rtp import RtpPacket
from sfu.routing.downtrack import DownTrack
from sfu.routing.participant import NODE_RTCP_SSRC, Participant, ParticipantKind, PublisherSink
from sfu.routing.simulcast import HDREXT_REPAIRED_RID, HDREXT_RID, RidRestrictions, form_groups
from sfu.routing.track import PublishedTrack, TrackCodec
from tests.sfu.routing.harness import VP8_CONTINUATION, VP8_DELTA, VP8_KEY, Link, rtp_bytes

VP8 = TrackCodec("VP8", 90_000, 96)
RTX_PT = 97
MEDIA_SSRC = 0x0BAD_CAFE
RTX_SSRC = 0x0BAD_F00D
EXT = {HDREXT_RID: 10, HDREXT_REPAIRED_RID: 11}


def publishing(link: Link, counters: MediaCounters, *, rid: str | None = None) -> tuple[PublisherSink, PublishedTrack]:
    """A WHIP-like participant publishing one VP8 track (a one-layer simulcast source with ``rid``)
    over ``link``'s transport, as Router.attach_publisher wires it."""
    participant = Participant(identity="alice", room_id="room-1", kind=ParticipantKind.WHIP)
    participant.publisher = link.peer
    sink = PublisherSink(participant, counters)
    track = PublishedTrack(
        kind="video",
        ssrc=-1 if rid else MEDIA_SSRC,
        codecs=[VP8],
        mid="0",
        owner="alice",
        counters=counters,
        request_keyframe=sink.request_keyframe,
        rid=rid,
        rtx_ssrc=None if rid else RTX_SSRC,
        ext_ids=EXT,
        nack=True,
        rtx_apt={RTX_PT: 96},
        send_nack=sink.send_nack,
    )
    participant.tracks[track.ssrc] = track
    if track.rtx_ssrc is not None:
        sink.rtx_ssrcs[track.rtx_ssrc] = track
    if rid:
        form_groups([(track, RidRestrictions())], 0)
    link.peer.sink = sink
    return sink, track


def subscriber(link: Link, track: PublishedTrack) -> DownTrack:
    dt = DownTrack(
        peer=link.peer,
        kind="video",
        mid="0",
        ssrc=0x5EB5,
        out_payload_types={"VP8": 100},
        out_ext_ids={},
        counters=link.counters,
    )
    dt.bind(track, 0)
    return dt


def send(link: Link, data: bytes) -> None:
    link.client.send(link.client.protect(data), link.port_addr)


def media(seq: int, payload: bytes, rid: str | None = None) -> bytes:
    ext = [(EXT[HDREXT_RID], rid.encode())] if rid else None
    return rtp_bytes(seq, 90_000 + seq * 3000, ssrc=MEDIA_SSRC, pt=96, payload=payload, extensions=ext)


def rtx(rtx_seq: int, osn: int, payload: bytes, rid: str | None = None, *, padding: int = 0) -> bytes:
    """What a sender retransmits (RFC 4588): its RTX SSRC, sequence and payload type, the OSN."""
    ext = [(EXT[HDREXT_REPAIRED_RID], rid.encode())] if rid else []
    packet = RtpPacket.parse(rtp_bytes(rtx_seq, 90_000 + osn * 3000, ssrc=RTX_SSRC, pt=RTX_PT, payload=b"", extensions=ext))
    packet.payload = osn.to_bytes(2, "big") + payload if payload or not padding else b""
    packet.header.padding_size = padding
    return bytes(packet)


async def next_nack(link: Link) -> rtcp.Nack:
    """The next NACK the node sends the publisher (PLIs and reports in between are skipped)."""
    while True:
        for packet in rtcp.parse_compound(await link.client.recv_rtcp()):
            if isinstance(packet, rtcp.Nack):
                return packet


async def test_a_lost_packet_is_nacked_and_its_rtx_fills_the_hole(link: Link, second_link: Link) -> None:
    counters = link.counters
    _sink, track = publishing(link, counters)
    dt = subscriber(second_link, track)
    send(link, media(1000, VP8_KEY))
    send(link, media(1001, VP8_DELTA))
    send(link, media(1003, VP8_DELTA))  # 1002 lost on the way
    nack = await next_nack(link)
    assert (nack.sender_ssrc, nack.media_ssrc, nack.seqs) == (NODE_RTCP_SSRC, MEDIA_SSRC, [1002])
    got = [RtpPacket.parse(await second_link.client.recv_rtp()) for _ in range(3)]
    base = got[0].header.sequence_number
    assert [(p.header.sequence_number - base) & 0xFFFF for p in got] == [0, 1, 3]
    send(link, rtx(7, 1001, VP8_DELTA))  # a retransmission nobody asked for (payload padding)
    send(link, rtx(8, 0, b"", padding=224))  # a probe: padding only
    send(link, rtx(9, 1002, VP8_CONTINUATION))  # the answer
    recovered = RtpPacket.parse(await second_link.client.recv_rtp())
    assert recovered.header.sequence_number == (base + 2) & 0xFFFF
    assert recovered.header.ssrc == dt.ssrc and recovered.header.payload_type == 100
    assert recovered.header.timestamp == (got[0].header.timestamp + 2 * 3000) & 0xFFFFFFFF
    assert recovered.payload == VP8_CONTINUATION
    assert await second_link.client.nothing_arrives(0.1)
    assert counters.recovered[RecoveredVia.RTX] == 1
    assert counters.drops[DropReason.RTX_PADDING] == 1 and counters.drops[DropReason.RTX_UNREQUESTED] == 1
    assert counters.drops[DropReason.RTX_UNKNOWN] == 0 and counters.nack_out == 1
    assert track.rtx_cache is not None and track.rtx_cache.get(1002) is not None
    # the subscriber's own NACK for it, now: answered from the cache
    assert dt.retransmit([(base + 2) & 0xFFFF], 0) == 1


async def test_a_simulcast_layers_rtx_is_learnt_from_the_repaired_rid(link: Link, second_link: Link) -> None:
    counters = link.counters
    sink, track = publishing(link, counters, rid="h")
    subscriber(second_link, track)
    send(link, media(50, VP8_KEY, "h"))  # names the layer: it takes the SSRC
    send(link, media(52, VP8_DELTA))
    nack = await next_nack(link)
    assert track.ssrc == MEDIA_SSRC and (nack.media_ssrc, nack.seqs) == (MEDIA_SSRC, [51])
    assert track.rtx_ssrc is None
    send(link, rtx(1, 51, VP8_DELTA, "h"))  # RTX of layer h: learnt, unwrapped, forwarded
    got = [RtpPacket.parse(await second_link.client.recv_rtp()) for _ in range(3)]
    base = got[0].header.sequence_number
    assert [(p.header.sequence_number - base) & 0xFFFF for p in got] == [0, 2, 1]
    assert track.rtx_ssrc == RTX_SSRC and sink.rtx_ssrcs[RTX_SSRC] is track
    assert counters.recovered[RecoveredVia.RTX] == 1 and sum(counters.drops) == 0


async def test_rtx_with_a_payload_type_without_apt_is_dropped(link: Link) -> None:
    counters = link.counters
    _sink, track = publishing(link, counters)
    send(link, media(1, VP8_KEY))
    send(link, media(3, VP8_DELTA))
    await next_nack(link)
    bad = RtpPacket.parse(rtx(1, 2, VP8_DELTA))
    bad.header.payload_type = 98
    send(link, bytes(bad))
    send(link, rtx(2, 2, VP8_DELTA))
    await link.client.nothing_arrives(0.1)
    assert counters.drops[DropReason.RTX_UNKNOWN] == 1 and counters.recovered[RecoveredVia.RTX] == 1


async def test_rtx_before_its_layer_is_known_is_dropped_by_what_it_is(link: Link) -> None:
    """Chromium may probe with a layer's RTX (padding, repaired rid) before the layer's own first
    packet: learnt as the layer's RTX, dropped as padding; real RTX then cannot be placed yet."""
    counters = link.counters
    sink, track = publishing(link, counters, rid="h")
    sink.on_rtp(None, memoryview(bytearray(probe := rtx(1, 0, b"", "h", padding=100))), len(probe), 0)
    early = rtx(2, 7, VP8_DELTA, "h")
    sink.on_rtp(None, memoryview(bytearray(early)), len(early), 0)
    assert track.rtx_ssrc == RTX_SSRC and track.ssrc < 0
    assert counters.drops[DropReason.RTX_PADDING] == 1 and counters.drops[DropReason.RTX_UNKNOWN] == 1
