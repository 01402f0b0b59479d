"""A node whose self-check fails gets no new rooms from the control plane; fixed and restarted,
it takes rooms again. Real processes on 127.0.0.1: one control plane, two nodes.

The check is broken from outside, through configuration only: ``self_check_deadline_ms = 1``
leaves the probe sessions no time for their ICE and DTLS handshakes, so every check fails the way
a node with a broken media path does ("probe session failed"). Nothing in the node is faked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.procs import Proc, Procs, call, control_nodes, wait_nodes_state

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

LEASE_S = 3.0
HEARTBEAT_S = 0.5
#: few rooms per node, so that room count (not the CPU noise of idle processes) drives placement
NODE_ENV = {"LEVELCHAT_SFU_MAX_ROOMS": "10"}
BROKEN_ENV = {
    **NODE_ENV,
    "LEVELCHAT_SFU_SELF_CHECK_DEADLINE_MS": "1",
    "LEVELCHAT_SFU_SELF_CHECK_INTERVAL_S": "0.2",
    "LEVELCHAT_SFU_SELF_CHECK_FAILURES": "2",
}


@dataclass
class Fleet:
    procs: Procs
    control: Proc
    good: Proc
    broken: Proc
    broken_started: float


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    procs = Procs(tmp_path)
    try:
        control = procs.control(lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S)
        await control.wait_healthy()
        good = procs.node("sfu-good", control.url, env=NODE_ENV)
        started = time.monotonic()
        broken = procs.node("sfu-flaky", control.url, env=BROKEN_ENV)
        await good.wait_healthy()
        await broken.wait_healthy()
        yield Fleet(procs, control, good, broken, started)
    finally:
        procs.stop_all()


async def place(control: Proc, room: str) -> str:
    reply = await call("POST", control.url + "/v1/rooms", {"room": room})
    assert reply.status == 201, reply.body
    node_id: str = reply.body["node"]["id"]
    return node_id


async def metric(node: Proc, name: str) -> float:
    reply = await call("GET", node.url + "/metrics")
    line = next(x for x in reply.body.splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


async def test_failing_self_check_routes_rooms_away_until_the_node_is_fixed(fleet: Fleet) -> None:
    # 1. the control plane sees the broken node as unhealthy, from its own heartbeats
    await wait_nodes_state(fleet.control.url, ["sfu-flaky"], "unhealthy", timeout_s=15)
    detected_s = time.monotonic() - fleet.broken_started
    # start-up, 2 failed checks 0.2 s apart, then one heartbeat (0.5 s)
    assert detected_s < 10, detected_s
    await wait_nodes_state(fleet.control.url, ["sfu-good"], "live", timeout_s=15)
    ready = await call("GET", fleet.broken.url + "/readyz")
    assert ready.status == 503 and ready.body["reason"].startswith("self-check failing: probe"), ready.body
    assert await metric(fleet.broken, "levelchat_sfu_self_check_ok") == 0.0
    assert await metric(fleet.good, "levelchat_sfu_self_check_ok") == 1.0
    # the node itself refuses a new room
    direct = await call("POST", fleet.broken.url + "/v1/rooms", {"room": "direct-1"})
    assert direct.status == 503 and direct.body["code"] == "room_check_failed", direct.body

    # 2. every new room goes to the healthy node
    placed = [await place(fleet.control, f"while-broken-{i}") for i in range(6)]
    assert placed == ["sfu-good"] * 6, placed

    # 3. fixed: restarted with the default self-check settings, under the same id
    fleet.broken.terminate()
    assert fleet.broken.popen is not None and fleet.broken.popen.returncode == 0, fleet.broken.tail()
    restarted_at = time.monotonic()
    fixed = fleet.procs.node("sfu-flaky", fleet.control.url, env=NODE_ENV)
    await fixed.wait_healthy()
    assert (await call("GET", fixed.url + "/readyz")).status == 200
    # its old lease must lapse first (node_exists, then Retry-After): up to one lease
    await wait_nodes_state(fleet.control.url, ["sfu-flaky"], "live", timeout_s=LEASE_S + 15)
    recovered_s = time.monotonic() - restarted_at
    assert recovered_s < LEASE_S + 10, recovered_s
    await asyncio.sleep(2 * HEARTBEAT_S + 0.2)  # a load report or two from the fresh process

    # 4. it takes rooms again: the least loaded node wins (6 rooms on sfu-good, none on it)
    after = {f"after-fix-{i}": await place(fleet.control, f"after-fix-{i}") for i in range(4)}
    on_fixed = [room for room, node_id in after.items() if node_id == "sfu-flaky"]
    assert len(on_fixed) >= 3, after
    for room in on_fixed:
        assert (await call("GET", f"{fixed.url}/v1/rooms/{room}")).status == 200, room
    views = await control_nodes(fleet.control.url)
    assert views["sfu-flaky"]["healthy"] is True and views["sfu-good"]["state"] == "live"
    log.info("self-check routing: unhealthy at the control plane %.2f s after start; live again %.2f s after "
             "the restart; after the fix %s", detected_s, recovered_s, after)
