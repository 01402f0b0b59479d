"""Usage and quotas on a real lone node (and a real two-worker node): participant-minutes
accumulate while aiortc clients are in a room; once the configured quota is used up, new joins
(WHIP, WHEP, the WebSocket ``join``) get ``quota_exceeded`` (402) while the live subscriber keeps
receiving; the usage survives a restart.  A quota of 0.05 participant-minutes (3 s) is reached by
two participants in about 1.5 s, so nothing waits for minutes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Proc, Procs, admin_token, call
from tests.e2e.test_workers import wait_for_ready
from tests.e2e.webhook_support import sample

pytestmark = pytest.mark.timeout(180)

QUOTA_MIN = 0.05


def _env(tmp_path: Path, quota: float = QUOTA_MIN) -> dict[str, str]:
    return {
        "LEVELCHAT_SFU_USAGE_DB": str(tmp_path / "usage.db"),
        "LEVELCHAT_SFU_USAGE_FLUSH_S": "0.2",
        "LEVELCHAT_SFU_QUOTA_PARTICIPANT_MINUTES": str(quota),
        "LEVELCHAT_SFU_RATE_LIMIT_IP_PER_S": "0",
    }


async def usage(node: Proc) -> dict[str, Any]:
    reply = await call("GET", node.url + "/v1/usage", token=admin_token("room:admin"))
    assert reply.status == 200, reply.body
    return dict(reply.body)


async def ws_join(node: Proc, room: str, identity: str) -> dict[str, Any]:
    """The answer to a WebSocket ``join``."""
    url = node.url.replace("http://", "ws://") + "/v1/rtc?access_token=" + token(room, identity)
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "join", "params": {}}))
        while True:
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            frame = json.loads(msg.data)
            if frame.get("id") == 1:
                return dict(frame)


async def refusals(node: Proc, room: str) -> dict[str, str | None]:
    """The catalogue code a new WHIP, WHEP and WebSocket join into ``room`` get (None: accepted)."""
    late = WhipPublisher(node.url, room, token(room, "late-pub"))
    try:
        await late.pc.setLocalDescription(await late.pc.createOffer())
        whip = await call("POST", f"{node.url}/whip/{room}", token=late.token, sdp=late.pc.localDescription.sdp)
    finally:
        await late.close()
    viewer = WhepSubscriber(node.url, room, token(room, "late-sub"))
    try:
        await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
        whep = await call("POST", f"{node.url}/whep/{room}", token=viewer.token, sdp=viewer.pc.localDescription.sdp)
    finally:
        await viewer.close()
    answer = await ws_join(node, room, "late-ws")
    return {
        "whip": whip.body["code"] if whip.status >= 400 else None,
        "whep": whep.body["code"] if whep.status >= 400 else None,
        "ws": answer["error"]["data"]["code"] if "error" in answer else None,
    }


async def assert_joins_refused(node: Proc, room: str) -> None:
    codes = await refusals(node, room)
    assert codes == {"whip": "quota_exceeded", "whep": "quota_exceeded", "ws": "quota_exceeded"}, codes


async def test_the_quota_refuses_new_joins_and_not_live_ones_and_survives_a_restart(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    room = "quota-room"
    node = procs.node("usage-1", None, env=_env(tmp_path))
    await node.wait_healthy()
    publisher = WhipPublisher(node.url, room, token(room, "alice"))
    viewer = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        first = await usage(node)
        assert first["quota"] == {"participant_minutes": QUOTA_MIN}
        assert first["participant_minutes"] == 0 and first["recording_minutes"] == 0
        assert first["period_start"] == time.strftime("%Y-%m-01T00:00:00Z", time.gmtime())
        await publisher.connect(timeout=20)
        status, body = await viewer.connect(timeout=20)
        assert status == 201, body
        await wait_for(lambda: viewer.frames["video"] > 10, 20, "the subscriber receives")
        seen: list[float] = []

        async def used_up() -> bool:
            seen.append((await usage(node))["participant_minutes"])
            return seen[-1] >= QUOTA_MIN

        await wait_for_async(used_up, 30, "the quota used up")
        assert seen == sorted(seen), seen  # it only grows
        await assert_joins_refused(node, room)
        # /metrics: one refusal of each kind, the time counted, the period's total and the quota
        for join in ("whip", "whep", "rtc"):
            assert await sample(node.url, "levelchat_usage_quota_refusals_total", project="levelchat", join=join) == 1
        counted = await sample(node.url, "levelchat_usage_participant_seconds_total", project="levelchat")
        assert counted >= QUOTA_MIN * 60
        assert await sample(node.url, "levelchat_usage_period_participant_seconds") >= QUOTA_MIN * 60
        assert await sample(node.url, "levelchat_usage_quota_participant_seconds") == QUOTA_MIN * 60
        # the live ones go on: the subscriber keeps receiving, and keeps counting
        frames = viewer.frames["video"]
        await wait_for(lambda: viewer.frames["video"] > frames + 30, 20, "the live subscriber goes on receiving")
        assert publisher.pc.connectionState == "connected"
        before = (await usage(node))["participant_minutes"]
        assert before > seen[-1]
    finally:
        await publisher.close()
        await viewer.close()
    node.terminate()
    await node.wait_exit(15)
    again = procs.node("usage-1", None, env=_env(tmp_path))
    try:
        await again.wait_healthy()
        after = await usage(again)
        assert after["participant_minutes"] >= before, (before, after)  # written at stop: nothing lost
        await assert_joins_refused(again, room)
    finally:
        procs.stop_all()


async def test_without_a_quota_joins_go_on_and_a_room_token_may_not_read_usage(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    node = procs.node("usage-2", None, env=_env(tmp_path, quota=0))
    try:
        await node.wait_healthy()
        assert (await usage(node))["quota"] == {}
        for tok in (admin_token("room:admin", room="room-r"), token("room-r", "someone")):
            refused = await call("GET", node.url + "/v1/usage", token=tok)
            assert refused.status == 401 and refused.body["code"] == "token/unauthorized", refused.body
        publisher = WhipPublisher(node.url, "free-room", token("free-room", "alice"))
        try:
            await publisher.connect(timeout=20)
            await wait_for_async(
                lambda: _used(node), 30, "participant time counted without a quota"
            )
        finally:
            await publisher.close()
    finally:
        procs.stop_all()


async def _used(node: Proc) -> bool:
    return float((await usage(node))["participant_minutes"]) > 0


async def wait_for_async(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_two_worker_node_counts_in_one_file_and_every_worker_refuses(tmp_path: Path) -> None:
    """The front routes ``/v1/usage``; the workers share the usage file, so a room on either
    worker is refused once the node's total reaches the quota."""
    procs = Procs(tmp_path)
    node = procs.node("usage-front", None, env=_env(tmp_path), extra_args=("--workers", "2"))
    publisher: WhipPublisher | None = None
    try:
        await node.wait_healthy()
        assert (await wait_for_ready(node)).status == 200
        room = "front-quota"
        publisher = WhipPublisher(node.url, room, token(room, "alice"))
        viewer = WhepSubscriber(node.url, room, token(room, "bob"))
        await publisher.connect(timeout=20)
        assert (await viewer.connect(timeout=20))[0] == 201
        try:
            await wait_for_async(lambda: _used_up(node), 30, "the quota used up")
            for other in ("front-quota-1", "front-quota-2", "front-quota-3", "front-quota-4"):
                # new rooms, placed on either worker: the other worker reads the shared total when
                # it writes its own meter (every usage_flush_s), so it may take a join or two more
                await until_refused(node, other, 10)
                deadline = time.monotonic() + 10
                while (codes := await refusals(node, other)) != dict.fromkeys(("whip", "whep", "ws"), "quota_exceeded"):
                    assert time.monotonic() < deadline, codes
                    await asyncio.sleep(0.2)
            frames = viewer.frames["video"]
            await wait_for(lambda: viewer.frames["video"] > frames + 30, 20, "the live subscriber goes on receiving")
        finally:
            await viewer.close()
    finally:
        if publisher is not None:
            await publisher.close()
        procs.stop_all()


async def until_refused(node: Proc, room: str, timeout_s: float) -> None:
    """WHIP joins (each accepted one deleted again) until one gets ``quota_exceeded``."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = WhipPublisher(node.url, room, token(room, "probe"))
        try:
            await probe.pc.setLocalDescription(await probe.pc.createOffer())
            answer = await call("POST", f"{node.url}/whip/{room}", token=probe.token, sdp=probe.pc.localDescription.sdp)
        finally:
            await probe.close()
        if answer.status == 402:
            assert answer.body["code"] == "quota_exceeded", answer.body
            return
        assert answer.status == 201 and time.monotonic() < deadline, answer.body
        assert (await call("DELETE", node.url + answer.headers["Location"], token=probe.token)).status == 200
        await asyncio.sleep(0.2)


async def _used_up(node: Proc) -> bool:
    return float((await usage(node))["participant_minutes"]) >= QUOTA_MIN
