"""Headless Chromium over IPv6 (issue 13): the demo page is served on http://127.0.0.1, the node's
only media candidates are ``::1`` (``media_host = "::1"``), so a Chromium publisher and a
Chromium viewer carry their media over IPv6 to ``::1`` (their nominated pair's remote candidate),
the node sees both as IPv6 UDP sessions and the viewer decodes the publisher's video."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable

import pytest
from playwright.async_api import Browser

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, DemoPage
from tests.e2e.conftest import public_participants
from tests.e2e.test_ipv6 import _has_ipv6_loopback

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
    pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this host"),
]
FRAMES = 30

_PAIR_JS = """async ([panel]) => {
  const report = await window.levelchatDemo[panel].session.pc.getStats();
  for (const s of report.values()) {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      const remote = report.get(s.remoteCandidateId);
      return remote ? remote.address || remote.ip : null;
    }
  }
  return null;
}"""


async def test_chromium_publishes_and_watches_over_ipv6(
    node_factory: Callable[..., Awaitable[Node]], browser: Browser
) -> None:
    node = await node_factory(media_host="::1")
    room = "browser-ipv6"
    publisher = await DemoPage.open(browser, node.url)
    viewer = await DemoPage.open(browser, node.url)
    try:
        await publisher.join_as(room, "carol")
        await publisher.publish("VP8")
        assert await publisher.wait_state("publish", "connected", "failed") == "connected"
        await viewer.join_as(room, "dave")
        await viewer.watch(publisher="carol")
        assert await viewer.wait_state("watch", "connected", "failed") == "connected"
        video = await viewer.wait_rtp("watch", "video", "framesDecoded", FRAMES)
        assert video["framesDecoded"] >= FRAMES and video["codec"] == "video/VP8", video
        for page, panel in ((publisher, "publish"), (viewer, "watch")):
            remote = await page.page.evaluate(_PAIR_JS, [panel])
            assert remote is not None and re.fullmatch(r"\[?::1\]?", remote), remote
        # the node sees both over IPv6 UDP, from ::1 or whichever of this host's own IPv6
        # addresses Chromium bound its host candidate to (packets to ::1 stay on loopback)
        addrs = {}
        for p in public_participants(node):
            t = p.publisher or p.subscriber
            assert t is not None and t.addr is not None
            addrs[p.identity] = (t.transport_kind, ipaddress.ip_address(t.addr[0]).version)
        assert addrs == {"carol": ("udp", 6), "dave-viewer": ("udp", 6)}
        assert publisher.errors == [] and viewer.errors == []
    finally:
        await publisher.close()
        await viewer.close()
