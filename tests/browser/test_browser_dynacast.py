"""Dynacast with Chromium: a simulcast publisher on ``levelchat.js`` whose only viewer (aiortc, on
the WebSocket) bounds its subscription below ``f`` stops encoding ``f`` (the page's getStats:
outbound-rtp for rid f stops growing bytesSent and framesEncoded) and starts again when the
viewer asks for it; a WHIP publisher (no channel to be told on) keeps sending every layer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from sfu.node import Node
from sfu.routing.dynacast import OFF_DELAY_MS
from tests.browser.demo_page import CHROMIUM
from tests.browser.test_browser_rtc_simulcast import WIDTHS, WidthClient
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import published_layers

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(150),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

_PUBLISH_JS = """async ([token]) => {
  const { connect } = await import("/static/levelchat.js");
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: false});
  const room = await connect(location.origin, token);
  window.told = [];
  room.on("subscribed_layers", (event) => window.told.push(event));
  window.dynaRoom = room;
  return await room.publish(stream, {simulcast: true});
}"""

_WHIP_JS = """async ([room, token]) => {
  const { MediaSession } = await import("/static/whip.js");
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: false});
  const videoEncodings = [{rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000},
                          {rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000}, {rid: "f", maxBitrate: 2000000}];
  window.whipSession = await MediaSession.publish("", room, token, stream, undefined, {videoCodec: "VP8", videoEncodings});
}"""

_OUTBOUND_JS = """async (which) => {
  const pc = which === "whip" ? window.whipSession.pc : window.dynaRoom.publisher;
  const out = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video" && s.rid) out[s.rid] = {bytes: s.bytesSent, frames: s.framesEncoded ?? 0};
  });
  return out;
}"""


async def _outbound(page: Page, which: str = "sdk") -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = await page.evaluate(_OUTBOUND_JS, which)
    return result


async def _growth(page: Page, seconds: float, which: str = "sdk") -> dict[str, tuple[int, int]]:
    """Bytes and frames each encoding sent in the next ``seconds``."""
    before = await _outbound(page, which)
    await asyncio.sleep(seconds)
    after = await _outbound(page, which)
    return {rid: (after[rid]["bytes"] - before[rid]["bytes"], after[rid]["frames"] - before[rid]["frames"])
            for rid in after}


async def _page(browser: Browser, node: Node) -> tuple[Any, Page, list[str]]:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(node.url + "/static/room.html")
    return context, page, errors


async def test_chromium_stops_encoding_f_nobody_watches_and_resumes_it(node: Node, browser: Browser) -> None:
    room = "browser-dynacast"
    context, page, errors = await _page(browser, node)
    sub = WidthClient(node, room, "viewer", ("room:join", "room:subscribe"))
    sub.widths = []
    try:
        (video,) = await page.evaluate(_PUBLISH_JS, [token(room, "pub", ("room:join", "room:publish"))])
        await sub.join()  # a viewer from the start (with nobody watching, only q would be sent)
        await wait_for(lambda: published_layers(node, "pub")["f"].stats.packets > 300, 30, "packets of the top layer")
        await wait_for(
            lambda: {rid: t.width for rid, t in published_layers(node, "pub").items()} == WIDTHS, 15, "layer sizes"
        )
        await wait_for(lambda: sub.widths[-10:] == [1280] * 10, 30, "the viewer decodes f")
        growth = await _growth(page, 1.0)
        assert all(b > 0 and f > 0 for b, f in growth.values()), growth

        result = await sub.call("update_subscription", {"track": video["sid"], "max_height": 400})
        assert result["max_height"] == 400
        start = len(sub.widths)
        await wait_for(lambda: sub.widths[start:][-10:] == [640] * 10, 15, "the viewer decodes h")
        await page.wait_for_function("() => window.told.length >= 1", timeout=(OFF_DELAY_MS + 10_000))
        told = await page.evaluate("() => window.told")
        assert told[0]["applied"] is True and told[0]["track"] == video["sid"], told
        assert {x["rid"]: x["active"] for x in told[0]["layers"]} == {"q": True, "h": True, "f": False}
        await asyncio.sleep(1.0)  # setParameters applied, what was queued went out
        growth = await _growth(page, 2.0)
        assert growth["f"] == (0, 0), growth  # f is no longer encoded nor sent
        assert growth["h"][1] > 0 and growth["q"][1] > 0, growth
        start = len(sub.widths)
        await wait_for(lambda: len(sub.widths) >= start + 20, 10, "the viewer goes on with h")
        assert set(sub.widths[start:]) == {640}

        await sub.call("update_subscription", {"track": video["sid"], "max_height": None})
        await page.wait_for_function("() => window.told.length >= 2", timeout=10_000)
        told = await page.evaluate("() => window.told")
        assert all(x["active"] for x in told[1]["layers"]) and told[1]["applied"] is True, told
        start = len(sub.widths)
        await wait_for(lambda: sub.widths[start:][-10:] == [1280] * 10, 20, "the viewer decodes f again")
        growth = await _growth(page, 1.0)
        assert growth["f"][0] > 0 and growth["f"][1] > 0, growth
        assert errors == []
    finally:
        await sub.close()
        await context.close()


async def test_a_whip_publisher_keeps_sending_every_layer(node: Node, browser: Browser) -> None:
    room = "browser-dynacast-whip"
    context, page, errors = await _page(browser, node)
    sub = WidthClient(node, room, "viewer", ("room:join", "room:subscribe"))
    sub.widths = []
    try:
        await page.evaluate(_WHIP_JS, [room, token(room, "whip-pub", ("room:join", "room:publish"))])
        await wait_for(lambda: published_layers(node, "whip-pub")["f"].stats.packets > 300, 30, "packets of f")
        await sub.join()
        await wait_for(lambda: len(sub.widths) >= 10, 30, "the viewer decodes")
        (track,) = {r.track for r in sub.received.values()}
        await sub.call("update_subscription", {"track": track, "max_layer": "q"})
        await asyncio.sleep((OFF_DELAY_MS + 2000) / 1000)
        growth = await _growth(page, 2.0, "whip")
        assert all(b > 0 and f > 0 for b, f in growth.values()), growth
        assert sub.named("subscribed_layers") == []
        assert errors == []
    finally:
        await sub.close()
        await context.close()


async def test_room_page_pauses_and_bounds_a_tile_and_the_publisher_is_told(node: Node, browser: Browser) -> None:
    """The demo's per-tile controls: "up to 180p" moves ben to ann's q layer and ann's page logs
    that only q is sent; "pause" stops ann's video to ben, "resume" starts it again."""
    from tests.browser.test_browser_room import RoomPage

    room = "browser-room-dynacast"
    ann, ben = await RoomPage.open(browser, node, "ann"), await RoomPage.open(browser, node, "ben")
    try:
        await ann.page.set_checked("#simulcast", True)
        await ann.join(room)
        await ben.join(room)
        await ben.wait_receiving(["ann"])
        viewer = next(p for p in node.router.participants.values() if p.identity == "ben")
        (dt,) = [d for d in viewer.downtracks if d.kind == "video"]
        # the demo's camera is 640x480: Chrome may send fewer layers than three at that size
        await wait_for(lambda: published_layers(node, "ann")["q"].height, 20, "the size of ann's q layer")
        assert published_layers(node, "ann")["q"].height <= 180
        quality = ben.page.locator(".tile[data-identity=ann] select.quality")
        await quality.wait_for(state="visible", timeout=5000)
        await quality.select_option("180")
        await wait_for(lambda: dt.prefs.max_height == 180, 5, "ben's bound")
        await wait_for(lambda: dt.source is not None and dt.source.rid == "q", 15, "ben receives ann's q layer")
        await ann.page.wait_for_function(
            "() => document.querySelector('#log').textContent.includes('sending layers q (the others: nobody watches)')",
            timeout=OFF_DELAY_MS + 10_000,
        )
        pause = ben.page.locator(".tile[data-identity=ann] button.pause")
        await pause.click()
        await wait_for(lambda: dt.paused and not dt.prefs.enabled, 5, "ann's video paused for ben")
        await ben.page.wait_for_function(
            "() => document.querySelector('.tile[data-identity=ann] button.pause').textContent === 'resume'", timeout=5000
        )
        await pause.click()
        await wait_for(lambda: not dt.paused and dt.prefs.enabled, 5, "ann's video resumed for ben")
        assert ann.errors == [] and ben.errors == []
    finally:
        await ann.close()
        await ben.close()
