"""Payload types per codec variant (issue 11, defect 16) against a live node.

A lite-client publisher sends one variant of a codec (Firefox's H264 constrained baseline with
packetization-mode 1, or its VP9 profile 0); lite-client viewers offer several variants of that
codec under their own payload types, as Chromium does.  Every packet a viewer gets must carry the
payload type its offer gave the publisher's variant: before the fix, the node's map was keyed by
codec name and a viewer's last variant won (H264 mode 1 arrived labelled as 64001f, VP9 profile 0
as profile 2).  A viewer without that variant gets no video (``LevelChat-Refused-Track``) and its
audio, and the other viewers' media, keep flowing.  The WHIP answer also turns the publisher's
``a=extmap`` directions around (RFC 8285): sendonly -> recvonly, inactive stays, recvonly left out.
The WebSocket path (the node offers, an aiortc subscriber answers) is checked the same way with an
aiortc H264 publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiortc import RTCSessionDescription
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket as AiortcPacket

from sfu.client.lite import LiteEndpoint
from sfu.node import Node
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.transport.certificate import Certificate
from tests.e2e.clients import PatternVideoTrack, wait_for
from tests.e2e.conftest import token
from tests.e2e.test_rtc_signaling import Received, RtcClient
from tests.e2e.variant_offers import (
    CHROMIUM_VIDEO,
    FIREFOX_H264,
    FIREFOX_VP9,
    OPUS_PT,
    Variant,
    variant_offer,
)

CERT = Certificate.generate()
REFUSED = "LevelChat-Refused-Track"
VIDEO_SSRC, AUDIO_SSRC = 0x11110001, 0x22220001
PACKETS = 30
#: (keyframe payload, inter frame payload) by codec: what the node's keyframe detection reads
PAYLOADS = {
    "H264": (bytes([0x65, 0x88, 0x80]) + bytes(40), bytes([0x41, 0x9A]) + bytes(40)),  # IDR / non-IDR
    # B=1 P=0, frame_marker 2 profile 0 key frame + sync code / P=1 inter frame
    "VP9": (bytes([0x08, 0x80, 0x49, 0x83, 0x42]) + bytes(40), bytes([0x4C, 0x86]) + bytes(40)),
}


@dataclass
class Viewer:
    name: str
    video: Sequence[Variant]
    lite: LiteEndpoint = field(default_factory=lambda: LiteEndpoint(CERT))
    pts: Counter[int] = field(default_factory=Counter)
    status: int = 0
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lite.on_rtp = lambda view, n: self.pts.update((view[1] & 0x7F,))

    def offer(self) -> str:
        lite = self.lite
        return variant_offer(
            lite.ice.ufrag, lite.ice.pwd, CERT.fingerprint("sha-256"), self.video, send=False
        )

    @property
    def video_packets(self) -> int:
        return sum(n for pt, n in self.pts.items() if pt != OPUS_PT)


async def _post(node: Node, api: str, room: str, identity: str, offer: str) -> tuple[int, list[str], str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{node.url}/{api}/{room}",
            data=offer,
            headers={"Authorization": f"Bearer {token(room, identity)}", "Content-Type": "application/sdp"},
        ) as resp:
            return resp.status, resp.headers.getall(REFUSED, []), await resp.text()


def _section(answer: str, kind: str) -> str:
    return answer.split(f"m={kind} ")[1].split("\r\nm=")[0]


async def _send(lite: LiteEndpoint, codec: str, pt: int) -> None:
    """~30 video frames a second (a keyframe every tenth) and 50 opus packets, until cancelled."""
    key, inter = PAYLOADS[codec]
    n = 0
    while True:
        video = RtpHeader(
            payload_type=pt, sequence_number=n & 0xFFFF, timestamp=n * 3000, ssrc=VIDEO_SSRC, marker=True
        )
        lite.send_rtp(bytes(RtpPacket(video, key if n % 10 == 0 else inter)))
        for i in range(2):
            audio = RtpHeader(
                payload_type=OPUS_PT,
                sequence_number=(2 * n + i) & 0xFFFF,
                timestamp=(2 * n + i) * 960,
                ssrc=AUDIO_SSRC,
            )
            lite.send_rtp(bytes(RtpPacket(audio, bytes(20))))
        n += 1
        await asyncio.sleep(0.033)


async def _run(node: Node, room: str, codec: str, published: Sequence[Variant], viewers: list[Viewer]) -> str:
    """Publish ``published`` (sending its first variant), connect ``viewers``, and wait until each
    has 30 audio packets and each one given the video 30 video packets.  The WHIP answer."""
    pub = LiteEndpoint(CERT)
    extmaps = (
        "1/sendonly urn:ietf:params:rtp-hdrext:sdes:mid",
        "2/recvonly http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "3/inactive urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    )
    offer = variant_offer(
        pub.ice.ufrag, pub.ice.pwd, CERT.fingerprint("sha-256"), published,
        send=True, video_ssrc=VIDEO_SSRC, audio_ssrc=AUDIO_SSRC, extmaps=extmaps,
    )  # fmt: skip
    sender: asyncio.Task[None] | None = None
    try:
        status, _, answer = await _post(node, "whip", room, "publisher", offer)
        assert status == 201, answer
        sent_pt = published[0][0]
        assert _section(answer, "video").split("\r\n")[0].split()[2] == str(sent_pt)  # answered first
        await pub.connect(answer, timeout_s=15)
        sender = asyncio.create_task(_send(pub, codec, sent_pt))
        for viewer in viewers:
            viewer.status, viewer.refused, text = await _post(node, "whep", room, viewer.name, viewer.offer())
            assert viewer.status == 201, text
            await viewer.lite.connect(text, timeout_s=15)

        def enough() -> bool:
            return all(
                v.pts[OPUS_PT] >= PACKETS and (v.refused or v.video_packets >= PACKETS) for v in viewers
            )

        await wait_for(enough, 30, "audio at every viewer, video at those given it")
        return answer
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        pub.close()
        for viewer in viewers:
            viewer.lite.close()


def _only(viewer: Viewer, *pts: int) -> None:
    assert set(viewer.pts) == {*pts}, f"{viewer.name} got payload types {dict(viewer.pts)}, wanted {pts}"


async def test_h264_mode_1_reaches_each_viewer_on_its_own_mode_1_payload_type(node: Node) -> None:
    viewers = [
        Viewer("chromium", CHROMIUM_VIDEO),  # 106: 42e01f packetization-mode=1
        # the baseline family, mode 1 only at 102 (constrained baseline is forwarded to baseline)
        Viewer("baseline", [v for v in CHROMIUM_VIDEO if v[0] in (104, 102, 96)]),
        Viewer("mode-0-only", [v for v in CHROMIUM_VIDEO if v[0] in (108, 104, 96)]),
    ]
    answer = await _run(node, "h264-variants", "H264", FIREFOX_H264, viewers)
    chromium, baseline, mode0 = viewers
    _only(chromium, 106, OPUS_PT)
    _only(baseline, 102, OPUS_PT)
    assert (
        mode0.refused == ["kind=video; code=codec/unsupported"] and chromium.refused == baseline.refused == []
    )
    _only(mode0, OPUS_PT)
    # RFC 8285: the publisher's sendonly extension is answered recvonly, inactive stays inactive,
    # and the recvonly one (the publisher wants to receive it on a receive-only section) is left out
    video, audio = _section(answer, "video"), _section(answer, "audio")
    assert "a=extmap:1/recvonly urn:ietf:params:rtp-hdrext:sdes:mid" in video
    assert "a=extmap:3/inactive urn:ietf:params:rtp-hdrext:ssrc-audio-level" in audio
    assert "abs-send-time" not in answer and "/sendonly" not in answer


@pytest.mark.parametrize("order", ["chromium", "profile-2-first"])
async def test_vp9_profile_0_reaches_each_viewer_on_its_profile_0_payload_type(
    node: Node, order: str
) -> None:
    vp9 = [v for v in CHROMIUM_VIDEO if v[1] == "VP9"]  # 98 profile 0, 100 profile 2
    viewer = Viewer("viewer", CHROMIUM_VIDEO if order == "chromium" else vp9[::-1])
    profile2 = Viewer("profile-2-only", [vp9[1], CHROMIUM_VIDEO[0]])  # VP9 profile 2 and VP8
    await _run(node, f"vp9-variants-{order}", "VP9", FIREFOX_VP9, [viewer, profile2])
    _only(viewer, 98, OPUS_PT)
    assert profile2.refused == ["kind=video; code=codec/unsupported"]
    _only(profile2, OPUS_PT)


async def test_signaling_subscriber_gets_the_sent_h264_variant_on_its_payload_type(node: Node) -> None:
    """The WebSocket path (node offers, aiortc answers): aiortc publishes H264 offering 42001f and
    42e01f (both packetization-mode 1) and sends the first; the subscriber must get it on the node
    payload type of 42001f (before: the last H264 variant's, 42e01f)."""
    room = "rtc-h264-variants"
    alice, bob = RtcClient(node, room, "alice"), RtcClient(node, room, "bob")
    try:
        await alice.join()
        await bob.join()
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "H264"]
        transceiver = alice.pub.addTransceiver(PatternVideoTrack(), direction="sendonly")
        transceiver.setCodecPreferences(h264)
        await alice.pub.setLocalDescription(await alice.pub.createOffer())
        result = await alice.call("publish", {"sdp": alice.pub.localDescription.sdp})
        await alice.pub.setRemoteDescription(RTCSessionDescription(sdp=result["sdp"], type="answer"))
        sent_pt = int(_section(result["sdp"], "video").split("\r\n")[0].split()[2])  # the first answered
        sent = _h264_profiles(result["sdp"])[sent_pt]

        def video() -> Received | None:
            return next((r for r in bob.received.values() if r.kind == "video" and r.frames >= 10), None)

        await wait_for(lambda: video() is not None, 20, "bob decodes alice's H264")
        offer = bob.named("offer")[-1]["sdp"]
        node_h264 = _h264_profiles(offer)
        assert sorted(node_h264.values()) == ["42001f", "42e01f"]  # one node payload type each
        mid = next(mid for mid, r in bob.received.items() if r.kind == "video")
        receiver = next(t.receiver for t in bob.sub.getTransceivers() if t.mid == mid)
        pts: Counter[int] = Counter()
        original = receiver._handle_rtp_packet

        async def handle(packet: AiortcPacket, arrival_time_ms: int) -> None:
            if packet.payload_type in node_h264:
                pts[packet.payload_type] += 1
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
        await wait_for(lambda: pts.total() >= PACKETS, 20, "30 more H264 packets at bob")
        assert set(pts) == {pt for pt, profile in node_h264.items() if profile == sent}, (
            dict(pts),
            node_h264,
            sent,
        )
    finally:
        await bob.close()
        await alice.close()


def _h264_profiles(sdp: str) -> dict[int, str]:
    """Payload type -> profile-level-id of each H264 payload type in ``sdp``."""
    h264 = {int(m[1]) for m in re.finditer(r"a=rtpmap:(\d+) H264/90000", sdp)}
    return {
        int(m[1]): m[2].lower()
        for m in re.finditer(r"a=fmtp:(\d+) [^\r\n]*profile-level-id=([0-9A-Fa-f]{6})", sdp)
        if int(m[1]) in h264
    }
