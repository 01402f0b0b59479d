"""Chromium publishes (VP9 or AV1, and Opus) through the demo page; the room is recorded without
transcoding; the files, downloaded through the API, decode here with PyAV, as many frames as
Chromium encoded while recorded (within 2 %), audio and video lined up on the publisher's clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from playwright.async_api import Browser

from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, DemoPage
from tests.browser.test_browser_whip_whep import _publish_simulcast
from tests.e2e.clients import wait_for
from tests.e2e.test_recording import _auth, _decode, _download, _finished, _room

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]


@pytest.mark.parametrize("video_codec", ["VP9", "AV1"])
async def test_chromium_publisher_recorded(
    node_factory: Callable[..., Any], browser: Browser, tmp_path: Path, video_codec: str
) -> None:
    node: Node = await node_factory(recordings_dir=str(tmp_path / "recs"))
    room = f"rec-chromium-{video_codec.lower()}"
    page = await DemoPage.open(browser, node.url)
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            await page.join_as(room, "carol")
            await page.publish(video_codec)
            assert await page.wait_state("publish", "connected", "failed") == "connected"
            await page.wait_rtp("publish", "video", "framesEncoded", 30)
            # the frames Chromium encoded while recorded: between what its stats said just after
            # the start and just before the stop (at least), and just before the start and just
            # after the stop (at most)
            encoded = [(await page.rtp_stats("publish", "video"))["framesEncoded"]]
            async with http.post(f"{node.url}/v1/rooms/{room}/recording", headers=_auth(room)) as resp:
                started = await resp.json()
                assert resp.status == 201, started
            encoded.append((await page.rtp_stats("publish", "video"))["framesEncoded"])
            await asyncio.sleep(3.0)
            encoded.append((await page.rtp_stats("publish", "video"))["framesEncoded"])
            async with http.delete(f"{node.url}/v1/recordings/{started['id']}", headers=_auth(room)) as resp:
                assert resp.status in (200, 202)
            stats = await page.rtp_stats("publish", "video")
            encoded.append(stats["framesEncoded"])
            assert stats["codec"] == f"video/{video_codec}", stats
            rec = await _finished(http, node, room, started["id"])
            assert rec["status"] == "completed", rec
            by_kind = {f["kind"]: f for f in rec["files"]}
            video, audio = by_kind["video"], by_kind["audio"]
            assert video["codec"] == video_codec and video["name"].endswith(".webm")
            files = await _download(http, node, room, rec, tmp_path)
            vname, vframes, vdur = _decode(files["video"])
            aname, aframes, adur = _decode(files["audio"])
            assert vname in ({"vp9", "libvpx-vp9"} if video_codec == "VP9" else {"av1", "libdav1d"}), vname
            assert aname == "opus"
            assert vframes == video["frames"] and aframes == audio["frames"]
            with av.open(str(files["video"])) as c:  # the size read from the first keyframe
                assert (c.streams.video[0].width, c.streams.video[0].height) == (640, 480)
            least, most = encoded[2] - encoded[1], encoded[3] - encoded[0]
            assert least - 2 - least // 50 <= vframes <= most + 2, (encoded, vframes, video["gaps"])
            # on the publisher's clock (its sender reports): both end together (the stop cuts
            # both at once); the video may start later, at the keyframe the start asked for
            v_start, a_start = video["started_at"], audio["started_at"]
            assert abs((v_start + vdur) - (a_start + adur)) < 0.1, (v_start, vdur, a_start, adur)
            assert -0.1 < v_start - a_start < 0.5, (v_start, a_start)
            assert abs((v_start - a_start) - (video["offset_s"] - audio["offset_s"])) < 0.002
            assert page.errors == []
    finally:
        await page.close()
        await node.stop()


async def test_chromium_simulcast_recorded_in_its_highest_layer(
    node_factory: Callable[..., Any], browser: Browser, tmp_path: Path
) -> None:
    node: Node = await node_factory(recordings_dir=str(tmp_path / "recs"))
    room = "rec-chromium-simulcast"
    page = await DemoPage.open(browser, node.url)
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            assert await _publish_simulcast(page, room, "lena"), "the node's answer refused simulcast"
            await page.wait_layers_encoded(30)
            primary = next(t for p in node.rooms.rooms[room].participants.values() for t in p.tracks.values()
                           if t.kind == "video" and t.group is not None and t is t.group.primary)
            group = primary.group
            assert group is not None
            # the highest layer sending when the recording starts is the one recorded
            await wait_for(lambda: group.choose(None).rid == "f", 20, "the f layer sending")
            async with http.post(f"{node.url}/v1/rooms/{room}/recording", headers=_auth(room)) as resp:
                started = await resp.json()
                assert resp.status == 201, started
            await asyncio.sleep(2.0)
            async with http.delete(f"{node.url}/v1/recordings/{started['id']}", headers=_auth(room)) as resp:
                assert resp.status in (200, 202)
            rec = await _finished(http, node, room, started["id"])
            video = next(f for f in rec["files"] if f["kind"] == "video")
            assert video["track"] == primary.sid  # under the source's id
            files = await _download(http, node, room, rec, tmp_path)
            _, frames, _ = _decode(files["video"])
            assert frames == video["frames"] > 20
            with av.open(str(files["video"])) as c:  # the f layer: 1280x720
                assert (c.streams.video[0].width, c.streams.video[0].height) == (1280, 720)
    finally:
        await page.close()
        await node.stop()
