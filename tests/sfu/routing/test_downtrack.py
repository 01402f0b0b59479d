"""DownTrack: header rewriting, continuous sequence/timestamps across rebinds, NACK answers.

Packets enter through ``PublishedTrack.on_rtp`` and leave through a real CONNECTED transport;
the raw client unprotects what arrives.
"""

from __future__ import annotations

import pytest

from sfu.counters import DropReason
from sfu.packet.rtp import RtpPacket
from sfu.routing.downtrack import HDREXT_MID, DownTrack
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.transport.peer import CloseReason
from tests.sfu.routing.harness import (
    OPUS_FRAME,
    VP8_DELTA,
    VP8_KEY,
    Link,
    rtp_bytes,
)

T0 = 50_000
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
ORIENTATION = "urn:3gpp:video-orientation"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
VP8 = TrackCodec("VP8", 90_000, 96)
H264 = TrackCodec("H264", 90_000, 102)
OPUS = TrackCodec("opus", 48_000, 111)
RED = TrackCodec("red", 48_000, 63)


def track(
    kind: str = "video",
    *,
    ssrc: int = 0xAAAA0001,
    codecs: list[TrackCodec] | None = None,
    ext_ids: dict[str, int] | None = None,
    link: Link,
    owner: str = "alice",
) -> PublishedTrack:
    return PublishedTrack(
        kind=kind,
        ssrc=ssrc,
        codecs=codecs or ([VP8] if kind == "video" else [OPUS]),
        mid="0",
        owner=owner,
        counters=link.counters,
        request_keyframe=lambda ssrc: None,
        ext_ids=ext_ids,
    )


def downtrack(
    link: Link,
    kind: str = "video",
    *,
    ssrc: int = 0xBBBB0001,
    out_payload_types: dict[str, int] | None = None,
    out_ext_ids: dict[str, int] | None = None,
    mid: str = "0",
) -> DownTrack:
    return DownTrack(
        peer=link.peer,
        kind=kind,
        mid=mid,
        ssrc=ssrc,
        out_payload_types=out_payload_types or ({"VP8": 100} if kind == "video" else {"opus": 109}),
        out_ext_ids=out_ext_ids or {},
        counters=link.counters,
    )


def push(
    src: PublishedTrack,
    seq: int,
    ts: int,
    payload: bytes,
    now_ms: int,
    *,
    pt: int | None = None,
    extensions: list[tuple[int, bytes]] | None = None,
    marker: bool = False,
) -> bytes:
    data = rtp_bytes(
        seq,
        ts,
        ssrc=src.ssrc,
        pt=src.codec.payload_type if pt is None else pt,
        payload=payload,
        extensions=extensions,
        marker=marker,
    )
    src.on_rtp(memoryview(data), len(data), now_ms)
    return data


async def received(link: Link, count: int) -> list[RtpPacket]:
    out = [RtpPacket.parse(await link.client.recv_rtp()) for _ in range(count)]
    assert await link.client.nothing_arrives(0.1)
    return out


# -- rewriting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pub_ids", "sub_ids", "ext_in", "ext_out"),
    [
        pytest.param(
            {ABS_SEND_TIME: 3, TRANSPORT_CC: 5},
            {ABS_SEND_TIME: 3, TRANSPORT_CC: 5},
            [(3, b"\x01\x02\x03"), (5, b"\x00\x07")],
            [(3, b"\x01\x02\x03"), (5, b"\x00\x00")],  # the node's own transport-wide seq: its first
            id="identity",
        ),
        pytest.param(
            {ABS_SEND_TIME: 3, TRANSPORT_CC: 5},
            {ABS_SEND_TIME: 2, TRANSPORT_CC: 9},
            [(3, b"\x01\x02\x03"), (5, b"\x00\x07")],
            [(2, b"\x01\x02\x03"), (9, b"\x00\x00")],
            id="renumbered",
        ),
        pytest.param(
            {ABS_SEND_TIME: 3},
            {ABS_SEND_TIME: 3, TRANSPORT_CC: 5},
            [(3, b"\x01\x02\x03")],
            [(3, b"\x01\x02\x03"), (5, b"\x00\x00")],
            id="transport-cc-added",
        ),
        pytest.param(
            {},
            {TRANSPORT_CC: 5},
            [],
            [(5, b"\x00\x00")],
            id="transport-cc-added-to-a-packet-without-extensions",
        ),
        pytest.param(
            {ABS_SEND_TIME: 3, ORIENTATION: 7},
            {ABS_SEND_TIME: 4},
            [(7, b"\x01"), (3, b"\xaa\xbb\xcc")],
            [(4, b"\xaa\xbb\xcc")],
            id="not-negotiated-dropped",
        ),
        pytest.param(
            {ORIENTATION: 7},
            {ABS_SEND_TIME: 4},
            [(7, b"\x01")],
            [],
            id="nothing-kept",
        ),
        pytest.param(
            {ABS_SEND_TIME: 3},
            {ABS_SEND_TIME: 20},
            [(3, b"\x01\x02\x03")],
            [(20, b"\x01\x02\x03")],
            id="to-two-byte-id",
        ),
        pytest.param({}, {ABS_SEND_TIME: 4}, [(3, b"\x01\x02\x03")], [], id="publisher-declared-none"),
    ],
)
async def test_ssrc_pt_and_extensions_are_rewritten(
    link: Link,
    pub_ids: dict[str, int],
    sub_ids: dict[str, int],
    ext_in: list[tuple[int, bytes]],
    ext_out: list[tuple[int, bytes]],
) -> None:
    src = track("audio", ext_ids=pub_ids, link=link)
    dt = downtrack(link, "audio", out_ext_ids=sub_ids)
    dt.bind(src, T0)
    push(src, 10, 4800, OPUS_FRAME, T0, extensions=ext_in, marker=True)
    (got,) = await received(link, 1)
    assert got.header.ssrc == dt.ssrc
    assert got.header.payload_type == 109
    assert got.header.marker is True
    assert got.header.extensions == ext_out
    assert (got.header.extension_profile is None) == (ext_out == [])
    assert got.payload == OPUS_FRAME


@pytest.mark.parametrize(
    ("pub_mid", "sub_mid", "ext_out"),
    [
        ("0", "0", [(9, b"0")]),  # same mid: the value passes through
        ("0", "3", [(9, b"3")]),  # rewritten to the subscriber's mid
        ("ab", "cd", [(9, b"cd")]),
        ("0", "12", []),  # different length: cannot be patched in place, dropped
    ],
)
async def test_mid_extension_carries_the_subscribers_mid(
    link: Link, pub_mid: str, sub_mid: str, ext_out: list[tuple[int, bytes]]
) -> None:
    src = PublishedTrack(
        kind="video",
        ssrc=0xAAAA0001,
        codecs=[VP8],
        mid=pub_mid,
        owner="alice",
        counters=link.counters,
        request_keyframe=lambda ssrc: None,
        ext_ids={HDREXT_MID: 4, ABS_SEND_TIME: 3},
    )
    dt = downtrack(link, mid=sub_mid, out_ext_ids={HDREXT_MID: 9, ABS_SEND_TIME: 2})
    dt.bind(src, T0)
    ext_in = [(4, pub_mid.encode()), (3, b"\x01\x02\x03")]
    push(src, 1, 0, VP8_KEY, T0, extensions=ext_in)
    push(src, 2, 3000, VP8_DELTA, T0 + 33, extensions=ext_in)
    kept = await _receive_losing(link, 2, lose={1})
    assert kept[0].header.extensions == [*ext_out, (2, b"\x01\x02\x03")]
    # a retransmission carries the same rewritten value
    assert dt.retransmit([(kept[0].header.sequence_number + 1) & 0xFFFF], T0 + 100) == 1
    resent = RtpPacket.parse(await link.client.recv_rtp())
    assert resent.header.extensions == [*ext_out, (2, b"\x01\x02\x03")]
    assert resent.payload == VP8_DELTA


@pytest.mark.parametrize(
    ("codecs", "out_pts", "in_pt", "out_pt"),
    [
        ([OPUS, RED], {"opus": 109, "RED": 120}, 111, 109),
        ([OPUS, RED], {"opus": 109, "RED": 120}, 63, 120),
        ([OPUS, RED], {"OPUS": 96, "red": 97}, 63, 97),
        ([OPUS, RED], {"opus": 109}, 63, None),  # red not negotiated with the subscriber
        ([OPUS], {"opus": 109}, 0, None),  # a payload type the publisher never declared
    ],
)
async def test_payload_types_follow_the_codec_mapping(
    link: Link, codecs: list[TrackCodec], out_pts: dict[str, int], in_pt: int, out_pt: int | None
) -> None:
    src = track("audio", codecs=codecs, link=link)
    dt = downtrack(link, "audio", out_payload_types=out_pts)
    dt.bind(src, T0)
    push(src, 1, 960, OPUS_FRAME, T0, pt=in_pt)
    if out_pt is None:
        assert await link.client.nothing_arrives(0.1)
        assert link.counters.drops[DropReason.RTP_MALFORMED] == 1
        assert dt.packets_sent == 0
    else:
        (got,) = await received(link, 1)
        assert got.header.payload_type == out_pt


async def test_sequence_and_timestamps_are_shifted_gaps_kept(link: Link) -> None:
    src = track("audio", link=link)
    dt = downtrack(link, "audio")
    dt.bind(src, T0)
    in_seqs = [65530, 65531, 65532, 65534, 65535, 0, 1, 3]  # wraps, with two holes
    for i, seq in enumerate(in_seqs):
        push(src, seq, 0xFFFFF000 + 960 * i, OPUS_FRAME, T0 + 20 * i)
    got = await received(link, len(in_seqs))
    out = [p.header.sequence_number for p in got]
    assert [(o - out[0]) & 0xFFFF for o in out] == [(s - in_seqs[0]) & 0xFFFF for s in in_seqs]
    offsets = {(p.header.timestamp - (0xFFFFF000 + 960 * i)) & 0xFFFFFFFF for i, p in enumerate(got)}
    assert len(offsets) == 1
    assert dt.packets_sent == len(in_seqs)
    assert link.counters.rtp_out[0] == len(in_seqs)


async def test_duplicates_and_very_old_packets_are_dropped(link: Link) -> None:
    src = track("audio", link=link)
    dt = downtrack(link, "audio")
    dt.bind(src, T0)
    push(src, 100, 0, OPUS_FRAME, T0)
    push(src, 100, 0, OPUS_FRAME, T0 + 1)  # duplicate
    push(src, 99, 0, OPUS_FRAME, T0 + 2)  # before the first packet of this source
    push(src, 101, 960, OPUS_FRAME, T0 + 3)
    got = await received(link, 2)
    assert (got[1].header.sequence_number - got[0].header.sequence_number) & 0xFFFF == 1
    assert link.counters.drops[DropReason.SEQ_TOO_OLD] == 2
    assert dt.packets_sent == 2


async def test_counters_and_octets(link: Link) -> None:
    src = track("audio", link=link)
    dt = downtrack(link, "audio")
    dt.bind(src, T0)
    sizes = []
    for i in range(4):
        sizes.append(len(push(src, i, 960 * i, OPUS_FRAME + bytes(i), T0 + 20 * i)))
    await received(link, 4)
    assert dt.packets_sent == 4
    assert dt.octets_sent == sum(sizes) - 12 * 4
    assert link.counters.bytes_out == sum(sizes)


async def test_paused_or_disconnected_downtracks_send_nothing(link: Link) -> None:
    src = track("audio", link=link)
    dt = downtrack(link, "audio")
    dt.bind(src, T0)
    dt.paused = True
    push(src, 1, 0, OPUS_FRAME, T0)
    assert await link.client.nothing_arrives(0.1)
    dt.paused = False
    push(src, 2, 960, OPUS_FRAME, T0 + 20)
    assert len(await received(link, 1)) == 1
    link.peer.close(CloseReason.LEFT)
    push(src, 3, 1920, OPUS_FRAME, T0 + 40)
    assert dt.packets_sent == 1 and link.counters.rtp_out == [1, 0]
    assert sum(link.counters.drops) == 0


def _malformed(src: PublishedTrack, seq: int, ts: int, payload: bytes, now_ms: int) -> None:
    """A packet whose padding bit is set with a pad count of 0: ``copy_rewrite`` refuses it."""
    data = bytearray(rtp_bytes(seq, ts, ssrc=src.ssrc, pt=src.codec.payload_type, payload=payload + b"\x00"))
    data[0] |= 0x20
    src.on_rtp(memoryview(data), len(data), now_ms)


async def test_a_malformed_packet_leaves_no_hole_in_the_outgoing_sequence(link: Link) -> None:
    src = track("audio", link=link)
    dt = downtrack(link, "audio")
    dt.bind(src, T0)
    push(src, 10, 0, OPUS_FRAME, T0)
    _malformed(src, 11, 960, OPUS_FRAME, T0 + 20)
    push(src, 12, 1920, OPUS_FRAME, T0 + 40)
    got = await received(link, 2)
    assert (got[1].header.sequence_number - got[0].header.sequence_number) & 0xFFFF == 1
    assert link.counters.drops[DropReason.RTP_MALFORMED] == 1
    assert dt.packets_sent == 2


async def test_an_unmapped_payload_type_leaves_no_hole_in_the_outgoing_sequence(link: Link) -> None:
    src = track("audio", codecs=[OPUS, RED], link=link)
    dt = downtrack(link, "audio", out_payload_types={"opus": 109})  # red not negotiated
    dt.bind(src, T0)
    push(src, 10, 0, OPUS_FRAME, T0)
    push(src, 11, 960, OPUS_FRAME, T0 + 20, pt=RED.payload_type)
    push(src, 12, 1920, OPUS_FRAME, T0 + 40)
    got = await received(link, 2)
    assert (got[1].header.sequence_number - got[0].header.sequence_number) & 0xFFFF == 1


async def test_two_variants_of_one_codec_keep_their_own_payload_types(link: Link) -> None:
    """Defect 16: the map is keyed by variant, so H264 packetization-mode 1 and 0 (and a baseline
    spelling of the same family) each leave with the subscriber's payload type for that variant."""
    mode1 = TrackCodec("H264", 90_000, 126, ("h264/42e0/1", "h264/baseline/1"))
    mode0 = TrackCodec("H264", 90_000, 97, ("h264/42e0/0", "h264/baseline/0"))
    baseline1 = TrackCodec("H264", 90_000, 98, ("h264/4200/1", "h264/baseline/1"))  # family fallback
    src = track("video", codecs=[mode1, mode0, baseline1], link=link)
    out = {"h264/42e0/1": 106, "h264/42e0/0": 108, "h264/baseline/1": 106, "h264/baseline/0": 108}
    dt = downtrack(link, out_payload_types=out)
    assert dt.can_carry(src)
    dt.bind(src, T0)
    idr = bytes([0x65, 0x88, 0x80]) + bytes(10)
    for i, pt in enumerate((126, 97, 98, 126)):
        push(src, 1 + i, 3000 * i, idr, T0 + 33 * i, pt=pt)
    assert [p.header.payload_type for p in await received(link, 4)] == [106, 108, 106, 106]
    assert not downtrack(link, out_payload_types={"h264/42e0/0": 108}).can_carry(src)  # mode 0 only


async def test_a_refused_keyframe_keeps_the_downtrack_waiting(link: Link) -> None:
    src = track("video", codecs=[VP8, H264], link=link)
    dt = downtrack(link, out_payload_types={"VP8": 100})  # H264 not negotiated with the subscriber
    dt.bind(src, T0)
    h264_idr = bytes([0x65, 0x88, 0x80]) + bytes(10)
    push(src, 1, 0, h264_idr, T0, pt=H264.payload_type)
    assert dt.waiting_keyframe
    assert src.keyframe_pending  # the next keyframe is looked for again
    _malformed(src, 2, 3000, VP8_KEY, T0 + 33)
    assert dt.waiting_keyframe
    push(src, 3, 6000, VP8_DELTA, T0 + 66)  # not decodable without a keyframe
    assert await link.client.nothing_arrives(0.1)
    push(src, 4, 9000, VP8_KEY, T0 + 100)
    (got,) = await received(link, 1)
    assert got.payload == VP8_KEY
    assert not dt.waiting_keyframe
    assert link.counters.drops[DropReason.RTP_MALFORMED] == 2


# -- binding -------------------------------------------------------------------------------------------


def test_can_carry(link: Link) -> None:
    video = downtrack(link, "video", out_payload_types={"vp8": 100})
    audio = downtrack(link, "audio")
    assert video.can_carry(track("video", link=link))
    assert not video.can_carry(track("video", codecs=[H264], link=link))
    assert not video.can_carry(track("audio", link=link))
    assert audio.can_carry(track("audio", link=link))
    assert not audio.can_carry(track("video", link=link))


def test_bind_is_idempotent_and_unbind_detaches(link: Link) -> None:
    src = track("video", link=link)
    dt = downtrack(link)
    dt.bind(src, T0)
    dt.bind(src, T0 + 1)
    assert src.downtracks == [dt] and dt.source is src
    other = track("video", ssrc=0xCCCC, link=link)
    dt.bind(other, T0 + 2)
    assert src.downtracks == [] and other.downtracks == [dt]
    dt.close()
    assert other.downtracks == [] and dt.source is None


@pytest.mark.parametrize(
    ("kind", "gap_ms", "clock_rate"),
    [("audio", 100, 48_000), ("audio", 1, 48_000), ("video", 250, 90_000), ("video", 0, 90_000)],
)
async def test_rebind_to_a_new_source_keeps_seq_and_ts_continuous(
    link: Link, kind: str, gap_ms: int, clock_rate: int
) -> None:
    payload = VP8_KEY if kind == "video" else OPUS_FRAME
    step = clock_rate // 50
    old = track(kind, ssrc=0x01, link=link, owner="alice")
    new = track(kind, ssrc=0x02, link=link, owner="bob")
    dt = downtrack(link, kind)
    dt.bind(old, T0)
    for i in range(5):
        push(old, 30_000 + i, 500_000 + step * i, payload, T0 + 20 * i)
    before = await received(link, 5)
    last_forward = T0 + 80
    dt.bind(new, last_forward + gap_ms)
    push(old, 30_005, 500_000 + step * 5, payload, last_forward + gap_ms)  # detached: goes nowhere
    for i in range(3):
        push(new, 7 + i, 123 + step * i, payload, last_forward + gap_ms + 20 * i)
    after = await received(link, 3)
    seqs = [p.header.sequence_number for p in before + after]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(8)]
    last_ts = before[-1].header.timestamp
    expected_first = (last_ts + max(gap_ms, 1) * clock_rate // 1000) & 0xFFFFFFFF
    assert after[0].header.timestamp == expected_first
    assert [(p.header.timestamp - expected_first) & 0xFFFFFFFF for p in after] == [0, step, 2 * step]
    assert {p.header.ssrc for p in before + after} == {dt.ssrc}


async def test_rebind_of_video_waits_for_the_new_sources_keyframe(link: Link) -> None:
    old = track("video", ssrc=0x01, link=link)
    new = track("video", ssrc=0x02, link=link)
    dt = downtrack(link)
    dt.bind(old, T0)
    push(old, 1, 0, VP8_KEY, T0)
    push(old, 2, 3000, VP8_DELTA, T0 + 33)
    first = await received(link, 2)
    dt.bind(new, T0 + 66)
    assert dt.waiting_keyframe
    push(new, 900, 10, VP8_DELTA, T0 + 70)  # a delta frame of the new source cannot be decoded
    push(new, 901, 3010, VP8_KEY, T0 + 100)
    (got,) = await received(link, 1)
    assert got.payload == VP8_KEY
    assert got.header.sequence_number == (first[-1].header.sequence_number + 1) & 0xFFFF


# -- retransmission -------------------------------------------------------------------------------------


async def _receive_losing(link: Link, count: int, lose: set[int]) -> dict[int, RtpPacket]:
    """Receive ``count`` packets; the ones at indexes in ``lose`` are lost before decryption."""
    assert link.client.rx is not None
    kept: dict[int, RtpPacket] = {}
    for i in range(count):
        datagram = await link.client.recv()
        if i in lose:
            continue
        clear = link.client.rx.unprotect_rtp_bytes(datagram)
        assert clear is not None
        kept[i] = RtpPacket.parse(clear)
    return kept


async def test_retransmit_answers_from_the_cache(link: Link) -> None:
    src = track("video", link=link, ext_ids={ABS_SEND_TIME: 3})
    dt = downtrack(link, out_ext_ids={ABS_SEND_TIME: 7})
    dt.bind(src, T0)
    sent = []
    for i in range(10):
        payload = VP8_KEY if i == 0 else VP8_DELTA + bytes([i])
        push(src, 2000 + i, 90_000 + 3000 * i, payload, T0 + 33 * i, extensions=[(3, bytes([i, i, i]))])
        sent.append(payload)
    kept = await _receive_losing(link, 10, lose={3, 6})
    base = kept[0].header.sequence_number
    ts0 = kept[0].header.timestamp
    nacked = [(base + 3) & 0xFFFF, (base + 6) & 0xFFFF, (base + 500) & 0xFFFF]
    assert dt.retransmit(nacked, T0 + 400) == 2
    resent = [RtpPacket.parse(await link.client.recv_rtp()) for _ in range(2)]
    assert await link.client.nothing_arrives(0.1)
    for pkt, i in zip(resent, (3, 6), strict=True):
        assert pkt.header.sequence_number == (base + i) & 0xFFFF
        assert pkt.header.timestamp == (ts0 + 3000 * i) & 0xFFFFFFFF
        assert pkt.header.ssrc == dt.ssrc and pkt.header.payload_type == 100
        assert pkt.header.extensions == [(7, bytes([i, i, i]))]
        assert pkt.payload == sent[i]
    assert link.counters.retransmits == 2


async def test_retransmit_after_the_cache_wrapped_and_after_a_rebind(link: Link) -> None:
    src = track("video", link=link)
    dt = downtrack(link)
    dt.bind(src, T0)
    n = 600  # more than the 512 cache slots
    kept: dict[int, RtpPacket] = {}
    for batch in range(0, n, 100):
        for i in range(batch, batch + 100):
            push(src, 65000 + i, 3000 * i, VP8_KEY if i == 0 else VP8_DELTA, T0 + i)
        batch_kept = await _receive_losing(link, 100, lose={10 - batch, n - 2 - batch})
        kept.update({batch + k: v for k, v in batch_kept.items()})
    assert len(kept) == n - 2
    base = kept[0].header.sequence_number
    # index 10 fell out of the cache; index n-2 is still there (and wrapped the input seq)
    assert dt.retransmit([(base + 10) & 0xFFFF], T0 + n) == 0
    assert dt.retransmit([(base + n - 2) & 0xFFFF], T0 + n) == 1
    got = RtpPacket.parse(await link.client.recv_rtp())
    assert got.header.sequence_number == (base + n - 2) & 0xFFFF
    # after a rebind, NACKs for the old source's packets are not answered from the new one
    new = track("video", ssrc=0x77, link=link)
    dt.bind(new, T0 + n + 10)
    assert dt.retransmit([(base + n - 1) & 0xFFFF], T0 + n + 20) == 0
    assert link.counters.retransmits == 1


async def test_audio_has_nothing_to_retransmit(link: Link) -> None:
    src = track("audio", link=link)
    dt = downtrack(link, "audio")
    dt.bind(src, T0)
    push(src, 1, 0, OPUS_FRAME, T0)
    (got,) = await received(link, 1)
    assert dt.retransmit([got.header.sequence_number], T0 + 10) == 0
    unbound = downtrack(link, "audio", ssrc=0x99)
    assert unbound.retransmit([1, 2, 3], T0) == 0


@pytest.mark.parametrize(
    ("foreign", "kept"),
    [
        (None, False),  # what the subscriber maps is not known (the node's own offers): stripped
        (frozenset(), True),  # its offer uses no id: the element stays, the packet on the fast path
        (frozenset({3}), True),  # it uses other ids only
        (frozenset({3, 5}), False),  # it uses id 5 for something (in another section, maybe): stripped
    ],
)
async def test_publisher_transport_cc_element_kept_only_at_an_id_the_subscriber_leaves_free(
    link: Link, foreign: frozenset[int] | None, kept: bool
) -> None:
    """A publisher that negotiated transport-cc stamps every packet.  For a subscriber that did not
    negotiate it, the element stays (copying fast path) only where no extension of the subscriber's
    offer, in any section, uses that id: receivers such as aiortc map ids across the BUNDLE."""
    link.peer.foreign_ext_ids = foreign
    src = track("audio", ext_ids={ABS_SEND_TIME: 3, TRANSPORT_CC: 5}, link=link)
    dt = downtrack(link, "audio", out_ext_ids={ABS_SEND_TIME: 3})
    dt.bind(src, T0)
    assert bool(dt._ext_same >> 5 & 1) is kept and dt._ext_same & (1 << 3)
    push(src, 10, 4800, OPUS_FRAME, T0, extensions=[(3, b"\x01\x02\x03"), (5, b"\x00\x07")], marker=True)
    (got,) = await received(link, 1)
    want = [(3, b"\x01\x02\x03"), (5, b"\x00\x07")] if kept else [(3, b"\x01\x02\x03")]
    assert got.header.extensions == want and got.payload == OPUS_FRAME
