"""The control plane's operator routes that reach into its nodes (``control/operator.py``), with a
real control plane and real nodes (processes): the rooms of every node, a node that does not
answer named; a room closed through its node; a node's drain started and cancelled, and refusals
as problems.  And the console's static files as both servers serve them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.procs import Proc, Procs, admin_token, call, wait_nodes_state

NODE_IDS = ("op-a", "op-b")
#: a long lease: a node killed by a test stays "alive" at the control plane for the test's length
LEASE_S = 60.0


@dataclass
class Cluster:
    control: Proc
    nodes: dict[str, Proc]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    procs = Procs(tmp_path)
    try:
        control = procs.control(lease_s=LEASE_S, heartbeat_s=0.5)
        await control.wait_healthy()
        nodes = {i: procs.node(i, control.url) for i in NODE_IDS}
        for node in nodes.values():
            await node.wait_healthy()
        await wait_nodes_state(control.url, NODE_IDS, "live", timeout_s=15)
        yield Cluster(control, nodes)
    finally:
        procs.stop_all()


async def place(cluster: Cluster, room: str) -> str:
    reply = await call("POST", cluster.control.url + "/v1/rooms", {"room": room})
    assert reply.status == 201, reply.body
    node_id: str = reply.body["node"]["id"]
    return node_id


async def test_rooms_of_every_node_and_room_close(cluster: Cluster) -> None:
    placed = {room: await place(cluster, room) for room in ("op-1", "op-2", "op-3", "op-4")}
    assert set(placed.values()) == set(NODE_IDS), placed  # spread over both

    reply = await call("GET", cluster.control.url + "/v1/rooms")
    assert reply.status == 200, reply.body
    assert reply.body["unreachable"] == []
    listed = {r["room"]: r["node"] for r in reply.body["rooms"]}
    assert {room: where["id"] for room, where in listed.items()} == placed
    assert all(where["url"] == cluster.nodes[where["id"]].url for where in listed.values())
    assert all(r["state"] == "open" and r["participants"] == [] for r in reply.body["rooms"]), reply.body

    # close one through the control plane: its node no longer lists it
    reply = await call("DELETE", cluster.control.url + "/v1/rooms/op-1")
    assert reply.status == 204, reply.body
    on_node = await call("GET", cluster.nodes[placed["op-1"]].url + "/v1/rooms")
    assert "op-1" not in {r["room"] for r in on_node.body["rooms"]}

    # a node that does not answer (its lease still alive) is named; the others' rooms are listed
    gone = placed["op-2"]
    cluster.nodes[gone].kill9()
    reply = await call("GET", cluster.control.url + "/v1/rooms")
    assert reply.status == 200 and reply.body["unreachable"] == [gone], reply.body
    assert {r["room"] for r in reply.body["rooms"]} == {r for r, n in placed.items() if n != gone and r != "op-1"}


async def test_room_listing_refusals(cluster: Cluster) -> None:
    url = cluster.control.url + "/v1/rooms"
    for tok in (admin_token("room:create", "node:admin"), admin_token("room:admin", room="op-1")):
        reply = await call("GET", url, token=tok)
        assert (reply.status, reply.body["code"]) == (401, "token/unauthorized"), reply.body
    reply = await call("DELETE", cluster.control.url + "/v1/rooms/never-made")
    assert (reply.status, reply.body["code"]) == (404, "room_not_found"), reply.body


async def test_drain_a_node_through_the_control_plane(cluster: Cluster) -> None:
    node_url = cluster.nodes["op-a"].url
    drain = cluster.control.url + "/v1/nodes/op-a/drain"
    reply = await call("POST", drain, {"deadline_s": 600})
    assert reply.status == 202 and reply.body["draining"] is True, reply.body
    assert (await call("GET", node_url + "/v1/node/drain")).body["draining"] is True
    await wait_nodes_state(cluster.control.url, ["op-a"], "draining", timeout_s=15)

    reply = await call("DELETE", drain)
    assert reply.status == 200 and reply.body["draining"] is False, reply.body
    await wait_nodes_state(cluster.control.url, ["op-a"], "live", timeout_s=15)
    # the node's own refusal comes back as it is
    reply = await call("DELETE", drain)
    assert (reply.status, reply.body["code"]) == (409, "conflict"), reply.body
    reply = await call("POST", drain, {"deadline_s": -1})
    assert (reply.status, reply.body["code"]) == (400, "bad_request"), reply.body

    refusals = [
        ("POST", "/v1/nodes/no-such-node/drain", None, 404, "not_found"),
        ("POST", "/v1/nodes/bad%20id/drain", None, 400, "bad_request"),
        ("POST", "/v1/nodes/op-a/drain", admin_token("room:admin"), 401, "token/unauthorized"),
    ]
    for method, path, tok, status, code in refusals:
        reply = await call(method, cluster.control.url + path, token=tok)
        assert (reply.status, reply.body["code"]) == (status, code), (path, reply.body)
    # a revoked node cannot be drained from here
    assert (await call("DELETE", cluster.control.url + "/v1/nodes/op-b")).status == 200
    reply = await call("POST", cluster.control.url + "/v1/nodes/op-b/drain")
    assert (reply.status, reply.body["code"]) == (409, "conflict"), reply.body


async def test_both_servers_serve_the_console(cluster: Cluster) -> None:
    for base in (cluster.control.url, cluster.nodes["op-a"].url):
        page = await call("GET", base + "/console", token="none")
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html"), base
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert '<script src="/console/console.js" defer></script>' in page.body
        script = await call("GET", base + "/console/console.js", token="none")
        assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
        assert "sessionStorage" in script.body
        for name in ("nope.js", "__init__.py", "index.html", "..%2F__init__.py"):
            reply = await call("GET", f"{base}/console/{name}", token="none")
            assert (reply.status, reply.body["code"]) == (404, "not_found"), (base, name, reply.body)
