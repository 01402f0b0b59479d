"""Bodies that arrive in pieces are read whole (issue 11, defect 3): an SDP offer sent as one TCP
segment's worth (1,460 bytes) and the rest 50 ms later, the same in chunked transfer encoding, and
JSON bodies on the node and the control plane both ways.  Every one succeeds, and the WHIP
publisher whose offer came in two segments really connects and reaches a WHEP viewer.

Both programs run as real processes (``tests/e2e/procs.py``); the requests go over raw sockets
(``tests/e2e/rawhttp.py``) so the segmentation is the test's, not a client library's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.e2e.clients import NO_ICE_SERVERS, PatternVideoTrack, WhepSubscriber, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Proc, Procs, admin_token
from tests.e2e.rawhttp import chunk, exchange, request_bytes, split

SEGMENT = 1460  # one Ethernet TCP segment's payload
GAP_S = 0.05


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[tuple[Proc, Proc]]:
    procs = Procs(tmp_path)
    try:
        node = procs.node("split-1", None)
        control = procs.control()
        await node.wait_healthy()
        await control.wait_healthy()
        yield node, control
        for proc in (node, control):
            assert "Traceback" not in proc.stderr(), proc.tail()
    finally:
        procs.stop_all()


def _port(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def _segments(head_and_body: bytes, chunked: bool) -> list[bytes]:
    """The request as a client on a real network might send it: a first segment, then the rest
    (chunked: each chunk in its own segment)."""
    if not chunked:
        return split(head_and_body, SEGMENT)
    head, body = head_and_body.split(b"\r\n\r\n", 1)
    pieces = body.split(b"\r\n")
    cuts, at = [], len(head) + 4
    for piece in pieces[:-1]:
        at += len(piece) + 2
        cuts.append(at)
    return split(head_and_body, *cuts)


async def _publish_split(node: Proc, room: str, chunked: bool) -> tuple[RTCPeerConnection, int]:
    pc = RTCPeerConnection(NO_ICE_SERVERS)
    pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp.encode()
    assert len(offer) > SEGMENT, "the offer must need more than one segment"
    raw = request_bytes(
        "POST", f"/whip/{room}", body=offer, chunked=chunked,
        headers=[("Authorization", f"Bearer {token(room, 'split-pub')}"), ("Content-Type", "application/sdp")],
    )
    reply = await exchange(_port(node), _segments(raw, chunked), gap_s=GAP_S)
    assert reply.status == 201, reply.body[:300]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.body.decode(), type="answer"))
    return pc, len(offer)


@pytest.mark.parametrize("chunked", [False, True], ids=["two-segments", "chunked"])
async def test_split_sdp_offer_publishes(procs: tuple[Proc, Proc], chunked: bool) -> None:
    node, _ = procs
    room = f"split-sdp-{int(chunked)}"
    pc, size = await _publish_split(node, room, chunked)
    viewer = WhepSubscriber(node.url, room, token(room, "split-viewer"), audio=False)
    try:
        await wait_for(lambda: pc.connectionState == "connected", 15, "split-offer publisher connected")
        status, body = await viewer.connect(timeout=15)
        assert status == 201, body
        await wait_for(lambda: viewer.frames["video"] >= 10, 20, f"viewer frames from a {size}-byte split offer")
    finally:
        await viewer.close()
        await pc.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["two-segments", "chunked"])
async def test_split_json_on_node(procs: tuple[Proc, Proc], chunked: bool) -> None:
    node, _ = procs
    room = f"split-json-{int(chunked)}"
    body = json.dumps({"room": room, "max_participants": 7, "pad": "x" * 3000}).encode()
    assert len(body) > SEGMENT
    raw = request_bytes("POST", "/v1/rooms", body=body, chunked=chunked, headers=[
        ("Authorization", f"Bearer {admin_token()}"), ("Content-Type", "application/json")])
    reply = await exchange(_port(node), _segments(raw, chunked), gap_s=GAP_S)
    assert reply.status == 201, reply.body
    assert reply.json()["room"] == room and reply.json()["max_participants"] == 7


@pytest.mark.parametrize("chunked", [False, True], ids=["two-segments", "chunked"])
async def test_split_json_on_control_plane(procs: tuple[Proc, Proc], chunked: bool) -> None:
    _, control = procs
    node_id = f"split-node-{int(chunked)}"
    registration = {
        "id": node_id, "url": "http://127.0.0.1:9", "media": {"host": "127.0.0.1", "port": 9},
        "capacity": {"max_participants": 10, "max_rooms": 5}, "version": "t",
        "rooms": [f"room-{i:04d}" for i in range(200)],
    }
    body = json.dumps(registration).encode()
    assert len(body) > SEGMENT
    auth = ("Authorization", f"Bearer {admin_token('node:register', 'node:admin')}")
    raw = request_bytes("POST", "/v1/nodes", body=body, chunked=chunked, headers=[auth, ("Content-Type", "application/json")])
    reply = await exchange(_port(control), _segments(raw, chunked), gap_s=GAP_S)
    assert reply.status == 201, reply.body
    heartbeat = json.dumps({"healthy": True, "load": {"rooms": 3, "participants": 4}, "pad": "y" * 3000}).encode()
    raw = request_bytes("PUT", f"/v1/nodes/{node_id}/status", body=heartbeat, chunked=chunked,
                        headers=[auth, ("Content-Type", "application/json")])
    reply = await exchange(_port(control), _segments(raw, chunked), gap_s=GAP_S)
    assert reply.status == 200, reply.body
    assert reply.json()["node"]["load"]["participants"] == 4


async def test_chunked_body_over_the_limit_is_refused(procs: tuple[Proc, Proc]) -> None:
    """Chunked bodies are held to the same limit as counted ones (no Content-Length to check)."""
    node, _ = procs
    body = b"v=0\r\n" + b"a=x-pad:" + b"p" * (70 * 1024) + b"\r\n"
    raw = request_bytes("POST", "/whip/split-big", chunked=True, body=body, headers=[
        ("Authorization", f"Bearer {token('split-big', 'big')}"), ("Content-Type", "application/sdp")])
    reply = await exchange(_port(node), [raw])
    assert reply.status == 400 and reply.json()["code"] == "bad_request", reply.body
    assert "larger than" in reply.json()["detail"]
    assert chunk(b"abc") == b"3\r\nabc\r\n0\r\n\r\n"
