"""FeedbackBuilder: transport-cc feedback from arrival times, with an injected clock.

Every message is serialized and parsed back (``TransportFeedback.parse``) before it is
checked, so what is asserted is what a publisher would read on the wire."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from sfu.packet.twcc import TransportFeedback
from sfu.transport.twcc_recv import FeedbackBuilder

T0 = 1_000_000_000  # us: an arbitrary monotonic start


def wire(fbs: list[TransportFeedback], max_size: int = 1200) -> list[TransportFeedback]:
    out = []
    for fb in fbs:
        data = bytes(fb)
        assert len(data) <= max_size
        out.append(TransportFeedback.parse(data))
    return out


def reported(fbs: list[TransportFeedback]) -> list[tuple[int, int | None]]:
    """(seq, arrival us or None) of every status of the messages, in order."""
    return [(s.seq, s.arrival_us) for fb in fbs for s in fb.statuses()]


def assert_close(got: list[tuple[int, int | None]], want: list[tuple[int, int | None]]) -> None:
    """Same seqs and fates; arrivals within the 125 us of quantization (never accumulated)."""
    assert [(s, a is None) for s, a in got] == [(s, a is None) for s, a in want]
    for (seq, a), (_, b) in zip(got, want, strict=True):
        if a is not None and b is not None:
            assert abs(a - b) <= 125, (seq, a, b)


@dataclass
class Case:
    name: str
    arrivals: list[tuple[int, int]]  # (seq, arrival us offset from T0)
    want: list[tuple[int, int | None]]  # (seq, arrival offset or None) as reported
    counters: dict[str, int] = field(default_factory=dict)


CASES = [
    Case("in order", [(k, 1000 * k) for k in range(10)], [(k, 1000 * k) for k in range(10)]),
    Case(
        "losses",
        [(0, 0), (1, 300), (2, 700), (5, 900), (6, 2000)],
        [(0, 0), (1, 300), (2, 700), (3, None), (4, None), (5, 900), (6, 2000)],
    ),
    Case(
        "reordered (negative delta)",
        [(0, 0), (2, 1000), (1, 1100), (3, 1200)],
        [(0, 0), (1, 1100), (2, 1000), (3, 1200)],
    ),
    Case(
        "duplicate keeps the first arrival",
        [(0, 0), (1, 500), (1, 9000), (2, 1000)],
        [(0, 0), (1, 500), (2, 1000)],
        {"duplicates": 1},
    ),
    Case(
        "seq wrap",
        [(65533, 0), (65534, 100), (65535, 200), (0, 300), (1, 400)],
        [(65533, 0), (65534, 100), (65535, 200), (0, 300), (1, 400)],
    ),
    Case(
        "reordered across the wrap",
        [(65535, 0), (1, 100), (0, 200)],
        [(65535, 0), (0, 200), (1, 100)],
    ),
    Case(
        "late packet from before the first, across the wrap",
        [(0, 0), (65535, 100), (1, 200)],
        [(65535, 100), (0, 0), (1, 200)],
    ),
    Case(
        "sub-tick arrivals",
        [(k, 37 * k) for k in range(40)],
        [(k, 37 * k) for k in range(40)],
    ),
    Case(
        "large gaps between arrivals",
        [(0, 0), (1, 64_000), (2, 8_000_000), (3, 8_000_001)],
        [(0, 0), (1, 64_000), (2, 8_000_000), (3, 8_000_001)],
    ),
    Case(
        "long loss run within the window",
        [(0, 0), (900, 5000)],
        [(0, 0), *[(k, None) for k in range(1, 900)], (900, 5000)],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_one_feedback(case: Case) -> None:
    b = FeedbackBuilder(0x5F, 0)
    for seq, at in case.arrivals:
        b.on_packet(seq, T0 + at)
    fbs = wire(b.poll(T0 // 1000 + 100))
    assert_close(reported(fbs), [(s, None if a is None else T0 + a) for s, a in case.want])
    for name, value in case.counters.items():
        assert getattr(b, name) == value
    assert b.pending == 0
    assert b.poll(T0 // 1000 + 1000) == []  # nothing new: nothing sent


def test_reference_time_is_the_first_arrival_in_64_ms_units() -> None:
    b = FeedbackBuilder(1)
    b.on_packet(7, 64_000 * 1000 + 63_999)
    (fb,) = wire(b.poll(0))
    assert fb.reference_time == 1000 and fb.deltas == [256]  # rounded up: a large delta
    b.on_packet(8, 64_000 * ((1 << 24) + 5) + 10)  # the 24-bit field wraps
    (fb,) = wire(b.poll(1000))
    assert fb.reference_time == 5
    assert fb.fb_count == 1


def test_late_packet_reported_lost_is_reported_again() -> None:
    b = FeedbackBuilder(1)
    for seq, at in [(0, 0), (1, 1000), (3, 3000)]:
        b.on_packet(seq, T0 + at)
    first = wire(b.poll(0))
    assert_close(reported(first), [(0, T0), (1, T0 + 1000), (2, None), (3, T0 + 3000)])
    b.on_packet(2, T0 + 5000)  # arrives after its loss was reported
    b.on_packet(4, T0 + 6000)
    second = wire(b.poll(100))
    assert_close(reported(second), [(2, T0 + 5000), (3, T0 + 3000), (4, T0 + 6000)])
    assert second[0].fb_count == first[-1].fb_count + 1


def test_duplicate_of_a_reported_packet_is_not_reported_again() -> None:
    b = FeedbackBuilder(1)
    b.on_packet(10, T0)
    wire(b.poll(0))
    b.on_packet(10, T0 + 500)
    assert b.duplicates == 1 and b.pending == 0 and b.poll(1000) == []


def test_interval_and_deadline() -> None:
    b = FeedbackBuilder(1, interval_ms=100)
    assert b.next_due_ms(0) is None and b.poll(0) == []
    b.on_packet(0, T0)
    assert b.next_due_ms(5) == 5  # the first one goes at once
    assert len(b.poll(5)) == 1
    b.on_packet(1, T0 + 1000)
    assert b.next_due_ms(50) == 105
    assert b.poll(50) == [] and b.pending == 1
    assert len(b.poll(105)) == 1 and b.pending == 0


def test_early_feedback_when_half_the_window_is_pending() -> None:
    b = FeedbackBuilder(1, window=64, interval_ms=100)
    b.on_packet(0, T0)
    b.poll(0)
    for seq in range(1, 32):
        b.on_packet(seq, T0 + seq)
    assert b.poll(1) == []
    b.on_packet(32, T0 + 32)
    assert b.pending == 32
    assert b.next_due_ms(1) == 25  # a quarter interval after the previous one
    assert b.poll(24) == []
    (fb,) = wire(b.poll(25))
    assert fb.base_seq == 1 and fb.status_count == 32


def test_stragglers_cannot_make_every_poll_build() -> None:
    """Late packets that each move the next feedback's start back a whole window: feedback
    stays at most 4 per interval, and each is bounded by the window."""
    b = FeedbackBuilder(1, window=1024, interval_ms=100)
    for seq in range(1024):
        if seq % 2 == 0:
            b.on_packet(seq, T0 + seq)
    b.poll(0)
    sent = []
    for k in range(1, 1000):  # 1 ms apart: the odd seqs, late
        if 2 * k + 1 < 1024:
            b.on_packet(2 * k + 1, T0 + 10_000 + k)
        sent += wire(b.poll(k))
    assert 8 <= len(sent) <= 4 * 10 + 1
    assert all(fb.status_count <= 1024 for fb in sent)


def test_overflow_keeps_the_newest_window() -> None:
    b = FeedbackBuilder(1, window=16)
    for seq in range(40):
        b.on_packet(seq, T0 + 100 * seq)
    assert b.overflowed == 24 and b.pending == 16
    fbs = wire(b.poll(0))
    assert_close(reported(fbs), [(s, T0 + 100 * s) for s in range(24, 40)])


def test_long_gap_forward_starts_a_new_base() -> None:
    b = FeedbackBuilder(1, window=1024)
    for seq in range(5):
        b.on_packet(seq, T0 + seq)
    wire(b.poll(0))
    b.on_packet(5000, T0 + 100)
    b.on_packet(5001, T0 + 200)
    fbs = wire(b.poll(100))
    assert b.resets == 1
    assert_close(reported(fbs), [(5000, T0 + 100), (5001, T0 + 200)])


def test_sender_restart_backwards_starts_a_new_base_but_a_straggler_is_dropped() -> None:
    b = FeedbackBuilder(1, window=1024)
    for seq in range(3000):
        b.on_packet(seq, T0 + seq)
    wire(b.poll(0))
    b.on_packet(3000 - 1500, T0 + 4000)  # 1.5 windows behind: a straggler
    assert b.too_old == 1 and b.resets == 0 and b.pending == 0
    b.on_packet(100, T0 + 5000)  # 2,900 behind: the sender started over
    b.on_packet(101, T0 + 5100)
    assert b.resets == 1
    assert_close(reported(wire(b.poll(100))), [(100, T0 + 5000), (101, T0 + 5100)])


def test_delta_over_8_s_splits_the_message() -> None:
    b = FeedbackBuilder(1)
    b.on_packet(0, T0)
    b.on_packet(1, T0 + 9_000_000)
    fbs = wire(b.poll(0))
    assert [(fb.base_seq, fb.status_count) for fb in fbs] == [(0, 1), (1, 1)]
    assert_close(reported(fbs), [(0, T0), (1, T0 + 9_000_000)])
    b.on_packet(3, T0 + 9_000_000 + 1)
    b.on_packet(2, T0)  # reordered 9 s back: a negative delta that does not fit
    fbs = wire(b.poll(1000))
    assert_close(reported(fbs), [(2, T0), (3, T0 + 9_000_001)])
    assert len(fbs) == 2


@pytest.mark.parametrize("max_size", [64, 300, 1200])
def test_split_under_max_size_covers_everything_once(max_size: int) -> None:
    rng = random.Random(max_size)
    b = FeedbackBuilder(1, window=4096, max_size=max_size)
    want: list[tuple[int, int | None]] = []
    t = T0
    for seq in range(3000):
        t += rng.choice([10, 300, 70_000])  # small and large deltas
        if rng.random() < 0.1:
            want.append((seq, None))
            continue
        b.on_packet(seq, t)
        want.append((seq, t))
    fbs = wire(b.poll(0), max_size)
    assert len(fbs) > 1
    for prev, nxt in zip(fbs, fbs[1:], strict=False):
        assert nxt.base_seq == (prev.base_seq + prev.status_count) & 0xFFFF
        assert nxt.fb_count == (prev.fb_count + 1) & 0xFF
    assert_close(reported(fbs), want)


def test_random_traffic_stays_bounded_and_reports_every_arrival() -> None:
    """Reordering, duplicates, losses and wraps at random: every message parses and fits, and
    every received packet is reported received with its first arrival time."""
    rng = random.Random(12)
    b = FeedbackBuilder(1, window=256, interval_ms=100)
    first: dict[int, int] = {}
    seen: dict[int, int | None] = {}
    now_us = T0
    seq = 65000
    pending: list[tuple[int, int]] = []
    for _ in range(20_000):
        now_us += rng.randrange(0, 2000)
        if rng.random() < 0.95:
            pending.append((seq & 0xFFFF, seq))
        seq += 1
        if len(pending) > 8:
            del pending[0]  # never delivered: lost
        if pending and rng.random() < 0.9:
            k = rng.randrange(max(0, len(pending) - 4), len(pending))  # reorder by up to 4
            wire_seq, ext = pending.pop(k)
            first.setdefault(ext, now_us)
            b.on_packet(wire_seq, now_us)
            if rng.random() < 0.02:
                b.on_packet(wire_seq, now_us + 5)  # duplicate
        for fb in wire(b.poll(now_us // 1000)):
            for status in fb.statuses():
                ext = seq - ((seq - status.seq) & 0xFFFF)  # nearest below the next seq
                if status.arrival_us is not None or ext not in seen:
                    seen[ext] = status.arrival_us
        assert len(b._exts) == 256 and len(b._arrival) == 256
    for fb in wire(b.build()):
        for status in fb.statuses():
            ext = seq - ((seq - status.seq) & 0xFFFF)
            if status.arrival_us is not None or ext not in seen:
                seen[ext] = status.arrival_us
    assert b.resets == 0 and b.overflowed == 0 and b.too_old == 0
    for ext, at in first.items():
        got = seen[ext]
        assert got is not None and abs(got - at) <= 125, (ext, got, at)
    lost = [ext for ext, at in seen.items() if at is None]
    assert lost and all(ext not in first for ext in lost)


def test_constructor_bounds() -> None:
    for kw, msg in [
        ({"window": 1000}, "power of two"),
        ({"window": 8}, "power of two"),
        ({"interval_ms": 0}, "interval"),
        ({"max_size": 32}, "max size"),
    ]:
        with pytest.raises(ValueError, match=msg):
            FeedbackBuilder(1, **kw)
