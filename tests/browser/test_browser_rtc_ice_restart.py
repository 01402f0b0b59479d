"""Chromium restarts ICE on both transports through ``levelchat.js`` (``room.restartIce()``): new
credentials on both sides, the same DTLS session, media going on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from sfu.node import Node
from sfu.routing.participant import Participant
from tests.browser.demo_page import CHROMIUM
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

_JOIN_JS = """async ([token, publish]) => {
  const { connect } = await import("/static/levelchat.js");
  const room = await connect(location.origin, token);
  window.rtcRoom = room;
  window.rtcErrors = [];
  room.on("error", (err) => window.rtcErrors.push(`${err.code}: ${err.message}`));
  if (publish) await room.publish(await navigator.mediaDevices.getUserMedia({video: true, audio: false}));
  return true;
}"""

_DECODED_JS = """async () => {
  const pc = window.rtcRoom.subscriber;
  if (!pc) return 0;
  let n = 0;
  for (const s of (await pc.getStats()).values()) if (s.type === "inbound-rtp" && s.kind === "video") n += s.framesDecoded ?? 0;
  return n;
}"""


def _participant(node: Node, identity: str) -> Participant:
    return next(p for p in node.router.participants.values() if p.identity == identity)


async def _page(browser: Browser, node: Node) -> tuple[BrowserContext, Page]:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(node.url + "/static/room.html")
    return context, page


async def _decoded(page: Page) -> int:
    n: int = await page.evaluate(_DECODED_JS)
    return n


async def _wait_decoded(page: Page, above: int, timeout_s: float = 15) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        n = await _decoded(page)
        if n > above:
            return n
        if time.monotonic() > deadline:
            raise AssertionError(f"frames decoded stayed at {n}, not above {above}")
        await asyncio.sleep(0.2)


async def test_chromium_restarts_ice_on_both_transports(node: Node, browser: Browser) -> None:
    room = "browser-ice-restart"
    pub_ctx, pub = await _page(browser, node)
    sub_ctx, sub = await _page(browser, node)
    try:
        await pub.evaluate(_JOIN_JS, [token(room, "pia", ("room:join", "room:publish")), True])
        await sub.evaluate(_JOIN_JS, [token(room, "sam", ("room:join", "room:subscribe")), False])
        decoded = await _wait_decoded(sub, 30)
        publisher, subscriber = _participant(node, "pia"), _participant(node, "sam")
        pub_t, sub_t = publisher.publisher, subscriber.subscriber
        assert pub_t is not None and sub_t is not None
        before: dict[str, Any] = {
            "pub": (pub_t.ice.ufrag, pub_t.remote_ufrag, pub_t.rx),
            "sub": (sub_t.ice.ufrag, sub_t.remote_ufrag, sub_t.rx),
        }
        (video,) = publisher.tracks.values()

        await pub.evaluate("() => window.rtcRoom.restartIce()")
        await sub.evaluate("() => window.rtcRoom.restartIce()")
        await wait_for(lambda: sub_t.remote_ufrag != before["sub"][1], 10, "the subscriber's answer with new credentials")
        for t, (local, remote, rx) in ((pub_t, before["pub"]), (sub_t, before["sub"])):
            assert t.ice.ufrag != local and t.remote_ufrag != remote
            assert t.rx is rx and t.state.value == "connected"  # the same DTLS/SRTP session
        # the browsers' connectivity checks now use the new credentials: consent is refreshed
        pub_consent, sub_consent = pub_t.last_check_ms, sub_t.last_check_ms
        await wait_for(
            lambda: pub_t.last_check_ms > pub_consent and sub_t.last_check_ms > sub_consent, 15, "checks with the new credentials"
        )
        packets = video.stats.packets
        await wait_for(lambda: video.stats.packets > packets + 30, 10, "video from the publisher after the restart")
        await _wait_decoded(sub, decoded + 30)
        for page in (pub, sub):
            assert await page.evaluate("window.rtcErrors") == []
            assert await page.evaluate("window.rtcRoom.publisher?.connectionState ?? 'none'") in ("connected", "none")
        assert await sub.evaluate("window.rtcRoom.subscriber.connectionState") == "connected"
    finally:
        await pub_ctx.close()
        await sub_ctx.close()
