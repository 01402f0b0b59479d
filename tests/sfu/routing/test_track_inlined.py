"""``PublishedTrack.on_rtp`` inlines ``ReceiveStats.update`` and ``RtxCache.put`` for speed: the
same packet traces through the track and through the reference implementations leave the same
statistics and the same cache, wrap-arounds, loss, reordering and duplicates included."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from sfu.counters import MediaCounters
from sfu.routing.rtx_cache import RTX_SLOT_BYTES, RtxCache
from sfu.routing.stats import ReceiveStats
from sfu.routing.track import PublishedTrack, TrackCodec
from tests.sfu.routing.harness import rtp_bytes

VP8 = TrackCodec("VP8", 90_000, 96)
SSRC = 0x5EED5EED

# (seq, ts, now_ms, payload length) per packet
Trace = list[tuple[int, int, int, int]]


def steady(first_seq: int, first_ts: int, n: int, *, pps: int = 300, jitter_ms: int = 0, seed: int = 1,
           size: Callable[[int], int] = lambda i: 1000) -> Trace:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ideal_ms = 1_000 + i * 1000 // pps
        out.append(((first_seq + i) & 0xFFFF, (first_ts + i * 90_000 // pps) & 0xFFFFFFFF,
                    ideal_ms + rng.randint(0, jitter_ms), size(i)))
    return sorted(out, key=lambda p: p[2])  # arrival order


def lose(trace: Trace, every: int) -> Trace:
    return [p for i, p in enumerate(trace) if i % every != every - 1]


def swap_pairs(trace: Trace, every: int) -> Trace:
    out = list(trace)
    for i in range(0, len(out) - 1, every):
        (s0, t0, n0, l0), (s1, t1, n1, l1) = out[i], out[i + 1]
        out[i], out[i + 1] = (s1, t1, n0, l1), (s0, t0, n1, l0)  # the later packet arrives first
    return out


def duplicate(trace: Trace, every: int) -> Trace:
    out = []
    for i, p in enumerate(trace):
        out.append(p)
        if i % every == 0:
            out.append((p[0], p[1], p[2] + 1, p[3]))
    return out


CASES: dict[str, Trace] = {
    "in order": steady(1000, 0, 400),
    "sequence wraps": steady(65_500, 12_345, 400),
    "timestamp wraps": steady(7, 0xFFFF_F000, 400),
    "arrival jitter": steady(300, 900, 600, jitter_ms=25, seed=3),
    "loss": lose(steady(65_300, 0, 800), 7),
    "reordered pairs": swap_pairs(steady(65_400, 5, 600), 5),
    "duplicates": duplicate(steady(40_000, 0, 500), 9),
    "cache grows (fast stream)": steady(65_000, 0, 3_000, pps=3_000),
    "slow stream (cache stays small)": steady(10, 0, 300, pps=20),
    "sizes up to the slot and over": steady(500, 0, 200, size=lambda i: 1000 + (i * 7) % 600),
}


def track() -> PublishedTrack:
    return PublishedTrack(kind="video", ssrc=SSRC, codecs=[VP8], mid="0", owner="o",
                          counters=MediaCounters(), request_keyframe=lambda ssrc: None)


@pytest.mark.parametrize("trace", list(CASES.values()), ids=list(CASES))
def test_on_rtp_keeps_stats_and_cache_as_the_references_do(trace: Trace) -> None:
    t = track()
    stats = ReceiveStats(VP8.clock_rate)
    cache = RtxCache()
    for seq, ts, now_ms, size in trace:
        packet = rtp_bytes(seq, ts, ssrc=SSRC, pt=VP8.payload_type, payload=bytes([seq & 0xFF]) * size)
        t.on_rtp(memoryview(bytearray(packet)), len(packet), now_ms)
        stats.update(seq, ts, now_ms)
        cache.put(packet, len(packet), seq, now_ms)

    mine = {name: getattr(t.stats, name) for name in ReceiveStats.__slots__}
    reference = {name: getattr(stats, name) for name in ReceiveStats.__slots__}
    assert mine == reference
    assert t.stats.report() == stats.report()

    got = t.rtx_cache
    assert got is not None
    assert (got.mask, got.seqs, got.lens) == (cache.mask, cache.seqs, cache.lens)
    for i, seq in enumerate(cache.seqs):
        if seq >= 0:
            assert bytes(got.bufs[i][: got.lens[i]]) == bytes(cache.bufs[i][: cache.lens[i]]), f"slot {i}"
    assert t.stats.packets == len(trace)


def test_the_traces_reach_the_cases_they_name() -> None:
    slots = {}
    for name in ("cache grows (fast stream)", "slow stream (cache stays small)"):
        cache = RtxCache()
        for seq, _, now_ms, size in CASES[name]:
            cache.put(bytes(size), size, seq, now_ms)
        slots[name] = cache.slots
    assert slots["cache grows (fast stream)"] > 4 * slots["slow stream (cache stays small)"]
    assert any(size + 12 > RTX_SLOT_BYTES for *_, size in CASES["sizes up to the slot and over"])
