"""Three headless Chromium participants in one room through ``room.html`` and ``levelchat.js``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM
from tests.e2e.conftest import token

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

# What the subscriber pc decoded and received, per remote participant and kind (raw getStats()).
_INBOUND_JS = """async () => {
  const room = window.levelchatRoomPage.room;
  if (!room || !room.subscriber) return {};
  const report = await room.subscriber.getStats();
  const out = {};
  for (const s of report.values()) {
    if (s.type !== "inbound-rtp") continue;
    const remote = room.remoteTracks.get(s.mid);
    if (!remote) continue;
    out[`${remote.participant}/${s.kind}`] = {
      framesDecoded: s.framesDecoded ?? 0, packetsReceived: s.packetsReceived ?? 0,
      packetsLost: s.packetsLost ?? 0, totalSamplesReceived: s.totalSamplesReceived ?? 0,
    };
  }
  return out;
}"""


class RoomPage:
    def __init__(self, page: Page, identity: str) -> None:
        self.page = page
        self.identity = identity
        self.errors: list[str] = []

    @classmethod
    async def open(cls, browser: Browser, node: Node, identity: str, query: str = "") -> RoomPage:
        context = await browser.new_context()
        page = await context.new_page()
        rp = cls(page, identity)
        page.on("pageerror", lambda exc: rp.errors.append(f"page error: {exc}"))
        page.on("console", rp._console)
        await page.goto(node.url + "/static/room.html" + query)
        await page.wait_for_selector("body[data-ready=true]", timeout=5000)
        return rp

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    async def join(self, room: str) -> None:
        await self.page.fill("#room", room)
        await self.page.fill("#identity", self.identity)
        await self.page.click("#join")
        await self.page.wait_for_selector("#state[data-state=joined]", timeout=15000)

    async def leave(self) -> None:
        await self.page.click("#leave")
        await self.page.wait_for_selector("#state[data-state=left]", timeout=5000)

    async def inbound(self) -> dict[str, dict[str, Any]]:
        stats: dict[str, dict[str, Any]] = await self.page.evaluate(_INBOUND_JS)
        return stats

    async def log_text(self) -> str:
        return await self.page.inner_text("#log")

    async def tiles(self) -> list[str]:
        ids: list[str] = await self.page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.identity)")
        return ids

    async def wait_receiving(self, others: list[str], *, frames: int = 30, timeout_s: float = 30) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = await self.inbound()
            ok = all(
                stats.get(f"{o}/video", {}).get("framesDecoded", 0) >= frames
                and stats.get(f"{o}/audio", {}).get("totalSamplesReceived", 0) > 48000 // 2
                for o in others
            )
            if ok:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.identity} does not receive {others}: {stats}\n{await self.log_text()}")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.page.context.close()


async def test_three_chromium_participants_see_and_hear_each_other(node: Node, browser: Browser) -> None:
    room = "browser-room-1"
    names = ["ann", "ben", "cat"]
    pages = [await RoomPage.open(browser, node, n) for n in names]
    try:
        for p in pages:
            await p.join(room)
        for p in pages:
            others = [n for n in names if n != p.identity]
            stats = await p.wait_receiving(others)
            before = {k: v["framesDecoded"] for k, v in stats.items() if k.endswith("/video")}
            await asyncio.sleep(1.0)
            after = await p.inbound()
            for key, n in before.items():
                assert after[key]["framesDecoded"] > n, f"{p.identity}: {key} stopped decoding"
            assert sorted(await p.tiles()) == sorted(names)
        # each tile's badge shows the rating the node sent (connection_quality), kept by the SDK
        for p in pages:
            for n in names:
                await p.page.wait_for_selector(f".tile[data-identity={n}] .conn-quality[data-quality]", timeout=10000)
            shown = await p.page.evaluate(
                "() => Object.fromEntries([...document.querySelectorAll('.tile')].map("
                "t => [t.dataset.identity, t.querySelector('.conn-quality').textContent]))"
            )
            kept = await p.page.evaluate("() => Object.fromEntries(window.levelchatRoomPage.room.connectionQuality)")
            assert shown == kept and set(shown.values()) <= {"excellent", "good", "poor"}, (shown, kept)
        assert len(node.rooms.rooms[room].participants) == 3

        # cat leaves: ann and ben are told and drop her tile
        ann, ben, cat = pages
        await cat.leave()
        for p in (ann, ben):
            await p.page.wait_for_function(
                "() => !document.querySelector('.tile[data-identity=cat]')", timeout=5000
            )
            assert "cat left (left)" in await p.log_text()
        assert "cat" not in node.rooms.rooms[room].participants

        # cat rejoins (same page, new session): everyone receives everyone again
        await cat.join(room)
        for p in pages:
            others = [n for n in names if n != p.identity]
            await p.wait_receiving(others, frames=30)
        assert "cat joined" in await ann.log_text()
        for p in pages:
            assert p.errors == [], p.errors
    finally:
        for p in pages:
            await p.close()


async def test_a_refused_join_shows_the_catalogue_code(node: Node, browser: Browser) -> None:
    room = "browser-room-cap"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            node.url + "/v1/rooms",
            json={"room": room, "max_participants": 1},
            headers={"Authorization": "Bearer " + token(room, "admin", ("room:create",))},
        ) as resp:
            assert resp.status == 201
    first, second = await RoomPage.open(browser, node, "one"), await RoomPage.open(browser, node, "two")
    try:
        await first.join(room)
        await second.page.fill("#room", room)
        await second.page.fill("#identity", "two")
        await second.page.click("#join")
        await second.page.wait_for_selector("#state[data-state=left]", timeout=10000)
        assert "room/cap-denied: room 'browser-room-cap' is at its cap of 1 participants" in await second.log_text()
        assert list(node.rooms.rooms[room].participants) == ["one"]
    finally:
        await first.close()
        await second.close()
