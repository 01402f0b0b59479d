"""Headless Chromium on the node's demo page: WHIP publish and WHEP watch, against aiortc and itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from aiortc.mediastreams import MediaStreamTrack
from playwright.async_api import Browser

from levelchat.tokens import ApiKey, TokenVerifier
from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, DemoPage
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import choose_layer, consume_widths

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]
FRAMES = 30


def _sessions(node: Node, room: str, kind: str = "") -> list[str]:
    """The node's WHIP or WHEP sessions in ``room`` (the node may hold others, e.g. its self-check's)."""
    return [
        sid
        for sid, s in node.sessions.sessions.items()
        if s.room_id == room and (not kind or s.participant.kind.value == kind)
    ]


@pytest.mark.parametrize(("video_codec", "sent_as"), [("", "video/VP8"), ("H264", "video/H264")])
async def test_chromium_publishes_aiortc_receives(
    node: Node, browser: Browser, video_codec: str, sent_as: str
) -> None:
    room = "browser-pub-1"
    page = await DemoPage.open(browser, node.url)
    sub = WhepSubscriber(node.url, room, token(room, "viewer"))
    try:
        await page.join_as(room, "alice")
        await page.publish(video_codec)
        assert await page.wait_state("publish", "connected", "failed") == "connected"
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= FRAMES and sub.frames["audio"] >= FRAMES, 15, "frames")
        # what the node sent is continuous; a packet the loaded loopback lost is NACKed back in
        assert sub.logs["video"].missing() == []
        assert sub.logs["audio"].gaps() == []
        if sent_as == "video/VP8":
            assert sub.logs["video"].keyframes_at, "the forwarded stream starts without a keyframe"
        sent = await page.rtp_stats("publish", "video")
        assert sent["codec"] == sent_as, sent
        assert sent["framesEncoded"] >= FRAMES and sent["frameWidth"] == 640, sent
        assert await page.wait_shown_stat("publish", "video.framesEncoded") > 0

        whip = _sessions(node, room, "whip")
        assert len(whip) == 1
        await page.leave("publish")
        assert await page.wait_state("publish", "closed") == "closed"
        await wait_for(lambda: not _sessions(node, room, "whip"), 5, "the WHIP session deleted")
        assert "publish: left" in await page.log_text()
        assert page.errors == []
    finally:
        await sub.close()
        await page.close()


async def test_aiortc_publishes_chromium_watches(node: Node, browser: Browser) -> None:
    room = "browser-sub-1"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    await pub.connect()
    page = await DemoPage.open(browser, node.url)
    try:
        # as a production page would: a token from elsewhere, pasted (dev mode off)
        await page.join_as(room, "bob", dev_mode=False)
        await page.paste_token("watch", token(room, "bob", ("room:join", "room:subscribe")))
        await page.watch()
        assert await page.wait_state("watch", "connected", "failed") == "connected"
        video = await page.wait_rtp("watch", "video", "framesDecoded", FRAMES)
        audio = await page.wait_rtp("watch", "audio", "packetsReceived", FRAMES)
        assert video["packetsLost"] == 0 and audio["packetsLost"] == 0, (video, audio)
        assert video["codec"] == "video/VP8", video
        assert (video["frameWidth"], video["frameHeight"]) == (320, 240), video
        pixels = await page.video_pixels("watch")
        assert pixels is not None and pixels["width"] == 320
        assert max(pixels["mean"]) > 10, f"the watched video is black: {pixels}"
        assert await page.wait_shown_stat("watch", "video.framesDecoded") > 0

        assert len(_sessions(node, room, "whep")) == 1
        await page.leave("watch")
        assert await page.wait_state("watch", "closed") == "closed"
        await wait_for(lambda: not _sessions(node, room, "whep"), 5, "the WHEP session deleted")
        assert _sessions(node, room, "whip"), "the viewer's leave ended the publisher"
        assert page.errors == []
    finally:
        await page.close()
        await pub.close()


@pytest.mark.parametrize("video_codec", ["VP8", "VP9", "H264", "AV1"])
async def test_chromium_publishes_chromium_watches(
    node: Node, browser: Browser, tmp_path: Path, video_codec: str
) -> None:
    room = "browser-both-1"
    publisher = await DemoPage.open(browser, node.url)
    viewer = await DemoPage.open(browser, node.url)
    try:
        await publisher.join_as(room, "carol")
        await publisher.publish(video_codec)
        assert await publisher.wait_state("publish", "connected", "failed") == "connected"
        await viewer.join_as(room, "dave")
        await viewer.watch(publisher="carol")  # WHEP /whep/{room}/{identity}
        assert await viewer.wait_state("watch", "connected", "failed") == "connected"
        started = time.monotonic()
        video = await viewer.wait_rtp("watch", "video", "framesDecoded", FRAMES)
        audio = await viewer.wait_rtp("watch", "audio", "packetsReceived", FRAMES)
        assert time.monotonic() - started < 10
        assert video["packetsLost"] == 0 and audio["packetsLost"] == 0, (video, audio)
        assert (video["frameWidth"], video["frameHeight"]) == (640, 480), video
        assert video["codec"] == f"video/{video_codec}", video
        assert video["keyFramesDecoded"] >= 1 and video["framesDropped"] == 0, video
        pixels = await viewer.video_pixels("watch")
        # Chromium's fake camera draws on green
        assert pixels is not None and pixels["mean"][1] > 2 * pixels["mean"][0], pixels
        assert await viewer.wait_shown_stat("watch", "video.framesDecoded", above=FRAMES) > FRAMES
        shot_dir = Path(os.environ.get("LEVELCHAT_SCREENSHOT_DIR", tmp_path))
        shot = shot_dir / f"demo-watching-{video_codec}.png"
        await viewer.page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert publisher.errors == [] and viewer.errors == []
    finally:
        await viewer.close()
        await publisher.close()


async def test_page_dev_token_verifies_in_python(node: Node, browser: Browser) -> None:
    page = await DemoPage.open(browser, node.url)
    try:
        jwt: str = await page.page.evaluate(
            """async () => {
              const m = await import("/static/devtoken.js");
              return m.mintDevToken({room: "token-room", identity: "erin", scopes: ["room:publish", "room:join"]});
            }"""
        )
        claims = TokenVerifier([ApiKey("devkey", "secret")], "levelchat").verify(jwt, time.time())
        assert (claims.identity, claims.room) == ("erin", "token-room")
        assert claims.scopes == {"room:join", "room:publish"}
        assert claims.expires_at is not None and 590 <= claims.expires_at - time.time() <= 601
    finally:
        await page.close()


@pytest.mark.parametrize(
    ("panel", "pasted", "shown"),
    [
        ("publish", "not-a-token", "token/invalid"),
        ("watch", "", "paste a watch token"),
        ("watch", "VALID", "not_found"),  # nobody publishes in the room
    ],
)
async def test_page_shows_refusals(node: Node, browser: Browser, panel: str, pasted: str, shown: str) -> None:
    room = "browser-refused"
    page = await DemoPage.open(browser, node.url)
    try:
        await page.join_as(room, "frank", dev_mode=False)
        if pasted == "VALID":
            pasted = token(room, "frank", ("room:join", "room:subscribe"))
        await page.paste_token("watch" if panel == "watch" else "publish", pasted)
        await (page.publish() if panel == "publish" else page.watch())
        assert await page.wait_state("watch" if panel == "watch" else "publish", "failed", "connected") == "failed"
        assert shown in await page.log_text()
        assert not _sessions(node, room)
    finally:
        await page.close()


async def _republish(publisher: DemoPage, room: str, identity: str, video_codec: str) -> None:
    await publisher.leave("publish")
    assert await publisher.wait_state("publish", "closed") == "closed"
    await publisher.join_as(room, identity)
    await publisher.publish(video_codec)
    assert await publisher.wait_state("publish", "connected", "failed") == "connected"


async def test_chromium_viewer_follows_the_rooms_next_publisher(node: Node, browser: Browser) -> None:
    """An untargeted WHEP viewer stays connected and is rebound to whoever publishes next, in any codec
    its answer carried (the first publisher offered them all)."""
    room = "browser-repub-1"
    publisher = await DemoPage.open(browser, node.url)
    viewer = await DemoPage.open(browser, node.url)
    try:
        await publisher.join_as(room, "gina")
        await publisher.publish()
        assert await publisher.wait_state("publish", "connected", "failed") == "connected"
        await viewer.join_as(room, "hank")
        await viewer.watch()
        assert await viewer.wait_state("watch", "connected", "failed") == "connected"
        decoded = (await viewer.wait_rtp("watch", "video", "framesDecoded", FRAMES))["framesDecoded"]
        for identity, codec in (("gina", "H264"), ("ivan", "VP9")):
            await _republish(publisher, room, identity, codec)
            video = await viewer.wait_rtp("watch", "video", "framesDecoded", decoded + FRAMES)
            assert video["codec"] == f"video/{codec}" and video["packetsLost"] == 0, video
            decoded = video["framesDecoded"]
        assert await viewer.state("watch") == "connected"
        assert publisher.errors == [] and viewer.errors == [], await publisher.log_text()
    finally:
        await viewer.close()
        await publisher.close()


async def test_chromium_viewer_follows_a_publisher_in_a_codec_the_first_lacked(node: Node, browser: Browser) -> None:
    room = "browser-repub-2"
    publisher = await DemoPage.open(browser, node.url)
    viewer = await DemoPage.open(browser, node.url)
    try:
        await publisher.join_as(room, "judy")
        await publisher.publish("VP8")
        assert await publisher.wait_state("publish", "connected", "failed") == "connected"
        await viewer.join_as(room, "kyle")
        await viewer.watch()
        assert await viewer.wait_state("watch", "connected", "failed") == "connected"
        decoded = (await viewer.wait_rtp("watch", "video", "framesDecoded", FRAMES))["framesDecoded"]
        await _republish(publisher, room, "judy", "H264")
        await viewer.wait_rtp("watch", "video", "framesDecoded", decoded + FRAMES, timeout_s=4)
    finally:
        await viewer.close()
        await publisher.close()


async def _publish_simulcast(publisher: DemoPage, room: str, identity: str) -> bool:
    """Publish the fake camera at 1280x720 in three layers q (320x180), h (640x360), f (1280x720);
    True when the node's answer accepted simulcast."""
    accepted: bool = await publisher.page.evaluate(
        """async ([room, token]) => {
          const { MediaSession } = await import("/static/whip.js");
          const stream = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: true});
          const videoEncodings = [
            {rid: "q", scaleResolutionDownBy: 4}, {rid: "h", scaleResolutionDownBy: 2}, {rid: "f"}];
          const session = await MediaSession.publish("", room, token, stream, undefined, {videoEncodings});
          window.levelchatDemo.publish.session = session;
          return session.pc.remoteDescription.sdp.includes("a=simulcast:recv");
        }""",
        [room, token(room, identity, ("room:join", "room:publish"))],
    )
    return accepted


async def test_chromium_simulcast_publish_reaches_a_viewer(node: Node, browser: Browser) -> None:
    room = "browser-simulcast"
    publisher = await DemoPage.open(browser, node.url)
    viewer = await DemoPage.open(browser, node.url)
    try:
        assert await _publish_simulcast(publisher, room, "lena"), "the node's answer refused simulcast"
        await publisher.wait_layers_encoded(FRAMES)
        await viewer.join_as(room, "mike")
        await viewer.watch()
        assert await viewer.wait_state("watch", "connected", "failed") == "connected"
        answer: str = await viewer.page.evaluate("window.levelchatDemo.watch.session.pc.remoteDescription.sdp")
        video_section = answer[answer.index("m=video") :].split("m=audio")[0]
        assert "a=sendonly" in video_section, "the node answered the viewer's video inactive"
        await viewer.wait_rtp("watch", "video", "framesDecoded", FRAMES, timeout_s=8)
    finally:
        await viewer.close()
        await publisher.close()


class FrameSizeSubscriber(WhepSubscriber):
    """A WHEP subscriber that keeps the width of every video frame it decodes."""

    widths: list[int]

    async def _consume(self, track: MediaStreamTrack) -> None:
        await consume_widths(track, self.widths, self.frames)


async def test_chromium_simulcast_to_aiortc_switching_layers(node: Node, browser: Browser) -> None:
    """Chromium publishes three layers; an aiortc WHEP subscriber moves between them with the layer
    route and keeps decoding, at each layer's size, with no gap in its RTP sequence."""
    room = "browser-simulcast-2"
    publisher = await DemoPage.open(browser, node.url)
    sub = FrameSizeSubscriber(node.url, room, token(room, "watcher"))
    sub.widths = []
    try:
        assert await _publish_simulcast(publisher, room, "nora")
        await publisher.wait_layers_encoded(FRAMES)
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= FRAMES, 15, "frames of the default layer")
        location = next(f"/whep/{room}/{sid}" for sid in _sessions(node, room, "whep"))
        tok = token(room, "watcher", ("room:join", "room:subscribe"))
        widths = {"q": 320, "h": 640, "f": 1280}
        for rid in ("h", "q", "h", None):
            chosen = await choose_layer(node, location, tok, rid)
            assert chosen["target"] == rid and [x["rid"] for x in chosen["layers"]] == ["q", "h", "f"], chosen
            # None: back to the best layer the publisher sends now
            width = widths[rid or chosen["switching_to"] or chosen["current"]]
            start = len(sub.widths)
            await wait_for(
                lambda w=width, n=start: sub.widths[n:][-10:] == [w] * 10, 10, f"10 new frames {width} wide: {chosen}"
            )
        assert sub.logs["video"].missing() == [] and sub.logs["audio"].gaps() == []
        assert sub.frames["audio"] >= FRAMES
        assert publisher.errors == []
    finally:
        await sub.close()
        await publisher.close()
