"""The retransmission cache of a video stream: its last packets by sequence number, for NACKs.

It costs one slot until the stream's first packet, then grows with the stream's rate: each time
the ring turns (the sequence number reaches a multiple of its size) it doubles if that turn took
less than ``RTX_CACHE_WINDOW_MS``, up to its bound (``RTX_CACHE_SLOTS``: 512 slots of 1500 bytes,
~750 KB, reached at about 512 packets a second and more).  An idle or never-connected track keeps
~1.5 KB; a 30 packet/s stream 32 slots; it never shrinks (a stream's rate comes back).
"""

from __future__ import annotations

from typing import Any

from pylibsrtp._binding import ffi

#: retransmission cache slots per video track at most (a power of two); audio keeps none
RTX_CACHE_SLOTS = 512
#: the slots a cache takes at its stream's first packet (a power of two)
RTX_CACHE_FIRST_SLOTS = 32
#: a cache holds at least this much of its stream (until it reaches ``RTX_CACHE_SLOTS``)
RTX_CACHE_WINDOW_MS = 1000
RTX_SLOT_BYTES = 1500
_memmove = ffi.memmove


class RtxCache:
    """The last packets of a stream by sequence number, for answering NACKs.

    ``PublishedTrack.on_rtp`` inlines ``put``: ``i = seq & cache.mask``; when ``i`` is 0 it calls
    ``turn(seq, now_ms)`` and takes ``i`` again; then it copies into ``bufs[i]``."""

    __slots__ = ("bufs", "lens", "seqs", "mask", "max_slots", "first_slots", "_turn_seq", "_turn_ms")

    def __init__(self, slots: int = RTX_CACHE_SLOTS, first_slots: int = RTX_CACHE_FIRST_SLOTS) -> None:
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"RtxCache slots must be a power of two, not {slots}")
        self.max_slots = slots
        self.first_slots = min(slots, first_slots)
        self.mask = 0
        self.bufs = [bytearray(RTX_SLOT_BYTES)]
        self.lens = [0]
        self.seqs = [-1]
        self._turn_seq = -1  # where the ring last turned (-1: no packet yet), and when
        self._turn_ms = 0

    @property
    def slots(self) -> int:
        return self.mask + 1

    def turn(self, seq: int, now_ms: int) -> None:
        """The ring is at slot 0 again: grow if the stream sent more than a window's worth of
        packets since the last turn (or at its first packet)."""
        size = self.mask + 1
        if size < self.max_slots:
            if self._turn_seq < 0 or size < self.first_slots:
                self._grow(self.first_slots)
            else:
                packets = (seq - self._turn_seq) & 0xFFFF
                if packets * RTX_CACHE_WINDOW_MS > (now_ms - self._turn_ms) * size:
                    self._grow(min(self.max_slots, size * 2))
        self._turn_seq = seq
        self._turn_ms = now_ms

    def _grow(self, slots: int) -> None:
        mask = slots - 1
        bufs: list[bytearray | None] = [None] * slots
        lens = [0] * slots
        seqs = [-1] * slots
        spare = []
        for buf, length, seq in zip(self.bufs, self.lens, self.seqs, strict=True):
            if seq >= 0 and bufs[seq & mask] is None:
                bufs[seq & mask], lens[seq & mask], seqs[seq & mask] = buf, length, seq
            else:
                spare.append(buf)
        self.bufs = [b if b is not None else (spare.pop() if spare else bytearray(RTX_SLOT_BYTES)) for b in bufs]
        self.lens = lens
        self.seqs = seqs
        self.mask = mask

    def put(self, view: Any, length: int, seq: int, now_ms: int = 0) -> None:
        """Keep ``view[:length]`` (any buffer, or a cffi pointer to at least ``length`` bytes).
        (``PublishedTrack.on_rtp`` inlines this: keep the two alike.)"""
        if length > RTX_SLOT_BYTES:
            return
        i = seq & self.mask
        if not i:
            self.turn(seq, now_ms)
            i = seq & self.mask
        _memmove(self.bufs[i], view, length)
        self.lens[i] = length
        self.seqs[i] = seq

    def get(self, seq: int) -> tuple[bytearray, int] | None:
        i = seq & self.mask
        if self.seqs[i] != seq:
            return None
        return self.bufs[i], self.lens[i]
