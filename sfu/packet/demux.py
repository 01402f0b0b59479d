"""First-byte demultiplexing of datagrams arriving on the shared media port.

RFC 7983 splits the first byte into ranges (STUN 0-3, DTLS 20-63, RTP/RTCP 128-191); RFC 5761
splits RTP from RTCP on the second byte: RTCP packet types 192-223 (SR, RR, SDES, BYE, APP,
RTPFB, PSFB, XR...) never collide with an RTP marker+payload-type byte because payload types
64-95 are forbidden for RTP when muxing.

``classify`` is on the hot path: it reads two bytes, compares ints and allocates nothing.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "DTLS_MIN_LENGTH",
    "PacketClass",
    "RTCP_MIN_LENGTH",
    "RTP_MIN_LENGTH",
    "STUN_MIN_LENGTH",
    "classify",
]

STUN_MIN_LENGTH = 20  # STUN message header
DTLS_MIN_LENGTH = 13  # DTLS record header
RTP_MIN_LENGTH = 12  # fixed RTP header
RTCP_MIN_LENGTH = 8  # common header + sender SSRC (an empty RR)


class PacketClass(IntEnum):
    """What a datagram is, judged by its first bytes only."""

    UNKNOWN = 0  # no RFC 7983 range matches, or too short for its class
    STUN = 1
    DTLS = 2
    RTP = 3
    RTCP = 4


def classify(data: bytes | bytearray | memoryview, length: int) -> PacketClass:
    """Classify the first ``length`` bytes of ``data``.

    ``length`` is the datagram size (``data`` may be a larger preallocated receive buffer); it is
    clamped to ``len(data)``. A datagram too short for the header of its class is ``UNKNOWN``.
    """
    if length > len(data):
        length = len(data)
    if length < 1:
        return PacketClass.UNKNOWN
    b0 = data[0]
    if b0 >= 128:
        if b0 > 191 or length < RTCP_MIN_LENGTH:
            return PacketClass.UNKNOWN
        b1 = data[1]
        if 192 <= b1 <= 223:
            return PacketClass.RTCP
        if length < RTP_MIN_LENGTH:
            return PacketClass.UNKNOWN
        return PacketClass.RTP
    if b0 <= 3:
        return PacketClass.STUN if length >= STUN_MIN_LENGTH else PacketClass.UNKNOWN
    if 20 <= b0 <= 63:
        return PacketClass.DTLS if length >= DTLS_MIN_LENGTH else PacketClass.UNKNOWN
    return PacketClass.UNKNOWN
