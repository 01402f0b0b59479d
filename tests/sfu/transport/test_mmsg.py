"""recvmmsg/sendmmsg rings over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from sfu.transport.mmsg import (
    LEN_INDEX,
    LEN_STRIDE,
    RecvRing,
    SendRing,
    address_of_key,
    gso_supported,
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


@pytest.mark.parametrize(("lanes", "depth", "slot"), [(0, 8, 2048), (4, 0, 2048), (4, 65, 2048), (4096, 2, 2048), (4, 4, 1500)])
def test_ring_shapes_are_checked(lanes: int, depth: int, slot: int) -> None:
    with pytest.raises(ValueError):
        SendRing(lanes, depth, slot)


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


def fill_lane(ring: SendRing, dest: socket.socket, payloads: list[bytes]) -> None:
    lane = ring.used
    ring.used += 1
    for i, payload in enumerate(payloads):
        k = lane * ring.depth + i
        ring.views[k][: len(payload)] = payload
        ring.iov_lens[2 * k + 1] = len(payload)
        ring.names[2 * k] = key_of_address(*dest.getsockname())
    ring.fills[lane] = len(payloads)


def packets(tag: int, sizes: list[int]) -> list[bytes]:
    return [bytes([tag, i]) + bytes([i]) * (size - 2) for i, size in enumerate(sizes)]


# (sizes in lane A, sizes in lane B): equal runs, a shorter last one, shorter ones inside runs,
# longer ones after shorter ones, single packets, a run past the 65 000-byte GSO cap
SEND_CASES = [
    ([1210] * 32, [1210] * 5),
    ([1210, 1210, 800], [1]),
    ([1210, 900, 1210, 1210, 300, 1300, 1300], [50, 60, 70]),
    ([2000] * 32, [1400] * 3 + [20]),
    # one odd size inside a lane that starts and ends with the same size (issue 11, defect 17:
    # sent as one GSO message, the kernel cut it every 100 bytes and two packets were corrupted)
    ([100, 90, 100], [1100, 1101, 1100]),
    ([100, 120, 100], [1100, 1100, 600, 1100]),
]


@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
@pytest.mark.parametrize(("sizes_a", "sizes_b"), SEND_CASES)
def test_send_delivers_each_lane_to_its_address_in_order(
    socks: list[socket.socket], gso: bool, sizes_a: list[int], sizes_b: list[int]
) -> None:
    tx, a, b = socks
    if gso and not gso_supported(tx):
        pytest.skip("no UDP GSO in this kernel")
    ring = SendRing(4, 32, 2304, gso=gso)
    epoch = ring.epoch
    first_a, second_b, third_a = packets(1, sizes_a), packets(2, sizes_b), packets(3, [100, 100])
    fill_lane(ring, a, first_a)
    fill_lane(ring, b, second_b)
    fill_lane(ring, a, third_a)
    assert ring.n == len(first_a) + len(second_b) + 2
    assert ring.send(tx.fileno()) == (ring_n := len(first_a) + len(second_b) + 2, [])
    assert ring.used == 0 and ring.n == 0 and ring.epoch != epoch
    assert recv_all(a, len(first_a) + 2) == first_a + third_a
    assert recv_all(b, len(second_b)) == second_b
    assert ring.send(tx.fileno()) == (0, [])  # empty: nothing happens
    assert ring_n > 0


@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
def test_a_refused_datagram_is_skipped_and_the_rest_go_out(socks: list[socket.socket], gso: bool) -> None:
    tx, a, _ = socks
    ring = SendRing(2, 4, 2048, gso=gso and gso_supported(tx))
    fill_lane(ring, a, packets(1, [10, 10, 10]))
    ring.names[0] = key_of_address("127.0.0.1", 0)  # port 0: the kernel refuses this one (EINVAL)
    fill_lane(ring, a, packets(2, [10]))
    # GSO: the lane's message is refused, then retried packet by packet
    assert ring.send(tx.fileno()) == (3, [errno.EINVAL])
    assert recv_all(a, 3) == packets(1, [10, 10, 10])[1:] + packets(2, [10])
