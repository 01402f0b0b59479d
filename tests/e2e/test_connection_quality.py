"""Connection quality (``connection_quality``; issue 12) with real aiortc clients over the
signaling WebSocket: a publisher whose uplink loses 15 % of its packets is rated down, a clean one
(that also watches the lossy one: the holes of the lossy leg are not its own) stays excellent,
and a client whose sockets close without a word is ``lost`` once silent for 8 s."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sfu.node import Node
from tests.e2e.clients import wait_for
from tests.e2e.test_rtc_signaling import ALL, RtcClient

pytestmark = pytest.mark.timeout(120)
LOSS = 0.15


def ratings(client: RtcClient) -> dict[str, str]:
    """The room's ratings as the client was told them: the first full list, then changes."""
    out: dict[str, str] = {}
    for params in client.named("connection_quality"):
        for entry in params["participants"]:
            out[entry["identity"]] = entry["quality"]
    return out


def lose_uplink(client: RtcClient, share: float, seed: int) -> dict[str, int]:
    """Drop ``share`` of the SRTP and SRTCP datagrams the client's publisher transport sends
    (a lossy uplink; ICE and DTLS go through), chosen by a seeded generator."""
    rng = random.Random(seed)
    ice = client.pub.getTransceivers()[0].sender.transport.transport
    original = ice._send
    seen = {"sent": 0, "dropped": 0}

    async def send(data: bytes) -> None:
        if len(data) >= 12 and 127 < data[0] < 192:
            seen["sent"] += 1
            if rng.random() < share:
                seen["dropped"] += 1
                return
        await original(data)

    ice._send = send
    return seen


async def silence(client: RtcClient) -> None:
    """Close the client's ICE sockets without a word to the node (no leave, the WebSocket open)."""
    for pc in (client.pub, client.sub):
        for tr in pc.getTransceivers():
            if tr.sender.transport is not None:
                await tr.sender.transport.transport._connection.close()


async def test_lossy_publisher_is_rated_down_clean_stays_excellent_silent_is_lost(node: Node) -> None:
    room = "quality"
    watcher = RtcClient(node, room, "watcher", ("room:join", "room:subscribe"))
    clean = RtcClient(node, room, "clean", ALL)
    lossy = RtcClient(node, room, "lossy", ("room:join", "room:publish"))
    clients = [watcher, clean, lossy]
    try:
        await watcher.join()
        await clean.join()
        await clean.publish()
        await lossy.join()
        await lossy.publish()
        dropped = lose_uplink(lossy, LOSS, seed=12)
        await wait_for(lambda: ratings(watcher).get("lossy") in ("poor", "good"), 30, "the lossy publisher rated down")
        told: dict[str, Any] = ratings(watcher)
        assert told["lossy"] in ("poor", "good") and dropped["dropped"] > 20, (told, dropped)
        by_identity = {p.identity: p for p in node.router.participants.values()}
        assert told["clean"] == "excellent" and told["watcher"] == "excellent", told
        assert ratings(clean) == ratings(watcher) == ratings(lossy), "everyone is told the same"
        clean_sample = by_identity["clean"].link.last
        assert clean_sample.loss is not None and clean_sample.loss < 0.05, clean_sample  # it watches lossy
        assert node._qualities()["excellent"] == 2
        # the participants API shows the same rating
        views = {p["identity"]: p for p in _participants(node, room)}
        assert views["lossy"]["quality"] == told["lossy"] and views["clean"]["quality"] == "excellent"
        lossiest = max(t["loss"] for t in views["lossy"]["tracks"])  # since the start, the worst stream
        assert 0.03 < lossiest < 0.4, views["lossy"]

        await silence(clean)
        await wait_for(lambda: ratings(watcher).get("clean") == "lost", 20, "the silent client rated lost")
        assert ratings(lossy)["clean"] == "lost" and node._qualities()["lost"] == 1
    finally:
        for c in clients:
            await c.close()


def _participants(node: Node, room_id: str) -> list[dict[str, Any]]:
    from sfu import clock
    from sfu.api.participants import participant_view

    room = node.rooms.rooms[room_id]
    now = clock.now_ms()
    return [participant_view(p, now) for p in room.participants.values()]
