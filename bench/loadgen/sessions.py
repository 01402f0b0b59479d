"""WHIP and WHEP sessions of the load generator, through ``sfu.client.lite`` (no aiortc).

A publisher's offer has an opus section (one SSRC) and a VP8 section (one SSRC, or three rids with
``a=simulcast`` and the mid/rid header extensions); a receiver's offer is ``recvonly`` audio +
video.  After ICE and DTLS the event loop lets go of the socket: the generator's synchronous loop
sends and receives on it with an in-place SRTP session made from the DTLS-derived key (profile
pinned to AES_CM_128_HMAC_SHA1_80, see ``bench.session``).  The resource URL (``Location``) is
kept, so the session is DELETEd at the end instead of waiting for the node's consent timeout.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp

from bench.loadgen.plan import AUDIO_PT, RID_RESTRICTIONS, VIDEO_PT, Publisher, Stream, Subscriber
from bench.loadgen.wire import MID_EXT_ID, RID_EXT_ID
from bench.session import PROFILE, SOCKET_BUFFER, SessionError, take_over
from bench.srtpkit import Key
from sfu.client.lite import LiteEndpoint
from sfu.transport.certificate import Certificate

#: retries of a refused POST (429 rate_limited, 503) before the step fails
RETRIES = 6
#: sessions set up at the same time by one generator process
CONCURRENCY = 16


@dataclass
class OpenSession:
    endpoint: LiteEndpoint
    remote: tuple[str, int]  # the node's media address (ICE-verified)
    key: Key  # outbound key (publisher) or inbound key (receiver)
    location: str  # absolute URL of the WHIP/WHEP resource
    token: str  # the bearer token (DELETE needs it too)

    @property
    def sock(self) -> socket.socket:
        return self.endpoint.sock

    def keepalive(self) -> None:
        self.endpoint.send_check()


def publish_offer(ep: LiteEndpoint, streams: list[Stream]) -> str:
    """BUNDLE offer: the publisher's video (one SSRC or simulcast rids), then its audio."""
    video = [s for s in streams if s.kind == "video"]
    audio = [s for s in streams if s.kind == "audio"]
    sections: list[list[str]] = []
    common = [
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{ep.ice.ufrag}",
        f"a=ice-pwd:{ep.ice.pwd}",
        f"a=fingerprint:sha-256 {ep.certificate.fingerprint('sha-256')}",
        "a=setup:active",
    ]
    if video:
        lines = [f"m=video 9 UDP/TLS/RTP/SAVPF {VIDEO_PT}", *common, f"a=mid:{len(sections)}"]
        if video[0].rid:
            lines += [f"a=extmap:{MID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:mid",
                      f"a=extmap:{RID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"]
        lines += ["a=sendonly", "a=msid:lg video", "a=rtcp-mux", f"a=rtpmap:{VIDEO_PT} VP8/90000",
                  f"a=rtcp-fb:{VIDEO_PT} nack", f"a=rtcp-fb:{VIDEO_PT} nack pli"]
        if video[0].rid:
            low_first = video[::-1]
            lines += [f"a=rid:{s.rid} send {RID_RESTRICTIONS.get(s.rid, '')}".rstrip() for s in low_first]
            lines.append("a=simulcast:send " + ";".join(s.rid for s in low_first))
        else:
            lines.append(f"a=ssrc:{video[0].ssrc} cname:lg")
        sections.append(lines)
    if audio:
        sections.append([f"m=audio 9 UDP/TLS/RTP/SAVPF {AUDIO_PT}", *common, f"a=mid:{len(sections)}",
                         "a=sendonly", "a=msid:lg audio", "a=rtcp-mux", f"a=rtpmap:{AUDIO_PT} opus/48000/2",
                         f"a=fmtp:{AUDIO_PT} minptime=10;useinbandfec=1", f"a=ssrc:{audio[0].ssrc} cname:lg"])
    head = ["v=0", f"o=- {secrets.randbits(62)} 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
            "a=group:BUNDLE " + " ".join(str(i) for i in range(len(sections))), "a=msid-semantic:WMS *"]
    return "\r\n".join(head + [line for s in sections for line in s]) + "\r\n"


async def _post(http: aiohttp.ClientSession, url: str, token: str, sdp: str) -> tuple[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
    for attempt in range(RETRIES + 1):
        async with http.post(url, data=sdp, headers=headers) as resp:
            body = await resp.text()
            if resp.status == 201:
                return body, urljoin(url, resp.headers.get("Location", ""))
            if resp.status in (429, 503) and attempt < RETRIES:
                wait = min(float(resp.headers.get("Retry-After", "1") or 1), 2.0)
                await asyncio.sleep(wait * (attempt + 1) / RETRIES)
                continue
            raise SessionError(f"POST {url}: HTTP {resp.status}: {body[:300]}")
    raise SessionError(f"POST {url}: still refused after {RETRIES} retries")


async def _open(http: aiohttp.ClientSession, cert: Certificate, url: str, token: str,
                publish: list[Stream] | None, timeout_s: float) -> OpenSession:
    ep = LiteEndpoint(cert, srtp_profiles=[PROFILE])
    try:
        sdp = publish_offer(ep, publish) if publish is not None else ep.offer(send=False)
        answer, location = await _post(http, url, token, sdp)
        remote, key = await take_over(
            ep, answer, sending=publish is not None, socket_buffer=SOCKET_BUFFER // 4, timeout_s=timeout_s, what=url
        )
        return OpenSession(ep, remote.candidate, key, location, token)
    except BaseException:
        ep.close()
        raise


class SessionOpener:
    """Opens publishers and receivers with bounded concurrency; ``close`` DELETEs what it opened."""

    def __init__(self, streams: list[Stream], timeout_s: float = 15.0) -> None:
        self.streams = streams
        self.timeout_s = timeout_s
        self.cert = Certificate.generate()
        self.opened: list[OpenSession] = []
        self._http: aiohttp.ClientSession | None = None
        self._gate = asyncio.Semaphore(CONCURRENCY)

    async def __aenter__(self) -> SessionOpener:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s * 2),
                                           connector=aiohttp.TCPConnector(limit=CONCURRENCY))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def _one(self, url: str, token: str, publish: list[Stream] | None) -> OpenSession:
        assert self._http is not None
        async with self._gate:
            session = await _open(self._http, self.cert, url, token, publish, self.timeout_s)
        self.opened.append(session)
        return session

    async def publishers(self, pubs: list[Publisher]) -> list[OpenSession]:
        return list(await asyncio.gather(*(
            self._one(p.url, p.token, [self.streams[i] for i in p.streams]) for p in pubs)))

    async def subscribers(self, subs: list[Subscriber]) -> list[OpenSession]:
        return list(await asyncio.gather(*(self._one(s.url, s.token, None) for s in subs)))

    async def close(self) -> int:
        """DELETE every opened resource (best effort) and close the sockets; returns how many went."""
        assert self._http is not None
        http = self._http

        async def delete(s: OpenSession) -> bool:
            try:
                async with self._gate, http.delete(s.location, headers={"Authorization": f"Bearer {s.token}"}) as resp:
                    return resp.status in (200, 204)
            except (aiohttp.ClientError, TimeoutError):
                return False

        results = await asyncio.gather(*(delete(s) for s in self.opened if s.location))
        for s in self.opened:
            s.endpoint.close()
        return sum(results)
