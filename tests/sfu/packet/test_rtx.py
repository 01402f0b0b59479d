"""RTX unwrap (RFC 4588), in place, cross-checked against aiortc's wrap_rtx where it can."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket as AioRtpPacket
from aiortc.rtp import wrap_rtx

from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.packet.rtx import RTX_OFFSET, RtxOutcome, apt_table, unwrap_rtx

APT = apt_table({97: 96, 99: 98})
PRIMARY = 0x1111_2222


def original(seq: int, *, marker: bool = False, ext: list[tuple[int, bytes]] | None = None, pt: int = 96) -> bytes:
    header = RtpHeader(
        payload_type=pt,
        sequence_number=seq,
        timestamp=0xFEDC_BA98,
        ssrc=PRIMARY,
        marker=marker,
        extension_profile=0xBEDE if ext else None,
        extensions=ext or [],
    )
    return bytes(RtpPacket(header, bytes(range(7, 47))))


@pytest.mark.parametrize(
    ("seq", "marker", "ext", "pt", "rtx_pt"),
    [
        (1000, False, None, 96, 97),
        (65535, True, None, 96, 97),  # OSN at the top of the range
        (0, False, [(3, b"1"), (10, b"h")], 98, 99),  # extensions (mid, repaired rid) kept
        (4242, True, [(2, b"\x01\x02\x03")], 96, 97),
    ],
)
def test_unwrap_restores_what_aiortc_wrapped(
    seq: int, marker: bool, ext: list[tuple[int, bytes]] | None, pt: int, rtx_pt: int
) -> None:
    raw = original(seq, marker=marker, ext=ext, pt=pt)
    if ext is None:
        rtx = wrap_rtx(AioRtpPacket.parse(raw), payload_type=rtx_pt, sequence_number=7, ssrc=0x3333_4444)
        wire = bytes(rtx.serialize())
    else:  # aiortc drops extensions it has no map for: wrap by hand (RFC 4588 section 4)
        packet = RtpPacket.parse(raw)
        packet.header.payload_type, packet.header.sequence_number = rtx_pt, 7
        packet.header.ssrc = 0x3333_4444
        packet.payload = seq.to_bytes(2, "big") + packet.payload
        wire = bytes(packet)
    buf = bytearray(wire) + bytearray(16)  # a receive slot is larger than the packet
    assert unwrap_rtx(buf, len(wire), APT, PRIMARY) == RTX_OFFSET
    assert bytes(buf[RTX_OFFSET : len(wire)]) == raw


def test_unwrap_in_a_memoryview_keeps_padding_of_the_rtx_packet() -> None:
    header = RtpHeader(payload_type=97, sequence_number=9, timestamp=5, ssrc=0xAB, padding_size=4)
    wire = bytes(RtpPacket(header, b"\x12\x34payload"))
    buf = bytearray(wire)
    assert unwrap_rtx(memoryview(buf), len(buf), APT, PRIMARY) == RTX_OFFSET
    restored = RtpPacket.parse(bytes(buf[RTX_OFFSET:]))
    assert restored.header.sequence_number == 0x1234 and restored.header.payload_type == 96
    assert restored.header.ssrc == PRIMARY and restored.payload == b"payload"


@pytest.mark.parametrize(
    ("wire", "outcome"),
    [
        # a probe: padding only (Chrome sends these on the RTX SSRC)
        (bytes(RtpPacket(RtpHeader(payload_type=97, ssrc=1, padding_size=200), b"")), RtxOutcome.PADDING_ONLY),
        (bytes(RtpPacket(RtpHeader(payload_type=97, ssrc=1), b"\x01")), RtxOutcome.MALFORMED),  # half an OSN
        (bytes(RtpPacket(RtpHeader(payload_type=97, ssrc=1), b"")), RtxOutcome.PADDING_ONLY),  # empty
        (bytes(RtpPacket(RtpHeader(payload_type=100, ssrc=1), b"\x00\x01xx")), RtxOutcome.UNKNOWN_PT),
        (b"\x80\x61\x00", RtxOutcome.MALFORMED),  # shorter than a header
        (b"\xa0\x61" + bytes(10) + b"\x00\x01\x00", RtxOutcome.MALFORMED),  # padding count 0
    ],
)
def test_what_is_not_unwrapped_is_left_alone(wire: bytes, outcome: RtxOutcome) -> None:
    buf = bytearray(wire)
    assert unwrap_rtx(buf, len(buf), APT, PRIMARY) == outcome
    assert bytes(buf) == wire


def test_apt_table_refuses_bad_payload_types() -> None:
    assert apt_table({97: 96})[97] == 96 and apt_table({})[97] == -1
    with pytest.raises(ValueError, match="0-127"):
        apt_table({200: 96})
