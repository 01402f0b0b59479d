"""Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01).

Two wire formats live here, both pure (no I/O, no clock):

* The RTP header extension: a 2-byte transport-wide sequence number (one-byte form
  ``[id | L=1][seq hi][seq lo]``). ``read_seq``/``write_seq`` work on a packet buffer like the
  hot-path helpers of ``sfu.packet.rtp`` (never raise, never read past ``length``);
  ``seq_element`` gives the ``(id, value)`` pair for ``RtpHeader.extensions``.
* The RTCP transport-cc feedback message (RTPFB, PT 205, FMT 15): ``TransportFeedback`` with
  ``parse()``/``parse_fci()``/``from_transport_cc()`` and ``__bytes__``. ``parse_compound`` in
  ``sfu.packet.rtcp`` keeps producing the opaque ``TransportCC`` (FCI kept raw); decode it with
  ``TransportFeedback.from_transport_cc``.

Model: ``deltas[k]`` is the status of transport seq ``base_seq + k`` (mod 2**16): ``None`` for
"not received", else the receive delta in 250 us ticks, relative to the previous received
packet of the message (the first one: relative to ``reference_time * 64 ms``). Deltas of
0-255 are sent as small (1-byte) deltas, others as large (2-byte signed) ones: -32768-32767.
``reference_time`` is the 24-bit field (64 ms units) as sent, 0..2**24-1: it wraps, and a
consumer tracking several messages unwraps it (``sfu.transport.twcc_send`` does).

Status symbols: 0 not received, 1 small delta, 2 large or negative delta. Symbol 3 is reserved
in -01 (it meant "received, no delta" in -00 and appears in the draft's example 2): a chunk
carrying it decodes with ``decode_chunk``, but a message that uses it for a packet is refused,
as libwebrtc does. Symbols past ``packet status count`` in the last chunk are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple, Self

from sfu.packet.rtcp import TransportCC, parse_compound
from sfu.packet.rtp import get_extension

__all__ = [
    "DELTA_TICK_US",
    "LARGE_DELTA_MAX",
    "LARGE_DELTA_MIN",
    "REFERENCE_TICK_US",
    "TWCC_URI",
    "PacketStatus",
    "TransportFeedback",
    "decode_chunk",
    "encode_chunks",
    "insert_seq",
    "read_seq",
    "size_bound",
    "seq_element",
    "write_seq",
]

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

DELTA_TICK_US = 250
REFERENCE_TICK_US = 64_000
LARGE_DELTA_MIN = -32768
LARGE_DELTA_MAX = 32767
REFERENCE_MOD = 1 << 24

NOT_RECEIVED = 0
SMALL = 1
LARGE = 2
RESERVED = 3

_RUN_MAX = 0x1FFF  # 13-bit run length
_FIXED = struct.Struct("!HHI")  # base seq, status count, reference time (24) | fb count (8)
_FIXED_SIZE = 8
_HEADER_SIZE = 4 + 8  # RTCP header + sender and media SSRCs

Buffer = bytes | bytearray | memoryview


# --------------------------------------------------------------------------- header extension


def read_seq(buf: Buffer, length: int, ext_id: int) -> int:
    """The transport-wide sequence number carried under ``ext_id``, or -1 when the packet is
    malformed, has no such element, or the element is not 2 bytes long."""
    found = get_extension(buf, length, ext_id)
    if found is None or found[1] != 2:
        return -1
    pos = found[0]
    return (buf[pos] << 8) | buf[pos + 1]


def write_seq(buf: bytearray | memoryview, length: int, ext_id: int, seq: int) -> bool:
    """Overwrite the 2-byte transport-wide sequence number under ``ext_id`` in place; False
    (buffer untouched) when there is no such 2-byte element."""
    found = get_extension(buf, length, ext_id)
    if found is None or found[1] != 2:
        return False
    pos = found[0]
    buf[pos] = (seq >> 8) & 0xFF
    buf[pos + 1] = seq & 0xFF
    return True


def insert_seq(buf: bytearray | memoryview, length: int, ext_id: int, seq: int) -> int:
    """Stamp ``seq`` under ``ext_id`` into the well-formed RTP packet ``buf[:length]``, in
    place: the 2-byte element is overwritten when the packet has one, else added (a new one-byte
    block after the CSRCs, or one more 32-bit word at the end of a one-byte or two-byte block,
    RFC 8285 allowing padding between elements), the rest of the packet moved up.  Returns the
    new length, or -1 (the packet as it was) when it is malformed, its block has another
    profile or an element of this id of another size, ``ext_id`` is not 1-14, or the result
    would not fit in ``buf``."""
    if not 1 <= ext_id <= 14 or length < 12 or length > len(buf):
        return -1
    found = get_extension(buf, length, ext_id)
    if found is not None:
        if found[1] != 2:
            return -1
        pos = found[0]
        buf[pos] = (seq >> 8) & 0xFF
        buf[pos + 1] = seq & 0xFF
        return length
    b0 = buf[0]
    if b0 & 0xC0 != 0x80:
        return -1
    start = 12 + (b0 & 0x0F) * 4
    if length + 8 > len(buf) or start > length:
        return -1
    if not b0 & 0x10:  # no block yet: BEDE, one word, the element and a padding byte
        buf[start + 8 : length + 8] = buf[start:length]
        buf[start : start + 8] = bytes((0xBE, 0xDE, 0, 1, (ext_id << 4) | 1, (seq >> 8) & 0xFF, seq & 0xFF, 0))
        buf[0] = b0 | 0x10
        return length + 8
    if start + 4 > length:
        return -1
    profile = (buf[start] << 8) | buf[start + 1]
    words = (buf[start + 2] << 8) | buf[start + 3]
    end = start + 4 + words * 4
    if end > length or words == 0xFFFF:
        return -1
    if profile == 0xBEDE:
        element = bytes(((ext_id << 4) | 1, (seq >> 8) & 0xFF, seq & 0xFF, 0))
    elif profile & 0xFFF0 == 0x1000:
        element = bytes((ext_id, 2, (seq >> 8) & 0xFF, seq & 0xFF))
    else:
        return -1
    buf[end + 4 : length + 4] = buf[end:length]
    buf[end : end + 4] = element
    words += 1
    buf[start + 2] = words >> 8
    buf[start + 3] = words & 0xFF
    return length + 4


def seq_element(ext_id: int, seq: int) -> tuple[int, bytes]:
    """The ``(id, value)`` header extension element for ``RtpHeader.extensions``."""
    if not 1 <= ext_id <= 14:
        raise ValueError(f"transport-wide cc extension id {ext_id} out of the one-byte range 1-14")
    return ext_id, struct.pack("!H", seq & 0xFFFF)


# --------------------------------------------------------------------------- packet chunks


def decode_chunk(chunk: int) -> list[int]:
    """The status symbols of one 16-bit packet chunk (run length: the whole run; vectors: all
    14 or 7 symbols, the caller ignores those past the status count)."""
    if not 0 <= chunk <= 0xFFFF:
        raise ValueError(f"packet chunk {chunk} is not a 16-bit value")
    if not chunk & 0x8000:
        return [(chunk >> 13) & 0x3] * (chunk & _RUN_MAX)
    if not chunk & 0x4000:
        return [(chunk >> (13 - k)) & 0x1 for k in range(14)]
    return [(chunk >> (12 - 2 * k)) & 0x3 for k in range(7)]


def _symbol(delta: int | None) -> int:
    if delta is None:
        return NOT_RECEIVED
    if 0 <= delta <= 255:
        return SMALL
    if LARGE_DELTA_MIN <= delta <= LARGE_DELTA_MAX:
        return LARGE
    raise ValueError(
        f"receive delta of {delta} ticks does not fit a large delta ({LARGE_DELTA_MIN}-{LARGE_DELTA_MAX})"
    )


def encode_chunks(symbols: list[int]) -> list[int]:
    """Packet chunks for ``symbols`` (0-2): a run length chunk for a run of 7 or more (or for
    the tail when it is one run), else a one-bit vector of 14 when none of them is a large
    delta, else a two-bit vector of 7. Every chunk but the last covers at least 7 symbols, so
    the chunks take at most ``2 * ceil(n / 7)`` bytes."""
    chunks: list[int] = []
    n = len(symbols)
    i = 0
    while i < n:
        s = symbols[i]
        run = 1
        while i + run < n and run < _RUN_MAX and symbols[i + run] == s:
            run += 1
        if run >= 7 or i + run == n:
            chunks.append((s << 13) | run)
            i += run
            continue
        part = symbols[i : i + 14]
        if LARGE not in part:
            chunk = 0x8000
            for k, sym in enumerate(part):
                chunk |= sym << (13 - k)
            chunks.append(chunk)
            i += len(part)
            continue
        part = symbols[i : i + 7]
        chunk = 0xC000
        for k, sym in enumerate(part):
            chunk |= sym << (12 - 2 * k)
        chunks.append(chunk)
        i += len(part)
    return chunks


def size_bound(count: int, delta_bytes: int) -> int:
    """An upper bound of the RTCP size of a message with ``count`` statuses whose receive
    deltas take ``delta_bytes`` bytes (what ``encode_chunks`` can produce, padded to 32 bits)."""
    size = _HEADER_SIZE + _FIXED_SIZE + 2 * (-(-count // 7)) + delta_bytes
    return size + (-size % 4)


# --------------------------------------------------------------------------- feedback message


class PacketStatus(NamedTuple):
    """One packet of a feedback message. ``arrival_us`` is absolute on the receiver's clock
    (``reference time * 64 ms`` plus the deltas up to this packet), ``None`` when lost."""

    seq: int
    received: bool
    arrival_us: int | None


@dataclass(slots=True)
class TransportFeedback:
    """Transport-cc feedback (RTPFB fmt 15). See the module docstring for the model."""

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int
    fb_count: int
    deltas: list[int | None] = field(default_factory=list)

    @property
    def status_count(self) -> int:
        return len(self.deltas)

    # ----------------------------------------------------------------------- parsing

    @classmethod
    def parse(cls, data: Buffer, *, max_count: int = 0xFFFF) -> Self:
        """Parse one RTCP transport-cc packet (a compound of exactly that packet)."""
        packets = parse_compound(data)
        if len(packets) != 1 or not isinstance(packets[0], TransportCC):
            kinds = ", ".join(type(p).__name__ for p in packets)
            raise ValueError(f"expected one RTCP transport-cc packet, got {kinds}")
        return cls.from_transport_cc(packets[0], max_count=max_count)

    @classmethod
    def from_transport_cc(cls, packet: TransportCC, *, max_count: int = 0xFFFF) -> Self:
        """Decode the opaque ``TransportCC`` that ``parse_compound`` produces."""
        return cls.parse_fci(packet.sender_ssrc, packet.media_ssrc, packet.fci, max_count=max_count)

    @classmethod
    def parse_fci(cls, sender_ssrc: int, media_ssrc: int, fci: Buffer, *, max_count: int = 0xFFFF) -> Self:
        """Decode an FCI. ``max_count`` refuses a message with more statuses (a 20-byte message
        can claim 65,535: a receiver of untrusted feedback passes what it can have sent).
        Runs are decoded in bulk, so the work is proportional to the message's size."""
        n = len(fci)
        if n < _FIXED_SIZE:
            raise ValueError(f"transport-cc FCI of {n} bytes is shorter than its {_FIXED_SIZE}-byte header")
        base, count, word = _FIXED.unpack_from(fci, 0)
        if count == 0:
            raise ValueError("transport-cc packet status count is 0")
        if count > max_count:
            raise ValueError(f"transport-cc packet status count {count} is over the limit of {max_count}")
        chunks: list[int] = []
        covered = 0
        pos = _FIXED_SIZE
        while covered < count:
            if pos + 2 > n:
                raise ValueError(
                    f"transport-cc packet chunks end at byte {n} after {covered} of {count} statuses"
                )
            chunk = (fci[pos] << 8) | fci[pos + 1]
            if not chunk & 0x8000:
                if chunk & _RUN_MAX == 0:
                    raise ValueError(f"transport-cc run length chunk at byte {pos} has a run of 0")
                covered += chunk & _RUN_MAX
            else:
                covered += 7 if chunk & 0x4000 else 14
            chunks.append(chunk)
            pos += 2
        deltas: list[int | None] = []
        k = 0  # statuses decoded
        for chunk in chunks:
            if chunk & 0x8000:
                for sym in decode_chunk(chunk)[: count - k]:
                    if sym == NOT_RECEIVED:
                        deltas.append(None)
                    elif sym == SMALL:
                        if pos + 1 > n:
                            raise ValueError(
                                f"transport-cc small delta of status {k} overruns the {n}-byte FCI"
                            )
                        deltas.append(fci[pos])
                        pos += 1
                    elif sym == LARGE:
                        if pos + 2 > n:
                            raise ValueError(
                                f"transport-cc large delta of status {k} overruns the {n}-byte FCI"
                            )
                        deltas.append(int.from_bytes(fci[pos : pos + 2], "big", signed=True))
                        pos += 2
                    else:
                        raise ValueError(f"transport-cc status {k} uses the reserved symbol 3")
                    k += 1
                continue
            sym = (chunk >> 13) & 0x3
            run = min(chunk & _RUN_MAX, count - k)
            if sym == NOT_RECEIVED:
                deltas.extend([None] * run)
            elif sym == SMALL:
                if pos + run > n:
                    raise ValueError(
                        f"transport-cc small delta of status {k + n - pos} overruns the {n}-byte FCI"
                    )
                deltas.extend(fci[pos : pos + run])
                pos += run
            elif sym == LARGE:
                if pos + 2 * run > n:
                    raise ValueError(
                        f"transport-cc large delta of status {k + (n - pos) // 2} overruns the {n}-byte FCI"
                    )
                deltas.extend(struct.unpack_from(f"!{run}h", fci, pos))
                pos += 2 * run
            else:
                raise ValueError(f"transport-cc status {k} uses the reserved symbol 3")
            k += run
        if n - pos > 3:
            raise ValueError(
                f"transport-cc FCI has {n - pos} bytes after its receive deltas (padding is 0-3)"
            )
        return cls(sender_ssrc, media_ssrc, base, word >> 8, word & 0xFF, deltas)

    # ----------------------------------------------------------------------- building

    def fci(self) -> bytes:
        count = len(self.deltas)
        if not 1 <= count <= 0xFFFF:
            raise ValueError(f"transport-cc packet status count {count} out of range 1-65535")
        if not 0 <= self.base_seq <= 0xFFFF:
            raise ValueError(f"transport-cc base sequence number {self.base_seq} out of range 0-65535")
        if not 0 <= self.reference_time < REFERENCE_MOD:
            raise ValueError(
                f"transport-cc reference time {self.reference_time} out of range 0-{REFERENCE_MOD - 1}"
            )
        if not 0 <= self.fb_count <= 255:
            raise ValueError(f"transport-cc feedback packet count {self.fb_count} out of range 0-255")
        deltas = self.deltas
        symbols = [NOT_RECEIVED if d is None else SMALL if 0 <= d <= 255 else LARGE for d in deltas]
        out = bytearray(_FIXED.pack(self.base_seq, count, (self.reference_time << 8) | self.fb_count))
        chunks = encode_chunks(symbols)
        out += struct.pack(f"!{len(chunks)}H", *chunks)
        if LARGE not in symbols:  # all small: one byte each, in one go
            out += bytes([d for d in deltas if d is not None])
        else:
            for delta in deltas:
                if delta is None:
                    continue
                if 0 <= delta <= 255:
                    out.append(delta)
                else:
                    _symbol(delta)  # raises when it does not fit a large delta
                    out += struct.pack("!h", delta)
        out += bytes(-len(out) % 4)  # zero padding to 32 bits
        return bytes(out)

    def to_transport_cc(self) -> TransportCC:
        return TransportCC(self.sender_ssrc, self.media_ssrc, self.fci())

    def __bytes__(self) -> bytes:
        return bytes(self.to_transport_cc())

    # ----------------------------------------------------------------------- reading

    def statuses(self, reference_us: int | None = None) -> list[PacketStatus]:
        """Every packet of the message in sequence order: ``(seq, received, arrival_us)``.
        ``reference_us`` replaces ``reference_time * 64 ms`` (for a caller that unwrapped it)."""
        t = self.reference_time * REFERENCE_TICK_US if reference_us is None else reference_us
        out: list[PacketStatus] = []
        base = self.base_seq
        for k, delta in enumerate(self.deltas):
            seq = (base + k) & 0xFFFF
            if delta is None:
                out.append(PacketStatus(seq, False, None))
            else:
                t += delta * DELTA_TICK_US
                out.append(PacketStatus(seq, True, t))
        return out
