"""RTP payloads to coded frames, for the recorder (remux only: nothing is decoded).

A ``FrameAssembler`` takes one track's packets in sequence order (``sfu.packet.jitter`` puts them
there) and hands out whole frames: the bytes a muxer stores for one picture or one audio packet,
with their RTP timestamp and whether they are a keyframe.

* VP8 (RFC 7741): the payload descriptor is dropped, the payloads of one picture concatenated.
* VP9 (RFC 9628): the same, descriptor and scalability structure dropped (one spatial layer).
* H264 (RFC 6184): single NAL units, STAP-A aggregates and FU-A fragments become an Annex B
  access unit (start codes), which the muxer turns into length-prefixed NAL units.
* AV1 (the AV1 RTP payload format): the aggregation header's OBU elements are joined across
  packets, and each OBU gets its size field (the low-overhead format Matroska stores); temporal
  delimiters are dropped.
* Opus (RFC 7587): one packet is one frame.

A ``gap`` (packets lost for good) discards the frame being assembled; video then waits for the
next keyframe (frames after a loss refer to what was lost), counted in ``frames_skipped``.
Malformed payloads are dropped and counted (``malformed``), never raised.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sfu.packet.codecs import _vp8_descriptor_size, _vp9_descriptor_size, is_keyframe

__all__ = ["Codec", "Frame", "FrameAssembler", "av1_obus", "codec_of", "leb128"]

START_CODE = b"\x00\x00\x00\x01"
#: a frame larger than this is malformed (a stream gone wrong, not a picture)
MAX_FRAME_BYTES = 8 << 20


class Codec(enum.Enum):
    VP8 = "VP8"
    VP9 = "VP9"
    H264 = "H264"
    AV1 = "AV1"
    OPUS = "opus"

    @property
    def is_video(self) -> bool:
        return self is not Codec.OPUS


def codec_of(name: str) -> Codec | None:
    """The codec of an SDP codec name (any case), or None for one the recorder cannot store."""
    for c in Codec:
        if c.value.lower() == name.lower():
            return c
    return None


@dataclass(frozen=True)
class Frame:
    timestamp: int  # RTP timestamp (32-bit)
    data: bytes
    keyframe: bool


def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_leb128(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); ValueError when truncated or longer than 8 bytes."""
    value = 0
    for i in range(8):
        if pos >= len(buf):
            raise ValueError("truncated LEB128")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, pos
    raise ValueError("LEB128 longer than 8 bytes")


def av1_obus(data: bytes) -> bytes:
    """OBUs as they travel in RTP (size field optional) to the low-overhead format: each OBU with
    ``obu_has_size_field`` set and its size; temporal delimiters (type 2) dropped."""
    out = bytearray()
    pos = 0
    n = len(data)
    while pos < n:
        header = data[pos]
        has_ext = bool(header & 0x04)
        head_len = 2 if has_ext else 1
        if pos + head_len > n:
            raise ValueError("truncated OBU header")
        head = bytearray(data[pos : pos + head_len])
        pos += head_len
        if header & 0x02:
            size, pos = _read_leb128(data, pos)
            if pos + size > n:
                raise ValueError("OBU size runs past the frame")
        else:
            size = n - pos
        obu_type = (header >> 3) & 0x0F
        if obu_type != 2:
            head[0] |= 0x02
            out += head
            out += leb128(size)
            out += data[pos : pos + size]
        pos += size
    return bytes(out)


class FrameAssembler:
    """One track's packets (in sequence order) to frames; see the module's doc."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._parts: list[bytes] = []
        self._size = 0
        self._ts = -1
        self._key = False
        self._broken = False  # a packet of the current frame is missing or malformed
        self._need_key = codec.is_video
        self._fu: bytearray | None = None  # H264: the NAL unit being reassembled from FU-A
        self._obu: bytearray | None = None  # AV1: the OBU element continued in the next packet
        self.frames = 0
        self.frames_skipped = 0
        self.malformed = 0

    def gap(self) -> None:
        """Packets before the next one are lost for good."""
        if self._parts or self._ts >= 0:
            self._broken = True
        self._fu = None
        self._obu = None
        if self.codec.is_video:
            self._need_key = True

    def push(self, timestamp: int, marker: bool, payload: bytes) -> list[Frame]:
        """The next packet's RTP timestamp, marker bit and payload; the frames it completes."""
        out: list[Frame] = []
        if self.codec is Codec.OPUS:
            if payload:
                self.frames += 1
                out.append(Frame(timestamp, bytes(payload), True))
            return out
        if self._ts >= 0 and timestamp != self._ts:
            self._finish(out)  # the frame ended without its marker (the marker packet was lost)
        if self._ts < 0:
            self._ts = timestamp
            self._key = is_keyframe(self.codec.value, payload)
        try:
            self._add(payload)
        except ValueError:
            self.malformed += 1
            self._broken = True
        if marker:
            self._finish(out)
        return out

    def flush(self) -> list[Frame]:
        out: list[Frame] = []
        if self._ts >= 0:
            self._finish(out)
        return out

    def _finish(self, out: list[Frame]) -> None:
        data = b"".join(self._parts)
        key, broken = self._key, self._broken or not data
        ts = self._ts
        self._parts = []
        self._size = 0
        self._ts = -1
        self._key = False
        self._broken = False
        self._fu = None
        self._obu = None
        if broken:
            self.frames_skipped += 1
            if self.codec.is_video:
                self._need_key = True
            return
        if self._need_key and not key:
            self.frames_skipped += 1
            return
        self._need_key = False
        self.frames += 1
        out.append(Frame(ts, data, key))

    def _append(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_FRAME_BYTES:
            raise ValueError("frame too large")
        self._parts.append(data)

    def _add(self, p: bytes) -> None:
        c = self.codec
        if c is Codec.VP8:
            at = _vp8_descriptor_size(p)
            if at < 0 or at >= len(p):
                raise ValueError("VP8 descriptor truncated")
            self._append(bytes(p[at:]))
        elif c is Codec.VP9:
            at = _vp9_descriptor_size(p)
            if at < 0 or at > len(p):
                raise ValueError("VP9 descriptor truncated")
            self._append(bytes(p[at:]))
        elif c is Codec.H264:
            self._h264(p)
        else:
            self._av1(p)

    def _h264(self, p: bytes) -> None:
        if not p:
            raise ValueError("empty H264 payload")
        nal = p[0] & 0x1F
        if 1 <= nal <= 23:
            self._append(START_CODE + bytes(p))
        elif nal == 24:  # STAP-A
            pos = 1
            while pos < len(p):
                if pos + 2 > len(p):
                    raise ValueError("STAP-A size truncated")
                size = (p[pos] << 8) | p[pos + 1]
                pos += 2
                if size == 0 or pos + size > len(p):
                    raise ValueError("STAP-A unit runs past the packet")
                self._append(START_CODE + bytes(p[pos : pos + size]))
                pos += size
        elif nal == 28:  # FU-A
            if len(p) < 2:
                raise ValueError("FU-A truncated")
            fu = p[1]
            if fu & 0x80:  # start
                self._fu = bytearray([(p[0] & 0xE0) | (fu & 0x1F)])
            elif self._fu is None:
                raise ValueError("FU-A continuation without its start")
            self._fu += p[2:]
            if len(self._fu) > MAX_FRAME_BYTES:
                raise ValueError("FU-A unit too large")
            if fu & 0x40:  # end
                self._append(START_CODE + bytes(self._fu))
                self._fu = None
        else:
            raise ValueError(f"H264 NAL type {nal} is not supported")

    def _av1(self, p: bytes) -> None:
        if not p:
            raise ValueError("empty AV1 payload")
        agg = p[0]
        z, y, w = bool(agg & 0x80), bool(agg & 0x40), (agg >> 4) & 0x03
        pos = 1
        elements: list[bytes] = []
        while pos < len(p):
            if w and len(elements) == w - 1:
                size = len(p) - pos
            else:
                size, pos = _read_leb128(p, pos)
            if pos + size > len(p):
                raise ValueError("AV1 OBU element runs past the packet")
            elements.append(bytes(p[pos : pos + size]))
            pos += size
        for i, element in enumerate(elements):
            first, last = i == 0, i == len(elements) - 1
            if first and z:
                if self._obu is None:
                    raise ValueError("AV1 continuation without its start")
                self._obu += element
            else:
                if self._obu is not None:
                    raise ValueError("AV1 OBU element not continued")
                self._obu = bytearray(element)
            if not (last and y):
                self._append(av1_obus(bytes(self._obu)))  # one element is one OBU
                self._obu = None


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise ValueError("SPS truncated")
        b = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return b

    def bits(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | self.bit()
        return v

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        v = self.ue()
        return (v + 1) // 2 if v & 1 else -(v // 2)


def h264_dimensions(access_unit: bytes) -> tuple[int, int]:
    """Width and height from the SPS (H.264 §7.3.2.1.1) of an Annex B access unit; (0, 0) when
    there is none or it cannot be read."""
    for nal in access_unit.split(START_CODE):
        if nal and nal[0] & 0x1F == 7:
            try:
                return _sps_dimensions(nal[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
            except ValueError:
                return 0, 0
    return 0, 0


def _sps_dimensions(rbsp: bytes) -> tuple[int, int]:
    r = _Bits(rbsp)
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = r.ue()
        if chroma == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.bit():
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se()) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num_minus4
    poc = r.ue()
    if poc == 0:
        r.ue()
    elif poc == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if r.bit():
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    sub_w, sub_h = (1, 1) if chroma == 3 or chroma == 0 else (2, 2 if chroma == 1 else 1)
    width = width_mbs * 16 - sub_w * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - sub_h * (2 - frame_mbs_only) * (crop[2] + crop[3])
    return width, height


def vp9_dimensions(frame: bytes) -> tuple[int, int]:
    """Width and height from a VP9 key frame's uncompressed header (VP9 bitstream §6.2);
    (0, 0) for another frame or one that cannot be read."""
    try:
        r = _Bits(frame)
        if r.bits(2) != 2:
            return 0, 0
        profile = r.bit() | (r.bit() << 1)
        if profile == 3:
            r.bit()
        if r.bit() or r.bit():  # show_existing_frame, or frame_type not KEY_FRAME
            return 0, 0
        r.bits(2)  # show_frame, error_resilient_mode
        if r.bits(24) != 0x498342:
            return 0, 0
        if profile >= 2:
            r.bit()
        if r.bits(3) != 7:  # color_space other than CS_RGB
            r.bit()
            if profile in (1, 3):
                r.bits(3)
        elif profile in (1, 3):
            r.bit()
        return r.bits(16) + 1, r.bits(16) + 1
    except ValueError:
        return 0, 0


def av1_dimensions(frame: bytes) -> tuple[int, int]:
    """The maximum frame size from the sequence header OBU (AV1 §5.5) of a temporal unit in the
    low-overhead format (``av1_obus``); (0, 0) when there is none or it cannot be read."""
    pos = 0
    try:
        while pos < len(frame):
            header = frame[pos]
            pos += 2 if header & 0x04 else 1
            if not header & 0x02:
                return 0, 0
            size, pos = _read_leb128(frame, pos)
            if (header >> 3) & 0x0F == 1:
                return _av1_sequence_size(frame[pos : pos + size])
            pos += size
    except ValueError:
        pass
    return 0, 0


def _uvlc(r: _Bits) -> int:
    zeros = 0
    while not r.bit():
        zeros += 1
        if zeros >= 32:
            raise ValueError("uvlc too long")
    return (1 << zeros) - 1 + r.bits(zeros)


def _av1_sequence_size(payload: bytes) -> tuple[int, int]:
    r = _Bits(payload)
    r.bits(3)  # seq_profile
    r.bit()  # still_picture
    if r.bit():  # reduced_still_picture_header
        r.bits(5)
    else:
        buffer_delay_bits = 0
        decoder_model = False
        if r.bit():  # timing_info_present_flag
            r.bits(64)
            if r.bit():  # equal_picture_interval
                _uvlc(r)
            decoder_model = bool(r.bit())
            if decoder_model:
                buffer_delay_bits = r.bits(5) + 1
                r.bits(32 + 5 + 5)
        display_delay = r.bit()
        for _ in range(r.bits(5) + 1):  # operating points
            r.bits(12)
            if r.bits(5) > 7:
                r.bit()
            if decoder_model and r.bit():
                r.bits(2 * buffer_delay_bits + 1)
            if display_delay and r.bit():
                r.bits(4)
    width_bits = r.bits(4) + 1
    height_bits = r.bits(4) + 1
    return r.bits(width_bits) + 1, r.bits(height_bits) + 1
