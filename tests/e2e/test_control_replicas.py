"""Two control-plane replicas on one Redis, a node given both URLs (``--control-urls``): the replica
the node heartbeats to is killed with SIGKILL; the node fails over to the other one at once, so its
lease never lapses, and the surviving replica goes on placing rooms on it (defect 13).  A node
given only the killed replica's URL (``--control-url``, the old way) is the control: its lease
lapses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.procs import Proc, Procs, call, control_nodes, wait_nodes_state
from tests.e2e.redis_support import RedisServer, redis_server, replicas  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(120)]

LEASE_S = 3.0
HEARTBEAT_S = 0.5
NODE_ID = "sfu-fo"
SINGLE_ID = "sfu-single"


@dataclass
class Fleet:
    procs: Procs
    planes: list[Proc]
    node: Proc
    single: Proc


@pytest.fixture
async def fleet(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Fleet]:  # noqa: F811
    procs = Procs(tmp_path)
    try:
        planes = replicas(procs, redis_server.url, 2, lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S)
        for plane in planes:
            await plane.wait_healthy()
        node = procs.node(NODE_ID, None, extra_args=["--control-urls", ",".join(p.url for p in planes)])
        single = procs.node(SINGLE_ID, planes[0].url, env={"LEVELCHAT_SFU_MAX_ROOMS": "1"})
        await node.wait_healthy()
        await single.wait_healthy()
        await wait_nodes_state(planes[1].url, [NODE_ID, SINGLE_ID], "live", timeout_s=15)
        yield Fleet(procs, planes, node, single)
    finally:
        procs.stop_all()


async def test_killing_the_replica_in_use_keeps_the_lease_and_placement(fleet: Fleet) -> None:
    used, survivor = fleet.planes
    registered = (await control_nodes(survivor.url))[NODE_ID]
    # the single-URL node takes one room at most: of two rooms, one is on the failover node
    placed = {}
    for room in ("before-kill-1", "before-kill-2"):
        reply = await call("POST", used.url + "/v1/rooms", {"room": room, "codecs": ["opus", "VP8"]})
        assert reply.status == 201, reply.body
        placed[reply.body["node"]["id"]] = room
    assert set(placed) == {NODE_ID, SINGLE_ID}, placed
    await asyncio.sleep(2 * HEARTBEAT_S)  # both nodes report their rooms

    used.kill9()
    killed_at = time.monotonic()
    # three leases long, the node stays live on the survivor and never registers again
    views = []
    single_states = set()
    while time.monotonic() - killed_at < 3 * LEASE_S:
        nodes = await control_nodes(survivor.url)
        view = nodes[NODE_ID]
        assert view["state"] == "live" and view["lease"]["alive"], view
        views.append(view)
        single_states.add(nodes[SINGLE_ID]["state"])
        await asyncio.sleep(0.2)
    assert "expired" in single_states, single_states  # the control: one URL, no failover
    assert views[-1]["registered_at"] == registered["registered_at"], "the node registered again"
    assert views[-1]["lease"]["expires_at"] > registered["lease"]["expires_at"], "heartbeats stopped"

    # the survivor places new rooms on the node, and still knows the old one there
    created = await call("POST", survivor.url + "/v1/rooms", {"room": "after-kill", "max_participants": 7})
    assert created.status == 201 and created.body["node"]["id"] == NODE_ID, created.body
    on_node = await call("GET", f"{fleet.node.url}/v1/rooms/after-kill")
    assert on_node.status == 200 and on_node.body["max_participants"] == 7, on_node.body
    old = await call("GET", survivor.url + "/v1/rooms/" + placed[NODE_ID])
    assert old.status == 200 and old.body["state"] == "live" and old.body["node"]["id"] == NODE_ID, old.body

    metrics = await call("GET", fleet.node.url + "/metrics")
    failovers = next(line for line in metrics.body.splitlines()
                     if line.startswith("levelchat_sfu_control_plane_failovers_total"))
    assert float(failovers.split()[-1]) >= 1, failovers
    log = fleet.node.stderr()
    assert "failing over to " + survivor.url in log, fleet.node.tail()
    assert "registered with the control plane" in log and log.count("registered with the control plane") == 1
