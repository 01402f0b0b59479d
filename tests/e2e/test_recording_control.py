"""The recording API through the control plane (``control.recordings``), with real processes: a
control plane, two nodes, an aiortc publisher on the room's node.  A room placed by the control
plane with ``"recording": true`` may be recorded (the policy goes to its node).  The start goes to the room's node; the recording's routes
(which name no room) find the node that has it; a download is streamed through; the file
decodes; refusals are catalogue problems, as on the node."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.clients import PatternVideoTrack, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Procs, call, wait_nodes_state
from tests.e2e.test_recording import _decode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]
REC = ("room:join", "recording:write")


def rec_token(room: str | None, *scopes: str) -> str:
    return token(room, "operator", scopes=scopes or REC)  # type: ignore[arg-type]  # room None: room-less


async def _final(base: str, rec_id: str, tok: str) -> dict[str, Any]:
    """``GET /v1/recordings/{id}`` through ``base`` until the files are final."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = await call("GET", f"{base}/v1/recordings/{rec_id}", token=tok)
        if reply.status == 200:
            return dict(reply.body)
        assert (reply.status, reply.body["code"]) == (404, "recording_not_ready"), reply.body
        assert reply.headers["Retry-After"] == "1"
        await asyncio.sleep(0.2)
    raise AssertionError("the recording never became final")


async def test_recording_through_the_control_plane(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    pub: WhipPublisher | None = None
    try:
        control = procs.control()
        await control.wait_healthy()
        nodes = {name: procs.node(name, control.url, env={"LEVELCHAT_SFU_RECORDINGS_DIR": str(tmp_path / name)})
                 for name in ("sfu-rec-a", "sfu-rec-b")}
        for proc in nodes.values():
            await proc.wait_healthy()
        await wait_nodes_state(control.url, ["sfu-rec-a", "sfu-rec-b"], "live", timeout_s=20)
        room, plain = "cp-rec", "cp-norec"
        # a room that allows recording, placed by the control plane (the policy goes to its node)
        reply = await call("POST", control.url + "/v1/rooms", {"room": room, "recording": True})
        assert reply.status == 201 and reply.body["recording"] is True, reply.body
        node_id = reply.body["node"]["id"]
        node = nodes[node_id]
        reply = await call("POST", control.url + "/v1/rooms", {"room": plain})
        assert reply.status == 201 and reply.body["recording"] is False, reply.body

        pub = WhipPublisher(node.url, room, token(room, "alice"), audio=False)
        await pub.connect()
        video = next(t for t in pub.tracks if isinstance(t, PatternVideoTrack))
        await wait_for(lambda: video._n >= 15, 15, "the publisher sending")

        start = f"{control.url}/v1/rooms/{room}/recording"
        # refusals, as on the node: no recording:write; a token for another room; a room whose
        # policy forbids it (the node's answer); a room nobody placed
        reply = await call("POST", start, {}, token=rec_token(room, "room:join"))
        assert (reply.status, reply.body["code"]) == (400, "recording/not-permitted"), reply.body
        reply = await call("POST", start, {}, token=rec_token(plain))
        assert (reply.status, reply.body["code"]) == (401, "token/unauthorized"), reply.body
        reply = await call("POST", f"{control.url}/v1/rooms/{plain}/recording", {}, token=rec_token(plain))
        assert (reply.status, reply.body["code"]) == (400, "recording/not-permitted"), reply.body
        assert "does not allow recording" in reply.body["detail"]
        # the node's problem, passed on: its request_id is this response's X-Request-Id
        assert reply.headers["X-Request-ID"] == reply.body["request_id"] != reply.body["node_request_id"], reply.headers
        assert reply.body["node_request_id"].startswith("req_")
        reply = await call("POST", f"{control.url}/v1/rooms/nowhere/recording", {}, token=rec_token("nowhere"))
        assert (reply.status, reply.body["code"]) == (404, "room_not_found"), reply.body

        # start through the control plane (the room's token), then an operator's room-less token
        # reads and stops it
        tok = rec_token(room)
        reply = await call("POST", start, {}, token=tok)
        assert reply.status == 201, reply.body
        assert (reply.body["room"], reply.body["status"]) == (room, "recording")
        rec_id = reply.body["id"]
        first = video._n
        operator = rec_token(None, "recording:write", "room:admin")
        reply = await call("GET", f"{control.url}/v1/recordings/{rec_id}", token=operator)
        assert (reply.status, reply.body["code"]) == (404, "recording_not_ready"), reply.body
        assert reply.headers["Retry-After"] == "1"
        # another room's token may not touch it (the node that has it says so); unknown ids
        reply = await call("GET", f"{control.url}/v1/recordings/{rec_id}", token=rec_token(plain))
        assert (reply.status, reply.body["code"]) == (401, "token/unauthorized"), reply.body
        reply = await call("DELETE", f"{control.url}/v1/recordings/{rec_id}", token=rec_token(plain))
        assert (reply.status, reply.body["code"]) == (401, "token/unauthorized"), reply.body
        for bad in ("RC_0000000000000000", "not-an-id"):
            reply = await call("GET", f"{control.url}/v1/recordings/{bad}", token=operator)
            assert (reply.status, reply.body["code"]) == (404, "not_found"), reply.body
        await wait_for(lambda: video._n >= first + 45, 20, "1.5 s of video recorded")
        reply = await call("DELETE", f"{control.url}/v1/recordings/{rec_id}", token=operator)
        assert reply.status in (200, 202), reply.body
        sent = video._n - first
        rec = await _final(control.url, rec_id, tok)
        assert rec["status"] == "completed", rec
        (vfile,) = rec["files"]

        # the download is streamed through; the file decodes, every stored frame
        url = f"{control.url}/v1/recordings/{rec_id}/files/{vfile['name']}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Authorization": f"Bearer {tok}"}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "video/webm"
                data = await resp.read()
            async with http.get(url[: -len(vfile["name"])] + "recording.json",
                                headers={"Authorization": f"Bearer {tok}"}) as resp:
                assert (resp.status, (await resp.json())["code"]) == (404, "not_found")
        assert len(data) == vfile["bytes"] > 0
        path = tmp_path / vfile["name"]
        path.write_bytes(data)
        name, frames, _ = _decode(path)
        assert name == "vp8" and frames == vfile["frames"]
        assert sent - 10 <= frames <= sent + 3, (sent, frames)

        # the node that has it gone: the control plane cannot tell, so it says retry
        await pub.close()
        pub = None
        node.kill9()
        reply = await call("GET", f"{control.url}/v1/recordings/{rec_id}", token=operator, timeout_s=30)
        if reply.status == 503:
            assert reply.body["code"] == "service_unavailable" and int(reply.headers["Retry-After"]) >= 1
        else:  # asked after the node's lease ran out (a loaded machine): no node has it now
            assert (reply.status, reply.body.get("code")) == (404, "not_found"), reply.body
            views = await wait_nodes_state(control.url, [node_id], "expired", timeout_s=1)
            assert views[node_id]["alive"] is False
    finally:
        if pub is not None:
            await pub.close()
        procs.stop_all()
