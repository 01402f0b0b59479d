"""Rooms on this node: creation, caps, closing, and the 24 h memory of closed rooms.

A closed room's record is the ``Room`` itself (slotted, its participants gone: ~0.6 KB with its
id, sid and policy); at most ``CLOSED_ROOMS_MAX`` are kept, oldest forgotten first, so rooms
created and closed at any rate (auto-created on join) cannot grow the node without bound within
the 24 hours.

Admission is atomic because it runs on the node's one event loop with no await between the
check and the insert: with 50 joins racing for the last 3 seats exactly 3 get in.
"""

from __future__ import annotations

import enum
import secrets
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from levelchat.errors import ApiError

if TYPE_CHECKING:
    from sfu.routing.participant import Participant

CLOSED_RETENTION_MS = 24 * 3600 * 1000
#: closed rooms remembered at most (oldest forgotten first, even within CLOSED_RETENTION_MS)
CLOSED_ROOMS_MAX = 50_000


class RoomState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True)
class RoomPolicy:
    max_participants: int
    codecs: tuple[str, ...]
    empty_timeout_s: int
    recording: bool = False  # whether recording may be requested in this room


@dataclass(slots=True)
class Room:
    id: str
    policy: RoomPolicy
    created_ms: int
    sid: str = field(default_factory=lambda: "RM_" + secrets.token_hex(6))
    participants: dict[str, Participant] = field(default_factory=dict)
    state: RoomState = RoomState.OPEN
    empty_since_ms: int | None = None
    closed_ms: int | None = None
    #: the node's own (self-check) room: not listed, not counted against caps or in metrics
    internal: bool = False

    def publishers(self) -> Iterator[Participant]:
        for p in self.participants.values():
            if p.tracks:
                yield p

    def describe(self) -> dict[str, object]:
        return {
            "room": self.id,
            "sid": self.sid,
            "state": self.state.value,
            "max_participants": self.policy.max_participants,
            "codecs": list(self.policy.codecs),
            "empty_timeout_s": self.policy.empty_timeout_s,
            "recording": self.policy.recording,
            "num_participants": len(self.participants),
            "participants": [p.describe() for p in self.participants.values()],
            "created_at_ms": self.created_ms,
        }


class RoomRegistry:
    def __init__(self, *, max_rooms: int, max_participants: int) -> None:
        self.max_rooms = max_rooms
        self.max_participants = max_participants
        self.rooms: dict[str, Room] = {}
        #: closed rooms by id, oldest closed first (``forget_old`` pops from the front)
        self.closed: OrderedDict[str, Room] = OrderedDict()
        self.accepting = True  # False while draining or revoked: no new rooms

    @property
    def participant_count(self) -> int:
        """Participants seated here (relayed ones, the far end's, take no seat)."""
        return sum(1 for r in self.rooms.values() if not r.internal for p in r.participants.values() if not p.relay)

    @property
    def room_count(self) -> int:
        return sum(1 for r in self.rooms.values() if not r.internal)

    def public_rooms(self) -> list[Room]:
        return [r for r in self.rooms.values() if not r.internal]

    def get(self, room_id: str, now_ms: int) -> Room:
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        self.forget_old(now_ms)
        closed = self.closed.get(room_id)
        if closed is not None:
            return closed
        raise ApiError("room_not_found", f"room {room_id!r} is not open on this node")

    def create(
        self, room_id: str, policy: RoomPolicy, now_ms: int, *, internal: bool = False
    ) -> tuple[Room, bool]:
        """The open room with that id, created if needed; True when it was created."""
        room = self.rooms.get(room_id)
        if room is not None:
            return room, False
        if not internal and self.room_count >= self.max_rooms:
            raise ApiError("service_unavailable", f"this node hosts its maximum of {self.max_rooms} rooms")
        room = Room(id=room_id, policy=policy, created_ms=now_ms, empty_since_ms=now_ms, internal=internal)
        self.closed.pop(room_id, None)
        self.rooms[room_id] = room
        return room, True

    def admit(self, room: Room, participant: Participant, now_ms: int) -> Participant | None:
        """Seat a participant; returns the one it replaces (same identity), if any."""
        if room.state is not RoomState.OPEN:
            raise ApiError("room_not_found", f"room {room.id!r} is closed")
        previous = room.participants.get(participant.identity)
        if previous is None:
            if len(room.participants) >= room.policy.max_participants:
                raise ApiError(
                    "room/cap-denied",
                    f"room {room.id!r} is at its cap of {room.policy.max_participants} participants",
                )
            if not room.internal and self.participant_count >= self.max_participants:
                raise ApiError(
                    "room/cap-denied", f"this node is at its cap of {self.max_participants} participants"
                )
        room.participants[participant.identity] = participant
        room.empty_since_ms = None
        return previous

    def release(self, room: Room, participant: Participant, now_ms: int) -> None:
        if room.participants.get(participant.identity) is participant:
            del room.participants[participant.identity]
            if not room.participants:
                room.empty_since_ms = now_ms

    def close(self, room: Room, now_ms: int) -> list[Participant]:
        """Mark closed and return the participants to disconnect."""
        room.state = RoomState.CLOSED
        room.closed_ms = now_ms
        self.rooms.pop(room.id, None)
        self.closed.pop(room.id, None)  # closed again: it moves to the end
        self.closed[room.id] = room
        self.forget_old(now_ms)  # keeps the memory of closed rooms to the last 24 h, and bounded
        left = list(room.participants.values())
        room.participants.clear()
        return left

    def expired_empty(self, now_ms: int) -> list[Room]:
        return [
            r
            for r in self.rooms.values()
            if r.empty_since_ms is not None and now_ms - r.empty_since_ms >= r.policy.empty_timeout_s * 1000
        ]

    def forget_old(self, now_ms: int) -> None:
        """Forget closed rooms older than 24 h, and the oldest beyond ``CLOSED_ROOMS_MAX``.

        Records are in closing order (time only goes forward), so this looks at the oldest ones
        only: O(1) per call plus what it forgets."""
        closed = self.closed
        while closed:
            room = closed[next(iter(closed))]
            if len(closed) <= CLOSED_ROOMS_MAX and now_ms - (room.closed_ms or 0) <= CLOSED_RETENTION_MS:
                break
            closed.popitem(last=False)
