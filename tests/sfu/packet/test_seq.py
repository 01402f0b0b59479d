"""Wraparound arithmetic, unwrapping and munging, with wrap cases everywhere."""

from __future__ import annotations

import random

import pytest

from sfu.packet.seq import (
    DropOutcome,
    SeqMunger,
    SeqOutcome,
    SeqUnwrapper,
    TimestampMunger,
    elapsed_ticks,
    seq_diff,
    seq_newer,
    ts_diff,
    ts_newer,
)

SEQ_CASES = [
    # a, b, diff(a, b), newer(a, b)
    (0, 0, 0, False),
    (1, 0, 1, True),
    (0, 1, -1, False),
    (0, 65535, 1, True),  # wrap
    (65535, 0, -1, False),
    (5, 65530, 11, True),
    (65530, 5, -11, False),
    (32767, 0, 32767, True),
    (32768, 0, -32768, False),  # exactly half: neither is newer
    (0, 32768, -32768, False),
    (40000, 0, 40000 - 65536, False),
    (100, 65600, 100 - 64, True),  # inputs are taken modulo 2**16
]


@pytest.mark.parametrize(("a", "b", "diff", "newer"), SEQ_CASES)
def test_seq_table(a: int, b: int, diff: int, newer: bool) -> None:
    assert seq_diff(a, b) == diff
    assert seq_newer(a, b) is newer


TS_CASES = [
    (0, 0, 0, False),
    (3000, 0, 3000, True),
    (0, 0xFFFFFFFF, 1, True),
    (0xFFFFFFFF, 0, -1, False),
    (100, 0xFFFFFF00, 356, True),
    (0x7FFFFFFF, 0, 0x7FFFFFFF, True),
    (0x80000000, 0, -(1 << 31), False),
    (0, 0x80000000, -(1 << 31), False),
    (0xC0000000, 0, -(1 << 30), False),
]


@pytest.mark.parametrize(("a", "b", "diff", "newer"), TS_CASES)
def test_ts_table(a: int, b: int, diff: int, newer: bool) -> None:
    assert ts_diff(a, b) == diff
    assert ts_newer(a, b) is newer


def test_seq_newer_is_antisymmetric() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        a, b = rng.randrange(65536), rng.randrange(65536)
        assert not (seq_newer(a, b) and seq_newer(b, a))
        if a != b and (a - b) & 0xFFFF != 0x8000:
            assert seq_newer(a, b) != seq_newer(b, a)
        assert (b + seq_diff(a, b)) & 0xFFFF == a


UNWRAP_CASES = [
    ("in order", [1, 2, 3], [1, 2, 3], 3),
    ("wrap", [65534, 65535, 0, 1], [65534, 65535, 65536, 65537], 65537),
    ("late packet from before the wrap", [65535, 1, 0, 65534], [65535, 65537, 65536, 65534], 65537),
    ("reordered across the wrap", [65533, 0, 65535, 65534, 2], [65533, 65536, 65535, 65534, 65538], 65538),
    ("before the first", [5, 3, 65530], [5, 3, -6], 5),
    ("two wraps", [0, 30000, 60000, 24464, 54464, 18928], [0, 30000, 60000, 90000, 120000, 150000], 150000),
    ("backwards wrap is not a wrap", [10, 65535], [10, -1], 10),
    ("duplicate", [7, 7, 7], [7, 7, 7], 7),
    ("exactly half ahead counts as behind, like seq_diff", [0, 32768, 32767], [0, -32768, 32767], 32767),
]


@pytest.mark.parametrize(
    ("name", "seqs", "expected", "highest"), UNWRAP_CASES, ids=[c[0] for c in UNWRAP_CASES]
)
def test_unwrapper(name: str, seqs: list[int], expected: list[int], highest: int) -> None:
    u = SeqUnwrapper()
    assert not u.started
    assert [u.unwrap(s) for s in seqs] == expected
    assert u.highest == highest
    assert u.peek(seqs[-1]) == expected[-1]


def test_unwrapper_peek_does_not_record() -> None:
    u = SeqUnwrapper()
    u.unwrap(65535)
    assert u.peek(1) == 65537
    assert u.highest == 65535
    u.reset()
    assert u.unwrap(9) == 9


def test_unwrapper_long_run_matches_a_counter() -> None:
    u = SeqUnwrapper()
    rng = random.Random(2)
    start = 65000
    ext = [start + i for i in range(300000)]
    # shuffle locally (reordering of up to 50 positions)
    for i in range(0, len(ext) - 50, 50):
        chunk = ext[i : i + 50]
        rng.shuffle(chunk)
        ext[i : i + 50] = chunk
    u.unwrap(start)
    for e in ext:
        assert u.unwrap(e & 0xFFFF) == e


# --------------------------------------------------------------------------- SeqMunger


def run(m: SeqMunger, ops: list[tuple[str, int]]) -> list[int]:
    out: list[int] = []
    for op, seq in ops:
        if op == "map":
            out.append(m.map(seq))
        elif op == "drop":
            out.append(int(m.drop(seq)) + 1000)  # distinguishable in the table
        elif op == "switch":
            m.switch_source()
        elif op == "insert":
            out.append(m.insert())
    return out


D = SeqOutcome.DUPLICATE
DR = SeqOutcome.DROPPED
OLD = SeqOutcome.TOO_OLD
SKIP = 1000 + DropOutcome.SKIPPED
GAP = 1000 + DropOutcome.GAP
FWD = 1000 + DropOutcome.ALREADY_FORWARDED

M = "map"

MUNGER_CASES = [
    ("in order from base", 100, [(M, 5000), (M, 5001), (M, 5002)], [100, 101, 102]),
    ("base near wrap", 65534, [(M, 7), (M, 8), (M, 9), (M, 10)], [65534, 65535, 0, 1]),
    ("incoming wrap", 10, [(M, 65535), (M, 0), (M, 1)], [10, 11, 12]),
    ("gap stays a gap", 0, [(M, 1), (M, 4)], [0, 3]),
    ("late fills its slot", 0, [(M, 1), (M, 4), (M, 3), (M, 2)], [0, 3, 2, 1]),
    ("late across incoming wrap", 500, [(M, 65534), (M, 1), (M, 0), (M, 65535)], [500, 503, 502, 501]),
    # upstream loss recovery: a packet recovered late (RTX or reordering) takes the slot it would
    # have had, whatever went on in between (fast-path runs, wraps, drops)
    ("late after an in-order run", 0, [(M, 1), (M, 2), (M, 4), (M, 5), (M, 6), (M, 7), (M, 3)], [0, 1, 3, 4, 5, 6, 2]),
    ("late across the outgoing wrap", 65534, [(M, 10), (M, 12), (M, 13), (M, 11)], [65534, 0, 1, 65535]),
    ("late across both wraps", 65535, [(M, 65535), (M, 1), (M, 2), (M, 0)], [65535, 1, 2, 0]),
    ("late after a drop keeps the shifted offset", 0, [(M, 1), ("drop", 2), (M, 4), (M, 5), (M, 3)], [0, SKIP, 2, 3, 1]),
    ("late then its duplicate", 0, [(M, 1), (M, 3), (M, 2), (M, 2)], [0, 2, 1, D]),
    ("duplicate newest", 0, [(M, 1), (M, 1)], [0, D]),
    ("duplicate older", 0, [(M, 1), (M, 2), (M, 3), (M, 2)], [0, 1, 2, D]),
    ("before first is too old", 0, [(M, 10), (M, 9)], [0, OLD]),
    ("drop newest: no gap", 0, [(M, 1), ("drop", 2), (M, 3), (M, 4)], [0, SKIP, 1, 2]),
    ("drop with a hole before it", 0, [(M, 1), ("drop", 3), (M, 4), (M, 2)], [0, SKIP, 2, 1]),
    ("two drops", 0, [(M, 1), ("drop", 2), ("drop", 3), (M, 4), (M, 5)], [0, SKIP, SKIP, 1, 2]),
    ("dropped then seen again", 0, [(M, 1), ("drop", 2), (M, 3), (M, 2)], [0, SKIP, 1, DR]),
    ("late drop leaves a gap", 0, [(M, 1), (M, 3), ("drop", 2), (M, 4)], [0, 2, GAP, 3]),
    ("drop after forward", 0, [(M, 1), ("drop", 1)], [0, FWD]),
    ("drop across wrap", 0, [(M, 65534), ("drop", 65535), (M, 0), (M, 1)], [0, SKIP, 1, 2]),
    (
        "switch source continues at last + 1",
        65535,
        [(M, 100), (M, 101), ("switch", 0), (M, 40000), (M, 40001)],
        [65535, 0, 1, 2],
    ),
    (
        "switch after a gap at the end",
        10,
        [(M, 100), (M, 103), ("switch", 0), (M, 7), (M, 6)],
        [10, 13, 14, OLD],
    ),
    (
        "late packet of the old source after switch maps as new stream data",
        0,
        [(M, 100), (M, 101), ("switch", 0), (M, 5000), (M, 5001), (M, 4999)],
        [0, 1, 2, 3, OLD],
    ),
    ("insert shifts following", 0, [(M, 1), ("insert", 0), (M, 2), (M, 3)], [0, 1, 2, 3]),
    ("insert then late", 0, [(M, 1), (M, 3), ("insert", 0), (M, 2), (M, 4)], [0, 2, 3, 1, 4]),
    ("insert before the first packet", 50, [("insert", 0), (M, 9), (M, 10)], [50, 51, 52]),
    ("drop before first packet", 0, [("drop", 1), (M, 2), (M, 3)], [1000 + DropOutcome.NOT_STARTED, 0, 1]),
]


@pytest.mark.parametrize(("name", "base", "ops", "expected"), MUNGER_CASES, ids=[c[0] for c in MUNGER_CASES])
def test_seq_munger(name: str, base: int, ops: list[tuple[str, int]], expected: list[int]) -> None:
    assert run(SeqMunger(base), ops) == expected


def test_seq_munger_window() -> None:
    m = SeqMunger(0, window=64)
    assert m.map(1000) == 0
    assert m.map(1100) == 100
    assert m.map(1037) == 37  # 63 behind: inside the window
    assert m.map(1036) == SeqOutcome.TOO_OLD  # 64 behind
    assert m.map(1099) == 99  # late, never sent: mapped
    assert m.drop(1000) == DropOutcome.TOO_OLD


def test_seq_munger_unmap() -> None:
    m = SeqMunger(65534)
    outs = [m.map(s) for s in (10, 11, 13)]
    assert outs == [65534, 65535, 1]
    assert m.unmap(65534) == 10
    assert m.unmap(65535) == 11
    assert m.unmap(0) == -1  # reserved for 12, not seen yet
    assert m.unmap(1) == 13
    assert m.map(12) == 0
    assert m.unmap(0) == 12
    p = m.insert()
    assert p == 2 and m.unmap(2) == -1
    m.switch_source()
    assert m.map(777) == 3
    assert m.unmap(3) == 777
    assert m.unmap(1) == -1  # previous source


def test_seq_munger_rejects_bad_windows() -> None:
    for window in (0, 15, 100, 1 << 16):
        with pytest.raises(ValueError, match="window must be"):
            SeqMunger(0, window=window)


def test_seq_munger_range_pruning_marks_older_packets_too_old() -> None:
    m = SeqMunger(0, max_ranges=4)
    m.map(0)
    m.map(1)  # slot 1; seq 2 missing
    for s in range(3, 20, 2):  # drop every odd seq from 3
        assert m.drop(s) == DropOutcome.SKIPPED
        m.map(s + 1)
    # seq 2 predates the oldest remembered range: it can no longer be placed safely
    assert m.map(2) == SeqOutcome.TOO_OLD


def test_seq_munger_long_random_stream_is_continuous_and_consistent() -> None:
    """Reordered stream with padding drops and source switches: outputs are unique, and the
    packets that are forwarded, once sorted by send order within each source, are gapless."""
    rng = random.Random(42)
    m = SeqMunger(65000)
    sent: list[int] = []
    seen_out: set[int] = set()
    ext_out: list[int] = []
    last_out_ext = 65000 - 1
    for source in range(5):
        start = rng.randrange(65536)
        n = 3000
        dropped = {i for i in range(n) if rng.random() < 0.05 and i > 0}
        order = list(range(n))
        for i in range(0, n - 8, 8):
            chunk = order[i : i + 8]
            rng.shuffle(chunk)
            order[i : i + 8] = chunk
        order.remove(0)
        order.insert(0, 0)
        source_outs: list[int] = []
        for i in order:
            seq = (start + i) & 0xFFFF
            if i in dropped:
                m.drop(seq)
                continue
            out = m.map(seq)
            assert out >= 0, (source, i, out)
            sent.append(out)
            source_outs.append(out)
        # Unwrap this source's outputs relative to the last output before it.
        exts = []
        for out in source_outs:
            exts.append(last_out_ext + seq_diff(out, last_out_ext & 0xFFFF))
        assert len(set(exts)) == len(exts)
        assert min(exts) == last_out_ext + 1  # continuous across the switch
        last_out_ext = max(exts)
        ext_out.extend(exts)
        seen_out.update(exts)
        m.switch_source()
    # Reordering of a drop relative to later packets can leave a gap; they are rare: check that
    # at least 95% of the range is used and nothing is used twice.
    span = max(ext_out) - min(ext_out) + 1
    assert len(seen_out) == len(ext_out)
    assert len(ext_out) >= 0.95 * span


# --------------------------------------------------------------------------- TimestampMunger

TS_MUNGER_CASES = [
    # base, ops (("map", ts) | ("switch", elapsed)), expected map outputs
    ("keeps distances", 1000, [("map", 50), ("map", 3050), ("map", 6050)], [1000, 4000, 7000]),
    ("out wraps", 0xFFFFFF00, [("map", 0), ("map", 0x200)], [0xFFFFFF00, 0x100]),
    ("in wraps", 5, [("map", 0xFFFFFFFF), ("map", 2)], [5, 8]),
    ("late keeps offset", 0, [("map", 9000), ("map", 6000), ("map", 12000)], [0, (-3000) & 0xFFFFFFFF, 3000]),
    (
        "switch continues after elapsed",
        1000,
        [("map", 10), ("map", 3010), ("switch", 2880), ("map", 777777), ("map", 780777)],
        [1000, 4000, 6880, 9880],
    ),
    (
        "switch with no elapsed time still moves forward",
        0,
        [("map", 100), ("switch", 0), ("map", 5)],
        [0, 1],
    ),
    (
        "switch measured from the newest, not the last mapped",
        0,
        [("map", 3000), ("map", 0), ("switch", 100), ("map", 42)],
        [0, (-3000) & 0xFFFFFFFF, 100],
    ),
    (
        "switch across out wrap",
        0xFFFFFFF0,
        [("map", 0), ("switch", 0x20), ("map", 123)],
        [0xFFFFFFF0, 0x10],
    ),
]


@pytest.mark.parametrize(
    ("name", "base", "ops", "expected"), TS_MUNGER_CASES, ids=[c[0] for c in TS_MUNGER_CASES]
)
def test_timestamp_munger(name: str, base: int, ops: list[tuple[str, int]], expected: list[int]) -> None:
    m = TimestampMunger(base)
    assert not m.started
    got = []
    for op, v in ops:
        if op == "map":
            got.append(m.map(v))
        else:
            m.switch_source(v)
    assert got == expected
    assert m.started


def test_timestamp_munger_translate_does_not_move_last_out() -> None:
    m = TimestampMunger(0)
    m.map(1000)
    assert m.translate(91000) == 90000
    assert m.last_out == 0
    m.switch_source(10)
    assert m.map(5) == 10
    assert m.translate(1005) == 1010


ELAPSED_CASES = [
    (1000, 0, 90000, 90000),
    (1020, 1000, 48000, 960),
    (1000, 1000, 90000, 0),
    (900, 1000, 90000, 0),  # clock went backwards
    (1001, 1000, 8000, 8),
]


@pytest.mark.parametrize(("now", "then", "rate", "ticks"), ELAPSED_CASES)
def test_elapsed_ticks(now: int, then: int, rate: int, ticks: int) -> None:
    assert elapsed_ticks(now, then, rate) == ticks


class _SlowMunger(SeqMunger):
    """The same munger with its in-order fast path switched off: every packet takes ``_map``."""

    __slots__ = ()

    def _rearm(self) -> None:
        self.fast_next = -1


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_matches_the_full_munger_on_random_streams(seed: int) -> None:
    rng = random.Random(seed)
    base = rng.randrange(65536)
    fast, slow = SeqMunger(base, window=64, max_ranges=8), _SlowMunger(base, window=64, max_ranges=8)
    seq = rng.randrange(65536)
    runs = 0
    for i in range(6000):
        r = rng.random() * (0.2 if (i // 500) % 2 else 1.0)  # odd phases: long in-order runs
        if r < 0.80:  # mostly in order, across the 16-bit wrap
            seq = (seq + 1) & 0xFFFF
            pick = seq
        elif r < 0.86:  # a gap
            seq = (seq + rng.randrange(2, 40)) & 0xFFFF
            pick = seq
        else:  # late, duplicate or very old
            pick = (seq - rng.randrange(0, 200)) & 0xFFFF
        op = rng.random()
        if (i // 500) % 2 and rng.random() < 0.99:
            op = 0.0  # odd phases: runs longer than the window between other operations
        if op < 0.9:
            a, b = fast.map(pick), slow.map(pick)
            runs += a == b and pick == seq
            assert a == b
        elif op < 0.95:
            assert fast.drop(pick) == slow.drop(pick)
        elif op < 0.97:
            assert fast.insert() == slow.insert()
        elif op < 0.98:
            fast.switch_source()
            slow.switch_source()
            seq = rng.randrange(65536)
        else:
            assert fast.last_out == slow.last_out
            out = (fast.last_out - rng.randrange(0, 100)) & 0xFFFF
            assert fast.unmap(out) == slow.unmap(out)
    assert fast.last_out == slow.last_out
    for out in range(65536 - 1, 0, -997):
        assert fast.unmap(out) == slow.unmap(out)
    assert runs > 1000


def test_timestamp_fast_fields_follow_map() -> None:
    rng = random.Random(7)
    inlined, called = TimestampMunger(123), TimestampMunger(123)
    ts = rng.randrange(1 << 32)
    for i in range(2000):
        ts = (ts + rng.choice([3000, 3000, 0, -3000, 1 << 31, 90000])) & 0xFFFFFFFF
        if i % 500 == 499:
            inlined.switch_source(90)
            called.switch_source(90)
        if inlined.fast_offset >= 0:
            out = (ts + inlined.fast_offset) & 0xFFFFFFFF
            if 0 < (out - inlined.newest_out) & 0xFFFFFFFF < 1 << 31:
                inlined.newest_out = out
        else:
            out = inlined.map(ts)
        assert out == called.map(ts)
        assert inlined.last_out == called.last_out
    assert called.fast_offset == called.offset


def test_munger_rings_are_allocated_with_the_first_packet() -> None:
    m = SeqMunger(100)
    assert m._in_ext == [] and m._out_ext == []  # a downtrack that never receives holds no ring
    assert m.insert() == 100  # an originated packet before any media: no ring needed
    assert m.unmap(100) == -1 and m.unmap(99) == -1
    assert m.drop(7) is DropOutcome.NOT_STARTED
    assert m.map(5000) == 101
    assert len(m._in_ext) == len(m._out_ext) == 1024
    assert m.unmap(101) == 5000 and m.map(5001) == 102 and m.unmap(102) == 5001
