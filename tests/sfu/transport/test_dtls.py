"""DtlsEndpoint: real DTLS 1.2 handshakes between two endpoints in memory, and one over UDP."""

from __future__ import annotations

import gc
import os
import select
import socket
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import pylibsrtp
import pytest
from OpenSSL import SSL
from pylibsrtp._binding import ffi

from sfu.transport.certificate import CIPHER_LIST, Certificate
from sfu.transport.dtls import (
    DtlsDrop,
    DtlsEndpoint,
    DtlsFailure,
    DtlsRole,
    DtlsState,
    is_dtls_datagram,
    pack_records,
    split_records,
)
from sfu.transport.srtp import SrtpContext, SrtpKeys, SrtpProfile

GCM = SrtpProfile.AEAD_AES_128_GCM
CM = SrtpProfile.AES_CM_128_HMAC_SHA1_80
GCM256 = SrtpProfile.AEAD_AES_256_GCM

CERT_A = Certificate.generate()
CERT_B = Certificate.generate()

# drop(direction, index, datagram) -> True to lose it; direction "c2s" or "s2c", index counts per direction
DropRule = Callable[[str, int, bytes], bool]


@dataclass
class Wire:
    """A DTLS client and server joined by two in-memory queues."""

    client: DtlsEndpoint
    server: DtlsEndpoint
    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    client_got: list[bytes] = field(default_factory=list)
    server_got: list[bytes] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=lambda: {"c2s": 0, "s2c": 0})
    dropped: int = 0

    def pump(self, now_ms: int, drop: DropRule | None = None) -> None:
        for _ in range(50):
            if not self.to_server and not self.to_client:
                return
            while self.to_server:
                self._deliver("c2s", self.to_server.pop(0), self.server, self.server_got, now_ms, drop)
            while self.to_client:
                self._deliver("s2c", self.to_client.pop(0), self.client, self.client_got, now_ms, drop)
        raise AssertionError("endpoints kept talking")

    def _deliver(
        self,
        direction: str,
        datagram: bytes,
        to: DtlsEndpoint,
        got: list[bytes],
        now_ms: int,
        drop: DropRule | None,
    ) -> None:
        index = self.sent[direction]
        self.sent[direction] += 1
        if drop is not None and drop(direction, index, datagram):
            self.dropped += 1
            return
        got.extend(to.feed(datagram, now_ms))

    @property
    def endpoints(self) -> tuple[DtlsEndpoint, DtlsEndpoint]:
        return self.client, self.server


def state(endpoint: DtlsEndpoint) -> DtlsState:
    """Read the state through a call, so the type checker does not carry narrowing across calls."""
    return endpoint.state


def make_wire(
    client_profiles: list[SrtpProfile] | None = None,
    server_profiles: list[SrtpProfile] | None = None,
    *,
    client_expects: list[tuple[str, str]] | None = None,
    server_expects: list[tuple[str, str]] | None = None,
    **kwargs: int,
) -> Wire:
    wire: Wire
    client = DtlsEndpoint(
        CERT_A,
        DtlsRole.CLIENT,
        client_expects or [("sha-256", CERT_B.fingerprint())],
        client_profiles or [GCM, CM],
        lambda d: wire.to_server.append(d),
        **kwargs,
    )
    server = DtlsEndpoint(
        CERT_B,
        DtlsRole.SERVER,
        server_expects or [("sha-256", CERT_A.fingerprint())],
        server_profiles or [GCM, CM],
        lambda d: wire.to_client.append(d),
        **kwargs,
    )
    wire = Wire(client, server)
    return wire


def connect(wire: Wire, now_ms: int = 0) -> None:
    wire.client.start(now_ms)
    wire.pump(now_ms)


def rtp_packet(seq: int, ssrc: int = 0xCAFE) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + os.urandom(200)


def rtcp_rr(ssrc: int = 0xCAFE) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def assert_srtp_flows(sender: SrtpKeys, receiver: SrtpKeys) -> None:
    """Protect with one side's outbound context, unprotect in place with the other's inbound."""
    tx, rx = SrtpContext.outbound(sender), SrtpContext.inbound(receiver)
    buf = ffi.new("unsigned char[]", 1500)
    view = memoryview(ffi.buffer(buf))
    for seq in (1, 2, 3):
        plain = rtp_packet(seq)
        view[: len(plain)] = plain
        n = tx.protect_rtp(buf, len(plain))
        assert n > len(plain)
        assert rx.unprotect_rtp(buf, n) == len(plain)
        assert bytes(view[: len(plain)]) == plain
    rr = rtcp_rr()
    protected = tx.protect_rtcp_bytes(rr)
    assert protected is not None and rx.unprotect_rtcp_bytes(protected) == rr


# -- handshake and keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "client_offers, server_offers, chosen",
    [
        ([GCM, CM], [GCM, CM], GCM),
        ([GCM, CM], [CM, GCM], CM),  # the server's preference wins
        ([CM], [GCM, CM], CM),  # client offering only one profile
        ([GCM], [GCM, CM], GCM),
        ([GCM256, GCM, CM], [GCM256, CM], GCM256),
        ([CM, GCM], [GCM], GCM),
    ],
)
def test_handshake_negotiates_profile_and_keys_agree(
    client_offers: list[SrtpProfile], server_offers: list[SrtpProfile], chosen: SrtpProfile
) -> None:
    wire = make_wire(client_offers, server_offers)
    connect(wire)
    for endpoint in wire.endpoints:
        assert endpoint.state is DtlsState.CONNECTED
        assert endpoint.failure_reason is None
        assert endpoint.next_timeout_ms() is None
        assert endpoint.srtp_keys is not None and endpoint.srtp_keys.profile is chosen
    c, s = wire.client.srtp_keys, wire.server.srtp_keys
    assert c is not None and s is not None
    assert c.local_master == s.remote_master and c.remote_master == s.local_master
    assert c.local_master != c.remote_master
    assert_srtp_flows(c, s)
    assert_srtp_flows(s, c)


@pytest.mark.parametrize("node_role", [DtlsRole.SERVER, DtlsRole.CLIENT])
def test_role_pairing_node_side(node_role: DtlsRole) -> None:
    """The node's endpoint works in either role; its keys are 'local' from its own point of view."""
    wire = make_wire()
    connect(wire, now_ms=5_000)
    node = wire.server if node_role is DtlsRole.SERVER else wire.client
    peer = wire.client if node_role is DtlsRole.SERVER else wire.server
    assert node.role is node_role and peer.role is not node_role
    assert node.srtp_keys is not None and peer.srtp_keys is not None
    assert_srtp_flows(node.srtp_keys, peer.srtp_keys)
    assert_srtp_flows(peer.srtp_keys, node.srtp_keys)
    # keys are not interchangeable: the node's outbound key does not open the node's own inbound
    rx_self = SrtpContext.inbound(node.srtp_keys)
    assert (
        rx_self.unprotect_rtp_bytes(
            SrtpContext.outbound(node.srtp_keys).protect_rtp_bytes(rtp_packet(1)) or b""
        )
        is None
    )


def test_states_and_timers_through_handshake() -> None:
    wire = make_wire()
    assert wire.client.state is DtlsState.NEW and wire.server.state is DtlsState.NEW
    assert wire.client.next_timeout_ms() is None
    wire.client.start(1_000)
    assert state(wire.client) is DtlsState.CONNECTING
    deadline = wire.client.next_timeout_ms()
    assert deadline is not None and 1_000 < deadline <= 2_000  # OpenSSL's first retransmit: 1 s
    assert len(wire.to_server) == 1 and is_dtls_datagram(wire.to_server[0])
    wire.pump(1_010)
    assert state(wire.client) is DtlsState.CONNECTED and state(wire.server) is DtlsState.CONNECTED
    wire.client.start(2_000)  # a second start is a no-op
    assert wire.to_server == []


def test_no_common_profile_fails_both() -> None:
    wire = make_wire([GCM256], [CM])
    connect(wire)
    assert wire.client.state is DtlsState.FAILED
    assert wire.client.failure_reason is DtlsFailure.NO_SRTP_PROFILE
    assert wire.server.state is DtlsState.FAILED
    assert wire.server.failure_reason is DtlsFailure.NO_SRTP_PROFILE
    assert wire.client.srtp_keys is None and wire.server.srtp_keys is None


@pytest.mark.parametrize("wrong_side", ["client", "server"])
def test_fingerprint_mismatch_fails(wrong_side: str) -> None:
    other = Certificate.generate()
    wrong = [("sha-256", other.fingerprint())]
    if wrong_side == "client":
        wire = make_wire(client_expects=wrong)
        failing, peer = wire.client, wire.server
    else:
        wire = make_wire(server_expects=wrong)
        failing, peer = wire.server, wire.client
    connect(wire)
    assert failing.state is DtlsState.FAILED
    assert failing.failure_reason is DtlsFailure.FINGERPRINT_MISMATCH
    assert failing.srtp_keys is None
    assert failing.next_timeout_ms() is None
    # the failing side said close_notify, so the other one does not linger
    assert peer.state is DtlsState.CLOSED


def test_fingerprint_checked_with_other_algorithms() -> None:
    wire = make_wire(
        client_expects=[("sha-512", CERT_B.fingerprint("sha-512")), ("md5", "00:01")],
        server_expects=[("SHA-384", CERT_A.fingerprint("sha-384").lower())],
    )
    connect(wire)
    assert state(wire.client) is DtlsState.CONNECTED and state(wire.server) is DtlsState.CONNECTED


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="remote_fingerprints"):
        DtlsEndpoint(CERT_A, DtlsRole.CLIENT, [], [CM], lambda d: None)
    with pytest.raises(ValueError, match="srtp_profiles"):
        DtlsEndpoint(CERT_A, DtlsRole.CLIENT, [("sha-256", "00")], [], lambda d: None)
    with pytest.raises(ValueError, match="mtu"):
        DtlsEndpoint(CERT_A, DtlsRole.CLIENT, [("sha-256", "00")], [CM], lambda d: None, mtu=100)


# -- application data, close ---------------------------------------------------------------------


def test_application_data_both_ways() -> None:
    wire = make_wire()
    assert wire.client.send_application(b"too early") is False
    connect(wire)
    payloads = [os.urandom(n) for n in (1, 100, wire.client.max_application_size)]
    for p in payloads:
        assert wire.client.send_application(p)
        assert wire.server.send_application(p[::-1])
    assert all(len(d) <= wire.client.mtu for d in wire.to_server)
    wire.pump(0)
    assert wire.server_got == payloads
    assert wire.client_got == [p[::-1] for p in payloads]
    with pytest.raises(ValueError, match="exceed"):
        wire.client.send_application(b"x" * (wire.client.max_application_size + 1))


def test_close_notify_closes_peer() -> None:
    wire = make_wire()
    connect(wire)
    wire.client.close()
    assert wire.client.state is DtlsState.CLOSED
    assert len(wire.to_server) == 1  # the close_notify alert
    wire.pump(0)
    assert wire.server.state is DtlsState.CLOSED
    assert wire.server.failure_reason is None
    assert wire.server.send_application(b"late") is False
    assert wire.server.feed(b"\x17\xfe\xfd" + bytes(10), 0) == []
    assert wire.server.drops[DtlsDrop.NOT_OPEN] == 1
    wire.client.close()  # idempotent
    assert wire.to_server == []


def test_close_before_start_sends_nothing() -> None:
    wire = make_wire()
    wire.client.close()
    assert wire.client.state is DtlsState.CLOSED and wire.to_server == []


def test_close_during_handshake() -> None:
    wire = make_wire()
    wire.client.start(0)
    wire.to_server.clear()
    wire.client.close()
    assert wire.client.state is DtlsState.CLOSED
    assert wire.client.next_timeout_ms() is None


class Owner:
    """An owner whose endpoint's ``send`` is its own bound method: a reference cycle until released."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.dtls = DtlsEndpoint(CERT_A, DtlsRole.CLIENT, [("sha-256", CERT_B.fingerprint())], [GCM], self.send)

    def send(self, datagram: bytes) -> None:
        self.sent.append(datagram)


def test_release_closes_silently_and_breaks_the_owner_cycle() -> None:
    owner = Owner()
    owner.dtls.start(0)
    assert len(owner.sent) == 1  # the ClientHello
    ref = weakref.ref(owner)
    conn_ref = weakref.ref(owner.dtls._conn)
    gc.disable()
    try:
        owner.dtls.release()
        assert owner.dtls.state is DtlsState.CLOSED and owner.dtls.next_timeout_ms() is None
        owner.dtls.handle_timeout(10_000)
        owner.dtls.close()
        assert len(owner.sent) == 1, "a released endpoint still sends"
        del owner
        assert ref() is None and conn_ref() is None, "freed only by the cycle collector"
    finally:
        gc.enable()


def test_release_after_failure_keeps_the_failure() -> None:
    wire = make_wire(server_profiles=[CM], client_profiles=[GCM])
    connect(wire)
    assert wire.server.state is DtlsState.FAILED
    wire.server.release()
    assert wire.server.state is DtlsState.FAILED and wire.server.failure_reason is not None


# -- timeouts ------------------------------------------------------------------------------------


def test_handshake_timeout_on_callers_clock() -> None:
    wire = make_wire(handshake_timeout_ms=30_000)
    wire.client.start(10_000)
    wire.to_server.clear()  # the server never answers
    wire.client.handle_timeout(39_999)
    assert wire.client.state is DtlsState.CONNECTING
    assert (wire.client.next_timeout_ms() or 0) <= 40_000
    wire.client.handle_timeout(40_000)
    assert state(wire.client) is DtlsState.FAILED
    assert wire.client.failure_reason is DtlsFailure.HANDSHAKE_TIMEOUT
    assert wire.client.next_timeout_ms() is None


def test_server_handshake_timeout_counts_from_client_hello() -> None:
    wire = make_wire(handshake_timeout_ms=5_000)
    wire.client.start(0)
    wire.server.feed(wire.to_server.pop(0), 100)
    wire.to_client.clear()  # the client never hears back, and goes quiet
    assert wire.server.next_timeout_ms() is not None
    wire.server.handle_timeout(5_099)
    assert wire.server.state is DtlsState.CONNECTING
    wire.server.handle_timeout(5_100)
    assert wire.server.failure_reason is DtlsFailure.HANDSHAKE_TIMEOUT


def _connect_with_losses(wire: Wire, drop: DropRule, budget_s: float = 10.0) -> None:
    """Run on the real clock (OpenSSL's retransmission timer is real-time), waking at next_timeout_ms."""
    start = time.monotonic()

    def now_ms() -> int:
        return int(time.monotonic() * 1000)

    wire.client.start(now_ms())
    wire.pump(now_ms(), drop)
    while not (wire.client.state is DtlsState.CONNECTED and wire.server.state is DtlsState.CONNECTED):
        assert time.monotonic() - start < budget_s, "no recovery in time"
        assert wire.client.state is not DtlsState.FAILED and wire.server.state is not DtlsState.FAILED
        deadlines = [t for t in (e.next_timeout_ms() for e in wire.endpoints) if t is not None]
        assert deadlines, "stuck with no timer armed"
        time.sleep(max(0, min(deadlines) - now_ms()) / 1000)
        for endpoint in wire.endpoints:
            endpoint.handle_timeout(now_ms())
        wire.pump(now_ms(), drop)


@pytest.mark.parametrize(
    "lost",
    [
        pytest.param(("c2s", 0), id="client-hello"),
        pytest.param(("s2c", 0), id="server-flight"),
        pytest.param(("c2s", 1), id="client-finished-flight"),
        pytest.param(("s2c", 1), id="server-finished-flight"),
    ],
)
def test_lost_flight_recovered_by_retransmission(lost: tuple[str, int]) -> None:
    wire = make_wire()
    _connect_with_losses(wire, lambda direction, index, _d: (direction, index) == lost)
    assert wire.dropped == 1
    assert wire.sent[lost[0]] >= 3  # the lost flight went out again
    c, s = wire.client.srtp_keys, wire.server.srtp_keys
    assert c is not None and s is not None
    assert_srtp_flows(c, s)
    assert wire.client.next_timeout_ms() is None and wire.server.next_timeout_ms() is None


def test_handle_timeout_early_does_nothing() -> None:
    wire = make_wire()
    wire.client.start(0)
    wire.to_server.clear()
    deadline = wire.client.next_timeout_ms()
    assert deadline is not None
    wire.client.handle_timeout(deadline - 1)
    assert wire.to_server == [] and wire.client.state is DtlsState.CONNECTING


# -- garbage -------------------------------------------------------------------------------------


def record(content_type: int, epoch: int, body: bytes, version: int = 0xFEFD, seq: int = 0) -> bytes:
    return (
        struct.pack("!BHH", content_type, version, epoch)
        + seq.to_bytes(6, "big")
        + struct.pack("!H", len(body))
        + body
    )


MALFORMED = [
    b"",
    b"\x16",
    os.urandom(7),
    b"\x16\xfe\xfd" + bytes(10),  # header announcing 0 bytes, fine, then trailing junk below
    record(22, 0, b"abc")[:-1],  # truncated body
    record(22, 0, b"abc") + b"\x00",  # trailing partial header
    record(99, 0, b"abc"),  # unknown content type
    record(22, 0, b"abc", version=0x0303),  # TLS, not DTLS
    bytes([0x80]) + os.urandom(40),  # RTP-looking
]
MALFORMED[3] += b"\x01"

WELL_FORMED_GARBAGE = [
    record(22, 0, os.urandom(60)),
    record(22, 0, os.urandom(60), version=0xFEFF),
    record(20, 0, b"\x01"),
    record(21, 0, b"\x02\x28"),  # plaintext fatal alert
    record(21, 0, b"\x01\x00"),  # plaintext close_notify
    record(23, 0, os.urandom(40)),
    record(23, 1, os.urandom(40), seq=80),  # epoch 1 with a bad tag
    record(22, 1, os.urandom(40)),
    record(21, 1, os.urandom(40)),  # "encrypted" alert that fails decryption
    record(22, 2, os.urandom(40)),  # future epoch
    record(23, 1, os.urandom(40)) + record(23, 1, os.urandom(17), seq=3),
]


@pytest.mark.parametrize("garbage", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_datagrams_are_counted_and_harmless(garbage: bytes) -> None:
    wire = make_wire()
    assert wire.server.feed(garbage, 0) == []  # before anything
    wire.client.start(0)
    wire.server.feed(wire.to_server.pop(0), 0)
    assert wire.client.feed(garbage, 0) == [] and wire.server.feed(garbage, 0) == []  # mid handshake
    wire.pump(0)
    assert wire.client.state is DtlsState.CONNECTED and wire.server.state is DtlsState.CONNECTED
    assert wire.server.feed(garbage, 0) == []  # after
    assert wire.server.drops[DtlsDrop.MALFORMED] == 3
    assert wire.client.drops[DtlsDrop.MALFORMED] == 1
    assert wire.client.send_application(b"still up")
    wire.pump(0)
    assert wire.server_got == [b"still up"]


@pytest.mark.parametrize("garbage", WELL_FORMED_GARBAGE, ids=range(len(WELL_FORMED_GARBAGE)))
def test_garbage_before_handshake_is_dropped(garbage: bytes) -> None:
    wire = make_wire()
    assert wire.server.feed(garbage, 0) == [] and wire.client.feed(garbage, 0) == []
    assert wire.server.state is DtlsState.NEW and wire.client.state is DtlsState.NEW
    assert wire.server.drops[DtlsDrop.UNEXPECTED] == 1 and wire.client.drops[DtlsDrop.UNEXPECTED] == 1
    connect(wire)
    assert state(wire.client) is DtlsState.CONNECTED and state(wire.server) is DtlsState.CONNECTED


@pytest.mark.parametrize("garbage", WELL_FORMED_GARBAGE, ids=range(len(WELL_FORMED_GARBAGE)))
def test_garbage_mid_handshake_never_raises(garbage: bytes) -> None:
    """Bogus plaintext records may fail or stall a handshake (OpenSSL's choice), cleanly; others are ignored."""
    wire = make_wire()
    wire.client.start(0)
    wire.server.feed(wire.to_server.pop(0), 0)
    wire.server.feed(garbage, 0)
    wire.client.feed(garbage, 0)
    wire.pump(0)
    for endpoint in wire.endpoints:  # a stalled handshake ends at its deadline
        endpoint.handle_timeout(30_000)
    for endpoint in wire.endpoints:
        assert endpoint.state in (DtlsState.CONNECTED, DtlsState.FAILED)
        if endpoint.state is DtlsState.FAILED:
            assert endpoint.failure_reason in (DtlsFailure.HANDSHAKE_ERROR, DtlsFailure.HANDSHAKE_TIMEOUT)
            assert endpoint.failure_detail
            assert endpoint.srtp_keys is None


@pytest.mark.parametrize("garbage", WELL_FORMED_GARBAGE, ids=range(len(WELL_FORMED_GARBAGE)))
def test_garbage_after_handshake_keeps_connection(garbage: bytes) -> None:
    wire = make_wire()
    connect(wire)
    keys = wire.server.srtp_keys
    for _ in range(3):
        assert wire.server.feed(garbage, 0) == []
        assert wire.client.feed(garbage, 0) == []
    assert wire.to_client == [] and wire.to_server == []  # no alert went out
    for endpoint in wire.endpoints:
        assert endpoint.state is DtlsState.CONNECTED
    assert wire.server.srtp_keys is keys
    assert wire.client.send_application(b"ping") and wire.server.send_application(b"pong")
    wire.pump(0)
    assert wire.server_got == [b"ping"] and wire.client_got == [b"pong"]
    wire.client.close()
    wire.pump(0)
    assert wire.server.state is DtlsState.CLOSED


def test_replayed_handshake_flight_after_connected_is_harmless() -> None:
    """A copy of the client's last flight reaching a connected server is dropped, not fatal."""
    wire = make_wire()
    wire.client.start(0)
    wire.server.feed(wire.to_server.pop(0), 0)
    wire.client.feed(wire.to_client.pop(0), 0)
    last_flight = list(wire.to_server)
    wire.pump(0)
    assert wire.server.state is DtlsState.CONNECTED
    for datagram in last_flight:  # same record sequence numbers: OpenSSL's replay window drops them
        assert wire.server.feed(datagram, 0) == []
    assert wire.server.state is DtlsState.CONNECTED and wire.client.state is DtlsState.CONNECTED


# -- record framing ------------------------------------------------------------------------------


def test_split_and_pack_records() -> None:
    records = [
        record(22, 0, b"a" * 600),
        record(22, 0, b"b" * 500),
        record(22, 0, b"c" * 100),
        record(23, 1, b"d"),
    ]
    stream = b"".join(records)
    assert split_records(stream) == records
    datagrams = pack_records(stream, 1200)
    assert [len(d) for d in datagrams] == [
        len(records[0]) + len(records[1]),
        len(records[2]) + len(records[3]),
    ]
    assert b"".join(datagrams) == stream
    big = record(22, 0, b"x" * 1500)
    assert pack_records(big + records[3], 1200) == [big, records[3]]
    assert split_records(b"") is None


def test_small_mtu_splits_flights_into_whole_record_datagrams() -> None:
    wire = make_wire(mtu=400)
    sizes: list[int] = []

    def record_size(_direction: str, _index: int, datagram: bytes) -> bool:
        sizes.append(len(datagram))
        assert split_records(datagram) is not None  # every datagram is whole records
        return False

    wire.client.start(0)
    wire.pump(0, record_size)
    assert wire.client.state is DtlsState.CONNECTED and wire.server.state is DtlsState.CONNECTED
    assert max(sizes) <= 400 and len(sizes) > 4


# -- interop over a real UDP socket --------------------------------------------------------------


def _plain_pyopenssl_client(cert: Certificate) -> SSL.Connection:
    """A DTLS client built directly on pyOpenSSL, not on our certificate module."""
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_args: True)
    ctx.use_certificate(cert.x509)
    ctx.use_privatekey(cert.key)
    ctx.set_cipher_list(CIPHER_LIST)
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    conn = SSL.Connection(ctx, None)
    conn.set_ciphertext_mtu(1200)
    conn.set_connect_state()
    return conn


def test_interop_with_plain_pyopenssl_client_over_udp() -> None:
    server_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server_sock.bind(("127.0.0.1", 0))
        client_sock.bind(("127.0.0.1", 0))
        server_addr, client_addr = server_sock.getsockname(), client_sock.getsockname()
        client_cert = Certificate.generate()

        def node_send(datagram: bytes) -> None:
            server_sock.sendto(datagram, client_addr)

        node = DtlsEndpoint(
            CERT_B, DtlsRole.SERVER, [("sha-256", client_cert.fingerprint())], [GCM, CM], node_send
        )
        client = _plain_pyopenssl_client(client_cert)

        def client_flush() -> None:
            while True:
                try:
                    data = client.bio_read(65536)
                except SSL.WantReadError:
                    return
                for datagram in pack_records(data, 1200):
                    client_sock.sendto(datagram, server_addr)

        client_done = False
        deadline = time.monotonic() + 10
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        client_flush()
        while not (client_done and node.state is DtlsState.CONNECTED):
            assert time.monotonic() < deadline, "handshake over UDP did not finish"
            readable, _, _ = select.select([server_sock, client_sock], [], [], 0.2)
            now = int(time.monotonic() * 1000)
            if server_sock in readable:
                data, addr = server_sock.recvfrom(2048)
                assert addr == client_addr
                assert node.feed(data, now) == []
            if client_sock in readable:
                client.bio_write(client_sock.recv(2048))
                try:
                    client.do_handshake()
                    client_done = True
                except SSL.WantReadError:
                    pass
                client_flush()
            node.handle_timeout(now)

        assert client.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
        keys = node.srtp_keys
        assert keys is not None and keys.profile is CM
        material = client.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
        client_tx_master = material[:16] + material[32:46]
        client_rx_master = material[16:32] + material[46:60]
        tx_policy = pylibsrtp.Policy(key=client_tx_master, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        rx_policy = pylibsrtp.Policy(key=client_rx_master, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        client_tx, client_rx = pylibsrtp.Session(tx_policy), pylibsrtp.Session(rx_policy)

        # SRTP client -> node: received straight into a cffi buffer and unprotected in place
        node_rx, node_tx = SrtpContext.inbound(keys), SrtpContext.outbound(keys)
        cbuf = ffi.new("unsigned char[]", 2048)
        view = memoryview(ffi.buffer(cbuf))
        for seq in range(1, 6):
            plain = rtp_packet(seq)
            client_sock.sendto(client_tx.protect(plain), server_addr)
            server_sock.settimeout(2)
            n = server_sock.recv_into(view)
            m = node_rx.unprotect_rtp(cbuf, n)
            assert m == len(plain) and bytes(view[:m]) == plain
            # and back, protected in place by the node
            n = node_tx.protect_rtp(cbuf, m)
            server_sock.sendto(view[:n], client_addr)
            client_sock.settimeout(2)
            assert client_rx.unprotect(client_sock.recv(2048)) == plain

        # DTLS application data both ways over the socket
        client.send(b"hello node")
        client_flush()
        server_sock.settimeout(2)
        assert node.feed(server_sock.recv(2048), int(time.monotonic() * 1000)) == [b"hello node"]
        assert node.send_application(b"hello client")
        client.bio_write(client_sock.recv(2048))
        assert client.recv(2048) == b"hello client"

        # the node closes; the plain client sees close_notify
        node.close()
        client.bio_write(client_sock.recv(2048))
        with pytest.raises(SSL.ZeroReturnError):
            client.recv(2048)
    finally:
        server_sock.close()
        client_sock.close()


def test_the_openssl_connection_is_made_when_the_handshake_starts() -> None:
    server = DtlsEndpoint(CERT_B, DtlsRole.SERVER, [("sha-256", CERT_A.fingerprint())], [GCM], lambda d: None)
    assert server._conn is None  # a session that never gets a ClientHello holds no OpenSSL state
    assert server.feed(b"\x17\xfe\xfd" + bytes(10), 0) == [] and server._conn is None  # not a ClientHello
    server.close()
    assert server._conn is None and server.state is DtlsState.CLOSED
    client = Owner()
    assert client.dtls._conn is None
    client.dtls.start(0)
    assert client.dtls._conn is not None and len(client.sent) == 1
