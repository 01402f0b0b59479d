"""Shared pieces of the simulcast end-to-end tests: a ``LiteEndpoint`` publisher sending three rid
layers of synthetic video (no a=ssrc; the first packets of each layer carry the rid and mid header
extensions, as browsers send them) whose payload ends with ``layer=<rid>``, its offer, and the
loggers and calls the viewers use.  aiortc cannot send simulcast, hence the lite publisher; the
viewers cannot decode those payloads, so what they receive is checked at the RTP level.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import aiohttp
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket as AiortcPacket

from sfu.client.lite import LiteEndpoint
from sfu.node import Node
from sfu.packet import rtcp
from sfu.packet.codecs import vp8_descriptor
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.routing.track import PublishedTrack
from sfu.transport.certificate import Certificate
from tests.e2e.clients import WhepSubscriber, wait_for
from tests.e2e.conftest import token

if TYPE_CHECKING:
    from tests.e2e.test_rtc_signaling import RtcClient

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
    """Sends every layer at ~30 fps; a PLI for a layer's SSRC makes its next frame a keyframe.
    Subclasses write other payload descriptors by overriding ``head``."""

    lite: LiteEndpoint
    ssrcs: dict[str, int] = field(default_factory=lambda: {rid: 0x1000_0000 + i for i, rid in enumerate(LAYERS)})
    seq: dict[str, int] = field(default_factory=lambda: {rid: 60_000 + 1000 * i for i, rid in enumerate(LAYERS)})
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LAYERS, 0))
    key_wanted: set[str] = field(default_factory=lambda: set(LAYERS))
    plis: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LAYERS, 0))
    task: asyncio.Task[None] | None = field(default=None, init=False)

    @classmethod
    def create(cls) -> Self:
        """A sender on a new ``LiteEndpoint`` that hears the node's PLIs."""
        sender = cls(LiteEndpoint(Certificate.generate()))
        sender.lite.on_rtcp = sender.on_rtcp
        return sender

    def on_rtcp(self, data: bytes) -> None:
        with contextlib.suppress(ValueError):
            for packet in rtcp.parse_compound(data):
                if isinstance(packet, rtcp.Pli):
                    for rid, ssrc in self.ssrcs.items():
                        if ssrc == packet.media_ssrc:
                            self.key_wanted.add(rid)
                            self.plis[rid] += 1

    def head(self, rid: str, n: int, p: int, packets: int, key: bool) -> bytes:
        """The start of packet ``p`` (of ``packets``) of frame ``n`` on layer ``rid``: a VP8
        descriptor with S set on the first packet, then the keyframe / inter frame header."""
        if p == 0:
            return b"\x10\x00\x9d\x01\x2a" if key else b"\x10\x01"  # S=1, P bit: key / inter
        return b"\x00\x00"

    def frame(self, n: int) -> None:
        for rid, (_, packets) in LAYERS.items():
            key = rid in self.key_wanted
            self.key_wanted.discard(rid)
            for p in range(packets):
                extensions = [(MID_EXT, b"0"), (RID_EXT, rid.encode())] if self.sent[rid] < RID_PACKETS else []
                header = RtpHeader(
                    payload_type=96,
                    sequence_number=self.seq[rid],
                    timestamp=(n * 3000 + 1_000_000 * len(rid)) & 0xFFFFFFFF,
                    ssrc=self.ssrcs[rid],
                    marker=p == packets - 1,
                    extensions=extensions,
                )
                payload = self.head(rid, n, p, packets, key) + bytes(40) + f"layer={rid}".encode()
                self.lite.send_rtp(bytes(RtpPacket(header, payload)))
                self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
                self.sent[rid] += 1

    async def run(self, seconds: float) -> None:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            self.frame(n)
            n += 1
            await asyncio.sleep(FRAME_MS / 1000)

    def start(self, seconds: float) -> None:
        """``run`` in the background (``stop`` ends it)."""
        self.task = asyncio.create_task(self.run(seconds))

    async def stop(self) -> None:
        """End the background sending, if started, and close the endpoint."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.lite.close()


def layer_of(payload: bytes) -> str:
    """The layer named at the end of a synthetic payload ("?" for another payload)."""
    tail = payload[-7:]
    return tail[-1:].decode() if tail.startswith(b"layer=") else "?"


def runs(layers: list[str]) -> list[str]:
    """The layers in the order they came, each run of one layer once."""
    return [layers[0]] + [b for a, b in zip(layers, layers[1:], strict=False) if a != b]


def payload_logger(sub: WhepSubscriber, layers: list[str]) -> None:
    """Record the layer named at the end of each video payload a WHEP viewer gets, in arrival order."""
    receiver = sub._receivers["video"]
    original = receiver._handle_rtp_packet

    async def handle(packet: AiortcPacket, arrival_time_ms: int) -> None:
        layers.append(layer_of(bytes(packet.payload)))
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


def layer_logger(
    client: RtcClient, mid: str, layers: list[str], pictures: list[tuple[int, int]] | None = None
) -> None:
    """Record the layer named at the end of each payload a signaling subscriber gets on ``mid``
    (and the VP8 picture ID and TL0PICIDX of each picture's first packet in ``pictures``)."""
    receiver = next(t.receiver for t in client.sub.getTransceivers() if t.mid == mid)
    original = receiver._handle_rtp_packet

    async def handle(packet: AiortcPacket, arrival_time_ms: int) -> None:
        layers.append(layer_of(bytes(packet.payload)))
        d = vp8_descriptor(packet.payload)
        if pictures is not None and d is not None and d.start_of_partition and d.picture_id >= 0:
            pictures.append((d.picture_id, d.tl0picidx))
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


async def post_layer(node: Node, location: str, tok: str | None, body: Any) -> tuple[int, dict[str, Any]]:
    """``POST {location}/layer`` (a WHEP session's layer choice): the status and the JSON body."""
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.url}{location}/layer", json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


def whep_location(node: Node, room: str, identity: str) -> str:
    """The WHEP session resource of the viewer ``identity``."""
    return next(
        f"/whep/{room}/{sid}" for sid, s in node.sessions.sessions.items() if s.participant.identity == identity
    )


async def whip_publish(node_url: str, room: str, identity: str, offer: str) -> str:
    """``POST /whip/{room}`` with ``offer`` as ``identity``; the answer (asserts 201 Created)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{node_url}/whip/{room}",
            data=offer,
            headers={"Authorization": f"Bearer {token(room, identity)}", "Content-Type": "application/sdp"},
        ) as resp:
            answer = await resp.text()
            assert resp.status == 201, answer
            return answer


async def walk_whep_layers(node: Node, room: str, location: str, layers: list[str]) -> None:
    """As the WHEP viewer "viewer" at ``location``: choose layer q, then h, then automatic (f),
    checking each answer and waiting for 20 packets of that layer in ``layers`` each time."""
    viewer_tok = token(room, "viewer", ("room:join", "room:subscribe"))
    for rid in ("q", "h", None):
        result = await choose_layer(node, location, viewer_tok, rid)
        assert result["target"] == rid and [x["rid"] for x in result["layers"]] == ["q", "h", "f"]
        want = rid or "f"
        await wait_for(lambda w=want: layers[-20:] == [w] * 20, 5, f"layer {want}")


async def choose_layer(node: Node, location: str, tok: str, rid: str | None) -> dict[str, Any]:
    """``post_layer`` with ``{"rid": rid}``, which must succeed: the answer's body."""
    status, body = await post_layer(node, location, tok, {"rid": rid})
    assert status == 200, body
    return body


def published_layers(node: Node, identity: str) -> dict[str, PublishedTrack]:
    """The simulcast layers ``identity`` publishes, by rid (empty while it is not in a room)."""
    p = next((p for p in node.router.participants.values() if p.identity == identity), None)
    return {} if p is None else {t.rid: t for t in p.tracks.values() if t.rid}


async def consume_widths(track: MediaStreamTrack, widths: list[int], frames: dict[str, int] | None = None) -> None:
    """Decode ``track`` until it ends, keeping the width of every video frame (and counting the
    frames by kind in ``frames``): the ``_consume`` of a client that checks which layer it gets."""
    while True:
        try:
            frame = await track.recv()
        except Exception:
            return
        if frames is not None:
            frames[track.kind] += 1
        if track.kind == "video":
            widths.append(int(getattr(frame, "width", 0)))
