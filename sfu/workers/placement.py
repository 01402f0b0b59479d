"""Which forwarding worker carries a room: placement of new rooms and the pins that keep them there.

Pure logic (time passed in as ``now_ms``); the front (``sfu.workers.front``) feeds it the workers'
status reports and asks it where each room-scoped request goes.

- A room is pinned to a worker when a request that may create it (WHIP publish, ``POST /v1/rooms``,
  a signaling join) first names it: the least loaded worker that is up, by participants, then
  rooms (pins not yet confirmed count as rooms, so a burst of new rooms spreads), then index.
- A pin is *pending* until the worker lists the room among its open rooms, then *confirmed*.
  A confirmed pin is kept until the worker no longer lists the room (it closed); a pending pin
  whose room never shows up (the request was refused) lapses after ``PENDING_GRACE_MS``.
- A room a worker lists without a pin (its pin lapsed while the request was slow) is adopted.
- A closed room is remembered with its worker (``recent``), so requests about it (``GET
  /v1/rooms/{room}`` of a closed room) reach the worker that remembers it.
- A worker that goes down loses its pins and its memory: its rooms are gone with it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: a pin whose room no status report has shown yet lapses after this long
PENDING_GRACE_MS = 5_000
#: closed rooms are remembered with their worker this long (as a node remembers them: 24 h)
RECENT_RETENTION_MS = 24 * 3600 * 1000
RECENT_MAX = 10_000


@dataclass(frozen=True)
class WorkerLoad:
    """One worker as placement sees it."""

    index: int
    up: bool
    #: its self-check passes and it is neither draining nor revoked
    ready: bool
    participants: int
    rooms: int


def choose(loads: Sequence[WorkerLoad]) -> int | None:
    """The worker a new room goes to: the least loaded ready one (participants, then rooms, then
    index); when none is ready, the least loaded one that is up (it answers the refusal itself);
    None when no worker is up."""
    for pool in ([w for w in loads if w.up and w.ready], [w for w in loads if w.up]):
        if pool:
            return min(pool, key=lambda w: (w.participants, w.rooms, w.index)).index
    return None


class Route(enum.Enum):
    """How a request found its worker (logged, and tested)."""

    PINNED = "pinned"
    RECENT = "recent"  # a closed room's worker
    PLACED = "placed"  # a new pin
    ANY = "any"  # nothing known and nothing created: the least loaded worker answers


@dataclass
class Pin:
    worker: int
    since_ms: int
    confirmed: bool = False


class PinTable:
    def __init__(self) -> None:
        self.pins: dict[str, Pin] = {}
        #: closed rooms: room -> (worker, closed at)
        self.recent: dict[str, tuple[int, int]] = {}

    def worker_of(self, room: str) -> int | None:
        pin = self.pins.get(room)
        return pin.worker if pin is not None else None

    def pending(self, worker: int) -> int:
        return sum(1 for p in self.pins.values() if p.worker == worker and not p.confirmed)

    def rooms_of(self, worker: int) -> list[str]:
        return [room for room, p in self.pins.items() if p.worker == worker]

    def route(
        self, room: str, *, creating: bool, loads: Sequence[WorkerLoad], now_ms: int
    ) -> tuple[int | None, Route]:
        """The worker for a request about ``room``; ``creating``: the request may create the room,
        and a new pin is made for it.  ``loads`` count rooms as the workers reported them."""
        up = {w.index for w in loads if w.up}
        pin = self.pins.get(room)
        if pin is not None and pin.worker in up:
            return pin.worker, Route.PINNED
        recent = self.recent.get(room)
        if recent is not None and now_ms - recent[1] > RECENT_RETENTION_MS:
            del self.recent[room]
            recent = None
        if not creating and recent is not None and recent[0] in up:
            return recent[0], Route.RECENT
        with_pending = [
            WorkerLoad(w.index, w.up, w.ready, w.participants, w.rooms + self.pending(w.index)) for w in loads
        ]
        worker = choose(with_pending)
        if worker is None:
            return None, Route.ANY
        if not creating:
            return worker, Route.ANY
        self.pins[room] = Pin(worker, now_ms)
        return worker, Route.PLACED

    def reconcile(self, worker: int, open_rooms: Iterable[str], now_ms: int) -> None:
        """A status report: ``worker`` has exactly ``open_rooms`` open now."""
        listed = set(open_rooms)
        for room in listed:
            pin = self.pins.get(room)
            if pin is None or (pin.worker != worker and not pin.confirmed):
                self.pins[room] = Pin(worker, now_ms, confirmed=True)
            elif pin.worker == worker:
                pin.confirmed = True
            self.recent.pop(room, None)
        for room in [r for r, p in self.pins.items() if p.worker == worker and r not in listed]:
            pin = self.pins[room]
            if pin.confirmed or now_ms - pin.since_ms > PENDING_GRACE_MS:
                del self.pins[room]
                self._remember(room, worker, now_ms)

    def drop_worker(self, worker: int) -> list[str]:
        """The worker went down: its rooms went with it.  The rooms that were pinned to it."""
        rooms = self.rooms_of(worker)
        for room in rooms:
            del self.pins[room]
        for room in [r for r, (w, _) in self.recent.items() if w == worker]:
            del self.recent[room]
        return rooms

    def _remember(self, room: str, worker: int, now_ms: int) -> None:
        self.recent[room] = (worker, now_ms)
        if len(self.recent) > RECENT_MAX:
            for old in [r for r, (_, at) in self.recent.items() if now_ms - at > RECENT_RETENTION_MS]:
                del self.recent[old]
            while len(self.recent) > RECENT_MAX:  # oldest first (insertion order)
                del self.recent[next(iter(self.recent))]
