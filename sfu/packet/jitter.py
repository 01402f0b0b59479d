"""The recorder's jitter buffer: one track's packets back in sequence order.

Packets come in by sequence number with their arrival time (an injected clock: the node's
``now_ms`` at arrival).  ``push`` answers the packets that are now in order; a hole waits for
its packet (the node NACKs the publisher for video and its retransmissions reach the recorder
like any packet) until the oldest packet held has waited ``max_delay_ms`` or more than
``max_packets`` are held, then it is given up: a ``Gap`` with the number of packets lost goes
out in its place and the packets after it follow.  Late packets (behind what was released) and
duplicates are dropped and counted.  Bounded: at most ``max_packets`` held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Gap", "JitterBuffer"]

T = TypeVar("T")


@dataclass(frozen=True)
class Gap:
    lost: int  # packets given up for good


class JitterBuffer(Generic[T]):
    def __init__(self, *, max_packets: int = 512, max_delay_ms: int = 1000) -> None:
        if max_packets < 1 or max_delay_ms < 0:
            raise ValueError("max_packets must be >= 1 and max_delay_ms >= 0")
        self.max_packets = max_packets
        self.max_delay_ms = max_delay_ms
        self._held: dict[int, tuple[int, T]] = {}  # extended seq -> (arrival ms, item)
        self._next = -1  # the extended sequence number released next; -1: nothing seen yet
        self._highest = -1
        self.released = 0
        self.lost = 0
        self.late = 0
        self.duplicates = 0

    def _extend(self, seq: int) -> int:
        if self._highest < 0:
            return seq + 0x10000  # room below the first packet for ones that arrive before it
        delta = ((seq - self._highest) + 0x8000) & 0xFFFF
        return self._highest + delta - 0x8000

    def push(self, seq: int, now_ms: int, item: T) -> list[T | Gap]:
        ext = self._extend(seq & 0xFFFF)
        if self._next < 0:
            self._next = ext
        if ext < self._next:
            self.late += 1
            return self.poll(now_ms)
        if ext in self._held:
            self.duplicates += 1
            return self.poll(now_ms)
        if ext > self._highest:
            self._highest = ext
        self._held[ext] = (now_ms, item)
        return self.poll(now_ms)

    def poll(self, now_ms: int) -> list[T | Gap]:
        """What is in order now, holes given up when they have waited too long."""
        out: list[T | Gap] = []
        held = self._held
        while held:
            self._release(out)
            if not held:
                break
            oldest = min(arrival for arrival, _ in held.values())
            if len(held) <= self.max_packets and now_ms - oldest < self.max_delay_ms:
                break
            self._skip(out)
        return out

    def flush(self) -> list[T | Gap]:
        """Everything held, holes given up (the end of the recording)."""
        out: list[T | Gap] = []
        while self._held:
            self._release(out)
            if self._held:
                self._skip(out)
        return out

    def _release(self, out: list[T | Gap]) -> None:
        held = self._held
        nxt = self._next
        while nxt in held:
            out.append(held.pop(nxt)[1])
            nxt += 1
            self.released += 1
        self._next = nxt

    def _skip(self, out: list[T | Gap]) -> None:
        first = min(self._held)
        lost = first - self._next
        self.lost += lost
        out.append(Gap(lost))
        self._next = first
