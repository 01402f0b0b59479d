"""VP8 payload descriptor (RFC 7741 §4.2) rewriting across source switches, in place.

A subscriber that is moved from one simulcast layer to another receives a new VP8 stream whose
picture IDs, TL0PICIDX and KEYIDX count from wherever the publisher's encoder for that layer is:
its decoder sees a jump and may wait for, or ask for, more than the keyframe it just got.
``Vp8Munger`` keeps those fields continuous for the subscriber, as if one encoder had produced the
whole stream: at each switch (marked with ``switch``) the first packet of the new source is made
to follow the last one forwarded (picture ID + 1, TL0PICIDX + 1, KEYIDX + 1) and later packets
keep that offset.  Packets of the first source pass unchanged.

Temporal layers (``sfu.packet.temporal``): a picture the subscriber is not sent (a dropped
higher temporal layer) is ``drop``-ped here too: later picture IDs are one lower, so the pictures
it gets are numbered without gaps (libwebrtc's VP8 reference finder waits for a missing picture
ID before decoding a later frame).  TL0PICIDX and KEYIDX need nothing: T0 frames are never
dropped.  A retransmission gets the picture ID its picture was sent with (a ring of the last
``HISTORY`` pictures' offsets), not the offset of the moment.

Widths are kept: a 7-bit picture ID stays 7 bits (the offset works modulo 2^7), a 15-bit one
15 bits.  No allocation per packet: ``rewrite`` reads and writes the bytes of a buffer.
"""

from __future__ import annotations

from array import array

from sfu.packet.rtp import Buffer

Writable = bytearray | memoryview

PID15_MASK = 0x7FFF
PID7_MASK = 0x7F
TL0_MASK = 0xFF
KEYIDX_MASK = 0x1F
#: pictures whose picture ID offset a retransmission finds (a power of two)
HISTORY = 64

#: ``descriptor_fields`` result slots (offsets into the buffer; -1: the field is absent)
ABSENT = -1


def descriptor_fields(buf: Buffer, start: int, end: int) -> tuple[int, int, int, int] | None:
    """Where the rewritable fields of the VP8 payload descriptor at ``buf[start:end]`` are:
    (picture ID offset, its width in bits (7, 15 or 0), TL0PICIDX offset, KEYIDX offset), offsets
    -1 when absent; None when the descriptor is truncated.  (A helper for tests and tools: the
    munger's own parser, its rewrite left out.)"""
    locator = _Vp8Locator()
    return locator.found if locator.rewrite(memoryview(buf), start, end) else None


class Vp8Munger:
    """One subscriber's continuous picture ID / TL0PICIDX / KEYIDX across source switches."""

    __slots__ = ("_pid_delta", "_tl0_delta", "_key_delta", "_last_pid", "_last_tl0", "_last_key", "_resync", "_started",
                 "_dropped_pid", "_hist_pid", "_hist_delta")

    def __init__(self) -> None:
        self._pid_delta = 0
        self._tl0_delta = 0
        self._key_delta = 0
        self._last_pid = -1  # the newest values sent (15-bit space for the picture ID)
        self._last_tl0 = -1
        self._last_key = -1
        self._resync = False
        self._started = False
        self._dropped_pid = -1  # the incoming picture ID of the last picture dropped
        #: per incoming picture ID (modulo ``HISTORY``): that ID and the offset it was sent with
        self._hist_pid = array("i", [-1]) * HISTORY
        self._hist_delta = array("i", [0]) * HISTORY

    def drop(self, pid: int) -> None:
        """A packet of the incoming picture ``pid`` (-1: without one) is not sent: when it is a
        new picture, the pictures after it are numbered one lower."""
        if pid >= 0 and pid != self._dropped_pid and self._started:
            self._dropped_pid = pid
            self._pid_delta -= 1

    def switch(self) -> None:
        """The next packet rewritten is the first of a new source (its keyframe)."""
        self._resync = True

    def rewrite(self, buf: Writable, start: int, end: int, *, retransmission: bool = False) -> bool:
        """Rewrite the descriptor at ``buf[start:end]`` in place; False when it is truncated (left
        as it is).  A ``retransmission`` gets the current offsets and moves nothing forward."""
        if end - start < 1:
            return False
        if not buf[start] & 0x80:
            return True  # no extension byte: no field to keep continuous
        if end - start < 2:
            return False
        x = buf[start + 1]
        pos = start + 2
        pid_at = tl0_at = key_at = -1
        wide = False
        if x & 0x80:
            if pos >= end:
                return False
            pid_at = pos
            wide = bool(buf[pos] & 0x80)
            pos += 2 if wide else 1
        if x & 0x40:
            tl0_at = pos
            pos += 1
        if x & 0x30:
            if x & 0x10:
                key_at = pos
            pos += 1
        if pos > end:
            return False
        self.apply(buf, pid_at, wide, tl0_at, key_at, retransmission)
        return True

    def apply(self, buf: Writable, pid_at: int, wide: bool, tl0_at: int, key_at: int, retransmission: bool) -> None:
        """Rewrite the fields found at these offsets (-1: absent): picture ID (15 bits when
        ``wide``, else 7), TL0PICIDX, KEYIDX.  Shared by the VP8 and VP9 parsers."""
        if self._resync and not retransmission:
            self._resync = False
            if self._started:
                # a field the previous source never sent has nothing to follow: kept as it is
                if pid_at >= 0 and self._last_pid >= 0:
                    pid = ((buf[pid_at] & 0x7F) << 8) | buf[pid_at + 1] if wide else buf[pid_at] & 0x7F
                    self._pid_delta = self._last_pid + 1 - pid
                if tl0_at >= 0 and self._last_tl0 >= 0:
                    self._tl0_delta = self._last_tl0 + 1 - buf[tl0_at]
                if key_at >= 0 and self._last_key >= 0:
                    self._key_delta = self._last_key + 1 - (buf[key_at] & KEYIDX_MASK)
        if not retransmission:
            self._started = True
        if pid_at >= 0:
            pid_in = ((buf[pid_at] & 0x7F) << 8) | buf[pid_at + 1] if wide else buf[pid_at] & 0x7F
            slot = pid_in & (HISTORY - 1)
            if not retransmission:
                delta = self._pid_delta
                self._hist_pid[slot] = pid_in
                self._hist_delta[slot] = delta
            elif self._hist_pid[slot] == pid_in:
                delta = self._hist_delta[slot]
            else:
                delta = self._pid_delta
            if wide:
                out = (pid_in + delta) & PID15_MASK
                buf[pid_at] = 0x80 | (out >> 8)
                buf[pid_at + 1] = out & 0xFF
                newer = 0 < (out - self._last_pid) & PID15_MASK < 0x4000
            else:
                out = (pid_in + delta) & PID7_MASK
                buf[pid_at] = out
                newer = 0 < (out - self._last_pid) & PID7_MASK < 0x40
            if not retransmission and (newer or self._last_pid < 0):
                self._last_pid = out
        if tl0_at >= 0:
            out = (buf[tl0_at] + self._tl0_delta) & TL0_MASK
            buf[tl0_at] = out
            if not retransmission and (self._last_tl0 < 0 or 0 < (out - self._last_tl0) & TL0_MASK < 0x80):
                self._last_tl0 = out
        if key_at >= 0:
            b = buf[key_at]
            out = ((b & KEYIDX_MASK) + self._key_delta) & KEYIDX_MASK
            buf[key_at] = (b & 0xE0) | out
            if not retransmission and (self._last_key < 0 or 0 < (out - self._last_key) & KEYIDX_MASK < 0x10):
                self._last_key = out


class _Vp8Locator(Vp8Munger):
    """``Vp8Munger``'s parser with ``apply`` noting where the fields are instead of rewriting."""

    __slots__ = ("found",)

    def __init__(self) -> None:
        super().__init__()
        self.found = (ABSENT, 0, ABSENT, ABSENT)

    def apply(self, buf: Writable, pid_at: int, wide: bool, tl0_at: int, key_at: int, retransmission: bool) -> None:
        self.found = (pid_at, (15 if wide else 7) if pid_at >= 0 else 0, tl0_at, key_at)
