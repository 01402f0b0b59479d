"""A timer wheel for periodic per-session work: each member comes due once a period, the members
spread over the period's slots, so one tick costs O(members due), never O(all members).

The node ran RTCP reports, REMB, consent and simulcast checks for every participant in one 1 s
tick: with 512 sessions that was a stall of several ms once a second.  ``TickWheel`` gives each
member a slot (round robin as they are added, so a burst of joins spreads too); ``due(now_ms)``
returns the members of every slot whose time has come since the last call, each slot once.
Pure: no clock of its own (``now_ms`` is passed in), no I/O.

Time jumps: a call after a long pause returns each slot at most once (a member is never due twice
in one call), and the wheel's schedule moves on from ``now_ms``: missed periods are not made up.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class TickWheel(Generic[T]):
    def __init__(self, now_ms: int, period_ms: int = 1000, slots: int = 50) -> None:
        if slots < 1 or period_ms < slots:
            raise ValueError(f"need 1 <= slots <= period_ms, got slots={slots}, period_ms={period_ms}")
        if period_ms % slots:
            raise ValueError(f"period_ms ({period_ms}) must be a multiple of slots ({slots})")
        self.period_ms = period_ms
        self.slot_ms = period_ms // slots
        self._slots: list[dict[T, None]] = [{} for _ in range(slots)]
        self._slot_of: dict[T, int] = {}
        self._next_slot = 0  # where the next member goes (round robin)
        self._cursor = 0  # the next slot to come due
        self._cursor_ms = now_ms + self.slot_ms  # when it does

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, member: object) -> bool:
        return member in self._slot_of

    def add(self, member: T) -> int:
        """Put ``member`` on the wheel (no-op if it is on it); returns its slot."""
        slot = self._slot_of.get(member)
        if slot is not None:
            return slot
        slot = self._next_slot
        self._next_slot = (slot + 1) % len(self._slots)
        self._slots[slot][member] = None
        self._slot_of[member] = slot
        return slot

    def remove(self, member: T) -> bool:
        slot = self._slot_of.pop(member, None)
        if slot is None:
            return False
        del self._slots[slot][member]
        return True

    def next_due_ms(self) -> int:
        """When the next slot comes due."""
        return self._cursor_ms

    def due(self, now_ms: int) -> list[T]:
        """Members of every slot due by ``now_ms`` (each slot at most once per call), in slot order."""
        out: list[T] = []
        slots = self._slots
        n = len(slots)
        for _ in range(n):
            if self._cursor_ms > now_ms:
                break
            out.extend(slots[self._cursor])
            self._cursor = (self._cursor + 1) % n
            self._cursor_ms += self.slot_ms
        if self._cursor_ms <= now_ms:  # a pause longer than a period: go on from now
            self._cursor_ms = now_ms + self.slot_ms
        return out
