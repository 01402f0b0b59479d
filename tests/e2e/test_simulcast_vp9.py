"""VP9 simulcast end to end with crafted packets: a ``LiteEndpoint`` publisher sends three rid
layers of VP9 in non-flexible L1T3 (picture IDs, TL0PICIDX and temporal layers counted by each
layer's own encoder, one near the 15-bit and 8-bit wraps; key frames with a scalability structure
and a key frame header on PLI), and a ``LiteEndpoint`` WHEP viewer that offers VP9 moves between
the layers with the layer route.  What it receives keeps one picture ID after the other and a
TL0PICIDX that never jumps, starting each layer at a key frame (Chromium sends VP9 simulcast in
flexible mode, without TL0PICIDX: ``tests/browser/test_browser_vp9_simulcast.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sfu.client.lite import LiteEndpoint
from sfu.counters import DropReason
from sfu.node import Node
from sfu.packet.codecs import vp9_descriptor, vp9_is_keyframe
from sfu.packet.rtp import header_length
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import (
    RID_PACKETS,
    SimulcastSender,
    choose_layer,
    layer_of,
    runs,
    simulcast_offer,
)
from tests.e2e.test_http_errors import call

pytestmark = pytest.mark.timeout(60)
#: each layer's encoder counts from its own place (near the wraps for "h")
PID_BASE = {"f": 1000, "h": 0x7FF0, "q": 20}
TL0_BASE = {"f": 7, "h": 250, "q": 100}
TIDS = (0, 2, 1, 2)  # L1T3
KEY_HEADER = bytes([0x82, 0x49, 0x83, 0x42])


class Vp9Sender(SimulcastSender):
    def head(self, rid: str, n: int, p: int, packets: int, key: bool) -> bytes:
        pid = (PID_BASE[rid] + n) & 0x7FFF
        tid = TIDS[n % 4]
        tl0 = (TL0_BASE[rid] + (n + 3) // 4) & 0xFF  # counts the TID 0 pictures
        b0 = 0x80 | 0x20 | (0x00 if key else 0x40) | (0x08 if p == 0 else 0) | (0x04 if p == packets - 1 else 0)
        desc = bytes([b0 | (0x02 if key and p == 0 else 0), 0x80 | (pid >> 8), pid & 0xFF,
                      (tid << 5) | (0x10 if tid else 0), tl0])
        if p == 0:
            # key: a scalability structure (one layer, its size) and a key frame header
            desc += bytes([0x10, 0x05, 0x00, 0x02, 0xD0]) + KEY_HEADER if key else bytes([0x86])
        return desc


@dataclass
class Received:
    """What the viewer gets: (seq, layer, picture id, tl0picidx, keyframe) per picture start, and
    every sequence number."""

    pictures: list[tuple[str, int, int, bool]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)

    def __call__(self, view: memoryview, length: int) -> None:
        start = header_length(view, length)
        if start < 0:
            return
        payload = bytes(view[start:length])
        self.seqs.append((view[2] << 8) | view[3])
        d = vp9_descriptor(payload)
        if d is not None and d.start_of_frame:
            layer = layer_of(payload)
            self.pictures.append((layer, d.picture_id, d.tl0picidx, vp9_is_keyframe(payload)))


def _vp9_offer(lite: LiteEndpoint, *, send: bool) -> str:
    offer = simulcast_offer(lite) if send else lite.offer(send=False)
    return offer.replace("VP8/90000", "VP9/90000")


async def test_vp9_simulcast_layer_switches_keep_picture_ids_continuous(node: Node) -> None:
    room = "vp9-simulcast"
    sender = Vp9Sender.create()
    got = Received()
    sub = LiteEndpoint(Certificate.generate(), on_rtp=got)
    try:
        reply = await call(node, "POST", f"/whip/{room}", bearer=token(room, "alice"),
                           body=_vp9_offer(sender.lite, send=True), content_type="application/sdp")
        assert reply.status == 201, reply.text
        assert "VP9/90000" in reply.text and "a=simulcast:recv f;h;q" in reply.text
        await sender.lite.connect(reply.text)
        sender.start(30)
        await wait_for(lambda: all(n > RID_PACKETS for n in sender.sent.values()), 5, "every layer sending")

        reply = await call(node, "POST", f"/whep/{room}", bearer=token(room, "viewer"),
                           body=_vp9_offer(sub, send=False), content_type="application/sdp")
        assert reply.status == 201, reply.text
        await sub.connect(reply.text)
        location = reply.headers["Location"]
        await wait_for(lambda: [p[0] for p in got.pictures].count("f") >= 20, 10, "the highest layer, by default")
        viewer_tok = token(room, "viewer", ("room:join", "room:subscribe"))
        for rid in ("h", "q", "f", "h", "q"):
            await choose_layer(node, location, viewer_tok, rid)
            await wait_for(lambda r=rid: [p[0] for p in got.pictures[-12:]] == [r] * 12, 5, f"layer {rid}")

        layers = [p[0] for p in got.pictures]
        assert runs(layers) == ["f", "h", "q", "f", "h", "q"], runs(layers)
        # every layer starts at a key frame, as the stream does
        starts = [i for i in range(len(layers)) if i == 0 or layers[i] != layers[i - 1]]
        assert all(got.pictures[i][3] for i in starts), [got.pictures[i] for i in starts]
        pids = [p[1] for p in got.pictures]
        assert {(b - a) & 0x7FFF for a, b in zip(pids, pids[1:], strict=False)} == {1}, got.pictures
        tl0s = [p[2] for p in got.pictures]
        assert {(b - a) & 0xFF for a, b in zip(tl0s, tl0s[1:], strict=False)} == {0, 1}, got.pictures
        first = got.seqs[0]
        offsets = sorted({(s - first) & 0xFFFF for s in got.seqs})
        assert offsets == list(range(len(offsets))), "a gap in the viewer's sequence"
        assert sender.plis["q"] >= 1 and sender.plis["h"] >= 1
        assert node.counters.drops[DropReason.RTP_UNKNOWN_SSRC] == 0
    finally:
        await sender.stop()
        sub.close()
