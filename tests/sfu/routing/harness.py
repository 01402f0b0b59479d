"""A raw WebRTC client for the node's media port, for transport and routing unit tests.

``RawClient`` owns one UDP socket on 127.0.0.1 and speaks to a ``PeerTransport`` the way a
browser would, but step by step: STUN Binding requests built with ``aioice.stun``, a real
``DtlsEndpoint`` in the opposite DTLS role, and ``SrtpContext`` pairs from the keys that
handshake exports.  ``RecordingSink`` is a stand-in ``MediaSink`` (the routing layer, which is
not under test when the transport is) that keeps copies of what it is handed.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from aioice import stun

from sfu import clock
from sfu.counters import MediaCounters
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, DtlsState
from sfu.transport.dtls_pool import HandshakePool
from sfu.transport.ice import random_ice_string
from sfu.transport.peer import CloseReason, PeerTransport, TransportState
from sfu.transport.ports import Address
from sfu.transport.srtp import SrtpContext, SrtpProfile
from sfu.transport.udp import MediaPort

NODE_CERT = Certificate.generate()
CLIENT_CERT = Certificate.generate()
PROFILES = [SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES_CM_128_HMAC_SHA1_80]
RECV_TIMEOUT_S = 2.0
#: PRIORITY and ICE-CONTROLLING values of the checks this client sends
CHECK_PRIORITY = 0x6E7F1EFF
TIE_BREAKER = 0x0123456789ABCDEF


def binding_request(
    username: str | None,
    pwd: str,
    *,
    use_candidate: bool = True,
    controlling: bool = True,
    integrity: bool = True,
    fingerprint: bool = True,
    message_class: stun.Class = stun.Class.REQUEST,
    transaction_id: bytes | None = None,
) -> bytes:
    """A connectivity check as a browser sends it (each part can be left out)."""
    msg = stun.Message(stun.Method.BINDING, message_class, transaction_id=transaction_id)
    if username is not None:
        msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = CHECK_PRIORITY
    if controlling:
        msg.attributes["ICE-CONTROLLING"] = TIE_BREAKER
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    if integrity:
        msg.add_message_integrity(pwd.encode())  # adds FINGERPRINT after it
        if not fingerprint:
            del msg.attributes["FINGERPRINT"]
    elif fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


@dataclass
class RecordingSink:
    """A MediaSink that copies what it gets (the buffers it is handed are reused)."""

    rtp: list[bytes] = field(default_factory=list)
    rtcp: list[bytes] = field(default_factory=list)
    connected: list[int] = field(default_factory=list)
    closed: list[CloseReason] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on_rtp(self, cbuf: Any, view: memoryview, length: int, now_ms: int) -> None:
        self.rtp.append(bytes(view[:length]))
        self.arrived.set()

    def on_rtcp(self, data: bytes, now_ms: int) -> None:
        self.rtcp.append(bytes(data))
        self.arrived.set()

    def on_connected(self, now_ms: int) -> None:
        self.connected.append(now_ms)

    def on_closed(self, reason: CloseReason) -> None:
        self.closed.append(reason)

    async def wait(self, count: int, *, rtcp: bool = False) -> None:
        """Until ``count`` RTP (or RTCP) packets have arrived."""
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while len(self.rtcp if rtcp else self.rtp) < count:
                self.arrived.clear()
                await self.arrived.wait()


class RawClient:
    def __init__(self, cert: Certificate = CLIENT_CERT, host: str = "127.0.0.1") -> None:
        #: the loopback address it is bound to and sends to the port at (``::1``: over IPv6)
        self.host = host
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)  # bursts of a few hundred
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.ufrag = random_ice_string(8)
        self.pwd = random_ice_string(24)
        self.cert = cert
        self.dtls: DtlsEndpoint | None = None
        self.tx: SrtpContext | None = None  # protects what the client sends
        self.rx: SrtpContext | None = None  # unprotects what the node sends
        self.app_data: list[bytes] = []

    @property
    def addr(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.sock.close()

    # -- raw datagrams -----------------------------------------------------------------------------
    def send(self, data: bytes, to: Address) -> None:
        self.sock.sendto(data, to)

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> bytes:
        loop = asyncio.get_running_loop()
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 4096), timeout)
        return bytes(data)

    async def nothing_arrives(self, timeout: float = 0.2) -> bool:
        try:
            await self.recv(timeout)
        except TimeoutError:
            return True
        return False

    # -- ICE ---------------------------------------------------------------------------------------
    def check_for(self, peer: PeerTransport, **kwargs: Any) -> bytes:
        return binding_request(f"{peer.ice.ufrag}:{self.ufrag}", peer.ice.pwd, **kwargs)

    async def check(self, peer: PeerTransport, port: MediaPort, **kwargs: Any) -> stun.Message:
        """Send one connectivity check and return the node's response."""
        self.send(self.check_for(peer, **kwargs), (self.host, port.port))
        return stun.parse_message(await self.recv())

    # -- DTLS --------------------------------------------------------------------------------------
    async def handshake(self, peer: PeerTransport, port: MediaPort, node_role: DtlsRole) -> None:
        """Complete DTLS in the role opposite to the node's; the node has seen a check already."""
        to = (self.host, port.port)
        role = DtlsRole.SERVER if node_role is DtlsRole.CLIENT else DtlsRole.CLIENT
        self.dtls = DtlsEndpoint(
            self.cert,
            role,
            [("sha-256", NODE_CERT.fingerprint())],
            PROFILES,
            lambda d: self.send(d, to),
        )
        self.dtls.start(clock.now_ms())
        async with asyncio.timeout(5):
            while self.dtls.state is not DtlsState.CONNECTED:
                if self.dtls.state in (DtlsState.FAILED, DtlsState.CLOSED):
                    raise AssertionError(f"client DTLS {self.dtls.state}: {self.dtls.failure_reason}")
                self.app_data.extend(self.dtls.feed(await self.recv(), clock.now_ms()))
        keys = self.dtls.srtp_keys
        assert keys is not None
        self.tx = SrtpContext.outbound(keys)
        self.rx = SrtpContext.inbound(keys)

    # -- SRTP --------------------------------------------------------------------------------------
    def protect(self, rtp: bytes) -> bytes:
        assert self.tx is not None
        protected = self.tx.protect_rtp_bytes(rtp)
        assert protected is not None, self.tx.last_error
        return protected

    def protect_rtcp(self, packet: bytes) -> bytes:
        assert self.tx is not None
        protected = self.tx.protect_rtcp_bytes(packet)
        assert protected is not None, self.tx.last_error
        return protected

    async def recv_media(self, timeout: float = RECV_TIMEOUT_S) -> tuple[str, bytes]:
        """The next SRTP or SRTCP datagram from the node, unprotected: ("rtp"|"rtcp", bytes)."""
        assert self.rx is not None
        data = await self.recv(timeout)
        if 192 <= data[1] <= 223:
            clear = self.rx.unprotect_rtcp_bytes(data)
            kind = "rtcp"
        else:
            clear = self.rx.unprotect_rtp_bytes(data)
            kind = "rtp"
        assert clear is not None, self.rx.last_error
        return kind, clear

    async def recv_rtp(self, timeout: float = RECV_TIMEOUT_S) -> bytes:
        """The next RTP packet from the node (RTCP in between is skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                kind, clear = await self.recv_media(timeout)
                if kind == "rtp":
                    return clear

    async def recv_rtcp(self, timeout: float = RECV_TIMEOUT_S) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                kind, clear = await self.recv_media(timeout)
                if kind == "rtcp":
                    return clear


@dataclass
class Link:
    """A node-side PeerTransport on a MediaPort and the raw client talking to it."""

    port: MediaPort
    peer: PeerTransport
    client: RawClient
    counters: MediaCounters
    sink: RecordingSink

    @property
    def port_addr(self) -> Address:
        return ("127.0.0.1", self.port.port)

    def close(self) -> None:
        self.client.close()
        self.port.close()


def open_port(counters: MediaCounters | None = None, host: str = "127.0.0.1") -> MediaPort:
    port = MediaPort(host, 0, counters or MediaCounters())
    port.open(asyncio.get_running_loop())
    return port


#: what ``new_peer`` passes as ``handshakes`` unless told (a test module may set it: test_peer runs
#: every test with DTLS on the loop and in a pool)
handshake_pools: list[HandshakePool | None] = [None]


def new_peer(
    port: MediaPort,
    client: RawClient,
    *,
    node_role: DtlsRole = DtlsRole.SERVER,
    now_ms: int | None = None,
    remote_fingerprints: list[tuple[str, str]] | None = None,
) -> PeerTransport:
    return PeerTransport(
        handshakes=handshake_pools[-1],
        port=port,
        certificate=NODE_CERT,
        dtls_role=node_role,
        remote_ufrag=client.ufrag,
        remote_fingerprints=remote_fingerprints or [("sha-256", client.cert.fingerprint())],
        srtp_profiles=PROFILES,
        counters=port.counters,
        now_ms=clock.now_ms() if now_ms is None else now_ms,
        loop=asyncio.get_running_loop(),
    )


async def connect(peer: PeerTransport, client: RawClient, port: MediaPort, node_role: DtlsRole) -> None:
    """ICE check then DTLS: the transport ends CONNECTED with SRTP keys on both sides."""
    response = await client.check(peer, port)
    assert response.message_class is stun.Class.RESPONSE
    await client.handshake(peer, port, node_role)
    # as DTLS client the node completes only when the client's last flight has reached it
    async with asyncio.timeout(RECV_TIMEOUT_S):
        while _state(peer) is not TransportState.CONNECTED:
            assert _state(peer) is not TransportState.CLOSED
            await asyncio.sleep(0.002)


def _state(peer: PeerTransport) -> TransportState:
    return peer.state


async def open_link(node_role: DtlsRole = DtlsRole.SERVER, port: MediaPort | None = None) -> Link:
    """A CONNECTED transport and its client; the transport's sink is a RecordingSink."""
    port = port or open_port()
    client = RawClient()
    peer = new_peer(port, client, node_role=node_role)
    sink = RecordingSink()
    peer.sink = sink
    await connect(peer, client, port, node_role)
    return Link(port, peer, client, port.counters, sink)


# -- media --------------------------------------------------------------------------------------------

#: VP8 payloads (RFC 7741): descriptor byte S=1 PID=0, then the frame tag (P bit 0 = key frame)
VP8_KEY = bytes([0x10, 0x50, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + bytes(20)
VP8_DELTA = bytes([0x10, 0x31, 0x02, 0x00]) + bytes(20)
VP8_CONTINUATION = bytes([0x00, 0x00, 0x00, 0x00]) + bytes(20)  # S=0: not a frame start
OPUS_FRAME = bytes([0xFC, 0xFF, 0xFE]) + bytes(30)


def rtp_bytes(
    seq: int,
    ts: int,
    *,
    ssrc: int,
    pt: int,
    payload: bytes,
    marker: bool = False,
    extensions: list[tuple[int, bytes]] | None = None,
) -> bytes:
    header = RtpHeader(
        payload_type=pt,
        sequence_number=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=ssrc,
        marker=marker,
        extensions=list(extensions or []),
    )
    return bytes(RtpPacket(header, payload))
