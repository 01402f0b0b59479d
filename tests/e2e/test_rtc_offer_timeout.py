"""Subscriber offers that are not answered: sent again once after ``subscriber_offer_timeout_s``,
then the session ends with a ``signaling/timeout`` problem (real WebSocket clients, an aiortc
publisher)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.test_rtc_signaling import RtcClient

pytestmark = pytest.mark.timeout(60)


class Withholder:
    """A WebSocket client that joins, subscribes and never answers an offer."""

    def __init__(self, url: str, room: str, identity: str) -> None:
        self.url = url.replace("http://", "ws://") + "/v1/rtc?access_token=" + token(
            room, identity, ("room:join", "room:subscribe")
        )
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.close_code: int | None = None
        self.http = aiohttp.ClientSession()

    async def run(self) -> None:
        async with self.http.ws_connect(self.url) as ws:
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "join", "params": {}}))
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                self.frames.append((time.monotonic(), json.loads(msg.data)))
            self.close_code = ws.close_code

    def named(self, method: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, f["params"]) for t, f in self.frames if f.get("method") == method]


class SecondCopies(asyncio.Queue[dict[str, Any]]):
    """Lets through only the second copy of each offer version."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def put_nowait(self, item: dict[str, Any]) -> None:
        if item["version"] in self.seen:
            super().put_nowait(item)
        self.seen.add(item["version"])


class LateAnswerer(RtcClient):
    """Answers only the second copy of each offer (as a client that lost the first would)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.offers = SecondCopies()


async def test_unanswered_offer_is_resent_then_the_session_ends(node_factory: Callable[..., Any]) -> None:
    node = await node_factory(subscriber_offer_timeout_s=1.0)
    room = "rtc-offer-timeout"
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish", "room:subscribe"))
    silent = Withholder(node.url, room, "silent")
    late = LateAnswerer(node, room, "late", ("room:join", "room:subscribe"))
    reader: asyncio.Task[None] | None = None
    try:
        await alice.join()
        await alice.publish(audio=True, video=True)
        reader = asyncio.create_task(silent.run())
        await late.join()
        await wait_for(lambda: len(silent.named("offer")) >= 1, 5, "the first offer")
        await wait_for(lambda: silent.close_code is not None, 8, "the silent session closed")
        (first_t, first), (second_t, second) = silent.named("offer")
        assert first == second  # the same offer, same version
        assert 0.9 <= second_t - first_t <= 2.0
        errors = [(t, f) for t, f in silent.frames if "error" in f]
        (err_t, err_frame), = errors
        assert err_frame["id"] is None and 0.9 <= err_t - second_t <= 2.0
        problem = err_frame["error"]["data"]
        assert problem["code"] == "signaling/timeout" and problem["instance"] == "/v1/rtc"
        assert f"version {first['version']}" in problem["detail"]
        (_, disconnected), = silent.named("disconnected")
        assert disconnected["reason"] == "signaling_timeout"
        assert silent.close_code == 4000
        await wait_for(lambda: any(p["participant"] == "silent" for p in alice.named("participant_left")), 5, "left")
        assert "silent" not in node.rooms.rooms[room].participants

        # the late client answered the resent copy: it is still there and receives alice
        await wait_for(lambda: any(r.frames >= 10 for r in late.received.values()), 15, "late receives alice")
        assert "late" in node.rooms.rooms[room].participants and late.closed_with is None
        assert [p["version"] for p in late.named("offer")][:2] == [1, 1]
    finally:
        if reader is not None:
            reader.cancel()
        await silent.http.close()
        await alice.close()
        await late.close()
        await node.stop()
