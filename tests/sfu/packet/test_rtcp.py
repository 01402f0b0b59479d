"""Compound RTCP parsing and building, cross-checked against aiortc in both directions."""

from __future__ import annotations

import os
import random
import struct

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)
from aiortc.rtp import RtcpPacket as AioRtcp

from sfu.packet.rtcp import (
    PSFB,
    RTPFB,
    SR,
    Bye,
    Feedback,
    Fir,
    FirEntry,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpPacket,
    Sdes,
    SdesChunk,
    SenderReport,
    TransportCC,
    UnknownRtcp,
    bye,
    compound,
    dlsr_from_ms,
    find_packet,
    fir,
    nack,
    nack_pairs,
    ntp_from_ms,
    ntp_middle,
    ntp_to_ms,
    parse_compound,
    pli,
    receiver_report,
    remb,
    rewrite_sr_in_place,
    rtt_ms,
    sdes_cname,
    sender_report,
)

BLOCK = ReportBlock(
    ssrc=0xAABBCCDD,
    fraction_lost=64,
    cumulative_lost=-3,
    highest_seq=0x0001FFFF,
    jitter=123,
    lsr=0x12345678,
    dlsr=65536,
)
BLOCK2 = ReportBlock(
    ssrc=2, fraction_lost=255, cumulative_lost=0x7FFFFF, highest_seq=0xFFFFFFFF, jitter=0, lsr=0, dlsr=0
)

PACKETS: list[tuple[str, RtcpPacket]] = [
    ("sr no blocks", SenderReport(1, 0xE000000080000000, 90000, 10, 1000)),
    ("sr two blocks", SenderReport(1, 5, 6, 7, 8, [BLOCK, BLOCK2])),
    ("sr with profile extension", SenderReport(1, 5, 6, 7, 8, [BLOCK], b"EXT!")),
    ("rr empty", ReceiverReport(9)),
    ("rr blocks", ReceiverReport(9, [BLOCK, BLOCK2])),
    ("sdes cname", Sdes([SdesChunk(7, [(1, b"user@host")])])),
    (
        "sdes chunk sizes",
        Sdes([SdesChunk(1, [(1, b"ab")]), SdesChunk(2, [(1, b"abc"), (6, b"tool")]), SdesChunk(3)]),
    ),
    ("bye", Bye([1, 2, 3])),
    ("bye reason", Bye([1], b"left the room")),
    ("bye empty", Bye()),
    ("nack single", Nack(1, 2, [100])),
    ("nack blp", Nack(1, 2, [100, 101, 116])),
    ("nack two entries", Nack(1, 2, [100, 117])),
    ("nack wrap", Nack(1, 2, [65535, 0, 1])),
    ("twcc", TransportCC(1, 2, bytes(range(16)))),
    ("pli", Pli(0xFFFFFFFF, 0x12345678)),
    ("fir", Fir(1, [FirEntry(2, 7), FirEntry(3, 255)])),
    ("remb", Remb(1, 1_500_000, [2, 3])),
    ("remb small", Remb(1, 1000, [])),
    ("feedback sli", Feedback(PSFB, 2, 1, 2, b"\x00\x01\x02\x03")),
    ("feedback tmmbr", Feedback(RTPFB, 3, 1, 2, bytes(8))),
    ("app", UnknownRtcp(204, 3, struct.pack("!I", 5) + b"NAME" + b"data")),
    ("xr", UnknownRtcp(207, 0, struct.pack("!I", 5) + bytes(12))),
]


@pytest.mark.parametrize(("name", "packet"), PACKETS, ids=[c[0] for c in PACKETS])
def test_round_trip(name: str, packet: RtcpPacket) -> None:
    data = bytes(packet)
    assert len(data) % 4 == 0
    assert struct.unpack_from("!H", data, 2)[0] * 4 + 4 == len(data)
    (back,) = parse_compound(data)
    assert back == packet
    assert bytes(back) == data


def test_compound_round_trip() -> None:
    packets = [p for _, p in PACKETS]
    data = compound(packets)
    assert parse_compound(data) == packets
    assert parse_compound(bytearray(data)) == packets
    assert parse_compound(memoryview(data)) == packets


def test_cumulative_lost_is_signed_24_bit_and_clamped() -> None:
    for value, expected in [
        (-1, -1),
        (-0x800000, -0x800000),
        (0x7FFFFF, 0x7FFFFF),
        (10**9, 0x7FFFFF),
        (-(10**9), -0x800000),
    ]:
        (rr,) = parse_compound(receiver_report(1, [ReportBlock(2, cumulative_lost=value)]))
        assert isinstance(rr, ReceiverReport)
        assert rr.reports[0].cumulative_lost == expected


# --------------------------------------------------------------------------- aiortc cross-checks


def test_aiortc_sr_parses_with_ours() -> None:
    aio = RtcpSrPacket(
        ssrc=11,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=0x0123456789ABCDEF, rtp_timestamp=0xFFFFFFFF, packet_count=5, octet_count=500
        ),
        reports=[
            RtcpReceiverInfo(
                ssrc=22, fraction_lost=12, packets_lost=-5, highest_sequence=70000, jitter=9, lsr=1, dlsr=2
            )
        ],
    )
    (sr,) = parse_compound(bytes(aio))
    assert sr == SenderReport(
        11, 0x0123456789ABCDEF, 0xFFFFFFFF, 5, 500, [ReportBlock(22, 12, -5, 70000, 9, 1, 2)]
    )


def test_ours_parse_with_aiortc() -> None:
    data = (
        compound(
            [
                SenderReport(11, 0x0123456789ABCDEF, 3, 4, 5, [BLOCK]),
                Sdes([SdesChunk(11, [(1, b"cname")])]),
                Bye([11]),
            ]
        )
        + receiver_report(12, [BLOCK2])
        + pli(1, 2)
        + nack(1, 2, [10, 11, 30])
        + fir(1, 2, 9)
        + remb(1, 123456, [7])
    )
    parsed = AioRtcp.parse(data)
    sr, sdes, bye_, rr, pli_, nack_, fir_, remb_ = parsed
    assert isinstance(sr, RtcpSrPacket)
    assert sr.ssrc == 11 and sr.sender_info.ntp_timestamp == 0x0123456789ABCDEF
    assert sr.sender_info.rtp_timestamp == 3 and sr.sender_info.packet_count == 4
    r = sr.reports[0]
    assert (r.ssrc, r.fraction_lost, r.packets_lost, r.highest_sequence, r.jitter, r.lsr, r.dlsr) == (
        BLOCK.ssrc,
        BLOCK.fraction_lost,
        BLOCK.cumulative_lost,
        BLOCK.highest_seq,
        BLOCK.jitter,
        BLOCK.lsr,
        BLOCK.dlsr,
    )
    assert isinstance(sdes, RtcpSdesPacket) and sdes.chunks[0].items == [(1, b"cname")]
    assert isinstance(bye_, RtcpByePacket) and bye_.sources == [11]
    assert isinstance(rr, RtcpRrPacket) and rr.reports[0].packets_lost == 0x7FFFFF
    assert isinstance(pli_, RtcpPsfbPacket) and (pli_.fmt, pli_.ssrc, pli_.media_ssrc) == (1, 1, 2)
    assert isinstance(nack_, RtcpRtpfbPacket) and nack_.lost == [10, 11, 30]
    assert isinstance(fir_, RtcpPsfbPacket) and fir_.fmt == 4 and fir_.fci == struct.pack("!II", 2, 9 << 24)
    assert isinstance(remb_, RtcpPsfbPacket) and remb_.fmt == 15
    from aiortc.rtp import unpack_remb_fci

    assert unpack_remb_fci(remb_.fci) == (123456, [7])


def test_aiortc_feedback_parses_with_ours() -> None:
    from aiortc.rtp import pack_remb_fci

    data = (
        bytes(RtcpRtpfbPacket(fmt=1, ssrc=5, media_ssrc=6, lost=[1, 2, 3, 40]))
        + bytes(RtcpPsfbPacket(fmt=1, ssrc=5, media_ssrc=6))
        + bytes(RtcpPsfbPacket(fmt=15, ssrc=5, media_ssrc=0, fci=pack_remb_fci(2_000_000, [6, 7])))
        + bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=5, items=[(1, b"abcdef")])]))
        + bytes(RtcpByePacket(sources=[5, 6]))
    )
    n, p, r, s, b = parse_compound(data)
    assert n == Nack(5, 6, [1, 2, 3, 40])
    assert p == Pli(5, 6)
    assert isinstance(r, Remb) and r.ssrcs == [6, 7] and abs(r.bitrate - 2_000_000) < 2_000_000 / 2**17
    assert isinstance(s, Sdes) and s.cname(5) == "abcdef" and s.cname(99) is None
    assert b == Bye([5, 6])


# --------------------------------------------------------------------------- NACK encoding

NACK_CASES = [
    ("empty", [], []),
    ("one", [5], [(5, 0)]),
    ("blp bits", [5, 6, 21], [(5, 0b1 | 1 << 15)]),
    ("17 apart", [5, 22], [(5, 0), (22, 0)]),
    ("unsorted with duplicates", [9, 7, 8, 7], [(7, 0b11)]),
    ("wrap", [65534, 65535, 0, 3], [(65534, 0b1 | 0b10 | 0b10000)]),
    ("wrap unsorted", [1, 65535], [(65535, 0b10)]),
]


@pytest.mark.parametrize(("name", "seqs", "pairs"), NACK_CASES, ids=[c[0] for c in NACK_CASES])
def test_nack_pairs(name: str, seqs: list[int], pairs: list[tuple[int, int]]) -> None:
    assert nack_pairs(seqs) == pairs
    if seqs:
        (parsed,) = parse_compound(nack(1, 2, seqs))
        assert isinstance(parsed, Nack)
        assert sorted(parsed.seqs) == sorted(set(seqs))


def test_nack_expands_all_blp_bits() -> None:
    body = struct.pack("!IIHH", 1, 2, 65530, 0xFFFF)
    data = struct.pack("!BBH", 0x81, RTPFB, len(body) // 4) + body
    (n,) = parse_compound(data)
    assert isinstance(n, Nack)
    assert n.seqs == [65530, 65531, 65532, 65533, 65534, 65535] + list(range(0, 11))


# --------------------------------------------------------------------------- REMB, FIR

REMB_CASES = [0, 1, 0x3FFFF, 0x40000, 1_000_000, 2**40 + 12345]


@pytest.mark.parametrize("bitrate", REMB_CASES)
def test_remb_mantissa_exponent(bitrate: int) -> None:
    (r,) = parse_compound(remb(1, bitrate, [2]))
    assert isinstance(r, Remb)
    assert r.bitrate <= bitrate
    assert bitrate - r.bitrate < max(1, bitrate >> 17)


def test_fir_builder() -> None:
    (f,) = parse_compound(fir(10, 20, 300))
    assert f == Fir(10, [FirEntry(20, 300 & 0xFF)], 0)


# --------------------------------------------------------------------------- errors


def hdr(b0: int, pt: int, words: int) -> bytes:
    return struct.pack("!BBH", b0, pt, words)


ERRORS = [
    ("empty", b"", "empty"),
    ("short header", b"\x80\xc9\x00", "header at 0 overruns"),
    ("version", hdr(0x40, 201, 1) + bytes(4), "version must be 2, got 1"),
    ("length overrun", hdr(0x80, 201, 2) + bytes(4), "declares 12 bytes, only 8 remain"),
    ("second packet truncated", receiver_report(1) + hdr(0x80, 201, 1), "declares 8 bytes, only 4 remain"),
    ("rr no ssrc", hdr(0x80, 201, 0), "RR body of 0 bytes has no sender SSRC"),
    ("rr block count", hdr(0x81, 201, 1) + bytes(4), "RR with 1 report blocks needs 28 bytes, has 4"),
    ("sr short", hdr(0x80, 200, 1) + bytes(4), "SR body of 4 bytes is shorter"),
    ("sr block count", hdr(0x82, 200, 12) + bytes(48), "SR with 2 report blocks needs 72 bytes, has 48"),
    ("padding zero", hdr(0xA0, 201, 2) + bytes(8), "padding of 0 bytes is invalid"),
    ("padding overrun", hdr(0xA0, 201, 1) + bytes(3) + b"\x09", "padding of 9 bytes is invalid"),
    (
        "sdes chunk overrun",
        hdr(0x82, 202, 2) + struct.pack("!I", 1) + b"\x00\x00\x00\x00",
        "chunk 1 at 8 overruns",
    ),
    (
        "sdes no terminator",
        hdr(0x81, 202, 2) + struct.pack("!I", 1) + b"\x01\x02ab",
        "no terminating null item",
    ),
    (
        "sdes item overrun",
        hdr(0x81, 202, 2) + struct.pack("!I", 1) + b"\x01\x09ab",
        "item of 9 bytes at 6 overruns",
    ),
    ("bye sources", hdr(0x82, 203, 1) + bytes(4), "BYE with 2 sources needs 8 bytes, has 4"),
    ("bye reason", hdr(0x81, 203, 2) + bytes(4) + b"\x09abc", "reason of 9 bytes overruns"),
    ("nack short", hdr(0x81, 205, 1) + bytes(4), "NACK body of 4 bytes is shorter"),
    ("fir partial entry", hdr(0x84, 206, 3) + bytes(12), "FIR FCI of 4 bytes is not a whole number"),
    ("pli short", hdr(0x81, 206, 1) + bytes(4), "PLI body of 4 bytes is shorter"),
    (
        "remb ssrcs",
        hdr(0x8F, 206, 4) + bytes(8) + b"REMB" + bytes([3, 0, 0, 1]),
        "REMB with 3 SSRCs needs 28 bytes, has 16",
    ),
    ("unknown fb short", hdr(0x83, 206, 0), "feedback 206/3 body of 0 bytes"),
]


@pytest.mark.parametrize(("name", "data", "message"), ERRORS, ids=[c[0] for c in ERRORS])
def test_errors(name: str, data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_compound(data)


def test_padding_is_stripped() -> None:
    body = struct.pack("!I", 77) + b"\x00\x00\x00\x04"
    (rr,) = parse_compound(hdr(0xA0, 201, 2) + body)
    assert rr == ReceiverReport(77)


def test_builder_errors() -> None:
    with pytest.raises(ValueError, match="at most 31 report blocks"):
        receiver_report(1, [ReportBlock(i) for i in range(32)])
    with pytest.raises(ValueError, match="fraction lost 256"):
        bytes(ReportBlock(1, fraction_lost=256))
    with pytest.raises(ValueError, match="not 32-bit aligned"):
        bytes(UnknownRtcp(204, 0, b"abc"))
    with pytest.raises(ValueError, match="negative"):
        remb(1, -1, [])


def test_fuzz_only_value_errors() -> None:
    rng = random.Random(4585)
    samples = [bytes(p) for _, p in PACKETS]
    whole = compound([p for _, p in PACKETS])
    for cut in range(len(whole) + 1):
        try:
            parse_compound(whole[:cut])
        except ValueError:
            pass
    for _ in range(5000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        try:
            for p in parse_compound(bytes(data)):
                bytes(p)  # whatever parses serializes
        except ValueError:
            pass
        off = find_packet(data, len(data), SR)
        assert off == -1 or (data[off + 1] == SR and off + 4 <= len(data))
        if off >= 0:
            size = rewrite_sr_in_place(
                data, off, len(data), ssrc=1, rtp_timestamp=2, packet_count=3, octet_count=4
            )
            assert size == -1 or size == 28
    for _ in range(2000):
        raw = bytes([0x80 | rng.randrange(64)]) + os.urandom(rng.randrange(0, 60))
        try:
            parse_compound(raw)
        except ValueError:
            pass


# --------------------------------------------------------------------------- SR rewriting


def test_rewrite_sr_in_place_drops_blocks() -> None:
    sr = SenderReport(0x1111, 0xAAAABBBBCCCCDDDD, 1000, 50, 5000, [BLOCK, BLOCK2])
    data = receiver_report(5) + bytes(sr) + sdes_cname(0x1111, "pub")
    buf = bytearray(1500)
    buf[: len(data)] = data
    off = find_packet(buf, len(data), SR)
    assert off == 8
    size = rewrite_sr_in_place(
        buf, off, len(data), ssrc=0x2222, rtp_timestamp=777, packet_count=40, octet_count=4000
    )
    assert size == 28
    (out,) = parse_compound(bytes(buf[off : off + size]))
    assert out == SenderReport(0x2222, 0xAAAABBBBCCCCDDDD, 777, 40, 4000)
    (aio,) = AioRtcp.parse(bytes(buf[off : off + size]))
    assert isinstance(aio, RtcpSrPacket) and aio.ssrc == 0x2222 and aio.sender_info.rtp_timestamp == 777


def test_rewrite_sr_in_place_keep_blocks() -> None:
    sr = SenderReport(1, 2, 3, 4, 5, [BLOCK])
    buf = bytearray(bytes(sr))
    size = rewrite_sr_in_place(
        buf, 0, len(buf), ssrc=9, rtp_timestamp=2**32 + 8, packet_count=7, octet_count=6, drop_reports=False
    )
    assert size == len(buf)
    assert parse_compound(bytes(buf)) == [SenderReport(9, 2, 8, 7, 6, [BLOCK])]


REWRITE_REJECTS = [
    ("not an sr", receiver_report(1) + bytes(24), 0),
    ("truncated", bytes(SenderReport(1))[:27], 0),
    ("offset past end", bytes(SenderReport(1)), 4),
    ("declared length past end", hdr(0x80, SR, 7) + bytes(24), 0),
    ("bad version", b"\x40" + bytes(SenderReport(1))[1:], 0),
]


@pytest.mark.parametrize(("name", "data", "offset"), REWRITE_REJECTS, ids=[c[0] for c in REWRITE_REJECTS])
def test_rewrite_sr_rejects(name: str, data: bytes, offset: int) -> None:
    buf = bytearray(data)
    assert (
        rewrite_sr_in_place(buf, offset, len(buf), ssrc=1, rtp_timestamp=1, packet_count=1, octet_count=1)
        == -1
    )
    assert bytes(buf) == data


def test_find_packet() -> None:
    data = receiver_report(1) + pli(1, 2) + sender_report(3, 0, 0, 0, 0)
    assert find_packet(data, len(data), PSFB) == 8
    assert find_packet(data, len(data), SR) == 20
    assert find_packet(data, len(data), PSFB, start=20) == -1
    assert find_packet(data, len(data) - 1, SR) == -1  # truncated last packet


# --------------------------------------------------------------------------- NTP helpers


def test_ntp_conversions() -> None:
    ms = 1_700_000_000_123
    ntp = ntp_from_ms(ms)
    assert ntp >> 32 == 1_700_000_000 + 2208988800
    assert ntp_to_ms(ntp) in (ms, ms - 1)
    assert ntp_middle(0x1122334455667788) == 0x33445566
    assert dlsr_from_ms(1000) == 65536
    # A report sent 100 ms after our SR, received 50 ms later: RTT 50 ms.
    sr_ntp = ntp_from_ms(ms)
    now = ntp_from_ms(ms + 150)
    assert rtt_ms(ntp_middle(now), ntp_middle(sr_ntp), dlsr_from_ms(100)) in (49, 50, 51)
    assert rtt_ms(ntp_middle(now), 0, 0) == 0


def test_builders_emit_expected_classes() -> None:
    data = pli(1, 2) + fir(1, 2, 3) + nack(1, 2, [4]) + receiver_report(1) + sender_report(1, 2, 3, 4, 5)
    data += remb(1, 100, [2]) + sdes_cname(1, "x") + bye([1])
    kinds = [type(p) for p in parse_compound(data)]
    assert kinds == [Pli, Fir, Nack, ReceiverReport, SenderReport, Remb, Sdes, Bye]
