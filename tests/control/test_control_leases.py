"""Issue 11, defects 12 and 14, over the HTTP contract against SQLite and Redis: a room whose node
is away waits for it (retryable ``service_unavailable``) instead of being placed a second time;
``GET`` never places; a node listing a room with participants takes it back and the empty copy
elsewhere is closed; a restarted node (a new ``instance`` with its own credential) retires the old
process's lease at once instead of waiting it out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from levelchat.tokens import mint
from tests.control.harness import KEY, PROJECT, ControlPlane, Reply, StandInNode, make_config


def node_token(node_id: str) -> str:
    return mint(KEY, project=PROJECT, now_s=time.time(), ttl_s=60, identity=f"node:{node_id}", scopes=("node:register",))


async def register_as(plane: ControlPlane, node_id: str, url: str, **extra: Any) -> Reply:
    """Register with the node's own credential (identity ``node:<id>``), as ``sfu.agent`` does."""
    body: dict[str, Any] = {"id": node_id, "url": url, "media": {"host": "127.0.0.1", "port": 7882},
                            "capacity": {"max_participants": 1000, "max_rooms": 100}, "version": "test", **extra}
    return await plane.call("POST", "/v1/nodes", body, tok=node_token(node_id))


async def heartbeat_as(plane: ControlPlane, node_id: str, **body: Any) -> Reply:
    return await plane.call("PUT", f"/v1/nodes/{node_id}/status", body, tok=node_token(node_id))


async def token_for(plane: ControlPlane, room: str) -> Reply:
    return await plane.call("POST", "/v1/tokens", {"room": room, "identity": "joiner", "scopes": ["room:join"]},
                            scopes=("room:admin",))


async def get_room(plane: ControlPlane, room: str) -> Reply:
    return await plane.call("GET", f"/v1/rooms/{room}", scopes=("room:admin",))


async def until_expired(plane: ControlPlane, node_id: str, others: list[StandInNode]) -> None:
    deadline = time.monotonic() + 10
    while (await plane.nodes())[node_id]["state"] != "expired":
        assert time.monotonic() < deadline, f"{node_id} never lost its lease"
        for n in others:
            await keep_alive(plane, n)
        await asyncio.sleep(0.05)


async def keep_alive(plane: ControlPlane, node: StandInNode, **body: Any) -> None:
    """A heartbeat with ``body``; a node whose short lease lapsed meanwhile (a loaded machine)
    registers again, listing the same rooms (without them, a listing the test makes was lost)."""
    beat = await heartbeat_as(plane, node.name, **body)
    if beat.status == 404:
        assert (await register_as(plane, node.name, node.url, **body)).status == 201
    else:
        assert beat.status == 200, beat.body


async def wait_until(cond: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_room_waits_for_its_away_node_and_get_never_places(store_url: str, nodes: list[StandInNode]) -> None:
    plane = await ControlPlane(make_config(store_url, lease_seconds=0.6, heartbeat_interval_seconds=0.2,
                                           room_grace_seconds=30)).start()
    try:
        assert (await register_as(plane, "node-1", nodes[0].url, instance="one")).status == 201
        placed = await plane.create_room(room="steady-room")
        assert placed.status == 201 and placed.body["node"]["id"] == "node-1"
        assert (await register_as(plane, "node-2", nodes[1].url)).status == 201
        await until_expired(plane, "node-1", [nodes[1]])
        for _ in range(5):  # every look-up during the grace: retryable, never another node
            for reply in (await get_room(plane, "steady-room"), await token_for(plane, "steady-room"),
                          await plane.create_room(room="steady-room")):
                reply.problem(503, "service_unavailable")
                assert 1 <= int(reply.headers["Retry-After"]) <= 5
            await keep_alive(plane, nodes[1])
        assert nodes[1].rooms == []
        # the node comes back (same instance: its process survived) listing the room with participants
        back = await register_as(plane, "node-1", nodes[0].url, instance="one", rooms=["steady-room"],
                                 room_participants={"steady-room": 2})
        assert back.status == 201, back.body
        view = await get_room(plane, "steady-room")
        assert view.status == 200 and view.body["node"]["id"] == "node-1" and view.body["state"] == "live"
        assert view.body["participants"] == 2 and view.body["placed_at"] == placed.body["placed_at"]
        assert (await token_for(plane, "steady-room")).body["node"]["id"] == "node-1"
        assert nodes[1].rooms == [] and nodes[0].rooms == ["steady-room"]
    finally:
        await plane.stop()


async def test_a_listing_with_participants_takes_the_room_back_and_closes_the_empty_copy(
    store_url: str, nodes: list[StandInNode]
) -> None:
    """After the grace the room was placed on node-2 (empty); node-1 comes back with participants in
    it: the room is node-1's again and node-2's empty copy is closed."""
    plane = await ControlPlane(make_config(store_url, lease_seconds=0.6, heartbeat_interval_seconds=0.2,
                                           room_grace_seconds=0)).start()
    try:
        assert (await register_as(plane, "node-1", nodes[0].url)).status == 201
        assert (await plane.create_room(room="split-room")).body["node"]["id"] == "node-1"
        assert (await register_as(plane, "node-2", nodes[1].url)).status == 201
        await until_expired(plane, "node-1", [nodes[1]])
        moved = await token_for(plane, "split-room")
        assert moved.status == 200 and moved.body["node"]["id"] == "node-2", moved.body
        assert nodes[1].rooms == ["split-room"]
        await keep_alive(plane, nodes[1], room_participants={"split-room": 0})
        back = await register_as(plane, "node-1", nodes[0].url, room_participants={"split-room": 3})
        assert back.status == 201
        assert (await get_room(plane, "split-room")).body["node"]["id"] == "node-1"
        assert (await token_for(plane, "split-room")).body["node"]["id"] == "node-1"
        await wait_until(lambda: nodes[1].deleted == ["split-room"], "node-2's empty copy was not closed")
        assert nodes[1].rooms == []
    finally:
        await plane.stop()


async def test_a_heartbeat_takes_a_room_back_but_never_from_a_copy_with_participants(
    cp: ControlPlane, nodes: list[StandInNode]
) -> None:
    assert (await register_as(cp, "node-1", nodes[0].url)).status == 201
    assert (await cp.create_room(room="hb-room")).body["node"]["id"] == "node-1"
    assert (await cp.create_room(room="busy-room")).body["node"]["id"] == "node-1"
    assert (await register_as(cp, "node-2", nodes[1].url)).status == 201
    # node-1's copy of busy-room has a participant (reported, and what its room API says)
    nodes[0].participants["busy-room"] = 1
    assert (await heartbeat_as(cp, "node-1", room_participants={"hb-room": 0, "busy-room": 1})).status == 200
    # node-2 reports participants in both rooms (e.g. publishers reconnected there)
    assert (await heartbeat_as(cp, "node-2", room_participants={"hb-room": 2, "busy-room": 4})).status == 200
    assert (await get_room(cp, "hb-room")).body["node"]["id"] == "node-2"
    await wait_until(lambda: nodes[0].deleted == ["hb-room"], "node-1's empty copy of hb-room was not closed")
    busy = await get_room(cp, "busy-room")
    assert busy.body["node"]["id"] == "node-1" and busy.body["participants"] == 1
    # node-1 reported race-room empty, but someone joined it since: the record moves to node-2
    # (which reports participants), yet node-1's copy is asked first and left open
    assert (await cp.create_room(room="race-room")).body["node"]["id"] == "node-1"
    nodes[0].participants["race-room"] = 1
    assert (await heartbeat_as(cp, "node-2", room_participants={"race-room": 1})).status == 200
    assert (await get_room(cp, "race-room")).body["node"]["id"] == "node-2"
    assert (await heartbeat_as(cp, "node-3", room_participants={"race-room": 1})).status == 404  # unknown node
    await asyncio.sleep(0.5)
    assert "busy-room" in nodes[0].rooms and "race-room" in nodes[0].rooms and nodes[0].deleted == ["hb-room"]


async def test_a_restarted_instance_retires_the_old_lease_at_once(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    """Defect 14: the same node identity, a new instance, the same URL (the new process holds it):
    the old lease is replaced now, its rooms not listed are placed again on it."""
    assert (await register_as(cp, "node-1", nodes[0].url, instance="boot-1")).status == 201
    assert (await cp.create_room(room="restart-room")).body["node"]["id"] == "node-1"
    assert (await register_as(cp, "node-2", nodes[1].url)).status == 201
    again = await register_as(cp, "node-1", nodes[0].url, instance="boot-2")
    assert again.status == 201 and again.body["node"]["instance"] == "boot-2", again.body
    # the room it no longer has is placed again at once, back on the restarted node
    await wait_until(lambda: nodes[0].rooms == ["restart-room", "restart-room"], "room not placed again")
    view = await get_room(cp, "restart-room")
    assert view.body["state"] == "live" and view.body["node"]["id"] == "node-1"
    joined = await token_for(cp, "restart-room")
    assert joined.status == 200 and joined.body["node"]["id"] == "node-1"
    assert nodes[0].rooms == ["restart-room", "restart-room"] and nodes[1].rooms == []
    # the old process, were it still around, is told to register again (and would meet node_exists)
    (await heartbeat_as(cp, "node-1", instance="boot-1")).problem(404, "not_found")
    assert (await heartbeat_as(cp, "node-1", instance="boot-2")).status == 200
    # the same instance registering again (a lost reply) is accepted too
    assert (await register_as(cp, "node-1", nodes[0].url, instance="boot-2", rooms=["restart-room"])).status == 201
    assert (await get_room(cp, "restart-room")).body["state"] == "live"


async def test_a_new_instance_at_another_url_waits_while_the_old_url_answers(
    cp: ControlPlane, nodes: list[StandInNode]
) -> None:
    assert (await register_as(cp, "node-1", nodes[0].url, instance="boot-1")).status == 201
    # another process claims the id from another URL while the first still answers: a duplicate
    dup = await register_as(cp, "node-1", nodes[1].url, instance="boot-2")
    dup.problem(409, "node_exists")
    assert (await cp.nodes())["node-1"]["url"] == nodes[0].url
    # a fleet credential proves no node identity: no takeover either
    fleet = await cp.register(nodes[0], id="node-1", instance="boot-3")
    fleet.problem(409, "node_exists")
    # the first process dies (its URL stops answering): the new instance takes over at once
    await nodes[0].stop()
    taken = await register_as(cp, "node-1", nodes[1].url, instance="boot-2")
    assert taken.status == 201 and taken.body["node"]["url"] == nodes[1].url
    # without an instance (an older node) nothing changes: node_exists until the lease lapses
    (await register_as(cp, "node-1", nodes[2].url)).problem(409, "node_exists")


async def test_a_node_with_many_rooms_reports_them_all(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    """A report of 10 000 rooms (ids of 64 characters) is larger than the 64 KiB of other bodies."""
    rooms = [f"{i:064d}" for i in range(10_000)]
    reply = await register_as(cp, "node-1", nodes[0].url, rooms=rooms, room_participants=dict.fromkeys(rooms, 1))
    assert reply.status == 201, reply.body
    beat = await heartbeat_as(cp, "node-1", room_participants=dict.fromkeys(rooms, 2))
    assert beat.status == 200, beat.body
    last = await get_room(cp, rooms[-1])
    assert last.body["node"]["id"] == "node-1" and last.body["participants"] == 2
    too_many = await heartbeat_as(cp, "node-1", room_participants=dict.fromkeys([*rooms, "one-more"], 1))
    assert "room_participants" in too_many.problem(400, "bad_request")["detail"]


async def test_an_empty_copy_does_not_take_a_room_from_an_away_node(store_url: str, nodes: list[StandInNode]) -> None:
    plane = await ControlPlane(make_config(store_url, lease_seconds=0.6, heartbeat_interval_seconds=0.2,
                                           room_grace_seconds=30)).start()
    try:
        assert (await register_as(plane, "node-1", nodes[0].url)).status == 201
        assert (await plane.create_room(room="away-room")).body["node"]["id"] == "node-1"
        assert (await register_as(plane, "node-2", nodes[1].url)).status == 201
        await until_expired(plane, "node-1", [nodes[1]])
        # node-2 has an empty copy (a client created it there): the room still waits for node-1
        await keep_alive(plane, nodes[1], room_participants={"away-room": 0})
        (await get_room(plane, "away-room")).problem(503, "service_unavailable")
        # with participants, it is node-2's: node-1 is away and holds nobody the control plane knows of
        await keep_alive(plane, nodes[1], room_participants={"away-room": 1})
        moved = await get_room(plane, "away-room")
        assert moved.status == 200 and moved.body["node"]["id"] == "node-2" and moved.body["state"] == "live"
    finally:
        await plane.stop()


async def test_a_restart_places_again_only_the_rooms_the_old_process_still_had(
    store_url: str, nodes: list[StandInNode]
) -> None:
    """Records of rooms that ended on the node long ago (it stopped listing them) are not brought
    back when it restarts; the rooms its last reports listed are."""
    plane = await ControlPlane(make_config(store_url, lease_seconds=1.0, heartbeat_interval_seconds=0.1)).start()
    try:
        assert (await register_as(plane, "node-1", nodes[0].url, instance="old")).status == 201
        for room in ("ended-room", "busy-room"):
            assert (await plane.create_room(room=room)).body["node"]["id"] == "node-1"
        until = time.monotonic() + 2.3  # more than two leases of reports listing busy-room only
        while time.monotonic() < until:
            beat = await heartbeat_as(plane, "node-1", instance="old", room_participants={"busy-room": 1})
            assert beat.status == 200, beat.body
            await asyncio.sleep(0.1)
        again = await register_as(plane, "node-1", nodes[0].url, instance="new")
        assert again.status == 201
        await wait_until(lambda: nodes[0].rooms.count("busy-room") == 2, "busy-room not placed again")
        await asyncio.sleep(0.3)
        assert nodes[0].rooms.count("ended-room") == 1
        ended = await get_room(plane, "ended-room")  # lost (or, were the lease to lapse under load, away)
        assert ended.status == 503 or ended.body["state"] == "lost", ended.body
    finally:
        await plane.stop()
