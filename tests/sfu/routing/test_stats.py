"""ReceiveStats against RFC 3550 A.3 (loss) and A.8 (jitter), computed here independently."""

from __future__ import annotations

import pytest

from sfu.routing.stats import RATE_MIN_WINDOW_MS, RateMeter, ReceiveStats

AUDIO = 48_000
VIDEO = 90_000


def feed(stats: ReceiveStats, seqs: list[int], *, clock_rate: int, frame_ms: int = 20, t0: int = 1_000) -> None:
    """Each sequence number as sent every ``frame_ms``, arriving with a constant delay."""
    step = clock_rate * frame_ms // 1000
    for seq in seqs:
        n = (seq - seqs[0]) & 0xFFFF
        stats.update(seq & 0xFFFF, (n * step) & 0xFFFFFFFF, t0 + n * frame_ms)


def reference_jitter(arrivals_ms: list[int], timestamps: list[int], clock_rate: int) -> float:
    """RFC 3550 A.8 in floating point: J += (|D(i-1,i)| - J) / 16."""
    j = 0.0
    prev: float | None = None
    for arrival, ts in zip(arrivals_ms, timestamps, strict=True):
        transit = arrival * clock_rate / 1000 - ts
        if prev is not None:
            j += (abs(transit - prev) - j) / 16
        prev = transit
    return j


@pytest.mark.parametrize(
    ("seqs", "highest", "lost", "fraction"),
    [
        (list(range(1000, 1100)), 1099, 0, 0),
        ([s for s in range(100) if s % 4 != 1], 99, 25, 64),  # 25 of 100: 64/256
        ([s for s in range(100) if s % 2 == 0], 98, 49, 49 * 256 // 99),
        ([0, 99], 99, 98, 98 * 256 // 100),
        ([10, 12, 11, 13], 13, 0, 0),  # reordered, nothing lost
        ([10, 11, 11, 11, 12], 12, 0, 0),  # duplicates: cumulative loss clamps at 0
        ([10, 9, 11], 11, 0, 0),  # one older than the first: not counted as a new maximum
        ([65530 + i for i in range(12)], 65536 + 5, 0, 0),  # wraps once
        ([65534, 65535, 1, 2], 65536 + 2, 1, 256 // 5),  # 0 lost across the wrap
        ([5], 5, 0, 0),
    ],
)
def test_loss_and_highest_sequence(seqs: list[int], highest: int, lost: int, fraction: int) -> None:
    stats = ReceiveStats(AUDIO)
    for i, seq in enumerate(seqs):
        stats.update(seq & 0xFFFF, i * 960, 1000 + 20 * i)
    fig = stats.report()
    assert fig.highest_seq == highest
    assert fig.cumulative_lost == lost
    assert fig.fraction_lost == fraction


def test_extended_highest_counts_several_wraps() -> None:
    stats = ReceiveStats(AUDIO)
    seq, ts = 60_000, 0
    for i in range(3 * 65536 // 100):
        stats.update(seq, ts, i)
        seq = (seq + 100) & 0xFFFF
        ts += 960
    last = 60_000 + (3 * 65536 // 100 - 1) * 100
    assert stats.report().highest_seq == last
    assert stats.extended_max == last
    assert stats.cycles == (last >> 16) << 16


def test_fraction_lost_is_per_interval_and_cumulative_is_not() -> None:
    stats = ReceiveStats(VIDEO)
    t = 0

    def send(seqs: list[int]) -> None:
        nonlocal t
        for s in seqs:
            t += 10
            stats.update(s, s * 900, t)

    send(list(range(0, 10)))
    first = stats.report()
    assert (first.fraction_lost, first.cumulative_lost) == (0, 0)
    send([10, 12, 14, 16, 18, 19])  # 10 expected in this interval, 6 received
    second = stats.report()
    assert second.fraction_lost == 4 * 256 // 10
    assert second.cumulative_lost == 4
    third = stats.report()  # nothing new arrived
    assert (third.fraction_lost, third.cumulative_lost, third.highest_seq) == (0, 4, 19)
    send([13])  # a late packet fills a gap: the interval received more than it expected
    fourth = stats.report()
    assert fourth.fraction_lost == 0 and fourth.cumulative_lost == 3
    send(list(range(20, 30)))
    fifth = stats.report()
    assert (fifth.fraction_lost, fifth.cumulative_lost, fifth.highest_seq) == (0, 3, 29)


def test_fraction_lost_is_at_most_255() -> None:
    stats = ReceiveStats(AUDIO)
    stats.update(0, 0, 0)
    stats.report()
    stats.update(1000, 960_000, 20_000)  # 1000 expected, 1 received
    fig = stats.report()
    assert fig.fraction_lost == 999 * 256 // 1000
    assert fig.fraction_lost <= 255
    assert fig.cumulative_lost == 999


def test_before_any_packet() -> None:
    stats = ReceiveStats(AUDIO)
    fig = stats.report()
    assert (fig.fraction_lost, fig.cumulative_lost, fig.highest_seq, fig.jitter) == (0, 0, 0, 0)
    assert not stats.started


@pytest.mark.parametrize(("clock_rate", "frame_ms"), [(AUDIO, 20), (VIDEO, 20), (VIDEO, 40), (8000, 10)])
def test_jitter_of_a_constant_delay_stream_is_zero(clock_rate: int, frame_ms: int) -> None:
    stats = ReceiveStats(clock_rate)
    feed(stats, list(range(500)), clock_rate=clock_rate, frame_ms=frame_ms, t0=123_456)
    assert stats.report().jitter == 0


def test_jitter_is_zero_across_a_timestamp_wrap() -> None:
    stats = ReceiveStats(VIDEO)
    ts0 = 0xFFFFFFFF - 1800 * 50
    for i in range(100):
        stats.update(i, (ts0 + 1800 * i) & 0xFFFFFFFF, 7_000 + 20 * i)
    assert stats.report().jitter == 0


@pytest.mark.parametrize(
    ("clock_rate", "offsets_ms"),
    [
        (AUDIO, [0, 5]),  # every other packet 5 ms late
        (AUDIO, [0, 10, 3, 7]),
        (VIDEO, [0, 0, 0, 30]),
        (VIDEO, [2, 0, 1, 9, 4]),
    ],
)
def test_jitter_follows_rfc_3550_for_jittery_arrival(clock_rate: int, offsets_ms: list[int]) -> None:
    stats = ReceiveStats(clock_rate)
    step = clock_rate * 20 // 1000
    arrivals: list[int] = []
    timestamps: list[int] = []
    history: list[int] = []
    for i in range(400):
        arrival = 10_000 + 20 * i + offsets_ms[i % len(offsets_ms)]
        ts = 77 + step * i
        stats.update(i, ts, arrival)
        arrivals.append(arrival)
        timestamps.append(ts)
        history.append(stats.jitter_q4 >> 4)
    expected = reference_jitter(arrivals, timestamps, clock_rate)
    got = stats.report().jitter
    assert got > 0
    assert abs(got - expected) <= 1 + expected * 0.02, (got, expected)
    assert history[len(offsets_ms) * 2] < history[-1]  # it grew from where it started


def test_jitter_decays_when_arrival_becomes_regular_again() -> None:
    stats = ReceiveStats(AUDIO)
    for i in range(100):
        stats.update(i, 960 * i, 20 * i + (8 if i % 2 else 0))
    peak = stats.report().jitter
    for i in range(100, 400):
        stats.update(i, 960 * i, 20 * i)
    assert peak > 0
    assert stats.report().jitter < peak // 10


@pytest.mark.parametrize(
    ("looks", "expected"),
    [
        ([(0, 1_000)], [0]),  # the first look starts the meter
        ([(0, 0), (1_000, 125_000)], [0, 1_000_000]),  # 125 kB in 1 s: 1 Mbit/s
        ([(0, 0), (1_000, 12_500), (1_200, 50_000)], [0, 100_000, 100_000]),  # too soon: the last rate
        ([(0, 0), (1_000, 12_500), (RATE_MIN_WINDOW_MS + 1_000, 25_000)], [0, 100_000, 200_000]),
        ([(0, 5_000), (2_000, 5_000)], [0, 0]),  # nothing came
        ([(0, 5_000), (1_000, 1_000)], [0, 0]),  # a count that went back (never negative)
    ],
)
def test_rate_meter(looks: list[tuple[int, int]], expected: list[int]) -> None:
    meter = RateMeter()
    assert [meter.bps(octets, now_ms) for now_ms, octets in looks] == expected
