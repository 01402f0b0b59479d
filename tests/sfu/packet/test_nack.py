"""The upstream hole tracker: gaps, batches, retries, give-ups, limits, wraparound (tables)."""

from __future__ import annotations

from typing import Any

import pytest

from sfu.packet.nack import NEVER, GiveUp, NackAttempt, NackOutcome, NackTracker

F, IN, GAP, REC, LATE, RESET = (
    NackOutcome.FIRST,
    NackOutcome.IN_ORDER,
    NackOutcome.GAP,
    NackOutcome.RECOVERED,
    NackOutcome.LATE,
    NackOutcome.RESET,
)

# Each step: ("pkt", seq, now) -> NackOutcome; ("due", None, now) -> list of seqs NACKed;
# ("kf", seq, now) -> holes closed by a keyframe at seq.  ``fast`` packets go the way a hot loop
# inlines it (``next_seq`` advanced without a call while nothing is due).
TRACKER_CASES: list[tuple[str, dict[str, Any], list[tuple[str, int | None, int]], list[Any]]] = [
    (
        "in order: nothing to NACK",
        {},
        [("pkt", 10, 0), ("pkt", 11, 1), ("pkt", 12, 2), ("due", None, 3)],
        [F, IN, IN, []],
    ),
    (
        "one gap, NACKed at once in one batch, recovered",
        {},
        [("pkt", 10, 0), ("pkt", 13, 10), ("due", None, 10), ("pkt", 11, 12), ("pkt", 12, 13), ("due", None, 200)],
        [F, GAP, [11, 12], REC, REC, []],
    ),
    (
        "gap across the wrap",
        {},
        [("pkt", 65534, 0), ("pkt", 1, 10), ("due", None, 10), ("pkt", 0, 11), ("pkt", 65535, 12)],
        [F, GAP, [65535, 0], REC, REC],
    ),
    (
        "late packet from before the wrap after the wrap",
        {},
        [("pkt", 65533, 0), ("pkt", 2, 1), ("due", None, 1), ("pkt", 65535, 2), ("due", None, 150)],
        [F, GAP, [65534, 65535, 0, 1], REC, [65534, 0, 1]],
    ),
    (
        "retries spaced by the interval (default rtt 100 ms), then given up",
        {"max_retries": 3},
        [
            ("pkt", 1, 0),
            ("pkt", 3, 0),
            ("due", None, 0),
            ("due", None, 50),
            ("due", None, 100),
            ("due", None, 150),
            ("due", None, 200),
            ("due", None, 299),
            ("due", None, 300),
            ("pkt", 2, 310),
        ],
        [F, GAP, [2], [], [2], [], [2], [], [], LATE],
    ),
    (
        "holes found within the batch interval wait for one batch",
        {"batch_interval_ms": 5},
        [("pkt", 1, 0), ("pkt", 3, 0), ("due", None, 0), ("pkt", 5, 2), ("due", None, 2), ("due", None, 5)],
        [F, GAP, [2], GAP, [], [4]],
    ),
    (
        "duplicate and never-lost late packets are LATE",
        {},
        [("pkt", 100, 0), ("pkt", 101, 1), ("pkt", 101, 2), ("pkt", 100, 3), ("due", None, 4)],
        [F, IN, LATE, LATE, []],
    ),
    (
        "a gap larger than max_holes keeps the newest",
        {"max_holes": 4},
        [("pkt", 0, 0), ("pkt", 10, 1), ("due", None, 1)],
        [F, GAP, [6, 7, 8, 9]],
    ),
    (
        "more holes than max_holes: the oldest go",
        {"max_holes": 3},
        [("pkt", 0, 0), ("pkt", 3, 1), ("pkt", 6, 1), ("due", None, 1)],
        [F, GAP, GAP, [2, 4, 5]],
    ),
    (
        "a huge jump resets instead of NACKing thousands",
        {"reset_jump": 1000},
        [("pkt", 0, 0), ("pkt", 2, 0), ("pkt", 5000, 1), ("due", None, 1), ("pkt", 5001, 2)],
        [F, GAP, RESET, [], IN],
    ),
    (
        "a restart behind: one far-behind packet is late, two in a row reset; so does a jump back",
        {"reset_jump": 100},
        [("pkt", 5000, 0), ("pkt", 200, 1), ("pkt", 201, 2), ("pkt", 202, 3), ("pkt", 5001, 4)],
        [F, LATE, RESET, IN, RESET],
    ),
    (
        "a keyframe makes older holes moot",
        {},
        [("pkt", 0, 0), ("pkt", 3, 0), ("pkt", 6, 0), ("kf", 5, 1), ("due", None, 1)],
        [F, GAP, GAP, 3, [5]],
    ),
    (
        "holes too far behind the newest are given up",
        {"max_age": 8},
        [("pkt", 0, 0), ("pkt", 2, 0), ("due", None, 0), ("fast", 3, 1), ("fast", 4, 1), ("pkt", 20, 101),
         ("due", None, 101)],
        [F, GAP, [1], None, None, GAP, list(range(12, 20))],
    ),
    (
        "fast (inlined) in-order packets between calls keep the count",
        {},
        [("pkt", 65530, 0), ("fast", 65531, 0), ("fast", 65532, 0), ("fast", 65533, 0), ("fast", 65534, 0),
         ("fast", 65535, 0), ("pkt", 2, 1), ("due", None, 1)],
        [F, None, None, None, None, None, GAP, [0, 1]],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "kwargs", "steps", "expected"), TRACKER_CASES, ids=[c[0] for c in TRACKER_CASES])
def test_tracker_table(name: str, kwargs: dict[str, Any], steps: list[tuple[str, int | None, int]], expected: list[Any]) -> None:
    t = NackTracker(**kwargs)
    got: list[Any] = []
    for op, seq, now in steps:
        if op == "pkt":
            assert seq is not None
            got.append(t.on_packet(seq, now))
        elif op == "fast":
            assert seq == t.next_seq and now < t.due_ms, "a fast step must be what the hot loop skips"
            t.next_seq = (seq + 1) & 0xFFFF
            got.append(None)
        elif op == "due":
            got.append(t.due(now))
        else:
            assert seq is not None
            got.append(t.keyframe(seq))
    assert got == expected


def test_give_up_counters_by_reason() -> None:
    given_up = [0] * len(GiveUp)
    t = NackTracker(max_retries=1, max_holes=2, given_up=given_up)
    t.on_packet(0, 0)
    t.on_packet(4, 0)  # holes 1-3: 1 overflows
    assert t.holes == [2, 3]
    assert t.due(0) == [2, 3]
    assert t.due(100) == []  # one retry allowed: given up at the next interval
    assert given_up[GiveUp.RETRIES] == 2 and given_up[GiveUp.OVERFLOW] == 1
    t.on_packet(6, 200)
    t.keyframe(6)
    t.on_packet(8, 201)
    t.on_packet(30000, 202)  # jump beyond reset_jump: 7 given up
    assert given_up == [2, 1, 0, 1, 1]
    assert t.holes == [] and t.due_ms == NEVER


def test_requested_counts_first_and_retry() -> None:
    t = NackTracker()
    t.on_packet(0, 0)
    t.on_packet(3, 0)
    t.due(0)
    t.due(100)
    assert t.requested[NackAttempt.FIRST] == 2 and t.requested[NackAttempt.RETRY] == 2


@pytest.mark.parametrize(
    ("answers_ms", "interval"),
    [
        ([], 100),  # no sample: the default round trip
        ([2] * 80, 20),  # loopback: the minimum interval
        ([300] * 80, 300),
        ([900] * 80, 400),  # the maximum
    ],
)
def test_retry_interval_follows_the_round_trip(answers_ms: list[int], interval: int) -> None:
    t = NackTracker()
    now = 0
    seq = 0
    t.on_packet(seq, now)
    for answer in answers_ms:
        t.on_packet(seq + 2, now)
        assert t.due(now) == [(seq + 1) & 0xFFFF]
        now += answer
        assert t.on_packet(seq + 1, now, repaired=True) == NackOutcome.RECOVERED
        seq += 2
        now += 1000
    assert t.retry_interval_ms == interval


def test_a_retried_hole_gives_no_rtt_sample() -> None:
    t = NackTracker()
    t.on_packet(0, 0)
    t.on_packet(2, 0)
    t.due(0)
    t.due(100)  # retried: the answer may be to either NACK
    t.on_packet(1, 101, repaired=True)
    assert t.rtt_ms == 100
    t.on_packet(4, 200)
    t.due(200)
    t.on_packet(3, 230)  # reordering, not a retransmission: no sample either
    assert t.rtt_ms == 100


def test_is_hole_and_behind() -> None:
    t = NackTracker()
    assert not t.is_hole(5)
    t.on_packet(65535, 0)
    t.on_packet(3, 0)
    assert [t.is_hole(s) for s in (65535, 0, 1, 2, 3, 4)] == [False, True, True, True, False, False]
    assert t.behind(3) == 0 and t.behind(0) == 3 and t.behind(65535) == 4 and t.behind(5) == -2


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="reset_jump"):
        NackTracker(reset_jump=40000)
    with pytest.raises(ValueError, match="max_holes"):
        NackTracker(max_holes=0)
    with pytest.raises(ValueError, match="min_interval_ms"):
        NackTracker(min_interval_ms=50, max_interval_ms=10)
