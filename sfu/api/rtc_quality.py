"""``connection_quality`` notifications (contract "Adaptive media"; issue 12).

Each participant's rating is made once a second by the router (``Participant.link``,
sfu.routing.quality_feed); ``QualityNotifier.tick`` runs with the signaling service's periodic
tick and tells each room's WebSocket participants:

* a session that has joined and not been told yet: the full list of the room;
* everyone, when ratings changed: the participants whose rating changed or who joined since,
  at most once per ``MIN_INTERVAL_MS`` per room.

Cost per tick: O(participants) per room with sessions; a message carries at most the room's
participants.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sfu.routing.participant import Participant
from sfu.routing.rooms import Room


class Notified(Protocol):
    """A signaling session (``sfu.api.rtc_session.Notified``)."""

    participant: Participant | None
    ended: bool

    def notify(self, method: str, params: dict[str, Any]) -> None: ...

METHOD = "connection_quality"
#: changes in a room are told at most this often
MIN_INTERVAL_MS = 1_000


def ratings(room: Room) -> dict[str, str]:
    return {p.identity: p.link.quality.value for p in room.participants.values() if not p.closed}


def _entries(ratings: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return {"participants": [{"identity": identity, "quality": q} for identity, q in ratings]}


class QualityNotifier:
    def __init__(self) -> None:
        self._sent: dict[str, dict[str, str]] = {}  # by room id: what the room was last told
        self._due_ms: dict[str, int] = {}
        self._told: set[Notified] = set()  # sessions that got the full list

    def tick(self, room: Room, sessions: Sequence[Notified], now_ms: int) -> None:
        current = ratings(room)
        last = self._sent.get(room.id)
        if last is None:
            last = self._sent[room.id] = current
        changed = [(i, q) for i, q in current.items() if last.get(i) != q]
        if changed and now_ms >= self._due_ms.get(room.id, 0):
            self._sent[room.id] = current
            self._due_ms[room.id] = now_ms + MIN_INTERVAL_MS
            params = _entries(changed)
            for s in sessions:
                if s in self._told:
                    s.notify(METHOD, params)
        full: dict[str, Any] | None = None
        for s in sessions:
            if s not in self._told and s.participant is not None:
                full = full or _entries(current.items())
                s.notify(METHOD, full)
                self._told.add(s)

    def forget_rooms(self, live: set[str]) -> None:
        """Drop what is kept for rooms without sessions and for ended sessions."""
        for room_id in [r for r in self._sent if r not in live]:
            del self._sent[room_id]
            self._due_ms.pop(room_id, None)
        self._told = {s for s in self._told if not s.ended}
