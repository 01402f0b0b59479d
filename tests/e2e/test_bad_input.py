"""Bad input on the media port during a live session: every datagram is dropped and counted under
its reason, and the real session never notices.

The live room: an aiortc WHIP publisher ("alice") and an aiortc WHEP subscriber ("viewer")
receiving video and audio.  Attacks come from three places:

* strangers: plain UDP sockets on 127.0.0.1 that never signaled anything;
* "mallory": sessions signaled over real WHIP/WHEP and then driven step by step from a raw socket
  (STUN checks by hand, the node's own ``DtlsEndpoint`` as DTLS client, libsrtp), so that each
  stage (bound but not connected, connected) can be hit with what does not belong there;
* alice's own 5-tuple, through her aiortc ICE connection (and her SRTP session for packets that
  authenticate but carry nonsense).

After each barrage the subscriber's frames keep increasing with no RTP sequence gap, alice keeps
her address, every drop is counted exactly (``node.counters.drop_counts()``) and ``/metrics``
exports the same numbers.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aioice import stun

from sfu import clock
from sfu.client.lite import VP8_PT, Answer, offer_sdp
from sfu.counters import DropReason
from sfu.node import Node
from sfu.routing.participant import Participant
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, DtlsState
from sfu.transport.ice import IceCredentials
from sfu.transport.peer import PeerTransport, TransportState
from sfu.transport.srtp import SrtpContext, SrtpKeys, SrtpProfile
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token

ROOM = "bad-input-1"
Address = tuple[str, int]
D = DropReason
#: reasons a clean session never produces: outside what a barrage expects, they must stay still
QUIET = frozenset(DropReason) - {D.SEND_FAILED, D.SEQ_TOO_OLD, D.RTX_UNKNOWN}
STUN_REASONS = (D.STUN_MALFORMED, D.STUN_UNKNOWN_USER, D.STUN_BAD_INTEGRITY, D.STUN_UNEXPECTED)
_DROPPED = re.compile(r'^levelchat_sfu_packets_dropped_total\{reason="(\w+)"\} (\S+)$', re.MULTILINE)
VP8_KEYFRAME_HEAD = b"\x10\x00\x9d\x01\x2a"  # VP8 descriptor S=1, then a frame tag with P=0 and the start code


# -- the live session --------------------------------------------------------------------------
@dataclass
class Live:
    node: Node
    pub: WhipPublisher
    sub: WhepSubscriber
    alice: Participant
    alice_addr: Address
    media: Address
    conn: Any  # alice's aioice Connection: sends from her exact 5-tuple
    dtls: Any  # alice's aiortc RTCDtlsTransport: protects with her SRTP keys
    video_pt: int
    sent_video: list[bytes] = field(default_factory=list)  # alice's protected video datagrams, as sent

    def frames(self) -> dict[str, int]:
        return dict(self.sub.frames)


def _participant(node: Node, identity: str) -> Participant:
    room = node.rooms.rooms[ROOM]
    return room.participants[identity]


@pytest.fixture
async def live(node: Node) -> AsyncIterator[Live]:
    pub = WhipPublisher(node.url, ROOM, token(ROOM, "alice"))
    sub = WhepSubscriber(node.url, ROOM, token(ROOM, "viewer"))
    try:
        await pub.connect()
        dtls = pub.pc.getTransceivers()[0].sender.transport
        ice = dtls.transport
        answer = pub.pc.remoteDescription.sdp
        video_pt = int(re.search(r"a=rtpmap:(\d+) VP8/90000", answer)[1])  # type: ignore[index]
        alice = _participant(node, "alice")
        assert alice.publisher is not None and alice.publisher.addr is not None
        state = Live(
            node=node,
            pub=pub,
            sub=sub,
            alice=alice,
            alice_addr=alice.publisher.addr,
            media=("127.0.0.1", node.port.port),
            conn=ice._connection,
            dtls=dtls,
            video_pt=video_pt,
        )
        original = ice._send

        async def capture(data: bytes) -> None:
            if len(data) > 12 and 127 < data[0] < 192 and data[1] & 0x7F == video_pt:
                state.sent_video.append(bytes(data))
                del state.sent_video[:-50]
            await original(data)

        ice._send = capture
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= 10 and sub.frames["audio"] >= 10, 15, "first frames")
        yield state
    finally:
        await sub.close()
        await pub.close()


async def still_flowing(live: Live, before: dict[str, int], more: int = 10) -> None:
    """The real session did not notice: frames keep coming, gapless, alice kept her address."""
    await wait_for(
        lambda: all(live.sub.frames[k] >= before[k] + more for k in ("video", "audio")), 15, "frames after the barrage"
    )
    assert live.sub.logs["video"].gaps() == []
    assert live.sub.logs["audio"].gaps() == []
    assert live.pub.pc.connectionState == "connected" and live.sub.pc.connectionState == "connected"
    assert not live.alice.closed
    assert live.alice.publisher is not None
    assert live.alice.publisher.state is TransportState.CONNECTED
    assert live.alice.publisher.addr == live.alice_addr
    viewer = _participant(live.node, "viewer")
    assert viewer.subscriber is not None and viewer.subscriber.state is TransportState.CONNECTED
    assert live.node.self_check_ok


# -- drop accounting ---------------------------------------------------------------------------
class Drops:
    """Drop counters relative to when the watch started."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.base = list(node.counters.drops)
        self.datagrams_base = node.counters.datagrams_in

    def delta(self, reason: DropReason) -> int:
        return self.node.counters.drops[reason] - self.base[reason]

    def nonzero(self) -> dict[str, int]:
        return {r.name.lower(): self.delta(r) for r in DropReason if self.delta(r)}

    async def expect(self, exact: dict[DropReason, int], *, groups: Iterable[tuple[Iterable[DropReason], int]] = ()) -> None:
        """Wait for the node to process the barrage, then check every count exactly.

        ``exact``: reason -> count; ``groups``: (reasons, count) where only the sum is known.
        Every other QUIET reason must not have moved.
        """
        group_list = [(tuple(rs), n) for rs, n in groups]

        def done() -> bool:
            return all(self.delta(r) >= n for r, n in exact.items()) and all(
                sum(self.delta(r) for r in rs) >= n for rs, n in group_list
            )

        try:
            await wait_for(done, 10, "the drops")
        except AssertionError:
            raise AssertionError(f"expected drops {exact} {group_list}; have {self.nonzero()}") from None
        await asyncio.sleep(0.2)  # anything extra would show now
        for reason, n in exact.items():
            assert self.delta(reason) == n, (reason, self.nonzero())
        for rs, n in group_list:
            assert sum(self.delta(r) for r in rs) == n, (rs, self.nonzero())
        covered = set(exact) | {r for rs, _ in group_list for r in rs}
        moved = {r.name.lower(): self.delta(r) for r in QUIET - covered if self.delta(r)}
        assert moved == {}, moved
        await self.check_metrics(covered)

    async def check_metrics(self, reasons: Iterable[DropReason]) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.node.url + "/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
        exported = {name: float(value) for name, value in _DROPPED.findall(text)}
        assert set(exported) == {r.name.lower() for r in DropReason}
        for reason in reasons:
            name = reason.name.lower()
            assert exported[name] == self.node.counters.drops[reason]
            if self.delta(reason):
                assert exported[name] > self.base[reason], name


# -- sockets and packets -----------------------------------------------------------------------
def stranger() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def send_all(sock: socket.socket, to: Address, datagrams: Iterable[bytes], *, every: int = 8) -> int:
    """Send, yielding to the loop (where the node runs) often enough that no socket buffer fills."""
    n = 0
    for data in datagrams:
        sock.sendto(data, to)
        n += 1
        if n % every == 0 or len(data) > 4000:
            await asyncio.sleep(0.002)
    await asyncio.sleep(0.01)
    return n


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def rtp(seq: int, ssrc: int, payload: bytes, *, pt: int = VP8_PT, ts: int | None = None, b0: int = 0x80) -> bytes:
    return struct.pack("!BBHII", b0, pt, seq & 0xFFFF, (seq * 3000 if ts is None else ts) & 0xFFFFFFFF, ssrc) + payload


def stun_check(
    username: str | None,
    pwd: str | None,
    *,
    use_candidate: bool = True,
    fingerprint: bool = True,
    method: stun.Method = stun.Method.BINDING,
    cls: stun.Class = stun.Class.REQUEST,
) -> bytes:
    msg = stun.Message(message_method=method, message_class=cls)
    if username is not None:
        msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 0x6E0001FF
    msg.attributes["ICE-CONTROLLING"] = 0x1234
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    if pwd is not None:
        msg.add_message_integrity(pwd.encode())
    elif fingerprint:
        msg.add_fingerprint()
    data = bytes(msg)
    if pwd is not None and not fingerprint:
        data = data[:-8]
        data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    return data


def dtls_record(content_type: int, epoch: int, body: bytes, *, seq: int = 0, version: int = 0xFEFD) -> bytes:
    return struct.pack("!BHH", content_type, version, epoch) + seq.to_bytes(6, "big") + struct.pack("!H", len(body)) + body


def expected_class(data: bytes) -> DropReason:
    """RFC 7983 by hand: the reason a stranger's datagram must be dropped under."""
    if len(data) < 4:
        return D.TOO_SHORT
    b0 = data[0]
    if b0 <= 3:
        return D.STUN_MALFORMED
    if 20 <= b0 <= 63:
        return D.DTLS_UNKNOWN_ADDRESS
    if 128 <= b0 <= 191:
        return D.SRTP_UNKNOWN_ADDRESS
    return D.UNKNOWN_PROTOCOL


LENGTHS = [0, 1, 2, 3, 4, 5, 7, 8, 11, 12, 13, 19, 20, 21, 24, 47, 100, 172, 500, 1199, 1200, 1500, 2047, 2048, 2049, 4000, 9000]
FIRST_BYTES = [0, 1, 2, 3, 4, 19, 20, 22, 23, 63, 64, 100, 127, 128, 144, 191, 192, 200, 255]


def random_datagrams(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for n in LENGTHS:
        for b0 in FIRST_BYTES:
            if n == 0:
                out.append(b"")
                break
            data = bytearray([b0]) + rng.randbytes(n - 1)
            if b0 <= 3 and n >= 4:
                data[2:4] = b"\xff\xff"  # a STUN length no datagram here matches: surely malformed
            out.append(bytes(data))
    return out


# -- mallory: a session driven by hand ---------------------------------------------------------
class RawPeer:
    """A WHIP or WHEP session from a raw UDP socket: every step is the test's to take (or skip)."""

    def __init__(self, live: Live, identity: str) -> None:
        self.live = live
        self.identity = identity
        self.cert = Certificate.generate()
        self.ice = IceCredentials.generate()
        self.sock = stranger()
        self.answer: Answer | None = None
        self.location = ""
        self.responses: list[stun.Message] = []
        self.dtls: DtlsEndpoint | None = None
        self.tx: SrtpContext | None = None
        self.rx: SrtpContext | None = None
        self.rtp_in: list[int] = []  # sequence numbers of the RTP the node sent us (decrypted)
        self.srtp_bad = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    @property
    def addr(self) -> Address:
        host, port = self.sock.getsockname()
        return str(host), int(port)

    @property
    def transport(self) -> PeerTransport:
        session = self.live.node.sessions.sessions[self.location.rsplit("/", 1)[1]]
        t = session.participant.publisher or session.participant.subscriber
        assert t is not None
        return t

    async def post(self, path: str, *, video_ssrc: int | None = None) -> None:
        send = path.startswith("/whip/")
        offer = offer_sdp(self.ice, self.cert.fingerprint("sha-256"), send=send, video_ssrc=video_ssrc, audio_ssrc=None)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                self.live.node.url + path,
                data=offer,
                headers={"Authorization": f"Bearer {token(ROOM, self.identity)}", "Content-Type": "application/sdp"},
            ) as resp:
                body = await resp.text()
                assert resp.status == 201, body
                self.location = resp.headers["Location"]
        self.answer = Answer.parse(body)
        assert self.answer.candidate == self.live.media

    def check(self, **kw: Any) -> bytes:
        assert self.answer is not None
        return stun_check(f"{self.answer.ufrag}:{self.ice.ufrag}", self.answer.pwd, **kw)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.live.media)

    async def connect_ice(self) -> None:
        assert self.answer is not None
        self.send(self.check())
        await wait_for(lambda: bool(self.responses), 5, "binding success")
        response = self.responses[-1]
        assert response.message_class is stun.Class.RESPONSE
        assert response.check_message_integrity(self.answer.pwd.encode())
        assert response.attributes["XOR-MAPPED-ADDRESS"] == self.addr

    async def handshake(self) -> None:
        assert self.answer is not None
        self.dtls = DtlsEndpoint(
            certificate=self.cert,
            role=DtlsRole.CLIENT,
            remote_fingerprints=self.answer.fingerprints,
            srtp_profiles=[SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES_CM_128_HMAC_SHA1_80],
            send=self.send,
        )
        self.dtls.start(clock.now_ms())
        for _ in range(100):
            if self.dtls.state is not DtlsState.CONNECTING:
                break
            await asyncio.sleep(0.05)
            self.dtls.handle_timeout(clock.now_ms())
        assert self.dtls.state is DtlsState.CONNECTED, self.dtls.failure_detail
        keys = self.dtls.srtp_keys
        assert keys is not None
        self.tx, self.rx = SrtpContext.outbound(keys), SrtpContext.inbound(keys)
        await wait_for(lambda: self.transport.state is TransportState.CONNECTED, 5, "node side connected")

    def protect(self, clear: bytes) -> bytes:
        assert self.tx is not None
        out = self.tx.protect_rtp_bytes(clear)
        assert out is not None
        return out

    def protect_rtcp(self, clear: bytes) -> bytes:
        assert self.tx is not None
        out = self.tx.protect_rtcp_bytes(clear)
        assert out is not None
        return out

    def _on_readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                continue
            if data[0] <= 3:
                self.responses.append(stun.parse_message(data))
            elif 20 <= data[0] <= 63 and self.dtls is not None:
                self.dtls.feed(data, clock.now_ms())
            elif 128 <= data[0] <= 191 and self.rx is not None and not 64 <= data[1] & 0x7F < 96:
                clear = self.rx.unprotect_rtp_bytes(data)
                if clear is None:
                    self.srtp_bad += 1
                else:
                    self.rtp_in.append(struct.unpack_from("!H", clear, 2)[0])

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for ctx in (self.tx, self.rx):
            if ctx is not None:
                ctx.close()


# -- 1. strangers ------------------------------------------------------------------------------
async def test_random_datagrams_from_strangers(live: Live) -> None:
    before, drops = live.frames(), Drops(live.node)
    datagrams = random_datagrams(seed=7983) + [os.urandom(1) * 65507, b"\x80" + bytes(65506)]
    socks = [stranger() for _ in range(5)]
    try:
        for i, sock in enumerate(socks):
            await send_all(sock, live.media, datagrams[i::len(socks)])
        want: dict[DropReason, int] = {}
        for data in datagrams:
            reason = expected_class(data)
            want[reason] = want.get(reason, 0) + 1
        assert set(want) == {D.TOO_SHORT, D.STUN_MALFORMED, D.DTLS_UNKNOWN_ADDRESS, D.SRTP_UNKNOWN_ADDRESS, D.UNKNOWN_PROTOCOL}
        await drops.expect(want)
        assert live.node.counters.datagrams_in - drops.datagrams_base >= len(datagrams)
        assert all(received(s) == [] for s in socks), "the node answered a stranger"
    finally:
        for s in socks:
            s.close()
    await still_flowing(live, before)


async def test_truncated_rtp_and_rtcp_from_unknown_addresses(live: Live) -> None:
    """Real-looking RTP and RTCP headers, and copies of alice's own packets, from other ports."""
    await wait_for(lambda: bool(live.sent_video), 5, "a captured packet")
    before, drops = live.frames(), Drops(live.node)
    ssrc = next(iter(live.alice.tracks))
    sr = struct.pack("!BBHI", 0x80, 200, 6, ssrc) + bytes(20)
    whole = [rtp(1, ssrc, b"\x00" * 40, pt=live.video_pt), sr, live.sent_video[-1]]
    datagrams = [p[:n] for p in whole for n in range(1, len(p) + 1)]
    sock = stranger()
    try:
        await send_all(sock, live.media, datagrams)
        short = sum(1 for d in datagrams if len(d) < 4)
        await drops.expect({D.TOO_SHORT: short, D.SRTP_UNKNOWN_ADDRESS: len(datagrams) - short})
        assert received(sock) == []
    finally:
        sock.close()
    await still_flowing(live, before)


# -- 2. STUN -----------------------------------------------------------------------------------
async def test_stun_abuse(live: Live) -> None:
    alice_t = live.alice.publisher
    viewer_t = _participant(live.node, "viewer").subscriber
    assert alice_t is not None and viewer_t is not None
    node_pwd = re.search(r"a=ice-pwd:(\S+)", live.pub.pc.remoteDescription.sdp)[1]  # type: ignore[index]
    alice_remote = alice_t.remote_ufrag
    before, drops = live.frames(), Drops(live.node)

    valid_looking = stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", "not-the-password-at-all")
    flipped = bytearray(stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", node_pwd)[:-8])
    flipped[-1] ^= 1  # one bit of the right password's HMAC, then a FINGERPRINT that matches again
    bad_integrity = [
        valid_looking,  # wrong password, USE-CANDIDATE: must not move alice
        stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", "x" * 22, use_candidate=False),
        stun_check(f"{alice_t.ice.ufrag}:WRONG", node_pwd),  # the right password, the wrong remote ufrag
        stun_check(f"{viewer_t.ice.ufrag}:{viewer_t.remote_ufrag}", node_pwd),  # alice's password on the viewer
        bytes(flipped) + struct.pack("!HHI", 0x8028, 4, stun.message_fingerprint(bytes(flipped))),
    ]
    unknown_user = [
        stun_check("nosuchuf:abcd", "x" * 22),
        stun_check(f"{alice_t.ice.ufrag[::-1]}x:{alice_remote}", node_pwd),
        stun_check(None, "x" * 22),  # no USERNAME
        stun_check("nocolonhere", "x" * 22),
    ]
    good = stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", node_pwd)
    bad_fp = bytearray(good)
    bad_fp[-1] ^= 0xFF
    malformed = [
        b"\x00\x01\x00",  # shorter than a header (and than 4: too short)
        good[:19],
        good[:-1],  # length field no longer matches
        good + b"\x00\x00\x00\x00",
        bytes(bad_fp),  # FINGERPRINT does not match
        stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", node_pwd, fingerprint=False),  # no FINGERPRINT
        stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", None),  # no MESSAGE-INTEGRITY
        b"\x00\x05" + good[2:],  # an unknown method
        good[:2] + struct.pack("!H", 8) + good[4:20] + struct.pack("!HH", 0x0020, 4) + b"\x00\x07\x00\x00",  # XOR-MAPPED-ADDRESS of family 7
        good[:2] + struct.pack("!H", 8) + good[4:20] + struct.pack("!HH", 0x0006, 4) + b"\xff\xfe\xfd\xfc",  # USERNAME not UTF-8
    ]
    unexpected = [
        stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", node_pwd, cls=stun.Class.INDICATION),
        stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", node_pwd, cls=stun.Class.RESPONSE),
        stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", node_pwd, cls=stun.Class.ERROR),
        stun_check(f"{alice_t.ice.ufrag}:{alice_remote}", node_pwd, method=stun.Method.ALLOCATE),
    ]
    socks = [stranger() for _ in range(3)]
    try:
        for _ in range(3):
            for sock in socks:
                await send_all(sock, live.media, bad_integrity + unknown_user + malformed + unexpected)
        rounds = 3 * len(socks)
        too_short = sum(1 for d in malformed if len(d) < 4)
        await drops.expect(
            {
                D.STUN_BAD_INTEGRITY: rounds * len(bad_integrity),
                D.STUN_UNKNOWN_USER: rounds * len(unknown_user),
                D.STUN_MALFORMED: rounds * (len(malformed) - too_short),
                D.TOO_SHORT: rounds * too_short,
                D.STUN_UNEXPECTED: rounds * len(unexpected),
            }
        )
        assert all(received(s) == [] for s in socks), "the node answered an unauthenticated check"
        assert alice_t.addr == live.alice_addr and viewer_t.addr is not None
        assert viewer_t.addr not in {s.getsockname() for s in socks}
    finally:
        for s in socks:
            s.close()
    await still_flowing(live, before)


# -- 3. mallory's own sessions, stage by stage -------------------------------------------------
async def test_mallory_stage_by_stage(live: Live) -> None:
    before, drops = live.frames(), Drops(live.node)
    mallory = RawPeer(live, "mallory")
    sam = RawPeer(live, "sam")
    stranger_sock = stranger()
    ssrc = 0x4D414C4C
    try:
        await mallory.post(f"/whip/{ROOM}", video_ssrc=ssrc)
        t = mallory.transport
        # signaled, no check yet: nothing is bound to her address
        mallory.send(dtls_record(22, 0, b"\x01" + bytes(40)))
        mallory.send(b"\x80\x60" + bytes(30))
        await drops.expect({D.DTLS_UNKNOWN_ADDRESS: 1, D.SRTP_UNKNOWN_ADDRESS: 1})
        assert t.state is TransportState.NEW and t.addr is None

        # a check from a stranger's socket with her username but a wrong password binds nothing
        assert mallory.answer is not None
        stranger_sock.sendto(stun_check(f"{mallory.answer.ufrag}:{mallory.ice.ufrag}", "z" * 24), live.media)
        await drops.expect({D.DTLS_UNKNOWN_ADDRESS: 1, D.SRTP_UNKNOWN_ADDRESS: 1, D.STUN_BAD_INTEGRITY: 1})
        assert t.state is TransportState.NEW and t.addr is None and received(stranger_sock) == []
        await mallory.connect_ice()
        assert t.addr == mallory.addr and t.state is TransportState.CONNECTING

        # bound, DTLS not done: SRTP is early, DTLS that is not whole records is refused
        drops = Drops(live.node)
        for n in (12, 40, 200):
            mallory.send(rtp(1, ssrc, bytes(n)))
        for junk in (
            b"\x16\xfe\xfd\x00",  # a record header cut short
            b"\x17" + os.urandom(30),
            dtls_record(22, 0, b"abc")[:-1],  # body cut short
            dtls_record(22, 0, b"abc", version=0x0303),  # TLS, not DTLS
        ):
            mallory.send(junk)
        stranger_sock.sendto(dtls_record(22, 0, b"\x01" + bytes(60)), live.media)  # a ClientHello from elsewhere
        await drops.expect({D.SRTP_NOT_READY: 3, D.DTLS_REJECTED: 4, D.DTLS_UNKNOWN_ADDRESS: 1})
        assert t.state is TransportState.CONNECTING

        # the handshake still completes after all that
        await mallory.handshake()
        assert t.state is TransportState.CONNECTED

        # connected: SRTP that fails, is replayed, or says nonsense once decrypted
        drops = Drops(live.node)
        track = _participant(live.node, "mallory").tracks[ssrc]
        key = mallory.protect(rtp(1, ssrc, VP8_KEYFRAME_HEAD + bytes(100)))
        mallory.send(key)
        await wait_for(lambda: track.stats.packets == 1, 5, "mallory's packet accepted")
        tampered = bytearray(mallory.protect(rtp(2, ssrc, bytes(100))))
        tampered[30] ^= 0x40
        assert mallory.dtls is not None and mallory.dtls.srtp_keys is not None
        profile = mallory.dtls.srtp_keys.profile
        wrong = SrtpKeys(
            profile,
            os.urandom(profile.key_length),
            os.urandom(profile.salt_length),
            os.urandom(profile.key_length),
            os.urandom(profile.salt_length),
        )
        wrong_tx = SrtpContext.outbound(wrong)
        forged = [wrong_tx.protect_rtp_bytes(rtp(3 + i, ssrc, bytes(60))) for i in range(5)]
        forged_rtcp = wrong_tx.protect_rtcp_bytes(struct.pack("!BBHI", 0x80, 201, 1, ssrc))
        wrong_tx.close()
        auth_failed = [bytes(tampered), *(f for f in forged if f is not None), forged_rtcp or b""]
        for data in [key, key, *auth_failed]:
            mallory.send(data)
        mallory.send(mallory.protect(rtp(10, 0xBAD0BAD0, bytes(50))))  # an SSRC she never signaled
        mallory.send(mallory.protect_rtcp(struct.pack("!BBHI", 0x80, 201, 7, ssrc) + bytes(4)))  # RR claiming 32 bytes
        unseen = mallory.protect(rtp(30, ssrc, bytes(100)))  # cut short, never sent whole
        truncated = [unseen[:n] for n in range(4, len(unseen))]
        for data in truncated:
            mallory.send(data)
        await drops.expect(
            {D.SRTP_REPLAY: 2, D.RTP_UNKNOWN_SSRC: 1, D.RTCP_MALFORMED: 1},
            groups=[((D.SRTP_AUTH_FAILED, D.SRTP_OTHER), len(auth_failed) + len(truncated))],
        )
        assert drops.delta(D.SRTP_AUTH_FAILED) >= len(auth_failed)
        assert track.stats.packets == 1  # nothing else got through

        # DTLS from her address after the handshake: refused or ignored, never fatal
        drops = Drops(live.node)
        for junk in (
            dtls_record(21, 0, b"\x02\x28"),  # plaintext fatal alert
            dtls_record(21, 0, b"\x01\x00"),  # plaintext close_notify
            dtls_record(22, 0, b"\x01" + bytes(60)),  # a new ClientHello
            dtls_record(23, 1, os.urandom(40), seq=99),  # application data that fails decryption
            dtls_record(21, 1, os.urandom(30), seq=100),  # an "encrypted" alert that fails decryption
        ):
            mallory.send(junk)
        for junk in (b"\x15\xfe\xfd\x00", dtls_record(21, 0, b"\x02\x28")[:-1]):
            mallory.send(junk)
        await drops.expect({D.DTLS_REJECTED: 2})
        assert t.state is TransportState.CONNECTED
        mallory.send(mallory.check(use_candidate=False))  # consent still answered
        await wait_for(lambda: len(mallory.responses) == 2, 5, "consent answer")

        # a subscriber to mallory: media from a subscriber, and nonsense that authenticates
        await sam.post(f"/whep/{ROOM}/mallory")
        await sam.connect_ice()
        await sam.handshake()
        drops = Drops(live.node)
        sam.send(sam.protect(rtp(1, 0x5A5A5A5A, bytes(40))))
        await drops.expect({D.NOT_PUBLISHING: 1})
        drops = Drops(live.node)
        mallory.send(mallory.protect(rtp(20, ssrc, VP8_KEYFRAME_HEAD + bytes(100))))
        await wait_for(lambda: len(sam.rtp_in) == 1, 5, "mallory's keyframe forwarded to sam")
        assert mallory.tx is not None
        for bad_header in (
            rtp(21, ssrc, b"\xbe\xde\x00\x40" + bytes(8), b0=0x90),  # extension block runs past the end
            rtp(21, ssrc, bytes(8), b0=0x8F),  # 15 CSRCs in 8 bytes
        ):
            assert mallory.tx.protect_rtp_bytes(bad_header) is None  # libsrtp checks headers both ways
        nonsense = [
            rtp(22, ssrc, bytes(8) + b"\x40", b0=0xA0),  # padding longer than the packet (encrypted, so it passes libsrtp)
            rtp(23, ssrc, bytes(40), pt=50),  # a payload type she never negotiated
            rtp(24, ssrc, bytes(40), pt=VP8_PT | 0x80),  # marker bit and the right type: fine, for contrast
        ]
        for data in nonsense:
            mallory.send(mallory.protect(data))
        mallory.send(mallory.protect(rtp(25, ssrc, bytes(100))))
        await wait_for(lambda: len(sam.rtp_in) == 3, 5, "mallory's good packets forwarded")
        await drops.expect({D.RTP_MALFORMED: 2})
        assert sam.srtp_bad == 0
        assert not live.node.sessions.sessions[mallory.location.rsplit("/", 1)[1]].participant.closed
    finally:
        mallory.close()
        sam.close()
        stranger_sock.close()
    await still_flowing(live, before)


# -- 4. alice's own 5-tuple --------------------------------------------------------------------
async def test_bad_input_from_the_publishers_own_address(live: Live) -> None:
    await wait_for(lambda: len(live.sent_video) >= 5, 5, "captured packets")
    before, drops = live.frames(), Drops(live.node)
    sent = live.sent_video[-5:]
    rng = random.Random(5764)

    # everything that is not SRTP, from her address
    # (not the empty datagram: asyncio's datagram transport does not send one)
    others = [d for d in random_datagrams(seed=11) if d and expected_class(d) is not D.SRTP_UNKNOWN_ADDRESS]
    dtls_malformed = [d for d in others if expected_class(d) is D.DTLS_UNKNOWN_ADDRESS]
    for data in others:
        await live.conn.send(data)
    for data in (
        dtls_record(21, 0, b"\x02\x28"),
        dtls_record(21, 0, b"\x01\x00"),
        dtls_record(23, 1, os.urandom(40), seq=12345),
        dtls_record(22, 1, os.urandom(60)),
        dtls_record(22, 2, os.urandom(60)),
    ):
        await live.conn.send(data)
    await drops.expect(
        {
            D.TOO_SHORT: sum(1 for d in others if expected_class(d) is D.TOO_SHORT),
            D.UNKNOWN_PROTOCOL: sum(1 for d in others if expected_class(d) is D.UNKNOWN_PROTOCOL),
            D.STUN_MALFORMED: sum(1 for d in others if expected_class(d) is D.STUN_MALFORMED),
            D.DTLS_REJECTED: len(dtls_malformed),
        }
    )
    await still_flowing(live, before)

    # SRTP from her address that must not reach the subscriber
    before, drops = live.frames(), Drops(live.node)
    srtp_errors = live.node.counters.srtp_errors[0]
    replays = sent + sent[:2]
    # libsrtp checks the replay window before the tag: a seen packet with its payload changed is a replay
    payload_changed = []
    ssrc_changed = []  # a changed SSRC is a stream never seen: its tag fails
    for data in sent:
        b = bytearray(data)
        b[rng.randrange(12, len(b))] ^= 1 << rng.randrange(8)
        payload_changed.append(bytes(b))
        b = bytearray(data)
        b[8 + rng.randrange(4)] ^= 1 << rng.randrange(8)
        ssrc_changed.append(bytes(b))
    forged = [bytes([0x80, live.video_pt]) + os.urandom(n) for n in (30, 200, 1000)]
    # shorter than header + tag: refused before any check (bad_param)
    too_short = [sent[0][:n] for n in (4, 8, 11, 12, 13, 20)] + [bytes([0x80, live.video_pt]) + os.urandom(10)]
    for data in replays + payload_changed + ssrc_changed + forged + too_short + [sent[0][:-1]]:
        await live.conn.send(data)
    # packets that authenticate with her keys but carry nonsense
    await live.dtls._send_rtp(rtp(7, 0xDEADBEEF, bytes(60), pt=live.video_pt))
    await live.dtls._send_rtp(struct.pack("!BBHI", 0x80, 201, 9, 0x11223344) + bytes(4))
    await drops.expect(
        {
            D.SRTP_REPLAY: len(replays) + len(payload_changed) + 1,  # + the seen packet cut by one byte
            D.SRTP_AUTH_FAILED: len(ssrc_changed) + len(forged),
            D.SRTP_OTHER: len(too_short),
            D.RTP_UNKNOWN_SSRC: 1,
            D.RTCP_MALFORMED: 1,
        }
    )
    assert live.node.counters.srtp_errors[0] - srtp_errors == len(replays) + 2 * len(sent) + len(forged) + len(too_short) + 1
    await still_flowing(live, before)

    # STUN from her address with the wrong password, or for someone else
    before, drops = live.frames(), Drops(live.node)
    alice_t = live.alice.publisher
    assert alice_t is not None
    await live.conn.send(stun_check(f"{alice_t.ice.ufrag}:{alice_t.remote_ufrag}", "y" * 24))
    await live.conn.send(stun_check("nobody00:abcd", "y" * 24))
    await drops.expect({D.STUN_BAD_INTEGRITY: 1, D.STUN_UNKNOWN_USER: 1})
    await still_flowing(live, before)
