"""Subscription control and dynacast over the signaling WebSocket (issue 12): an aiortc
subscriber pauses, resumes and bounds a simulcast track with ``update_subscription``; its
publisher (the ``LiteEndpoint`` of the simulcast tests, here acting on ``subscribed_layers`` as
the SDK does: a layer told inactive stops being sent) is told which layers anyone needs.  What
the subscriber receives is checked at the RTP level; one node in process, and a two-worker node
through its front."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sfu.node import Node
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.routing.dynacast import OFF_DELAY_MS
from tests.e2e.clients import WhepSubscriber, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Proc, Procs
from tests.e2e.simulcast_support import (
    LAYERS,
    MID_EXT,
    RID_EXT,
    RID_PACKETS,
    SimulcastSender,
    choose_layer,
    layer_logger,
    payload_logger,
    runs,
    simulcast_offer,
    whep_location,
    whip_publish,
)
from tests.e2e.test_rtc_signaling import RpcFailure, RtcClient
from tests.e2e.test_workers import wait_for_ready

pytestmark = pytest.mark.timeout(120)

SIZES = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}


@dataclass
class DynacastSender(SimulcastSender):
    """Keyframes carry each layer's size (VP8 key frame header); a layer in ``off`` is not sent,
    and ``subscribed_layers`` sets ``off`` as the SDK pauses an encoding."""

    off: set[str] = field(default_factory=set)
    told: list[dict[str, Any]] = field(default_factory=list)

    def head(self, rid: str, n: int, p: int, packets: int, key: bool) -> bytes:
        if p == 0 and key:
            return bytes([0x10, 0x50, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + struct.pack("<HH", *SIZES[rid])
        return super().head(rid, n, p, packets, key)

    def obey(self, params: dict[str, Any]) -> None:
        self.told.append(params)
        self.off = {layer["rid"] for layer in params["layers"] if not layer["active"]}

    def frame(self, n: int) -> None:
        for rid, (_, packets) in LAYERS.items():
            if rid in self.off:
                continue
            key = rid in self.key_wanted
            self.key_wanted.discard(rid)
            for p in range(packets):
                extensions = [(MID_EXT, b"0"), (RID_EXT, rid.encode())] if self.sent[rid] < RID_PACKETS else []
                header = RtpHeader(payload_type=96, sequence_number=self.seq[rid],
                                   timestamp=(n * 3000 + 1_000_000 * len(rid)) & 0xFFFFFFFF,
                                   ssrc=self.ssrcs[rid], marker=p == packets - 1, extensions=extensions)
                payload = self.head(rid, n, p, packets, key) + bytes(40) + f"layer={rid}".encode()
                self.lite.send_rtp(bytes(RtpPacket(header, payload)))
                self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
                self.sent[rid] += 1


def obeying(client: RtcClient, sender: DynacastSender) -> asyncio.Task[None]:
    """Hand the client's ``subscribed_layers`` notifications to the sender as they come."""

    async def run() -> None:
        seen = 0
        while True:
            told = client.named("subscribed_layers")
            for params in told[seen:]:
                sender.obey(params)
            seen = len(told)
            await asyncio.sleep(0.02)

    return asyncio.ensure_future(run())


def actives(params: dict[str, Any]) -> list[str]:
    return [layer["rid"] for layer in params["layers"] if layer["active"]]


async def test_pause_resume_bounds_and_subscribed_layers(node: Node) -> None:
    room = "rtc-dynacast"
    sender = DynacastSender.create()
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    obey = obeying(alice, sender)
    try:
        await bob.join()
        await alice.join()
        published = await alice.call("publish", {"sdp": simulcast_offer(sender.lite)})
        (track,) = published["tracks"]
        await sender.lite.connect(published["sdp"])
        sender.start(100)
        await wait_for(lambda: bob.answers, 10, "bob answered the offer")
        (offered,) = bob.named("offer")[-1]["tracks"]
        mid, sid = offered["mid"], track["sid"]
        layers: list[str] = []
        layer_logger(bob, mid, layers)
        await wait_for(lambda: layers.count("f") >= 20, 10, "the highest layer")

        # a bound by size: the highest layer whose keyframes fit (h's 640x360)
        result = await bob.call("update_subscription", {"track": sid, "max_width": 700, "max_height": 400})
        assert result["max_width"] == 700 and result["enabled"] is True and result["max_layer"] is None
        assert [x["width"] for x in result["layers"]] == [320, 640, 1280]
        bounded_at = time.monotonic()
        await wait_for(lambda: layers[-15:] == ["h"] * 15, 10, "layer h")
        # nobody needs f: its publisher is told, after the debounce, and stops sending it
        await wait_for(lambda: alice.named("subscribed_layers"), 15, "subscribed_layers")
        # not at once: f was last needed at the node's tick before the bound (every 0.5 s, later
        # on a loaded machine), and goes off 3 s after that
        assert time.monotonic() - bounded_at >= OFF_DELAY_MS / 2000
        (told,) = alice.named("subscribed_layers")
        assert told["track"] == sid and actives(told) == ["q", "h"], told
        assert [x["rid"] for x in told["layers"]] == ["q", "h", "f"]
        f_sent = sender.sent["f"]
        await asyncio.sleep(0.5)
        assert sender.sent["f"] == f_sent and sender.off == {"f"}
        before = len(layers)
        await wait_for(lambda: len(layers) >= before + 30, 10, "h goes on")
        assert set(layers[before:]) == {"h"}

        # pause: nothing at all for that track, and only its lowest layer stays needed
        result = await bob.call("update_subscription", {"track": sid, "enabled": False})
        assert result["enabled"] is False
        await asyncio.sleep(0.3)  # what was in flight
        log = bob.received[mid].log
        paused_count = len(log.packets)
        await asyncio.sleep(1.5)
        assert len(log.packets) == paused_count
        await wait_for(lambda: len(alice.named("subscribed_layers")) >= 2, 15, "h told off")
        assert actives(alice.named("subscribed_layers")[1]) == ["q"]
        assert len(log.packets) == paused_count

        # resume without bounds: every layer is needed at once, f comes back from a keyframe
        plis = dict(sender.plis)
        result = await bob.call("update_subscription", {"track": sid, "enabled": True, "max_width": None,
                                                         "max_height": None})
        assert result["enabled"] is True and result["max_width"] is None
        await wait_for(lambda: len(alice.named("subscribed_layers")) >= 3, 5, "every layer told on")
        assert actives(alice.named("subscribed_layers")[2]) == ["q", "h", "f"]
        await wait_for(lambda: layers[-15:] == ["f"] * 15, 15, "f again")
        assert sender.plis["f"] > plis["f"]
        assert runs(layers) == ["f", "h", "f"], runs(layers)
        assert log.gaps() == []
        # max_layer names a rid; max_fps is kept
        result = await bob.call("update_subscription", {"track": sid, "max_layer": "q", "max_fps": 15})
        assert result["max_layer"] == "q" and result["max_fps"] == 15.0
        await wait_for(lambda: layers[-15:] == ["q"] * 15, 10, "layer q")

        refusals = [  # (params, code, the field named)
            ({"track": "TR_nope", "enabled": False}, "not_found", ""),
            ({"enabled": False}, "bad_request", "params.track"),
            ({"track": sid, "max_layer": "x"}, "bad_request", "params.max_layer"),
            ({"track": sid, "max_width": -1}, "bad_request", "params.max_width"),
            ({"track": sid, "max_fps": "fast"}, "bad_request", "params.max_fps"),
            ({"track": sid, "quality": "high"}, "bad_request", "params.quality"),
        ]
        for params, code, name in refusals:
            with pytest.raises(RpcFailure) as info:
                await bob.call("update_subscription", params)
            assert info.value.problem["code"] == code, (params, info.value.error)
            assert name in info.value.problem["detail"], info.value.problem
        assert bob.named("subscribed_layers") == []  # told to publishers only
    finally:
        obey.cancel()
        await sender.stop()
        await alice.close()
        await bob.close()


async def test_a_whip_publisher_has_no_channel_and_keeps_every_layer(node: Node) -> None:
    """A WHIP publisher of a source whose only viewer wants q: nothing is told anywhere, every
    layer stays active at the node."""
    room = "rtc-dynacast-whip"
    sender = DynacastSender.create()
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    try:
        await bob.join()
        answer = await whip_publish(node.url, room, "alice", simulcast_offer(sender.lite))
        await sender.lite.connect(answer)
        sender.start(30)
        await wait_for(lambda: bob.answers, 10, "bob answered the offer")
        (offered,) = bob.named("offer")[-1]["tracks"]
        layers: list[str] = []
        layer_logger(bob, offered["mid"], layers)
        await wait_for(lambda: layers.count("f") >= 10, 10, "the highest layer")
        await bob.call("update_subscription", {"track": offered["track"], "max_layer": "q"})
        await wait_for(lambda: layers[-15:] == ["q"] * 15, 10, "layer q")
        await asyncio.sleep((OFF_DELAY_MS + 1500) / 1000)
        publisher = next(p for p in node.router.participants.values() if p.identity == "alice")
        groups = {t.group for t in publisher.tracks.values() if t.group is not None}
        (group,) = groups
        assert all(group.is_active(layer) for layer in group.layers)
        assert bob.named("subscribed_layers") == []
    finally:
        await sender.stop()
        await bob.close()


async def test_a_whep_viewers_layer_route_bounds_what_the_publisher_sends(node: Node) -> None:
    """A WHEP viewer of a WebSocket publisher: its layer route is its bound, for dynacast too."""
    room = "rtc-dynacast-whep"
    sender = DynacastSender.create()
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    sub = WhepSubscriber(node.url, room, token(room, "viewer"), audio=False)
    obey = obeying(alice, sender)
    layers: list[str] = []
    try:
        await alice.join()
        published = await alice.call("publish", {"sdp": simulcast_offer(sender.lite)})
        await sender.lite.connect(published["sdp"])
        sender.start(60)
        payload_logger(sub, layers)
        status, answer = await sub.connect()
        assert status == 201, answer
        await wait_for(lambda: layers.count("f") >= 20, 10, "the highest layer, by default")
        location = whep_location(node, room, "viewer")
        viewer_tok = token(room, "viewer", ("room:join", "room:subscribe"))
        await choose_layer(node, location, viewer_tok, "h")
        await wait_for(lambda: alice.named("subscribed_layers"), 15, "subscribed_layers")
        assert actives(alice.named("subscribed_layers")[0]) == ["q", "h"]
        await wait_for(lambda: sender.off == {"f"}, 5, "f no longer sent")
        await choose_layer(node, location, viewer_tok, None)
        await wait_for(lambda: len(alice.named("subscribed_layers")) >= 2, 5, "f needed again")
        assert actives(alice.named("subscribed_layers")[1]) == ["q", "h", "f"]
        await wait_for(lambda: layers[-15:] == ["f"] * 15, 15, "f again")
        assert runs(layers) == ["f", "h", "f"], runs(layers)
    finally:
        obey.cancel()
        await sender.stop()
        await sub.close()
        await alice.close()


@pytest.fixture
async def two_workers(tmp_path: Path) -> AsyncIterator[Proc]:
    procs = Procs(tmp_path)
    try:
        node = procs.node("multi", None, extra_args=("--workers", "2"))
        await node.wait_healthy()
        await wait_for_ready(node)
        yield node
    finally:
        procs.stop_all()


@pytest.mark.e2e
async def test_subscribed_layers_through_the_front(two_workers: Proc) -> None:
    node = SimpleNamespace(url=two_workers.url)
    room = "rtc-dynacast-front"
    sender = DynacastSender.create()
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))  # type: ignore[arg-type]
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))  # type: ignore[arg-type]
    obey = obeying(alice, sender)
    try:
        await bob.join()
        await alice.join()
        published = await alice.call("publish", {"sdp": simulcast_offer(sender.lite)})
        (track,) = published["tracks"]
        await sender.lite.connect(published["sdp"])
        sender.start(60)
        await wait_for(lambda: bob.answers, 20, "bob answered the offer")
        (offered,) = bob.named("offer")[-1]["tracks"]
        layers: list[str] = []
        layer_logger(bob, offered["mid"], layers)
        await wait_for(lambda: layers.count("f") >= 10, 20, "the highest layer")
        await bob.call("update_subscription", {"track": track["sid"], "max_layer": "h"})
        await wait_for(lambda: alice.named("subscribed_layers"), 20, "subscribed_layers")
        assert actives(alice.named("subscribed_layers")[0]) == ["q", "h"]
        await bob.call("update_subscription", {"track": track["sid"], "max_layer": None})
        await wait_for(lambda: len(alice.named("subscribed_layers")) >= 2, 10, "f on again")
        assert actives(alice.named("subscribed_layers")[1]) == ["q", "h", "f"]
        await wait_for(lambda: layers[-15:] == ["f"] * 15, 20, "f again")
    finally:
        obey.cancel()
        await sender.stop()
        await alice.close()
        await bob.close()
