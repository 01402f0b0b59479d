"""Chromium publishes simulcast in H264 and AV1 with its encodings listed high first (f, h, q, as
Firefox lists them): the node reads each layer's size from Chromium's real keyframes (H264: the
SPS in its STAP-A; AV1, libaom, L1T1 per encoding: the sequence header OBU) and ranks the layers q, h, f; an aiortc WHEP
viewer of the H264 source decodes the 1280-wide layer by default and the 320-wide one after
``{"rid": "q"}``.  (VP8 and VP9 are covered by the other Chromium simulcast tests.)"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, DemoPage
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import choose_layer, published_layers, whep_location
from tests.e2e.test_simulcast_ranking import WidthSubscriber

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(150),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]
SIZES = {"f": (1280, 720), "h": (640, 360), "q": (320, 180)}

_PUBLISH_JS = """async ([room, token, codec]) => {
  const { MediaSession } = await import("/static/whip.js");
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: false});
  // scalabilityMode on each: Chromium's AV1 (and VP9) otherwise encode one stream only
  const videoEncodings = [{rid: "f", scalabilityMode: "L1T1"}, {rid: "h", scaleResolutionDownBy: 2, scalabilityMode: "L1T1"},
                          {rid: "q", scaleResolutionDownBy: 4, scalabilityMode: "L1T1"}];
  const session = await MediaSession.publish("", room, token, stream, undefined, {videoCodec: codec, videoEncodings});
  window.levelchatDemo.publish.session = session;
  const offer = session.pc.localDescription.sdp;
  return {simulcast: (offer.match(/a=simulcast:send (.*)/) || [])[1] || "",
          accepted: session.pc.remoteDescription.sdp.includes("a=simulcast:recv")};
}"""


_OUTBOUND_JS = """async () => {
  const out = [];
  (await window.levelchatDemo.publish.session.pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp") out.push([s.rid, s.framesEncoded, s.frameWidth, s.encoderImplementation]);
  });
  return out;
}"""


@pytest.mark.parametrize("codec", ["H264", "AV1"])
async def test_chromium_layers_listed_high_first_ranked_by_keyframe_size(
    node: Node, browser: Browser, codec: str
) -> None:
    room = f"browser-sizes-{codec.lower()}"
    publisher = await DemoPage.open(browser, node.url)
    sub = WidthSubscriber(node.url, room, token(room, "viewer"), audio=False)
    sub.widths = []
    try:
        sent = await publisher.page.evaluate(_PUBLISH_JS, [room, token(room, "cleo", ("room:join", "room:publish")), codec])
        assert sent == {"simulcast": "f;h;q", "accepted": True}, sent
        await wait_for(lambda: len(published_layers(node, "cleo")) == 3, 15, "three layers")
        layers = published_layers(node, "cleo")
        assert {t.codec.name for t in layers.values()} == {codec}
        try:
            await wait_for(lambda: all(t.stats.packets > 50 for t in layers.values()), 20, "every layer sending")
        except AssertionError:  # say what Chromium encodes
            encodings = await publisher.page.evaluate(_OUTBOUND_JS)
            raise AssertionError(f"{[(t.rid, t.stats.packets) for t in layers.values()]}; {encodings}") from None
        await wait_for(lambda: {rid: (t.width, t.height) for rid, t in layers.items()} == SIZES, 15, f"sizes {SIZES}")
        group = layers["f"].group
        assert group is not None and [t.rid for t in group.layers] == ["f", "h", "q"] and group.rids == ["q", "h", "f"]
        if codec != "H264":
            return  # aiortc decodes VP8 and H264 only
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.widths[-10:] == [1280] * 10, 20, "the 1280-wide layer by default")
        location = whep_location(node, room, "viewer")
        await choose_layer(node, location, token(room, "viewer", ("room:join", "room:subscribe")), "q")
        await wait_for(lambda: sub.widths[-10:] == [320] * 10, 20, "the 320-wide layer")
    finally:
        await sub.close()
        await publisher.close()
