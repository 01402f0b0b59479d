"""The load generator's synthetic RTP: written in place into packet slots, verified without decoding.

Packet: RTP header (12 bytes; the first ``RID_PACKETS`` of a simulcast layer carry a one-byte
header extension with the mid and the rid, 8 bytes more), then a 2-byte prefix (video: a VP8
payload descriptor with S set on a frame's first packet and the frame tag byte whose low bit is
clear on a keyframe; audio: an opus TOC byte and one more), then the stamp
``magic u32 | stream id u32 | seq u32 | send_ns u64`` and a filler that depends on ``seq % 251``
and the stream's payload length.  A receiver that decrypts a packet checks the magic, the stream,
the length and every filler byte, and reads the one-way latency from ``send_ns``
(``time.monotonic_ns()`` of the sender, the same clock on this machine).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from bench.loadgen.plan import Stream
from bench.packet import filler

MAGIC = 0x4C564C47  # "LVLG"
STAMP = struct.Struct("!IIIQ")
HEADER = struct.Struct("!BBHII")
RTP_HEADER_LEN = 12
PREFIX_LEN = 2
PAYLOAD_AT = PREFIX_LEN + STAMP.size  # filler offset inside the payload
FILLER_KINDS = 251
#: first packets of each simulcast layer that carry the mid/rid extension (as browsers do)
RID_PACKETS = 8
MID_EXT_ID, RID_EXT_ID = 1, 2
EXT_LEN = 8  # 0xBEDE, one word: [mid id|len 0]['0'][rid id|len 0][rid]
VP8_START, VP8_CONT = 0x10, 0x00
VP8_KEY, VP8_INTER = 0x00, 0x01
OPUS_TOC = 0xFC


def rid_extension(rid: str) -> bytes:
    if len(rid) != 1:
        raise ValueError(f"one-character rids only, got {rid!r}")
    return bytes([0xBE, 0xDE, 0, 1, MID_EXT_ID << 4, ord("0"), RID_EXT_ID << 4, ord(rid)])


def payload_length(stream: Stream) -> int:
    return stream.packet_size - RTP_HEADER_LEN


@dataclass(frozen=True)
class StreamCheck:
    """What a receiver expects of one stream's payloads."""

    payload_len: int
    fillers: tuple[bytes, ...]  # indexed by seq % FILLER_KINDS

    @classmethod
    def of(cls, stream: Stream, cache: dict[int, tuple[bytes, ...]]) -> StreamCheck:
        plen = payload_length(stream)
        fillers = cache.get(plen)
        if fillers is None:
            fillers = cache[plen] = tuple(filler(k, plen - PAYLOAD_AT) for k in range(FILLER_KINDS))
        return cls(plen, fillers)


def checks_for(streams: list[Stream]) -> list[StreamCheck]:
    cache: dict[int, tuple[bytes, ...]] = {}
    return [StreamCheck.of(s, cache) for s in streams]


def header_length(view: memoryview, off: int, length: int) -> int:
    """Bytes of RTP header (CSRCs and extension included) of the packet at ``off``; -1 if truncated."""
    b0 = view[off]
    hl = RTP_HEADER_LEN + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if hl + 4 > length:
            return -1
        hl += 4 + 4 * ((view[off + hl + 2] << 8) | view[off + hl + 3])
    return hl if hl + PAYLOAD_AT <= length else -1


class Defect:
    """Why a decrypted packet failed its check (``check_packet``'s answer; None when intact)."""

    MAGIC = "magic"
    STREAM = "stream"
    LENGTH = "length"
    FILLER = "filler"
    TRUNCATED = "truncated"


def check_packet(view: memoryview, off: int, length: int,
                 checks: list[StreamCheck]) -> tuple[str | None, int, int, int]:
    """Verify one decrypted packet: (defect or None, stream id, payload seq, send_ns)."""
    hl = header_length(view, off, length)
    if hl < 0:
        return Defect.TRUNCATED, -1, 0, 0
    magic, sid, seq, send_ns = STAMP.unpack_from(view, off + hl + PREFIX_LEN)
    if magic != MAGIC:
        return Defect.MAGIC, -1, 0, 0
    if sid >= len(checks):
        return Defect.STREAM, sid, seq, send_ns
    check = checks[sid]
    if length - hl != check.payload_len:
        return Defect.LENGTH, sid, seq, send_ns
    if view[off + hl + PAYLOAD_AT : off + length] != check.fillers[seq % FILLER_KINDS]:
        return Defect.FILLER, sid, seq, send_ns
    return None, sid, seq, send_ns


class StreamWriter:
    """Writes one stream's packets into slots: a frame at a time, keyframes every interval."""

    __slots__ = ("stream", "ssrc", "pt", "seq", "frame", "ext", "rid_left", "plen", "fillers", "video",
                 "ts_step", "next_key", "sent")

    def __init__(self, stream: Stream, check: StreamCheck) -> None:
        self.stream = stream
        self.ssrc = stream.ssrc
        self.pt = stream.pt
        self.seq = 0
        self.frame = 0
        self.ext = rid_extension(stream.rid) if stream.rid else b""
        self.rid_left = RID_PACKETS if stream.rid else 0
        self.plen = check.payload_len
        self.fillers = check.fillers
        self.video = stream.kind == "video"
        clock = 90_000 if self.video else 48_000
        self.ts_step = round(clock * stream.interval_s)
        self.next_key = 0.0  # the first frame is a keyframe
        self.sent = 0

    def write(self, view: memoryview, off: int, index: int, count: int, keyframe: bool, now_ns: int) -> int:
        """Packet ``index`` of ``count`` of the current frame into the slot at ``off``; returns its length."""
        seq = self.seq
        ts = (self.frame * self.ts_step) & 0xFFFFFFFF
        marker = 0x80 if index == count - 1 else 0
        if self.rid_left:
            self.rid_left -= 1
            HEADER.pack_into(view, off, 0x90, self.pt | marker, seq & 0xFFFF, ts, self.ssrc)
            view[off + RTP_HEADER_LEN : off + RTP_HEADER_LEN + EXT_LEN] = self.ext
            at = off + RTP_HEADER_LEN + EXT_LEN
        else:
            HEADER.pack_into(view, off, 0x80, self.pt | marker, seq & 0xFFFF, ts, self.ssrc)
            at = off + RTP_HEADER_LEN
        if self.video:
            view[at] = VP8_START if index == 0 else VP8_CONT
            view[at + 1] = VP8_KEY if keyframe and index == 0 else VP8_INTER
        else:
            view[at] = OPUS_TOC
            view[at + 1] = 0
        STAMP.pack_into(view, at + PREFIX_LEN, MAGIC, self.stream.id, seq, now_ns)
        end = at + self.plen
        view[at + PAYLOAD_AT : end] = self.fillers[seq % FILLER_KINDS]
        self.seq = seq + 1
        self.sent += 1
        return end - off


# -- latency histogram -----------------------------------------------------------------------------

#: bucket upper bounds in ns: 10 us .. ~30 s, 5 % apart; index len(BOUNDS) is "above"
BOUNDS_NS: list[int] = []
_b = 10_000.0
while _b < 30e9:
    BOUNDS_NS.append(int(_b))
    _b *= 1.05
del _b


def bucket(latency_ns: int) -> int:
    return bisect.bisect_left(BOUNDS_NS, latency_ns)


def percentiles_ms(hist: dict[int, int] | list[int]) -> dict[str, float | None]:
    """p50/p99/p999 (ms) from bucket counts: the upper bound of the bucket holding each rank."""
    items = sorted(hist.items()) if isinstance(hist, dict) else [(i, c) for i, c in enumerate(hist) if c]
    total = sum(c for _, c in items)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        if total == 0:
            out[name] = None
            continue
        want = q * total
        seen = 0
        value: float | None = None
        for idx, count in items:
            seen += count
            if seen >= want:
                value = BOUNDS_NS[min(idx, len(BOUNDS_NS) - 1)] / 1e6
                break
        out[name] = None if value is None else round(value, 4)
    return out
