"""Coded picture sizes from keyframe payloads: real encoder output (aiortc's VP8 and H264, libvpx
VP9 and SVT-AV1 through PyAV, packetized as RTP payloads; AV1 sequence headers captured from
SVT-AV1 too, for PyAV builds without it), hand-built edge cases, and fuzzing."""

from __future__ import annotations

import fractions
import random
import time

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from sfu.packet.codecs import is_keyframe
from sfu.packet.frame_size import BitReader, FrameSize, keyframe_size

SIZES = [(640, 480), (320, 180), (160, 90), (1280, 720), (176, 144), (642, 362)]


def _frame(width: int, height: int, i: int = 0) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane in frame.planes:
        plane.update(bytes([(i * 7 + 40) & 0xFF]) * plane.buffer_size)
    frame.pts = i * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def _encode(codec: str, width: int, height: int) -> bytes:
    """The first (key) frame of ``codec`` at that size, as the encoder writes it."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    packets = [bytes(p) for p in ctx.encode(_frame(width, height))]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets[0]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_vp8_real_keyframes(width: int, height: int) -> None:
    enc = Vp8Encoder()
    for i in range(3):
        payloads, _ = enc.encode(_frame(width, height, i), force_keyframe=i != 1)
        if i == 1:  # an inter frame carries no size
            assert keyframe_size("VP8", payloads[0]) is None
            continue
        assert is_keyframe("VP8", payloads[0])
        assert FrameSize.parse("VP8", payloads[0]) == FrameSize(width, height)
        assert all(keyframe_size("VP8", p) is None for p in payloads[1:])  # continuation packets


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_h264_real_keyframes(width: int, height: int) -> None:
    """aiortc aggregates SPS and PPS in a STAP-A; 360, 180, 90 and 362 lines need cropping."""
    enc = H264Encoder()
    payloads, _ = enc.encode(_frame(width, height), force_keyframe=True)
    sizes = [keyframe_size("H264", p) for p in payloads]
    assert sizes[0] == FrameSize(width, height)
    assert payloads[0][0] & 0x1F == 24
    sps = _stap_units(payloads[0])[0]
    assert FrameSize.parse("video/h264", sps) == FrameSize(width, height)  # a single NAL unit
    fu_a = bytes([0x7C, 0x80 | 7]) + sps[1:]
    assert FrameSize.parse("H264", fu_a) == FrameSize(width, height)


def _stap_units(payload: bytes) -> list[bytes]:
    units, pos = [], 1
    while pos + 2 < len(payload):
        size = int.from_bytes(payload[pos : pos + 2], "big")
        units.append(payload[pos + 2 : pos + 2 + size])
        pos += 2 + size
    return units


@pytest.mark.parametrize(("width", "height"), SIZES[:4])
def test_vp9_real_keyframes(width: int, height: int) -> None:
    frame = _encode("libvpx-vp9", width, height)
    # RFC 9628 descriptor as libwebrtc writes a key picture: I, L (non-flexible), B, E
    plain = bytes([0x80 | 0x20 | 0x08 | 0x04, 0x80 | 0x12, 0x34, 0x00, 0x07]) + frame[:1100]
    assert is_keyframe("VP9", plain)
    assert FrameSize.parse("VP9", plain) == FrameSize(width, height)
    # with a scalability structure: its sizes win (here two spatial layers, the largest counts)
    ss = bytes(
        [0x20 | 0x10 | 0x08, 640 >> 8, 640 & 0xFF, 0, 180, 1280 >> 8, 1280 & 0xFF, 720 >> 8, 720 & 0xFF]
    )
    ss_payload = bytes([0x80 | 0x08 | 0x04 | 0x02, 0x05]) + ss + frame[:1100]
    assert FrameSize.parse("VP9", ss_payload) == FrameSize(1280, 720)
    # a structure without sizes (N_S=0, Y=0, G=1, one picture with one reference): the header's
    group = bytes([0x08, 0x01, 0x04 | 0x01, 0x01])
    assert FrameSize.parse("VP9", bytes([0x08 | 0x02]) + group + frame[:1100]) == FrameSize(width, height)


def _obus(stream: bytes) -> list[bytes]:
    """The OBUs of a low-overhead bitstream, each without its size field (RTP form)."""
    out, pos = [], 0
    while pos < len(stream):
        header = stream[pos]
        ext = (header >> 2) & 1
        size, at, shift = 0, pos + 1 + ext, 0
        while True:
            byte = stream[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append(bytes([header & ~0x02]) + stream[pos + 1 : pos + 1 + ext] + stream[at : at + size])
        pos = at + size
    return out


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


#: sequence header OBUs (RTP form: no size field) and the start of the frame OBU after them, as
#: SVT-AV1 4.1 (in PyAV 18.1's wheel) wrote the first frame at each size
AV1_CAPTURED = {
    (320, 180): "08000000043cfecc6af98040",
    (640, 360): "080000000cc4ff671abe6010",
    (160, 90): "0800000003b4fd91abe601",
    (1280, 720): "080000002d4cffb3c6af9804",
}
AV1_FRAME_START = bytes.fromhex("3010008e80820810404000020095cf53bcdb0d1e5b447fae")


def _av1_sequences() -> list[tuple[int, int, bytes, bytes]]:
    """(width, height, sequence header OBU, frame OBU start): captured, and freshly encoded when
    this PyAV has SVT-AV1."""
    out = [(w, h, bytes.fromhex(seq), AV1_FRAME_START) for (w, h), seq in AV1_CAPTURED.items()]
    if "libsvtav1" in av.codecs_available:
        for w, h in ((320, 180), (640, 360), (176, 144)):
            obus = [o for o in _obus(_encode("libsvtav1", w, h)) if (o[0] >> 3) & 0x0F != 2]  # no TD
            out.append((w, h, obus[0], obus[1][:900]))
    return out


def test_av1_real_sequence_headers() -> None:
    for width, height, seq, frame in _av1_sequences():
        assert (seq[0] >> 3) & 0x0F == 1
        want = FrameSize(width, height)
        # W=0: every element length-prefixed; N=1: a new coded video sequence
        payload = bytes([0x08]) + _leb(len(seq)) + seq + _leb(len(frame)) + frame
        assert is_keyframe("AV1", payload)
        assert FrameSize.parse("AV1", payload) == want
        # W=2: the sequence header length-prefixed, then the frame OBU to the end
        assert FrameSize.parse("AV1", bytes([0x20 | 0x08]) + _leb(len(seq)) + seq + frame) == want
        # W=1: the sequence header alone, its obu_has_size_field kept
        sized = bytes([seq[0] | 0x02]) + _leb(len(seq) - 1) + seq[1:]
        assert FrameSize.parse("AV1", bytes([0x10]) + sized) == want
        # Z=1: the first element continues an OBU of the previous packet, whatever it looks like
        with pytest.raises(ValueError, match="no sequence header"):
            FrameSize.parse("AV1", bytes([0x80 | 0x10]) + seq)


#: the first 32 bytes of a keyframe's first RTP payload per simulcast layer, captured at the node
#: (Chromium 156 publishing with whip.js; Firefox ESR 153 with its fake camera, Firefox's VP8
#: descriptor with picture ID, TL0PICIDX and TID; Chromium's VP9 L1T3 with a scalability
#: structure, its H264 SPS first in a STAP-A, its AV1 (libaom) sequence header with W=2)
BROWSER_KEYFRAMES = [
    ("Chromium", "VP8", "9080c9a9b04a009d012a80026801396b00291c22161622661220d40c478590c4", (640, 360)),
    ("Chromium", "VP8", "9080c9a9d01d009d012a4001b400394b002d1c221616226612209208891a6c07", (320, 180)),
    ("Chromium", "VP8", "9080c9a9d018019d012a0005d0023947001a1c221616226612208c0eefe407d6", (1280, 720)),
    ("Chromium", "VP9", "9b84d510050002d082498342004ff02cf42638241c19260003285066cf03445f", (1280, 720)),
    ("Chromium", "VP9", "9b84d51002800168824983420027f016742438241c191c0001f85066cf03445f", (640, 360)),
    ("Chromium", "VP9", "9fd66610014000b4824983420013f00b341c38241c18fe0001f050654fa3af68", (320, 180)),
    ("Chromium", "H264", "7800136742c01f8c8d405017fcb35060606078442350000468ce3c80", (640, 360)),
    ("Chromium", "H264", "7800136742c0158c8d40a0cbcf350606060784423500000468ce3c80035665b8", (320, 180)),
    ("Chromium", "H264", "7800136742c0208c8d402802dd350606060784423500000468ce3c80", (1280, 720)),
    ("Chromium", "AV1", "280b08000000043cfecc01a00830104c8029a69a458f9d00c1bc3202adabd8f9", (320, 180)),
    ("Chromium", "AV1", "680c080000002d4cffb3c01a0080301049e01249248526980010b48b77c7b703", (1280, 720)),
    ("Chromium", "AV1", "680b080000000cc4ff67006802301049a01145144524980010bb05d2b6d0ad6e", (640, 360)),
    ("Firefox", "VP8", "90e0855a30207050009d012a8002e001392f00111c240c2c2c44cc2440b800df", (640, 480)),
    ("Firefox", "VP8", "90e0cb206a209016009d012a4001f000396500231c240c2c2c44cc24418c0da4", (320, 240)),
    ("Firefox", "VP8", "90e0ee034d20d009009d012aa0007800394d002a1c240c2c2c44cc24412c000e", (160, 120)),
]


@pytest.mark.parametrize(("browser", "codec", "payload", "size"), BROWSER_KEYFRAMES)
def test_browser_keyframes(browser: str, codec: str, payload: str, size: tuple[int, int]) -> None:
    data = bytes.fromhex(payload)
    assert is_keyframe(codec, data)
    assert FrameSize.parse(codec, data) == FrameSize(*size)


VP8_KEY_HEAD = bytes([0x10, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A])

REFUSALS = [
    ("VP8", b"", "empty"),
    ("VP8", VP8_KEY_HEAD + bytes([0x80, 0x02]), "truncated key frame header"),
    ("VP8", VP8_KEY_HEAD[:4] + b"\x9d\x01\x2b" + bytes(4), "start code"),
    ("VP8", bytes([0x00]) + VP8_KEY_HEAD[1:] + bytes(4), "start of partition 0"),
    ("VP8", bytes([0x10, 0x51]) + VP8_KEY_HEAD[2:] + bytes(4), "not a key frame"),
    ("VP8", VP8_KEY_HEAD + bytes(4), "zero frame size"),
    ("VP8", bytes([0x90, 0x80]), "truncated descriptor"),
    ("VP9", bytes([0x48]), "not the start"),
    ("VP9", bytes([0x08, 0x42, 0x49, 0x83, 0x42]), "bad frame marker"),
    ("VP9", bytes([0x08, 0x86]), "not a key frame"),
    ("VP9", bytes([0x08, 0x8A]), "show_existing_frame"),
    ("VP9", bytes([0x08, 0x80, 0x49, 0x83, 0x43, 0x00]), "sync code"),
    ("VP9", bytes([0x08, 0x80, 0x49, 0x83, 0x42, 0xE0]), "RGB"),
    ("VP9", bytes([0x08, 0x80, 0x49, 0x83, 0x42, 0x00, 0x01]), "truncated"),
    ("H264", bytes([0x65, 0x88]), "NAL unit type 5"),
    ("H264", bytes([0x18, 0x00, 0x09, 0x68, 0x00]), "overruns"),
    ("H264", bytes([0x18, 0x00, 0x02, 0x68, 0x00]), "no SPS"),
    ("H264", bytes([0x7C, 0x05, 0x00]), "FU-A"),
    ("H264", bytes([0x67, 0x42, 0x00, 0x1F]) + bytes(8), "longer than 32 bits"),
    ("H264", bytes([0x67, 0x42, 0x00]), "truncated"),
    ("AV1", bytes([0x00]), "truncated"),
    ("AV1", bytes([0x00, 0x05, 0x08]), "overruns"),
    ("AV1", bytes([0x10, 0x30, 0x00]), "no sequence header"),
    ("AV1", bytes([0x00]) + bytes([0xFF]) * 9, "leb128"),
    ("AV1", bytes([0x10, 0x08, 0x00]), "truncated"),
    ("opus", b"\x00" * 20, "no frame size parser"),
]


@pytest.mark.parametrize(("codec", "payload", "error"), REFUSALS)
def test_refusals_are_precise(codec: str, payload: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        FrameSize.parse(codec, payload)
    assert keyframe_size(codec, payload) is None


@pytest.mark.parametrize(
    ("bits", "ue"),
    [
        ("1", 0),
        ("010", 1),
        ("011", 2),
        ("00100", 3),
        ("0001000", 7),
        ("000000000000000000000000000000001" + "0" * 32, None),
    ],
)
def test_exp_golomb(bits: str, ue: int | None) -> None:
    data = int(bits.ljust((len(bits) + 7) // 8 * 8, "1"), 2).to_bytes((len(bits) + 7) // 8, "big")
    if ue is None:
        with pytest.raises(ValueError, match="longer than 32 bits"):
            BitReader(data).ue()
    else:
        assert BitReader(data).ue() == ue


def test_uvlc_saturates() -> None:
    assert BitReader(bytes(5)).uvlc() == (1 << 32) - 1
    assert BitReader(bytes([0b00101000])).uvlc() == 4


def test_sizes_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        FrameSize(0, 10)
    with pytest.raises(ValueError, match="out of range"):
        FrameSize(70000, 10)


def _real_payloads() -> dict[str, list[bytes]]:
    vp8, _ = Vp8Encoder().encode(_frame(320, 240), force_keyframe=True)
    h264, _ = H264Encoder().encode(_frame(320, 240), force_keyframe=True)
    vp9 = bytes([0x80 | 0x20 | 0x08, 0x80, 0x01, 0x00, 0x00]) + _encode("libvpx-vp9", 320, 180)[:600]
    av1 = bytes.fromhex(AV1_CAPTURED[(320, 180)])
    seeds = {
        "VP8": vp8[:2],
        "H264": h264[:2],
        "VP9": [vp9],
        "AV1": [bytes([0x18]) + _leb(len(av1)) + av1 + _leb(len(AV1_FRAME_START)) + AV1_FRAME_START],
    }
    for _, codec, payload, _ in BROWSER_KEYFRAMES:
        seeds[codec].append(bytes.fromhex(payload))
    return seeds


def test_fuzz_random_and_mutated_payloads() -> None:
    """Random bytes and real keyframes with flipped bytes or cut short: a size or ValueError,
    nothing else.  (The work is bounded by construction; the time bound only catches a runaway
    loop, far from what a loaded machine needs: ~0.2 s here.)"""
    rng = random.Random(1212)
    seeds = _real_payloads()
    started = time.monotonic()
    sizes = 0
    for _ in range(3000):
        codec = rng.choice(list(seeds))
        if rng.random() < 0.3:
            payload = rng.randbytes(rng.randrange(0, 64))
        else:
            data = bytearray(rng.choice(seeds[codec]))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            payload = bytes(data[: rng.randrange(1, len(data) + 1)])
        try:
            size = FrameSize.parse(codec, payload)
        except ValueError:
            pass
        else:
            assert 0 < size.width <= 65536 and 0 < size.height <= 65536
            sizes += 1
    assert sizes > 100  # mutations past the size fields still parse
    assert time.monotonic() - started < 60
