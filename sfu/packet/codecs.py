"""Keyframe detection from RTP payloads, without decoding.

* VP8 (RFC 7741): start of partition 0 (S=1, PID=0) and P=0 in the VP8 payload header.
* VP9 (RFC 9628): P=0 (not inter-predicted), B=1 (start of frame), when layer indices are
  present spatial layer 0 without inter-layer dependency; and the frame's uncompressed header
  (after the descriptor and its scalability structure) says KEY_FRAME, not intra-only.
* H264 (RFC 6184): single NAL unit IDR (5) or SPS (7); STAP-A/STAP-B containing one; FU-A/FU-B
  start fragment of one.
* AV1 (RTP payload format for AV1): N=1 in the aggregation header (first packet of a coded video
  sequence), or a first OBU that is a sequence header.

Truncated or malformed payloads are not keyframes (never an exception). ``vp8_descriptor``
and ``vp9_descriptor`` parse the payload descriptors (picture ID, TL0PICIDX, layers).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Vp8Descriptor",
    "Vp9Descriptor",
    "av1_is_keyframe",
    "h264_is_keyframe",
    "is_keyframe",
    "vp8_descriptor",
    "vp8_is_keyframe",
    "vp9_descriptor",
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


def _picture_id(payload: Payload, pos: int) -> tuple[int, int]:
    """The VP8/VP9 picture ID at ``payload[pos]`` (M bit: 15 bits, else 7) and its width."""
    if payload[pos] & 0x80:
        return ((payload[pos] & 0x7F) << 8) | payload[pos + 1], 15
    return payload[pos] & 0x7F, 7


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
            picture_id, pid_bits = _picture_id(payload, pos)
            pos += 2 if pid_bits == 15 else 1
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


def _vp9_descriptor_size(p: Payload) -> int:
    """Size of the VP9 payload descriptor (RFC 9628 §4.2) with its scalability structure, or -1
    when truncated or malformed."""
    n = len(p)
    if n < 1:
        return -1
    b0 = p[0]
    pos = 1
    if b0 & 0x80:  # I: picture id, 7 or 15 bits
        if pos >= n:
            return -1
        pos += 2 if p[pos] & 0x80 else 1
    if b0 & 0x20:  # L: layer indices
        pos += 1
        if not b0 & 0x10:  # non-flexible mode: TL0PICIDX
            pos += 1
    if b0 & 0x10 and b0 & 0x40:  # flexible mode, inter-predicted: up to 3 P_DIFF, N bit chains them
        for _ in range(3):
            if pos >= n:
                return -1
            more = p[pos] & 0x01
            pos += 1
            if not more:
                break
        else:
            return -1
    if b0 & 0x02:  # V: scalability structure
        if pos >= n:
            return -1
        ss = p[pos]
        pos += 1
        if ss & 0x10:  # Y: WIDTH and HEIGHT of each spatial layer
            pos += 4 * ((ss >> 5) + 1)
        if ss & 0x08:  # G: picture group description
            if pos >= n:
                return -1
            pictures = p[pos]
            pos += 1
            for _ in range(pictures):
                if pos >= n:
                    return -1
                pos += 1 + ((p[pos] >> 2) & 0x03)  # TID|U|R: R reference P_DIFFs follow
    return pos if pos <= n else -1


_VP9_SYNC_CODE = (0x49, 0x83, 0x42)


def vp9_is_keyframe(payload: Payload) -> bool:
    """The first packet of a VP9 key frame: in the descriptor, not inter-picture predicted (P=0),
    start of a frame (B=1), spatial layer 0 without inter-layer dependency (when layer indices are
    there); then the frame's uncompressed header (RFC 9628 §4.1, VP9 bitstream §6.2) says
    frame_marker 2, not show_existing_frame, frame_type KEY_FRAME (an intra-only frame is not a
    key frame) and, when its bytes are there, the key frame sync code."""
    n = len(payload)
    if n < 1:
        return False
    b0 = payload[0]
    if b0 & 0x40 or not b0 & 0x08:  # P=1 (inter-predicted) or B=0 (not start of frame)
        return False
    if b0 & 0x20:  # L: spatial layer 0, no inter-layer dependency
        at = 1
        if b0 & 0x80:
            if n < 2:
                return False
            at = 3 if payload[1] & 0x80 else 2
        if at >= n or payload[at] & 0x0F:  # SID (3 bits) and D
            return False
    pos = _vp9_descriptor_size(payload)
    if pos < 0 or pos >= n:
        return False
    header = payload[pos]
    if header >> 6 != 2:  # frame_marker
        return False
    profile = ((header >> 5) & 1) | (((header >> 4) & 1) << 1)
    if profile == 3:
        return not header & 0x04 and not header & 0x02  # reserved bit, then show_existing, frame_type
    if header & 0x08 or header & 0x04:  # show_existing_frame, or frame_type 1 (not a key frame)
        return False
    if pos + 3 < n:
        return (payload[pos + 1], payload[pos + 2], payload[pos + 3]) == _VP9_SYNC_CODE
    return True


@dataclass(slots=True, frozen=True)
class Vp9Descriptor:
    """Parsed VP9 payload descriptor (RFC 9628 §4.2); offsets are into the payload (-1 when absent)."""

    size: int  # the scalability structure included
    inter_predicted: bool  # P
    flexible: bool  # F
    start_of_frame: bool  # B
    end_of_frame: bool  # E
    picture_id: int  # -1 when absent
    picture_id_offset: int
    picture_id_bits: int  # 7, 15 or 0
    tid: int  # -1 when absent (no L)
    sid: int  # -1 when absent
    inter_layer_dependency: bool  # D
    tl0picidx: int  # -1 when absent (flexible mode, or no L)
    tl0picidx_offset: int
    scalability_structure: bool  # V


def vp9_descriptor(payload: Payload) -> Vp9Descriptor | None:
    """Parse the VP9 payload descriptor, or ``None`` when truncated."""
    size = _vp9_descriptor_size(payload)
    if size < 0:
        return None
    b0 = payload[0]
    picture_id = pid_off = tid = sid = tl0 = tl0_off = -1
    pid_bits = 0
    dependency = False
    pos = 1
    if b0 & 0x80:
        pid_off = pos
        picture_id, pid_bits = _picture_id(payload, pos)
        pos += 2 if pid_bits == 15 else 1
    if b0 & 0x20:
        layer = payload[pos]
        tid, sid, dependency = layer >> 5, (layer >> 1) & 0x07, bool(layer & 0x01)
        pos += 1
        if not b0 & 0x10:
            tl0_off = pos
            tl0 = payload[pos]
    return Vp9Descriptor(
        size=size,
        inter_predicted=bool(b0 & 0x40),
        flexible=bool(b0 & 0x10),
        start_of_frame=bool(b0 & 0x08),
        end_of_frame=bool(b0 & 0x04),
        picture_id=picture_id,
        picture_id_offset=pid_off,
        picture_id_bits=pid_bits,
        tid=tid,
        sid=sid,
        inter_layer_dependency=dependency,
        tl0picidx=tl0,
        tl0picidx_offset=tl0_off,
        scalability_structure=bool(b0 & 0x02),
    )


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
