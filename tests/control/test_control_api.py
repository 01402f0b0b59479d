"""The control plane's HTTP contract, over a real server, against SQLite and Redis alike."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from levelchat.tokens import ApiKey, TokenVerifier, mint
from tests.control.harness import (
    KEY,
    PROJECT,
    ControlPlane,
    StandInNode,
    make_config,
    token,
)

# -- auth ---------------------------------------------------------------------------------------

AUTH_CASES = [
    # (description, token factory, status, code)
    ("no token", lambda: "", 401, "unauthorized"),
    ("missing scope", lambda: token("room:create"), 401, "token/unauthorized"),
    ("bad signature", lambda: token("node:admin", key=ApiKey(KEY.key_id, "x" * 40)), 401, "token/invalid"),
    ("unknown key", lambda: token("node:admin", key=ApiKey("other", "y" * 40)), 401, "token/invalid"),
    ("expired", lambda: token("node:admin", ttl_s=-120), 401, "token/expired"),
]


@pytest.mark.parametrize(("what", "make", "status", "code"), AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
async def test_node_list_refuses_bad_credentials(cp: ControlPlane, what: str, make: object, status: int, code: str) -> None:
    tok = make()  # type: ignore[operator]
    reply = await cp.call("GET", "/v1/nodes", tok=tok, scopes=())
    reply.problem(status, code)


# -- registration, heartbeat, lease --------------------------------------------------------------


async def test_register_heartbeat_and_list(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    reply = await cp.register(nodes[0], region="eu-west")
    assert reply.status == 201, reply.body
    assert reply.headers["Location"] == "/v1/nodes/node-1"
    assert reply.body["lease_s"] == 30.0 and reply.body["heartbeat_interval_s"] == 1.0
    assert reply.body["node"]["state"] == "live"

    hb = await cp.heartbeat("node-1", healthy=True, draining=False,
                            load={"rooms": 3, "participants": 12, "cpu": 0.25, "packets_per_s": 900})
    assert hb.status == 200, hb.body
    listed = (await cp.nodes())["node-1"]
    assert listed["load"] == {"rooms": 3, "participants": 12, "cpu": 0.25, "packets_per_s": 900.0}
    assert listed["region"] == "eu-west"
    assert listed["url"] == nodes[0].url
    assert listed["lease"]["alive"] is True and listed["lease"]["remaining_ms"] > 25_000


async def test_register_while_lease_alive_is_node_exists(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    assert (await cp.register(nodes[0])).status == 201
    again = await cp.register(nodes[1], id="node-1")
    body = again.problem(409, "node_exists")
    assert 1 <= int(again.headers["Retry-After"]) <= 30
    assert "node-1" in body["detail"]
    assert (await cp.nodes())["node-1"]["url"] == nodes[0].url  # the holder kept its record


async def test_heartbeat_unknown_node_is_not_found(cp: ControlPlane) -> None:
    (await cp.heartbeat("ghost", healthy=True)).problem(404, "not_found")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"healthy": "yes"}, "healthy"),
        ({"load": {"rooms": -1}}, "rooms"),
        ({"load": {"cpu": "high"}}, "cpu"),
        ({"load": []}, "load"),
        # past SQLite's 64-bit integers: a catalogue 400, not a 500 from the store
        ({"load": {"rooms": 2**63}}, "rooms"),
        ({"load": {"participants": 2**64 + 5}}, "participants"),
        ({"load": {"packets_per_s": 1e300}}, "packets_per_s"),
    ],
)
async def test_heartbeat_validation(cp: ControlPlane, nodes: list[StandInNode], body: dict[str, object], fragment: str) -> None:
    await cp.register(nodes[0])
    reply = await cp.call("PUT", "/v1/nodes/node-1/status", body, scopes=("node:register",))
    assert fragment in reply.problem(400, "bad_request")["detail"]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"id": "bad id!"}, "node id"),
        ({"url": "ftp://x"}, "url"),
        ({"media": {"host": "127.0.0.1", "port": 70000}}, "media.port"),
        ({"capacity": {"max_participants": 0, "max_rooms": 1}}, "max_participants"),
        ({"capacity": {"max_participants": 2**63, "max_rooms": 1}}, "max_participants"),
        ({"capacity": None}, "capacity"),
    ],
)
async def test_register_validation(cp: ControlPlane, nodes: list[StandInNode], override: dict[str, object], fragment: str) -> None:
    reply = await cp.register(nodes[0], **override)
    assert fragment in reply.problem(400, "bad_request")["detail"]


async def wait_for_state(plane: ControlPlane, node_id: str, state: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await plane.nodes())[node_id]["state"] != state:
        assert time.monotonic() < deadline, f"{node_id} never became {state}"
        await asyncio.sleep(0.1)


async def keep_alive(plane: ControlPlane, node: StandInNode) -> None:
    """Heartbeat; a heavily loaded test machine may let the short lease lapse, then register again."""
    if (await plane.heartbeat(node.name, healthy=True)).status == 404:
        assert (await plane.register(node)).status == 201


async def test_lease_expiry_then_reregistration(store_url: str, nodes: list[StandInNode]) -> None:
    plane = await ControlPlane(make_config(store_url, lease_seconds=0.6, heartbeat_interval_seconds=0.2)).start()
    try:
        assert (await plane.register(nodes[0])).status == 201
        await wait_for_state(plane, "node-1", "expired")
        (await plane.heartbeat("node-1", healthy=True)).problem(404, "not_found")
        # The same id may register again once its lease has lapsed.
        again = await plane.register(nodes[0])
        assert again.status == 201 and again.body["node"]["state"] == "live"
    finally:
        await plane.stop()


async def test_heartbeat_renews_the_lease(store_url: str, nodes: list[StandInNode]) -> None:
    plane = await ControlPlane(make_config(store_url, lease_seconds=2.0, heartbeat_interval_seconds=0.5)).start()
    try:
        first = (await plane.register(nodes[0])).body["node"]["lease"]["expires_at"]
        await asyncio.sleep(0.2)
        renewed = await plane.heartbeat("node-1", healthy=True)
        assert renewed.status == 200
        assert renewed.body["node"]["lease"]["expires_at"] >= first + 150
    finally:
        await plane.stop()


async def test_revoke_then_provision(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0])
    revoked = await cp.call("DELETE", "/v1/nodes/node-1", scopes=("node:admin",))
    assert revoked.status == 200 and revoked.body["node"]["state"] == "revoked"
    (await cp.heartbeat("node-1", healthy=True)).problem(410, "node_revoked")
    (await cp.register(nodes[0])).problem(410, "node_revoked")
    (await cp.create_room(room="after-revoke")).problem(503, "service_unavailable")

    provisioned = await cp.call("POST", "/v1/nodes/node-1/provision", scopes=("node:admin",))
    assert provisioned.status == 200 and provisioned.body["node"]["revoked"] is False
    assert (await cp.register(nodes[0])).status == 201
    assert (await cp.create_room(room="after-provision")).status == 201


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/v1/nodes/ghost"), ("POST", "/v1/nodes/ghost/provision")])
async def test_admin_on_unknown_node_is_not_found(cp: ControlPlane, method: str, path: str) -> None:
    (await cp.call(method, path, scopes=("node:admin",))).problem(404, "not_found")


async def test_revoke_needs_node_admin(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0])
    (await cp.call("DELETE", "/v1/nodes/node-1", scopes=("node:register",))).problem(401, "token/unauthorized")
    assert (await cp.nodes())["node-1"]["state"] == "live"


# -- placement ----------------------------------------------------------------------------------


async def test_rooms_spread_over_three_nodes(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    for n in nodes:
        await cp.register(n, capacity={"max_participants": 100, "max_rooms": 10})
    for i in range(9):
        reply = await cp.create_room(room=f"spread-{i}", max_participants=8, codecs=["opus", "VP8"])
        assert reply.status == 201, reply.body
        assert reply.headers["Location"] == f"/v1/rooms/spread-{i}"
    assert [len(n.rooms) for n in nodes] == [3, 3, 3]
    assert all(s == frozenset({"room:create"}) for n in nodes for s in n.seen_scopes)
    listed = await cp.nodes()
    assert [listed[n.name]["rooms_placed_since_report"] for n in nodes] == [3, 3, 3]


async def test_least_loaded_node_wins(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    for n in nodes:
        await cp.register(n, capacity={"max_participants": 100, "max_rooms": 10})
    await cp.heartbeat("node-1", load={"rooms": 5, "participants": 10, "cpu": 0.1})
    await cp.heartbeat("node-2", load={"rooms": 1, "participants": 60, "cpu": 0.1})  # participants dominate
    await cp.heartbeat("node-3", load={"rooms": 2, "participants": 10, "cpu": 0.3})
    reply = await cp.create_room(room="least-1")
    assert reply.body["node"] == {"id": "node-3", "url": nodes[2].url}
    # node-3 now counts 3 rooms (0.3 rooms, cpu 0.3), still below node-1 (0.5) and node-2 (0.6).
    assert (await cp.create_room(room="least-2")).body["node"]["id"] == "node-3"
    await cp.heartbeat("node-3", load={"rooms": 4, "participants": 10, "cpu": 0.9})
    assert (await cp.create_room(room="least-3")).body["node"]["id"] == "node-1"


async def test_existing_room_is_returned_not_placed_again(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0])
    await cp.register(nodes[1])
    first = await cp.create_room(room="same-room")
    second = await cp.create_room(room="same-room")
    assert first.status == 201 and second.status == 200
    assert first.body["node"] == second.body["node"]
    assert sum(len(n.rooms) for n in nodes) == 1


async def test_room_id_is_generated_when_absent(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0])
    reply = await cp.create_room(max_participants=4)
    assert reply.status == 201
    assert reply.body["room"].startswith("room-") and nodes[0].rooms == [reply.body["room"]]


async def test_no_nodes_is_service_unavailable(cp: ControlPlane) -> None:
    reply = await cp.create_room(room="nowhere")
    reply.problem(503, "service_unavailable")
    assert reply.headers["Retry-After"] == "30"


@pytest.mark.parametrize(
    "reports",
    [
        [{"healthy": False}, {"healthy": False}],
        [{"healthy": True, "draining": True}, {"healthy": False}],
    ],
    ids=["all-unhealthy", "draining-and-unhealthy"],
)
async def test_failing_nodes_are_room_check_failed(
    cp: ControlPlane, nodes: list[StandInNode], reports: list[dict[str, bool]]
) -> None:
    for node, report in zip(nodes, reports, strict=False):
        await cp.register(node)
        assert (await cp.heartbeat(node.name, **report)).status == 200
    reply = await cp.create_room(room="sick-fleet")
    body = reply.problem(503, "room_check_failed")
    assert reply.headers["Retry-After"] == "30"
    assert "2 node(s)" in body["detail"]
    assert all(not n.rooms for n in nodes)


async def test_full_fleet_is_service_unavailable(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0], capacity={"max_participants": 100, "max_rooms": 2})
    await cp.register(nodes[1], capacity={"max_participants": 100, "max_rooms": 2})
    await cp.heartbeat("node-2", load={"rooms": 2})
    assert (await cp.create_room(room="fill-1")).status == 201
    assert (await cp.create_room(room="fill-2")).status == 201
    reply = await cp.create_room(room="fill-3")
    body = reply.problem(503, "service_unavailable")
    assert "capacity" in body["detail"] and reply.headers["Retry-After"] == "30"
    assert nodes[0].rooms == ["fill-1", "fill-2"] and nodes[1].rooms == []


async def test_participant_capacity_counts_placed_rooms(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0], capacity={"max_participants": 10, "max_rooms": 100})
    await cp.heartbeat("node-1", load={"rooms": 1, "participants": 8})
    assert (await cp.create_room(room="parts-1")).status == 201  # 8 + 1 placed < 10
    assert (await cp.create_room(room="parts-2")).status == 201  # 8 + 2 = 10 after this one
    (await cp.create_room(room="parts-3")).problem(503, "service_unavailable")


async def test_region_affinity_with_fallback(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0], region="eu")
    await cp.register(nodes[1], region="us")
    await cp.heartbeat("node-1", load={"rooms": 50, "cpu": 0.5})
    assert (await cp.create_room(room="region-eu", region="eu")).body["node"]["id"] == "node-1"
    assert (await cp.create_room(room="region-none")).body["node"]["id"] == "node-2"
    assert (await cp.create_room(room="region-ap", region="ap")).body["node"]["id"] == "node-2"
    await cp.heartbeat("node-1", healthy=False)
    assert (await cp.create_room(room="region-eu-2", region="eu")).body["node"]["id"] == "node-2"
    room = await cp.call("GET", "/v1/rooms/region-eu", scopes=("room:admin",))
    assert room.body["region"] == "eu" and room.body["state"] == "live"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"room": "x"}, 400, "invalid_room"),
        ({"room": "bad room!"}, 400, "invalid_room"),
        ({"room": "good-room", "max_participants": 0}, 400, "bad_request"),
        ({"room": "good-room", "codecs": "opus"}, 400, "bad_request"),
        ({"room": "good-room", "region": "eu west"}, 400, "bad_request"),
    ],
)
async def test_create_room_validation(
    cp: ControlPlane, nodes: list[StandInNode], body: dict[str, object], status: int, code: str
) -> None:
    await cp.register(nodes[0])
    (await cp.create_room(**body)).problem(status, code)
    assert nodes[0].rooms == []


async def test_create_room_with_room_bound_token_for_another_room(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0])
    reply = await cp.call("POST", "/v1/rooms", {"room": "room-b"}, tok=token("room:create", room="room-a"))
    reply.problem(401, "token/unauthorized")


async def test_unreachable_node_is_skipped_and_marked(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    dead = StandInNode("node-0")
    await dead.start()
    await cp.register(dead)  # sorts first: wins the tie
    await dead.stop()
    await cp.register(nodes[0])
    reply = await cp.create_room(room="survivor")
    assert reply.status == 201 and reply.body["node"]["id"] == "node-1"
    listed = await cp.nodes()
    assert listed["node-0"]["healthy"] is False and listed["node-0"]["state"] == "unhealthy"
    assert listed["node-0"]["rooms_placed_since_report"] == 0
    # Its next heartbeat restores it.
    await cp.heartbeat("node-0", healthy=True)
    assert (await cp.nodes())["node-0"]["state"] == "live"


async def test_every_node_failing_is_room_check_failed(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    for n in nodes[:2]:
        n.reply_status, n.reply_code = 503, "room_check_failed"
        await cp.register(n)
    reply = await cp.create_room(room="doomed")
    reply.problem(503, "room_check_failed")
    assert reply.headers["Retry-After"] == "30"
    (await cp.call("GET", "/v1/rooms/doomed", scopes=("room:admin",))).problem(404, "room_not_found")


async def test_node_refusing_the_request_passes_its_code(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    nodes[0].reply_status, nodes[0].reply_code = 415, "codec/unsupported"
    await cp.register(nodes[0])
    await cp.register(nodes[1])
    await cp.heartbeat("node-2", load={"rooms": 90})
    reply = await cp.create_room(room="odd-codec", codecs=["AV9"])
    reply.problem(415, "codec/unsupported")
    assert nodes[1].rooms == []  # not retried elsewhere: every node would refuse it
    assert (await cp.nodes())["node-1"]["healthy"] is True


async def test_get_room(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0])
    await cp.create_room(room="lookup-me", max_participants=5, codecs=["opus"])
    for scopes in (("room:admin",), ("room:create",)):
        reply = await cp.call("GET", "/v1/rooms/lookup-me", scopes=scopes)
        assert reply.status == 200
        assert reply.body["node"] == {"id": "node-1", "url": nodes[0].url}
        assert reply.body["max_participants"] == 5 and reply.body["codecs"] == ["opus"]
    (await cp.call("GET", "/v1/rooms/never-made", scopes=("room:admin",))).problem(404, "room_not_found")
    (await cp.call("GET", "/v1/rooms/lookup-me", scopes=("room:join",))).problem(401, "token/unauthorized")


# -- lost rooms ----------------------------------------------------------------------------------


async def test_lost_room_is_placed_again_after_lease_expiry(store_url: str, nodes: list[StandInNode]) -> None:
    """Within the grace the room waits for its node (503, retryable); GET never places it; after the
    grace, POST /v1/rooms (or /v1/tokens) places it again with its stored settings."""
    plane = await ControlPlane(make_config(store_url, lease_seconds=0.8, heartbeat_interval_seconds=0.2,
                                           room_grace_seconds=1.5)).start()
    try:
        await plane.register(nodes[0])
        first = await plane.create_room(room="phoenix", max_participants=7)
        assert first.body["node"]["id"] == "node-1"
        await plane.register(nodes[1])
        deadline = time.monotonic() + 5
        while (await plane.nodes())["node-1"]["state"] != "expired":  # node-1 went silent
            assert time.monotonic() < deadline, "node-1 never lost its lease"
            await keep_alive(plane, nodes[1])
            await asyncio.sleep(0.1)
        await keep_alive(plane, nodes[1])
        for lookup in (plane.call("GET", "/v1/rooms/phoenix", scopes=("room:admin",)), plane.create_room(room="phoenix")):
            waiting = await lookup
            waiting.problem(503, "service_unavailable")
            assert 1 <= int(waiting.headers["Retry-After"]) <= 5
        assert nodes[1].rooms == []
        while True:  # the grace ends; GET shows the room lost and places nothing
            await keep_alive(plane, nodes[1])
            lost = await plane.call("GET", "/v1/rooms/phoenix", scopes=("room:admin",))
            if lost.status == 200:
                break
            assert time.monotonic() < deadline + 5, lost.body
            await asyncio.sleep(0.1)
        assert lost.body["state"] == "lost" and lost.body["node"]["id"] == "node-1" and nodes[1].rooms == []
        joined = await plane.call("POST", "/v1/tokens", {"room": "phoenix", "identity": "x", "scopes": ["room:join"]},
                                  scopes=("room:admin",))
        assert joined.status == 200 and joined.body["node"]["id"] == "node-2", joined.body
        moved = await plane.call("GET", "/v1/rooms/phoenix", scopes=("room:admin",))
        assert moved.body["node"] == {"id": "node-2", "url": nodes[1].url}
        assert moved.body["state"] == "live" and moved.body["max_participants"] == 7
        assert nodes[1].rooms == ["phoenix"]
        metrics = (await plane.call("GET", "/metrics", scopes=())).body
        assert "levelchat_control_rooms_placed_total 2.0" in metrics
    finally:
        await plane.stop()


async def test_revoked_node_loses_its_rooms(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    await cp.register(nodes[0])
    await cp.create_room(room="evicted")
    await cp.register(nodes[1])
    await cp.call("DELETE", "/v1/nodes/node-1", scopes=("node:admin",))
    lost = await cp.call("GET", "/v1/rooms/evicted", scopes=("room:admin",))
    assert lost.body["state"] == "lost" and nodes[1].rooms == []  # GET places nothing
    moved = await cp.create_room(room="evicted")  # a revoked node is not waited for
    assert moved.body["node"]["id"] == "node-2" and nodes[1].rooms == ["evicted"]


# -- tokens -------------------------------------------------------------------------------------


async def test_token_places_room_and_verifies(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    for n in nodes:
        await cp.register(n)
    body = {"room": "demo-1", "identity": "alice", "scopes": ["room:join", "room:publish"], "ttl_s": 120,
            "name": "Alice", "metadata": "{\"seat\": 3}"}
    reply = await cp.call("POST", "/v1/tokens", body, scopes=("room:admin",))
    assert reply.status == 200, reply.body
    host = next(n for n in nodes if n.rooms == ["demo-1"])
    assert reply.body["url"] == host.url
    claims = TokenVerifier([KEY], PROJECT).verify(reply.body["token"], time.time())
    assert claims.identity == "alice" and claims.room == "demo-1"
    assert claims.scopes == frozenset({"room:join", "room:publish"})
    assert claims.name == "Alice" and claims.metadata == "{\"seat\": 3}"
    assert claims.expires_at is not None and 100 <= claims.expires_at - time.time() <= 121
    assert jwt.get_unverified_header(reply.body["token"])["kid"] == KEY.key_id

    again = await cp.call("POST", "/v1/tokens", {**body, "identity": "bob"}, scopes=("room:admin",))
    assert again.body["url"] == host.url
    assert sum(len(n.rooms) for n in nodes) == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"identity": "a", "scopes": ["room:join"]}, 400, "invalid_room"),
        ({"room": "demo-2", "identity": "", "scopes": ["room:join"]}, 400, "invalid_identity"),
        ({"room": "demo-2", "identity": "a" * 129, "scopes": ["room:join"]}, 400, "invalid_identity"),
        ({"room": "demo-2", "identity": "a", "scopes": []}, 400, "bad_request"),
        ({"room": "demo-2", "identity": "a", "scopes": ["node:admin"]}, 400, "bad_request"),
        ({"room": "demo-2", "identity": "a", "scopes": ["room:join"], "ttl_s": 0}, 400, "bad_request"),
        ({"room": "demo-2", "identity": "a", "scopes": ["room:join"], "ttl_s": "60"}, 400, "bad_request"),
    ],
)
async def test_token_validation(
    cp: ControlPlane, nodes: list[StandInNode], body: dict[str, object], status: int, code: str
) -> None:
    await cp.register(nodes[0])
    (await cp.call("POST", "/v1/tokens", body, scopes=("room:admin",))).problem(status, code)
    assert nodes[0].rooms == []


async def test_token_needs_room_admin(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    body = {"room": "demo-3", "identity": "a", "scopes": ["room:join"]}
    (await cp.call("POST", "/v1/tokens", body, scopes=("room:create",))).problem(401, "token/unauthorized")
    (await cp.call("POST", "/v1/tokens", body, tok=token("room:admin", room="demo-4"))).problem(401, "token/unauthorized")


async def test_token_without_nodes_is_service_unavailable(cp: ControlPlane) -> None:
    body = {"room": "demo-5", "identity": "a", "scopes": ["room:join"]}
    reply = await cp.call("POST", "/v1/tokens", body, scopes=("room:admin",))
    reply.problem(503, "service_unavailable")
    assert reply.headers["Retry-After"] == "30"


# -- probes, metrics, HTTP plumbing ---------------------------------------------------------------


async def test_probes_and_metrics(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    assert (await cp.call("GET", "/healthz", scopes=())).body == {"status": "ok"}
    assert (await cp.call("GET", "/readyz", scopes=())).body == {"ready": True, "reason": None}
    await cp.register(nodes[0])
    await cp.register(nodes[1])
    await cp.heartbeat("node-2", draining=True)
    await cp.heartbeat("node-1", healthy=True)
    await cp.heartbeat("ghost", healthy=True)
    deadline = time.monotonic() + 5
    while True:  # a reaper pass (every second here) refreshes the gauges
        reply = await cp.call("GET", "/metrics", scopes=())
        text = reply.body
        if 'levelchat_control_nodes{state="draining"} 1.0' in text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert 'levelchat_control_nodes{state="live"} 1.0' in text
    assert 'levelchat_control_nodes{state="draining"} 1.0' in text
    assert 'levelchat_http_requests_total{code="200",route="/v1/nodes/{id}/status"} 2.0' in text
    assert 'levelchat_http_requests_total{code="404",route="/v1/nodes/{id}/status"} 1.0' in text
    assert "node-1" not in text and "ghost" not in text


async def test_unknown_route_and_bad_body(cp: ControlPlane) -> None:
    (await cp.call("GET", "/v1/nothing", scopes=())).problem(404, "not_found")
    reply = await cp.call(
        "POST", "/v1/nodes", None, scopes=("node:register",), headers={"Content-Type": "text/plain"}
    )
    reply.problem(400, "bad_request")


async def test_cors_preflight(cp: ControlPlane) -> None:
    reply = await cp.call(
        "OPTIONS", "/v1/tokens", scopes=(),
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    reply.problem(403, "forbidden")  # the test config allows no origin


async def test_a_node_back_after_its_lease_lapsed_keeps_the_rooms_it_lists(
    store_url: str, nodes: list[StandInNode]
) -> None:
    """No split rooms: a live node re-registering after a lapse (e.g. the control plane was away
    longer than a lease) lists its rooms, which stay where they are instead of being re-placed."""
    plane = await ControlPlane(make_config(store_url, lease_seconds=0.6, heartbeat_interval_seconds=0.2)).start()
    try:
        assert (await plane.register(nodes[0])).status == 201
        placed = {}
        for room in ("kept-room", "gone-room"):
            created = await plane.create_room(room=room)
            assert created.status == 201
            placed[room] = created.body["placed_at"]
        await wait_for_state(plane, "node-1", "expired")
        assert (await plane.register(nodes[1])).status == 201  # another node to re-place on
        again = await plane.register(nodes[0], rooms=["kept-room", "adopted-room"])
        assert again.status == 201
        kept = await plane.call("GET", "/v1/rooms/kept-room", scopes=("room:admin",))
        assert kept.status == 200 and kept.body["node"]["id"] == "node-1" and kept.body["state"] == "live"
        assert kept.body["placed_at"] == placed["kept-room"]  # not placed again
        # a room the store never knew (e.g. after losing an in-memory store) is learnt where it lives
        adopted = await plane.call("GET", "/v1/rooms/adopted-room", scopes=("room:admin",))
        assert adopted.status == 200 and adopted.body["node"]["id"] == "node-1"
        # a room the same node no longer lists ended there: lost, not placed again by itself
        await asyncio.sleep(0.3)
        gone = await plane.call("GET", "/v1/rooms/gone-room", scopes=("room:admin",))
        assert gone.status == 200 and gone.body["state"] == "lost" and nodes[0].rooms.count("gone-room") == 1
        # asked for again, it is placed back on that node
        gone = await plane.create_room(room="gone-room")
        assert gone.status == 201 and gone.body["placed_at"] > placed["gone-room"]
        assert gone.body["node"]["id"] == "node-1" and nodes[0].rooms.count("gone-room") == 2
        bad = await plane.register(nodes[0], rooms=["no"])
        assert "rooms" in bad.problem(400, "bad_request")["detail"]
    finally:
        await plane.stop()


@pytest.mark.parametrize(
    ("identity", "status"),
    [
        ("node:node-1", 201),  # what a node mints for itself
        ("node:node-2", 401),  # another node's credential
        ("node:", 401),
        ("operator", 201),  # a fleet credential with no node identity
        (None, 201),
    ],
)
async def test_a_node_bound_token_registers_only_its_own_node(
    cp: ControlPlane, nodes: list[StandInNode], identity: str | None, status: int
) -> None:
    tok = mint(KEY, project=PROJECT, now_s=time.time(), ttl_s=60, identity=identity, scopes=("node:register",))
    body = {"id": "node-1", "url": nodes[0].url, "media": {"host": "127.0.0.1", "port": 7882},
            "capacity": {"max_participants": 10, "max_rooms": 5}, "version": "test"}
    reply = await cp.call("POST", "/v1/nodes", body, tok=tok)
    if status == 201:
        assert reply.status == 201
    else:
        assert "not for node 'node-1'" in reply.problem(401, "token/unauthorized")["detail"]
        assert "node-1" not in (await cp.nodes())


async def test_a_node_bound_token_cannot_heartbeat_another_node(cp: ControlPlane, nodes: list[StandInNode]) -> None:
    assert (await cp.register(nodes[0])).status == 201
    other = mint(KEY, project=PROJECT, now_s=time.time(), ttl_s=60, identity="node:node-9", scopes=("node:register",))
    reply = await cp.call("PUT", "/v1/nodes/node-1/status", {"healthy": False}, tok=other)
    assert "node-1" in reply.problem(401, "token/unauthorized")["detail"]
    own = mint(KEY, project=PROJECT, now_s=time.time(), ttl_s=60, identity="node:node-1", scopes=("node:register",))
    assert (await cp.call("PUT", "/v1/nodes/node-1/status", {"healthy": True}, tok=own)).status == 200
    assert (await cp.nodes())["node-1"]["healthy"] is True
