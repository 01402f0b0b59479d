"""RTP payloads to frames: VP8, VP9, H264 (single, STAP-A, FU-A), AV1, Opus; losses and bad input."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from sfu.packet.depacketize import (
    Codec,
    Frame,
    FrameAssembler,
    av1_dimensions,
    av1_obus,
    codec_of,
    h264_dimensions,
    leb128,
    vp9_dimensions,
)

SC = b"\x00\x00\x00\x01"


def _feed(codec: Codec, packets: list[tuple[int, bool, bytes]]) -> tuple[list[Frame], FrameAssembler]:
    fa = FrameAssembler(codec)
    out: list[Frame] = []
    for ts, marker, payload in packets:
        out += fa.push(ts, marker, payload)
    out += fa.flush()
    return out, fa


# VP8: X=1, I=1 (7-bit picture id), S=1 on the first packet; the first payload byte's P bit 0 = key
VP8_KEY = [(100, False, b"\x90\x80\x01" + b"\x10\x02\x00"), (100, True, b"\x80\x80\x01" + b"\xaa\xbb")]
VP8_DELTA = [(200, True, b"\x90\x80\x02" + b"\x11\x05")]


@pytest.mark.parametrize(
    ("codec", "packets", "expected"),
    [
        (Codec.VP8, VP8_KEY + VP8_DELTA, [Frame(100, b"\x10\x02\x00\xaa\xbb", True), Frame(200, b"\x11\x05", False)]),
        (Codec.VP8, VP8_DELTA + VP8_KEY, [Frame(100, b"\x10\x02\x00\xaa\xbb", True)]),  # waits for a keyframe
        # VP9: I=1 (7-bit), B=1/E=1; P=0 B=1 and the key frame header bits
        (Codec.VP9, [(5, True, b"\x8c\x01" + b"\x82\x49\x83\x42\x00")], [Frame(5, b"\x82\x49\x83\x42\x00", True)]),
        # H264: STAP-A (SPS, PPS), then an IDR in three FU-A fragments
        (
            Codec.H264,
            [
                (9, False, b"\x18" + b"\x00\x02\x67\x01" + b"\x00\x02\x68\x02"),
                (9, False, b"\x7c\x85" + b"\xa1"),
                (9, False, b"\x7c\x05" + b"\xa2"),
                (9, True, b"\x7c\x45" + b"\xa3"),
            ],
            [Frame(9, SC + b"\x67\x01" + SC + b"\x68\x02" + SC + b"\x65\xa1\xa2\xa3", True)],
        ),
        # AV1: N=1, W=2: a sized sequence header, then the frame OBU continued (Y) in the next packet
        (
            Codec.AV1,
            [
                (7, False, b"\x68" + b"\x02\x08\xaa" + b"\x30\x01\x02"),
                (7, True, b"\x90" + b"\x03\x04"),
            ],
            [Frame(7, b"\x0a\x01\xaa" + b"\x32\x04\x01\x02\x03\x04", True)],
        ),
        (Codec.OPUS, [(960, True, b"\xfc\x01"), (1920, False, b"\xfc\x02")], [Frame(960, b"\xfc\x01", True), Frame(1920, b"\xfc\x02", True)]),
    ],
)
def test_frames(codec: Codec, packets: list[tuple[int, bool, bytes]], expected: list[Frame]) -> None:
    frames, _ = _feed(codec, packets)
    assert frames == expected


def test_gap_breaks_the_frame_and_waits_for_a_keyframe() -> None:
    fa = FrameAssembler(Codec.VP8)
    assert fa.push(*VP8_KEY[0]) == []
    fa.gap()  # the second packet of the keyframe is lost
    assert fa.push(200, True, b"\x90\x80\x02\x11\x05") == []  # the broken frame, then a delta: skipped
    assert fa.frames_skipped == 2
    assert [f.keyframe for f in fa.push(*VP8_KEY[0]) + fa.push(*VP8_KEY[1])] == [True]


def test_missing_marker_ends_the_frame_at_the_next_timestamp() -> None:
    frames, _ = _feed(Codec.VP8, [(100, False, b"\x90\x80\x01\x10\x02\x00"), (200, True, b"\x90\x80\x02\x11")])
    assert [f.timestamp for f in frames] == [100, 200]


@pytest.mark.parametrize(
    ("codec", "payload"),
    [
        (Codec.VP8, b"\x80"),  # X without its byte
        (Codec.H264, b"\x18\x00\x09\x67"),  # STAP-A unit past the end
        (Codec.H264, b"\x7c\x05\xa2"),  # FU-A continuation without a start
        (Codec.H264, b"\x1e\x00"),  # NAL type 30
        (Codec.AV1, b"\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff"),  # LEB128 too long
        (Codec.AV1, b"\x80\x01\x00"),  # Z without a start
    ],
)
def test_malformed_is_counted(codec: Codec, payload: bytes) -> None:
    frames, fa = _feed(codec, [(1, True, payload)])
    assert frames == []
    assert fa.malformed == 1


def test_helpers() -> None:
    assert leb128(0) == b"\x00"
    assert leb128(300) == b"\xac\x02"
    assert av1_obus(b"\x12\x00" + b"\x30\x01") == b"\x32\x01\x01"  # temporal delimiter dropped
    assert codec_of("vp8") is Codec.VP8
    assert codec_of("OPUS") is Codec.OPUS
    assert codec_of("red") is None


@pytest.mark.parametrize(
    ("sps", "size"),
    [
        # libx264 320x240, High profile (chroma_format_idc and the rest read)
        (bytes.fromhex("6764000dacb20283f420000003002000000791e28549"), (320, 240)),
        (bytes.fromhex("42c01f"), (0, 0)),  # truncated
    ],
)
def test_h264_dimensions(sps: bytes, size: tuple[int, int]) -> None:
    assert h264_dimensions(SC + sps + SC + b"\x68\xee") == size
    assert h264_dimensions(SC + b"\x65\x88") == (0, 0)  # no SPS


@pytest.mark.parametrize(("encoder", "read"), [("libvpx-vp9", "vp9"), ("libsvtav1", "av1")])
def test_vp9_and_av1_dimensions_of_real_keyframes(encoder: str, read: str) -> None:
    """Key frames from real encoders (the tests may encode; the product never does)."""
    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = 352, 288, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    packets = []
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(np.full((288, 352, 3), i * 40, dtype=np.uint8), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    first = packets[0]  # for AV1: OBUs with their sizes (the low-overhead format), as the muxer gets them
    if read == "av1":
        assert av1_dimensions(first) == (352, 288)
        assert av1_dimensions(b"\x12\x00") == (0, 0)  # a temporal delimiter only
    else:
        assert vp9_dimensions(first) == (352, 288)
        assert vp9_dimensions(packets[1]) == (0, 0)  # not a key frame
    assert vp9_dimensions(b"") == (0, 0)
