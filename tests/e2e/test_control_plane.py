"""The control plane and three SFU nodes as real processes on 127.0.0.1: placement across nodes,
duplicate ids, revocation, a node killed with SIGKILL, and the control plane killed under live media."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.procs import Proc, Procs, admin_token, call, control_nodes, free_port, wait_nodes_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

LEASE_S = 3.0
HEARTBEAT_S = 0.5
GRACE_S = 1.0  # a killed node's rooms wait this long after its lease lapsed before being placed again
NODE_IDS = ("sfu-a", "sfu-b", "sfu-c")
#: few rooms per node, so that room count (not the CPU noise of idle processes) drives placement
NODE_ENV = {"LEVELCHAT_SFU_MAX_ROOMS": "4", "LEVELCHAT_SFU_REVOKE_DRAIN_S": "5"}
SDP = "v=0\r\n"  # refusals (revoked) come before the offer is parsed


@dataclass
class Cluster:
    procs: Procs
    control: Proc
    nodes: dict[str, Proc]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    procs = Procs(tmp_path)
    try:
        control = procs.control(lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S,
                                extra_args=["--room-grace-seconds", str(GRACE_S)])
        await control.wait_healthy()
        nodes = {i: procs.node(i, control.url, env=NODE_ENV) for i in NODE_IDS}
        for node in nodes.values():
            await node.wait_healthy()
        await wait_nodes_state(control.url, NODE_IDS, "live", timeout_s=15)
        yield Cluster(procs, control, nodes)
    finally:
        procs.stop_all()


async def create_room(cluster: Cluster, room: str) -> str:
    reply = await call("POST", cluster.control.url + "/v1/rooms", {"room": room})
    assert reply.status == 201, reply.body
    node_id: str = reply.body["node"]["id"]
    assert reply.body["node"]["url"] == cluster.nodes[node_id].url
    return node_id


async def test_rooms_are_spread_over_the_three_nodes(cluster: Cluster) -> None:
    placed = {f"spread-{i}": await create_room(cluster, f"spread-{i}") for i in range(6)}
    assert set(placed.values()) == set(NODE_IDS), placed
    for room, node_id in placed.items():
        on_node = await call("GET", f"{cluster.nodes[node_id].url}/v1/rooms/{room}")
        assert on_node.status == 200, (room, node_id, on_node.body)
        others = [n for n in NODE_IDS if n != node_id]
        for other in others:
            assert (await call("GET", f"{cluster.nodes[other].url}/v1/rooms/{room}")).status == 404
    # the nodes report what they host
    await asyncio.sleep(2 * HEARTBEAT_S + 0.2)
    views = await control_nodes(cluster.control.url)
    assert sum(v["load"]["rooms"] for v in views.values()) == 6, views


async def test_second_node_with_a_live_id_exits_with_node_exists(cluster: Cluster) -> None:
    dup = cluster.procs.node("sfu-a", cluster.control.url, env=NODE_ENV)
    code = await dup.wait_exit(timeout_s=LEASE_S + 15)
    assert code != 0, dup.tail()
    assert "node_exists" in dup.stderr(), dup.tail()
    views = await control_nodes(cluster.control.url)
    assert views["sfu-a"]["url"] == cluster.nodes["sfu-a"].url and views["sfu-a"]["state"] == "live"
    assert cluster.nodes["sfu-a"].running


async def test_revoked_node_refuses_whip_within_a_heartbeat(cluster: Cluster) -> None:
    node = cluster.nodes["sfu-b"]
    whip_token = admin_token("room:join", "room:publish", room="rev-room")
    reply = await call("DELETE", cluster.control.url + "/v1/nodes/sfu-b")
    assert reply.status == 200 and reply.body["node"]["state"] == "revoked", reply.body
    revoked_at = time.monotonic()
    while True:
        whip = await call("POST", f"{node.url}/whip/rev-room", token=whip_token, sdp=SDP)
        if whip.status == 410:
            break
        assert time.monotonic() - revoked_at < 2 * HEARTBEAT_S + 1.0, f"still {whip.status} {whip.body}"
        await asyncio.sleep(0.05)
    assert whip.body["code"] == "node_revoked", whip.body
    ready = await call("GET", f"{node.url}/readyz")
    assert ready.status == 503 and ready.body["reason"] == "revoked", ready.body
    assert node.running  # it drains; it does not exit
    assert "node_revoked" in node.stderr()
    # new rooms go elsewhere
    for i in range(3):
        assert await create_room(cluster, f"after-rev-{i}") != "sfu-b"


async def test_killed_node_rooms_are_placed_again_after_lease_and_grace(cluster: Cluster) -> None:
    placed = {f"kill-{i}": await create_room(cluster, f"kill-{i}") for i in range(3)}
    victim_room, victim = next(iter(placed.items()))
    cluster.nodes[victim].kill9()
    killed_at = time.monotonic()
    while True:  # the victim, then 503 (retry) while it may come back, then another node
        reply = await call("POST", f"{cluster.control.url}/v1/tokens",
                           {"room": victim_room, "identity": "late", "scopes": ["room:join"]})
        assert reply.status in (200, 503), reply.body
        if reply.status == 200 and reply.body["node"]["id"] != victim:
            break
        assert time.monotonic() - killed_at < LEASE_S + GRACE_S + 3.0, "room not placed again after lease and grace"
        await asyncio.sleep(0.1)
    reply = await call("GET", f"{cluster.control.url}/v1/rooms/{victim_room}")
    new_node = reply.body["node"]["id"]
    assert new_node in NODE_IDS and new_node != victim
    assert reply.body["node"]["url"] == cluster.nodes[new_node].url
    assert (await call("GET", f"{cluster.nodes[new_node].url}/v1/rooms/{victim_room}")).status == 200
    views = await control_nodes(cluster.control.url)
    assert views[victim]["state"] == "expired", views[victim]


async def test_media_keeps_flowing_when_the_control_plane_dies(cluster: Cluster) -> None:
    room = "cp-dies"
    grants = {}
    for identity, scopes in (("alice", ["room:join", "room:publish"]), ("bob", ["room:join", "room:subscribe"])):
        reply = await call("POST", cluster.control.url + "/v1/tokens",
                           {"room": room, "identity": identity, "scopes": scopes, "ttl_s": 600})
        assert reply.status == 200, reply.body
        grants[identity] = reply.body
    url = grants["alice"]["url"]
    assert grants["bob"]["url"] == url
    node = next(p for p in cluster.nodes.values() if p.url == url)
    pub = WhipPublisher(url, room, grants["alice"]["token"])
    sub = WhepSubscriber(url, room, grants["bob"]["token"])
    try:
        await pub.connect()
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= 10 and sub.frames["audio"] >= 10, 15, "media before")

        cluster.control.kill9()
        before = dict(sub.frames)
        await asyncio.sleep(3.0)
        after = dict(sub.frames)
        assert after["video"] - before["video"] >= 30, (before, after)
        assert after["audio"] - before["audio"] >= 50, (before, after)
        assert pub.pc.connectionState == "connected" and sub.pc.connectionState == "connected"

        ready = await call("GET", f"{url}/readyz")
        assert ready.status == 200, ready.body  # readiness never depends on the control plane
        metrics = await call("GET", f"{url}/metrics")
        failures = next(line for line in metrics.body.splitlines()
                        if line.startswith("levelchat_sfu_control_plane_heartbeat_failures_total"))
        assert float(failures.split()[-1]) >= 2, failures
        assert node.running
    finally:
        await sub.close()
        await pub.close()


async def test_the_registration_names_the_ice_tcp_port(tmp_path: Path) -> None:
    """contracts.md "Connectivity": a node registers its ICE-TCP port beside its UDP one
    (``media.tcp_port``), and the control plane lists it; a node with ICE-TCP off names none."""
    procs = Procs(tmp_path)
    try:
        control = procs.control()
        await control.wait_healthy()
        tcp_port = free_port()
        procs.node("tcp-on", control.url, extra_args=("--tcp-port", str(tcp_port)))
        procs.node("tcp-off", control.url, extra_args=("--no-ice-tcp",))
        nodes = await wait_nodes_state(control.url, ["tcp-on", "tcp-off"], "live", timeout_s=20)
        assert nodes["tcp-on"]["media"]["tcp_port"] == tcp_port
        assert nodes["tcp-off"]["media"]["tcp_port"] is None
    finally:
        procs.stop_all()
