"""Graceful drain: by the admin call (reversible) and by SIGTERM on a real node process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Procs


async def _call(
    node_url: str, method: str, path: str, tok: str | None = None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, node_url + path, json=body, headers=headers) as resp:
            data = await resp.json() if resp.content_type.endswith("json") else await resp.text()
            return resp.status, data


def _admin() -> str:
    """A ``node:admin`` token, minted when used (one minted at import expires in a long run)."""
    return token("unused", "ops", scopes=("node:admin",))


async def test_admin_drain_keeps_live_rooms_until_the_deadline(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory()
    room = "draining-room"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()
        await sub.connect()
        status, state = await _call(node.url, "POST", "/v1/node/drain", _admin(), {"deadline_s": 2})
        assert status == 202 and state["draining"] and state["participants"] == 2
        status, body = await _call(node.url, "GET", "/readyz")
        assert status == 503 and body["reason"] == "draining"
        tok = token("brand-new", "carol", scopes=("room:create",))
        status, body = await _call(node.url, "POST", "/v1/rooms", tok, {"room": "brand-new"})
        assert (status, body["code"]) == (503, "service_unavailable")
        before = sub.frames["video"]
        await wait_for(lambda: sub.frames["video"] >= before + 10, 10, "media goes on while draining")
        started = time.monotonic()
        await wait_for(lambda: node.drained.is_set(), 10, "the drain deadline")
        assert time.monotonic() - started < 3
        await wait_for(lambda: sub.pc.connectionState in ("closed", "failed"), 10, "the session ended")
        assert node.rooms.participant_count == 0
        status, body = await _call(node.url, "GET", "/readyz")
        assert status == 503  # a completed drain keeps the node out of rotation...
        status, body = await _call(node.url, "DELETE", "/v1/node/drain", _admin())
        assert status == 200 and body["draining"] is False  # ...until the operator takes it back
        status, body = await _call(node.url, "GET", "/readyz")
        assert status == 200
        status, body = await _call(node.url, "DELETE", "/v1/node/drain", _admin())
        assert (status, body["code"]) == (409, "conflict")
    finally:
        await sub.close()
        await pub.close()
        await node.stop()


async def test_drain_ends_early_when_rooms_empty_and_can_be_cancelled(
    node_factory: Callable[..., Any],
) -> None:
    node: Node = await node_factory()
    room = "cancel-room"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    try:
        await pub.connect()
        status, _ = await _call(node.url, "POST", "/v1/node/drain", _admin(), {"deadline_s": 60})
        assert status == 202
        status, body = await _call(node.url, "DELETE", "/v1/node/drain", _admin())
        assert status == 200 and body["draining"] is False
        status, _ = await _call(node.url, "GET", "/readyz")
        assert status == 200
        tok = token("after-cancel", "carol", scopes=("room:create",))
        status, _ = await _call(node.url, "POST", "/v1/rooms", tok, {"room": "after-cancel"})
        assert status == 201
        status, _ = await _call(node.url, "POST", "/v1/node/drain", _admin(), {"deadline_s": 60})
        assert status == 202
        assert await pub.delete() == 200  # the last participant leaves: the drain completes early
        await wait_for(lambda: node.drained.is_set(), 5, "drain done once rooms are empty")
        status, body = await _call(node.url, "POST", "/v1/node/drain", _admin(), {"deadline_s": -1})
        assert (status, body["code"]) == (400, "bad_request")
        status, body = await _call(node.url, "POST", "/v1/node/drain", token("x-room", "eve"))
        assert (status, body["code"]) == (401, "token/unauthorized")
    finally:
        await pub.close()
        await node.stop()


@pytest.mark.timeout(60)
async def test_sigterm_drains_then_exits_and_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        node = procs.node("drainer", None, extra_args=["--drain-deadline-s", "3"])
        await node.wait_healthy()
        room = "sigterm-room"
        pub = WhipPublisher(node.url, room, token(room, "alice"))
        sub = WhepSubscriber(node.url, room, token(room, "bob"))
        await pub.connect()
        await sub.connect()
        await wait_for(lambda: sub.frames["video"] >= 5, 10, "frames")
        assert node.popen is not None
        node.popen.send_signal(15)
        await asyncio.sleep(1.5)
        assert node.running, "the node must keep serving its live session until the deadline"
        before = sub.frames["video"]
        await wait_for(lambda: sub.frames["video"] > before, 5, "media during the drain")
        assert await node.wait_exit(10) == 0
        assert "draining" in node.stderr()
        await sub.close()
        await pub.close()

        second = procs.node("impatient", None, extra_args=["--drain-deadline-s", "60"])
        await second.wait_healthy()
        pub = WhipPublisher(second.url, room, token(room, "alice"))
        await pub.connect()
        assert second.popen is not None
        second.popen.send_signal(15)
        await asyncio.sleep(0.5)
        assert second.running
        second.popen.send_signal(15)
        assert await second.wait_exit(5) == 0
        await pub.close()
    finally:
        procs.stop_all()
