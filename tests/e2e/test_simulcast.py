"""Simulcast end to end: a publisher sending three rid layers (no a=ssrc) through a real node to an
aiortc WHEP subscriber that changes layers with ``POST /whep/{room}/{session}/layer``.

aiortc cannot send simulcast, so the publisher is a ``LiteEndpoint`` (ICE, DTLS, SRTP) with an offer
written here, sending synthetic VP8 packets whose payload ends with the layer's rid; the first
packets of each layer carry the rid (and mid) header extensions, as browsers send them.  The
subscriber cannot decode those payloads: what it receives is checked at the RTP level.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc.rtp import RtpPacket as AiortcPacket

from sfu.client.lite import LiteEndpoint
from sfu.counters import DropReason
from sfu.node import Node
from sfu.packet import rtcp
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.transport.certificate import Certificate
from tests.e2e.clients import WhepSubscriber, wait_for
from tests.e2e.conftest import token

MID_EXT, RID_EXT, REPAIRED_EXT = 1, 2, 3
#: rid -> (restrictions, packets per frame); listed high first in the offer, ranked by restrictions
LAYERS = {
    "f": ("max-width=1280;max-height=720", 3),
    "h": ("max-width=640;max-height=360", 2),
    "q": ("max-width=320;max-height=180", 1),
}
#: packets of each layer that carry the rid extension
RID_PACKETS = 5
FRAME_MS = 33


def simulcast_offer(lite: LiteEndpoint) -> str:
    rids = list(LAYERS)
    lines = [
        "v=0",
        f"o=- {secrets.randbits(62)} 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic:WMS *",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
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
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        *[f"a=rid:{rid} send {params}" for rid, (params, _) in LAYERS.items()],
        f"a=simulcast:send {';'.join(rids)}",
    ]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class SimulcastSender:
    """Sends every layer at ~30 fps; a PLI for a layer's SSRC makes its next frame a keyframe."""

    lite: LiteEndpoint
    ssrcs: dict[str, int] = field(default_factory=lambda: {rid: 0x1000_0000 + i for i, rid in enumerate(LAYERS)})
    seq: dict[str, int] = field(default_factory=lambda: {rid: 60_000 + 1000 * i for i, rid in enumerate(LAYERS)})
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LAYERS, 0))
    key_wanted: set[str] = field(default_factory=lambda: set(LAYERS))
    plis: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LAYERS, 0))

    def on_rtcp(self, data: bytes) -> None:
        with contextlib.suppress(ValueError):
            for packet in rtcp.parse_compound(data):
                if isinstance(packet, rtcp.Pli):
                    for rid, ssrc in self.ssrcs.items():
                        if ssrc == packet.media_ssrc:
                            self.key_wanted.add(rid)
                            self.plis[rid] += 1

    def frame(self, n: int) -> None:
        for rid, (_, packets) in LAYERS.items():
            key = rid in self.key_wanted
            self.key_wanted.discard(rid)
            for p in range(packets):
                if p == 0:
                    head = b"\x10\x00\x9d\x01\x2a" if key else b"\x10\x01"  # S=1, P bit: key / inter
                else:
                    head = b"\x00\x00"
                extensions = []
                if self.sent[rid] < RID_PACKETS:
                    extensions = [(MID_EXT, b"0"), (RID_EXT, rid.encode())]
                header = RtpHeader(
                    payload_type=96,
                    sequence_number=self.seq[rid],
                    timestamp=(n * 3000 + 1_000_000 * len(rid)) & 0xFFFFFFFF,
                    ssrc=self.ssrcs[rid],
                    marker=p == packets - 1,
                    extensions=extensions,
                )
                self.lite.send_rtp(bytes(RtpPacket(header, head + bytes(40) + f"layer={rid}".encode())))
                self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
                self.sent[rid] += 1

    async def run(self, seconds: float) -> None:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            self.frame(n)
            n += 1
            await asyncio.sleep(FRAME_MS / 1000)


def _payload_logger(sub: WhepSubscriber, layers: list[str]) -> None:
    """Record the layer named at the end of each video payload, in arrival order."""
    receiver = sub._receivers["video"]
    original = receiver._handle_rtp_packet

    async def handle(packet: AiortcPacket, arrival_time_ms: int) -> None:
        tail = bytes(packet.payload)[-7:]
        layers.append(tail[-1:].decode() if tail.startswith(b"layer=") else "?")
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


async def _post_layer(node: Node, location: str, tok: str | None, body: Any) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.url}{location}/layer", json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_rid_layers_reach_a_whep_subscriber_that_switches_layers(node: Node) -> None:
    room = "simulcast-e2e"
    lite = LiteEndpoint(Certificate.generate())
    sender = SimulcastSender(lite)
    lite.on_rtcp = sender.on_rtcp
    sub = WhepSubscriber(node.url, room, token(room, "viewer"), audio=False)
    layers_seen: list[str] = []
    task: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{node.url}/whip/{room}",
                data=simulcast_offer(lite),
                headers={"Authorization": f"Bearer {token(room, 'alice')}", "Content-Type": "application/sdp"},
            ) as resp:
                answer = await resp.text()
                assert resp.status == 201, answer
        assert "a=simulcast:recv f;h;q" in answer
        await lite.connect(answer)
        task = asyncio.create_task(sender.run(25))
        await wait_for(lambda: all(n > RID_PACKETS for n in sender.sent.values()), 5, "every layer sending")

        publisher = next(p for p in node.router.participants.values() if p.identity == "alice")
        by_rid = {t.rid: t for t in publisher.tracks.values()}
        assert {rid: t.ssrc for rid, t in by_rid.items()} == sender.ssrcs  # learnt from the rid extension
        group = by_rid["q"].group
        assert group is not None and group.rids == ["q", "h", "f"]

        _payload_logger(sub, layers_seen)
        status, body = await sub.connect()
        assert status == 201, body
        location = next(f"/whep/{room}/{sid}" for sid, s in node.sessions.sessions.items()
                        if s.participant.identity == "viewer")
        await wait_for(lambda: layers_seen.count("f") >= 30, 10, "the highest layer, by default")
        assert set(layers_seen) == {"f"}

        viewer_tok = token(room, "viewer", ("room:join", "room:subscribe"))
        for rid in ("q", "h", None):
            status, result = await _post_layer(node, location, viewer_tok, {"rid": rid})
            assert status == 200, result
            assert result["target"] == rid and [x["rid"] for x in result["layers"]] == ["q", "h", "f"]
            want = rid or "f"
            await wait_for(lambda w=want: layers_seen[-20:] == [w] * 20, 5, f"layer {want}")

        # each switch is one clean cut: f..f q..q h..h f..f, no packet of the old layer after the new one
        runs = [layers_seen[0]] + [b for a, b in zip(layers_seen, layers_seen[1:], strict=False) if a != b]
        assert runs == ["f", "q", "h", "f"], runs
        assert sub.logs["video"].gaps() == []
        assert len(sub.logs["video"].packets) == len(layers_seen)
        stamps = [ts for _, ts, _ in sub.logs["video"].packets]
        assert all(0 <= (b - a) & 0xFFFFFFFF < 1 << 31 for a, b in zip(stamps, stamps[1:], strict=False))
        assert sender.plis["q"] >= 1 and sender.plis["h"] >= 1  # each switch asked for a keyframe
        assert node.counters.drops[DropReason.RTP_UNKNOWN_SSRC] == 0

        # refusals, each with its catalogue code
        refusals = [
            (location, viewer_tok, {"rid": "x"}, 400, "bad_request"),
            (location, viewer_tok, {"rid": 3}, 400, "bad_request"),
            (location, viewer_tok, {}, 400, "bad_request"),
            (f"/whep/{room}/PA_nope", viewer_tok, {"rid": "q"}, 404, "not_found"),
            (location, None, {"rid": "q"}, 401, "unauthorized"),
            (location, token("other-room", "viewer"), {"rid": "q"}, 401, "token/unauthorized"),
        ]
        for where, tok, body_json, code, name in refusals:
            status, problem = await _post_layer(node, where, tok, body_json)
            assert (status, problem.get("code")) == (code, name), (body_json, problem)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sub.close()
        lite.close()
