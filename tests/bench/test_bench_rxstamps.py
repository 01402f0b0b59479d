"""Kernel receive stamps as latencies: the real-time/monotonic offset read between two monotonic
reads (the tightest pair), and waiting until the kernel stamps datagrams on arrival."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from bench.mmsg import (
    CTL_SIZE,
    SO_TIMESTAMPNS,
    clock_offset_ns,
    enable_rx_timestamps,
    wait_for_arrival_stamps,
)

OFFSET = 1_700_000_000_000_000_000  # real time minus monotonic time of the scripted clocks


def scripted(monotonic_reads: list[int]) -> tuple[Callable[[], int], Callable[[], int]]:
    """Clocks whose monotonic reads are ``monotonic_reads`` in turn; each real-time read happens
    at the latest monotonic read (a preemption shows as a gap before the next one)."""
    reads: Iterator[int] = iter(monotonic_reads)
    last = [0]

    def monotonic() -> int:
        last[0] = next(reads)
        return last[0]

    def realtime() -> int:
        return last[0] + OFFSET

    return realtime, monotonic


@pytest.mark.parametrize(("reads", "tries", "error_ns"), [
    ([100, 102], 1, 1),  # one tight pair: off by half its gap
    ([100, 50_000_100], 1, 25_000_000),  # preempted 50 ms between the reads: off by half of that
    ([100, 50_000_100, 60_000_000, 60_000_002, 70_000_000, 70_000_010], 3, 1),  # the tightest of 3 wins
    ([0, 4, 10, 30_000_010, 40_000_000, 40_000_004], 3, 2),  # a tie: the first
])
def test_the_clock_offset_is_the_tightest_pair(reads: list[int], tries: int, error_ns: int) -> None:
    realtime, monotonic = scripted(reads)
    got = clock_offset_ns(realtime, monotonic, tries)
    assert abs(got - OFFSET) == error_ns


def test_tries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tries"):
        clock_offset_ns(tries=0)


def test_the_offset_of_the_real_clocks() -> None:
    low = time.time_ns() - time.monotonic_ns()  # the monotonic read came later: at most the offset
    got = clock_offset_ns()
    m = time.monotonic_ns()
    high = time.time_ns() - m  # the real-time read came later: at least the offset
    slack = 5_000_000  # should all three of its pairs have been preempted
    assert low - slack <= got <= high + slack


def test_after_the_wait_a_datagram_read_late_carries_its_arrival_time() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        enable_rx_timestamps(rx)
        assert wait_for_arrival_stamps()
        tx.sendto(b"x", rx.getsockname())
        sent_ns = time.time_ns()  # after the send: the datagram was stamped inside it (loopback)
        time.sleep(0.05)
        _, ancillary, _, _ = rx.recvmsg(16, CTL_SIZE)
        (level, kind, data), = ancillary
        assert (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS)
        sec, nsec = struct.unpack_from("=qq", data)
        assert sec * 1_000_000_000 + nsec <= sent_ns
