"""Whole control-plane instances: restarts over SQLite, replicas sharing one Redis."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.control.harness import ControlPlane, StandInNode, flush_redis, make_config, start_redis


async def test_sqlite_state_survives_restart(tmp_path: Path, nodes: list[StandInNode]) -> None:
    url = f"sqlite:///{tmp_path}/persist.db"
    first = await ControlPlane(make_config(url)).start()
    try:
        await first.register(nodes[0], region="eu")
        await first.register(nodes[1])
        await first.call("DELETE", "/v1/nodes/node-2", scopes=("node:admin",))
        assert (await first.create_room(room="kept-room", max_participants=6)).status == 201
    finally:
        await first.stop()

    second = await ControlPlane(make_config(url)).start()
    try:
        listed = await second.nodes()
        assert listed["node-1"]["state"] == "live" and listed["node-1"]["region"] == "eu"
        assert listed["node-1"]["rooms_placed_since_report"] == 1
        assert listed["node-2"]["state"] == "revoked"
        room = await second.call("GET", "/v1/rooms/kept-room", scopes=("room:admin",))
        assert room.status == 200 and room.body["node"]["id"] == "node-1"
        assert room.body["max_participants"] == 6
        # The lease the first instance granted is still held: the id is not free.
        (await second.register(nodes[2], id="node-1")).problem(409, "node_exists")
        (await second.heartbeat("node-2", healthy=True)).problem(410, "node_revoked")
        assert nodes[0].rooms == ["kept-room"]  # nothing was placed again
    finally:
        await second.stop()


async def _fill(planes: list[ControlPlane], rooms: int) -> Counter[int]:
    async def one(i: int) -> int:
        reply = await planes[i % len(planes)].create_room(room=f"crowd-{i:03d}")
        if reply.status != 201:
            reply.problem(503, "service_unavailable")
        return reply.status

    return Counter(await asyncio.gather(*(one(i) for i in range(rooms))))


@pytest.mark.redis
async def test_two_replicas_on_one_redis_never_overfill(redis_server: str, nodes: list[StandInNode]) -> None:
    flush_redis(redis_server)
    planes = [await ControlPlane(make_config(redis_server)).start() for _ in range(2)]
    try:
        capacities = {"node-1": 70, "node-2": 50, "node-3": 30}  # 150 rooms for 200 asks
        for n in nodes:
            await planes[0].register(n, capacity={"max_participants": 10_000, "max_rooms": capacities[n.name]})
        statuses = await asyncio.wait_for(_fill(planes, 200), timeout=60)
        assert statuses == Counter({201: 150, 503: 50})
        assert {n.name: len(n.rooms) for n in nodes} == capacities
        assert len({r for n in nodes for r in n.rooms}) == 150  # no room created twice
        listed = await planes[1].nodes()
        assert {k: v["rooms_placed_since_report"] for k, v in listed.items()} == capacities
    finally:
        for p in planes:
            await p.stop()


async def test_concurrent_placements_on_sqlite_respect_capacity(tmp_path: Path, nodes: list[StandInNode]) -> None:
    plane = await ControlPlane(make_config(f"sqlite:///{tmp_path}/crowd.db")).start()
    try:
        for n, cap in zip(nodes, (20, 15, 5), strict=True):
            await plane.register(n, capacity={"max_participants": 10_000, "max_rooms": cap})
        statuses = await asyncio.wait_for(_fill([plane], 60), timeout=60)
        assert statuses == Counter({201: 40, 503: 20})
        assert [len(n.rooms) for n in nodes] == [20, 15, 5]
    finally:
        await plane.stop()


@pytest.mark.redis
async def test_store_outage_is_service_unavailable(nodes: list[StandInNode]) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    proc, url = start_redis(binary)
    plane = await ControlPlane(make_config(url)).start()
    try:
        await plane.register(nodes[0])
        proc.terminate()
        proc.wait(timeout=10)
        reply = await asyncio.wait_for(plane.create_room(room="no-store"), timeout=30)
        reply.problem(503, "service_unavailable")
        assert reply.headers["Retry-After"] == "30"
        ready = (await plane.call("GET", "/readyz", scopes=())).problem(503, "service_unavailable")
        assert ready["ready"] is False and ready["reason"].startswith("store is not reachable"), ready  # the node's shape
        assert (await plane.call("GET", "/healthz", scopes=())).status == 200
    finally:
        await plane.stop()
        if proc.poll() is None:
            proc.kill()


async def test_problems_carry_cors_headers_for_browser_apps(tmp_path: Path) -> None:
    """A refusal made inside the app is still readable by a script on an allowed origin."""
    plane = await ControlPlane(make_config(f"sqlite:///{tmp_path}/c.db", cors_origins=("https://app.example",))).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                plane.url + "/v1/nodes", headers={"Origin": "https://app.example"}
            ) as resp:
                assert resp.status == 401
                assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
                assert (await resp.json())["code"] == "unauthorized"
    finally:
        await plane.stop()
