"""Usage across real processes: two control-plane replicas on one Redis and a node given both
URLs; aiortc participants join through tokens from the control plane.  The node's heartbeats
carry its participant time; both replicas answer the same ``GET /v1/usage``; once the control
plane's quota (0.05 participant-minutes: 3 s) is used up, ``POST /v1/tokens`` and the node's new
joins get ``quota_exceeded`` (402) while the live subscriber keeps receiving; the total survives
restarting the control plane (both replicas killed, one started again on the same Redis)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.procs import Proc, Procs, admin_token, call, wait_nodes_state
from tests.e2e.redis_support import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.e2e.test_usage import assert_joins_refused, until_refused
from tests.e2e.webhook_support import sample

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(180)]

QUOTA_MIN = 0.05
NODE_ID = "sfu-usage"


async def usage(plane: Proc) -> dict[str, Any]:
    reply = await call("GET", plane.url + "/v1/usage", token=admin_token("room:admin"))
    assert reply.status == 200, reply.body
    return dict(reply.body)


async def join_token(plane: Proc, room: str, identity: str) -> Any:
    return await call("POST", plane.url + "/v1/tokens",
                      {"room": room, "identity": identity, "scopes": ["room:join", "room:publish", "room:subscribe"]},
                      token=admin_token("room:admin"))


async def wait_usage(plane: Proc, at_least: float, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = await usage(plane)
        if seen["participant_minutes"] >= at_least:
            return seen
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.2)


async def test_replicas_agree_the_quota_refuses_tokens_and_joins_and_a_restart_keeps_usage(
    tmp_path: Path, redis_server: RedisServer,  # noqa: F811
) -> None:
    procs = Procs(tmp_path)
    env = {"LEVELCHAT_CONTROL_QUOTA_PARTICIPANT_MINUTES": str(QUOTA_MIN)}
    store = ("--store", redis_server.url)
    planes = [procs.control(f"control-{i}", extra_args=store, env=env) for i in range(2)]
    publisher: WhipPublisher | None = None
    viewer: WhepSubscriber | None = None
    try:
        for plane in planes:
            await plane.wait_healthy()
        node = procs.node(NODE_ID, None, extra_args=["--control-urls", ",".join(p.url for p in planes)],
                          env={"LEVELCHAT_SFU_RATE_LIMIT_IP_PER_S": "0"})
        await node.wait_healthy()
        await wait_nodes_state(planes[1].url, [NODE_ID], "live", timeout_s=15)
        assert (await usage(planes[0]))["quota"] == {"participant_minutes": QUOTA_MIN}

        room = "usage-cp-room"
        alice, bob = await join_token(planes[0], room, "alice"), await join_token(planes[1], room, "bob")
        assert alice.status == 200 and bob.status == 200, (alice.body, bob.body)
        assert alice.body["url"].rstrip("/") == node.url
        publisher = WhipPublisher(node.url, room, alice.body["token"])
        viewer = WhepSubscriber(node.url, room, bob.body["token"])
        await publisher.connect(timeout=20)
        status, body = await viewer.connect(timeout=20)
        assert status == 201, body
        await wait_for(lambda: viewer is not None and viewer.frames["video"] > 10, 20, "the subscriber receives")

        used = await wait_usage(planes[0], QUOTA_MIN, 30)
        other = await usage(planes[1])
        assert other["period_start"] == used["period_start"]
        assert other["participant_minutes"] >= used["participant_minutes"]  # the same store: it only grows
        refused = await join_token(planes[1], room, "carol")
        assert refused.status == 402 and refused.body["code"] == "quota_exceeded", refused.body
        # /metrics: the refusal where it happened; the reports each counted once, by the replica
        # that took the heartbeat
        assert await sample(planes[1].url, "levelchat_usage_quota_refusals_total", join="token") == 1
        assert await sample(planes[0].url, "levelchat_usage_quota_refusals_total", join="token") == 0
        applied = [await sample(p.url, "levelchat_usage_participant_seconds_total", project="levelchat") for p in planes]
        assert sum(applied) >= used["participant_minutes"] * 60, applied
        assert await sample(planes[1].url, "levelchat_usage_quota_participant_seconds") == QUOTA_MIN * 60
        # the node learns the total with its heartbeat answers: its own joins are refused too
        await until_refused(node, room, 10)
        await assert_joins_refused(node, room)
        frames = viewer.frames["video"]
        await wait_for(lambda: viewer is not None and viewer.frames["video"] > frames + 30, 20,
                       "the live subscriber goes on receiving")
        before = (await wait_usage(planes[1], used["participant_minutes"] + 0.01, 20))["participant_minutes"]
    finally:
        if publisher is not None:
            await publisher.close()
        if viewer is not None:
            await viewer.close()
    try:
        for plane in planes:
            plane.kill9()
        again = procs.control("control-again", extra_args=store)  # no quota configured now
        await again.wait_healthy()
        after = await usage(again)
        assert after["participant_minutes"] >= before and after["quota"] == {}, (before, after)
    finally:
        procs.stop_all()


async def test_a_two_worker_node_reports_its_workers_usage_and_they_refuse_joins(tmp_path: Path) -> None:
    """The front reports what its workers wrote to their shared file; the control plane's total
    and quota come back to every worker."""
    procs = Procs(tmp_path)
    plane = procs.control("control-w", extra_args=("--store", f"sqlite:///{tmp_path}/control.db"),
                          env={"LEVELCHAT_CONTROL_QUOTA_PARTICIPANT_MINUTES": str(QUOTA_MIN)})
    publisher: WhipPublisher | None = None
    viewer: WhepSubscriber | None = None
    try:
        await plane.wait_healthy()
        node = procs.node("sfu-usage-w", plane.url, extra_args=("--workers", "2"),
                          env={"LEVELCHAT_SFU_RATE_LIMIT_IP_PER_S": "0", "LEVELCHAT_SFU_USAGE_FLUSH_S": "0.2"})
        await node.wait_healthy()
        await wait_nodes_state(plane.url, ["sfu-usage-w"], "live", timeout_s=20)
        room = "usage-w-room"
        alice, bob = await join_token(plane, room, "alice"), await join_token(plane, room, "bob")
        assert alice.status == 200 and bob.status == 200, (alice.body, bob.body)
        publisher = WhipPublisher(node.url, room, alice.body["token"])
        viewer = WhepSubscriber(node.url, room, bob.body["token"])
        await publisher.connect(timeout=20)
        assert (await viewer.connect(timeout=20))[0] == 201
        await wait_usage(plane, QUOTA_MIN, 30)
        refused = await join_token(plane, room, "carol")
        assert refused.status == 402 and refused.body["code"] == "quota_exceeded", refused.body
        for other in ("usage-w-1", "usage-w-2", "usage-w-3"):  # new rooms, on either worker
            await until_refused(node, other, 10)
        frames = viewer.frames["video"]
        await wait_for(lambda: viewer is not None and viewer.frames["video"] > frames + 30, 20,
                       "the live subscriber goes on receiving")
    finally:
        if publisher is not None:
            await publisher.close()
        if viewer is not None:
            await viewer.close()
        procs.stop_all()
