"""IPv6 on the media port: keys, normalisation and rings (``sfu.transport.mmsg``), and a real
dual-stack ``MediaPort`` on ``::`` serving IPv4 (127.0.0.1) and IPv6 (::1) clients side by side,
with real ``PeerTransport`` sessions (ICE, DTLS, SRTP) over both.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aioice import stun

from sfu.counters import DropReason
from sfu.transport.dtls import DtlsRole
from sfu.transport.ice import IceCredentials, binding_success, parse_check
from sfu.transport.mmsg import (
    RecvRing,
    SendRing,
    Sockaddr6Table,
    address_of_sockaddr6,
    gso_supported,
    key6_of_address,
    key6_of_words,
    normalize_host,
    sockaddr6,
)
from sfu.transport.peer import CloseReason
from sfu.transport.ports import Address
from sfu.transport.udp import MediaPort
from tests.sfu.routing.harness import (
    RawClient,
    RecordingSink,
    binding_request,
    connect,
    new_peer,
    open_port,
    rtp_bytes,
)

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")


def rtp_packet(seq: int) -> bytes:
    return rtp_bytes(seq, seq * 3000, ssrc=0x11223344, pt=96, payload=bytes(range(28)))


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::FFFF:7f00:1", "127.0.0.1"),
        ("1.2.3.4", "1.2.3.4"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("::1.2.3.4", "::1.2.3.4"),  # IPv4-compatible (deprecated): not v4-mapped, stays IPv6
        ("fe80::1%2", "fe80::1%2"),
        ("::ffff:1.2.3.4%2", "::ffff:1.2.3.4%2"),  # a scope makes it a link address, not IPv4
    ],
)
def test_normalize_host(given: str, normal: str) -> None:
    assert normalize_host(given) == normal


@pytest.mark.parametrize("bad", ["", "localhost", "1.2.3", "1.2.3.4.5", "::g", "tcp:1.2.3.4", "1.2.3.4%2x"])
def test_normalize_host_refuses_what_is_no_address(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_host(bad)


@pytest.mark.parametrize(
    ("host", "port"),
    [("1.2.3.4", 5004), ("::1", 1), ("2001:db8::7", 65535), ("fe80::1%2", 443), ("::", 0), ("255.255.255.255", 9)],
)
def test_sockaddr6_round_trips_to_the_normalised_address(host: str, port: int) -> None:
    raw = sockaddr6(host, port)
    assert len(raw) == 32 and raw[28:] == bytes(4)
    assert struct.unpack_from("=H", raw)[0] == socket.AF_INET6
    assert address_of_sockaddr6(raw) == (normalize_host(host), port)


@pytest.mark.parametrize(("host", "port"), [("1.2.3.4", 65536), ("::1", -1), ("localhost", 1), ("fe80::1%nosuchif0", 1)])
def test_sockaddr6_refuses_what_is_no_address(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        sockaddr6(host, port)


def test_keys_tell_every_address_apart() -> None:
    """Addresses whose words differ only where the key XORs them (family and port against the
    low address half) or only in the high half or the scope: all distinct keys."""
    addrs = [
        ("127.0.0.1", 5000), ("127.0.0.1", 5001), ("127.0.0.2", 5000), ("::1", 5000), ("::1", 5001),
        ("::7f00:1", 5000), ("::ffff:0:7f00:1", 5000), ("2001:db8::1", 5000), ("2001:db9::1", 5000),
        ("fe80::1%1", 5000), ("fe80::1%2", 5000), ("fe80::1", 5000), ("::", 0), ("0.0.0.0", 0),
    ]
    keys = {key6_of_address(*a) for a in addrs}
    assert len(keys) == len(addrs)
    assert key6_of_address("::ffff:127.0.0.1", 5000) == key6_of_address("127.0.0.1", 5000)
    # an IPv4 peer (and anything with a zero high half and scope) keys in one 64-bit word
    assert key6_of_address("127.0.0.1", 5000) < 1 << 64 and key6_of_address("::1", 5000) < 1 << 64
    assert key6_of_address("2001:db8::1", 5000) >= 1 << 64


@pytest.fixture
def socks6() -> Iterator[list[socket.socket]]:
    """A dual-stack receiver on ::, an IPv4 sender and an IPv6 sender."""
    made = []
    for family, host, v6only in ((socket.AF_INET6, "::", 0), (socket.AF_INET, "127.0.0.1", None), (socket.AF_INET6, "::1", 1)):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        s.bind((host, 0))
        s.setblocking(False)
        made.append(s)
    yield made
    for s in made:
        s.close()


def test_a_recv_ring_keys_each_sender_as_its_address_does(socks6: list[socket.socket]) -> None:
    rx, v4, v6 = socks6
    port = rx.getsockname()[1]
    v4.sendto(b"four", ("127.0.0.1", port))
    v6.sendto(b"six", ("::1", port))
    ring = RecvRing(4, 2048, family=socket.AF_INET6)
    got = 0
    deadline = time.monotonic() + 2
    while got < 2 and time.monotonic() < deadline:
        n = ring.recv(rx.fileno(), 4 - got)
        if n > 0:
            got += n
    assert got == 2
    seen = {}
    for i in range(2):
        words = ring.names[4 * i : 4 * i + 4].tolist()
        seen[bytes(ring.views[i][: ring.length(i)])] = (address_of_sockaddr6(ring.name(i)), key6_of_words(*words))
    v4_addr = ("127.0.0.1", v4.getsockname()[1])
    v6_addr = ("::1", v6.getsockname()[1])
    assert seen == {b"four": (v4_addr, key6_of_address(*v4_addr)), b"six": (v6_addr, key6_of_address(*v6_addr))}


@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
def test_an_ipv6_send_ring_reaches_ipv4_and_ipv6_peers(socks6: list[socket.socket], gso: bool) -> None:
    tx, v4, v6 = socks6
    if gso and not gso_supported(tx):
        pytest.skip("no UDP GSO in this kernel")
    ring = SendRing(4, 8, 2304, gso=gso, family=socket.AF_INET6)
    table = Sockaddr6Table()
    dests = [("127.0.0.1", v4.getsockname()[1]), ("::1", v6.getsockname()[1]), ("127.0.0.1", v4.getsockname()[1])]
    sent: dict[int, list[bytes]] = {0: [], 1: []}
    keys = [table.new_key(d) for d in dests]
    for lane, dest in enumerate(dests):
        ring.used += 1
        payloads = [bytes([lane, i]) * 300 for i in range(3)] + [bytes([lane, 9]) * 10]
        for i, payload in enumerate(payloads):
            k = lane * ring.depth + i
            ring.views[k][: len(payload)] = payload
            ring.iov_lens[2 * k + 1] = len(payload)
            ring.names[2 * k] = keys[lane]
        ring.fills[lane] = len(payloads)
        sent[0 if dest[0] == "127.0.0.1" else 1] += payloads
    assert ring.send(tx.fileno()) == (12, [])
    for sock, want in ((v4, sent[0]), (v6, sent[1])):
        got = []
        deadline = time.monotonic() + 2
        while len(got) < len(want) and time.monotonic() < deadline:
            try:
                got.append(sock.recv(4096))
            except BlockingIOError:
                time.sleep(0.001)
        assert got == want


def test_a_released_sockaddr_lives_until_collected() -> None:
    table = Sockaddr6Table()
    key = table.new_key(("::1", 5000))
    other = table.new_key(("::1", 5000))  # a second holder of the same address: its own memory
    assert key and other and key != other and len(table) == 2
    assert table.new_key(("tcp:::1", 5000)) == 0 and len(table) == 2
    table.release(key)
    assert len(table) == 1 and len(table._retired) == 1  # still allocated: a queued slot may point at it
    table.collect()
    assert table._retired == []
    table.release(key)  # twice is harmless
    table.release(0)
    assert len(table) == 1


def test_xor_mapped_address_for_ipv6_is_rfc_8489_family_2() -> None:
    """The Binding success to an IPv6 client: XOR-MAPPED-ADDRESS family 0x02, the port XORed
    with the cookie's top half and the address with cookie || transaction id (RFC 8489 §14.2)."""
    creds = IceCredentials.generate()
    check = parse_check(binding_request(f"{creds.ufrag}:remote", creds.pwd))
    assert not isinstance(check, DropReason) and not isinstance(check, str)
    for addr, family, packed in (
        (("2001:db8::5", 40000), 2, socket.inet_pton(socket.AF_INET6, "2001:db8::5")),
        (("192.0.2.1", 40000), 1, socket.inet_aton("192.0.2.1")),
    ):
        data = binding_success(check, addr, creds)  # type: ignore[arg-type]
        tid = data[8:20]
        pos = 20
        while pos < len(data):
            kind, length = struct.unpack_from("!HH", data, pos)
            if kind == 0x0020:
                break
            pos += 4 + ((length + 3) & ~3)
        value = data[pos + 4 : pos + 4 + length]
        assert length == 4 + len(packed) and value[1] == family
        assert struct.unpack_from("!H", value, 2)[0] == 40000 ^ 0x2112
        mask = struct.pack("!I", 0x2112A442) + tid
        assert bytes(a ^ b for a, b in zip(value[4:], mask, strict=False)) == packed
        assert stun.parse_message(data).attributes["XOR-MAPPED-ADDRESS"] == addr


# -- a dual-stack MediaPort ------------------------------------------------------------------------


@pytest.fixture
async def port6() -> AsyncIterator[MediaPort]:
    p = open_port(host="::")
    yield p
    p.close()


def test_the_port_family_follows_its_host() -> None:
    assert MediaPort("127.0.0.1", 0, None).family == socket.AF_INET  # type: ignore[arg-type]
    assert MediaPort("::", 0, None).family == socket.AF_INET6  # type: ignore[arg-type]


async def test_a_v6_address_binds_ipv6_only() -> None:
    p = open_port(host="::1")
    try:
        assert p._sock is not None and p._sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        p.close()


async def test_dual_stack_sessions_over_ipv4_and_ipv6_side_by_side(port6: MediaPort) -> None:
    """One v4 and one v6 client, each a real ICE/DTLS/SRTP session on one ``::`` port: checks are
    answered with the client's own address, the peers hold normalised addresses, media in both
    directions reaches exactly its own session."""
    assert port6._sock is not None and port6._sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    c4, c6 = RawClient(host="127.0.0.1"), RawClient(host="::1")
    try:
        peers, sinks = [], []
        for client in (c4, c6):
            peer = new_peer(port6, client)
            sink = RecordingSink()
            peer.sink = sink
            await connect(peer, client, port6, DtlsRole.SERVER)
            response = await client.check(peer, port6)  # a consent refresh: its mapped address
            assert response.attributes["XOR-MAPPED-ADDRESS"] == client.addr
            peers.append(peer)
            sinks.append(sink)
        assert peers[0].addr == c4.addr and peers[0].addr[0] == "127.0.0.1"
        assert peers[1].addr == c6.addr and peers[1].addr[0] == "::1"
        for i, (client, sink) in enumerate(zip((c4, c6), sinks, strict=True)):
            client.send(client.protect(rtp_packet(seq=100 + i)), (client.host, port6.port))
            await sink.wait(1)
        assert [len(s.rtp) for s in sinks] == [1, 1]
        assert sinks[0].rtp[0] == rtp_packet(seq=100) and sinks[1].rtp[0] == rtp_packet(seq=101)
        # the node's send ring reaches both (v4 through its v4-mapped form)
        for peer, client in zip(peers, (c4, c6), strict=True):
            peer.out_view[:40] = rtp_packet(seq=7)
            peer.send_rtp(40)
            assert await client.recv_rtp() == rtp_packet(seq=7)
        assert port6.counters.drops[DropReason.SRTP_UNKNOWN_ADDRESS] == 0
        for peer in peers:
            peer.close(CloseReason.LEFT, send_alert=False)
        assert len(port6._sockaddrs or ()) == 0
    finally:
        c4.close()
        c6.close()


async def test_dual_stack_bad_input_is_dropped_and_counted(port6: MediaPort) -> None:
    c6 = RawClient(host="::1")
    stranger = RawClient(host="::1")
    try:
        peer = new_peer(port6, c6)
        sink = RecordingSink()
        peer.sink = sink
        await connect(peer, c6, port6, DtlsRole.SERVER)
        before = list(port6.counters.drops)
        to: Address = ("::1", port6.port)
        for data in (b"\x80" * 40, bytes([22, 0xFE, 0xFD]) + bytes(20), b"\xff" * 30, b"\x01", b"\x00\x01\x00\x08" + bytes(16)):
            stranger.send(data, to)
        c6.send(b"\x80\x60" + bytes(38), to)  # SRTP that does not authenticate: the session stays
        expect = {
            DropReason.SRTP_UNKNOWN_ADDRESS: 1, DropReason.DTLS_UNKNOWN_ADDRESS: 1, DropReason.UNKNOWN_PROTOCOL: 1,
            DropReason.TOO_SHORT: 1, DropReason.STUN_MALFORMED: 1, DropReason.SRTP_AUTH_FAILED: 1,
        }

        def delta() -> dict[DropReason, int]:
            return {r: port6.counters.drops[r] - before[r] for r in expect}

        async with asyncio.timeout(2):
            while delta() != expect:
                await asyncio.sleep(0.005)
        c6.send(c6.protect(rtp_packet(seq=5)), to)
        await sink.wait(1)
        assert sink.rtp == [rtp_packet(seq=5)]
    finally:
        c6.close()
        stranger.close()


async def test_two_sessions_at_one_ipv6_address_each_keep_their_send_address(port6: MediaPort) -> None:
    """A second session that binds the same client address and closes does not take the first
    one's send address with it (each holds its own sockaddr_in6)."""
    client = RawClient(host="::1")
    try:
        first = new_peer(port6, client)
        first.sink = RecordingSink()
        await connect(first, client, port6, DtlsRole.SERVER)
        second = new_peer(port6, client)
        await client.check(second, port6)  # binds the same address to the second session
        assert second.addr == first.addr
        second.close(CloseReason.LEFT, send_alert=False)
        port6.flush()  # what the second one held is freed now
        for seq in (1, 2):
            first.out_view[:40] = rtp_packet(seq=seq)
            first.send_rtp(40)
            port6.flush()
            assert await client.recv_rtp() == rtp_packet(seq=seq)
        assert len(port6._sockaddrs or ()) == 1
    finally:
        client.close()
