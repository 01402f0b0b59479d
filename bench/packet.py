"""The synthetic RTP packet the bench sends: a fixed header and a payload that proves its own integrity.

Payload layout (big-endian): ``magic u32 | seq u32 | send_ns u64 | filler``, where the filler is
``FILLERS[seq % 251]``; a sink that decrypts a packet can check every payload byte and read the
send time (``time.monotonic_ns()`` of the source, the same clock on this machine).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_HEADER_LEN = 12
PAYLOAD_TYPE = 96
MAGIC = 0x4C564C42  # "LVLB"
_HEAD = struct.Struct("!BBHII")
_STAMP = struct.Struct("!IIQ")
STAMP_LEN = _STAMP.size
_FILLER_KINDS = 251

#: Streams through the SFU node are VP8 (payload type 96): the payload then starts with a 1-byte
#: VP8 payload descriptor (S bit, partition 0, no extensions) and the first byte of the VP8
#: payload header, whose low bit P is clear on a keyframe (RFC 7741).  The stamp follows.
VP8_DESCRIPTOR = 0x10
VP8_KEYFRAME = 0x00
VP8_INTERFRAME = 0x01
VP8_PREFIX_LEN = 2


#: ``--twcc``: a one-byte header extension block with the transport-wide sequence number
#: (draft-holmer-rmcat-transport-wide-cc-extensions-01) under id ``TWCC_EXT_ID``, as a publisher
#: that negotiated transport-cc sends (the node then sends it transport-cc feedback); the 2-byte
#: value sits at ``TWCC_SEQ_AT``
TWCC_EXT_ID = 5
TWCC_BLOCK = bytes([0xBE, 0xDE, 0x00, 0x01, (TWCC_EXT_ID << 4) | 1, 0, 0, 0])
TWCC_BLOCK_LEN = len(TWCC_BLOCK)
TWCC_SEQ_AT = RTP_HEADER_LEN + 5


def stamp_offset(vp8: bool, twcc: bool = False) -> int:
    """Where the stamp (magic, seq, send_ns) starts in a bench RTP packet."""
    return RTP_HEADER_LEN + (TWCC_BLOCK_LEN if twcc else 0) + (VP8_PREFIX_LEN if vp8 else 0)


def filler(seq: int, length: int) -> bytes:
    """The expected filler bytes for packet ``seq``; only ``seq % 251`` matters."""
    k = seq % _FILLER_KINDS
    return bytes((k + i) & 0xFF for i in range(length))


@dataclass(frozen=True)
class BenchPacket:
    """One plaintext RTP packet of the bench stream."""

    ssrc: int
    seq: int  # 32-bit extended sequence; the RTP header carries its low 16 bits
    send_ns: int
    size: int  # whole RTP packet length in bytes

    def __post_init__(self) -> None:
        if self.size < RTP_HEADER_LEN + STAMP_LEN:
            raise ValueError(f"packet size {self.size} is below the minimum {RTP_HEADER_LEN + STAMP_LEN}")
        if not 0 <= self.seq < 1 << 32:
            raise ValueError(f"sequence out of range: {self.seq}")

    def __bytes__(self) -> bytes:
        head = _HEAD.pack(0x80, PAYLOAD_TYPE, self.seq & 0xFFFF, self.seq & 0xFFFFFFFF, self.ssrc)
        stamp = _STAMP.pack(MAGIC, self.seq, self.send_ns)
        return head + stamp + filler(self.seq, self.size - RTP_HEADER_LEN - STAMP_LEN)

    @classmethod
    def parse(cls, data: bytes | memoryview) -> BenchPacket:
        """Parse and fully verify a decrypted packet; ValueError says what is wrong."""
        if len(data) < RTP_HEADER_LEN + STAMP_LEN:
            raise ValueError(f"packet too short: {len(data)} bytes")
        vpxcc, mpt, seq16, _ts, ssrc = _HEAD.unpack_from(data, 0)
        if vpxcc != 0x80 or mpt & 0x7F != PAYLOAD_TYPE:
            raise ValueError(f"not a bench RTP header: {vpxcc:#x} {mpt:#x}")
        magic, seq, send_ns = _STAMP.unpack_from(data, RTP_HEADER_LEN)
        if magic != MAGIC:
            raise ValueError(f"bad payload magic {magic:#x}")
        if seq & 0xFFFF != seq16:
            raise ValueError(f"header sequence {seq16} does not match payload sequence {seq}")
        start = RTP_HEADER_LEN + STAMP_LEN
        if bytes(data[start:]) != filler(seq, len(data) - start):
            raise ValueError(f"payload of packet {seq} is corrupt")
        return cls(ssrc=ssrc, seq=seq, send_ns=send_ns, size=len(data))


class FillerTable:
    """Precomputed fillers so the hot paths compare/copy instead of building bytes."""

    def __init__(self, size: int, stamp_at: int = RTP_HEADER_LEN) -> None:
        if size < stamp_at + STAMP_LEN:
            raise ValueError(f"packet size {size} leaves no room for the stamp at {stamp_at}")
        self.length = size - stamp_at - STAMP_LEN
        self.fillers = [filler(k, self.length) for k in range(_FILLER_KINDS)]

    def for_seq(self, seq: int) -> bytes:
        return self.fillers[seq % _FILLER_KINDS]
