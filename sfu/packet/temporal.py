"""Temporal layers of VP8 and VP9 streams (issue 12): what a packet's payload descriptor says
about its temporal layer, and the per-subscriber decision to forward it.

A VP8 (RFC 7741 §4.2) or VP9 (RFC 9628 §4.2) encoder with temporal scalability (``L1T2``,
``L1T3``) tags every packet with its temporal layer id (TID): T0 frames reference only T0
frames, T1 frames T0 and T1, T2 any.  A subscriber that cannot take the full frame rate is sent
the frames up to some TID and the others are dropped: what remains decodes at 1/2 or 1/4 of the
rate.

``vp8_temporal`` / ``vp9_temporal`` read, without allocating, one packet's layer facts into one
``int`` (``TID_MASK``, ``SYNC``, ``START``, ``KEY``, and the picture ID + 1 from bit 8; ``NONE``
when the descriptor has no TID or is truncated):

* VP8: TID and the layer sync bit (Y: the frame references only T0, so a receiver can start
  taking its layer there) from the TID/Y/KEYIDX byte (present with T=1); START when S=1 and the
  partition index is 0; KEY when that packet's VP8 frame tag has P=0.
* VP9: TID and the switching-up point bit (U) from the layer indices (L=1), flexible or not;
  START is B (beginning of a layer frame); KEY is P=0 with B=1 on spatial layer 0 without
  inter-layer dependency.

``TemporalFilter`` applies one subscriber's limit: a packet passes when its TID is at or below
the layer in effect (no TID: always).  Down takes effect at the next frame start (whole frames
only); up one layer at a time, at a frame of the next layer that is a sync / switching-up point,
or at once at a key frame (where every layer starts again).  Dropped packets are skipped in the
subscriber's sequence numbers and, for VP8, its picture IDs (``Vp8Munger.drop``), so what it
receives has no gaps.
"""

from __future__ import annotations

from sfu.packet.rtp import Buffer

#: a packet without a temporal layer id (no T/L bit), or a truncated descriptor
NONE = -1
TID_MASK = 0x03
SYNC = 0x04  # VP8 Y (layer sync), VP9 U (switching-up point)
START = 0x08  # the first packet of a frame
KEY = 0x10  # the first packet of a key frame
#: the picture ID + 1 sits from this bit on (0: none in the descriptor)
PID_SHIFT = 8
#: ``TemporalFilter.target`` for no limit
ALL_LAYERS = 3


def vp8_temporal(buf: Buffer, start: int, end: int) -> int:
    """The temporal facts of the VP8 packet whose payload is ``buf[start:end]`` (see the module
    docstring), or ``NONE``."""
    if end - start < 2:
        return NONE
    b0 = buf[start]
    if not b0 & 0x80:  # X: no extension, so no TID
        return NONE
    x = buf[start + 1]
    if not x & 0x20:  # T: no TID
        return NONE
    pos = start + 2
    pid = 0
    if x & 0x80:  # I
        if pos >= end:
            return NONE
        if buf[pos] & 0x80:
            if pos + 1 >= end:
                return NONE
            pid = (((buf[pos] & 0x7F) << 8) | buf[pos + 1]) + 1
            pos += 2
        else:
            pid = buf[pos] + 1
            pos += 1
    if x & 0x40:  # L: TL0PICIDX
        pos += 1
    if pos >= end:
        return NONE
    t = buf[pos]
    info = (t >> 6) | (SYNC if t & 0x20 else 0) | (pid << PID_SHIFT)
    if b0 & 0x10 and not b0 & 0x07:  # S, partition 0: the frame starts here
        info |= START
        if pos + 1 < end and not buf[pos + 1] & 0x01:  # frame tag P=0: key frame
            info |= KEY
    return info


def vp9_temporal(buf: Buffer, start: int, end: int) -> int:
    """The temporal facts of the VP9 packet whose payload is ``buf[start:end]`` (see the module
    docstring), or ``NONE``."""
    if end - start < 2:
        return NONE
    b0 = buf[start]
    if not b0 & 0x20:  # L: no layer indices
        return NONE
    pos = start + 1
    pid = 0
    if b0 & 0x80:  # I
        if buf[pos] & 0x80:
            if pos + 1 >= end:
                return NONE
            pid = (((buf[pos] & 0x7F) << 8) | buf[pos + 1]) + 1
            pos += 2
        else:
            pid = buf[pos] + 1
            pos += 1
    if pos >= end:
        return NONE
    layer = buf[pos]
    tid = layer >> 5
    if tid > TID_MASK:
        return NONE  # TIDs 4-7: more layers than a limit here can name
    info = tid | (SYNC if layer & 0x10 else 0) | (pid << PID_SHIFT)
    if b0 & 0x08:  # B
        info |= START
        if not b0 & 0x40 and not layer & 0x0F:  # P=0, SID 0, D=0
            info |= KEY
    return info


class TemporalFilter:
    """One subscriber's temporal layer limit on one stream (see the module docstring)."""

    __slots__ = ("target", "current", "dropped")

    def __init__(self, target: int = ALL_LAYERS) -> None:
        #: the highest TID wanted (``ALL_LAYERS``: no limit)
        self.target = target
        #: the highest TID forwarded now; moves towards ``target`` at frame starts and sync points
        self.current = target
        #: packets dropped for the limit
        self.dropped = 0

    def admit(self, info: int) -> bool:
        """Forward the packet of these facts (``vp8_temporal`` / ``vp9_temporal``)?"""
        if info < 0:
            return True
        tid = info & TID_MASK
        current = self.current
        if current != self.target and info & START:
            if info & KEY or self.target < current:
                current = self.current = self.target
            elif tid == current + 1 and info & SYNC:
                current = self.current = tid
        if tid <= current:
            return True
        self.dropped += 1
        return False
