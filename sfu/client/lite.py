"""A minimal WebRTC endpoint without aiortc: ICE (controlling, one host pair), DTLS client, SRTP.

It publishes or receives pre-built RTP without encoding or decoding, which is what the node's
self-check probe and the bench load generator need: cheap sessions that exercise the node's
real media path (STUN, DTLS, SRTP, routing, re-protection).  It speaks to any ICE-lite peer that
puts a host candidate in its answer, like the node.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

from aioice import stun
from pylibsrtp._binding import ffi

from sfu import clock
from sfu.packet.twcc import TWCC_URI
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, DtlsState
from sfu.transport.ice import IceCredentials
from sfu.transport.srtp import SrtpContext, SrtpProfile

VP8_PT = 96
OPUS_PT = 111
_CANDIDATE = re.compile(r"^a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", re.MULTILINE)
_FINGERPRINT = re.compile(r"^a=fingerprint:(\S+) (\S+)", re.MULTILINE)
_ICE_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)
_ICE_PWD = re.compile(r"^a=ice-pwd:(\S+)", re.MULTILINE)
_SSRC = re.compile(r"^a=ssrc:(\d+) ", re.MULTILINE)


@dataclass(frozen=True)
class Answer:
    ufrag: str
    pwd: str
    fingerprints: list[tuple[str, str]]
    candidate: tuple[str, int]
    ssrcs: list[int]
    #: every UDP host candidate, in the answer's order (``candidate`` is the first, or the first
    #: of the family asked for)
    candidates: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, text: str, *, ipv6: bool | None = None) -> Answer:
        """``ipv6``: take the first candidate of that family (None: the first of any)."""
        cands = tuple((ip, int(port)) for ip, port in _CANDIDATE.findall(text))
        usable = [c for c in cands if ipv6 is None or (":" in c[0]) == ipv6]
        ufrag = _ICE_UFRAG.search(text)
        pwd = _ICE_PWD.search(text)
        fps = _FINGERPRINT.findall(text)
        if not usable or ufrag is None or pwd is None or not fps:
            family = "" if ipv6 is None else ("IPv6 " if ipv6 else "IPv4 ")
            raise ValueError(f"answer lacks an {family}host candidate, ICE credentials or a fingerprint")
        return cls(
            ufrag=ufrag.group(1),
            pwd=pwd.group(1),
            fingerprints=[(a.lower(), v.upper()) for a, v in fps],
            candidate=usable[0],
            ssrcs=list(dict.fromkeys(int(s) for s in _SSRC.findall(text))),
            candidates=cands,
        )


def offer_sdp(
    ice: IceCredentials,
    fingerprint: str,
    *,
    send: bool,
    video_ssrc: int | None,
    audio_ssrc: int | None,
    twcc_ext: int | None = None,
) -> str:
    """A BUNDLE offer with a VP8 video and/or opus audio section, sendonly or recvonly.
    ``twcc_ext``: offer the transport-wide-cc header extension under that id and ``transport-cc``
    feedback (the packets sent then carry a transport-wide sequence number, see ``twcc_packet``)."""
    direction = "sendonly" if send else "recvonly"
    sections: list[tuple[str, str, int | None]] = []
    if video_ssrc is not None or not send:
        sections.append(("video", f"{VP8_PT}", video_ssrc))
    if audio_ssrc is not None or not send:
        sections.append(("audio", f"{OPUS_PT}", audio_ssrc))
    mids = " ".join(str(i) for i in range(len(sections)))
    lines = [
        "v=0",
        f"o=- {secrets.randbits(62)} 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {mids}",
        "a=msid-semantic:WMS *",
    ]
    for mid, (kind, pt, ssrc) in enumerate(sections):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}",
            "c=IN IP4 0.0.0.0",
            f"a=ice-ufrag:{ice.ufrag}",
            f"a=ice-pwd:{ice.pwd}",
            f"a=fingerprint:sha-256 {fingerprint}",
            "a=setup:active",
            f"a=mid:{mid}",
            f"a={direction}",
            "a=rtcp-mux",
        ]
        if twcc_ext is not None:
            lines += [f"a=extmap:{twcc_ext} {TWCC_URI}", f"a=rtcp-fb:{pt} transport-cc"]
        if kind == "video":
            lines += [
                f"a=rtpmap:{VP8_PT} VP8/90000",
                f"a=rtcp-fb:{VP8_PT} nack",
                f"a=rtcp-fb:{VP8_PT} nack pli",
            ]
        else:
            lines += [f"a=rtpmap:{OPUS_PT} opus/48000/2", f"a=fmtp:{OPUS_PT} minptime=10;useinbandfec=1"]
        if send and ssrc is not None:
            lines += [f"a=ssrc:{ssrc} cname:lite", f"a=msid:lite {kind}"]
    return "\r\n".join(lines) + "\r\n"


class LiteEndpoint:
    """One client session on its own UDP socket. ``on_rtp(view, length)`` gets clear RTP.

    ``host`` is the local address to bind (``::1``: an IPv6 client, which takes the answer's
    first IPv6 candidate)."""

    def __init__(
        self,
        certificate: Certificate,
        *,
        host: str = "127.0.0.1",
        srtp_profiles: list[SrtpProfile] | None = None,
        on_rtp: Callable[[memoryview, int], None] | None = None,
        on_rtcp: Callable[[bytes], None] | None = None,
    ) -> None:
        self.certificate = certificate
        self.ice = IceCredentials.generate()
        self.host = host
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.profiles = srtp_profiles or [SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES_CM_128_HMAC_SHA1_80]
        self.on_rtp = on_rtp
        self.on_rtcp = on_rtcp
        self.remote: Answer | None = None
        self.dtls: DtlsEndpoint | None = None
        self.tx: SrtpContext | None = None
        self.rx: SrtpContext | None = None
        self.cbuf = ffi.new("unsigned char[]", 2048)
        self.view = memoryview(ffi.buffer(self.cbuf))
        self.out_cbuf = ffi.new("unsigned char[]", 2048)
        self.out_view = memoryview(ffi.buffer(self.out_cbuf))
        self.received = 0
        self.srtp_failures = 0
        self.checks_answered = 0  # authenticated Binding successes (consent refreshes included)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ice_ok: asyncio.Future[None] | None = None
        self._dtls_done: asyncio.Future[None] | None = None
        self._transaction: bytes | None = None

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def offer(
        self,
        *,
        send: bool,
        video_ssrc: int | None = None,
        audio_ssrc: int | None = None,
        twcc_ext: int | None = None,
    ) -> str:
        return offer_sdp(
            self.ice,
            self.certificate.fingerprint("sha-256"),
            send=send,
            video_ssrc=video_ssrc,
            audio_ssrc=audio_ssrc,
            twcc_ext=twcc_ext,
        )

    async def connect(
        self, answer_text: str, timeout_s: float = 5.0, address: tuple[str, int] | None = None
    ) -> None:
        """ICE check, then DTLS client handshake; raises TimeoutError or ConnectionError.

        ``address`` replaces the answer's candidate (e.g. a node probing itself behind NAT)."""
        remote = Answer.parse(answer_text, ipv6=None if address is not None else ":" in self.host)
        if address is not None:
            remote = replace(remote, candidate=address)
        self.remote = remote
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._ice_ok = loop.create_future()
        self._dtls_done = loop.create_future()
        loop.add_reader(self.sock.fileno(), self._on_readable)
        deadline = loop.time() + timeout_s
        while not self._ice_ok.done():
            self.send_check(use_candidate=True)
            try:
                await asyncio.wait_for(asyncio.shield(self._ice_ok), min(0.2, max(0.01, deadline - loop.time())))
            except TimeoutError:
                if loop.time() >= deadline:
                    raise TimeoutError("no answer to the ICE connectivity check") from None
        self.dtls = DtlsEndpoint(
            certificate=self.certificate,
            role=DtlsRole.CLIENT,
            remote_fingerprints=self.remote.fingerprints,
            srtp_profiles=self.profiles,
            send=self._send_raw,
        )
        self.dtls.start(clock.now_ms())
        while not self._dtls_done.done():
            if loop.time() >= deadline:
                raise TimeoutError("DTLS handshake did not complete")
            try:
                await asyncio.wait_for(asyncio.shield(self._dtls_done), 0.1)
            except TimeoutError:
                self.dtls.handle_timeout(clock.now_ms())
        self._dtls_done.result()

    def ice_fragment(self, kind: str = "video", mid: str = "0") -> str:
        """An ``application/trickle-ice-sdpfrag`` with this endpoint's ICE credentials and host
        candidate (a WHIP/WHEP ``PATCH`` body, RFC 8840)."""
        return (
            f"a=ice-ufrag:{self.ice.ufrag}\r\na=ice-pwd:{self.ice.pwd}\r\nm={kind} 9 UDP/TLS/RTP/SAVPF 0\r\n"
            f"a=mid:{mid}\r\na=candidate:1 1 udp 2130706431 {self.host} {self.local_port} typ host\r\n"
            "a=end-of-candidates\r\n"
        )

    def restart_ice(self) -> str:
        """New local ICE credentials (``pc.restartIce()``); the fragment that carries them."""
        self.ice = IceCredentials.generate()
        return self.ice_fragment()

    def apply_remote_ice(self, fragment: str) -> None:
        """The peer's new ICE credentials (its answer to a restart): later checks use them."""
        assert self.remote is not None
        ufrag = _ICE_UFRAG.search(fragment)
        pwd = _ICE_PWD.search(fragment)
        if ufrag is None or pwd is None:
            raise ValueError("the fragment lacks a=ice-ufrag or a=ice-pwd")
        self.remote = replace(self.remote, ufrag=ufrag.group(1), pwd=pwd.group(1))

    def send_check(self, use_candidate: bool = False) -> None:
        """A connectivity check (also the consent refresh, RFC 7675)."""
        assert self.remote is not None
        msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{self.remote.ufrag}:{self.ice.ufrag}"
        msg.attributes["PRIORITY"] = 0x6E0001FF
        msg.attributes["ICE-CONTROLLING"] = secrets.randbits(64)
        if use_candidate:
            msg.attributes["USE-CANDIDATE"] = None
        msg.add_message_integrity(self.remote.pwd.encode())
        self._transaction = msg.transaction_id
        self._send_raw(bytes(msg))

    def _send_raw(self, data: bytes | memoryview) -> None:
        assert self.remote is not None
        try:
            self.sock.sendto(data, self.remote.candidate)
        except (BlockingIOError, InterruptedError):
            pass

    def send_rtp(self, packet: bytes | memoryview) -> bool:
        """Protect a clear RTP packet and send it."""
        tx = self.tx
        if tx is None:
            return False
        n = len(packet)
        self.out_view[:n] = packet
        m = tx.protect_rtp(self.out_cbuf, n)
        if m < 0:
            return False
        self._send_raw(self.out_view[:m])
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        tx = self.tx
        if tx is None:
            return False
        protected = tx.protect_rtcp_bytes(packet)
        if protected is None:
            return False
        self._send_raw(protected)
        return True

    def _on_readable(self) -> None:
        view = self.view
        for _ in range(64):
            try:
                n, _addr = self.sock.recvfrom_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._on_datagram(n)

    def _on_datagram(self, n: int) -> None:
        """``view[:n]`` came from the node: classify it (RFC 7983) and handle it."""
        view = self.view
        if n < 4:
            return
        b0 = view[0]
        if 127 < b0 < 192:
            self._on_srtp(n)
        elif b0 < 4:
            self._on_stun(bytes(view[:n]))
        elif 19 < b0 < 64 and self.dtls is not None:
            self.dtls.feed(bytes(view[:n]), clock.now_ms())
            self._check_dtls()

    def _on_stun(self, data: bytes) -> None:
        try:
            msg = stun.parse_message(data)
        except ValueError:
            return
        if (
            msg.message_class == stun.Class.RESPONSE
            and self.remote is not None
            and msg.check_message_integrity(self.remote.pwd.encode())
        ):
            self.checks_answered += 1
            if self._ice_ok is not None and not self._ice_ok.done():
                self._ice_ok.set_result(None)

    def _check_dtls(self) -> None:
        dtls = self.dtls
        done = self._dtls_done
        if dtls is None or done is None or done.done():
            return
        if dtls.state is DtlsState.CONNECTED and dtls.srtp_keys is not None:
            self.tx = SrtpContext.outbound(dtls.srtp_keys)
            self.rx = SrtpContext.inbound(dtls.srtp_keys)
            done.set_result(None)
        elif dtls.state in (DtlsState.FAILED, DtlsState.CLOSED):
            done.set_exception(ConnectionError(f"DTLS {dtls.state.value}: {dtls.failure_reason}"))

    def _on_srtp(self, n: int) -> None:
        rx = self.rx
        if rx is None:
            return
        view = self.view
        if 191 < view[1] < 224:
            m = rx.unprotect_rtcp(self.cbuf, n)
            if m < 0:
                self.srtp_failures += 1
            elif self.on_rtcp is not None:
                self.on_rtcp(bytes(view[:m]))
            return
        m = rx.unprotect_rtp(self.cbuf, n)
        if m < 0:
            self.srtp_failures += 1
            return
        self.received += 1
        if self.on_rtp is not None:
            self.on_rtp(view, m)

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
        if self.dtls is not None:
            if self.dtls.state is DtlsState.CONNECTED:
                self.dtls.close()
            self.dtls.release()  # its send callback refers to this endpoint
        self.sock.close()
        for ctx in (self.tx, self.rx):
            if ctx is not None:
                ctx.close()
        self.tx = self.rx = None
