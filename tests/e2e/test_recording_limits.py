"""Recording's bounds and lifecycle: the room's end stops its recording (files final), WebSocket
participants are told each status, one recording per room, ``max_recordings`` at once, a
``tracks`` selection, ``recording_max_bytes`` (files stop growing, ``truncated``), and a disk that
fills up under a recording (a tiny tmpfs in the node's own mount namespace): ``failed``, told to
the room and to a webhook receiver, while the room's media flows on."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from sfu.node import Node
from sfu.packet.codecs import is_keyframe
from sfu.packet.rtp import header_length
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Proc, child_env, free_port
from tests.e2e.test_recording import _auth, _finished, _room
from tests.e2e.test_rtc_signaling import RtcClient
from tests.e2e.webhook_support import Receiver


async def _start(http: aiohttp.ClientSession, url: str, room: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/v1/rooms/{room}/recording", json=body or {}, headers=_auth(room)) as resp:
        return resp.status, await resp.json()


async def _keyframe_taped(node: Node, rec_id: str, timeout_s: float = 20.0) -> None:
    """Until a keyframe of the recorded video track has gone through its tap to the recorder."""
    rec = node.recordings.live(rec_id)
    assert rec is not None
    video = next(track for _index, track in rec.tracks.values() if track.is_video)
    inner = video.tap
    assert inner is not None
    seen = asyncio.Event()

    def watching(view: memoryview, length: int, now_ms: int) -> None:
        offset = header_length(view, length)
        if offset >= 0 and is_keyframe(video.codec.name, view[offset:length]):
            seen.set()
        inner(view, length, now_ms)

    video.tap = watching
    try:
        await asyncio.wait_for(seen.wait(), timeout_s)
    finally:
        if video.tap is watching:
            video.tap = inner


async def test_room_end_stops_the_recording_and_participants_are_told(node_factory: Callable[..., Any], tmp_path: Path) -> None:
    node: Node = await node_factory(recordings_dir=str(tmp_path / "recs"))
    room = "rec-end"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    watcher = RtcClient(node, room, "watcher")
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            await pub.connect()
            await watcher.join()
            status, started = await _start(http, node.url, room)
            assert status == 201
            status, again = await _start(http, node.url, room)
            assert (status, again["code"]) == (409, "conflict")  # one recording per room
            await wait_for(lambda: any(p["status"] == "recording" for p in watcher.named("recording")), 10, "told: recording")
            # the room ends once the recorder has had a keyframe of the video (it asks for one
            # at the start and again every 500 ms while it skips frames): a fixed second was not
            # always enough on a loaded machine, and a video file needs its keyframe
            await _keyframe_taped(node, started["id"])
            await asyncio.sleep(0.5)
            admin = token(room, "admin", scopes=("room:admin",))
            async with http.delete(f"{node.url}/v1/rooms/{room}", headers={"Authorization": f"Bearer {admin}"}) as resp:
                assert resp.status == 204
            rec = await _finished(http, node, room, started["id"])
            assert rec["status"] == "completed"
            assert {f["kind"] for f in rec["files"]} == {"audio", "video"}
            assert all(f["frames"] > 0 and f["bytes"] > 0 for f in rec["files"])
    finally:
        await watcher.http.close()
        await pub.close()
        await node.stop()


async def test_selection_concurrency_and_size_limits(node_factory: Callable[..., Any], tmp_path: Path) -> None:
    node: Node = await node_factory(recordings_dir=str(tmp_path / "recs"), max_recordings=1, recording_max_bytes=1 << 16)
    pubs = [WhipPublisher(node.url, room, token(room, "alice")) for room in ("rec-a", "rec-b")]
    try:
        async with aiohttp.ClientSession() as http:
            for room, pub in zip(("rec-a", "rec-b"), pubs, strict=True):
                await _room(http, node, room)
                await pub.connect()
            status, body = await _start(http, node.url, "rec-a", {"tracks": ["TR_nosuchtrack"]})
            assert (status, body["code"]) == (404, "not_found")
            status, body = await _start(http, node.url, "rec-a", {"tracks": "all"})
            assert (status, body["code"]) == (400, "bad_request")
            video = next(t.sid for p in node.rooms.rooms["rec-a"].participants.values() for t in p.tracks.values() if t.kind == "video")
            status, started = await _start(http, node.url, "rec-a", {"tracks": [video]})
            assert status == 201
            status, body = await _start(http, node.url, "rec-b")
            assert (status, body["code"]) == (503, "service_unavailable")  # max_recordings = 1
            # 64 KiB of frames, a few seconds of aiortc's VP8: the recording ends by itself
            rec = await _finished(http, node, "rec-a", started["id"])
            assert rec["status"] == "completed"
            (file,) = rec["files"]
            assert file["track"] == video and file["truncated"] is True
            assert file["bytes"] <= (1 << 16) + 4096  # the frames' limit, and the container's few bytes
            status, _ = await _start(http, node.url, "rec-b")
            assert status == 201  # the slot is free again
    finally:
        for pub in pubs:
            await pub.close()
        await node.stop()


# the node, in a mount namespace of its own, records onto a 48 KiB tmpfs that fills up
_IN_NAMESPACE = """
import ctypes, os, runpy, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
    raise OSError(ctypes.get_errno(), "unshare")
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
os.makedirs(sys.argv[1], exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", sys.argv[1]], check=True)
sys.argv = ["sfu", *sys.argv[2:]]
runpy.run_module("sfu", run_name="__main__")
"""


@pytest.fixture
def namespaced_node(tmp_path: Path) -> Iterator[tuple[Proc, Receiver]]:
    receiver = Receiver()
    recs = tmp_path / "small-disk"
    config = tmp_path / "node.toml"
    config.write_text(f'recordings_dir = "{recs}"\nwebhooks = [{{url = "{receiver.url}"}}]\nwebhooks_db = "{tmp_path / "hooks.db"}"\n')
    http_port, media_port = free_port(), free_port()
    args = ["-c", _IN_NAMESPACE, str(recs), "--dev", "--config", str(config), "--http-port", str(http_port),
            "--media-port", str(media_port), "--tcp-port", "0", "--node-id", "small-disk"]
    proc = Proc("small-disk", args, f"http://127.0.0.1:{http_port}", tmp_path, child_env()).start()
    try:
        yield proc, receiver
    finally:
        proc.terminate()


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="a mount namespace and tmpfs need root on Linux")
async def test_a_full_disk_fails_the_recording_and_the_room_flows_on(namespaced_node: tuple[Proc, Receiver]) -> None:
    proc, receiver = namespaced_node
    await receiver.start()
    await proc.wait_healthy()
    node = SimpleNamespace(url=proc.url)
    room = "rec-full"
    pub = WhipPublisher(proc.url, room, token(room, "alice"))
    sub = WhepSubscriber(proc.url, room, token(room, "bob"))
    watcher = RtcClient(node, room, "watcher")  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)  # type: ignore[arg-type]
            await pub.connect()
            await sub.connect()
            await watcher.join()
            status, started = await _start(http, proc.url, room)
            assert status == 201, started
            await wait_for(lambda: any(p["status"] == "failed" for p in watcher.named("recording")), 60, "told: failed")
            told = next(p for p in watcher.named("recording") if p["status"] == "failed")
            assert told["code"] == "recording/backend-failed" and told["recording"] == started["id"]
            rec = await _finished(http, node, room, started["id"])  # type: ignore[arg-type]
            assert rec["status"] == "failed" and rec["error"]["code"] == "recording/backend-failed"
            await wait_for(lambda: any(d.body["event"] == "recording.failed" for d in receiver.accepted()), 15, "the webhook")
            before = sub.frames["video"]
            await wait_for(lambda: sub.frames["video"] >= before + 30, 20, "the room's video flowing on")
    finally:
        await watcher.http.close()
        await pub.close()
        await sub.close()
        await receiver.stop()


async def test_tracks_published_later_are_recorded_and_a_new_node_serves_the_result(
    node_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """A recording started in an empty room takes the tracks published after it; once final, its
    description and files come from its directory: a node started afresh on it serves them."""
    recs = str(tmp_path / "recs")
    node: Node = await node_factory(recordings_dir=recs)
    room = "rec-later"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    running = [node]
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            status, started = await _start(http, node.url, room)
            assert status == 201
            await pub.connect()
            await asyncio.sleep(2.0)
            async with http.delete(f"{node.url}/v1/recordings/{started['id']}", headers=_auth(room)) as resp:
                assert resp.status in (200, 202)
            rec = await _finished(http, node, room, started["id"])
            assert {f["kind"] for f in rec["files"]} == {"audio", "video"}
            other = token("another-room", "operator", scopes=("room:join", "recording:write"))
            async with http.get(f"{node.url}/v1/recordings/{started['id']}", headers={"Authorization": f"Bearer {other}"}) as resp:
                assert resp.status == 401 and (await resp.json())["code"] == "token/unauthorized"
            await pub.close()
            await running.pop().stop()
            fresh: Node = await node_factory(recordings_dir=recs)
            running.append(fresh)
            async with http.get(f"{fresh.url}/v1/recordings/{started['id']}", headers=_auth(room)) as resp:
                assert resp.status == 200 and await resp.json() == rec
            name = rec["files"][0]["name"]
            async with http.get(f"{fresh.url}/v1/recordings/{started['id']}/files/{name}", headers=_auth(room)) as resp:
                assert resp.status == 200 and len(await resp.read()) == rec["files"][0]["bytes"]
    finally:
        await pub.close()
        for n in running:
            await n.stop()
