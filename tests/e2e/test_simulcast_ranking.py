"""Simulcast layers ranked by what they carry (issue 12), end to end with real encoded video.

A ``LiteEndpoint`` publisher lists its three layers high first, as Firefox does (``f;h;q``, no
a=rid restrictions) and encodes each with its own real encoder (aiortc's VP8 or H264) at
640x480, 320x240 and 160x120 of a still picture: every layer sends about one packet per frame,
so packet rates cannot tell the layers apart.  Before ranking by keyframe size, the node took the
offer's order as low to high and every viewer got the 160-wide layer.  An aiortc WHEP viewer
decodes what it receives: by default the 640-wide layer, with ``{"rid": "q"}`` the 160-wide one,
with ``{"rid": "h"}`` the 320-wide one, and back to 640 with ``null``.
"""

from __future__ import annotations

import fractions
import secrets
from dataclasses import dataclass, field

import aiohttp
import av
import pytest
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamTrack

from sfu.client.lite import LiteEndpoint
from sfu.node import Node
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.transport.certificate import Certificate
from tests.e2e.clients import WhepSubscriber, wait_for
from tests.e2e.conftest import token
from tests.e2e.simulcast_support import (
    LAYERS,
    MID_EXT,
    REPAIRED_EXT,
    RID_EXT,
    RID_PACKETS,
    SimulcastSender,
    choose_layer,
    consume_widths,
    published_layers,
    whep_location,
    whip_publish,
)

SIZES = {"f": (640, 480), "h": (320, 240), "q": (160, 120)}
CODECS = {
    "VP8": ("VP8/90000", None),
    "H264": ("H264/90000", "profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1"),
}
PT = 96


def firefox_offer(lite: LiteEndpoint, codec: str) -> str:
    """Firefox's shape of a simulcast offer: rids high first, no restrictions on them."""
    rtpmap, fmtp = CODECS[codec]
    lines = [
        "v=0",
        f"o=- {secrets.randbits(62)} 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic:WMS *",
        f"m=video 9 UDP/TLS/RTP/SAVPF {PT}",
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{lite.ice.ufrag}",
        f"a=ice-pwd:{lite.ice.pwd}",
        f"a=fingerprint:sha-256 {lite.certificate.fingerprint('sha-256')}",
        "a=setup:active",
        "a=mid:0",
        f"a=extmap:{MID_EXT} urn:ietf:params:rtp-hdrext:sdes:mid",
        f"a=extmap:{RID_EXT} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        f"a=extmap:{REPAIRED_EXT} urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=msid:lite video",
        "a=rtcp-mux",
        f"a=rtpmap:{PT} {rtpmap}",
        *([f"a=fmtp:{PT} {fmtp}"] if fmtp else []),
        f"a=rtcp-fb:{PT} nack",
        f"a=rtcp-fb:{PT} nack pli",
        *[f"a=rid:{rid} send" for rid in LAYERS],
        f"a=simulcast:send {';'.join(LAYERS)}",
    ]
    return "\r\n".join(lines) + "\r\n"


def _picture(width: int, height: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for i, plane in enumerate(frame.planes):
        plane.update(bytes([90 + 40 * i]) * plane.buffer_size)
    return frame


@dataclass
class EncodedSender(SimulcastSender):
    """Every layer a real encoder's output at its own size; a PLI makes its next frame a keyframe."""

    codec: str = "VP8"
    encoders: dict[str, Encoder] = field(default_factory=dict)
    pictures: dict[str, av.VideoFrame] = field(default_factory=dict)

    def frame(self, n: int) -> None:
        for rid in LAYERS:
            if rid not in self.encoders:
                self.encoders[rid] = Vp8Encoder() if self.codec == "VP8" else H264Encoder()
                self.pictures[rid] = _picture(*SIZES[rid])
            picture = self.pictures[rid]
            picture.pts, picture.time_base = n * 3000, fractions.Fraction(1, 90000)
            key = rid in self.key_wanted
            self.key_wanted.discard(rid)
            payloads, timestamp = self.encoders[rid].encode(picture, force_keyframe=key)
            for p, payload in enumerate(payloads):
                extensions = (
                    [(MID_EXT, b"0"), (RID_EXT, rid.encode())] if self.sent[rid] < RID_PACKETS else []
                )
                header = RtpHeader(
                    payload_type=PT,
                    sequence_number=self.seq[rid],
                    timestamp=timestamp,
                    ssrc=self.ssrcs[rid],
                    marker=p == len(payloads) - 1,
                    extensions=extensions,
                )
                self.lite.send_rtp(bytes(RtpPacket(header, payload)))
                self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
                self.sent[rid] += 1


class WidthSubscriber(WhepSubscriber):
    """A WHEP viewer that keeps the width of every video frame it decodes."""

    widths: list[int]

    async def _consume(self, track: MediaStreamTrack) -> None:
        await consume_widths(track, self.widths, self.frames)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_layers_listed_high_first_are_ranked_by_their_keyframes(node: Node, codec: str) -> None:
    room = f"rank-{codec.lower()}"
    sender = EncodedSender(LiteEndpoint(Certificate.generate()), codec=codec)
    sender.lite.on_rtcp = sender.on_rtcp
    sub = WidthSubscriber(node.url, room, token(room, "viewer"), audio=False)
    sub.widths = []
    try:
        answer = await whip_publish(node.url, room, "fox", firefox_offer(sender.lite, codec))
        assert "a=simulcast:recv f;h;q" in answer
        await sender.lite.connect(answer)
        sender.start(40)
        await wait_for(lambda: all(n > RID_PACKETS for n in sender.sent.values()), 10, "every layer sending")
        layers = published_layers(node, "fox")
        await wait_for(lambda: all(t.width for t in layers.values()), 10, "every layer's keyframe size")
        assert {rid: (t.width, t.height) for rid, t in layers.items()} == SIZES
        group = layers["f"].group
        assert group is not None and group.rids == ["q", "h", "f"]
        assert not group.ranked_by_restrictions
        # about one packet per frame on every layer: rates could not have ranked them
        assert max(sender.sent.values()) < 3 * min(sender.sent.values())
        # room info shows each layer's size
        async with aiohttp.ClientSession() as http:
            admin = token(room, "admin", ("room:admin",))
            async with http.get(
                f"{node.url}/v1/rooms/{room}", headers={"Authorization": f"Bearer {admin}"}
            ) as resp:
                assert resp.status == 200
                info = await resp.json()
        (fox,) = [p for p in info["participants"] if p["identity"] == "fox"]
        assert {t["rid"]: (t["width"], t["height"]) for t in fox["tracks"]} == SIZES

        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.widths[-10:] == [640] * 10, 15, "the 640-wide layer by default")
        assert set(sub.widths) == {640}

        location = whep_location(node, room, "viewer")
        viewer_tok = token(room, "viewer", ("room:join", "room:subscribe"))
        for rid, width in (("q", 160), ("h", 320), (None, 640)):
            result = await choose_layer(node, location, viewer_tok, rid)
            assert [x["rid"] for x in result["layers"]] == ["q", "h", "f"]
            assert [x["width"] for x in result["layers"]] == [160, 320, 640]
            await wait_for(lambda w=width: sub.widths[-10:] == [w] * 10, 15, f"the {width}-wide layer")
    finally:
        await sender.stop()
        await sub.close()
