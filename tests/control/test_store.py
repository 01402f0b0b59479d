"""control.store: the operations both stores share, called directly with explicit times."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from control.model import (
    Capacity,
    Heartbeat,
    HeartbeatOutcome,
    Load,
    NodeRegistration,
    PlacementOutcome,
    RegisterOutcome,
    RoomSpec,
    RoomState,
)
from control.store import Store, StoreKind, StoreUrl, open_store

T0 = 1_700_000_000_000
LEASE = 10_000


def reg(node_id: str, max_rooms: int = 10) -> NodeRegistration:
    return NodeRegistration(node_id, f"http://127.0.0.1:1/{node_id}", "127.0.0.1", 7882, None,
                            Capacity(100, max_rooms), "t")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url, prefix="test:")
    yield s
    await s.close()


async def test_expire_marks_rooms_lost_once(store: Store) -> None:
    assert (await store.register_node(reg("a"), T0, LEASE))[0] is RegisterOutcome.CREATED
    p = await store.place_room(RoomSpec("room-1", 4, ("opus",)), T0 + 1, frozenset())
    assert p.outcome is PlacementOutcome.PLACED and p.node is not None and p.node.placed_since_report == 1
    assert await store.expire_leases(T0 + LEASE - 1) == []
    assert await store.expire_leases(T0 + LEASE) == ["a"]
    assert await store.expire_leases(T0 + LEASE + 1) == []
    room = await store.get_room("room-1")
    assert room is not None and room.state is RoomState.LOST and room.spec.codecs == ("opus",)
    hb = await store.heartbeat("a", Heartbeat(), T0 + LEASE + 1, LEASE)
    assert hb[0] is HeartbeatOutcome.EXPIRED
    again = await store.register_node(reg("a"), T0 + LEASE + 2, LEASE)
    assert again[0] is RegisterOutcome.REREGISTERED and again[1] is not None
    assert again[1].placed_since_report == 0


async def test_release_restores_previous_record(store: Store) -> None:
    await store.register_node(reg("a"), T0, LEASE)
    await store.place_room(RoomSpec("room-2"), T0, frozenset())
    await store.revoke("a", T0 + 1)
    await store.register_node(reg("b"), T0 + 2, LEASE)
    p = await store.place_room(RoomSpec("room-2"), T0 + 3, frozenset())
    assert p.outcome is PlacementOutcome.PLACED and p.node is not None and p.node.id == "b"
    assert p.previous is not None and p.previous.state is RoomState.LOST and p.previous.node_id == "a"
    await store.release_room("room-2", "b", p.previous)
    room = await store.get_room("room-2")
    assert room is not None and (room.node_id, room.state) == ("a", RoomState.LOST)
    node_b = await store.get_node("b")
    assert node_b is not None and node_b.placed_since_report == 0
    await store.release_room("room-2", "b", None)  # no longer on b: nothing happens
    assert await store.get_room("room-2") is not None


async def test_heartbeat_resets_placed_count(store: Store) -> None:
    await store.register_node(reg("a", max_rooms=2), T0, LEASE)
    for i in range(2):
        assert (await store.place_room(RoomSpec(f"room-{i}x"), T0, frozenset())).outcome is PlacementOutcome.PLACED
    assert (await store.place_room(RoomSpec("room-3x"), T0, frozenset())).outcome is PlacementOutcome.FULL
    outcome, node, _ = await store.heartbeat("a", Heartbeat(True, False, Load(rooms=1)), T0 + 1, LEASE)
    assert outcome is HeartbeatOutcome.OK and node is not None and node.placed_since_report == 0
    assert (await store.place_room(RoomSpec("room-3x"), T0 + 2, frozenset())).outcome is PlacementOutcome.PLACED


async def test_unknown_ids(store: Store) -> None:
    assert (await store.heartbeat("nope", Heartbeat(), T0, LEASE))[0] is HeartbeatOutcome.UNKNOWN
    assert await store.revoke("nope", T0) is None
    assert await store.provision("nope", T0) is None
    assert await store.get_node("nope") is None and await store.get_room("nope") is None
    await store.mark_unhealthy("nope")
    assert await store.list_nodes() == []


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("sqlite:///rel/control.db", StoreKind.SQLITE, "rel/control.db"),
        ("sqlite:////abs/control.db", StoreKind.SQLITE, "/abs/control.db"),
        ("sqlite://:memory:", StoreKind.SQLITE, ":memory:"),
        ("redis://127.0.0.1:6379/3", StoreKind.REDIS, "redis://127.0.0.1:6379/3"),
    ],
)
def test_store_url(url: str, kind: StoreKind, target: str) -> None:
    assert StoreUrl.parse(url) == StoreUrl(kind, target)


@pytest.mark.parametrize("url", ["mysql://x", "sqlite:///", "redis:///0", "sqlite:memory"])
def test_store_url_refused(url: str) -> None:
    with pytest.raises(ValueError, match="store URL"):
        StoreUrl.parse(url)


async def test_release_of_a_placement_whose_node_lapsed_meanwhile(store: Store) -> None:
    """The call creating the room hung until the node's lease lapsed (and the reaper marked the
    room lost): undoing it must still remove the record, or the room would wait out the grace of a
    node that never had it."""
    await store.register_node(reg("a"), T0, LEASE)
    await store.register_node(reg("b"), T0, 3 * LEASE)
    p = await store.place_room(RoomSpec("room-hung"), T0, frozenset(), 60_000)
    assert p.outcome is PlacementOutcome.PLACED and p.node is not None and p.node.id == "a"
    assert await store.expire_leases(T0 + LEASE) == ["a"]
    await store.release_room("room-hung", "a", p.previous)
    assert await store.get_room("room-hung") is None
    again = await store.place_room(RoomSpec("room-hung"), T0 + LEASE + 1, frozenset({"a"}), 60_000)
    assert again.outcome is PlacementOutcome.PLACED and again.node is not None and again.node.id == "b"


async def test_an_away_nodes_room_waits_out_the_grace(store: Store) -> None:
    await store.register_node(reg("a"), T0, LEASE)
    await store.register_node(reg("b"), T0, 3 * LEASE)
    assert (await store.place_room(RoomSpec("room-away"), T0, frozenset(), 5_000)).node.id == "a"  # type: ignore[union-attr]
    await store.expire_leases(T0 + LEASE)
    away = await store.place_room(RoomSpec("room-away"), T0 + LEASE + 1, frozenset(), 5_000)
    assert away.outcome is PlacementOutcome.AWAY and away.retry_at == T0 + LEASE + 5_000
    after = await store.place_room(RoomSpec("room-away"), T0 + LEASE + 5_000, frozenset(), 5_000)
    assert after.outcome is PlacementOutcome.PLACED and after.node is not None and after.node.id == "b"
