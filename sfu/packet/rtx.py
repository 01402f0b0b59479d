"""RTX (RFC 4588): a retransmission turned back into the packet it repairs, in place.

An RTX packet travels on its own SSRC with its own sequence numbers and payload type; its payload
is the original sequence number (OSN, two bytes) followed by the original payload.  ``unwrap_rtx``
restores the original header: sequence number from the OSN, payload type from the RTX payload
type's ``apt=``, the primary SSRC; timestamp, marker, CSRCs and header extensions are the RTX
packet's (the sender copies them from the original).  A padding-only RTX packet (bandwidth
probing: no OSN, nothing to restore) is reported as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from struct import Struct

from sfu.packet.rtp import header_length

__all__ = ["RTX_OFFSET", "RtxOutcome", "apt_table", "unwrap_rtx"]

#: where the restored packet starts in the buffer: its header moves right by the OSN's two bytes
RTX_OFFSET = 2
_NO_APT = -1
_SEQ = Struct("!H")
_SSRC = Struct("!I")


class RtxOutcome(IntEnum):
    """Why ``unwrap_rtx`` restored nothing (all negative, unlike an offset)."""

    PADDING_ONLY = -1  # no payload but padding: a probe
    MALFORMED = -2  # bad header or padding, or a payload shorter than the OSN
    UNKNOWN_PT = -3  # a payload type with no apt= mapping


def apt_table(rtx_apt: dict[int, int]) -> list[int]:
    """RTX payload type -> the payload type it repairs, as a 128-entry table (-1: none)."""
    table = [_NO_APT] * 128
    for rtx_pt, apt in rtx_apt.items():
        if not (0 <= rtx_pt < 128 and 0 <= apt < 128):
            raise ValueError(f"RTX payload type {rtx_pt} apt={apt}: payload types are 0-127")
        table[rtx_pt] = apt
    return table


def unwrap_rtx(buf: bytearray | memoryview, length: int, apt: Sequence[int], ssrc: int) -> int:
    """Rewrite the RTX packet in ``buf[:length]`` into its original packet, which then is
    ``buf[RTX_OFFSET:length]``; returns ``RTX_OFFSET``, or a negative ``RtxOutcome`` with ``buf``
    unchanged.  ``apt``: ``apt_table``; ``ssrc``: the primary stream's SSRC."""
    start = header_length(buf, length)
    if start < 0:
        return RtxOutcome.MALFORMED
    pad = 0
    if buf[0] & 0x20:
        pad = buf[length - 1]
        if pad == 0 or pad > length - start:
            return RtxOutcome.MALFORMED
    body = length - start - pad
    if body == 0:
        return RtxOutcome.PADDING_ONLY
    if body < 2:
        return RtxOutcome.MALFORMED
    pt = apt[buf[1] & 0x7F]
    if pt == _NO_APT:
        return RtxOutcome.UNKNOWN_PT
    osn = (buf[start] << 8) | buf[start + 1]
    buf[RTX_OFFSET : start + RTX_OFFSET] = bytes(buf[:start])  # the header over the OSN
    buf[RTX_OFFSET + 1] = (buf[RTX_OFFSET + 1] & 0x80) | pt
    _SEQ.pack_into(buf, RTX_OFFSET + 2, osn)
    _SSRC.pack_into(buf, RTX_OFFSET + 8, ssrc & 0xFFFFFFFF)
    return RTX_OFFSET
