"""Keyframe detection from RTP payloads, without decoding.

* VP8 (RFC 7741): start of partition 0 (S=1, PID=0) and P=0 in the VP8 payload header.
* VP9 (RFC 9628): P=0 (not inter-predicted), B=1 (start of frame) and, when layer indices are
  present, spatial layer 0.
* H264 (RFC 6184): single NAL unit IDR (5) or SPS (7); STAP-A/STAP-B containing one; FU-A/FU-B
  start fragment of one.
* AV1 (RTP payload format for AV1): N=1 in the aggregation header (first packet of a coded video
  sequence), or a first OBU that is a sequence header.

Truncated or malformed payloads are not keyframes (never an exception). ``vp8_descriptor``
parses the VP8 payload descriptor for later picture-id/TL0PICIDX rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Vp8Descriptor",
    "av1_is_keyframe",
    "h264_is_keyframe",
    "is_keyframe",
    "vp8_descriptor",
    "vp8_is_keyframe",
    "vp9_is_keyframe",
]

Payload = bytes | bytearray | memoryview


def _vp8_descriptor_size(p: Payload) -> int:
    """Size of the VP8 payload descriptor, or -1 when truncated."""
    n = len(p)
    if n < 1:
        return -1
    pos = 1
    if p[0] & 0x80:  # X: extension byte
        if n < 2:
            return -1
        x = p[1]
        pos = 2
        if x & 0x80:  # I: picture id
            if pos >= n:
                return -1
            pos += 2 if p[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX byte
            pos += 1
    return pos if pos <= n else -1


def vp8_is_keyframe(payload: Payload) -> bool:
    n = len(payload)
    if n < 1:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x07:  # S=1 and partition index 0
        return False
    pos = _vp8_descriptor_size(payload)
    if pos < 0 or pos >= n:
        return False
    return not payload[pos] & 0x01  # P bit of the frame tag: 0 = key frame


@dataclass(slots=True, frozen=True)
class Vp8Descriptor:
    """Parsed VP8 payload descriptor; offsets are into the payload (-1 when absent)."""

    size: int
    start_of_partition: bool
    partition_index: int
    non_reference: bool
    picture_id: int  # -1 when absent
    picture_id_offset: int
    picture_id_bits: int  # 7, 15 or 0
    tl0picidx: int  # -1 when absent
    tl0picidx_offset: int
    tid: int  # -1 when absent
    layer_sync: bool
    keyidx: int  # -1 when absent


def vp8_descriptor(payload: Payload) -> Vp8Descriptor | None:
    """Parse the VP8 payload descriptor, or ``None`` when truncated."""
    size = _vp8_descriptor_size(payload)
    if size < 0:
        return None
    b0 = payload[0]
    picture_id = pid_off = tl0 = tl0_off = tid = keyidx = -1
    pid_bits = 0
    sync = False
    if b0 & 0x80:
        x = payload[1]
        pos = 2
        if x & 0x80:
            pid_off = pos
            if payload[pos] & 0x80:
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                pid_bits = 15
                pos += 2
            else:
                picture_id = payload[pos] & 0x7F
                pid_bits = 7
                pos += 1
        if x & 0x40:
            tl0_off = pos
            tl0 = payload[pos]
            pos += 1
        if x & 0x30:
            t = payload[pos]
            if x & 0x20:
                tid = t >> 6
                sync = bool(t & 0x20)
            if x & 0x10:
                keyidx = t & 0x1F
    return Vp8Descriptor(
        size=size,
        start_of_partition=bool(b0 & 0x10),
        partition_index=b0 & 0x07,
        non_reference=bool(b0 & 0x20),
        picture_id=picture_id,
        picture_id_offset=pid_off,
        picture_id_bits=pid_bits,
        tl0picidx=tl0,
        tl0picidx_offset=tl0_off,
        tid=tid,
        layer_sync=sync,
        keyidx=keyidx,
    )


def vp9_is_keyframe(payload: Payload) -> bool:
    n = len(payload)
    if n < 1:
        return False
    b0 = payload[0]
    if b0 & 0x40 or not b0 & 0x08:  # P=1 (inter-predicted) or B=0 (not start of frame)
        return False
    pos = 1
    if b0 & 0x80:  # I: picture id
        if pos >= n:
            return False
        pos += 2 if payload[pos] & 0x80 else 1
    if b0 & 0x20:  # L: layer indices
        if pos >= n:
            return False
        sid = (payload[pos] >> 1) & 0x07
        if sid != 0:
            return False
        pos += 1
        if not b0 & 0x10:  # non-flexible mode: TL0PICIDX follows
            pos += 1
    # (flexible mode has no reference indices when P=0)
    return pos <= n


_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_STAP_B = 25
_H264_FU_A = 28
_H264_FU_B = 29


def h264_is_keyframe(payload: Payload) -> bool:
    n = len(payload)
    if n < 1:
        return False
    nal = payload[0] & 0x1F
    if nal == _H264_IDR or nal == _H264_SPS:
        return True
    if nal == _H264_STAP_A or nal == _H264_STAP_B:
        pos = 1 if nal == _H264_STAP_A else 3  # STAP-B has a 16-bit DON
        while pos + 2 < n:
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0 or pos + size > n:
                return False
            inner = payload[pos] & 0x1F
            if inner == _H264_IDR or inner == _H264_SPS:
                return True
            pos += size
        return False
    if nal == _H264_FU_A or nal == _H264_FU_B:
        if n < 2:
            return False
        fu = payload[1]
        inner = fu & 0x1F
        return bool(fu & 0x80) and (inner == _H264_IDR or inner == _H264_SPS)
    return False


_AV1_OBU_SEQUENCE_HEADER = 1


def av1_is_keyframe(payload: Payload) -> bool:
    n = len(payload)
    if n < 2:
        return False
    agg = payload[0]
    if agg & 0x08:  # N: first packet of a coded video sequence
        return True
    if agg & 0x80:  # Z: the first OBU element continues one from the previous packet
        return False
    pos = 1
    if (agg >> 4) & 0x03 != 1:  # W != 1: the first element is length-prefixed (LEB128)
        for _ in range(8):
            if pos >= n:
                return False
            more = payload[pos] & 0x80
            pos += 1
            if not more:
                break
        else:
            return False
    if pos >= n:
        return False
    obu_type = (payload[pos] >> 3) & 0x0F
    return obu_type == _AV1_OBU_SEQUENCE_HEADER


def is_keyframe(codec_name: str, payload: Payload) -> bool:
    """Keyframe check by codec name (``VP8``, ``VP9``, ``H264``, ``AV1``; any case; an SDP
    ``video/VP8`` mime form works too). Other codecs (audio included) return False."""
    name = codec_name.rpartition("/")[2].upper()
    if name == "VP8":
        return vp8_is_keyframe(payload)
    if name == "VP9":
        return vp9_is_keyframe(payload)
    if name == "H264":
        return h264_is_keyframe(payload)
    if name == "AV1":
        return av1_is_keyframe(payload)
    return False
