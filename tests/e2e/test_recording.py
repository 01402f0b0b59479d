"""Recording without transcoding, end to end: an aiortc publisher (VP8 or H264, and Opus) is
recorded by a real recorder process; the files, downloaded through the API, are decoded HERE with
PyAV (the product never decodes): every stored frame decodes, as many as the publisher encoded
while recorded, audio and video line up; losses are recovered or counted; a recorder that cannot
write answers ``recording/backend-failed``; the webhooks reach a real receiver, signed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc.rtcrtpsender import RTCRtpSender

from sfu.node import Node
from tests.e2e.clients import PatternVideoTrack, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.webhook_support import Receiver, metric

REC_SCOPES = ("room:join", "recording:write")


def _auth(room: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(room, 'operator', scopes=REC_SCOPES)}"}


async def _room(http: aiohttp.ClientSession, node: Node, room: str) -> None:
    tok = token(room, "admin", scopes=("room:create",))
    async with http.post(f"{node.url}/v1/rooms", json={"room": room, "recording": True},
                         headers={"Authorization": f"Bearer {tok}"}) as resp:
        assert resp.status == 201


def _encoded(pub: WhipPublisher) -> int:
    track = next(t for t in pub.tracks if isinstance(t, PatternVideoTrack))
    return track._n


async def _finished(http: aiohttp.ClientSession, node: Node, room: str, rec_id: str) -> dict[str, Any]:
    """Poll ``GET /v1/recordings/{id}`` until it is final (``recording_not_ready`` meanwhile)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with http.get(f"{node.url}/v1/recordings/{rec_id}", headers=_auth(room)) as resp:
            body = await resp.json()
            if resp.status == 200:
                return dict(body)
            assert (resp.status, body["code"]) == (404, "recording_not_ready"), body
            assert resp.headers["Retry-After"] == "1"
        await asyncio.sleep(0.2)
    raise AssertionError("the recording never became final")


async def _record(
    http: aiohttp.ClientSession, node: Node, room: str, pub: WhipPublisher, seconds: float
) -> tuple[dict[str, Any], int]:
    """Record the room for ``seconds``: the final recording, and the video frames the publisher
    encoded between the start's answer and the stop."""
    async with http.post(f"{node.url}/v1/rooms/{room}/recording", json={}, headers=_auth(room)) as resp:
        started = await resp.json()
        assert resp.status == 201, started
    assert started["status"] == "recording" and started["room"] == room
    first = _encoded(pub)
    async with http.get(f"{node.url}/v1/recordings/{started['id']}", headers=_auth(room)) as resp:
        assert resp.status == 404 and (await resp.json())["code"] == "recording_not_ready"
    await asyncio.sleep(seconds)
    async with http.delete(f"{node.url}/v1/recordings/{started['id']}", headers=_auth(room)) as resp:
        assert resp.status in (200, 202)
    sent = _encoded(pub) - first
    return await _finished(http, node, room, started["id"]), sent


async def _download(http: aiohttp.ClientSession, node: Node, room: str, rec: dict[str, Any], tmp: Path) -> dict[str, Path]:
    out = {}
    for f in rec["files"]:
        async with http.get(f"{node.url}/v1/recordings/{rec['id']}/files/{f['name']}", headers=_auth(room)) as resp:
            assert resp.status == 200
            data = await resp.read()
        assert len(data) == f["bytes"] > 0
        path = tmp / f["name"]
        path.write_bytes(data)
        out[f["kind"]] = path
    return out


def _decode(path: Path) -> tuple[str, int, float]:
    """(codec, frames decoded, seconds from the first frame's start to the last one's end)."""
    with av.open(str(path)) as c:
        stream = c.streams[0]
        name = stream.codec_context.name
        if name == "opus":  # WebM's Opus CodecPrivate, as players need it (pre-skip 0)
            assert (stream.codec_context.extradata or b"")[:8] == b"OpusHead"
        kind = stream.type
        frames = 0
        first = last = None
        end = 0.0
        for frame in c.decode(stream):
            frames += 1
            t = float(frame.pts * frame.time_base)
            first = t if first is None else first
            last = t
            if kind == "audio":
                end = t + frame.samples / frame.sample_rate
    assert first is not None and last is not None
    if kind == "video":
        end = last + (last - first) / max(frames - 1, 1)
    return name, frames, end - first


async def test_vp8_and_opus_recorded_decodable_aligned_with_webhooks(node_factory: Callable[..., Any], tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    node: Node = await node_factory(
        recordings_dir=str(tmp_path / "recs"), webhooks=[{"url": receiver.url}], webhooks_db=str(tmp_path / "hooks.db")
    )
    room = "rec-vp8"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            await pub.connect()
            await wait_for(lambda: _encoded(pub) >= 15, 15, "the publisher sending")
            rec, sent = await _record(http, node, room, pub, 3.0)
            assert rec["status"] == "completed"
            by_kind = {f["kind"]: f for f in rec["files"]}
            assert set(by_kind) == {"audio", "video"}
            video, audio = by_kind["video"], by_kind["audio"]
            assert (video["codec"], audio["codec"]) == ("VP8", "opus")
            assert video["name"].endswith(".webm") and audio["name"].endswith(".webm")
            files = await _download(http, node, room, rec, tmp_path)
            vname, vframes, vdur = _decode(files["video"])
            aname, aframes, adur = _decode(files["audio"])
            assert (vname, aname) == ("vp8", "opus")
            # every stored frame decodes; as many as were encoded while recorded, within 2 % (and
            # the frames in flight at either end)
            assert vframes == video["frames"]
            assert abs(vframes - sent) <= 2 + sent // 50, (sent, vframes)
            assert aframes == audio["frames"] > 100
            assert 2.0 < vdur < 5 and 2.0 < adur < 5
            assert abs(vdur - video["duration_s"]) < 0.1 and abs(adur - audio["duration_s"]) < 0.1
            # lined up on the publisher's clock (its sender reports): both end together (the stop
            # cuts both at once), the video starts with them or a little later, at the keyframe
            # the start asked for (aiortc sends it with its next frame: 0 to 60 ms here)
            v_start, a_start = video["started_at"], audio["started_at"]
            assert v_start is not None and a_start is not None
            assert abs((v_start + vdur) - (a_start + adur)) < 0.1, (v_start, vdur, a_start, adur)
            assert -0.1 < v_start - a_start < 0.5, (v_start, a_start)
            assert abs(vdur - adur) < 0.1 + max(0.0, v_start - a_start), (vdur, adur)
            assert min(video["offset_s"], audio["offset_s"]) == 0
            for f in (video, audio):
                assert f["gaps"]["packets_dropped"] == 0 and f["gaps"]["malformed"] == 0
            # names are ours: anything else is not_found, never a path
            for bad in ("..%2Frecording.json", "recording.json", "track9-video-vp8.webm"):
                async with http.get(f"{node.url}/v1/recordings/{rec['id']}/files/{bad}", headers=_auth(room)) as resp:
                    assert resp.status == 404 and (await resp.json())["code"] == "not_found"
            await wait_for(lambda: {"recording_started", "recording.completed"} <= {d.body["event"] for d in receiver.accepted()},
                           15, "the recording webhooks")
            hooks = [d for d in receiver.accepted() if d.body["event"].startswith("recording")]
            assert all(d.signed for d in hooks)
            done = next(d.body for d in hooks if d.body["event"] == "recording.completed")
            assert done["recording"]["id"] == rec["id"] and len(done["recording"]["files"]) == 2
            assert await metric(node.url, "levelchat_sfu_recordings_completed_total") == 1
            assert await metric(node.url, "levelchat_sfu_recording_packets_dropped_total") == 0
            assert await metric(node.url, "levelchat_sfu_recordings_active") == 0
            # its span counts in the node's usage (GET /v1/usage's recording_minutes)
            assert node.usage.current().recording_ms >= 1000 * vdur
    finally:
        await pub.close()
        await node.stop()
        await receiver.stop()


async def test_h264_recorded_into_matroska(node_factory: Callable[..., Any], tmp_path: Path) -> None:
    node: Node = await node_factory(recordings_dir=str(tmp_path / "recs"))
    room = "rec-h264"
    pub = WhipPublisher(node.url, room, token(room, "alice"), audio=False)
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "H264"]
    next(t for t in pub.pc.getTransceivers() if t.kind == "video").setCodecPreferences(h264)
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            await pub.connect()
            await wait_for(lambda: _encoded(pub) >= 15, 15, "the publisher sending")
            rec, sent = await _record(http, node, room, pub, 2.0)
            (video,) = rec["files"]
            assert (video["codec"], video["kind"]) == ("H264", "video") and video["name"].endswith(".mkv")
            files = await _download(http, node, room, rec, tmp_path)
            name, frames, duration = _decode(files["video"])
            assert name == "h264"
            assert frames == video["frames"]
            assert sent - 10 <= frames <= sent + 3, (sent, frames)
            assert 1.2 < duration < 4
    finally:
        await pub.close()
        await node.stop()


async def test_losses_recovered_for_video_counted_for_audio(node_factory: Callable[..., Any], tmp_path: Path) -> None:
    """Video packets lost on the way are NACKed by the node and their retransmissions recorded;
    audio (no NACK) losses are counted in the file's gaps."""
    node: Node = await node_factory(recordings_dir=str(tmp_path / "recs"))
    room = "rec-loss"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            await pub.connect()
            await wait_for(lambda: _encoded(pub) >= 15, 15, "the publisher sending")
            async with http.post(f"{node.url}/v1/rooms/{room}/recording", headers=_auth(room)) as resp:
                assert resp.status == 201
                rec_id = (await resp.json())["id"]
            first = _encoded(pub)
            vloss = pub.lose_sent("video", {30, 60, 90})
            aloss = pub.lose_sent("audio", {40, 80})
            await wait_for(lambda: vloss.done and aloss.done, 20, "the losses")
            await asyncio.sleep(1.5)  # past the recorder's wait for retransmissions
            async with http.delete(f"{node.url}/v1/recordings/{rec_id}", headers=_auth(room)) as resp:
                assert resp.status in (200, 202)
            sent = _encoded(pub) - first
            rec = await _finished(http, node, room, rec_id)
            by_kind = {f["kind"]: f for f in rec["files"]}
            assert by_kind["video"]["gaps"]["packets_lost"] == 0  # recovered by the node's NACKs
            assert by_kind["video"]["gaps"]["frames_skipped"] <= 3  # those before the first keyframe
            assert by_kind["audio"]["gaps"]["packets_lost"] == 2
            files = await _download(http, node, room, rec, tmp_path)
            _, frames, _ = _decode(files["video"])
            assert sent - 10 <= frames <= sent + 3, (sent, frames)
    finally:
        await pub.close()
        await node.stop()


async def test_unwritable_directory_is_backend_failed_and_the_room_flows(node_factory: Callable[..., Any], tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # root ignores permissions, not a file in the path
    node: Node = await node_factory(
        recordings_dir=str(blocker / "recs"), webhooks=[{"url": receiver.url}], webhooks_db=str(tmp_path / "hooks.db")
    )
    room = "rec-fail"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            await pub.connect()
            async with http.post(f"{node.url}/v1/rooms/{room}/recording", headers=_auth(room)) as resp:
                body = await resp.json()
                assert (resp.status, body["code"]) == (400, "recording/backend-failed"), body
                assert "directory" in body["detail"]
            await wait_for(lambda: any(d.body["event"] == "recording.failed" for d in receiver.accepted()), 15,
                           "the recording.failed webhook")
            failed = next(d.body for d in receiver.accepted() if d.body["event"] == "recording.failed")
            assert failed["recording"]["status"] == "failed" and failed["room"]["name"] == room
            before = node.counters.rtp_in[1]
            await wait_for(lambda: node.counters.rtp_in[1] > before + 30, 10, "the room's media flowing on")
            assert not node.recordings.active
    finally:
        await pub.close()
        await node.stop()
        await receiver.stop()
