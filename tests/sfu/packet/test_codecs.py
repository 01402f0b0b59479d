"""Keyframe detection: hand-built descriptors (table) and real VP8/H264 encoder output (aiortc)."""

from __future__ import annotations

import fractions
import os
import random

import numpy
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from av import VideoFrame

from sfu.packet.codecs import (
    av1_is_keyframe,
    h264_is_keyframe,
    is_keyframe,
    vp8_descriptor,
    vp8_is_keyframe,
    vp9_descriptor,
    vp9_is_keyframe,
)

# VP8 frame tag bytes: P bit (LSB of the first byte) 0 = key frame, then the start code.
VP8_KEY = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A])
VP8_INTER = bytes([0x11, 0x02, 0x00])

VP8_CASES = [
    ("minimal key", bytes([0x10]) + VP8_KEY, True),
    ("minimal inter", bytes([0x10]) + VP8_INTER, False),
    ("not start of partition", bytes([0x00]) + VP8_KEY, False),
    ("partition 1", bytes([0x11]) + VP8_KEY, False),
    ("non-reference flag ignored", bytes([0x30]) + VP8_KEY, True),
    ("X + 7-bit picture id", bytes([0x90, 0x80, 0x05]) + VP8_KEY, True),
    ("X + 15-bit picture id", bytes([0x90, 0x80, 0x81, 0x23]) + VP8_KEY, True),
    ("X + I + L + T", bytes([0x90, 0xE0, 0x81, 0x23, 0x07, 0x40]) + VP8_KEY, True),
    ("X + I + L + T inter", bytes([0x90, 0xE0, 0x81, 0x23, 0x07, 0x40]) + VP8_INTER, False),
    ("X + K only", bytes([0x90, 0x10, 0x03]) + VP8_KEY, True),
    ("truncated after X", bytes([0x90]), False),
    ("truncated picture id", bytes([0x90, 0x80, 0x81]), False),
    ("descriptor only", bytes([0x90, 0x80, 0x05]), False),
    ("empty", b"", False),
]


@pytest.mark.parametrize(("name", "payload", "key"), VP8_CASES, ids=[c[0] for c in VP8_CASES])
def test_vp8_table(name: str, payload: bytes, key: bool) -> None:
    assert vp8_is_keyframe(payload) is key
    assert is_keyframe("VP8", payload) is key
    assert is_keyframe("video/vp8", memoryview(payload)) is key


def test_vp8_descriptor_fields() -> None:
    d = vp8_descriptor(bytes([0xB0, 0xF0, 0x81, 0x23, 0x07, 0x60 | 0x05]) + VP8_KEY)
    assert d is not None
    assert d.size == 6 and d.start_of_partition and d.non_reference and d.partition_index == 0
    assert (d.picture_id, d.picture_id_offset, d.picture_id_bits) == (0x123, 2, 15)
    assert (d.tl0picidx, d.tl0picidx_offset) == (7, 4)
    assert (d.tid, d.layer_sync, d.keyidx) == (1, True, 5)
    d = vp8_descriptor(bytes([0x10]) + VP8_KEY)
    assert d is not None and d.size == 1 and d.picture_id == -1 and d.tl0picidx == -1 and d.tid == -1
    d = vp8_descriptor(bytes([0x90, 0x80, 0x7F]))
    assert d is not None and (d.picture_id, d.picture_id_bits) == (0x7F, 7)
    assert vp8_descriptor(bytes([0x90, 0x40])) is None


def _frames(width: int, height: int, count: int) -> list[VideoFrame]:
    rng = numpy.random.default_rng(5)
    frames = []
    for i in range(count):
        f = VideoFrame.from_ndarray(
            rng.integers(0, 255, (height, width, 3), dtype=numpy.uint8), format="bgr24"
        )
        f.pts = i * 3000
        f.time_base = fractions.Fraction(1, 90000)
        frames.append(f)
    return frames


def test_real_vp8_encoder_output() -> None:
    enc = Vp8Encoder()
    picture_ids = []
    for i, frame in enumerate(_frames(320, 240, 4)):
        payloads, _ = enc.encode(frame, force_keyframe=i in (0, 3))
        assert len(payloads) > 1
        assert vp8_is_keyframe(payloads[0]) is (i in (0, 3))
        assert not any(vp8_is_keyframe(p) for p in payloads[1:])  # continuation packets
        d = vp8_descriptor(payloads[0])
        assert d is not None and d.start_of_partition
        picture_ids.append(d.picture_id)
    assert [(p - picture_ids[0]) & 0x7FFF for p in picture_ids] == [0, 1, 2, 3]


def test_real_h264_encoder_output() -> None:
    enc = H264Encoder()
    kinds = []
    for i, frame in enumerate(_frames(640, 480, 3)):
        payloads, _ = enc.encode(frame, force_keyframe=i in (0, 2))
        key = [h264_is_keyframe(p) for p in payloads]
        kinds.append({p[0] & 0x1F for p in payloads})
        if i in (0, 2):
            assert key[0] and any(key)
        else:
            assert not any(key)
    assert 28 in set().union(*kinds)  # big noisy frames use FU-A
    assert 24 in kinds[0]  # SPS/PPS aggregated in a STAP-A


def _stap(*nals: bytes, b: bool = False) -> bytes:
    out = bytes([25 if b else 24]) + (b"\x00\x01" if b else b"")
    for nal in nals:
        out += len(nal).to_bytes(2, "big") + nal
    return out


SPS = bytes([0x67, 0x42, 0x00, 0x1F])
PPS = bytes([0x68, 0xCE, 0x38, 0x80])
IDR = bytes([0x65, 0x88, 0x84])
SLICE = bytes([0x41, 0x9A, 0x02])

H264_CASES = [
    ("single IDR", IDR, True),
    ("single SPS", SPS, True),
    ("single PPS", PPS, False),
    ("single non-IDR slice", SLICE, False),
    ("STAP-A SPS PPS IDR", _stap(SPS, PPS, IDR), True),
    ("STAP-A PPS then IDR", _stap(PPS, IDR), True),
    ("STAP-A slices", _stap(SLICE, SLICE), False),
    ("STAP-A truncated", _stap(PPS, IDR)[:-4], False),
    ("STAP-A zero size", bytes([24, 0, 0]) + IDR, False),
    ("STAP-B with DON", _stap(PPS, IDR, b=True), True),
    ("FU-A start IDR", bytes([0x7C, 0x85, 0xAA]), True),
    ("FU-A middle IDR", bytes([0x7C, 0x05, 0xAA]), False),
    ("FU-A end IDR", bytes([0x7C, 0x45, 0xAA]), False),
    ("FU-A start slice", bytes([0x7C, 0x81, 0xAA]), False),
    ("FU-A header only", bytes([0x7C]), False),
    ("FU-B start IDR", bytes([0x7D, 0x85, 0x00, 0x01]), True),
    ("empty", b"", False),
]


@pytest.mark.parametrize(("name", "payload", "key"), H264_CASES, ids=[c[0] for c in H264_CASES])
def test_h264_table(name: str, payload: bytes, key: bool) -> None:
    assert h264_is_keyframe(payload) is key
    assert is_keyframe("h264", payload) is key


KEY_HEADER = bytes([0x82, 0x49, 0x83, 0x42])  # frame_marker 2, profile 0, KEY_FRAME, sync code

VP9_CASES = [
    # byte 0: I P L F B E V Z
    ("key, no extras", bytes([0x08]) + b"\x82\x49\x83", True),
    ("inter", bytes([0x48]) + b"\x00", False),
    ("key but not start of frame", bytes([0x04]) + b"\x00", False),
    ("key with 15-bit picture id", bytes([0x8C, 0x81, 0x02]) + b"\x82", True),
    ("key with 7-bit picture id", bytes([0x8C, 0x05]) + b"\x82", True),
    ("truncated picture id", bytes([0x8C]), False),
    ("non-flexible, L, sid 0", bytes([0xA8, 0x81, 0x02, 0x00, 0x07]) + b"\x82", True),
    ("non-flexible, L, sid 1", bytes([0xA8, 0x81, 0x02, 0x02, 0x07]) + b"\x82", False),
    ("non-flexible, L, truncated tl0", bytes([0xA8, 0x81, 0x02, 0x00]), False),
    ("flexible, L, sid 0", bytes([0xB8, 0x81, 0x02, 0x00]) + b"\x82", True),
    ("flexible inter with p_diff", bytes([0xF8, 0x81, 0x02, 0x00, 0x02]) + b"\x82", False),
    # V: scalability structure | N_S |Y|G|-|-|-|, sizes, N_G, then | TID |U| R |-|-| and R P_DIFFs
    ("key with scalability structure", bytes([0x0A, 0x18, 0x01, 0x40, 0x00, 0xF0, 0x01, 0x00]) + KEY_HEADER, True),
    ("3 spatial layers, 2 pictures", bytes([0x0A, 0x58]) + bytes(12) + bytes([0x02, 0x04, 0x01, 0x00]) + KEY_HEADER,
     True),
    ("scalability structure truncated in its group", bytes([0x0A, 0x18, 0x01, 0x40, 0x00, 0xF0]), False),
    ("scalability structure truncated in a P_DIFF", bytes([0x0A, 0x08, 0x01, 0x04]), False),
    ("7-bit picture id, L, sid 0", bytes([0xA8, 0x05, 0x00, 0x07]) + KEY_HEADER, True),
    ("sid 0 with inter-layer dependency", bytes([0xA8, 0x81, 0x02, 0x01, 0x07]) + KEY_HEADER, False),
    ("descriptor only, no frame header", bytes([0x08]), False),
    ("intra-only frame (frame_type 1)", bytes([0x08, 0x86]), False),
    ("show_existing_frame", bytes([0x08, 0x88]), False),
    ("bad frame marker", bytes([0x08, 0x42, 0x49, 0x83, 0x42]), False),
    ("wrong sync code", bytes([0x08, 0x82, 0x00, 0x00, 0x00]), False),
    ("full sync code", bytes([0x08]) + KEY_HEADER, True),
    ("profile 2 key", bytes([0x08, 0x92, 0x49, 0x83, 0x42]), True),
    ("profile 3 key", bytes([0x08, 0xB0, 0x24, 0xC1, 0xA1]), True),
    ("profile 3 intra-only", bytes([0x08, 0xB2]), False),
    ("flexible inter, P_DIFF chain too long", bytes([0xD8, 0x81, 0x02, 0x03, 0x03, 0x03, 0x02]), False),
    ("empty", b"", False),
]

# (payload, picture id, its bits, tl0picidx, tid, sid, size)
VP9_DESCRIPTORS = [
    ("15-bit pid, non-flexible", bytes([0xAC, 0x81, 0x02, 0x40, 0x07]) + KEY_HEADER, (0x102, 15, 7, 2, 0, 5)),
    ("7-bit pid", bytes([0x88, 0x05]) + KEY_HEADER, (5, 7, -1, -1, -1, 2)),
    ("flexible: no tl0picidx", bytes([0xF8, 0xFF, 0xFF, 0x22, 0x02]) + KEY_HEADER, (0x7FFF, 15, -1, 1, 1, 5)),
    ("no picture id", bytes([0x28, 0x00, 0x09]) + KEY_HEADER, (-1, 0, 9, 0, 0, 3)),
]


@pytest.mark.parametrize(("name", "payload", "key"), VP9_CASES, ids=[c[0] for c in VP9_CASES])
def test_vp9_table(name: str, payload: bytes, key: bool) -> None:
    assert vp9_is_keyframe(payload) is key
    assert is_keyframe("VP9", payload) is key


@pytest.mark.parametrize(("name", "payload", "want"), VP9_DESCRIPTORS, ids=[c[0] for c in VP9_DESCRIPTORS])
def test_vp9_descriptor(name: str, payload: bytes, want: tuple[int, int, int, int, int, int]) -> None:
    d = vp9_descriptor(payload)
    assert d is not None
    assert (d.picture_id, d.picture_id_bits, d.tl0picidx, d.tid, d.sid, d.size) == want
    if d.tl0picidx >= 0:
        assert payload[d.tl0picidx_offset] == d.tl0picidx
    assert vp9_descriptor(payload[:1] if payload[0] & 0x80 else b"") is None


@pytest.mark.parametrize("payload", [
    bytes([0xD8, 0x81, 0x02, 0x03, 0x03, 0x03, 0x02]),  # flexible, P: more than 3 chained P_DIFFs
    bytes([0xD8, 0x81, 0x02, 0x03]),  # flexible, P: the P_DIFF is missing
    bytes([0x0A, 0x18, 0x01, 0x40, 0x00, 0xF0]),  # scalability structure without its N_G
    bytes([0x0A, 0x10, 0x01, 0x40]),  # scalability structure cut in its sizes
    bytes([0x80]),  # picture id missing
])
def test_vp9_descriptor_refuses_truncated(payload: bytes) -> None:
    assert vp9_descriptor(payload) is None


# AV1 aggregation header: Z Y W W N - - -
OBU_SEQ = bytes([0x08, 0x00, 0x00])  # type 1 sequence header, no size field
OBU_FRAME = bytes([0x30, 0x10])  # type 6 frame

AV1_CASES = [
    ("N bit", bytes([0x08]) + OBU_FRAME, True),
    ("W=1 sequence header", bytes([0x10]) + OBU_SEQ, True),
    ("W=0 length-prefixed sequence header", bytes([0x00, len(OBU_SEQ)]) + OBU_SEQ, True),
    ("W=2 first element length-prefixed", bytes([0x20, len(OBU_SEQ)]) + OBU_SEQ + OBU_FRAME, True),
    ("W=0 two-byte LEB128 length", bytes([0x00, 0x83, 0x01]) + OBU_SEQ + bytes(128), True),
    ("W=1 frame", bytes([0x10]) + OBU_FRAME, False),
    ("Z continuation", bytes([0x90]) + OBU_SEQ, False),
    ("truncated LEB128", bytes([0x00, 0x80]), False),
    ("LEB128 too long", bytes([0x00]) + bytes([0x80] * 9) + OBU_SEQ, False),
    ("only header", bytes([0x10]), False),
    ("empty", b"", False),
]


@pytest.mark.parametrize(("name", "payload", "key"), AV1_CASES, ids=[c[0] for c in AV1_CASES])
def test_av1_table(name: str, payload: bytes, key: bool) -> None:
    assert av1_is_keyframe(payload) is key
    assert is_keyframe("AV1", payload) is key


@pytest.mark.parametrize("codec", ["opus", "PCMU", "rtx", ""])
def test_other_codecs_are_never_keyframes(codec: str) -> None:
    assert is_keyframe(codec, bytes([0x10]) + VP8_KEY) is False


def test_fuzz_never_raises() -> None:
    rng = random.Random(6184)
    for _ in range(5000):
        data = os.urandom(rng.randrange(0, 24))
        for codec in ("VP8", "VP9", "H264", "AV1"):
            assert isinstance(is_keyframe(codec, data), bool)
        vp8_descriptor(data)
        vp9_descriptor(data)
