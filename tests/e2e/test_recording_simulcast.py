"""A simulcast source is recorded on its top layer (issue 14), end to end: a publisher lists its
three layers high first (Firefox's shape: the keyframe sizes rank them) and each is a real VP8
encoder's output (640, 320 and 160 wide, each layer in its own RTP timestamp space, as browsers
send them); its top layer starts only after the recording did.  The recording starts on the best
layer sending (320 wide), moves to the top one at its keyframe once it sends, and the one file
decodes with PyAV: every frame, the 320-wide ones then the 640-wide ones, on one timeline with
no jump at the move."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc.codecs.vpx import Vp8Encoder

from sfu.client.lite import LiteEndpoint
from sfu.node import Node
from sfu.packet import rtcp
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.simulcast_support import LAYERS, MID_EXT, RID_EXT, RID_PACKETS, published_layers, whip_publish
from tests.e2e.test_recording import _auth, _finished, _room
from tests.e2e.test_simulcast_ranking import PT, SIZES, firefox_offer

#: each layer's RTP timestamps start elsewhere (a browser's layers are separate RTP streams)
TS_OFFSETS = {"f": 0x7000_0000, "h": 0x0100_0000, "q": 0xF000_0000}


@dataclass
class LateTopSender:
    """Three layers of real VP8 at ~30 fps; those in ``held`` send nothing until released; a PLI
    makes the layer's next frame a keyframe (``SimulcastSender``'s PLI handling)."""

    lite: LiteEndpoint
    held: set[str] = field(default_factory=lambda: {"f"})
    ssrcs: dict[str, int] = field(default_factory=lambda: {rid: 0x2000_0000 + i for i, rid in enumerate(LAYERS)})
    seq: dict[str, int] = field(default_factory=lambda: {rid: 30_000 + 1000 * i for i, rid in enumerate(LAYERS)})
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LAYERS, 0))
    frames: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LAYERS, 0))
    key_wanted: set[str] = field(default_factory=lambda: set(LAYERS))
    encoders: dict[str, Vp8Encoder] = field(default_factory=dict)
    pictures: dict[str, av.VideoFrame] = field(default_factory=dict)

    def on_rtcp(self, data: bytes) -> None:
        with contextlib.suppress(ValueError):
            for packet in rtcp.parse_compound(data):
                if isinstance(packet, rtcp.Pli):
                    self.key_wanted.update(rid for rid, ssrc in self.ssrcs.items() if ssrc == packet.media_ssrc)

    def frame(self, n: int) -> None:
        for rid in LAYERS:
            if rid in self.held:
                continue
            if rid not in self.encoders:
                self.encoders[rid] = Vp8Encoder()
                picture = av.VideoFrame(*SIZES[rid], "yuv420p")
                for i, plane in enumerate(picture.planes):
                    plane.update(bytes([90 + 40 * i]) * plane.buffer_size)
                self.pictures[rid] = picture
                self.key_wanted.add(rid)
            picture = self.pictures[rid]
            picture.pts, picture.time_base = n * 3000, fractions.Fraction(1, 90000)
            key = rid in self.key_wanted
            self.key_wanted.discard(rid)
            payloads, timestamp = self.encoders[rid].encode(picture, force_keyframe=key)
            for p, payload in enumerate(payloads):
                extensions = [(MID_EXT, b"0"), (RID_EXT, rid.encode())] if self.sent[rid] < RID_PACKETS else []
                header = RtpHeader(payload_type=PT, sequence_number=self.seq[rid], ssrc=self.ssrcs[rid],
                                   timestamp=(timestamp + TS_OFFSETS[rid]) & 0xFFFFFFFF,
                                   marker=p == len(payloads) - 1, extensions=extensions)
                self.lite.send_rtp(bytes(RtpPacket(header, payload)))
                self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
                self.sent[rid] += 1
            self.frames[rid] += 1


async def _run(sender: LateTopSender, seconds: float) -> None:
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        sender.frame(n)
        n += 1
        await asyncio.sleep(0.033)


def _decoded(path: Path) -> list[tuple[float, int]]:
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), f.width) for f in c.decode(c.streams.video[0])]


async def test_a_simulcast_recording_moves_to_the_top_layer_when_it_starts(
    node_factory: Any, tmp_path: Path
) -> None:
    node: Node = await node_factory(recordings_dir=str(tmp_path / "recs"))
    room = "rec-simulcast"
    sender = LateTopSender(LiteEndpoint(Certificate.generate()))
    sender.lite.on_rtcp = sender.on_rtcp
    task: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            await _room(http, node, room)
            answer = await whip_publish(node.url, room, "fox", firefox_offer(sender.lite, "VP8"))
            await sender.lite.connect(answer)
            task = asyncio.create_task(_run(sender, 60))
            layers = published_layers(node, "fox")
            await wait_for(lambda: all(layers[r].width for r in ("q", "h")), 15, "the h and q layers' sizes")
            async with http.post(f"{node.url}/v1/rooms/{room}/recording", json={}, headers=_auth(room)) as resp:
                started = await resp.json()
                assert resp.status == 201, started
            rec = node.recordings.active[started["id"]]
            ((_index, recorded),) = rec.tracks.values()
            assert recorded.rid == "h"  # the best layer sending now
            h_from = sender.frames["h"]
            await wait_for(lambda: sender.frames["h"] >= h_from + 45, 15, "1.5 s of the h layer")
            sender.held.clear()  # the top layer starts
            await wait_for(lambda: rec.follower.switches == 1, 15, "the recording's move to the f layer")
            assert rec.tracks[next(iter(rec.tracks))][1].rid == "f" and layers["h"].tap is None
            f_from = sender.frames["f"]
            await wait_for(lambda: sender.frames["f"] >= f_from + 45, 15, "1.5 s of the f layer")
            async with http.delete(f"{node.url}/v1/recordings/{started['id']}", headers=_auth(room)) as resp:
                assert resp.status in (200, 202)
            final = await _finished(http, node, room, started["id"])
            (video,) = final["files"]
            assert [x["rid"] for x in video["layers"]] == ["h", "f"], video
            async with http.get(f"{node.url}/v1/recordings/{started['id']}/files/{video['name']}",
                                headers=_auth(room)) as resp:
                assert resp.status == 200
                (tmp_path / video["name"]).write_bytes(await resp.read())
        frames = _decoded(tmp_path / video["name"])
        assert len(frames) == video["frames"] and video["gaps"]["frames_skipped"] <= 3, video
        widths = [w for _, w in frames]
        switch = widths.index(640)
        assert set(widths[:switch]) == {320} and set(widths[switch:]) == {640}, widths  # h, then f
        assert switch >= 40 and len(widths) - switch >= 40, (switch, len(widths))
        times = [t for t, _ in frames]
        assert times == sorted(times)
        steps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert max(steps) < 0.5, max(steps)  # no jump where the layers change (their timestamps differ by hours)
        assert abs(video["layers"][1]["at_s"] - times[switch]) <= 0.002, (video["layers"], times[switch])
    finally:
        if task is not None:
            task.cancel()
        sender.lite.close()
        await node.stop()
