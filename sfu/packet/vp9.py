"""VP9 payload descriptor (RFC 9628 §4.2) rewriting across source switches, in place.

As for VP8 (``sfu.packet.vp8``): a subscriber moved from one simulcast layer to another gets a
stream whose picture IDs and TL0PICIDX count from wherever that layer's encoder is.
``Vp9Munger`` keeps them continuous (the first packet of the new source follows the last one
forwarded: picture ID + 1, TL0PICIDX + 1; later packets keep that offset).  The picture ID keeps
its width (7 or 15 bits, wrapping there); TL0PICIDX is only in non-flexible mode with layer
indices.  Flexible mode's P_DIFFs are differences between picture IDs: one offset leaves them
right.  No allocation per packet.

Temporal layers dropped for a subscriber (``sfu.packet.temporal``) leave the picture IDs as they
are: VP9 frames name their references by picture ID difference (flexible mode's P_DIFFs, the
scalability structure's picture group in non-flexible mode), so renumbering what is sent would
point them at the wrong pictures; a receiver does not wait on a missing picture of a temporal
layer above the frame's own (libwebrtc's VP9 reference finder), and the dropped ones are above.

Descriptor: ``|I|P|L|F|B|E|V|Z|``, then with I ``|M| PICTURE ID |`` (and a second byte when M),
with L ``| TID |U| SID |D|`` and, in non-flexible mode (F=0), ``TL0PICIDX``.
"""

from __future__ import annotations

from sfu.packet.rtp import Buffer
from sfu.packet.vp8 import ABSENT, Vp8Munger, Writable


def descriptor_fields(buf: Buffer, start: int, end: int) -> tuple[int, int, int] | None:
    """Where the rewritable fields of the VP9 payload descriptor at ``buf[start:end]`` are:
    (picture ID offset, its width in bits (7, 15 or 0), TL0PICIDX offset), offsets -1 when
    absent; None when the descriptor is truncated.  (For tests and tools: the munger's own parser,
    its rewrite left out.)"""
    locator = _Vp9Locator()
    return locator.found if locator.rewrite(memoryview(buf), start, end) else None


class Vp9Munger(Vp8Munger):
    """One subscriber's continuous VP9 picture ID / TL0PICIDX across source switches."""

    __slots__ = ()

    def drop(self, pid: int) -> None:
        """Picture IDs are kept across dropped temporal layers (see the module docstring)."""

    def rewrite(self, buf: Writable, start: int, end: int, *, retransmission: bool = False) -> bool:
        """Rewrite the descriptor at ``buf[start:end]`` in place; False when it is truncated (left
        as it is).  A ``retransmission`` gets the current offsets and moves nothing forward."""
        if end - start < 1:
            return False
        b0 = buf[start]
        pos = start + 1
        pid_at = tl0_at = -1
        wide = False
        if b0 & 0x80:
            if pos >= end:
                return False
            pid_at = pos
            wide = bool(buf[pos] & 0x80)
            pos += 2 if wide else 1
        if b0 & 0x20:
            pos += 1
            if not b0 & 0x10:
                tl0_at = pos
                pos += 1
        if pos > end:
            return False
        if pid_at >= 0 or tl0_at >= 0:
            self.apply(buf, pid_at, wide, tl0_at, -1, retransmission)
        return True


class _Vp9Locator(Vp9Munger):
    """``Vp9Munger``'s parser with ``apply`` noting where the fields are instead of rewriting."""

    __slots__ = ("found",)

    def __init__(self) -> None:
        super().__init__()
        self.found = (ABSENT, 0, ABSENT)

    def apply(self, buf: Writable, pid_at: int, wide: bool, tl0_at: int, key_at: int, retransmission: bool) -> None:
        self.found = (pid_at, (15 if wide else 7) if pid_at >= 0 else 0, tl0_at)
