"""Queuing webhooks never holds up forwarding: while a room's aiortc publisher and subscriber
exchange media, a burst of events (participants joining and leaving, test dispatches) goes to an
endpoint that never answers in time; the subscriber's frames keep arriving and every event is
queued, committed and retried, none lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import admin_token, free_port
from tests.e2e.test_admission import _whip


async def test_a_hung_endpoint_and_an_event_burst_leave_media_flowing(
    node_factory: Callable[..., Any], tmp_path: Path
) -> None:
    hung: list[float] = []

    async def never_in_time(request: web.Request) -> web.Response:
        hung.append(time.monotonic())
        await asyncio.sleep(5)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", never_in_time)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    node: Node = await node_factory(
        webhooks=[{"url": f"http://127.0.0.1:{port}/hook"}],
        webhooks_db=str(tmp_path / "hooks.db"),
        webhooks_timeout_s=0.5,
        webhooks_retry_base_s=0.2,
        webhooks_retry_max_s=0.5,
        rate_limit_ip_per_s=0,
        rate_limit_key_per_s=0,
    )
    room = "media-room"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()
        await sub.connect()
        await wait_for(lambda: sub.frames["video"] >= 10, 15, "frames before the burst")
        before = sub.frames["video"]
        headers = {"Authorization": f"Bearer {admin_token('room:admin')}"}
        async with aiohttp.ClientSession() as http:
            for i in range(20):
                status, _, resp_headers = await _whip(http, node, room, f"churn-{i}")
                assert status == 201
                async with http.delete(node.url + resp_headers["Location"], headers=headers) as resp:
                    assert resp.status == 200
            for _ in range(200):
                async with http.post(node.url + "/v1/webhooks/test", json={"event": "room_started"},
                                     headers=headers) as resp:
                    assert resp.status == 202
        d = node.webhooks.dispatcher
        assert d is not None
        # 2 joins + 2 publications (alice, bob) + 20 x (joined, published, unpublished, left) + 200 tests,
        # plus room_started: all queued and committed while the endpoint hangs
        await wait_for(lambda: d.queue_depth() >= 1 + 3 + 80 + 200 - d.stats.delivered, 20, "every event queued")
        await wait_for(lambda: sub.frames["video"] >= before + 30, 20, "frames during the burst")
        await wait_for(lambda: d.stats.retried >= 2, 20, "retries of the hung endpoint")
        assert d.stats.dropped == {}
        assert len(hung) >= 2
    finally:
        await pub.close()
        await sub.close()
        await node.stop()
        await runner.cleanup()
