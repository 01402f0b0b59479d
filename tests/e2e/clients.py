"""aiortc clients for end-to-end tests: WHIP publishers and WHEP subscribers over real loopback."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from av import VideoFrame

from sfu.packet.codecs import vp8_is_keyframe

NO_ICE_SERVERS = RTCConfiguration(iceServers=[])


class PatternVideoTrack(VideoStreamTrack):
    """Synthetic moving video, so the encoder makes real inter frames."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self._w, self._h = width, height
        self._n = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.zeros((self._h, self._w, 3), dtype=np.uint8)
        x = (self._n * 4) % self._w
        img[:, x : x + 16] = 255
        img[..., 1] = (self._n * 3) % 255
        self._n += 1
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


@dataclass
class RtpLog:
    """Every RTP packet a receiver got: (seq, timestamp, arrival)."""

    packets: list[tuple[int, int, float]] = field(default_factory=list)
    #: sequence numbers to lose on the wire, before decryption, on their first arrival
    lose_once: set[int] = field(default_factory=set)
    lost: list[int] = field(default_factory=list)
    keyframes_at: list[float] = field(default_factory=list)  # arrival of each VP8 keyframe start
    mids: set[str | None] = field(default_factory=set)  # values of the sdes:mid extension seen

    def missing(self) -> list[int]:
        """Sequence numbers between the first and the last never received, even late (NACKed
        retransmissions fill holes that loss on a loaded machine can make)."""
        if not self.packets:
            return []
        first = self.packets[0][0]
        offsets = {(seq - first) & 0xFFFF for seq, _, _ in self.packets}
        last = max(o for o in offsets if o < 0x8000)
        return [(first + o) & 0xFFFF for o in range(last + 1) if o not in offsets]

    def gaps(self) -> list[tuple[int, int]]:
        """Pairs of consecutive packets whose sequence numbers are not consecutive."""
        out = []
        for (a, _, _), (b, _, _) in zip(self.packets, self.packets[1:], strict=False):
            if (b - a) & 0xFFFF != 1:
                out.append((a, b))
        return out


def _log_rtp(receiver: RTCRtpReceiver, log: RtpLog, vp8_pts: set[int]) -> None:
    original = receiver._handle_rtp_packet

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        now = time.monotonic()
        log.packets.append((packet.sequence_number, packet.timestamp, now))
        log.mids.add(packet.extensions.mid)
        if packet.payload_type in vp8_pts and vp8_is_keyframe(packet.payload):
            log.keyframes_at.append(now)
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


async def _post_sdp(url: str, token: str, sdp: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, data=sdp, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        ) as resp:
            return resp.status, await resp.text(), dict(resp.headers)


@dataclass
class SendLoss:
    """Packets of one sender lost on the publisher-to-node leg (``WhipPublisher.lose_sent``)."""

    ssrc: int
    offsets: set[int]  # from the first sequence number sent after arming, each lost once
    first: int | None = None
    lost: list[int] = field(default_factory=list)  # sequence numbers dropped, in order
    sent: int = 0  # packets of ``ssrc`` sent (or lost) since arming

    @property
    def done(self) -> bool:
        return not self.offsets


class WhipPublisher:
    def __init__(
        self,
        base_url: str,
        room: str,
        token: str,
        *,
        video: bool = True,
        audio: bool = True,
        config: RTCConfiguration = NO_ICE_SERVERS,
    ) -> None:
        self.url = f"{base_url}/whip/{room}"
        self.base_url = base_url
        self.token = token
        self.pc = RTCPeerConnection(config)
        self.location: str | None = None
        self.tracks: list[MediaStreamTrack] = []
        if video:
            self.tracks.append(PatternVideoTrack())
        if audio:
            self.tracks.append(AudioStreamTrack())
        for t in self.tracks:
            self.pc.addTransceiver(t, direction="sendonly")

    async def connect(self, timeout: float = 10.0) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, body, headers = await _post_sdp(self.url, self.token, self.pc.localDescription.sdp)
        if status != 201:
            raise AssertionError(f"WHIP POST answered {status}: {body}")
        self.location = headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await wait_for(lambda: self.pc.connectionState == "connected", timeout, "publisher connected")

    def lose_sent(self, kind: str, offsets: set[int]) -> SendLoss:
        """Drop the ``kind`` sender's media packets (its primary SSRC, not its RTX) at these
        offsets from the next one it sends, once each, as they leave for the node: SRTP leaves
        the RTP header in clear text."""
        sender = next(t.sender for t in self.pc.getTransceivers() if t.kind == kind)
        loss = SendLoss(sender._ssrc, set(offsets))
        ice = sender.transport.transport
        original = ice._send

        async def send(data: bytes) -> None:
            if len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
                if int.from_bytes(data[8:12], "big") == loss.ssrc:
                    seq = (data[2] << 8) | data[3]
                    if loss.first is None:
                        loss.first = seq
                    loss.sent += 1
                    offset = (seq - loss.first) & 0xFFFF
                    if offset in loss.offsets:
                        loss.offsets.discard(offset)
                        loss.lost.append(seq)
                        return
            await original(data)

        ice._send = send
        return loss

    async def close(self) -> None:
        await self.pc.close()

    async def delete(self) -> int:
        assert self.location is not None
        async with aiohttp.ClientSession() as http:
            async with http.delete(
                self.base_url + self.location, headers={"Authorization": f"Bearer {self.token}"}
            ) as resp:
                return resp.status


class WhepSubscriber:
    def __init__(
        self,
        base_url: str,
        room: str,
        token: str,
        *,
        video: bool = True,
        audio: bool = True,
        audio_first: bool = False,
        config: RTCConfiguration = NO_ICE_SERVERS,
    ) -> None:
        self.url = f"{base_url}/whep/{room}"
        self.token = token
        self.pc = RTCPeerConnection(config)
        self.logs: dict[str, RtpLog] = {}
        self.frames: dict[str, int] = {"video": 0, "audio": 0}
        self.first_frame_at: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._receivers: dict[str, RTCRtpReceiver] = {}
        order = (("audio", audio), ("video", video)) if audio_first else (("video", video), ("audio", audio))
        for kind, on in order:
            if on:
                tr = self.pc.addTransceiver(kind, direction="recvonly")
                self.logs[kind] = RtpLog()
                self._receivers[kind] = tr.receiver

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            self.frames[track.kind] += 1
            self.first_frame_at.setdefault(track.kind, time.monotonic())

    async def connect(self, timeout: float = 10.0) -> tuple[int, str]:
        self.started_at = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, body, _ = await _post_sdp(self.url, self.token, self.pc.localDescription.sdp)
        if status != 201:
            return status, body
        vp8 = {int(line.split()[0].split(":")[1]) for line in body.splitlines() if "VP8/90000" in line}
        for kind, receiver in self._receivers.items():
            _log_rtp(receiver, self.logs[kind], vp8)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await wait_for(lambda: self.pc.connectionState == "connected", timeout, "subscriber connected")
        return status, body

    def simulate_loss(self, kind: str) -> None:
        """Drop the SRTP packets of ``kind`` whose sequence numbers are in ``logs[kind].lose_once``
        as they come off the socket (the RTP header of SRTP is clear text), once each."""
        log = self.logs[kind]
        ice = self._receivers[kind].transport.transport
        original = ice._recv

        async def recv() -> bytes:
            while True:
                data: bytes = await original()
                if len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
                    seq = (data[2] << 8) | data[3]
                    if seq in log.lose_once:
                        log.lose_once.discard(seq)
                        log.lost.append(seq)
                        continue
                return data

        ice._recv = recv

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)
