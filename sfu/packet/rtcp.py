"""Compound RTCP (RFC 3550, 4585, 5104, draft-alvestrand-rmcat-remb) parsing and building.

``parse_compound(data)`` splits a compound packet into dataclasses, each with ``__bytes__``:
``SenderReport``, ``ReceiverReport`` (with ``ReportBlock``), ``Sdes``, ``Bye``, ``Nack``
(RTPFB 1), ``TransportCC`` (RTPFB 15, FCI kept raw: ``sfu.packet.twcc.TransportFeedback.from_transport_cc``
decodes it), ``Pli`` (PSFB 1), ``Fir`` (PSFB 4), ``Remb``
(PSFB 15 "REMB"), ``Feedback`` (any other RTPFB/PSFB format) and ``UnknownRtcp`` (APP, XR and
anything else, body kept raw). Malformations raise ``ValueError`` with a precise message.
Padding (P bit) is accepted on input and stripped; ``__bytes__`` never adds any.

RTCP is low-rate, so parsing allocates. The one buffer helper for the forwarding path is
``rewrite_sr_in_place``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from sfu.packet.seq import seq_diff

__all__ = [
    "BYE",
    "PSFB",
    "RR",
    "RTPFB",
    "SDES",
    "SR",
    "Bye",
    "Feedback",
    "Fir",
    "FirEntry",
    "Nack",
    "Pli",
    "Remb",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "Sdes",
    "SdesChunk",
    "SenderReport",
    "TransportCC",
    "UnknownRtcp",
    "bye",
    "compound",
    "dlsr_from_ms",
    "find_packet",
    "fir",
    "nack",
    "ntp_from_ms",
    "ntp_middle",
    "ntp_to_ms",
    "nack_pairs",
    "parse_compound",
    "pli",
    "receiver_report",
    "remb",
    "rewrite_sr_in_place",
    "rtt_ms",
    "sdes_cname",
    "sender_report",
]

SR = 200
RR = 201
SDES = 202
BYE = 203
APP = 204
RTPFB = 205
PSFB = 206
XR = 207

RTPFB_NACK = 1
RTPFB_TWCC = 15
PSFB_PLI = 1
PSFB_FIR = 4
PSFB_AFB = 15  # application layer feedback; REMB is one

SDES_CNAME = 1

_HDR = struct.Struct("!BBH")
_II = struct.Struct("!II")
_SR_INFO = struct.Struct("!IQIII")  # sender ssrc, ntp, rtp ts, packet count, octet count
_BLOCK = struct.Struct("!IB3sIIII")
_HH = struct.Struct("!HH")

NTP_EPOCH_OFFSET_S = 2208988800  # 1900-01-01 to 1970-01-01


def _header(packet_type: int, count: int, body_len: int) -> bytes:
    if body_len % 4:
        raise ValueError(f"RTCP body of {body_len} bytes is not 32-bit aligned")
    if not 0 <= count <= 31:
        raise ValueError(f"RTCP count/format {count} out of range 0-31")
    words = body_len // 4
    if words > 0xFFFF:
        raise ValueError(f"RTCP packet of {body_len} bytes is too long")
    return _HDR.pack(0x80 | count, packet_type, words)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


# --------------------------------------------------------------------------- report blocks


@dataclass(slots=True)
class ReportBlock:
    """A reception report block. ``cumulative_lost`` is signed 24-bit (duplicates can make it
    negative); ``highest_seq`` is the extended highest sequence number; ``lsr``/``dlsr`` are
    the middle 32 bits of the last SR's NTP time and the delay since, in 1/65536 s."""

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_seq: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    SIZE: ClassVar[int] = 24

    @classmethod
    def parse_from(cls, data: bytes | memoryview, offset: int) -> Self:
        if offset + cls.SIZE > len(data):
            raise ValueError(f"RTCP report block at {offset} overruns the {len(data)}-byte packet")
        ssrc, fraction, lost3, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        lost = int.from_bytes(lost3, "big")
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError(f"fraction lost {self.fraction_lost} out of range 0-255")
        lost = min(max(self.cumulative_lost, -0x800000), 0x7FFFFF) & 0xFFFFFF
        return _BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            lost.to_bytes(3, "big"),
            self.highest_seq & 0xFFFFFFFF,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _parse_blocks(body: bytes, offset: int, count: int, what: str) -> list[ReportBlock]:
    need = offset + count * ReportBlock.SIZE
    if need > len(body):
        raise ValueError(f"RTCP {what} with {count} report blocks needs {need} bytes, has {len(body)}")
    return [ReportBlock.parse_from(body, offset + k * ReportBlock.SIZE) for k in range(count)]


def _pack_blocks(reports: Sequence[ReportBlock]) -> bytes:
    if len(reports) > 31:
        raise ValueError(f"an RTCP report carries at most 31 report blocks, got {len(reports)}")
    return b"".join(bytes(r) for r in reports)


@dataclass(slots=True)
class SenderReport:
    """SR (PT 200). ``ntp_timestamp`` is the 64-bit NTP time as one int."""

    ssrc: int
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""  # profile-specific extension after the blocks

    PACKET_TYPE: ClassVar[int] = SR

    @classmethod
    def parse_body(cls, body: bytes, count: int) -> Self:
        if len(body) < _SR_INFO.size:
            raise ValueError(
                f"RTCP SR body of {len(body)} bytes is shorter than the {_SR_INFO.size}-byte sender info"
            )
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body, 0)
        reports = _parse_blocks(body, _SR_INFO.size, count, "SR")
        ext = body[_SR_INFO.size + count * ReportBlock.SIZE :]
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports, bytes(ext))

    def __bytes__(self) -> bytes:
        body = (
            _SR_INFO.pack(
                self.ssrc,
                self.ntp_timestamp,
                self.rtp_timestamp & 0xFFFFFFFF,
                self.packet_count & 0xFFFFFFFF,
                self.octet_count & 0xFFFFFFFF,
            )
            + _pack_blocks(self.reports)
            + self.extension
        )
        return _header(SR, len(self.reports), len(body)) + body


@dataclass(slots=True)
class ReceiverReport:
    """RR (PT 201)."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""

    PACKET_TYPE: ClassVar[int] = RR

    @classmethod
    def parse_body(cls, body: bytes, count: int) -> Self:
        if len(body) < 4:
            raise ValueError(f"RTCP RR body of {len(body)} bytes has no sender SSRC")
        (ssrc,) = struct.unpack_from("!I", body, 0)
        reports = _parse_blocks(body, 4, count, "RR")
        return cls(ssrc, reports, bytes(body[4 + count * ReportBlock.SIZE :]))

    def __bytes__(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + _pack_blocks(self.reports) + self.extension
        return _header(RR, len(self.reports), len(body)) + body


# --------------------------------------------------------------------------- SDES, BYE


@dataclass(slots=True)
class SdesChunk:
    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class Sdes:
    """SDES (PT 202): chunks of (type, value) items; type 1 is CNAME."""

    chunks: list[SdesChunk] = field(default_factory=list)

    PACKET_TYPE: ClassVar[int] = SDES

    @classmethod
    def parse_body(cls, body: bytes, count: int) -> Self:
        chunks: list[SdesChunk] = []
        pos = 0
        n = len(body)
        for k in range(count):
            if pos + 4 > n:
                raise ValueError(f"RTCP SDES chunk {k} at {pos} overruns the {n}-byte body")
            (ssrc,) = struct.unpack_from("!I", body, pos)
            pos += 4
            items: list[tuple[int, bytes]] = []
            while True:
                if pos >= n:
                    raise ValueError(f"RTCP SDES chunk {k} has no terminating null item")
                item_type = body[pos]
                if item_type == 0:
                    pos += 1
                    pos += -pos % 4  # the chunk ends on a 32-bit boundary
                    break
                if pos + 2 > n:
                    raise ValueError(f"RTCP SDES item at {pos} has no length byte")
                size = body[pos + 1]
                if pos + 2 + size > n:
                    raise ValueError(
                        f"RTCP SDES item of {size} bytes at {pos + 2} overruns the {n}-byte body"
                    )
                items.append((item_type, bytes(body[pos + 2 : pos + 2 + size])))
                pos += 2 + size
            if pos > n:
                raise ValueError(f"RTCP SDES chunk {k} padding overruns the {n}-byte body")
            chunks.append(SdesChunk(ssrc, items))
        return cls(chunks)

    def __bytes__(self) -> bytes:
        body = bytearray()
        for chunk in self.chunks:
            part = bytearray(struct.pack("!I", chunk.ssrc))
            for item_type, value in chunk.items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise ValueError(f"SDES item type {item_type} with {len(value)} bytes is invalid")
                part += bytes([item_type, len(value)]) + value
            part.append(0)  # end of items, then pad to 32 bits
            body += _pad4(bytes(part))
        return _header(SDES, len(self.chunks), len(body)) + bytes(body)

    def cname(self, ssrc: int) -> str | None:
        for chunk in self.chunks:
            if chunk.ssrc == ssrc:
                return chunk.cname
        return None


@dataclass(slots=True)
class Bye:
    """BYE (PT 203) with an optional reason."""

    sources: list[int] = field(default_factory=list)
    reason: bytes = b""

    PACKET_TYPE: ClassVar[int] = BYE

    @classmethod
    def parse_body(cls, body: bytes, count: int) -> Self:
        end = 4 * count
        if end > len(body):
            raise ValueError(f"RTCP BYE with {count} sources needs {end} bytes, has {len(body)}")
        sources = list(struct.unpack_from(f"!{count}I", body, 0))
        reason = b""
        if end < len(body):
            size = body[end]
            if end + 1 + size > len(body):
                raise ValueError(f"RTCP BYE reason of {size} bytes overruns the {len(body)}-byte body")
            reason = bytes(body[end + 1 : end + 1 + size])
        return cls(sources, reason)

    def __bytes__(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.sources)
        if self.reason:
            if len(self.reason) > 255:
                raise ValueError(f"BYE reason of {len(self.reason)} bytes is longer than 255")
            body += _pad4(bytes([len(self.reason)]) + self.reason)
        return _header(BYE, len(self.sources), len(body)) + body


# --------------------------------------------------------------------------- feedback


def _fb_ssrcs(body: bytes, what: str) -> tuple[int, int]:
    if len(body) < 8:
        raise ValueError(f"RTCP {what} body of {len(body)} bytes is shorter than its 8 bytes of SSRCs")
    sender, media = _II.unpack_from(body, 0)
    return int(sender), int(media)


def _fb_bytes(packet_type: int, fmt: int, sender: int, media: int, fci: bytes) -> bytes:
    body = _II.pack(sender, media) + fci
    return _header(packet_type, fmt, len(body)) + body


def nack_pairs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Encode sequence numbers as (PID, BLP) pairs, wrap-aware, duplicates merged."""
    unique = list(dict.fromkeys(s & 0xFFFF for s in seqs))
    if not unique:
        return []
    first = unique[0]
    unique.sort(key=lambda s: seq_diff(s, first))
    pairs: list[tuple[int, int]] = []
    pid = unique[0]
    blp = 0
    for s in unique[1:]:
        d = ((s - pid) & 0xFFFF) - 1
        if d < 16:
            blp |= 1 << d
        else:
            pairs.append((pid, blp))
            pid = s
            blp = 0
    pairs.append((pid, blp))
    return pairs


@dataclass(slots=True)
class Nack:
    """Generic NACK (RTPFB fmt 1). ``seqs`` lists every lost sequence number."""

    sender_ssrc: int
    media_ssrc: int
    seqs: list[int] = field(default_factory=list)

    PACKET_TYPE: ClassVar[int] = RTPFB
    FMT: ClassVar[int] = RTPFB_NACK

    @classmethod
    def parse_body(cls, body: bytes, fmt: int) -> Self:
        sender, media = _fb_ssrcs(body, "NACK")
        if (len(body) - 8) % 4:
            raise ValueError(
                f"RTCP NACK FCI of {len(body) - 8} bytes is not a whole number of 4-byte entries"
            )
        seqs: list[int] = []
        for pos in range(8, len(body), 4):
            pid, blp = _HH.unpack_from(body, pos)
            seqs.append(pid)
            for bit in range(16):
                if blp >> bit & 1:
                    seqs.append((pid + bit + 1) & 0xFFFF)
        return cls(sender, media, seqs)

    def __bytes__(self) -> bytes:
        fci = b"".join(_HH.pack(pid, blp) for pid, blp in nack_pairs(self.seqs))
        return _fb_bytes(RTPFB, RTPFB_NACK, self.sender_ssrc, self.media_ssrc, fci)


@dataclass(slots=True)
class TransportCC:
    """Transport-wide congestion control feedback (RTPFB fmt 15); the FCI is kept raw
    (``sfu.packet.twcc.TransportFeedback`` decodes and builds it)."""

    sender_ssrc: int
    media_ssrc: int
    fci: bytes = b""

    PACKET_TYPE: ClassVar[int] = RTPFB
    FMT: ClassVar[int] = RTPFB_TWCC

    @classmethod
    def parse_body(cls, body: bytes, fmt: int) -> Self:
        sender, media = _fb_ssrcs(body, "transport-cc")
        return cls(sender, media, bytes(body[8:]))

    def __bytes__(self) -> bytes:
        return _fb_bytes(RTPFB, RTPFB_TWCC, self.sender_ssrc, self.media_ssrc, self.fci)


@dataclass(slots=True)
class Pli:
    """Picture loss indication (PSFB fmt 1)."""

    sender_ssrc: int
    media_ssrc: int

    PACKET_TYPE: ClassVar[int] = PSFB
    FMT: ClassVar[int] = PSFB_PLI

    @classmethod
    def parse_body(cls, body: bytes, fmt: int) -> Self:
        sender, media = _fb_ssrcs(body, "PLI")
        return cls(sender, media)

    def __bytes__(self) -> bytes:
        return _fb_bytes(PSFB, PSFB_PLI, self.sender_ssrc, self.media_ssrc, b"")


@dataclass(slots=True)
class FirEntry:
    ssrc: int
    seq_nr: int


@dataclass(slots=True)
class Fir:
    """Full intra request (PSFB fmt 4, RFC 5104): one (SSRC, command seq nr) entry per target."""

    sender_ssrc: int
    entries: list[FirEntry] = field(default_factory=list)
    media_ssrc: int = 0  # "SHALL be set to 0" by RFC 5104; kept for round trips

    PACKET_TYPE: ClassVar[int] = PSFB
    FMT: ClassVar[int] = PSFB_FIR

    @classmethod
    def parse_body(cls, body: bytes, fmt: int) -> Self:
        sender, media = _fb_ssrcs(body, "FIR")
        if (len(body) - 8) % 8:
            raise ValueError(f"RTCP FIR FCI of {len(body) - 8} bytes is not a whole number of 8-byte entries")
        entries = []
        for pos in range(8, len(body), 8):
            ssrc, word = _II.unpack_from(body, pos)
            entries.append(FirEntry(ssrc, word >> 24))
        return cls(sender, entries, media)

    def __bytes__(self) -> bytes:
        fci = b"".join(_II.pack(e.ssrc, (e.seq_nr & 0xFF) << 24) for e in self.entries)
        return _fb_bytes(PSFB, PSFB_FIR, self.sender_ssrc, self.media_ssrc, fci)


@dataclass(slots=True)
class Remb:
    """Receiver estimated maximum bitrate (PSFB fmt 15 with the "REMB" identifier)."""

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int] = field(default_factory=list)
    media_ssrc: int = 0

    PACKET_TYPE: ClassVar[int] = PSFB
    FMT: ClassVar[int] = PSFB_AFB

    @classmethod
    def parse_body(cls, body: bytes, fmt: int) -> Self:
        sender, media = _fb_ssrcs(body, "REMB")
        if len(body) < 16 or body[8:12] != b"REMB":
            raise ValueError("RTCP PSFB fmt 15 body is not a REMB message")
        num = body[12]
        exp = body[13] >> 2
        mantissa = ((body[13] & 0x03) << 16) | (body[14] << 8) | body[15]
        need = 16 + 4 * num
        if need > len(body):
            raise ValueError(f"RTCP REMB with {num} SSRCs needs {need} bytes, has {len(body)}")
        ssrcs = list(struct.unpack_from(f"!{num}I", body, 16))
        return cls(sender, mantissa << exp, ssrcs, media)

    def __bytes__(self) -> bytes:
        if self.bitrate < 0:
            raise ValueError(f"REMB bitrate {self.bitrate} is negative")
        if len(self.ssrcs) > 255:
            raise ValueError(f"REMB carries at most 255 SSRCs, got {len(self.ssrcs)}")
        mantissa = self.bitrate
        exp = 0
        while mantissa > 0x3FFFF:
            mantissa >>= 1
            exp += 1
        if exp > 63:
            raise ValueError(f"REMB bitrate {self.bitrate} is too large")
        fci = (
            b"REMB"
            + bytes([len(self.ssrcs), (exp << 2) | (mantissa >> 16), (mantissa >> 8) & 0xFF, mantissa & 0xFF])
            + b"".join(struct.pack("!I", s) for s in self.ssrcs)
        )
        return _fb_bytes(PSFB, PSFB_AFB, self.sender_ssrc, self.media_ssrc, fci)


@dataclass(slots=True)
class Feedback:
    """An RTPFB/PSFB message of a format not decoded here (e.g. SLI, RPSI, TMMBR)."""

    packet_type: int
    fmt: int
    sender_ssrc: int
    media_ssrc: int
    fci: bytes = b""

    def __bytes__(self) -> bytes:
        return _fb_bytes(self.packet_type, self.fmt, self.sender_ssrc, self.media_ssrc, self.fci)


@dataclass(slots=True)
class UnknownRtcp:
    """Any other packet type (APP, XR, ...): the body after the 4-byte header, kept raw."""

    packet_type: int
    count: int
    body: bytes = b""

    def __bytes__(self) -> bytes:
        return _header(self.packet_type, self.count, len(self.body)) + self.body


RtcpPacket = (
    SenderReport
    | ReceiverReport
    | Sdes
    | Bye
    | Nack
    | TransportCC
    | Pli
    | Fir
    | Remb
    | Feedback
    | UnknownRtcp
)


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == SR:
        return SenderReport.parse_body(body, count)
    if packet_type == RR:
        return ReceiverReport.parse_body(body, count)
    if packet_type == SDES:
        return Sdes.parse_body(body, count)
    if packet_type == BYE:
        return Bye.parse_body(body, count)
    if packet_type == RTPFB:
        if count == RTPFB_NACK:
            return Nack.parse_body(body, count)
        if count == RTPFB_TWCC:
            return TransportCC.parse_body(body, count)
    elif packet_type == PSFB:
        if count == PSFB_PLI:
            return Pli.parse_body(body, count)
        if count == PSFB_FIR:
            return Fir.parse_body(body, count)
        if count == PSFB_AFB and body[8:12] == b"REMB":
            return Remb.parse_body(body, count)
    else:
        return UnknownRtcp(packet_type, count, body)
    sender, media = _fb_ssrcs(body, f"feedback {packet_type}/{count}")
    return Feedback(packet_type, count, sender, media, bytes(body[8:]))


def parse_compound(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Parse a (compound) RTCP packet. Raises ``ValueError`` on any truncation or mismatch."""
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise ValueError("RTCP compound packet is empty")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < n:
        if pos + 4 > n:
            raise ValueError(f"RTCP header at {pos} overruns the {n}-byte compound packet")
        b0, packet_type, words = _HDR.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise ValueError(f"RTCP version must be 2, got {b0 >> 6} (packet at {pos})")
        end = pos + 4 + 4 * words
        if end > n:
            raise ValueError(
                f"RTCP packet type {packet_type} at {pos} declares {4 + 4 * words} bytes, "
                f"only {n - pos} remain"
            )
        body = data[pos + 4 : end]
        if b0 & 0x20:
            pad = body[-1] if body else 0
            if pad == 0 or pad > len(body):
                raise ValueError(
                    f"RTCP padding of {pad} bytes is invalid in the {len(body)}-byte body at {pos}"
                )
            body = body[: len(body) - pad]
        packets.append(_parse_one(packet_type, b0 & 0x1F, body))
        pos = end
    return packets


def compound(packets: Iterable[RtcpPacket]) -> bytes:
    """Serialize packets into one compound packet."""
    return b"".join(bytes(p) for p in packets)


# --------------------------------------------------------------------------- builders


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return bytes(Pli(sender_ssrc, media_ssrc))


def fir(sender_ssrc: int, media_ssrc: int, seq: int) -> bytes:
    return bytes(Fir(sender_ssrc, [FirEntry(media_ssrc, seq & 0xFF)]))


def nack(sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> bytes:
    return bytes(Nack(sender_ssrc, media_ssrc, list(seqs)))


def receiver_report(ssrc: int, reports: Sequence[ReportBlock] = ()) -> bytes:
    return bytes(ReceiverReport(ssrc, list(reports)))


def sender_report(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    return bytes(SenderReport(ssrc, ntp_timestamp, rtp_timestamp, packet_count, octet_count, list(reports)))


def remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    return bytes(Remb(sender_ssrc, bitrate, list(ssrcs)))


def sdes_cname(ssrc: int, cname: str) -> bytes:
    return bytes(Sdes([SdesChunk(ssrc, [(SDES_CNAME, cname.encode())])]))


def bye(sources: Sequence[int], reason: bytes = b"") -> bytes:
    return bytes(Bye(list(sources), reason))


# --------------------------------------------------------------------------- buffer helpers


def find_packet(buf: bytes | bytearray | memoryview, length: int, packet_type: int, start: int = 0) -> int:
    """Offset of the first packet of ``packet_type`` at or after ``start`` in the compound
    ``buf[:length]``, or -1 (also when a header is malformed or overruns ``length``)."""
    if length > len(buf):
        return -1
    pos = start
    while pos + 4 <= length:
        if buf[pos] >> 6 != 2:
            return -1
        end = pos + 4 + 4 * ((buf[pos + 2] << 8) | buf[pos + 3])
        if end > length:
            return -1
        if buf[pos + 1] == packet_type:
            return pos
        pos = end
    return -1


def rewrite_sr_in_place(
    buf: bytearray | memoryview,
    offset: int,
    length: int,
    *,
    ssrc: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    drop_reports: bool = True,
) -> int:
    """Rewrite the SR at ``buf[offset:]`` for a subscriber: new SSRC, RTP timestamp and counts;
    the NTP timestamp is kept. ``length`` bounds the valid data in ``buf``.

    With ``drop_reports`` (the publisher's report blocks describe what *it* receives and mean
    nothing to a subscriber) the count is set to 0, the length to 28 bytes and the P bit cleared:
    the SR is then ``buf[offset:offset + 28]``. Returns the SR's new size, or -1 when there is no
    well-formed SR at ``offset``.
    """
    if offset < 0 or length > len(buf) or offset + 28 > length:
        return -1
    b0 = buf[offset]
    if b0 >> 6 != 2 or buf[offset + 1] != SR:
        return -1
    size = 4 + 4 * ((buf[offset + 2] << 8) | buf[offset + 3])
    if size < 28 or offset + size > length:
        return -1
    struct.pack_into("!I", buf, offset + 4, ssrc & 0xFFFFFFFF)
    struct.pack_into(
        "!III",
        buf,
        offset + 16,
        rtp_timestamp & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,
    )
    if not drop_reports:
        return size
    _HDR.pack_into(buf, offset, 0x80, SR, 6)
    return 28


# --------------------------------------------------------------------------- NTP time


def ntp_from_ms(unix_ms: int) -> int:
    """64-bit NTP timestamp for a Unix time in milliseconds."""
    seconds, ms = divmod(unix_ms, 1000)
    return ((seconds + NTP_EPOCH_OFFSET_S) << 32) | ((ms << 32) // 1000)


def ntp_to_ms(ntp: int) -> int:
    """Unix time in milliseconds (rounded down) of a 64-bit NTP timestamp."""
    return ((ntp >> 32) - NTP_EPOCH_OFFSET_S) * 1000 + ((ntp & 0xFFFFFFFF) * 1000 >> 32)


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as carried in LSR."""
    return (ntp >> 16) & 0xFFFFFFFF


def dlsr_from_ms(delay_ms: int) -> int:
    """A delay in milliseconds in DLSR units (1/65536 s)."""
    return (delay_ms * 65536 // 1000) & 0xFFFFFFFF


def rtt_ms(now_ntp_middle: int, lsr: int, dlsr: int) -> int:
    """Round trip time from a report block (RFC 3550 6.4.1); 0 when no SR was reported."""
    if lsr == 0:
        return 0
    rtt = (now_ntp_middle - lsr - dlsr) & 0xFFFFFFFF
    if rtt >= 1 << 31:
        return 0
    return rtt * 1000 >> 16
