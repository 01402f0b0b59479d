"""The coded picture size carried by a keyframe's first RTP packet, without decoding.

What a simulcast layer carries is ranked by its resolution (``sfu.routing.simulcast``), read
from its keyframes:

* VP8 (RFC 6386 §9.1, RFC 7741): after the payload descriptor, the key frame's 3-byte frame
  tag, the start code ``9d 01 2a``, then 14-bit width and height (each with a 2-bit scale,
  which is an upscaling hint for the display and not part of the coded size).
* VP9 (RFC 9628, VP9 bitstream §6.2): the scalability structure of the payload descriptor,
  when it lists sizes (the largest spatial layer's), else the key frame's uncompressed header:
  profile, sync code, colour config, ``frame_width_minus_1`` / ``frame_height_minus_1``.
* H264 (RFC 6184, H.264 §7.3.2.1.1): a sequence parameter set in a single NAL unit, a STAP-A
  or the start of an FU-A: ``pic_width_in_mbs_minus1``, ``pic_height_in_map_units_minus1``,
  ``frame_mbs_only_flag`` and the frame cropping rectangle.
* AV1 (AV1 RTP payload format §4.4, AV1 §5.5): a sequence header OBU among the packet's OBU
  elements: ``max_frame_width_minus_1`` / ``max_frame_height_minus_1``.

``FrameSize.parse(codec, payload)`` raises a precise ``ValueError`` for a payload that carries
no size (not a keyframe start, truncated, malformed); ``keyframe_size`` returns None instead.
The work is bounded by the payload's length (every loop reads at least one bit per turn, or
has a fixed bound): no hostile payload makes it slow, and nothing but ``ValueError`` escapes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BitReader", "FrameSize", "keyframe_size"]

Payload = bytes | bytearray | memoryview

#: no codec here codes pictures larger than this on a side (VP9 and AV1 allow 65536)
MAX_SIDE = 65536


class BitReader:
    """Big-endian bits of a byte string, with the exp-Golomb codes of H.264 and AV1's uvlc."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: Payload, start: int = 0) -> None:
        self.data = data
        self.pos = start * 8
        self.end = len(data) * 8

    def bit(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise ValueError("truncated")
        self.pos = pos + 1
        return (self.data[pos >> 3] >> (7 - (pos & 7))) & 1

    def bits(self, n: int) -> int:
        if self.pos + n > self.end:
            raise ValueError("truncated")
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise ValueError("truncated")
        self.pos += n

    def ue(self) -> int:
        """An unsigned exp-Golomb code (H.264 §9.1), at most 32 bits of value."""
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """A signed exp-Golomb code (H.264 §9.1.1)."""
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)

    def uvlc(self) -> int:
        """AV1's uvlc() (§4.10.3): 32 or more leading zeros mean 2^32 - 1."""
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return (1 << zeros) - 1 + self.bits(zeros)


@dataclass(frozen=True, slots=True)
class FrameSize:
    """A coded picture size in pixels."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if not (0 < self.width <= MAX_SIDE and 0 < self.height <= MAX_SIDE):
            raise ValueError(f"frame size {self.width}x{self.height} out of range")

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, codec_name: str, payload: Payload) -> FrameSize:
        """The size a keyframe's RTP payload carries (codec ``VP8``, ``VP9``, ``H264``, ``AV1``,
        any case, ``video/VP8`` too); ValueError when it carries none."""
        name = codec_name.rpartition("/")[2].upper()
        parser = _PARSERS.get(name)
        if parser is None:
            raise ValueError(f"no frame size parser for codec {name or '(none)'}")
        return parser(payload)


def keyframe_size(codec_name: str, payload: Payload) -> FrameSize | None:
    """``FrameSize.parse``, None instead of ValueError."""
    try:
        return FrameSize.parse(codec_name, payload)
    except ValueError:
        return None


# -- VP8 -------------------------------------------------------------------------------------------
def _vp8_descriptor_end(p: Payload) -> int:
    n = len(p)
    if n < 1:
        raise ValueError("VP8: empty payload")
    pos = 1
    if p[0] & 0x80:
        if n < 2:
            raise ValueError("VP8: truncated descriptor")
        x = p[1]
        pos = 2
        if x & 0x80:
            if pos >= n:
                raise ValueError("VP8: truncated descriptor")
            pos += 2 if p[pos] & 0x80 else 1
        if x & 0x40:
            pos += 1
        if x & 0x30:
            pos += 1
    if pos > n:
        raise ValueError("VP8: truncated descriptor")
    return pos


def vp8_frame_size(p: Payload) -> FrameSize:
    pos = _vp8_descriptor_end(p)
    if not p[0] & 0x10 or p[0] & 0x07:
        raise ValueError("VP8: not the start of partition 0")
    if pos + 10 > len(p):
        raise ValueError("VP8: truncated key frame header")
    if p[pos] & 0x01:
        raise ValueError("VP8: not a key frame")
    if (p[pos + 3], p[pos + 4], p[pos + 5]) != (0x9D, 0x01, 0x2A):
        raise ValueError("VP8: no key frame start code")
    width = (p[pos + 6] | (p[pos + 7] << 8)) & 0x3FFF
    height = (p[pos + 8] | (p[pos + 9] << 8)) & 0x3FFF
    if not width or not height:
        raise ValueError("VP8: zero frame size")
    return FrameSize(width, height)


# -- VP9 -------------------------------------------------------------------------------------------
_VP9_SYNC = 0x498342
_VP9_CS_RGB = 7


def vp9_frame_size(p: Payload) -> FrameSize:
    """The scalability structure's largest spatial layer when it lists sizes, else the key
    frame's uncompressed header."""
    n = len(p)
    if n < 1:
        raise ValueError("VP9: empty payload")
    b0 = p[0]
    if b0 & 0x40 or not b0 & 0x08:
        raise ValueError("VP9: not the start of a key picture (P=1 or B=0)")
    r = BitReader(p)
    r.skip(8)
    if b0 & 0x80:  # picture ID, 7 or 15 bits
        r.skip(15 if r.bit() else 7)
    if b0 & 0x20:  # layer indices (and TL0PICIDX in non-flexible mode)
        r.skip(8 if b0 & 0x10 else 16)
    if b0 & 0x10 and b0 & 0x40:  # never: P=0 here, so no P_DIFF
        raise ValueError("VP9: inter-predicted")
    if b0 & 0x02:  # V: scalability structure
        spatial = r.bits(3) + 1
        has_sizes = r.bit()
        has_group = r.bit()
        r.skip(3)
        if has_sizes:
            best = (0, 0)
            for _ in range(spatial):
                width, height = r.bits(16), r.bits(16)
                if width * height > best[0] * best[1]:
                    best = (width, height)
            if best[0] and best[1]:
                return FrameSize(*best)
            raise ValueError("VP9: scalability structure with zero sizes")
        if has_group:
            for _ in range(r.bits(8)):
                r.skip(4)  # TID, U
                references = r.bits(2)
                r.skip(2 + 8 * references)
    return _vp9_uncompressed_header_size(r)


def _vp9_uncompressed_header_size(r: BitReader) -> FrameSize:
    if r.bits(2) != 2:
        raise ValueError("VP9: bad frame marker")
    profile = r.bit()
    profile |= r.bit() << 1
    if profile == 3 and r.bit():
        raise ValueError("VP9: reserved bit set")
    if r.bit():
        raise ValueError("VP9: show_existing_frame")
    if r.bit():
        raise ValueError("VP9: not a key frame")
    r.skip(2)  # show_frame, error_resilient_mode
    if r.bits(24) != _VP9_SYNC:
        raise ValueError("VP9: bad key frame sync code")
    if profile >= 2:
        r.skip(1)  # ten_or_twelve_bit
    color_space = r.bits(3)
    if color_space != _VP9_CS_RGB:
        r.skip(1)  # color_range
        if profile in (1, 3):
            r.skip(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        r.skip(1)  # reserved_zero
    else:
        raise ValueError("VP9: RGB in profile 0 or 2")
    width = r.bits(16) + 1
    height = r.bits(16) + 1
    return FrameSize(width, height)


# -- H264 ------------------------------------------------------------------------------------------
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28
_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))


def h264_frame_size(p: Payload) -> FrameSize:
    n = len(p)
    if n < 1:
        raise ValueError("H264: empty payload")
    nal = p[0] & 0x1F
    if nal == _H264_SPS:
        return _h264_sps_size(p, 1, n)
    if nal == _H264_STAP_A:
        pos = 1
        while pos + 2 < n:
            size = (p[pos] << 8) | p[pos + 1]
            pos += 2
            if size == 0 or pos + size > n:
                raise ValueError("H264: STAP-A unit overruns the packet")
            if p[pos] & 0x1F == _H264_SPS:
                return _h264_sps_size(p, pos + 1, pos + size)
            pos += size
        raise ValueError("H264: no SPS in the STAP-A")
    if nal == _H264_FU_A:
        if n < 2 or not p[1] & 0x80 or p[1] & 0x1F != _H264_SPS:
            raise ValueError("H264: FU-A that does not start an SPS")
        return _h264_sps_size(p, 2, n)
    raise ValueError(f"H264: NAL unit type {nal} carries no SPS")


def _unescape(p: Payload, start: int, end: int) -> bytes:
    """The RBSP of a NAL unit's payload: emulation prevention bytes (00 00 03) removed."""
    raw = bytes(p[start:end])
    if b"\x00\x00\x03" not in raw:
        return raw
    out = bytearray()
    zeros = 0
    for byte in raw:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _h264_sps_size(p: Payload, start: int, end: int) -> FrameSize:
    r = BitReader(_unescape(p, start, end))
    profile_idc = r.bits(8)
    r.skip(16)  # constraint flags, level_idc
    if r.ue() > 31:
        raise ValueError("H264: seq_parameter_set_id out of range")
    chroma_format_idc = 1
    separate_planes = 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc > 3:
            raise ValueError("H264: chroma_format_idc out of range")
        if chroma_format_idc == 3:
            separate_planes = r.bit()
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.bit():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        r.skip(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        cycle = r.ue()
        if cycle > 255:
            raise ValueError("H264: num_ref_frames_in_pic_order_cnt_cycle out of range")
        for _ in range(cycle):
            r.se()
    elif poc_type != 2:
        raise ValueError("H264: pic_order_cnt_type out of range")
    r.ue()  # max_num_ref_frames
    r.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_map_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.skip(1)  # mb_adaptive_frame_field_flag
    r.skip(1)  # direct_8x8_inference_flag
    crop = (r.ue(), r.ue(), r.ue(), r.ue()) if r.bit() else (0, 0, 0, 0)
    chroma_array_type = 0 if separate_planes else chroma_format_idc
    if chroma_array_type == 0:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        unit_x = 1 if chroma_array_type == 3 else 2
        unit_y = (2 if chroma_array_type == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_map_units * 16 - unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise ValueError("H264: cropping leaves no picture")
    return FrameSize(width, height)


def _skip_scaling_list(r: BitReader, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + r.se() + 256) % 256
        last = following or last


# -- AV1 -------------------------------------------------------------------------------------------
_AV1_SEQUENCE_HEADER = 1


def _leb128(p: Payload, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos >= len(p):
            raise ValueError("AV1: truncated leb128")
        byte = p[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise ValueError("AV1: leb128 longer than 8 bytes")


def av1_frame_size(p: Payload) -> FrameSize:
    """The first sequence header OBU among the packet's OBU elements (a continued first element,
    Z=1, is skipped)."""
    n = len(p)
    if n < 2:
        raise ValueError("AV1: truncated payload")
    agg = p[0]
    count = (agg >> 4) & 0x03  # W: elements, the last without a length; 0: all have one
    pos = 1
    element = 0
    while pos < n:
        element += 1
        if count and element == count:
            size = n - pos
        else:
            size, pos = _leb128(p, pos)
        if size == 0 or pos + size > n:
            raise ValueError("AV1: OBU element overruns the packet")
        if not (element == 1 and agg & 0x80) and (p[pos] >> 3) & 0x0F == _AV1_SEQUENCE_HEADER:
            return _av1_sequence_header_size(p, pos, pos + size)
        pos += size
    raise ValueError("AV1: no sequence header OBU")


def _av1_sequence_header_size(p: Payload, start: int, end: int) -> FrameSize:
    header = p[start]
    pos = start + 1 + ((header >> 2) & 1)  # the extension byte
    if header & 0x02:  # obu_has_size_field
        _, pos = _leb128(p, pos)
    r = BitReader(bytes(p[pos:end]))
    r.skip(4)  # seq_profile, still_picture
    if r.bit():  # reduced_still_picture_header
        r.skip(5)  # seq_level_idx[0]
    else:
        decoder_model_info = False
        delay_bits = 0
        if r.bit():  # timing_info_present_flag
            r.skip(64)  # num_units_in_display_tick, time_scale
            if r.bit():  # equal_picture_interval
                r.uvlc()  # num_ticks_per_picture_minus_1
            decoder_model_info = bool(r.bit())
            if decoder_model_info:
                delay_bits = r.bits(5) + 1  # buffer_delay_length_minus_1
                r.skip(32 + 5 + 5)  # num_units_in_decoding_tick, two length fields
        initial_display_delay = r.bit()
        for _ in range(r.bits(5) + 1):  # operating points
            r.skip(12)  # operating_point_idc
            if r.bits(5) > 7:  # seq_level_idx
                r.skip(1)  # seq_tier
            if decoder_model_info and r.bit():  # decoder_model_present_for_this_op
                r.skip(2 * delay_bits + 1)
            if initial_display_delay and r.bit():
                r.skip(4)
    width_bits = r.bits(4) + 1
    height_bits = r.bits(4) + 1
    width = r.bits(width_bits) + 1
    height = r.bits(height_bits) + 1
    return FrameSize(width, height)


_PARSERS = {"VP8": vp8_frame_size, "VP9": vp9_frame_size, "H264": h264_frame_size, "AV1": av1_frame_size}
