"""RTP (RFC 3550) header parsing and in-buffer rewriting, with RFC 8285 header extensions.

Two layers live here:

* ``RtpHeader`` / ``RtpPacket``: dataclasses with ``parse()`` (precise ``ValueError`` on any
  malformation) and ``__bytes__``. For control paths, tests and tools; they allocate freely.
* Hot-path helpers working on (preallocated) buffers plus a datagram length:
  ``header_length``, ``payload_offset``, ``padding_length``, ``payload_length``,
  ``get_extension`` and ``copy_rewrite``. They never raise on malformed input: they return
  ``-1`` (or ``None`` for ``get_extension``) and never read past ``length`` nor past the buffer.
  They allocate nothing beyond ints and, in ``copy_rewrite``, the slice views used to copy
  (pass a ``memoryview`` as ``src`` so that these slices are views rather than copies).

Header extension blocks:

* one-byte form, profile ``0xBEDE``: elements ``[id:4 | len-1:4][value]``, ids 1-14, values of
  1-16 bytes; a byte with id 0 is one byte of padding (as in libwebrtc); id 15 stops processing of the block (RFC 8285 4.2).
* two-byte form, profile ``0x100X`` (X: 4 application bits): elements ``[id][len][value]``, ids
  1-255, values of 0-255 bytes; a zero byte is padding.
* any other profile is kept as raw bytes by the dataclasses and dropped by ``copy_rewrite``
  unless it runs in keep-everything mode (``ext_map=None``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

__all__ = [
    "EXT_MAP_SIZE",
    "FIXED_HEADER_LENGTH",
    "ONE_BYTE_PROFILE",
    "TWO_BYTE_PROFILE",
    "RtpHeader",
    "RtpPacket",
    "copy_rewrite",
    "get_extension",
    "header_length",
    "identity_ext_map",
    "is_identity_for",
    "make_ext_map",
    "padding_length",
    "patch_header",
    "payload_length",
    "payload_offset",
]

FIXED_HEADER_LENGTH = 12
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000  # the low 4 bits are "appbits" (RFC 8285 4.3)
EXT_MAP_SIZE = 256  # an ext_map indexed by any two-byte id

_FIXED = struct.Struct("!BBHII")
_EXT_HDR = struct.Struct("!HH")
_SEQ_TS_SSRC = struct.Struct("!BHII")

Buffer = bytes | bytearray | memoryview


def _is_two_byte(profile: int) -> bool:
    return profile & 0xFFF0 == TWO_BYTE_PROFILE


def _parse_extension_elements(profile: int, body: bytes) -> list[tuple[int, bytes]]:
    elements: list[tuple[int, bytes]] = []
    pos = 0
    end = len(body)
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            h = body[pos]
            if h < 16:  # id 0: a padding byte (its length nibble is ignored)
                pos += 1
                continue
            ext_id = h >> 4
            if ext_id == 15:
                break
            size = (h & 0x0F) + 1
            if pos + 1 + size > end:
                raise ValueError(
                    f"RTP one-byte header extension id {ext_id} ({size} bytes at {pos + 1}) "
                    f"overruns its {end}-byte block"
                )
            elements.append((ext_id, bytes(body[pos + 1 : pos + 1 + size])))
            pos += 1 + size
    else:
        while pos < end:
            ext_id = body[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise ValueError(f"RTP two-byte header extension id {ext_id} at {pos} has no length byte")
            size = body[pos + 1]
            if pos + 2 + size > end:
                raise ValueError(
                    f"RTP two-byte header extension id {ext_id} ({size} bytes at {pos + 2}) "
                    f"overruns its {end}-byte block"
                )
            elements.append((ext_id, bytes(body[pos + 2 : pos + 2 + size])))
            pos += 2 + size
    return elements


def _fits_one_byte(ext_id: int, value: bytes) -> bool:
    return 1 <= ext_id <= 14 and 1 <= len(value) <= 16


def _pack_extension_elements(profile: int, elements: Sequence[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    if profile == ONE_BYTE_PROFILE:
        for ext_id, value in elements:
            if not _fits_one_byte(ext_id, value):
                raise ValueError(
                    f"RTP header extension id {ext_id} with {len(value)} bytes does not fit the one-byte form"
                )
            out.append((ext_id << 4) | (len(value) - 1))
            out += value
    else:
        for ext_id, value in elements:
            if not 1 <= ext_id <= 255 or len(value) > 255:
                raise ValueError(
                    f"RTP header extension id {ext_id} with {len(value)} bytes does not fit the two-byte form"
                )
            out.append(ext_id)
            out.append(len(value))
            out += value
    out += bytes(-len(out) % 4)
    return bytes(out)


@dataclass(slots=True)
class RtpHeader:
    """An RTP header. ``extension_profile`` is ``None`` when there is no extension block.

    ``padding_size`` is the number of padding bytes at the end of the packet (P bit set when
    non-zero); the header itself does not contain them: ``RtpPacket.__bytes__`` appends them.
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    marker: bool = False
    csrcs: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extensions: list[tuple[int, bytes]] = field(default_factory=list)
    extension_raw: bytes = b""  # block body for a profile other than one-byte/two-byte
    padding_size: int = 0

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse the header of the complete RTP packet ``data`` (padding is checked too)."""
        header, _ = cls.parse_with_offset(data)
        return header

    @classmethod
    def parse_with_offset(cls, data: Buffer) -> tuple[Self, int]:
        """Parse like ``parse`` and also return the payload offset."""
        n = len(data)
        if n < FIXED_HEADER_LENGTH:
            raise ValueError(f"RTP packet too short: {n} bytes, need at least {FIXED_HEADER_LENGTH}")
        b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data, 0)
        version = b0 >> 6
        if version != 2:
            raise ValueError(f"RTP version must be 2, got {version}")
        cc = b0 & 0x0F
        pos = FIXED_HEADER_LENGTH + 4 * cc
        if pos > n:
            raise ValueError(f"RTP CSRC list of {cc} entries overruns the {n}-byte packet")
        csrcs = list(struct.unpack_from(f"!{cc}I", data, FIXED_HEADER_LENGTH))
        profile: int | None = None
        elements: list[tuple[int, bytes]] = []
        raw = b""
        if b0 & 0x10:
            if pos + 4 > n:
                raise ValueError(f"RTP header extension header at {pos} overruns the {n}-byte packet")
            profile, words = _EXT_HDR.unpack_from(data, pos)
            pos += 4
            end = pos + 4 * words
            if end > n:
                raise ValueError(
                    f"RTP header extension block of {4 * words} bytes at {pos} overruns the {n}-byte packet"
                )
            body = bytes(data[pos:end])
            if profile == ONE_BYTE_PROFILE or _is_two_byte(profile):
                elements = _parse_extension_elements(profile, body)
            else:
                raw = body
            pos = end
        padding = 0
        if b0 & 0x20:
            padding = data[n - 1]
            if padding == 0:
                raise ValueError("RTP padding length is 0 although the P bit is set")
            if padding > n - pos:
                raise ValueError(f"RTP padding of {padding} bytes overruns the {n - pos}-byte payload")
        header = cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            marker=bool(b1 & 0x80),
            csrcs=csrcs,
            extension_profile=profile,
            extensions=elements,
            extension_raw=raw,
            padding_size=padding,
        )
        return header, pos

    def _extension_block(self) -> tuple[int, bytes] | None:
        profile = self.extension_profile
        if profile is None:
            if not self.extensions:
                return None
            if all(_fits_one_byte(i, v) for i, v in self.extensions):
                profile = ONE_BYTE_PROFILE
            else:
                profile = TWO_BYTE_PROFILE
        if profile == ONE_BYTE_PROFILE or _is_two_byte(profile):
            return profile, _pack_extension_elements(profile, self.extensions)
        if len(self.extension_raw) % 4:
            raise ValueError(
                f"RTP raw header extension block of {len(self.extension_raw)} bytes is not 32-bit aligned"
            )
        return profile, self.extension_raw

    def __bytes__(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"RTP payload type {self.payload_type} out of range 0-127")
        if len(self.csrcs) > 15:
            raise ValueError(f"RTP header can carry at most 15 CSRCs, got {len(self.csrcs)}")
        if not 0 <= self.padding_size <= 255:
            raise ValueError(f"RTP padding size {self.padding_size} out of range 0-255")
        block = self._extension_block()
        b0 = 0x80 | len(self.csrcs)
        if self.padding_size:
            b0 |= 0x20
        if block is not None:
            b0 |= 0x10
        out = bytearray(
            _FIXED.pack(
                b0,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        )
        for csrc in self.csrcs:
            out += struct.pack("!I", csrc)
        if block is not None:
            profile, body = block
            out += _EXT_HDR.pack(profile, len(body) // 4)
            out += body
        return bytes(out)

    def extension(self, ext_id: int) -> bytes | None:
        """The value of the first element with ``ext_id``, or ``None``."""
        for i, value in self.extensions:
            if i == ext_id:
                return value
        return None


@dataclass(slots=True)
class RtpPacket:
    """A whole RTP packet: header, payload, and ``header.padding_size`` padding bytes."""

    header: RtpHeader
    payload: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        header, pos = RtpHeader.parse_with_offset(data)
        return cls(header=header, payload=bytes(data[pos : len(data) - header.padding_size]))

    def __bytes__(self) -> bytes:
        pad = self.header.padding_size
        tail = bytes(pad - 1) + bytes([pad]) if pad else b""
        return bytes(self.header) + self.payload + tail


# --------------------------------------------------------------------------- hot path helpers


def header_length(buf: Buffer, length: int) -> int:
    """Bytes before the payload (fixed header, CSRCs, extension block), or -1 when malformed.

    Malformed: ``length`` below 12 or above ``len(buf)``, version other than 2, CSRC list or
    extension block running past ``length``. Padding is not checked (see ``padding_length``).
    """
    if length < FIXED_HEADER_LENGTH or length > len(buf):
        return -1
    b0 = buf[0]
    if b0 & 0xC0 != 0x80:
        return -1
    pos = FIXED_HEADER_LENGTH + (b0 & 0x0F) * 4
    if b0 & 0x10:
        if pos + 4 > length:
            return -1
        pos += 4 + ((buf[pos + 2] << 8) | buf[pos + 3]) * 4
    if pos > length:
        return -1
    return pos


payload_offset = header_length
"""Alias of ``header_length``: where the payload starts, or -1 when malformed."""


def padding_length(buf: Buffer, length: int) -> int:
    """Padding bytes at the end of the packet (0 without the P bit), or -1 when malformed."""
    start = header_length(buf, length)
    if start < 0:
        return -1
    if not buf[0] & 0x20:
        return 0
    pad = buf[length - 1]
    if pad == 0 or pad > length - start:
        return -1
    return pad


def payload_length(buf: Buffer, length: int) -> int:
    """Payload bytes, padding excluded, or -1 when malformed. 0 means padding-only/empty."""
    start = header_length(buf, length)
    if start < 0:
        return -1
    if not buf[0] & 0x20:
        return length - start
    pad = buf[length - 1]
    if pad == 0 or pad > length - start:
        return -1
    return length - start - pad


def get_extension(buf: Buffer, length: int, ext_id: int) -> tuple[int, int] | None:
    """``(offset, size)`` of the value of header extension ``ext_id`` inside ``buf``.

    ``None`` when absent, when the packet is malformed, or when the block has a profile other
    than one-byte/two-byte. The offset lets a caller overwrite the value in place (e.g. a
    transport-wide sequence number) with ``struct.pack_into``.
    """
    if length < FIXED_HEADER_LENGTH or length > len(buf):
        return None
    b0 = buf[0]
    if b0 & 0xD0 != 0x90:  # version 2 and X bit
        return None
    pos = FIXED_HEADER_LENGTH + (b0 & 0x0F) * 4
    if pos + 4 > length:
        return None
    profile = (buf[pos] << 8) | buf[pos + 1]
    end = pos + 4 + ((buf[pos + 2] << 8) | buf[pos + 3]) * 4
    if end > length:
        return None
    pos += 4
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            h = buf[pos]
            if h < 16:
                pos += 1
                continue
            i = h >> 4
            if i == 15:
                return None
            size = (h & 0x0F) + 1
            if pos + 1 + size > end:
                return None
            if i == ext_id:
                return pos + 1, size
            pos += 1 + size
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while pos < end:
            i = buf[pos]
            if i == 0:
                pos += 1
                continue
            if pos + 2 > end:
                return None
            size = buf[pos + 1]
            if pos + 2 + size > end:
                return None
            if i == ext_id:
                return pos + 2, size
            pos += 2 + size
    return None


def make_ext_map(mapping: Mapping[int, int]) -> list[int]:
    """Build an ``ext_map`` for ``copy_rewrite`` from ``{incoming id: outgoing id}``.

    Ids absent from ``mapping`` are dropped. Precompute this once per (publisher, subscriber)
    pair, not per packet.
    """
    table = [0] * EXT_MAP_SIZE
    for src_id, dst_id in mapping.items():
        if not 1 <= src_id <= 255 or not 0 <= dst_id <= 255:
            raise ValueError(f"header extension ids must be 1-255 (0 = drop), got {src_id} -> {dst_id}")
        table[src_id] = dst_id
    return table


def identity_ext_map(ids: Sequence[int]) -> list[int]:
    """An ``ext_map`` that keeps ``ids`` under the same id and drops every other."""
    return make_ext_map({i: i for i in ids})


def is_identity_for(ext_map: Sequence[int], ids: Iterable[int]) -> bool:
    """Whether ``ext_map`` keeps every id in ``ids`` (the publisher's negotiated ids) unchanged.

    Compute it once per (publisher, subscriber) pair; when true, pass ``ext_map=None`` to
    ``copy_rewrite`` for its fastest path (the block is copied without being walked).
    """
    return all(i < len(ext_map) and ext_map[i] == i for i in ids)


def patch_header(buf: bytearray | memoryview, *, ssrc: int, seq: int, ts: int, pt: int) -> None:
    """Overwrite payload type (marker kept), sequence number, timestamp and SSRC in place.

    For a packet already rewritten by ``copy_rewrite`` for one subscriber and copied for another
    with the same ``ext_map``: one block rewrite, then only this per subscriber. ``buf`` must hold
    at least 12 bytes.
    """
    _SEQ_TS_SSRC.pack_into(
        buf, 1, (buf[1] & 0x80) | (pt & 0x7F), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF
    )


def copy_rewrite(
    src: Buffer,
    src_len: int,
    dst: bytearray | memoryview,
    *,
    ssrc: int,
    seq: int,
    ts: int,
    pt: int,
    ext_map: Sequence[int] | None,
    two_byte_ok: bool = True,
) -> int:
    """Copy the RTP packet ``src[:src_len]`` into ``dst`` rewriting its header; return its length.

    SSRC, sequence number, timestamp and payload type are replaced (values are masked to their
    field widths); the marker bit, CSRCs, payload and padding are kept. Header extensions are
    filtered and renumbered through ``ext_map``: ``ext_map[incoming id]`` is the outgoing id, 0
    (or an id past the end of ``ext_map``) drops the element. ``ext_map=None`` keeps the block
    byte for byte without walking it: the fast path, for pairs where ``is_identity_for`` holds.
    A one-byte block is rebuilt in one pass (padding between elements is squeezed out). Other
    blocks are copied as is when every element keeps its id, else rebuilt in the one-byte form
    when every kept element fits it, otherwise in the two-byte form; with ``two_byte_ok=False`` (the subscriber did not negotiate
    ``extmap-allow-mixed``) elements that do not fit the one-byte form are dropped instead.
    When nothing is kept the block is removed and the X bit cleared. Blocks of other profiles
    are dropped unless ``ext_map`` is ``None``.

    Returns -1, writing nothing past what it may have started, when ``src`` is malformed (see
    ``header_length``; bad padding too) or when the result would not fit in ``dst``. ``dst``
    is never resized. ``src`` and ``dst`` must not overlap.
    """
    if src_len < FIXED_HEADER_LENGTH or src_len > len(src):
        return -1
    b0 = src[0]
    if b0 & 0xC0 != 0x80:
        return -1
    csrc_end = FIXED_HEADER_LENGTH + (b0 & 0x0F) * 4
    if csrc_end > src_len:
        return -1
    pad = 0
    if b0 & 0x20:
        pad = src[src_len - 1]
        if pad == 0:
            return -1
    b1 = (src[1] & 0x80) | (pt & 0x7F)
    if not b0 & 0x10:
        if csrc_end + pad > src_len or src_len > len(dst):
            return -1
        dst[FIXED_HEADER_LENGTH:src_len] = src[FIXED_HEADER_LENGTH:src_len]
        _FIXED.pack_into(dst, 0, b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
        return src_len

    if csrc_end + 4 > src_len:
        return -1
    profile = (src[csrc_end] << 8) | src[csrc_end + 1]
    body = csrc_end + 4
    body_end = body + ((src[csrc_end + 2] << 8) | src[csrc_end + 3]) * 4
    if body_end + pad > src_len:
        return -1

    one = profile == ONE_BYTE_PROFILE
    tail = src_len - body_end  # payload + padding
    if one and ext_map is not None and src_len <= len(dst):
        # Single pass for the common case, one-byte form in and out: the output block is never
        # longer than the input one, so it fits. An element mapped to an id above 14 needs the
        # two-byte form: give up and take the general path below.
        map_len = len(ext_map)
        q0 = csrc_end + 4
        q = q0
        p = body
        general = False
        while p < body_end:
            h = src[p]
            if h < 16:
                p += 1
                continue
            i = h >> 4
            if i == 15:
                break
            start = p + 1
            p = start + (h & 0x0F) + 1
            if p > body_end:
                return -1
            o = ext_map[i] if i < map_len else 0
            if o:
                if o > 14:
                    if two_byte_ok:
                        general = True
                        break
                    continue
                dst[q] = (o << 4) | (h & 0x0F)
                q += 1
                if p - start <= 4:  # a byte loop beats two slice objects for short values
                    while start < p:
                        dst[q] = src[start]
                        q += 1
                        start += 1
                else:
                    dst[q : q + p - start] = src[start:p]
                    q += p - start
        if not general:
            if q == q0:
                new_len = csrc_end + tail
                dst[FIXED_HEADER_LENGTH:csrc_end] = src[FIXED_HEADER_LENGTH:csrc_end]
                dst[csrc_end:new_len] = src[body_end:src_len]
                _FIXED.pack_into(dst, 0, b0 & 0xEF, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
                return new_len
            while q & 3:
                dst[q] = 0
                q += 1
            new_len = q + tail
            dst[FIXED_HEADER_LENGTH:csrc_end] = src[FIXED_HEADER_LENGTH:csrc_end]
            _EXT_HDR.pack_into(dst, csrc_end, ONE_BYTE_PROFILE, (q - q0) >> 2)
            dst[q:new_len] = src[body_end:src_len]
            _FIXED.pack_into(dst, 0, b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
            return new_len

    known = one or profile & 0xFFF0 == TWO_BYTE_PROFILE
    if ext_map is None:
        verbatim = True
    elif not known:
        verbatim = False
    else:
        # Pass 1: validate, and size the output in both forms.
        map_len = len(ext_map)
        verbatim = one or two_byte_ok
        kept_one = 0  # bytes of kept elements in the one-byte form
        kept_two = 0  # ... in the two-byte form
        need_two = False
        p = body
        while p < body_end:
            h = src[p]
            if h == 0 or (one and h < 16):
                p += 1
                continue
            if one:
                i = h >> 4
                if i == 15:
                    break
                size = (h & 0x0F) + 1
                start = p + 1
            else:
                i = h
                if p + 2 > body_end:
                    return -1
                size = src[p + 1]
                start = p + 2
            p = start + size
            if p > body_end:
                return -1
            o = ext_map[i] if i < map_len else 0
            if o != i:
                verbatim = False
            if o:
                fits = o <= 14 and 1 <= size <= 16
                if not fits and not two_byte_ok:
                    verbatim = False
                    continue
                kept_one += 1 + size
                kept_two += 2 + size
                if not fits:
                    need_two = True

    if verbatim:
        if src_len > len(dst):
            return -1
        dst[FIXED_HEADER_LENGTH:src_len] = src[FIXED_HEADER_LENGTH:src_len]
        _FIXED.pack_into(dst, 0, b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
        return src_len

    kept = 0
    if known and ext_map is not None:
        kept = kept_two if need_two else kept_one
    if kept == 0:
        new_len = csrc_end + tail
        if new_len > len(dst):
            return -1
        dst[FIXED_HEADER_LENGTH:csrc_end] = src[FIXED_HEADER_LENGTH:csrc_end]
        dst[csrc_end:new_len] = src[body_end:src_len]
        _FIXED.pack_into(dst, 0, b0 & 0xEF, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
        return new_len

    assert ext_map is not None
    words = (kept + 3) >> 2
    q_end = csrc_end + 4 + 4 * words
    new_len = q_end + tail
    if new_len > len(dst):
        return -1
    dst[FIXED_HEADER_LENGTH:csrc_end] = src[FIXED_HEADER_LENGTH:csrc_end]
    _EXT_HDR.pack_into(
        dst,
        csrc_end,
        (profile if not one else TWO_BYTE_PROFILE) if need_two else ONE_BYTE_PROFILE,
        words,
    )
    # Pass 2: write the kept elements (input already validated by pass 1).
    q = csrc_end + 4
    p = body
    while p < body_end:
        h = src[p]
        if h == 0 or (one and h < 16):
            p += 1
            continue
        if one:
            i = h >> 4
            if i == 15:
                break
            size = (h & 0x0F) + 1
            start = p + 1
        else:
            i = h
            size = src[p + 1]
            start = p + 2
        p = start + size
        o = ext_map[i] if i < map_len else 0
        if not o:
            continue
        if need_two:
            dst[q] = o
            dst[q + 1] = size
            q += 2
        elif o <= 14 and 1 <= size <= 16:
            dst[q] = (o << 4) | (size - 1)
            q += 1
        else:
            continue  # does not fit and two-byte is not allowed
        dst[q : q + size] = src[start:p]
        q += size
    while q < q_end:
        dst[q] = 0
        q += 1
    dst[q_end:new_len] = src[body_end:src_len]
    _FIXED.pack_into(dst, 0, b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
    return new_len
