"""Issue 11, defects 6 and 7: every numeric field of a control-plane body has a range and every node
URL must be usable by the control plane's own client; bad input is ``bad_request`` and leaves the
fleet working (placement, heartbeats), never ``internal_error``.  A node record the HTTP client
cannot use at all (written before this validation existed) is marked unhealthy and skipped."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from control.model import Capacity, NodeRegistration
from control.store import open_store
from tests.control.harness import PROJECT, ControlPlane, StandInNode, token

BIG = 2**63  # one past SQLite's INTEGER
HUGE = 10**400  # a JSON integer float() cannot convert


async def assert_fleet_works(cp: ControlPlane, node: StandInNode, tag: str) -> None:
    """The registered node still heartbeats, and rooms and tokens are placed on it."""
    assert (await cp.heartbeat(node.name, load={"rooms": 1, "participants": 2, "cpu": 0.5})).status == 200
    for i in range(3):
        created = await cp.create_room(room=f"{tag}-room-{i}")
        assert created.status == 201 and created.body["node"]["id"] == node.name, created.body
        joined = await cp.call("POST", "/v1/tokens", {"room": f"{tag}-tok-{i}", "identity": "u", "scopes": ["room:join"]},
                               scopes=("room:admin",))
        assert joined.status == 200 and joined.body["url"] == node.url, joined.body


@pytest.mark.parametrize(
    ("load", "fragment"),
    [
        ({"rooms": BIG}, "rooms"),
        ({"participants": BIG}, "participants"),
        ({"rooms": HUGE}, "rooms"),
        ({"cpu": 1.5}, "cpu"),
        ({"cpu": HUGE}, "cpu"),
        ({"packets_per_s": HUGE}, "packets_per_s"),
        ({"packets_per_s": 1e300}, "packets_per_s"),
    ],
)
async def test_heartbeat_numbers_out_of_range(
    cp: ControlPlane, nodes: list[StandInNode], load: dict[str, Any], fragment: str
) -> None:
    assert (await cp.register(nodes[0])).status == 201
    reply = await cp.call("PUT", "/v1/nodes/node-1/status", {"load": load}, scopes=("node:register",))
    assert fragment in reply.problem(400, "bad_request")["detail"]
    await assert_fleet_works(cp, nodes[0], "hb")


async def test_heartbeat_room_participants_out_of_range(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    assert (await cp.register(nodes[0])).status == 201
    for listing in ({"room-x": BIG}, {"room-x": -1}, {"bad room!": 1}, ["room-x"]):
        reply = await cp.call("PUT", "/v1/nodes/node-1/status", {"room_participants": listing}, scopes=("node:register",))
        assert "room_participants" in reply.problem(400, "bad_request")["detail"]
    await assert_fleet_works(cp, nodes[0], "hbr")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"capacity": {"max_participants": BIG, "max_rooms": 1}}, "max_participants"),
        ({"capacity": {"max_participants": 10, "max_rooms": BIG}}, "max_rooms"),
        ({"capacity": {"max_participants": 10, "max_rooms": HUGE}}, "max_rooms"),
        ({"media": {"host": "127.0.0.1", "port": BIG}}, "media.port"),
        ({"media": {"host": "127.0.0.1", "port": 0}}, "media.port"),
        ({"media": {"host": "a" * 70 + ".example", "port": 7882}}, "media.host"),
        ({"media": {"host": "two words", "port": 7882}}, "media.host"),
        ({"media": {"host": "", "port": 7882}}, "media.host"),
        ({"url": "http://" + "a" * 70 + ".example:7880"}, "url"),  # a label over 63 characters
        ({"url": "http://127.0.0.1:99999"}, "url"),
        ({"url": "http://127.0.0.1:0"}, "url"),
        ({"url": "http://sfu 1.example:7880"}, "url"),
        ({"url": "http://127.0.0.1:7880/a b"}, "url"),
        ({"url": "http://user:pw@127.0.0.1:7880"}, "user info"),
        ({"url": "http://[::1:7880"}, "url"),
        ({"url": "http://::1:7880"}, "url"),
        ({"url": "http://999.0.0.1:7880"}, "url"),
        ({"url": "http://-bad-.example"}, "url"),
        ({"url": "http:///v1"}, "url"),
        ({"url": "http://127.0.0.1:7880?x=1"}, "query"),
        ({"instance": "x" * 65}, "instance"),
    ],
)
async def test_bad_registration_is_refused_and_placement_keeps_working(
    cp: ControlPlane, nodes: list[StandInNode], override: dict[str, Any], fragment: str
) -> None:
    assert (await cp.register(nodes[0])).status == 201
    bad = await cp.register(nodes[1], **override)
    assert fragment in bad.problem(400, "bad_request")["detail"]
    assert "node-2" not in await cp.nodes()
    await assert_fleet_works(cp, nodes[0], "reg")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:7880", "https://sfu-1.example.com", "http://[::1]:7880", "http://10.0.0.5:7880/sfu"]
)
async def test_good_urls_are_accepted(cp: ControlPlane, nodes: list[StandInNode], url: str) -> None:
    reply = await cp.register(nodes[0], url=url, media={"host": "::1", "port": 7882})
    assert reply.status == 201 and reply.body["node"]["url"] == url, reply.body


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"room": "big-room", "max_participants": BIG}, "max_participants"),
        ({"room": "big-room", "max_participants": HUGE}, "max_participants"),
        ({"room": "big-room", "empty_timeout_s": BIG}, "empty_timeout_s"),
        ({"room": "big-room", "empty_timeout_s": 86401}, "empty_timeout_s"),
    ],
)
async def test_room_numbers_out_of_range(
    cp: ControlPlane, nodes: list[StandInNode], body: dict[str, Any], fragment: str
) -> None:
    assert (await cp.register(nodes[0])).status == 201
    reply = await cp.create_room(**body)
    assert fragment in reply.problem(400, "bad_request")["detail"]
    assert nodes[0].rooms == []
    await assert_fleet_works(cp, nodes[0], "room")


@pytest.mark.parametrize("ttl", [BIG, HUGE, 0, 86401, 1.5])
async def test_token_ttl_out_of_range(cp: ControlPlane, nodes: list[StandInNode], ttl: object) -> None:
    assert (await cp.register(nodes[0])).status == 201
    body = {"room": "ttl-room", "identity": "u", "scopes": ["room:join"], "ttl_s": ttl}
    reply = await cp.call("POST", "/v1/tokens", body, scopes=("room:admin",))
    assert "ttl_s" in reply.problem(400, "bad_request")["detail"]
    await assert_fleet_works(cp, nodes[0], "ttl")


async def test_raw_body_with_huge_numbers_is_bad_request(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    """The numbers as a client would really send them: digits, not a Python int."""
    assert (await cp.register(nodes[0])).status == 201
    assert cp.session is not None


    raw = '{"load": {"rooms": 9223372036854775808, "packets_per_s": 1' + "0" * 400 + "}}"
    async with cp.session.put(
        cp.url + "/v1/nodes/node-1/status", data=raw,
        headers={"Authorization": f"Bearer {token('node:register')}", "Content-Type": "application/json"},
    ) as resp:
        body = json.loads(await resp.read())
        assert resp.status == 400 and body["code"] == "bad_request", body
    await assert_fleet_works(cp, nodes[0], "raw")


@pytest.mark.parametrize(
    "url",
    ["http://" + "a" * 70 + ".example:7880", "http://127.0.0.1:99999", "http://sfu 1.example:7880", "http://[zz]:1"],
)
async def test_a_stored_node_the_client_cannot_use_is_skipped_never_500(
    cp: ControlPlane, nodes: list[StandInNode], url: str
) -> None:
    """A record written before URLs were validated (straight into the store): the HTTP client raises
    on it (not always a ``ClientError``); placement marks that node unhealthy and uses the next."""
    store = await open_store(cp.config.store, prefix=f"levelchat:{PROJECT}:")
    try:
        reg = NodeRegistration("node-0", url, "127.0.0.1", 7882, None, Capacity(1000, 100), "old")
        await store.register_node(reg, int(time.time() * 1000), 60_000)
    finally:
        await store.close()
    assert (await cp.register(nodes[0])).status == 201
    statuses = []
    for i in range(5):
        created = await cp.create_room(room=f"skip-room-{i}")
        joined = await cp.call("POST", "/v1/tokens", {"room": f"skip-tok-{i}", "identity": "u", "scopes": ["room:join"]},
                               scopes=("room:admin",))
        statuses += [created.status, joined.status]
        assert created.body["node"]["id"] == "node-1" and joined.body["node"]["id"] == "node-1"
    assert statuses == [201, 200] * 5
    assert (await cp.nodes())["node-0"]["state"] == "unhealthy"
