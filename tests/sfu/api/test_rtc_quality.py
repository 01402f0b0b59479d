"""``QualityNotifier`` (sfu.api.rtc_quality): the full list to each joined session once, then the
changes, at most once a second per room."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sfu.api.rtc_quality import METHOD, QualityNotifier
from sfu.routing.participant import Participant, ParticipantKind
from sfu.routing.quality import LinkSample
from sfu.routing.rooms import Room, RoomPolicy


@dataclass(eq=False)
class Session:
    participant: Participant | None
    ended: bool = False
    got: list[dict[str, Any]] = field(default_factory=list)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        assert method == METHOD
        self.got.append(params)


def _rated(room: Room, identity: str) -> Participant:
    p = Participant(identity=identity, room_id=room.id, kind=ParticipantKind.RTC)
    room.participants[identity] = p
    return p


def _bad(p: Participant, now_ms: int) -> None:
    for ms in (now_ms, now_ms + 1):  # two worse samples: down
        p.link.scorer.update(LinkSample(loss=0.3), ms)


def _entries(params: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["identity"], e["quality"]) for e in params["participants"]]


def test_full_list_once_then_changes_at_most_once_a_second() -> None:
    room = Room("r", RoomPolicy(max_participants=10, codecs=("opus", "VP8"), empty_timeout_s=10), 0)
    alice, bob = _rated(room, "alice"), _rated(room, "bob")
    a, b = Session(alice), Session(bob)
    not_joined = Session(None)
    n = QualityNotifier()
    n.tick(room, [a, b, not_joined], 0)
    assert [_entries(x) for x in a.got] == [[("alice", "excellent"), ("bob", "excellent")]]
    assert len(b.got) == 1 and not not_joined.got
    n.tick(room, [a, b], 500)  # nothing changed: nothing said
    assert len(a.got) == 1
    _bad(bob, 600)
    n.tick(room, [a, b], 1000)
    assert _entries(a.got[-1]) == [("bob", "poor")] and _entries(b.got[-1]) == [("bob", "poor")]
    carol = _rated(room, "carol")  # a newcomer is told to the room as a change
    c = Session(carol)
    _bad(alice, 1100)
    n.tick(room, [a, b, c], 1500)  # alice changed, but the room was told 500 ms ago
    assert len(a.got) == 2
    assert _entries(c.got[0]) == [("alice", "poor"), ("bob", "poor"), ("carol", "excellent")]  # the full list now
    n.tick(room, [a, b, c], 2000)
    assert _entries(a.got[-1]) == [("alice", "poor"), ("carol", "excellent")]
    assert _entries(c.got[-1]) == [("alice", "poor"), ("carol", "excellent")]
    del room.participants["bob"]  # gone: not a change
    n.tick(room, [a, c], 3100)
    assert len(a.got) == 3
    c.ended = True
    n.forget_rooms(set())
    n.tick(room, [a], 4000)  # forgotten room: a new baseline, the session was told already
    assert len(a.got) == 3
