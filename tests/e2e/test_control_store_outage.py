"""The control plane on a Redis that hangs (SIGSTOP: connects succeed, nothing answers) or loses
everything (FLUSHALL), with a real node registered (defect 15).

- While Redis is stopped, every API call and ``/readyz`` answers ``service_unavailable`` with
  ``Retry-After`` within the store bound (1 s here) plus slack, never hanging; the log carries one
  outage warning, not a traceback per reaper tick.  After SIGCONT it recovers and logs once how long
  the outage lasted.
- After FLUSHALL the node registers again and the rooms it reports are learnt back with the codecs
  and ``max_participants`` they were created with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.procs import Proc, Procs, Reply, call, wait_nodes_state
from tests.e2e.redis_support import RedisServer, redis_server, replicas, wait_log  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(120)]

LEASE_S = 3.0
HEARTBEAT_S = 0.5
STORE_TIMEOUT_S = 1.0
#: what a refusal may take: the store bound, and slack for a loaded machine
REFUSAL_WITHIN_S = STORE_TIMEOUT_S + 1.5
NODE_ID = "sfu-store"


@dataclass
class Setup:
    redis: RedisServer
    plane: Proc
    node: Proc


@pytest.fixture
async def setup(request: pytest.FixtureRequest, tmp_path: Path,
                redis_server: RedisServer) -> AsyncIterator[Setup]:  # noqa: F811
    """The node runs ``request.param`` forwarding workers (default 1)."""
    workers = int(getattr(request, "param", 1))
    procs = Procs(tmp_path)
    try:
        (plane,) = replicas(procs, redis_server.url, 1, lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S,
                            extra_args=("--store-timeout-seconds", str(STORE_TIMEOUT_S)))
        await plane.wait_healthy()
        node = procs.node(NODE_ID, plane.url, extra_args=["--workers", str(workers)] if workers > 1 else [])
        await node.wait_healthy()
        await wait_nodes_state(plane.url, [NODE_ID], "live", timeout_s=15)
        yield Setup(redis_server, plane, node)
    finally:
        procs.stop_all()


async def timed(method: str, url: str, body: Any = None) -> tuple[Reply, float]:
    started = time.monotonic()
    reply = await call(method, url, body, timeout_s=30)
    return reply, time.monotonic() - started


def assert_unavailable(reply: Reply, elapsed: float, what: str) -> None:
    assert reply.status == 503 and reply.body["code"] == "service_unavailable", (what, reply.body)
    assert int(reply.headers["Retry-After"]) >= 1, (what, reply.headers)
    assert elapsed < REFUSAL_WITHIN_S, f"{what} took {elapsed:.2f} s"


async def test_hung_redis_is_refused_quickly_logged_once_and_recovered(setup: Setup) -> None:
    plane = setup.plane.url
    setup.redis.stop()
    stopped_at = time.monotonic()
    try:
        slowest = 0.0
        for i in range(4):
            for method, path, body in (("POST", "/v1/rooms", {"room": f"hung-{i}"}), ("GET", "/v1/nodes", None),
                                       ("POST", "/v1/tokens", {"room": f"hung-{i}", "identity": "x",
                                                               "scopes": ["room:join"]})):
                reply, elapsed = await timed(method, plane + path, body)
                assert_unavailable(reply, elapsed, f"{method} {path}")
                slowest = max(slowest, elapsed)
            ready, elapsed = await timed("GET", plane + "/readyz")
            assert_unavailable(ready, elapsed, "/readyz")
            await asyncio.sleep(0.5)
        # several reaper ticks (one every lease/4 s) and heartbeats went by: one warning, no tracebacks
        while time.monotonic() - stopped_at < 4.0:
            await asyncio.sleep(0.2)
        log = setup.plane.stderr()
        assert log.count("store outage:") == 1, setup.plane.tail()
        assert "Traceback" not in log and "lease reaper failed" not in log, setup.plane.tail()
        assert (await call("GET", plane + "/healthz")).status == 200  # alive, just not ready
        assert "levelchat_control_store_up 0.0" in (await call("GET", plane + "/metrics")).body
        assert (await call("GET", setup.node.url + "/readyz")).status == 200  # the node serves on
    finally:
        setup.redis.cont()
    await wait_log(setup.plane, "store outage ended after", timeout_s=15)
    ended = [line for line in setup.plane.stderr().splitlines() if "store outage ended after" in line]
    assert len(ended) == 1, ended
    seconds = float(ended[0].split("store outage ended after ")[1].split()[0])
    assert seconds >= 2.5, ended  # it began at the first call that timed out, ~1 s after SIGSTOP
    assert (await call("GET", plane + "/readyz")).status == 200
    assert "levelchat_control_store_up 1.0" in (await call("GET", plane + "/metrics")).body
    # the node's lease lapsed meanwhile; it registers again and takes rooms
    await wait_nodes_state(plane, [NODE_ID], "live", timeout_s=15)
    created = await call("POST", plane + "/v1/rooms", {"room": "after-outage"})
    assert created.status == 201 and created.body["node"]["id"] == NODE_ID, created.body
    assert slowest < REFUSAL_WITHIN_S


@pytest.mark.parametrize("setup", [1, 2], indirect=True, ids=["one-process", "two-workers"])
async def test_rooms_learnt_after_flushall_keep_their_settings(setup: Setup) -> None:
    plane = setup.plane.url
    created = await call("POST", plane + "/v1/rooms",
                         {"room": "keep-settings", "codecs": ["opus", "VP9"], "max_participants": 5,
                          "empty_timeout_s": 600})
    assert created.status == 201 and created.body["node"]["id"] == NODE_ID, created.body
    on_node = await call("GET", setup.node.url + "/v1/rooms/keep-settings")
    assert on_node.status == 200, on_node.body

    setup.redis.flushall()
    deadline = time.monotonic() + 15
    while True:
        room = await call("GET", plane + "/v1/rooms/keep-settings")
        if room.status == 200:
            break
        assert room.status == 404 and room.body["code"] == "room_not_found", room.body
        assert time.monotonic() < deadline, "the room was not learnt back from the node"
        await asyncio.sleep(0.1)
    assert room.body["node"]["id"] == NODE_ID and room.body["state"] == "live", room.body
    assert room.body["codecs"] == ["opus", "VP9"] and room.body["max_participants"] == 5, room.body
    # the same room on the node (not created again elsewhere)
    again = await call("GET", setup.node.url + "/v1/rooms/keep-settings")
    assert again.status == 200 and again.body["sid"] == on_node.body["sid"], again.body
