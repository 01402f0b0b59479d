"""Chromium publishes over a lossy leg: the node NACKs it, unwraps its RTX (the FID SSRC, or for
simulcast each layer's RTX SSRC learnt from repaired-rtp-stream-id), and an aiortc viewer gets
every packet and decodes.

netem is not available in this sandbox (no sch_netem), so the loss is made by a UDP relay on a
second loopback address: the node's ICE candidate names the relay (``public_ip``), which passes
datagrams both ways and drops one in ``EVERY`` of the publisher's video packets (its primary SSRC:
retransmissions on the RTX SSRC pass).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Browser

from sfu.counters import DropReason, RecoveredVia
from sfu.node import Node
from tests.browser.demo_page import CHROMIUM, DemoPage
from tests.browser.test_browser_whip_whep import _publish_simulcast
from tests.e2e.clients import WhepSubscriber, wait_for
from tests.e2e.conftest import token

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]
RELAY_HOST = "127.0.0.2"
EVERY = 33  # about 3 %
LOSSES = 20


class LossyRelay:
    """UDP between clients and the node through ``RELAY_HOST``: one socket of its own toward the
    node per client address.  RTP (not RTCP) of ``drop_ssrcs`` from the clients is dropped, one in
    ``every`` packets, up to ``limit``."""

    def __init__(self, port: int, node_addr: tuple[str, int], every: int, limit: int) -> None:
        self.node_addr = node_addr
        self.every = every
        self.limit = limit
        self.drop_ssrcs: set[int] = set()
        self.dropped: list[int] = []
        self.matched = 0
        self._loop = asyncio.get_running_loop()
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind((RELAY_HOST, port))
        self._front.setblocking(False)
        self._up: dict[tuple[str, int], socket.socket] = {}
        self._loop.add_reader(self._front.fileno(), self._from_client)

    def _from_client(self) -> None:
        while True:
            try:
                data, addr = self._front.recvfrom(2048)
            except BlockingIOError:
                return
            up = self._up.get(addr)
            if up is None:
                up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                up.bind(("127.0.0.1", 0))
                up.setblocking(False)
                self._up[addr] = up
                self._loop.add_reader(up.fileno(), self._from_node, up, addr)
            if self._lose(data):
                continue
            up.sendto(data, self.node_addr)

    def _lose(self, data: bytes) -> bool:
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 224:
            return False  # not SRTP (STUN, DTLS) or RTCP
        if int.from_bytes(data[8:12], "big") not in self.drop_ssrcs or len(self.dropped) >= self.limit:
            return False
        self.matched += 1
        if self.matched % self.every:
            return False
        self.dropped.append((data[2] << 8) | data[3])
        return True

    def _from_node(self, up: socket.socket, addr: tuple[str, int]) -> None:
        while True:
            try:
                data = up.recv(2048)
            except BlockingIOError:
                return
            self._front.sendto(data, addr)

    def close(self) -> None:
        for sock in (self._front, *self._up.values()):
            self._loop.remove_reader(sock.fileno())
            sock.close()


async def test_chromium_publisher_leg_loss_is_repaired_by_upstream_nack(
    node_factory: Callable[..., Any], browser: Browser
) -> None:
    node: Node = await node_factory(public_ip=RELAY_HOST)
    relay = LossyRelay(node.port.port, ("127.0.0.1", node.port.port), EVERY, LOSSES)
    room = "browser-upstream-nack"
    page = await DemoPage.open(browser, node.url)
    sub = WhepSubscriber(node.url, room, token(room, "viewer"), audio=False)
    try:
        await page.join_as(room, "alice")
        await page.publish("VP8")
        assert await page.wait_state("publish", "connected", "failed") == "connected"
        alice = next(p for p in node.router.participants.values() if p.identity == "alice")
        track = next(t for t in alice.tracks.values() if t.kind == "video")
        assert track.nack is not None and track.rtx_ssrc is not None, "nack and RTX (FID) negotiated"
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= 10, 15, "first frames")
        plis = node.counters.pli_in
        relay.drop_ssrcs.add(track.ssrc)
        await wait_for(lambda: len(relay.dropped) >= LOSSES, 30, "packets lost on the publisher's leg")
        frames = sub.frames["video"]
        await wait_for(lambda: sub.frames["video"] >= frames + 30, 15, "frames after the losses")
        await wait_for(lambda: sub.logs["video"].missing() == [], 10, "every packet at the viewer")
        counters = node.counters
        assert counters.recovered[RecoveredVia.RTX] >= LOSSES, (counters.recovered, counters.holes_given_up)
        assert counters.nack_out >= 1 and counters.drops[DropReason.RTX_UNKNOWN] == 0
        assert node.counters.pli_in == plis, "the viewer's decoder asked for a keyframe"
        sent = await page.rtp_stats("publish", "video")
        assert sent.get("nackCount", 0) >= 1 and sent.get("retransmittedPacketsSent", 0) >= LOSSES, sent
        assert page.errors == []
    finally:
        await sub.close()
        await page.close()
        relay.close()
        await node.stop()


async def test_chromium_simulcast_layer_loss_is_repaired_through_its_repaired_rid(
    node_factory: Callable[..., Any], browser: Browser
) -> None:
    node: Node = await node_factory(public_ip=RELAY_HOST)
    relay = LossyRelay(node.port.port, ("127.0.0.1", node.port.port), EVERY, LOSSES)
    room = "browser-upstream-nack-simulcast"
    page = await DemoPage.open(browser, node.url)
    sub = WhepSubscriber(node.url, room, token(room, "viewer"), audio=False)
    try:
        assert await _publish_simulcast(page, room, "alice"), "the node's answer refused simulcast"
        await page.wait_layers_encoded(30)
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= 10, 15, "first frames")
        viewer = next(p for p in node.router.participants.values() if p.identity == "viewer")
        layer = viewer.downtracks[0].source
        assert layer is not None and layer.rid is not None and layer.nack is not None
        plis = node.counters.pli_in
        relay.drop_ssrcs.add(layer.ssrc)
        await wait_for(lambda: len(relay.dropped) >= LOSSES, 30, "packets of the layer lost on the publisher's leg")
        frames = sub.frames["video"]
        await wait_for(lambda: sub.frames["video"] >= frames + 30, 15, "frames after the losses")
        await wait_for(lambda: sub.logs["video"].missing() == [], 10, "every packet at the viewer")
        assert layer.rtx_ssrc is not None, "the layer's RTX SSRC was not learnt from its repaired rid"
        counters = node.counters
        assert counters.recovered[RecoveredVia.RTX] >= LOSSES, (counters.recovered, counters.holes_given_up)
        assert counters.drops[DropReason.RTX_UNKNOWN] == 0, counters.drop_counts()
        assert node.counters.pli_in == plis, "the viewer's decoder asked for a keyframe"
    finally:
        await sub.close()
        await page.close()
        relay.close()
        await node.stop()
