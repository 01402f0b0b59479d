"""PeerTransport on a real MediaPort against a raw client: STUN checks, a real DTLS handshake in
either role, SRTP both ways, consent and setup deadlines on passed-in time, teardown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from aioice import stun

from sfu import clock
from sfu.counters import Direction, DropReason
from sfu.packet import rtcp
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.transport.dtls import DtlsFailure, DtlsRole, DtlsState
from sfu.transport.dtls_pool import HandshakePool
from sfu.transport.ice import BindingCheck, IceCredentials, parse_check
from sfu.transport.peer import (
    CONSENT_TIMEOUT_MS,
    EXTRA_ADDRESS_GRACE_MS,
    MAX_EXTRA_ADDRESSES,
    SETUP_TIMEOUT_MS,
    CloseReason,
    PeerTransport,
    TransportState,
)
from sfu.transport.udp import MediaPort
from tests.sfu.routing import harness
from tests.sfu.routing.harness import (
    NODE_CERT,
    Link,
    RawClient,
    RecordingSink,
    binding_request,
    connect,
    new_peer,
    open_link,
    open_port,
)

ROLES = [DtlsRole.SERVER, DtlsRole.CLIENT]


@pytest.fixture(autouse=True, params=["dtls-on-loop", "dtls-in-pool"])
def handshake_pool(request: pytest.FixtureRequest) -> Iterator[HandshakePool | None]:
    """Every test twice: handshake steps on the loop, and in a thread pool (sfu.transport.dtls_pool)."""
    pool = HandshakePool(2) if request.param == "dtls-in-pool" else None
    harness.handshake_pools.append(pool)
    yield pool
    harness.handshake_pools.pop()
    if pool is not None:
        pool.close()


def rtp(seq: int, payload: bytes = b"payload-bytes", ssrc: int = 0x1234ABCD, pt: int = 96) -> bytes:
    return bytes(RtpPacket(RtpHeader(payload_type=pt, sequence_number=seq, timestamp=seq * 960, ssrc=ssrc), payload))


def state(peer: PeerTransport) -> TransportState:
    """Read through a call so the type checker does not narrow across awaits."""
    return peer.state


@pytest.fixture
async def port() -> AsyncIterator[MediaPort]:
    p = open_port()
    yield p
    p.close()


@pytest.fixture
async def client() -> AsyncIterator[RawClient]:
    c = RawClient()
    yield c
    c.close()


@pytest.fixture(params=ROLES, ids=lambda r: f"node-{r.value}")
async def link(request: pytest.FixtureRequest) -> AsyncIterator[Link]:
    made = await open_link(request.param)
    yield made
    made.close()


# -- ICE -----------------------------------------------------------------------------------------


async def test_first_check_learns_the_address_and_starts_connecting(port: MediaPort, client: RawClient) -> None:
    peer = new_peer(port, client)
    assert peer.state is TransportState.NEW and peer.addr is None
    assert port.peer_count == 1
    response = await client.check(peer, port)
    assert response.message_class is stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == client.addr
    assert response.check_message_integrity(peer.ice.pwd.encode())
    assert state(peer) is TransportState.CONNECTING
    assert peer.addr == client.addr
    assert peer.dtls.state is DtlsState.CONNECTING  # server role: waiting for the ClientHello


@pytest.mark.parametrize(
    "kwargs",
    [{"remote": "someone"}, {"pwd": "wrong-password-wrong-password"}],
    ids=["other-remote-ufrag", "wrong-password"],
)
async def test_unauthenticated_check_changes_nothing(port: MediaPort, client: RawClient, kwargs: dict[str, str]) -> None:
    peer = new_peer(port, client)
    remote = kwargs.get("remote", client.ufrag)
    pwd = kwargs.get("pwd", peer.ice.pwd)
    client.send(binding_request(f"{peer.ice.ufrag}:{remote}", pwd), ("127.0.0.1", port.port))
    assert await client.nothing_arrives()
    assert port.counters.drops[DropReason.STUN_BAD_INTEGRITY] == 1
    assert state(peer) is TransportState.NEW and peer.addr is None


@pytest.mark.parametrize("node_role", ROLES, ids=lambda r: f"node-{r.value}")
async def test_handshake_connects_and_tells_the_sink_once(port: MediaPort, client: RawClient, node_role: DtlsRole) -> None:
    peer = new_peer(port, client, node_role=node_role)
    sink = RecordingSink()
    peer.sink = sink
    await connect(peer, client, port, node_role)
    assert state(peer) is TransportState.CONNECTED
    assert peer.dtls.state is DtlsState.CONNECTED
    assert len(sink.connected) == 1
    assert peer.rx is not None and peer.tx is not None
    assert client.dtls is not None and client.dtls.srtp_keys is not None
    assert peer.profile is client.dtls.srtp_keys.profile
    # each side authenticated the other's certificate by fingerprint
    assert peer.dtls.srtp_keys is not None
    assert peer.dtls.srtp_keys.local_key == client.dtls.srtp_keys.remote_key


async def test_node_retransmits_a_lost_client_hello(port: MediaPort, client: RawClient) -> None:
    """As DTLS client the node must resend its first flight on its own timer (about 1 s)."""
    peer = new_peer(port, client, node_role=DtlsRole.CLIENT)
    sink = RecordingSink()
    peer.sink = sink
    await client.check(peer, port)
    lost = await client.recv()  # the ClientHello, lost on the way
    assert lost[0] == 22 and lost[13] == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.handshake(peer, port, DtlsRole.CLIENT)
    async with asyncio.timeout(2):
        while state(peer) is not TransportState.CONNECTED:
            await asyncio.sleep(0.002)
    assert 0.5 < loop.time() - started < 3.0
    assert sink.connected and peer.dtls.datagrams_sent >= 3


async def test_wrong_client_fingerprint_fails_the_transport(port: MediaPort, client: RawClient) -> None:
    peer = new_peer(port, client, remote_fingerprints=[("sha-256", NODE_CERT.fingerprint())])
    sink = RecordingSink()
    peer.sink = sink
    await client.check(peer, port)
    # the node checks the fingerprint once the handshake is done: the client completes, the
    # node refuses and says so with an alert
    await client.handshake(peer, port, DtlsRole.SERVER)
    assert state(peer) is TransportState.CLOSED
    assert peer.dtls.failure_reason is DtlsFailure.FINGERPRINT_MISMATCH
    assert client.dtls is not None
    client.dtls.feed(await client.recv(), clock.now_ms())
    assert client.dtls.state is DtlsState.CLOSED
    assert sink.closed == [CloseReason.DTLS_FAILED]
    assert port.peer_count == 0


async def test_use_candidate_from_a_new_address_moves_the_session(link: Link) -> None:
    other = RawClient()
    try:
        old = link.peer.addr
        # a check without USE-CANDIDATE from elsewhere is answered but does not move media
        other.send(link.client.check_for(link.peer, use_candidate=False), link.port_addr)
        await other.recv()
        assert link.peer.addr == old
        # ...though media from there is taken already (a restarted ICE's new pair before its nomination)
        other.send(link.client.protect(rtp(10)), link.port_addr)
        await link.sink.wait(1)
        moved_ms = clock.now_ms()
        other.send(link.client.check_for(link.peer, use_candidate=True), link.port_addr)
        await other.recv()
        assert link.peer.addr == other.addr
        # media now flows to and from the new address only
        out = rtp(1)
        link.peer.out_view[: len(out)] = out
        assert link.peer.send_rtp(len(out))
        assert await link.client.nothing_arrives()
        protected = await other.recv()
        assert link.client.rx is not None
        assert link.client.rx.unprotect_rtp_bytes(protected) == out
        # what is still in flight on the old address is taken for a grace period, then refused
        link.client.send(link.client.protect(rtp(2)), link.port_addr)
        await link.sink.wait(2)
        link.peer.tick(moved_ms + EXTRA_ADDRESS_GRACE_MS - 1)
        link.client.send(link.client.protect(rtp(3)), link.port_addr)
        await link.sink.wait(3)
        link.peer.tick(clock.now_ms() + EXTRA_ADDRESS_GRACE_MS)
        link.client.send(link.client.protect(rtp(4)), link.port_addr)
        await _until_drop(link, DropReason.SRTP_UNKNOWN_ADDRESS)
        other.send(link.client.protect(rtp(5)), link.port_addr)
        await link.sink.wait(4)
        assert link.sink.rtp == [rtp(10), rtp(2), rtp(3), rtp(5)]
    finally:
        other.close()


async def test_extra_addresses_are_bounded_and_never_taken_from_another_peer(link: Link) -> None:
    port = link.port
    others = [RawClient() for _ in range(MAX_EXTRA_ADDRESSES + 1)]
    second = await open_link(port=port)
    try:
        for other in others:  # authenticated checks from more places than are kept
            other.send(link.client.check_for(link.peer, use_candidate=False), link.port_addr)
            await other.recv()
        assert [port.peer_at(o.addr) is link.peer for o in others] == [False] + [True] * MAX_EXTRA_ADDRESSES
        assert port.peer_at(link.client.addr) is link.peer and link.peer.addr == link.client.addr
        # a check from the address another session uses does not take it
        second.client.send(link.client.check_for(link.peer, use_candidate=False), link.port_addr)
        await second.client.recv()
        assert port.peer_at(second.client.addr) is second.peer
        link.peer.tick(clock.now_ms() + EXTRA_ADDRESS_GRACE_MS)
        assert [port.peer_at(o.addr) for o in others] == [None] * len(others)
        assert port.peer_at(link.client.addr) is link.peer  # its own address stays
        assert port.peer_at(second.client.addr) is second.peer
    finally:
        second.client.close()
        for other in others:
            other.close()


async def _until_drop(link: Link, reason: DropReason, count: int = 1) -> None:
    async with asyncio.timeout(2):
        while link.counters.drops[reason] < count:
            await asyncio.sleep(0.002)


# -- SRTP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet",
    [rtp(1), rtp(2, payload=bytes(1000)), rtp(65535, payload=b"\x10\x00\x9d"), rtp(7, payload=b"")],
    ids=["small", "1000B", "seq-65535", "empty-payload"],
)
async def test_client_srtp_reaches_the_sink_as_clear_rtp(link: Link, packet: bytes) -> None:
    link.client.send(link.client.protect(packet), link.port_addr)
    await link.sink.wait(1)
    assert link.sink.rtp == [packet]
    assert link.counters.srtp_errors == [0, 0]


async def test_client_srtcp_reaches_the_sink_as_clear_rtcp(link: Link) -> None:
    packet = rtcp.sender_report(0x1234ABCD, ntp_timestamp=0x0102030405060708, rtp_timestamp=99, packet_count=5, octet_count=500)
    link.client.send(link.client.protect_rtcp(packet), link.port_addr)
    await link.sink.wait(1, rtcp=True)
    assert link.sink.rtcp == [packet]
    assert link.sink.rtp == []
    assert link.counters.rtcp_in == 1


async def test_send_rtp_protects_in_place_and_the_client_unprotects(link: Link) -> None:
    sent = [rtp(100 + i, payload=bytes([i]) * (10 + i)) for i in range(5)]
    for packet in sent:
        link.peer.out_view[: len(packet)] = packet
        assert link.peer.send_rtp(len(packet))
    got = [await link.client.recv_rtp() for _ in sent]
    assert got == sent


async def test_send_rtcp_reaches_the_client(link: Link) -> None:
    pli = rtcp.pli(0x4C430001, 0x1234ABCD)
    assert link.peer.send_rtcp(pli)
    assert await link.client.recv_rtcp() == pli
    assert link.counters.rtcp_out == 1


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("flip-tag", DropReason.SRTP_AUTH_FAILED),
        ("replay", DropReason.SRTP_REPLAY),
        ("other-keys", DropReason.SRTP_AUTH_FAILED),
    ],
)
async def test_bad_srtp_is_counted_and_not_delivered(link: Link, tamper: str, reason: DropReason) -> None:
    good = link.client.protect(rtp(10))
    if tamper == "flip-tag":
        bad = good[:-1] + bytes([good[-1] ^ 1])
    elif tamper == "replay":
        link.client.send(good, link.port_addr)
        await link.sink.wait(1)
        bad = good
    else:
        other = RawClient()
        other.tx = link.client.rx  # keys of the other direction: authenticates nowhere here
        bad = other.protect(rtp(11))
        other.close()
    delivered = len(link.sink.rtp)
    link.client.send(bad, link.port_addr)
    await _until_drop(link, reason)
    assert len(link.sink.rtp) == delivered
    assert link.counters.srtp_errors[Direction.INBOUND] == 1
    assert state(link.peer) is TransportState.CONNECTED  # garbage never ends a session


async def test_srtp_before_dtls_is_not_ready(port: MediaPort, client: RawClient) -> None:
    peer = new_peer(port, client)
    peer.sink = RecordingSink()
    await client.check(peer, port)
    client.send(rtp(1) + bytes(10), ("127.0.0.1", port.port))
    async with asyncio.timeout(2):
        while port.counters.drops[DropReason.SRTP_NOT_READY] == 0:
            await asyncio.sleep(0.002)
    assert state(peer) is TransportState.CONNECTING


async def test_send_before_connected_is_refused(port: MediaPort, client: RawClient) -> None:
    peer = new_peer(port, client)
    packet = rtp(1)
    peer.out_view[: len(packet)] = packet
    assert peer.send_rtp(len(packet)) is False
    assert peer.send_rtcp(rtcp.pli(1, 2)) is False
    await client.check(peer, port)
    assert peer.send_rtp(len(packet)) is False  # address known, keys not yet


async def test_garbage_dtls_from_the_bound_address_is_counted(link: Link) -> None:
    garbage = bytes([23, 0xFE, 0xFD]) + bytes(8) + b"\x00\x40" + bytes(10)  # record longer than the datagram
    link.client.send(garbage, link.port_addr)
    link.client.send(garbage[:5], link.port_addr)  # shorter than a record header
    await _until_drop(link, DropReason.DTLS_REJECTED, 2)
    assert state(link.peer) is TransportState.CONNECTED
    assert sum(link.counters.drops) == 2


# -- timers on passed-in time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("advance_ms", "closed"),
    [(CONSENT_TIMEOUT_MS - 1, False), (CONSENT_TIMEOUT_MS, False), (CONSENT_TIMEOUT_MS + 1, True)],
)
async def test_consent_expires_30_s_after_the_last_check(link: Link, advance_ms: int, closed: bool) -> None:
    last = link.peer.last_consent_ms
    link.peer.tick(last + advance_ms)
    if closed:
        assert state(link.peer) is TransportState.CLOSED
        assert link.sink.closed == [CloseReason.CONSENT_EXPIRED]
    else:
        assert state(link.peer) is TransportState.CONNECTED
        assert link.sink.closed == []


async def test_a_check_refreshes_consent(link: Link) -> None:
    first = link.peer.last_consent_ms
    await link.client.check(link.peer, link.port)
    refreshed = link.peer.last_consent_ms
    assert refreshed >= first
    link.peer.tick(refreshed + CONSENT_TIMEOUT_MS)
    assert state(link.peer) is TransportState.CONNECTED
    link.peer.tick(refreshed + CONSENT_TIMEOUT_MS + 1)
    assert link.sink.closed == [CloseReason.CONSENT_EXPIRED]


def _as_if_silent_for(peer: PeerTransport, silent_ms: int) -> int:
    """Time passed in: the client's last check and datagram were ``silent_ms`` ago; returns now."""
    now = clock.now_ms()
    peer.last_consent_ms = peer.last_check_ms = now - silent_ms
    return now


@pytest.mark.parametrize("kind", ["srtp", "srtcp"])
async def test_authenticated_media_alone_keeps_consent(link: Link, kind: str) -> None:
    """Issue 11: a client that sends media or RTCP but no checks (libnice sends only Binding
    indications once connected) keeps its session: consent follows any authenticated datagram."""
    checked = _as_if_silent_for(link.peer, CONSENT_TIMEOUT_MS)  # the last check was 30 s ago
    if kind == "srtp":
        link.client.send(link.client.protect(rtp(1)), link.port_addr)
        await link.sink.wait(1)
    else:  # a subscriber-only client's receiver report
        link.client.send(link.client.protect_rtcp(rtcp.receiver_report(0x5151, [])), link.port_addr)
        await link.sink.wait(1, rtcp=True)
    arrived = link.peer.last_consent_ms
    assert arrived >= checked and link.peer.last_check_ms == checked - CONSENT_TIMEOUT_MS
    link.peer.tick(arrived + CONSENT_TIMEOUT_MS)  # 60 s after the last check, 30 s after the media
    assert state(link.peer) is TransportState.CONNECTED
    link.peer.tick(arrived + CONSENT_TIMEOUT_MS + 1)  # then silent for longer than the timeout
    assert link.sink.closed == [CloseReason.CONSENT_EXPIRED]


async def test_dtls_application_data_keeps_consent(link: Link) -> None:
    """A data-channel-only client's SCTP (in DTLS records) is authenticated traffic too."""
    assert link.client.dtls is not None
    checked = _as_if_silent_for(link.peer, CONSENT_TIMEOUT_MS)
    link.client.dtls.send_application(b"sctp bytes, as far as DTLS knows")
    async with asyncio.timeout(2):
        while link.peer.last_consent_ms < checked:
            await asyncio.sleep(0.002)
    link.peer.tick(checked + 1)
    assert state(link.peer) is TransportState.CONNECTED


async def test_unauthenticated_traffic_does_not_keep_consent(link: Link) -> None:
    """SRTP that fails authentication, garbage DTLS and Binding indications from the session's own
    address are no proof that the client is there: the silent session still expires."""
    now = _as_if_silent_for(link.peer, CONSENT_TIMEOUT_MS)
    forged = bytearray(link.client.protect(rtp(1)))
    forged[-1] ^= 0xFF
    link.client.send(bytes(forged), link.port_addr)
    link.client.send(bytes([23, 0xFE, 0xFD]) + bytes(8) + b"\x00\x40" + bytes(10), link.port_addr)
    indication = binding_request(None, "", integrity=False, use_candidate=False, controlling=False,
                                 message_class=stun.Class.INDICATION)
    link.client.send(indication, link.port_addr)
    async with asyncio.timeout(2):
        while (
            link.counters.drops[DropReason.SRTP_AUTH_FAILED] < 1
            or link.counters.drops[DropReason.DTLS_REJECTED] < 1
            or link.counters.stun_keepalives < 1
        ):
            await asyncio.sleep(0.002)
    assert link.peer.last_consent_ms == now - CONSENT_TIMEOUT_MS
    link.peer.tick(now + 1)
    assert link.sink.closed == [CloseReason.CONSENT_EXPIRED]


@pytest.mark.parametrize(
    ("stage", "advance_ms", "reason"),
    [
        ("new", SETUP_TIMEOUT_MS, None),
        ("new", SETUP_TIMEOUT_MS + 1, CloseReason.SETUP_TIMEOUT),
        ("checked", SETUP_TIMEOUT_MS, None),
        ("checked", SETUP_TIMEOUT_MS + 1, CloseReason.SETUP_TIMEOUT),
    ],
)
async def test_setup_timeout(
    port: MediaPort, client: RawClient, stage: str, advance_ms: int, reason: CloseReason | None
) -> None:
    created = 1_000_000
    peer = new_peer(port, client, now_ms=created)
    sink = RecordingSink()
    peer.sink = sink
    if stage == "checked":
        await client.check(peer, port)
        peer.last_consent_ms = created + advance_ms  # consent is fresh: only the setup deadline counts
    peer.tick(created + advance_ms)
    if reason is None:
        assert state(peer) is not TransportState.CLOSED
        assert sink.closed == []
    else:
        assert state(peer) is TransportState.CLOSED
        assert sink.closed == [reason]
        assert port.peer_count == 0


async def test_connected_transport_has_no_setup_deadline(link: Link) -> None:
    link.peer.last_consent_ms = link.peer.created_ms + 10 * SETUP_TIMEOUT_MS
    link.peer.tick(link.peer.created_ms + 10 * SETUP_TIMEOUT_MS)
    assert state(link.peer) is TransportState.CONNECTED


# -- teardown ------------------------------------------------------------------------------------


async def test_close_sends_an_alert_unbinds_and_tells_the_sink_once(link: Link) -> None:
    link.peer.close(CloseReason.LEFT)
    assert state(link.peer) is TransportState.CLOSED
    assert link.port.peer_count == 0
    assert link.peer.rx is None and link.peer.tx is None
    # the close_notify reaches the client, whose DTLS endpoint closes on it
    assert link.client.dtls is not None
    link.client.dtls.feed(await link.client.recv(), clock.now_ms())
    assert link.client.dtls.state is DtlsState.CLOSED
    # later media from the old address is unknown to the port
    link.client.send(link.client.protect(rtp(1)), link.port_addr)
    await _until_drop(link, DropReason.SRTP_UNKNOWN_ADDRESS)
    link.peer.close(CloseReason.NODE_SHUTDOWN)
    link.peer.tick(clock.now_ms() + 10 * CONSENT_TIMEOUT_MS)
    assert link.sink.closed == [CloseReason.LEFT]
    assert link.peer.sink is None
    assert link.peer.send_rtcp(rtcp.pli(1, 2)) is False


async def test_client_close_notify_closes_the_transport(link: Link) -> None:
    assert link.client.dtls is not None
    link.client.dtls.close()  # sends close_notify through the client socket
    async with asyncio.timeout(2):
        while state(link.peer) is not TransportState.CLOSED:
            await asyncio.sleep(0.002)
    assert link.sink.closed == [CloseReason.DTLS_CLOSED]
    assert link.port.peer_count == 0


async def test_close_before_any_check_sends_nothing(port: MediaPort, client: RawClient) -> None:
    peer = new_peer(port, client)
    sink = RecordingSink()
    peer.sink = sink
    peer.close(CloseReason.REPLACED)
    assert sink.closed == [CloseReason.REPLACED]
    assert port.peer_count == 0
    # its ufrag is unknown now
    client.send(client.check_for(peer), ("127.0.0.1", port.port))
    assert await client.nothing_arrives()
    assert port.counters.drops[DropReason.STUN_UNKNOWN_USER] == 1


async def test_many_peers_share_one_port(port: MediaPort) -> None:
    links = []
    try:
        for role in ROLES * 3:
            links.append(await open_link(role, port=port))
        assert port.peer_count == 6
        for i, lk in enumerate(links):
            lk.client.send(lk.client.protect(rtp(i, ssrc=0x100 + i)), lk.port_addr)
        for i, lk in enumerate(links):
            await lk.sink.wait(1)
            assert lk.sink.rtp == [rtp(i, ssrc=0x100 + i)]
    finally:
        for lk in links:
            lk.client.close()


# -- batched forwarding ----------------------------------------------------------------------------


async def test_forward_rtp_rewrites_bytes_1_to_11_and_protects(link: Link) -> None:
    src = rtp(7, payload=bytes(range(200)), ssrc=0x11111111, pt=100)
    assert link.peer.forward_rtp(memoryview(src), len(src), 0x80 | 96, 4242, 0xDEADBEEF, 0x22222222)
    assert link.client.rx is not None
    got = link.client.rx.unprotect_rtp_bytes(await link.client.recv())
    assert got is not None and got[0] == 0x80 and got[1] == 0x80 | 96
    assert int.from_bytes(got[2:4], "big") == 4242 and got[4:8] == bytes.fromhex("deadbeef")
    assert got[8:12] == bytes.fromhex("22222222") and got[12:] == bytes(range(200))


async def test_a_lane_keeps_one_address_when_the_session_moves_mid_batch(link: Link) -> None:
    other = RawClient()
    ring = link.port.out_ring
    try:
        ring.auto_flush = False  # as inside a reader wakeup: packets wait for the flush
        for seq in range(3):
            out = rtp(seq)
            link.peer.out_view[: len(out)] = out
            assert link.peer.send_rtp(len(out))
        check = parse_check(link.client.check_for(link.peer, use_candidate=True))
        assert isinstance(check, BindingCheck)
        link.peer.on_ice_check(other.addr, check, clock.now_ms())
        for seq in range(3, 6):
            src = rtp(seq)
            ts = int.from_bytes(src[4:8], "big")
            assert link.peer.forward_rtp(memoryview(src), len(src), 96, seq, ts, 0x1234ABCD)
        assert ring.n == 6
        assert link.port.flush() == 6
        assert link.client.rx is not None
        rx = link.client.rx
        assert [rx.unprotect_rtp_bytes(await link.client.recv()) for _ in range(3)] == [rtp(s) for s in range(3)]
        assert [rx.unprotect_rtp_bytes(await other.recv()) for _ in range(3)] == [rtp(s) for s in range(3, 6)]
    finally:
        ring.auto_flush = True
        other.close()


async def test_ice_restart_takes_new_credentials_and_keeps_srtp(link: Link) -> None:
    old_ufrag, old_pwd, old_client = link.peer.ice.ufrag, link.peer.ice.pwd, link.client.ufrag
    rx = link.peer.rx
    new = IceCredentials.generate()
    link.client.ufrag = "newclnt1"
    link.peer.restart_ice(new, link.client.ufrag)
    assert link.peer.ice is new and link.peer.remote_ufrag == "newclnt1"
    response = await link.client.check(link.peer, link.port, use_candidate=False)
    assert response.message_class is stun.Class.RESPONSE and response.check_message_integrity(new.pwd.encode())
    drops = link.counters.drops[DropReason.STUN_UNKNOWN_USER]
    link.client.send(binding_request(f"{old_ufrag}:{old_client}", old_pwd), link.port_addr)
    assert await link.client.nothing_arrives()
    assert link.counters.drops[DropReason.STUN_UNKNOWN_USER] == drops + 1
    assert link.peer.rx is rx and state(link.peer) is TransportState.CONNECTED
    assert link.peer.send_rtcp(b"\x80\xc9\x00\x01\x00\x00\x00\x01")  # still keyed, still addressed
    assert link.port.peer_count == 1
