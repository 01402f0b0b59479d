"""MediaPort: a real UDP port on 127.0.0.1 in the test's event loop, fed by real client sockets.

The peers are stand-ins (``RecordingPeer``) that record what the port hands them and, like
``PeerTransport``, bind the address a check came from.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioice import stun

from sfu.counters import DropReason, MediaCounters
from sfu.transport.ice import BindingCheck, IceCredentials
from sfu.transport.mmsg import key_of_address
from sfu.transport.ports import Address
from sfu.transport.udp import RECV_BUDGET, MediaPort
from tests.sfu.routing.harness import RawClient, binding_request, open_port


@dataclass
class RecordingPeer:
    port: MediaPort
    ice: IceCredentials = field(default_factory=IceCredentials.generate)
    remote_ufrag: str | None = None
    checks: list[tuple[Address, BindingCheck]] = field(default_factory=list)
    dtls: list[bytes] = field(default_factory=list)
    srtp: list[bytes] = field(default_factory=list)

    def on_ice_check(self, addr: Address, check: BindingCheck, now_ms: int) -> None:
        self.checks.append((addr, check))
        self.port.bind_address(addr, self)

    def on_dtls(self, data: bytes, now_ms: int) -> None:
        self.dtls.append(data)

    def on_srtp(self, cbuf: Any, view: memoryview, length: int, now_ms: int) -> None:
        # the port's buffer is reused by the next datagram: copy now
        self.srtp.append(bytes(view[:length]))


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.002)


@pytest.fixture
async def port() -> AsyncIterator[MediaPort]:
    p = open_port()
    yield p
    p.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[RawClient]]:
    made = [RawClient() for _ in range(3)]
    yield made
    for c in made:
        c.close()


def drops(port: MediaPort, reason: DropReason) -> int:
    return port.counters.drops[reason]


def check_bytes(peer: RecordingPeer, client: RawClient, **kwargs: Any) -> bytes:
    return binding_request(f"{peer.ice.ufrag}:{client.ufrag}", peer.ice.pwd, **kwargs)


async def bind(port: MediaPort, peer: RecordingPeer, client: RawClient) -> stun.Message:
    """Make the port learn ``client``'s address for ``peer`` with a real check; return the response."""
    peer.remote_ufrag = client.ufrag
    n = len(peer.checks)
    client.send(check_bytes(peer, client), ("127.0.0.1", port.port))
    response = stun.parse_message(await client.recv())
    await until(lambda: len(peer.checks) == n + 1)
    return response


def rtp(seq: int, size: int = 40, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 3000, 0x11223344) + bytes(i & 0xFF for i in range(size - 12))


RTCP_RR = struct.pack("!BBHI", 0x80, 201, 1, 0x11223344)
DTLS_RECORD = bytes([22, 0xFE, 0xFD]) + bytes(8) + struct.pack("!H", 5) + b"hello"


# -- lifecycle -----------------------------------------------------------------------------------


async def test_open_binds_an_ephemeral_port_and_close_releases_it() -> None:
    p = open_port()
    assert p.is_open and p.port != 0 and p.requested_port == 0
    number = p.port
    p.close()
    assert not p.is_open
    assert p.port == number  # remembered, so that reopening binds the same number
    assert p.sendto(b"\x80" * 20, ("127.0.0.1", 9)) is False
    p.close()  # twice is fine
    # the number is free again, and reopening takes it
    p.open(asyncio.get_running_loop())
    try:
        assert p.is_open and p.port == number
    finally:
        p.close()


# -- STUN ----------------------------------------------------------------------------------------


async def test_checks_dispatch_by_ufrag_and_bind_the_source(port: MediaPort, clients: list[RawClient]) -> None:
    a, b = RecordingPeer(port), RecordingPeer(port)
    port.add_peer(a)
    port.add_peer(b)
    assert port.peer_count == 2
    c1, c2, _ = clients
    for peer, client in ((a, c1), (b, c2)):
        response = await bind(port, peer, client)
        assert response.message_class is stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == client.addr
        assert response.check_message_integrity(peer.ice.pwd.encode())
    assert [addr for addr, _ in a.checks] == [c1.addr]
    assert [addr for addr, _ in b.checks] == [c2.addr]
    assert a.checks[0][1].use_candidate and a.checks[0][1].remote_ufrag == c1.ufrag
    # media from each bound address reaches its own peer
    c1.send(rtp(1), ("127.0.0.1", port.port))
    c2.send(rtp(2), ("127.0.0.1", port.port))
    await until(lambda: len(a.srtp) == 1 and len(b.srtp) == 1)
    assert a.srtp == [rtp(1)] and b.srtp == [rtp(2)]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p, c: binding_request(f"nobody:{c.ufrag}", p.ice.pwd), DropReason.STUN_UNKNOWN_USER),
        (lambda p, c: binding_request(f"{p.ice.ufrag}:{c.ufrag}", "not-the-password-at-all"), DropReason.STUN_BAD_INTEGRITY),
        (lambda p, c: binding_request(f"{p.ice.ufrag}:someone-else", p.ice.pwd), DropReason.STUN_BAD_INTEGRITY),
        (lambda p, c: binding_request(f"{p.ice.ufrag}:{c.ufrag}", p.ice.pwd, integrity=False), DropReason.STUN_MALFORMED),
        (lambda p, c: binding_request(None, p.ice.pwd), DropReason.STUN_UNKNOWN_USER),
        (
            lambda p, c: binding_request(f"{p.ice.ufrag}:{c.ufrag}", p.ice.pwd, message_class=stun.Class.INDICATION),
            DropReason.STUN_UNEXPECTED,
        ),
        (lambda p, c: b"\x00\x01\x00\x08" + bytes(16), DropReason.STUN_MALFORMED),
    ],
    ids=[
        "unknown-ufrag", "wrong-password", "wrong-remote-ufrag", "no-integrity", "no-username",
        "indication-from-no-session", "garbage",
    ],
)
async def test_refused_checks_are_counted_and_unanswered(
    port: MediaPort,
    clients: list[RawClient],
    make: Callable[[RecordingPeer, RawClient], bytes],
    reason: DropReason,
) -> None:
    peer = RecordingPeer(port)
    client = clients[0]
    peer.remote_ufrag = client.ufrag
    port.add_peer(peer)
    client.send(make(peer, client), ("127.0.0.1", port.port))
    await until(lambda: drops(port, reason) == 1)
    assert await client.nothing_arrives()
    assert peer.checks == []
    # not bound: media from that address is unknown
    client.send(rtp(5), ("127.0.0.1", port.port))
    await until(lambda: drops(port, DropReason.SRTP_UNKNOWN_ADDRESS) == 1)
    assert peer.srtp == []
    assert sum(port.counters.drops) == 2


async def test_binding_indications_from_a_session_are_keepalives(port: MediaPort, clients: list[RawClient]) -> None:
    """RFC 8445 §11: libnice sends a Binding indication every 25 s once connected.  From a bound
    address it is counted as a keepalive, not a drop, and not answered; it is no check."""
    peer = RecordingPeer(port)
    port.add_peer(peer)
    client = clients[0]
    await bind(port, peer, client)
    for message in (
        binding_request(None, "", integrity=False, use_candidate=False, controlling=False,
                        message_class=stun.Class.INDICATION),
        binding_request(f"{peer.ice.ufrag}:{client.ufrag}", peer.ice.pwd, message_class=stun.Class.INDICATION),
    ):
        client.send(message, ("127.0.0.1", port.port))
    await until(lambda: port.counters.stun_keepalives == 2)
    assert await client.nothing_arrives()
    assert len(peer.checks) == 1  # the binding check only
    assert sum(port.counters.drops) == 0


# -- demultiplexing (RFC 7983) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_byte", "outcome"),
    [
        (0, DropReason.STUN_MALFORMED),
        (3, DropReason.STUN_MALFORMED),
        (4, DropReason.UNKNOWN_PROTOCOL),
        (19, DropReason.UNKNOWN_PROTOCOL),
        (20, "dtls"),
        (63, "dtls"),
        (64, DropReason.UNKNOWN_PROTOCOL),
        (127, DropReason.UNKNOWN_PROTOCOL),
        (128, "srtp"),
        (191, "srtp"),
        (192, DropReason.UNKNOWN_PROTOCOL),
        (255, DropReason.UNKNOWN_PROTOCOL),
    ],
)
async def test_first_byte_ranges_from_a_bound_address(
    port: MediaPort, clients: list[RawClient], first_byte: int, outcome: DropReason | str
) -> None:
    peer = RecordingPeer(port)
    port.add_peer(peer)
    client = clients[0]
    await bind(port, peer, client)
    datagram = bytes([first_byte]) + bytes(range(1, 40))
    client.send(datagram, ("127.0.0.1", port.port))
    if isinstance(outcome, DropReason):
        await until(lambda: drops(port, outcome) == 1)
        assert peer.dtls == [] and peer.srtp == []
    else:
        got = peer.dtls if outcome == "dtls" else peer.srtp
        await until(lambda: len(got) == 1)
        assert got == [datagram]
        assert sum(port.counters.drops) == 0
    assert port.counters.datagrams_in == 2  # the check and this one


@pytest.mark.parametrize(
    "datagram",
    [rtp(7, size=12), rtp(8, size=1200), rtp(9, size=2000), RTCP_RR, RTCP_RR + bytes(500)],
    ids=["rtp-header-only", "rtp-1200", "rtp-2000", "rtcp-rr", "rtcp-long"],
)
async def test_srtp_reaches_the_peer_with_exact_bytes_and_length(
    port: MediaPort, clients: list[RawClient], datagram: bytes
) -> None:
    peer = RecordingPeer(port)
    port.add_peer(peer)
    client = clients[0]
    await bind(port, peer, client)
    client.send(datagram, ("127.0.0.1", port.port))
    await until(lambda: len(peer.srtp) == 1)
    assert peer.srtp == [datagram]


async def test_dtls_reaches_the_peer_as_bytes(port: MediaPort, clients: list[RawClient]) -> None:
    peer = RecordingPeer(port)
    port.add_peer(peer)
    client = clients[0]
    await bind(port, peer, client)
    for n in range(3):
        client.send(DTLS_RECORD + bytes([n]), ("127.0.0.1", port.port))
    await until(lambda: len(peer.dtls) == 3)
    assert peer.dtls == [DTLS_RECORD + bytes([n]) for n in range(3)]
    assert all(type(d) is bytes for d in peer.dtls)


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (rtp(1), DropReason.SRTP_UNKNOWN_ADDRESS),
        (RTCP_RR, DropReason.SRTP_UNKNOWN_ADDRESS),
        (DTLS_RECORD, DropReason.DTLS_UNKNOWN_ADDRESS),
        (b"\x80\x60\x00", DropReason.TOO_SHORT),
        (b"", DropReason.TOO_SHORT),
        (b"\x16", DropReason.TOO_SHORT),
    ],
)
async def test_datagrams_from_unknown_addresses(
    port: MediaPort, clients: list[RawClient], datagram: bytes, reason: DropReason
) -> None:
    peer = RecordingPeer(port)
    port.add_peer(peer)
    bound, stranger, _ = clients
    await bind(port, peer, bound)
    stranger.send(datagram, ("127.0.0.1", port.port))
    await until(lambda: drops(port, reason) == 1)
    assert peer.srtp == [] and peer.dtls == []
    assert sum(port.counters.drops) == 1


async def test_too_short_from_a_bound_address(port: MediaPort, clients: list[RawClient]) -> None:
    peer = RecordingPeer(port)
    port.add_peer(peer)
    client = clients[0]
    await bind(port, peer, client)
    for d in (b"\x80", b"\x80\x60", b"\x80\x60\x00"):
        client.send(d, ("127.0.0.1", port.port))
    client.send(b"\x80\x60\x00\x01", ("127.0.0.1", port.port))  # 4 bytes: long enough to route
    await until(lambda: len(peer.srtp) == 1)
    assert drops(port, DropReason.TOO_SHORT) == 3
    assert peer.srtp == [b"\x80\x60\x00\x01"]


# -- peers leaving -------------------------------------------------------------------------------


async def test_remove_peer_unbinds_its_addresses_and_ufrag(port: MediaPort, clients: list[RawClient]) -> None:
    gone, stays = RecordingPeer(port), RecordingPeer(port)
    port.add_peer(gone)
    port.add_peer(stays)
    c1, c2, c3 = clients
    await bind(port, gone, c1)
    await bind(port, gone, c3)  # a second address for the same peer
    await bind(port, stays, c2)
    port.remove_peer(gone)
    assert port.peer_count == 1
    for c in (c1, c3):
        c.send(rtp(1), ("127.0.0.1", port.port))
        c.send(DTLS_RECORD, ("127.0.0.1", port.port))
    c1.send(check_bytes(gone, c1), ("127.0.0.1", port.port))
    c2.send(rtp(2), ("127.0.0.1", port.port))
    await until(lambda: len(stays.srtp) == 1)
    await until(lambda: drops(port, DropReason.STUN_UNKNOWN_USER) == 1)
    assert drops(port, DropReason.SRTP_UNKNOWN_ADDRESS) == 2
    assert drops(port, DropReason.DTLS_UNKNOWN_ADDRESS) == 2
    assert gone.srtp == [] and gone.dtls == [] and len(gone.checks) == 2
    assert await c1.nothing_arrives()
    # removing again, or removing a peer that was never added, changes nothing
    port.remove_peer(gone)
    port.remove_peer(RecordingPeer(port))
    assert port.peer_count == 1


async def test_unbind_address_only_unbinds_its_own_peer(port: MediaPort, clients: list[RawClient]) -> None:
    a, b = RecordingPeer(port), RecordingPeer(port)
    port.add_peer(a)
    port.add_peer(b)
    client = clients[0]
    await bind(port, a, client)
    port.unbind_address(client.addr, b)  # not b's address: no effect
    client.send(rtp(1), ("127.0.0.1", port.port))
    await until(lambda: len(a.srtp) == 1)
    port.unbind_address(client.addr, a)
    client.send(rtp(2), ("127.0.0.1", port.port))
    await until(lambda: drops(port, DropReason.SRTP_UNKNOWN_ADDRESS) == 1)
    assert len(a.srtp) == 1


# -- load ----------------------------------------------------------------------------------------


async def test_a_burst_of_three_budgets_is_drained_across_wakeups(port: MediaPort, clients: list[RawClient]) -> None:
    peer = RecordingPeer(port)
    port.add_peer(peer)
    client = clients[0]
    await bind(port, peer, client)
    total = 3 * RECV_BUDGET
    loop = asyncio.get_running_loop()
    counters: MediaCounters = port.counters
    start = counters.datagrams_in
    # One marker per loop iteration records how far the reader got: a reader wakeup runs
    # between two markers, so consecutive differences are what one wakeup drained.
    marks: list[int] = []

    def marker() -> None:
        marks.append(counters.datagrams_in - start)
        if marks[-1] < total and len(marks) < 10_000:
            loop.call_soon(marker)

    for seq in range(total):  # all queued in the kernel before the loop runs again
        client.send(rtp(seq), ("127.0.0.1", port.port))
    loop.call_soon(marker)
    await until(lambda: counters.datagrams_in - start == total)
    steps = [b - a for a, b in zip(marks, marks[1:], strict=False) if b != a]
    assert marks[0] <= RECV_BUDGET
    assert max(steps + [marks[0]]) == RECV_BUDGET
    assert all(s <= RECV_BUDGET for s in steps)
    assert len([s for s in [marks[0], *steps] if s]) >= 3
    assert [struct.unpack_from("!H", d, 2)[0] for d in peer.srtp] == list(range(total))
    assert sum(counters.drops) == 0


async def test_sendto_a_closed_port_is_harmless(port: MediaPort, clients: list[RawClient]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    closed: Address = s.getsockname()
    s.close()
    for _ in range(20):
        port.sendto(rtp(1), closed)  # ICMP port unreachable comes back; nothing may raise
    await asyncio.sleep(0.05)
    # the port still receives and answers
    peer = RecordingPeer(port)
    port.add_peer(peer)
    response = await bind(port, peer, clients[0])
    assert response.attributes["XOR-MAPPED-ADDRESS"] == clients[0].addr
    assert port.is_open
    assert port.sendto(b"\x80" * 20, clients[0].addr) is True
    assert await clients[0].recv() == b"\x80" * 20


# -- batched sending ---------------------------------------------------------------------------


@dataclass
class EchoPeer(RecordingPeer):
    """Queues each SRTP datagram back to its sender in the port's send ring, as
    ``PeerTransport`` does, optionally followed by a ``sendto`` of ``trailer``."""

    trailer: bytes | None = None
    batching_seen: list[bool] = field(default_factory=list)

    def on_srtp(self, cbuf: Any, view: memoryview, length: int, now_ms: int) -> None:
        ring = self.port.out_ring
        self.batching_seen.append(not ring.auto_flush)
        addr = self.checks[-1][0]
        lane = ring.used  # one lane per packet: the ring fills up and flushes mid-batch too
        if lane == ring.lanes:
            self.port.flush()
            lane = 0
        ring.used = lane + 1
        k = lane * ring.depth
        ring.views[k][:length] = view[:length]
        ring.iov_lens[2 * k + 1] = length
        ring.names[2 * k] = key_of_address(*addr)
        ring.fills[lane] = 1
        if self.trailer is not None:
            self.port.sendto(self.trailer, addr)


async def recv_n(client: RawClient, n: int) -> list[bytes]:
    return [await client.recv() for _ in range(n)]


async def test_queued_packets_go_out_after_each_batch_in_order(port: MediaPort, clients: list[RawClient]) -> None:
    peer = EchoPeer(port)
    port.add_peer(peer)
    client = clients[0]
    await bind(port, peer, client)
    total = 3 * RECV_BUDGET
    for seq in range(total):
        client.send(rtp(seq), ("127.0.0.1", port.port))
    got = await recv_n(client, total)
    assert [struct.unpack_from("!H", d, 2)[0] for d in got] == list(range(total))
    assert got[5] == rtp(5)
    assert all(peer.batching_seen) and len(peer.batching_seen) == total
    assert port.out_ring.used == 0 and port.out_ring.auto_flush
    assert port.counters.drops[DropReason.SEND_FAILED] == 0


async def test_sendto_keeps_its_place_after_queued_media(port: MediaPort, clients: list[RawClient]) -> None:
    peer = EchoPeer(port, trailer=RTCP_RR)
    port.add_peer(peer)
    client = clients[0]
    await bind(port, peer, client)
    for seq in range(3):
        client.send(rtp(seq), ("127.0.0.1", port.port))
    got = await recv_n(client, 6)
    assert got == [rtp(0), RTCP_RR, rtp(1), RTCP_RR, rtp(2), RTCP_RR]


async def test_flush_on_a_closed_port_discards_the_queue(port: MediaPort, clients: list[RawClient]) -> None:
    ring = port.out_ring
    ring.views[0][:4] = b"\x80abc"
    ring.iov_lens[1] = 4
    ring.names[0] = key_of_address(*clients[0].addr)
    ring.fills[0] = 1
    ring.used = 1
    port.close()
    assert port.flush() == 0
    assert ring.n == 0 and ring.used == 0
    assert await clients[0].nothing_arrives(0.1)
