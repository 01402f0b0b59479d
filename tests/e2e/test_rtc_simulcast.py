"""Simulcast over the signaling WebSocket: a publisher's rid layers published with ``publish``, one
track announced with its ``layers``, and an aiortc subscriber choosing layers with ``set_layer``.

The publisher is the ``LiteEndpoint`` of ``test_simulcast`` (three rid layers of synthetic VP8
whose payload ends with the layer's rid); the subscriber is the aiortc ``RtcClient`` of
``test_rtc_signaling``.  What it receives is checked at the RTP level.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiortc.rtp import RtpPacket as AiortcPacket

from sfu.client.lite import LiteEndpoint
from sfu.counters import DropReason
from sfu.node import Node
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.test_rtc_signaling import RpcFailure, RtcClient
from tests.e2e.test_simulcast import RID_PACKETS, SimulcastSender, simulcast_offer

pytestmark = pytest.mark.timeout(90)


def _layer_logger(client: RtcClient, mid: str, layers: list[str]) -> None:
    """Record the layer named at the end of each payload received on ``mid``."""
    receiver = next(t.receiver for t in client.sub.getTransceivers() if t.mid == mid)
    original = receiver._handle_rtp_packet

    async def handle(packet: AiortcPacket, arrival_time_ms: int) -> None:
        tail = bytes(packet.payload)[-7:]
        layers.append(tail[-1:].decode() if tail.startswith(b"layer=") else "?")
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


async def test_simulcast_publish_over_signaling_and_set_layer(node: Node) -> None:
    room = "rtc-simulcast"
    lite = LiteEndpoint(Certificate.generate())
    sender = SimulcastSender(lite)
    lite.on_rtcp = sender.on_rtcp
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    task: asyncio.Task[None] | None = None
    try:
        await bob.join()
        await alice.join()
        published = await alice.call("publish", {"sdp": simulcast_offer(lite)})
        assert "a=simulcast:recv f;h;q" in published["sdp"]
        (track,) = published["tracks"]  # one source, not one track per layer
        assert track["kind"] == "video" and track["layers"] == ["q", "h", "f"], track
        await lite.connect(published["sdp"])
        task = asyncio.create_task(sender.run(30))

        await wait_for(lambda: bob.named("track_published"), 5, "track_published")
        (announced,) = bob.named("track_published")
        assert announced == {"participant": "alice", "track": track}
        await wait_for(lambda: bob.answers, 10, "bob answered the offer")
        (offered,) = bob.named("offer")[-1]["tracks"]
        assert offered["track"] == track["sid"]
        assert bob.named("offer")[-1]["sdp"].count("m=video") == 1

        layers: list[str] = []
        _layer_logger(bob, offered["mid"], layers)
        await wait_for(lambda: layers.count("f") >= 30, 10, "the highest layer, by default")
        assert set(layers) == {"f"}

        for choice in ("q", "h", "auto"):
            result = await bob.call("set_layer", {"track": track["sid"], "layer": choice})
            want = "f" if choice == "auto" else choice
            assert result["track"] == track["sid"] and result["target"] == (None if choice == "auto" else choice)
            assert [x["rid"] for x in result["layers"]] == ["q", "h", "f"]
            await wait_for(lambda w=want: layers[-20:] == [w] * 20, 5, f"layer {want}")
        runs = [layers[0]] + [b for a, b in zip(layers, layers[1:], strict=False) if a != b]
        assert runs == ["f", "q", "h", "f"], runs
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
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lite.close()
        await alice.close()
        await bob.close()


async def test_renegotiating_a_simulcast_publisher_keeps_its_layers(node: Node) -> None:
    """A second ``publish`` with the same simulcast section keeps the source (layers are named by
    rid across offers, their SSRCs having been learnt meanwhile)."""
    room = "rtc-simulcast-reneg"
    lite = LiteEndpoint(Certificate.generate())
    sender = SimulcastSender(lite)
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    task: asyncio.Task[None] | None = None
    try:
        await alice.join()
        offer = simulcast_offer(lite)
        first = await alice.call("publish", {"sdp": offer})
        await lite.connect(first["sdp"])
        task = asyncio.create_task(sender.run(10))
        publisher = next(p for p in node.router.participants.values() if p.identity == "alice")
        await wait_for(lambda: all(t.ssrc > 0 for t in publisher.tracks.values()), 5, "layers learnt")
        tracks_before = dict(publisher.tracks)
        again = await alice.call("publish", {"sdp": offer.replace("o=- ", "o=- 1", 1)})
        assert again["tracks"] == first["tracks"]
        assert publisher.tracks == tracks_before
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lite.close()
        await alice.close()
