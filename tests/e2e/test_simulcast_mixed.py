"""Simulcast across the two APIs: a source published over the signaling WebSocket watched by a WHEP
viewer that picks layers with ``POST /whep/{room}/{session}/layer``, and a WHIP simulcast source
received by a signaling subscriber that picks layers with ``set_layer``.

The publisher is the ``LiteEndpoint`` simulcast sender of ``test_simulcast`` (three rid layers of
synthetic VP8 whose payload ends with the layer's rid); what the viewers receive is checked at the
RTP level: one clean cut per switch, no gap in the sequence.
"""

from __future__ import annotations

import pytest

from sfu.counters import DropReason
from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import (
    SimulcastSender,
    layer_logger,
    payload_logger,
    runs,
    simulcast_offer,
    walk_whep_layers,
    whep_location,
)
from tests.e2e.test_http_errors import call
from tests.e2e.test_rtc_signaling import RtcClient

pytestmark = pytest.mark.timeout(90)


async def test_whep_viewer_of_a_signaling_simulcast_source(node: Node) -> None:
    room = "mixed-simulcast-ws"
    sender = SimulcastSender.create()
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    sub = WhepSubscriber(node.url, room, token(room, "viewer"), audio=False)
    layers: list[str] = []
    try:
        await alice.join()
        published = await alice.call("publish", {"sdp": simulcast_offer(sender.lite)})
        (track,) = published["tracks"]
        assert track["layers"] == ["q", "h", "f"]
        await sender.lite.connect(published["sdp"])
        sender.start(30)
        publisher = next(p for p in node.router.participants.values() if p.identity == "alice")
        await wait_for(lambda: all(t.ssrc > 0 for t in publisher.tracks.values()), 5, "every layer's SSRC learnt")

        payload_logger(sub, layers)
        status, answer = await sub.connect()
        assert status == 201, answer
        video = answer[answer.index("m=video"):]
        assert "a=sendonly" in video and video.count("a=ssrc:") >= 1 and "a=simulcast" not in video
        location = whep_location(node, room, "viewer")
        await wait_for(lambda: layers.count("f") >= 30, 10, "the highest layer, by default")
        await walk_whep_layers(node, room, location, layers)
        assert runs(layers) == ["f", "q", "h", "f"], runs(layers)
        assert sub.logs["video"].gaps() == [] and len(sub.logs["video"].packets) == len(layers)
        assert sender.plis["q"] >= 1 and sender.plis["h"] >= 1
        assert node.counters.drops[DropReason.RTP_UNKNOWN_SSRC] == 0
    finally:
        await sender.stop()
        await sub.close()
        await alice.close()


async def test_signaling_subscriber_of_a_whip_simulcast_source(node: Node) -> None:
    room = "mixed-simulcast-whip"
    sender = SimulcastSender.create()
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    try:
        await bob.join()
        reply = await call(node, "POST", f"/whip/{room}", bearer=token(room, "alice"), body=simulcast_offer(sender.lite),
                           content_type="application/sdp")
        assert reply.status == 201, reply.text
        assert "a=simulcast:recv f;h;q" in reply.text
        await sender.lite.connect(reply.text)
        sender.start(30)

        await wait_for(lambda: bob.named("track_published"), 5, "track_published")
        (announced,) = bob.named("track_published")
        track = announced["track"]
        assert announced["participant"] == "alice" and track["layers"] == ["q", "h", "f"], announced
        await wait_for(lambda: bob.answers, 10, "bob answered the offer")
        (offered,) = bob.named("offer")[-1]["tracks"]
        assert offered["track"] == track["sid"]
        layers: list[str] = []
        layer_logger(bob, offered["mid"], layers)
        await wait_for(lambda: layers.count("f") >= 30, 10, "the highest layer, by default")
        for choice in ("q", "h", "auto"):
            result = await bob.call("set_layer", {"track": track["sid"], "layer": choice})
            assert [x["rid"] for x in result["layers"]] == ["q", "h", "f"]
            want = "f" if choice == "auto" else choice
            await wait_for(lambda w=want: layers[-20:] == [w] * 20, 5, f"layer {want}")
        assert runs(layers) == ["f", "q", "h", "f"], runs(layers)
        assert bob.received[offered["mid"]].log.gaps() == []
        assert sender.plis["q"] >= 1 and sender.plis["h"] >= 1
        assert node.counters.drops[DropReason.RTP_UNKNOWN_SSRC] == 0
    finally:
        await sender.stop()
        await bob.close()
