"""RoomRegistry: creation, caps, closing and the 24 h memory of closed rooms, on passed-in time."""

from __future__ import annotations

import asyncio

import pytest

from levelchat.errors import ApiError
from sfu.routing import rooms as rooms_module
from sfu.routing.participant import Participant, ParticipantKind
from sfu.routing.rooms import CLOSED_RETENTION_MS, RoomPolicy, RoomRegistry, RoomState

T0 = 5_000_000
HOUR_MS = 3600 * 1000


def policy(max_participants: int = 10, empty_timeout_s: int = 60) -> RoomPolicy:
    return RoomPolicy(max_participants=max_participants, codecs=("opus", "VP8"), empty_timeout_s=empty_timeout_s)


def person(identity: str, room: str = "room-1") -> Participant:
    return Participant(identity=identity, room_id=room, kind=ParticipantKind.RTC)


def registry(max_rooms: int = 10, max_participants: int = 100) -> RoomRegistry:
    return RoomRegistry(max_rooms=max_rooms, max_participants=max_participants)


def api_error(code: str, status: int) -> pytest.RaisesExc[ApiError]:
    return pytest.raises(ApiError, check=lambda e: e.code == code and e.status == status)


# -- create / get ------------------------------------------------------------------------------------


def test_create_then_get_returns_the_same_open_room() -> None:
    reg = registry()
    room, created = reg.create("room-1", policy(), T0)
    assert created
    assert room.state is RoomState.OPEN and room.created_ms == T0 and room.empty_since_ms == T0
    again, created_again = reg.create("room-1", policy(max_participants=99), T0 + 1)
    assert again is room and not created_again
    assert room.policy.max_participants == 10  # the existing room keeps its policy
    assert reg.get("room-1", T0 + 2) is room
    assert room.sid.startswith("RM_")


def test_room_cap_of_the_node() -> None:
    reg = registry(max_rooms=3)
    for i in range(3):
        reg.create(f"room-{i}", policy(), T0)
    with api_error("service_unavailable", 503):
        reg.create("room-3", policy(), T0)
    reg.create("room-0", policy(), T0)  # an existing one is not a new room
    reg.close(reg.get("room-0", T0), T0)
    room, created = reg.create("room-3", policy(), T0)  # a closed room frees its slot
    assert created and len(reg.rooms) == 3


@pytest.mark.parametrize(
    ("closed_ago_ms", "found"),
    [
        (0, True),
        (HOUR_MS, True),
        (CLOSED_RETENTION_MS, True),
        (CLOSED_RETENTION_MS + 1, False),
        (3 * CLOSED_RETENTION_MS, False),
    ],
)
def test_closed_rooms_are_remembered_for_24_hours(closed_ago_ms: int, found: bool) -> None:
    reg = registry()
    room, _ = reg.create("room-1", policy(), T0)
    reg.close(room, T0)
    now = T0 + closed_ago_ms
    if found:
        got = reg.get("room-1", now)
        assert got is room and got.state is RoomState.CLOSED and got.closed_ms == T0
        assert got.describe()["state"] == "closed"
    else:
        with api_error("room_not_found", 404):
            reg.get("room-1", now)
        assert "room-1" not in reg.closed


@pytest.mark.parametrize("room_id", ["never-made", "", "room-1 "])
def test_unknown_rooms_are_not_found(room_id: str) -> None:
    reg = registry()
    reg.create("room-1", policy(), T0)
    with api_error("room_not_found", 404):
        reg.get(room_id, T0)


def test_recreating_a_closed_room_opens_a_new_one() -> None:
    reg = registry()
    old, _ = reg.create("room-1", policy(), T0)
    reg.close(old, T0)
    new, created = reg.create("room-1", policy(max_participants=2), T0 + HOUR_MS)
    assert created and new is not old and new.sid != old.sid
    assert reg.get("room-1", T0 + HOUR_MS) is new
    assert "room-1" not in reg.closed


def test_forget_old_keeps_only_recent_closed_rooms() -> None:
    reg = registry()
    for i in range(4):
        room, _ = reg.create(f"room-{i}", policy(), T0)
        reg.close(room, T0 + i * HOUR_MS)
    reg.forget_old(T0 + CLOSED_RETENTION_MS + HOUR_MS + 1)  # rooms 0 and 1 are older than 24 h
    assert sorted(reg.closed) == ["room-2", "room-3"]


def test_closed_rooms_older_than_24_hours_do_not_pile_up() -> None:
    """The memory of closed rooms stays bounded even when nobody asks for the old ones."""
    reg = registry(max_rooms=1000)
    for i in range(100):
        room, _ = reg.create(f"old-{i}", policy(), T0)
        reg.close(room, T0)
    assert len(reg.closed) == 100
    later = T0 + CLOSED_RETENTION_MS + 1
    room, _ = reg.create("fresh", policy(), later)
    reg.close(room, later)
    assert list(reg.closed) == ["fresh"]


def test_closed_rooms_are_bounded_oldest_forgotten_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rooms_module, "CLOSED_ROOMS_MAX", 5)
    reg = registry(max_rooms=1000)
    for i in range(12):
        room, _ = reg.create(f"room-{i}", policy(), T0 + i)
        reg.close(room, T0 + i)
    assert list(reg.closed) == [f"room-{i}" for i in range(7, 12)]
    assert reg.get("room-11", T0 + 20).state is RoomState.CLOSED
    with api_error("room_not_found", 404):
        reg.get("room-6", T0 + 20)


def test_a_closed_record_keeps_no_participants() -> None:
    reg = registry()
    room, _ = reg.create("room-1", policy(), T0)
    reg.admit(room, person("a"), T0)
    left = reg.close(room, T0 + 1)
    assert [p.identity for p in left] == ["a"]
    assert reg.closed["room-1"].participants == {}
    assert not hasattr(room, "__dict__"), "room records are slotted: small"


def test_internal_rooms_do_not_count_against_caps() -> None:
    reg = registry(max_rooms=1, max_participants=1)
    probe, _ = reg.create("self-check", policy(max_participants=2), T0, internal=True)
    public, _ = reg.create("room-1", policy(), T0)
    reg.admit(probe, person("probe-pub", probe.id), T0)
    reg.admit(probe, person("probe-sub", probe.id), T0)
    reg.admit(public, person("a"), T0)  # the node cap of 1 ignores the probe's 2
    assert (reg.room_count, reg.participant_count) == (1, 1)
    assert reg.public_rooms() == [public]
    with api_error("room/cap-denied", 429):
        reg.admit(probe, person("probe-3", probe.id), T0)  # its own room cap still holds
    with api_error("service_unavailable", 503):
        reg.create("room-2", policy(), T0)


# -- admit / release ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("cap", "joins"), [(1, 3), (3, 3), (3, 10), (8, 20)])
def test_room_cap_admits_exactly_cap(cap: int, joins: int) -> None:
    reg = registry()
    room, _ = reg.create("room-1", policy(max_participants=cap), T0)
    admitted, refused = 0, 0
    for i in range(joins):
        try:
            reg.admit(room, person(f"user-{i}"), T0)
            admitted += 1
        except ApiError as e:
            assert e.code == "room/cap-denied" and e.status == 429
            assert f"cap of {cap} participants" in e.detail
            refused += 1
    assert admitted == min(cap, joins) and refused == joins - admitted
    assert len(room.participants) == admitted


def test_node_cap_counts_every_room() -> None:
    reg = registry(max_participants=5)
    a, _ = reg.create("room-a", policy(max_participants=4), T0)
    b, _ = reg.create("room-b", policy(max_participants=4), T0)
    for i in range(3):
        reg.admit(a, person(f"a{i}", "room-a"), T0)
    reg.admit(b, person("b0", "room-b"), T0)
    reg.admit(b, person("b1", "room-b"), T0)
    assert reg.participant_count == 5
    with api_error("room/cap-denied", 429) as info:
        reg.admit(a, person("a3", "room-a"), T0)  # the room has a seat, the node has none
    assert "this node" in info.value.detail
    reg.release(b, b.participants["b1"], T0)
    reg.admit(a, person("a3", "room-a"), T0)
    assert reg.participant_count == 5


def test_same_identity_replaces_and_returns_the_previous_even_when_full() -> None:
    reg = registry(max_participants=2)
    room, _ = reg.create("room-1", policy(max_participants=2), T0)
    first = person("alice")
    assert reg.admit(room, first, T0) is None
    reg.admit(room, person("bob"), T0)
    second = person("alice")
    assert reg.admit(room, second, T0 + 1) is first
    assert room.participants["alice"] is second and len(room.participants) == 2
    # releasing the replaced one does not remove its successor
    reg.release(room, first, T0 + 2)
    assert room.participants["alice"] is second


def test_release_marks_the_room_empty_when_the_last_leaves() -> None:
    reg = registry()
    room, _ = reg.create("room-1", policy(), T0)
    a, b = person("a"), person("b")
    reg.admit(room, a, T0 + 10)
    assert room.empty_since_ms is None
    reg.admit(room, b, T0 + 20)
    reg.release(room, a, T0 + 30)
    assert room.empty_since_ms is None
    reg.release(room, b, T0 + 40)
    assert room.empty_since_ms == T0 + 40
    reg.release(room, b, T0 + 50)  # twice: nothing changes
    assert room.empty_since_ms == T0 + 40


def test_admit_into_a_closed_room_is_refused() -> None:
    reg = registry()
    room, _ = reg.create("room-1", policy(), T0)
    reg.admit(room, person("a"), T0)
    left = reg.close(room, T0 + 5)
    assert [p.identity for p in left] == ["a"] and room.participants == {}
    with api_error("room_not_found", 404):
        reg.admit(room, person("b"), T0 + 6)
    assert reg.participant_count == 0


# -- empty rooms ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout_s", "idle_ms", "expired"),
    [(60, 59_999, False), (60, 60_000, True), (0, 0, True), (300, 300_001, True)],
)
def test_expired_empty(timeout_s: int, idle_ms: int, expired: bool) -> None:
    reg = registry()
    empty, _ = reg.create("empty", policy(empty_timeout_s=timeout_s), T0)
    busy, _ = reg.create("busy", policy(empty_timeout_s=timeout_s), T0)
    reg.admit(busy, person("x", "busy"), T0)
    assert reg.expired_empty(T0 + idle_ms) == ([empty] if expired else [])


def test_empty_clock_restarts_when_someone_leaves() -> None:
    reg = registry()
    room, _ = reg.create("room-1", policy(empty_timeout_s=60), T0)
    p = person("a")
    reg.admit(room, p, T0 + 50_000)
    reg.release(room, p, T0 + 100_000)
    assert reg.expired_empty(T0 + 100_000 + 59_999) == []
    assert reg.expired_empty(T0 + 100_000 + 60_000) == [room]


def test_describe() -> None:
    reg = registry()
    room, _ = reg.create("room-1", policy(max_participants=4), T0)
    reg.admit(room, person("a"), T0)
    d = room.describe()
    assert d["room"] == "room-1" and d["state"] == "open" and d["num_participants"] == 1
    assert d["max_participants"] == 4 and d["codecs"] == ["opus", "VP8"] and d["empty_timeout_s"] == 60
    assert [p["identity"] for p in d["participants"]] == ["a"]  # type: ignore[attr-defined]


# -- the race ----------------------------------------------------------------------------------------


async def _race_once(seats_taken: int, cap: int, contenders: int) -> tuple[int, list[ApiError]]:
    reg = registry()
    room, _ = reg.create("room-1", policy(max_participants=cap), T0)
    for i in range(seats_taken):
        reg.admit(room, person(f"seated-{i}"), T0)
    start = asyncio.Event()

    async def join(i: int) -> Participant:
        await start.wait()  # all tasks released together, each then admits without awaiting
        p = person(f"racer-{i}")
        reg.admit(room, p, T0)
        return p

    tasks = [asyncio.create_task(join(i)) for i in range(contenders)]
    await asyncio.sleep(0)
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, ApiError)]
    winners = [r for r in results if isinstance(r, Participant)]
    assert len(winners) + len(errors) == contenders
    assert len(room.participants) == cap
    assert all(room.participants[w.identity] is w for w in winners)
    return len(winners), errors


@pytest.mark.parametrize("round_", range(20))
async def test_fifty_joins_race_for_the_last_three_seats(round_: int) -> None:
    winners, errors = await _race_once(seats_taken=7, cap=10, contenders=50)
    assert winners == 3
    assert len(errors) == 47
    assert {(e.code, e.status) for e in errors} == {("room/cap-denied", 429)}
