"""WHIP/WHEP session setup for the bench's source and sinks, through ``sfu.client.lite``.

Each session is one ``LiteEndpoint``: an HTTP POST of its offer, an ICE check with USE-CANDIDATE
and a DTLS client handshake on its own UDP socket.  Afterwards the event loop lets go of the
socket and the bench's own synchronous loops use it with an ``InplaceSession`` made from the
DTLS-derived master key (the profile is pinned to AES_CM_128_HMAC_SHA1_80, the same as the C and
bare-Python targets, so ``Key`` carries it).  ``keepalive`` sends an ICE consent check (RFC 7675);
the node answers with a STUN response that the loops skip.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from dataclasses import dataclass

import aiohttp

from bench.srtpkit import Key
from sfu.client.lite import Answer, LiteEndpoint
from sfu.transport.certificate import Certificate
from sfu.transport.srtp import SrtpProfile

#: The one profile the bench's in-place sessions speak (see ``bench.srtpkit.Key``).
PROFILE = SrtpProfile.AES_CM_128_HMAC_SHA1_80
#: Send an ICE consent check this often (the node expires a session after 30 s without one).
KEEPALIVE_S = 5.0
SOCKET_BUFFER = 8 << 20


class Role(enum.Enum):
    PUBLISH = "whip"
    SUBSCRIBE = "whep"


@dataclass(frozen=True)
class SessionSpec:
    """Where and as whom to open one session."""

    role: Role
    url: str  # the WHIP or WHEP endpoint, on 127.0.0.1
    token: str
    video_ssrc: int = 0  # the publisher's one VP8 SSRC (PUBLISH only)
    twcc_ext: int = 0  # the publisher offers transport-wide-cc under this id (0: not)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
            raise ValueError(f"session URL must be on loopback: {self.url!r}")
        if self.role is Role.PUBLISH and not 0 < self.video_ssrc < 1 << 32:
            raise ValueError(f"a publisher needs a video SSRC in 1..2^32-1, got {self.video_ssrc}")


class SessionError(RuntimeError):
    """Signaling or the ICE/DTLS handshake failed."""


@dataclass
class MediaSession:
    """An established session: its socket, the node's address and the SRTP key for our direction."""

    endpoint: LiteEndpoint
    remote: tuple[str, int]  # the node's media address (ICE-verified)
    key: Key  # outbound key for a publisher, inbound key for a subscriber
    remote_ssrcs: list[int]  # SSRCs the answer announced (a subscriber's outgoing node SSRCs)

    @property
    def sock(self) -> socket.socket:
        return self.endpoint.sock

    def keepalive(self) -> None:
        """An ICE consent check; the response is a STUN datagram the bench loops ignore."""
        self.endpoint.send_check()

    def close(self) -> None:
        self.endpoint.close()


async def _post_offer(http: aiohttp.ClientSession, spec: SessionSpec, sdp: str) -> str:
    headers = {"Authorization": f"Bearer {spec.token}", "Content-Type": "application/sdp"}
    async with http.post(spec.url, data=sdp, headers=headers) as resp:
        body = await resp.text()
        if resp.status != 201:
            raise SessionError(f"{spec.role.value} {spec.url}: HTTP {resp.status}: {body[:300]}")
        return body


async def take_over(ep: LiteEndpoint, answer: str, *, sending: bool, socket_buffer: int, timeout_s: float,
                    what: str) -> tuple[Answer, Key]:
    """Finish ICE and DTLS with the node's ``answer``, then hand the endpoint's socket to the
    caller's own loop (no asyncio reader; ``socket_buffer`` bytes each way).  The answer and the
    SRTP master key of our direction (outbound when ``sending``, else inbound); ``SessionError``
    (naming ``what``) when the handshake fails."""
    try:
        await ep.connect(answer, timeout_s=timeout_s)
    except (TimeoutError, ConnectionError, ValueError) as exc:
        raise SessionError(f"{what}: {exc}") from exc
    asyncio.get_running_loop().remove_reader(ep.sock.fileno())  # the caller's loop owns it now
    keys = ep.dtls.srtp_keys if ep.dtls is not None else None
    if keys is None or keys.profile is not PROFILE or ep.remote is None:
        raise SessionError(f"{what}: DTLS did not yield {PROFILE.name} keys")
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        ep.sock.setsockopt(socket.SOL_SOCKET, opt, socket_buffer)
    return ep.remote, Key(keys.local_master if sending else keys.remote_master)


async def _open_one(http: aiohttp.ClientSession, spec: SessionSpec, cert: Certificate,
                    timeout_s: float) -> MediaSession:
    ep = LiteEndpoint(cert, srtp_profiles=[PROFILE])
    try:
        if spec.role is Role.PUBLISH:
            sdp = ep.offer(send=True, video_ssrc=spec.video_ssrc, audio_ssrc=None, twcc_ext=spec.twcc_ext or None)
        else:
            sdp = ep.offer(send=False)
        answer = await _post_offer(http, spec, sdp)
        remote, key = await take_over(
            ep, answer, sending=spec.role is Role.PUBLISH, socket_buffer=SOCKET_BUFFER, timeout_s=timeout_s,
            what=f"{spec.role.value} {spec.url}",
        )
        return MediaSession(ep, remote.candidate, key, list(remote.ssrcs))
    except BaseException:
        ep.close()
        raise


async def _open_all(specs: list[SessionSpec], timeout_s: float) -> list[MediaSession]:
    cert = Certificate.generate()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        results = await asyncio.gather(*(_open_one(http, s, cert, timeout_s) for s in specs),
                                       return_exceptions=True)
    sessions = [r for r in results if isinstance(r, MediaSession)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for s in sessions:
            s.close()
        first = errors[0]
        if isinstance(first, SessionError):
            raise first
        raise SessionError(f"session setup failed: {first!r}") from first
    return sessions


def open_sessions(specs: list[SessionSpec], timeout_s: float = 10.0) -> list[MediaSession]:
    """Open every session concurrently (in a private event loop that is gone on return)."""
    if not specs:
        raise ValueError("no sessions to open")
    return asyncio.run(_open_all(specs, timeout_s))
