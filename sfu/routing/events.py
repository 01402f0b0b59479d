"""What happens in a room, as the router sees it: the feed the signaling layer notifies from.

The router calls its observers synchronously, after the change is made; an observer must not
raise and must not call back into the router from the callback (it schedules work instead).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sfu.transport.peer import CloseReason

if TYPE_CHECKING:
    from sfu.routing.participant import Participant
    from sfu.routing.rooms import Room
    from sfu.routing.track import PublishedTrack


class RoomEventKind(enum.Enum):
    JOINED = "joined"  # a participant was seated
    PUBLISHED = "published"  # tracks were added
    UNPUBLISHED = "unpublished"  # tracks were removed (the participant stays)
    MUTED = "muted"  # a track's muted flag changed
    UPDATED = "updated"  # a participant's name, metadata or permissions changed (the participants API)
    LEFT = "left"  # a participant is gone (``reason``)
    ROOM_CLOSED = "room_closed"  # the room closed with everyone in ``participants``


@dataclass(frozen=True)
class RoomEvent:
    kind: RoomEventKind
    room: Room
    participant: Participant | None = None
    tracks: tuple[PublishedTrack, ...] = ()
    reason: CloseReason | None = None
    #: ROOM_CLOSED: who was in the room when it closed
    participants: tuple[Participant, ...] = ()


RoomObserver = Callable[[RoomEvent], None]
