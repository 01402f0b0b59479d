"""RFC 7983 / RFC 5761 classification, against real packets built by aiortc and by hand."""

from __future__ import annotations

import os
import random

import pytest
from aioice import stun
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRrPacket, RtpPacket

from sfu.packet.demux import PacketClass, classify


def _stun_binding() -> bytes:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    return bytes(msg)


def _dtls_client_hello_record() -> bytes:
    # content type 22 (handshake), DTLS 1.2 version, epoch 0, seq 0, length 1, one body byte.
    return bytes([22, 0xFE, 0xFD]) + bytes(8) + b"\x00\x01" + b"\x01"


CASES = [
    ("stun binding request", _stun_binding(), PacketClass.STUN),
    ("dtls handshake record", _dtls_client_hello_record(), PacketClass.DTLS),
    ("dtls application data", bytes([23]) + bytes(20), PacketClass.DTLS),
    ("dtls first byte 63", bytes([63]) + bytes(20), PacketClass.DTLS),
    (
        "rtp opus",
        RtpPacket(payload_type=111, sequence_number=1, ssrc=5, payload=b"x").serialize(),
        PacketClass.RTP,
    ),
    (
        "rtp marker pt 127",
        RtpPacket(payload_type=127, marker=1, sequence_number=1, ssrc=5, payload=b"x").serialize(),
        PacketClass.RTP,
    ),
    ("rtcp rr", bytes(RtcpRrPacket(ssrc=7)), PacketClass.RTCP),
    ("rtcp pli", bytes(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2)), PacketClass.RTCP),
    ("rtcp second byte 223", bytes([0x80, 223]) + bytes(10), PacketClass.RTCP),
    ("rtp second byte 191 (marker + pt 63)", bytes([0x80, 191]) + bytes(10), PacketClass.RTP),
    ("rtp second byte 224 (marker + pt 96)", bytes([0x80, 224]) + bytes(10), PacketClass.RTP),
    ("first byte 4 (between STUN and ZRTP)", bytes([4]) + bytes(30), PacketClass.UNKNOWN),
    ("first byte 19", bytes([19]) + bytes(30), PacketClass.UNKNOWN),
    ("first byte 64 (TURN channel)", bytes([64]) + bytes(30), PacketClass.UNKNOWN),
    ("first byte 127", bytes([127]) + bytes(30), PacketClass.UNKNOWN),
    ("first byte 192", bytes([192]) + bytes(30), PacketClass.UNKNOWN),
    ("first byte 255", bytes([255]) + bytes(30), PacketClass.UNKNOWN),
    ("empty", b"", PacketClass.UNKNOWN),
    ("stun too short", _stun_binding()[:19], PacketClass.UNKNOWN),
    ("dtls too short", _dtls_client_hello_record()[:12], PacketClass.UNKNOWN),
    ("rtp too short", bytes([0x80, 96]) + bytes(9), PacketClass.UNKNOWN),
    ("rtcp too short", bytes([0x80, 201]) + bytes(5), PacketClass.UNKNOWN),
    ("rtcp minimum", bytes([0x80, 201]) + bytes(6), PacketClass.RTCP),
]


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_classify_table(name: str, data: bytes, expected: PacketClass) -> None:
    assert classify(data, len(data)) is expected


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_classify_in_preallocated_buffer(name: str, data: bytes, expected: PacketClass) -> None:
    buf = bytearray(1500)
    buf[: len(data)] = data
    assert classify(memoryview(buf), len(data)) is expected
    assert classify(buf, len(data)) is expected


def test_length_is_clamped_to_the_buffer() -> None:
    data = bytes([0x80, 96]) + bytes(5)
    assert classify(data, 1500) is PacketClass.UNKNOWN


def test_every_first_byte_maps_to_its_rfc7983_range() -> None:
    for b0 in range(256):
        got = classify(bytes([b0, 0]) + bytes(40), 42)
        if b0 <= 3:
            assert got is PacketClass.STUN
        elif 20 <= b0 <= 63:
            assert got is PacketClass.DTLS
        elif 128 <= b0 <= 191:
            assert got is PacketClass.RTP
        else:
            assert got is PacketClass.UNKNOWN, b0


def test_rtcp_split_follows_rfc5761_and_aiortc_where_it_agrees() -> None:
    from aiortc.rtp import is_rtcp

    for b1 in range(256):
        data = bytes([0x80, b1]) + bytes(20)
        ours = classify(data, len(data)) is PacketClass.RTCP
        assert ours == (192 <= b1 <= 223), b1
        # aiortc only treats 192-208 as RTCP; RFC 5761 reserves the whole 192-223 range.
        if not 209 <= b1 <= 223:
            assert ours == is_rtcp(data), b1


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7983)
    for _ in range(3000):
        data = os.urandom(rng.randrange(0, 64))
        got = classify(data, rng.randrange(0, 80))
        assert isinstance(got, PacketClass)


def test_aiortc_compound_rtcp_is_rtcp() -> None:
    data = bytes(RtcpRrPacket(ssrc=1)) + bytes(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2))
    assert len(RtcpPacket.parse(data)) == 2
    assert classify(data, len(data)) is PacketClass.RTCP
