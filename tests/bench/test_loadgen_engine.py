"""The generator's verifying receiver, fed real SRTP packets over UDP on 127.0.0.1, with and without defects."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from bench.loadgen.engine import Counters, Receiver, RecvRing
from bench.loadgen.plan import Stream
from bench.loadgen.wire import (
    BOUNDS_NS,
    PAYLOAD_AT,
    RID_PACKETS,
    RTP_HEADER_LEN,
    Defect,
    StreamWriter,
    bucket,
    check_packet,
    checks_for,
    percentiles_ms,
)
from bench.mmsg import SO_TIMESTAMPNS, Ring, wait_for_arrival_stamps
from bench.srtpkit import SLOT_SIZE, InplaceSession, Key

VIDEO = Stream(id=0, kind="video", ssrc=0x1234, pt=96, packet_size=1200, interval_s=1 / 30, per_frame=3,
               keyframe_interval_s=1.0)
AUDIO = Stream(id=1, kind="audio", ssrc=0x5678, pt=111, packet_size=120, interval_s=0.02, per_frame=1)
LAYER = Stream(id=2, kind="video", ssrc=0x9ABC, pt=96, packet_size=600, interval_s=1 / 30, per_frame=1,
               keyframe_interval_s=1.0, rid="f")
STREAMS = [VIDEO, AUDIO, LAYER]


class Harness:
    """A sender writing the generator's packets, protecting them with the key the receiver holds."""

    def __init__(self) -> None:
        self.key = Key.random()
        self.rx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx_sock.bind(("127.0.0.1", 0))
        self.rx_sock.setblocking(False)
        self.tx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.checks = checks_for(STREAMS)
        self.counters = Counters(len(STREAMS))
        self.receiver = Receiver(self.rx_sock, self.key, self.checks, self.counters)
        self.tx = InplaceSession(self.key, outbound=True)
        self.slot = Ring(1)
        self.writers = {s.id: StreamWriter(s, self.checks[s.id]) for s in STREAMS}
        # the kernel turns stamping on for the machine a while after the first socket asks for it
        assert wait_for_arrival_stamps(), "the kernel never stamped a datagram on arrival"

    def packet(self, stream: int, *, flip_at: int = -1) -> bytes:
        """The next clear packet of ``stream`` (``flip_at``: a payload byte damaged before protection)."""
        w = self.writers[stream]
        length = w.write(self.slot.view, 0, 0, 1, keyframe=w.seq == 0, now_ns=time.monotonic_ns())
        if flip_at >= 0:
            self.slot.view[flip_at] ^= 0x5A
        return bytes(self.slot.view[:length])

    def send(self, stream: int, *, flip_at: int = -1, tamper_srtp: bool = False) -> None:
        clear = self.packet(stream, flip_at=flip_at)
        self.slot.view[: len(clear)] = clear
        n = self.tx.protect(self.slot.ptrs[0], len(clear))
        data = bytearray(self.slot.view[:n])
        if tamper_srtp:
            data[-20] ^= 1  # ciphertext no longer matches its auth tag
        self.tx_sock.sendto(data, self.rx_sock.getsockname())

    def skip(self, stream: int) -> None:
        self.packet(stream)  # written, never sent: a sequence gap

    def receive(self, want: int) -> None:
        ring = RecvRing(64)
        deadline = time.monotonic() + 5
        got = 0
        while got < want and time.monotonic() < deadline:
            got += self.receiver.drain(ring)
            time.sleep(0.002)
        assert got == want

    def close(self) -> None:
        self.receiver.close()
        self.tx.close()
        self.rx_sock.close()
        self.tx_sock.close()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def test_intact_streams_are_verified_with_latency(h: Harness) -> None:
    for _ in range(20):
        h.send(0)
        h.send(1)
    for _ in range(RID_PACKETS + 4):  # the first ones carry the mid/rid extension, then plain headers
        h.send(2)
    h.receive(40 + RID_PACKETS + 4)
    c = h.counters
    assert c.recv == [20, 20, RID_PACKETS + 4]
    assert c.verified == 40 + RID_PACKETS + 4
    assert (c.corrupt, c.rejected, c.gaps, c.missing, c.late) == (0, 0, 0, 0, 0)
    assert sum(c.hist) == c.verified
    assert c.kernel_stamped == c.verified  # every latency is from the kernel's receive timestamp
    assert percentiles_ms(c.hist)["p50"] is not None and percentiles_ms(c.hist)["p50"] < 1000


def test_latency_is_the_kernel_queueing_time_not_the_read_time(h: Harness) -> None:
    """Packets read long after they arrived show the latency they had on arrival: at most the time
    their sending took (each is stamped and queued inside it, on loopback), which is far below
    the time they then waited to be read, however long a loaded machine took to send them."""
    started = time.monotonic_ns()
    for _ in range(10):
        h.send(1)
    sending_ns = time.monotonic_ns() - started
    unread_s = max(0.2, 4 * sending_ns / 1e9)
    time.sleep(unread_s)
    h.receive(10)
    c = h.counters
    assert c.verified == c.kernel_stamped == 10
    p999 = percentiles_ms(c.hist)["p999"]
    within_sending_ms = BOUNDS_NS[bucket(sending_ns + 1_000_000)] / 1e6  # + 1 ms for the clocks' offset
    assert within_sending_ms < unread_s * 1000
    assert p999 is not None and p999 <= within_sending_ms, (p999, sending_ns / 1e6)


def test_without_kernel_stamps_the_latency_is_the_read_time(h: Harness) -> None:
    h.rx_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)  # the kernel writes no control message
    for _ in range(3):
        h.send(1)
    h.receive(3)
    c = h.counters
    assert c.verified == 3 and c.kernel_stamped == 0 and sum(c.hist) == 3


def test_a_corrupt_payload_is_detected(h: Harness) -> None:
    h.send(0)
    h.send(0, flip_at=RTP_HEADER_LEN + PAYLOAD_AT + 500)  # a filler byte
    h.send(1, flip_at=RTP_HEADER_LEN + 4)  # the audio stamp's magic
    h.send(0)
    h.receive(4)
    assert h.counters.corrupt == 2
    assert h.counters.verified == 2
    assert h.counters.gaps == 0


def test_a_sequence_gap_is_detected(h: Harness) -> None:
    h.send(0)
    h.skip(0)
    h.skip(0)
    h.send(0)
    h.send(0)
    h.receive(3)
    c = h.counters
    assert (c.gaps, c.missing) == (1, 2)
    assert c.verified == 3 and c.corrupt == 0


def test_a_tampered_srtp_packet_is_rejected(h: Harness) -> None:
    h.send(1)
    h.send(1, tamper_srtp=True)
    h.send(1)
    h.receive(3)
    assert h.counters.rejected == 1 and h.counters.verified == 2


def test_check_packet_names_the_defect() -> None:
    checks = checks_for(STREAMS)
    ring = Ring(1)
    w = StreamWriter(VIDEO, checks[0])
    n = w.write(ring.view, 0, 0, 1, keyframe=True, now_ns=123)
    assert check_packet(ring.view, 0, n, checks) == (None, 0, 0, 123)
    assert check_packet(ring.view, 0, n - 1, checks)[0] == Defect.LENGTH
    ring.view[n - 1] ^= 1
    assert check_packet(ring.view, 0, n, checks)[0] == Defect.FILLER
    ring.view[RTP_HEADER_LEN + 2] ^= 1
    assert check_packet(ring.view, 0, n, checks)[0] == Defect.MAGIC
    assert check_packet(ring.view, 0, 20, checks)[0] == Defect.TRUNCATED
    assert SLOT_SIZE >= 1300


def test_percentiles_from_buckets() -> None:
    assert percentiles_ms({}) == {"p50": None, "p99": None, "p999": None}
    idx = next(i for i, b in enumerate(BOUNDS_NS) if b >= 1_000_000)  # ~1 ms
    hist = {0: 98, idx: 2}
    p = percentiles_ms(hist)
    assert p["p50"] == pytest.approx(BOUNDS_NS[0] / 1e6)
    assert p["p99"] == pytest.approx(BOUNDS_NS[idx] / 1e6, rel=1e-3) and 1.0 <= p["p99"] < 1.06
