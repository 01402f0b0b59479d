"""Data channels between three headless Chromium participants (``room.html``'s chat box and the
SDK's ``sendData``), relayed by the node."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM
from tests.browser.test_browser_room import RoomPage

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

_RECORD_JS = """() => {
  window.__data = [];
  window.levelchatRoomPage.room.on("data", ({ from, data, reliable }) => window.__data.push({
    from, reliable, text: typeof data === "string" ? data : null,
    bytes: typeof data === "string" ? null : Array.from(data) }));
}"""


async def chat(p: RoomPage, text: str) -> None:
    await p.page.fill("#chat-text", text)
    await p.page.click("#chat-send")


async def test_a_message_from_each_reaches_every_other_participant(node: Node, browser: Browser) -> None:
    room = "browser-data-1"
    names = ["ann", "ben", "cat"]
    pages = [await RoomPage.open(browser, node, n) for n in names]
    try:
        for p in pages:
            await p.join(room)
            await p.page.evaluate(_RECORD_JS)
        for p in pages:
            await chat(p, f"hi from {p.identity} \u2603")
        for p in pages:
            for other in (n for n in names if n != p.identity):
                await p.page.wait_for_selector(f"#chat div[data-from={other}]", timeout=10000)
        for p in pages:
            got = await p.page.evaluate("() => window.__data")
            texts = sorted((m["from"], m["text"]) for m in got)
            assert texts == sorted((o, f"hi from {o} \u2603") for o in names if o != p.identity), texts
            assert all(m["reliable"] for m in got)

        # binary on the lossy channel, and a 60 KB message (fragmented) to one destination
        ann, ben, cat = pages
        await ann.page.evaluate("() => window.levelchatRoomPage.room.sendData(new Uint8Array([0, 1, 254, 255]), {reliable: false})")
        await ben.page.evaluate(
            "() => window.levelchatRoomPage.room.sendData(new Uint8Array(60000).map((_, i) => i % 251), {destinations: ['cat']})"
        )
        await cat.page.wait_for_function("() => window.__data.some(m => m.from === 'ben' && m.bytes)", timeout=10000)
        await ben.page.wait_for_function("() => window.__data.some(m => m.from === 'ann' && m.bytes)", timeout=10000)
        got = await cat.page.evaluate("() => window.__data.filter(m => m.bytes)")
        by_sender = {m["from"]: m for m in got}
        assert by_sender["ann"]["bytes"] == [0, 1, 254, 255] and by_sender["ann"]["reliable"] is False
        assert by_sender["ben"]["bytes"] == [i % 251 for i in range(60000)]
        ann_got = await ann.page.evaluate("() => window.__data.filter(m => m.bytes)")
        assert ann_got == []  # ben's was for cat only, and ann's own is never echoed
        for p in pages:
            assert p.errors == [], p.errors
    finally:
        for p in pages:
            await p.close()
