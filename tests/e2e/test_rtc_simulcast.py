"""Simulcast over the signaling WebSocket: a publisher's rid layers published with ``publish``, one
track announced with its ``layers``, and an aiortc subscriber choosing layers with ``set_layer``.

The publisher is the ``LiteEndpoint`` of ``test_simulcast`` (three rid layers of synthetic VP8
whose payload ends with the layer's rid); the subscriber is the aiortc ``RtcClient`` of
``test_rtc_signaling``.  What it receives is checked at the RTP level.
"""

from __future__ import annotations

import asyncio

import pytest

from sfu.counters import DropReason
from sfu.node import Node
from tests.e2e.clients import wait_for
from tests.e2e.simulcast_support import RID_PACKETS, SimulcastSender, layer_logger, runs, simulcast_offer
from tests.e2e.test_rtc_signaling import RpcFailure, RtcClient

#: each layer's encoder counts its own picture IDs and TL0PICIDX (near a wrap for "h")
PID_BASE = {"f": 1000, "h": 0x7FF0, "q": 20}
TL0_BASE = {"f": 7, "h": 250, "q": 100}


class DescriptorSender(SimulcastSender):
    """Like ``SimulcastSender``, with VP8 payload descriptors carrying a 15-bit picture ID and a
    TL0PICIDX (every second frame on temporal layer 0) counted per layer."""

    def head(self, rid: str, n: int, p: int, packets: int, key: bool) -> bytes:
        pid = (PID_BASE[rid] + n) & 0x7FFF
        desc = bytes([0x90 if p == 0 else 0x80, 0xC0, 0x80 | (pid >> 8), pid & 0xFF, (TL0_BASE[rid] + n // 2) & 0xFF])
        if p == 0:
            desc += b"\x00\x9d\x01\x2a" if key else b"\x01"
        return desc


pytestmark = pytest.mark.timeout(90)


async def test_picture_ids_stay_continuous_across_layer_switches(node: Node) -> None:
    """The subscriber's VP8 picture IDs go up by one per picture and TL0PICIDX by at most one,
    through switches between layers whose encoders count from far apart (and one near the wrap)."""
    room = "rtc-simulcast-vp8"
    sender = DescriptorSender.create()
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    try:
        await bob.join()
        await alice.join()
        published = await alice.call("publish", {"sdp": simulcast_offer(sender.lite)})
        (track,) = published["tracks"]
        await sender.lite.connect(published["sdp"])
        sender.start(30)
        await wait_for(lambda: bob.answers, 10, "bob answered the offer")
        (offered,) = bob.named("offer")[-1]["tracks"]
        layers: list[str] = []
        pictures: list[tuple[int, int]] = []
        layer_logger(bob, offered["mid"], layers, pictures)
        await wait_for(lambda: layers.count("f") >= 20, 10, "the highest layer")
        for choice in ("h", "q", "f", "h"):
            await bob.call("set_layer", {"track": track["sid"], "layer": choice})
            await wait_for(lambda w=choice: layers[-15:] == [w] * 15, 5, f"layer {choice}")
        assert runs(layers) == ["f", "h", "q", "f", "h"], runs(layers)
        assert len(pictures) > 40
        steps = {(b[0] - a[0]) & 0x7FFF for a, b in zip(pictures, pictures[1:], strict=False)}
        assert steps == {1}, pictures
        tl0_steps = {(b[1] - a[1]) & 0xFF for a, b in zip(pictures, pictures[1:], strict=False)}
        assert tl0_steps <= {0, 1}, pictures
        assert bob.received[offered["mid"]].log.gaps() == []
    finally:
        await sender.stop()
        await alice.close()
        await bob.close()


async def test_simulcast_publish_over_signaling_and_set_layer(node: Node) -> None:
    room = "rtc-simulcast"
    sender = SimulcastSender.create()
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    try:
        await bob.join()
        await alice.join()
        published = await alice.call("publish", {"sdp": simulcast_offer(sender.lite)})
        assert "a=simulcast:recv f;h;q" in published["sdp"]
        (track,) = published["tracks"]  # one source, not one track per layer
        assert track["kind"] == "video" and track["layers"] == ["q", "h", "f"], track
        await sender.lite.connect(published["sdp"])
        sender.start(30)

        await wait_for(lambda: bob.named("track_published"), 5, "track_published")
        (announced,) = bob.named("track_published")
        assert announced == {"participant": "alice", "track": track}
        await wait_for(lambda: bob.answers, 10, "bob answered the offer")
        (offered,) = bob.named("offer")[-1]["tracks"]
        assert offered["track"] == track["sid"]
        assert bob.named("offer")[-1]["sdp"].count("m=video") == 1

        layers: list[str] = []
        layer_logger(bob, offered["mid"], layers)
        await wait_for(lambda: layers.count("f") >= 30, 10, "the highest layer, by default")
        assert set(layers) == {"f"}

        for choice in ("q", "h", "auto"):
            result = await bob.call("set_layer", {"track": track["sid"], "layer": choice})
            want = "f" if choice == "auto" else choice
            assert result["track"] == track["sid"] and result["target"] == (None if choice == "auto" else choice)
            assert [x["rid"] for x in result["layers"]] == ["q", "h", "f"]
            await wait_for(lambda w=want: layers[-20:] == [w] * 20, 5, f"layer {want}")
        assert runs(layers) == ["f", "q", "h", "f"], runs(layers)
        received = bob.received[offered["mid"]]
        assert received.log.gaps() == [] and len(received.log.packets) >= len(layers)
        assert sender.plis["q"] >= 1 and sender.plis["h"] >= 1
        assert node.counters.drops[DropReason.RTP_UNKNOWN_SSRC] == 0
        assert all(n > RID_PACKETS for n in sender.sent.values())

        # refusals, each a catalogue problem
        refusals = [
            ({"track": track["sid"], "layer": "x"}, "bad_request"),
            ({"track": track["sid"]}, "bad_request"),
            ({"track": track["sid"], "layer": 3}, "bad_request"),
            ({"track": "TR_nope", "layer": "q"}, "not_found"),
        ]
        for params, code in refusals:
            with pytest.raises(RpcFailure) as info:
                await bob.call("set_layer", params)
            assert info.value.problem["code"] == code, (params, info.value.error)

        # mute and unpublish act on the whole source, announced once
        await alice.call("mute", {"track": track["sid"], "muted": True})
        await wait_for(lambda: bob.named("track_muted"), 5, "track_muted")
        publisher = next(p for p in node.router.participants.values() if p.identity == "alice")
        assert all(t.muted for t in publisher.tracks.values())
        await asyncio.sleep(0.3)
        assert len(bob.named("track_muted")) == 1
        assert await alice.call("unpublish", {"track": track["sid"]}) == {}
        await wait_for(lambda: bob.named("track_unpublished"), 5, "track_unpublished")
        assert publisher.tracks == {}
        await asyncio.sleep(0.3)
        assert bob.named("track_unpublished") == [{"participant": "alice", "track": track["sid"]}]
    finally:
        await sender.stop()
        await alice.close()
        await bob.close()


async def test_renegotiating_a_simulcast_publisher_keeps_its_layers(node: Node) -> None:
    """A second ``publish`` with the same simulcast section keeps the source (layers are named by
    rid across offers, their SSRCs having been learnt meanwhile)."""
    room = "rtc-simulcast-reneg"
    sender = SimulcastSender.create()
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    try:
        await alice.join()
        offer = simulcast_offer(sender.lite)
        first = await alice.call("publish", {"sdp": offer})
        await sender.lite.connect(first["sdp"])
        sender.start(10)
        publisher = next(p for p in node.router.participants.values() if p.identity == "alice")
        await wait_for(lambda: all(t.ssrc > 0 for t in publisher.tracks.values()), 5, "layers learnt")
        tracks_before = dict(publisher.tracks)
        again = await alice.call("publish", {"sdp": offer.replace("o=- ", "o=- 1", 1)})
        assert again["tracks"] == first["tracks"]
        assert publisher.tracks == tracks_before
    finally:
        await sender.stop()
        await alice.close()
