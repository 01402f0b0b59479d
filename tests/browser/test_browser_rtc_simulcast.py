"""Chromium publishes three simulcast layers through ``levelchat.js`` (``publish(stream,
{simulcast: true})`` over the WebSocket); the node's REMB lets it send all three, and an aiortc
subscriber on the WebSocket moves between them with ``set_layer``, decoding each at its width."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamTrack
from playwright.async_api import Browser

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import consume_widths, published_layers
from tests.e2e.test_rtc_signaling import RtcClient

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

WIDTHS = {"q": 320, "h": 640, "f": 1280}

_PUBLISH_JS = """async ([token]) => {
  const { connect } = await import("/static/levelchat.js");
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: false});
  const room = await connect(location.origin, token);
  window.simulcastRoom = room;
  return await room.publish(stream, {simulcast: true});
}"""


class WidthClient(RtcClient):
    """An RtcClient that keeps the width of every video frame it decodes."""

    widths: list[int]

    async def _consume(self, track: MediaStreamTrack) -> None:
        await consume_widths(track, self.widths)


async def _publish(browser: Browser, node: Node, room: str, identity: str) -> tuple[Any, list[dict[str, Any]]]:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(node.url + "/static/room.html")
    tracks: list[dict[str, Any]] = await page.evaluate(_PUBLISH_JS, [token(room, identity, ("room:join", "room:publish"))])
    assert errors == []
    return context, tracks


async def _packets_per_layer(node: Node, identity: str, seconds: float) -> dict[str, int]:
    layers = published_layers(node, identity)
    before = {rid: t.stats.packets for rid, t in layers.items()}
    await asyncio.sleep(seconds)
    return {rid: t.stats.packets - before[rid] for rid, t in layers.items()}


async def test_chromium_sends_every_layer_and_a_subscriber_switches_over_signaling(node: Node, browser: Browser) -> None:
    room = "browser-rtc-simulcast"
    context, tracks = await _publish(browser, node, room, "sim")
    sub = WidthClient(node, room, "viewer", ("room:join", "room:subscribe"))
    sub.widths = []
    try:
        (video,) = tracks
        assert video["layers"] == ["q", "h", "f"], video
        await sub.join()  # watching from the start: with nobody watching, Chrome is told to send q only (dynacast)
        # with the node's REMB (3 Mbit/s by default) Chrome sends its top layer too
        await wait_for(lambda: all(t.ssrc > 0 for t in published_layers(node, "sim").values()), 15, "every layer's SSRC learnt")
        await wait_for(lambda: published_layers(node, "sim")["f"].stats.packets > 300, 20, "packets of the top layer")
        # each layer's size, read from Chromium's VP8 key frames
        await wait_for(
            lambda: {rid: t.width for rid, t in published_layers(node, "sim").items()} == WIDTHS, 10, "layer sizes"
        )
        rates = await _packets_per_layer(node, "sim", 2.0)
        assert all(n > 20 for n in rates.values()), rates

        await wait_for(lambda: len(sub.widths) >= 30, 20, "frames of the default layer")
        assert sub.widths[-10:] == [1280] * 10, sub.widths[-10:]
        for choice in ("q", "h", "f", "auto", "q"):
            result = await sub.call("set_layer", {"track": video["sid"], "layer": choice})
            assert result["target"] == (None if choice == "auto" else choice), result
            width = WIDTHS["f" if choice == "auto" else choice]
            start = len(sub.widths)
            await wait_for(
                lambda w=width, n=start: sub.widths[n:][-10:] == [w] * 10, 10, f"10 new frames {width} wide: {result}"
            )
        (received,) = sub.received.values()
        assert received.log.missing() == []
    finally:
        await sub.close()
        await context.close()


async def test_room_page_publishes_simulcast_and_offers_a_layer_selector(node: Node, browser: Browser) -> None:
    from tests.browser.test_browser_room import RoomPage

    room = "browser-room-simulcast"
    ann, ben = await RoomPage.open(browser, node, "ann"), await RoomPage.open(browser, node, "ben")
    try:
        await ann.page.set_checked("#simulcast", True)
        await ann.join(room)
        await ben.join(room)
        await ben.wait_receiving(["ann"])
        selector = ben.page.locator('.tile[data-identity=ann] select.layer')
        await selector.wait_for(state="visible", timeout=5000)
        options = await selector.locator("option").all_inner_texts()
        assert options == ["auto", "q", "h", "f"]
        assert await ann.page.locator('.tile[data-identity=ben] select.layer').is_hidden()  # ben: no simulcast
        await selector.select_option("q")
        await ben.page.wait_for_function(
            "() => document.querySelector('#log').textContent.includes('layer q of ann')", timeout=5000
        )
        viewer = _participant_of(node, "ben")
        (dt,) = [d for d in viewer.downtracks if d.kind == "video"]
        await wait_for(lambda: dt.source is not None and dt.source.rid == "q", 10, "ben receives ann's q layer")
        assert ann.errors == [] and ben.errors == []
    finally:
        await ann.close()
        await ben.close()


def _participant_of(node: Node, identity: str) -> Any:
    return next(p for p in node.router.participants.values() if p.identity == identity)
