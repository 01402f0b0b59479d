"""One create/use/delete cycle of real WHIP/WHEP sessions against a node (``bench.leakcheck``).

``run_cycle`` opens ``publishers`` WHIP sessions in each of ``rooms`` rooms and ``viewers`` WHEP
sessions per publisher (``/whep/{room}/{identity}``), all with ``sfu.client.lite`` (no aiortc):
ICE, DTLS and SRTP for real.  Publishers then send VP8 (a keyframe every ``KEYFRAME_EVERY``
packets) and opus at ``PACKETS_PER_S`` each for ``seconds``; every viewer sends a PLI and a NACK,
so keyframe requests and the retransmission cache are exercised too.  At the end every session is
DELETEd and every socket closed.  Loopback only; everything is bounded in count and time.

``python -m bench.leakclient --url URL --rooms a,b ...`` runs one cycle in its own process and
prints one JSON line (the leak check runs it so that the node's process holds only the node).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import struct
import sys
import time
from dataclasses import asdict, dataclass
from urllib.parse import urljoin

import aiohttp

from levelchat.tokens import ApiKey, mint
from sfu.client.lite import OPUS_PT, VP8_PT, LiteEndpoint
from sfu.packet import rtcp
from sfu.transport.certificate import Certificate

DEV_KEY = ApiKey("devkey", "secret")
PACKETS_PER_S = 50
KEYFRAME_EVERY = 25
PAYLOAD_BYTES = 800
CONCURRENCY = 16
CONNECT_TIMEOUT_S = 10.0
_CLIENT_SSRC = 0x4C4B_0001


@dataclass
class CycleResult:
    opened: int = 0
    deleted: int = 0
    failed: int = 0
    sent: int = 0
    received: int = 0
    seconds: float = 0.0


@dataclass
class _Session:
    endpoint: LiteEndpoint
    location: str
    token: str
    publish: bool
    video_ssrc: int = 0
    audio_ssrc: int = 0


def _token(room: str, identity: str) -> str:
    return mint(DEV_KEY, project="levelchat", now_s=time.time(), ttl_s=600, identity=identity, room=room,
                scopes=("room:join", "room:publish", "room:subscribe"))


def _rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


async def _open(http: aiohttp.ClientSession, gate: asyncio.Semaphore, cert: Certificate, url: str,
                room: str, identity: str, publish: bool) -> _Session:
    ep = LiteEndpoint(cert)
    token = _token(room, identity)
    try:
        video = secrets.randbits(31) | 1 if publish else 0
        audio = secrets.randbits(31) | 2 if publish else 0
        offer = ep.offer(send=publish, video_ssrc=video or None, audio_ssrc=audio or None)
        async with gate:
            async with http.post(url, data=offer, headers={
                    "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise ConnectionError(f"POST {url}: HTTP {resp.status}: {body[:200]}")
                location = urljoin(url, resp.headers["Location"])
            await ep.connect(body, timeout_s=CONNECT_TIMEOUT_S)
        return _Session(ep, location, token, publish, video, audio)
    except BaseException:
        ep.close()
        raise


class SessionCycle:
    """The sessions of one cycle: ``open``, ``media``, ``close`` (DELETE all, close the sockets)."""

    def __init__(self, base_url: str, rooms: list[str], publishers: int, viewers: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.rooms = rooms
        self.publishers = publishers
        self.viewers = viewers
        self.result = CycleResult()
        self.sessions: list[_Session] = []
        self._cert = Certificate.generate()
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self._http: aiohttp.ClientSession | None = None
        self._started = time.monotonic()

    async def open(self) -> None:
        self._http = http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        cert, gate, url = self._cert, self._gate, self.base_url
        pubs = await asyncio.gather(*(
            _open(http, gate, cert, f"{url}/whip/{room}", room, f"pub-{i}", True)
            for room in self.rooms for i in range(self.publishers)), return_exceptions=True)
        self.sessions += [s for s in pubs if isinstance(s, _Session)]
        subs = await asyncio.gather(*(
            _open(http, gate, cert, f"{url}/whep/{room}/pub-{i}", room, f"view-{i}-{j}", False)
            for room in self.rooms for i in range(self.publishers) for j in range(self.viewers)),
            return_exceptions=True)
        self.sessions += [s for s in subs if isinstance(s, _Session)]
        self.result.failed = sum(1 for s in [*pubs, *subs] if not isinstance(s, _Session))
        self.result.opened = len(self.sessions)

    async def media(self, seconds: float) -> None:
        self.result.sent += await _media(self.sessions, seconds)

    async def close(self) -> CycleResult:
        result = self.result
        result.received = sum(s.endpoint.received for s in self.sessions if not s.publish)
        if self._http is not None:
            http, gate = self._http, self._gate
            result.deleted = sum(await asyncio.gather(*(_delete(http, gate, s) for s in self.sessions)))
            await http.close()
            self._http = None
        for s in self.sessions:
            s.endpoint.close()
        self.sessions = []
        result.seconds = round(time.monotonic() - self._started, 2)
        return result


async def run_cycle(base_url: str, rooms: list[str], publishers: int, viewers: int, seconds: float) -> CycleResult:
    """Open, use and DELETE the sessions of one cycle; the sessions are all gone when it returns."""
    cycle = SessionCycle(base_url, rooms, publishers, viewers)
    try:
        await cycle.open()
        await cycle.media(seconds)
    finally:
        result = await cycle.close()
    return result


async def _media(sessions: list[_Session], seconds: float) -> int:
    pubs = [s for s in sessions if s.publish]
    subs = [s for s in sessions if not s.publish]
    filler = bytes(PAYLOAD_BYTES)
    interval = 1.0 / PACKETS_PER_S
    count = max(1, int(seconds * PACKETS_PER_S))
    sent = 0
    for n in range(count):
        key = n % KEYFRAME_EVERY == 0
        vp8 = (b"\x10\x00" if key else b"\x10\x01") + filler
        for s in pubs:
            ep = s.endpoint
            sent += ep.send_rtp(_rtp(VP8_PT, n, n * 1800, s.video_ssrc, vp8, marker=True))
            sent += ep.send_rtp(_rtp(OPUS_PT, n, n * 960, s.audio_ssrc, filler[:80]))
        if n == count // 2:
            for s in subs:  # keyframe request and a NACK: the PLI path and the retransmission cache
                ssrcs = s.endpoint.remote.ssrcs if s.endpoint.remote is not None else []
                if ssrcs:
                    s.endpoint.send_rtcp(bytes(rtcp.Pli(sender_ssrc=_CLIENT_SSRC, media_ssrc=ssrcs[0])))
                    s.endpoint.send_rtcp(bytes(rtcp.Nack(sender_ssrc=_CLIENT_SSRC, media_ssrc=ssrcs[0],
                                                         seqs=[0, 1, 2])))
        await asyncio.sleep(interval)
    await asyncio.sleep(0.2)  # the last packets arrive
    return sent


async def _delete(http: aiohttp.ClientSession, gate: asyncio.Semaphore, s: _Session) -> bool:
    try:
        async with gate, http.delete(s.location, headers={"Authorization": f"Bearer {s.token}"}) as resp:
            return resp.status in (200, 204)
    except (aiohttp.ClientError, TimeoutError):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.leakclient", description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the node's base URL (loopback)")
    ap.add_argument("--rooms", required=True, help="comma-separated room names")
    ap.add_argument("--publishers", type=int, default=2, help="WHIP sessions per room")
    ap.add_argument("--viewers", type=int, default=2, help="WHEP sessions per publisher")
    ap.add_argument("--seconds", type=float, default=2.0, help="how long media flows")
    args = ap.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        ap.error("--url must be on loopback")
    result = asyncio.run(run_cycle(args.url.rstrip("/"), args.rooms.split(","), args.publishers, args.viewers,
                                   min(args.seconds, 60.0)))
    print(json.dumps(asdict(result)))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
