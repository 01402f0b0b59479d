"""recvmmsg/sendmmsg rings over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from sfu.transport.mmsg import (
    LEN_INDEX,
    LEN_STRIDE,
    MAX_VLEN,
    RecvRing,
    SendRing,
    address_of_key,
    key_of_address,
)


@pytest.fixture
def socks() -> Iterator[list[socket.socket]]:
    made = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        made.append(s)
    yield made
    for s in made:
        s.close()


def recv_all(sock: socket.socket, want: int, timeout: float = 2.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            time.sleep(0.001)
    return got


@pytest.mark.parametrize(
    ("host", "port"),
    [("127.0.0.1", 1), ("127.0.0.1", 65535), ("10.1.2.3", 5004), ("0.0.0.0", 0), ("255.255.255.255", 443)],
)
def test_keys_round_trip(host: str, port: int) -> None:
    key = key_of_address(host, port)
    assert address_of_key(key) == (host, port)
    assert key != key_of_address(host, (port + 1) % 65536)


@pytest.mark.parametrize(("host", "port"), [("::1", 5000), ("localhost", 5000), ("127.0.0.1", 65536), ("1.2.3.4", -1)])
def test_keys_refuse_what_is_not_ipv4(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        key_of_address(host, port)


@pytest.mark.parametrize(("count", "slot"), [(0, 2048), (MAX_VLEN + 1, 2048), (4, 0), (4, 1500)])
def test_ring_shapes_are_checked(count: int, slot: int) -> None:
    with pytest.raises(ValueError):
        SendRing(count, slot)


def test_recv_fills_slots_with_bytes_lengths_and_sender_keys(socks: list[socket.socket]) -> None:
    rx, a, b = socks
    ring = RecvRing(8, 2048)
    sent = [(a, b"first"), (b, bytes(range(256)) * 5), (a, b"\x80" * 1200)]
    for s, data in sent:
        s.sendto(data, rx.getsockname())
    time.sleep(0.05)
    assert ring.recv(rx.fileno(), 8) == 3
    for i, (s, data) in enumerate(sent):
        n = ring.lens[i * LEN_STRIDE + LEN_INDEX]
        assert n == ring.length(i) == len(data)
        assert bytes(ring.views[i][:n]) == data
        assert address_of_key(ring.names[2 * i]) == s.getsockname()
    assert ring.recv(rx.fileno(), 8) == -11  # EAGAIN: nothing queued


def test_recv_takes_at_most_vlen(socks: list[socket.socket]) -> None:
    rx, a, _ = socks
    ring = RecvRing(4, 2048)
    for i in range(6):
        a.sendto(struct.pack("!H", i), rx.getsockname())
    time.sleep(0.05)
    assert ring.recv(rx.fileno(), 4) == 4
    assert ring.recv(rx.fileno(), 4) == 2
    assert [struct.unpack_from("!H", ring.views[i])[0] for i in range(2)] == [4, 5]


def test_send_delivers_each_slot_to_its_address_in_order(socks: list[socket.socket]) -> None:
    tx, a, b = socks
    ring = SendRing(16, 2048)
    dests = [a, b, a, a, b]
    for k, dest in enumerate(dests):
        payload = bytes([k]) * (100 + k)
        ring.views[k][: len(payload)] = payload
        ring.iov_lens[2 * k + 1] = len(payload)
        ring.names[2 * k] = key_of_address(*dest.getsockname())
    ring.n = len(dests)
    assert ring.send(tx.fileno()) == (5, [])
    assert ring.n == 0
    assert recv_all(a, 3) == [bytes([k]) * (100 + k) for k in (0, 2, 3)]
    assert recv_all(b, 2) == [bytes([k]) * (100 + k) for k in (1, 4)]
    assert ring.send(tx.fileno()) == (0, [])  # empty: nothing happens


def test_a_refused_datagram_is_skipped_and_the_rest_go_out(socks: list[socket.socket]) -> None:
    tx, a, _ = socks
    ring = SendRing(4, 2048)
    for k in range(3):
        ring.iov_lens[2 * k + 1] = 10
        ring.names[2 * k] = key_of_address(*a.getsockname())
    ring.names[2] = key_of_address("127.0.0.1", 0)  # port 0: the kernel refuses this one (EINVAL)
    ring.n = 3
    sent, refused = ring.send(tx.fileno())
    assert (sent, len(refused)) == (2, 1)
    assert refused[0] != 0
    assert len(recv_all(a, 2)) == 2
