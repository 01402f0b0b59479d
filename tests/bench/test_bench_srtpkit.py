"""bench.srtpkit + bench.mmsg: in-place libsrtp interoperates with pylibsrtp's Session over real UDP."""

from __future__ import annotations

import select
import socket
import time

import pylibsrtp
import pytest

from bench.mmsg import Ring, sockaddr_in
from bench.packet import BenchPacket
from bench.srtpkit import KEY_LEN, InplaceSession, Key, PolicyLayout


@pytest.mark.parametrize(
    ("text", "message"), [("zz" * KEY_LEN, "not hex"), ("00" * (KEY_LEN - 1), "must be 30 bytes")]
)
def test_key_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Key.parse(text)


def test_key_hex_round_trip() -> None:
    key = Key.random()
    assert Key.parse(str(key)) == key


def test_inplace_matches_pylibsrtp_over_udp() -> None:
    key = Key.random()
    plain = [bytes(BenchPacket(ssrc=42, seq=s, send_ns=s, size=1200)) for s in range(8)]
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=bytes(key), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx_sock.bind(("127.0.0.1", 0))
    rx_sock.settimeout(2)
    tx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for p in plain:
            tx_sock.sendto(tx.protect(p), rx_sock.getsockname())
        ring = Ring(8)
        inbound = InplaceSession(key, outbound=False)
        got = 0
        deadline = time.monotonic() + 2
        while got < len(plain) and time.monotonic() < deadline:
            select.select([rx_sock], [], [], 0.1)
            got += ring.recv(rx_sock.fileno(), 8) if got == 0 else 0
        assert got == len(plain)  # loopback delivers the 8 datagrams before the first wakeup
        for i in range(got):
            n = inbound.unprotect(ring.ptrs[i], ring.length(i))
            assert n == 1200
            assert bytes(ring.view[i * 1644 : i * 1644 + n]) == plain[i]
        # a tampered packet is rejected, not decrypted
        tampered = bytearray(tx.protect(bytes(BenchPacket(ssrc=42, seq=100, send_ns=0, size=1200))))
        tampered[100] ^= 0xFF
        ring.view[: len(tampered)] = tampered
        assert inbound.unprotect(ring.ptrs[0], len(tampered)) == -1
        # protect in place, decrypted by pylibsrtp
        outbound = InplaceSession(key, outbound=True)
        rx = pylibsrtp.Session(pylibsrtp.Policy(key=bytes(key), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        ring.view[:1200] = plain[3]
        n = outbound.protect(ring.ptrs[0], 1200)
        assert n == 1210
        assert rx.unprotect(bytes(ring.view[:n])) == plain[3]
    finally:
        rx_sock.close()
        tx_sock.close()


def test_policy_layout_is_consistent() -> None:
    layout = PolicyLayout.from_binding()
    assert layout.rtcp - layout.rtp == layout.crypto_policy_size
    assert layout.size > layout.allow_repeat_tx > layout.window_size > layout.key
    assert f"-DPOL_KEY={layout.key}" in layout.defines()


def test_sockaddr_in_rejects_bad_port() -> None:
    assert len(sockaddr_in("127.0.0.1", 5000)) == 16
    with pytest.raises(ValueError):
        sockaddr_in("127.0.0.1", 0)
