"""Temporal layers: VP8/VP9 descriptor facts (TID, sync, frame start, key frame, picture ID),
the per-subscriber filter (down at a frame start, up at a sync point or key frame), and what a
subscriber receives when higher layers are dropped: consecutive sequence numbers and, for VP8,
consecutive picture IDs (7- and 15-bit wrap) with TL0PICIDX untouched."""

from __future__ import annotations

import pytest

from sfu.packet.codecs import vp8_descriptor, vp9_descriptor
from sfu.packet.seq import SeqMunger
from sfu.packet.temporal import (
    ALL_LAYERS,
    KEY,
    NONE,
    PID_SHIFT,
    START,
    SYNC,
    TemporalFilter,
    vp8_temporal,
    vp9_temporal,
)
from sfu.packet.vp8 import Vp8Munger
from sfu.packet.vp9 import Vp9Munger


def vp8(pid: int | None, tid: int | None, *, sync: bool = False, start: bool = True, key: bool = False,
        wide: bool = True, tl0: int | None = 0, partition: int = 0) -> bytearray:
    """A VP8 payload: descriptor with these fields, then a frame tag byte (P=0 on a key frame)."""
    x = (0x80 if pid is not None else 0) | (0x40 if tl0 is not None else 0) | (0x20 if tid is not None else 0)
    out = bytearray([(0x80 if x else 0) | (0x10 if start else 0) | partition])
    if x:
        out.append(x)
    if pid is not None:
        out += bytes([0x80 | (pid >> 8), pid & 0xFF]) if wide else bytes([pid & 0x7F])
    if tl0 is not None:
        out.append(tl0)
    if tid is not None:
        out.append((tid << 6) | (0x20 if sync else 0))
    out.append(0x00 if key else 0x01)
    return out


def vp9(pid: int | None, tid: int | None, *, switch_up: bool = False, start: bool = True, inter: bool = True,
        flexible: bool = False, sid: int = 0, wide: bool = True) -> bytearray:
    b0 = (0x80 if pid is not None else 0) | (0x40 if inter else 0) | (0x20 if tid is not None else 0)
    b0 |= (0x10 if flexible else 0) | (0x08 if start else 0) | 0x04
    out = bytearray([b0])
    if pid is not None:
        out += bytes([0x80 | (pid >> 8), pid & 0xFF]) if wide else bytes([pid & 0x7F])
    if tid is not None:
        out.append((tid << 5) | (0x10 if switch_up else 0) | (sid << 1))
        if not flexible:
            out.append(0x11)  # TL0PICIDX
    if flexible and inter:
        out.append(0x02)  # one P_DIFF of 1, no more
    out.append(0x82)  # first byte of the VP9 frame header
    return out


def info(tid: int, pid: int | None, *flags: int) -> int:
    v = tid | ((pid + 1) << PID_SHIFT if pid is not None else 0)
    for f in flags:
        v |= f
    return v


VP8_CASES = [
    ("T0 key frame", vp8(300, 0, key=True), info(0, 300, START, KEY)),
    ("T2 sync, 7-bit pid", vp8(5, 2, sync=True, wide=False), info(2, 5, START, SYNC)),
    ("T1 continuation", vp8(301, 1, start=False), info(1, 301)),
    ("second partition is no frame start", vp8(301, 1, partition=1), info(1, 301)),
    ("no TL0PICIDX", vp8(302, 1, tl0=None), info(1, 302, START)),
    ("no picture id", vp8(None, 2), info(2, None, START)),
    ("15-bit wrap point", vp8(0x7FFF, 1), info(1, 0x7FFF, START)),
    ("no T bit", vp8(300, None), NONE),
    ("no extension", bytearray([0x10, 0x00]), NONE),
    ("truncated before TID", vp8(300, 1)[:5], NONE),
    ("truncated wide pid", bytearray([0x90, 0xA0, 0x81]), NONE),
    ("empty", bytearray(), NONE),
]


@pytest.mark.parametrize(("name", "buf", "want"), VP8_CASES, ids=[c[0] for c in VP8_CASES])
def test_vp8_temporal(name: str, buf: bytearray, want: int) -> None:
    assert vp8_temporal(buf, 0, len(buf)) == want
    framed = bytearray(b"\xAA" * 12) + buf  # at an offset, as in a packet
    assert vp8_temporal(framed, 12, len(framed)) == want
    d = vp8_descriptor(buf)
    if want != NONE and d is not None:  # agrees with the descriptor parser
        assert (d.tid, d.layer_sync) == (want & 3, bool(want & SYNC))


VP9_CASES = [
    ("non-flexible key frame", vp9(7, 0, inter=False), info(0, 7, START, KEY)),
    ("non-flexible T2 switching-up point", vp9(8, 2, switch_up=True), info(2, 8, START, SYNC)),
    ("flexible T1", vp9(9, 1, flexible=True), info(1, 9, START)),
    ("flexible T1, 7-bit pid, not a start", vp9(9, 1, flexible=True, wide=False, start=False), info(1, 9)),
    ("intra on spatial layer 1 is no key frame", vp9(10, 0, inter=False, sid=1), info(0, 10, START)),
    ("no layer indices", vp9(11, None), NONE),
    ("TID 4", bytearray([0xA8, 0x85, 0x00, 0x80, 0x00]), NONE),
    ("truncated", vp9(12, 1)[:3], NONE),
    ("empty", bytearray(), NONE),
]


@pytest.mark.parametrize(("name", "buf", "want"), VP9_CASES, ids=[c[0] for c in VP9_CASES])
def test_vp9_temporal(name: str, buf: bytearray, want: int) -> None:
    assert vp9_temporal(buf, 0, len(buf)) == want
    d = vp9_descriptor(buf)
    if want != NONE and d is not None:
        assert d.tid == want & 3


# L1T3 as libvpx sends it: T0 T2 T1 T2 | T0 ...; each frame one packet here, "(tid, sync)"
L1T3 = [(0, False), (2, True), (1, True), (2, False)] * 3

FILTER_CASES = [
    # (name, target at start, [(frame index, new target)], frames (tid, sync, key), forwarded tids)
    ("no limit", ALL_LAYERS, {}, L1T3, [t for t, _ in L1T3]),
    ("T0 only: a quarter", 0, {}, L1T3, [0, 0, 0]),
    ("T1: a half", 1, {}, L1T3, [0, 1, 0, 1, 0, 1]),
    # down at the next frame start, whatever its layer
    ("down mid-stream", ALL_LAYERS, {5: 0}, L1T3, [0, 2, 1, 2, 0, 0]),
    # up one layer at a time, each at a sync frame of that layer: T1 at frame 6, T2 at frame 9
    ("up from T0", 0, {3: ALL_LAYERS}, L1T3, [0, 0, 1, 0, 2, 1, 2]),
    # a non-sync frame of the next layer is no switching point
    ("up waits for a sync frame", 0, {2: 1}, [(0, False), (1, False), (0, False), (1, False), (0, False), (1, True)],
     [0, 0, 0, 1]),
]


@pytest.mark.parametrize(("name", "target", "changes", "frames", "want"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filter(name: str, target: int, changes: dict[int, int], frames: list[tuple[int, bool]],
                want: list[int]) -> None:
    f = TemporalFilter(target)
    sent = []
    for i, (tid, sync) in enumerate(frames):
        if i in changes:
            f.target = changes[i]
        if f.admit(tid | START | (SYNC if sync else 0)):
            sent.append(tid)
    assert sent == want
    assert f.dropped == len(frames) - len(want)


def test_filter_up_at_a_key_frame_and_whole_frames() -> None:
    f = TemporalFilter(0)
    assert not f.admit(2 | START | SYNC)
    f.target = 2
    assert not f.admit(2)  # the rest of a dropped frame stays dropped (no start)
    assert f.admit(0 | START | KEY) and f.current == 2  # every layer starts again at a key frame
    assert f.admit(2 | START)
    f.target = 0
    assert f.admit(2)  # the frame under way is finished
    assert not f.admit(1 | START) and f.current == 0
    assert f.admit(NONE)  # no TID: nothing to choose by
    assert f.dropped == 3


def run_vp8(frames: list[tuple[int, int, int]], target: int, *, wide: bool = True, packets: int = 2,
            seq0: int = 65530) -> list[tuple[int, int, int, int]]:
    """Frames (pid, tl0, tid) of ``packets`` packets each through a filter, the seq munger and the
    VP8 munger as a downtrack does: (out seq, out pid, out tl0, tid) of what is sent."""
    f = TemporalFilter(target)
    seqs = SeqMunger(1000)
    munger = Vp8Munger()
    out = []
    seq = seq0
    for pid, tl0, tid in frames:
        for k in range(packets):
            buf = vp8(pid, tid, sync=tid > 0, start=k == 0, key=pid == frames[0][0], wide=wide, tl0=tl0)
            facts = vp8_temporal(buf, 0, len(buf))
            if f.admit(facts):
                out_seq = seqs.map(seq)
                assert munger.rewrite(buf, 0, len(buf))
                d = vp8_descriptor(buf)
                assert d is not None
                out.append((out_seq, d.picture_id, d.tl0picidx, d.tid))
            else:
                seqs.drop(seq)
                munger.drop((facts >> PID_SHIFT) - 1)
            seq = (seq + 1) & 0xFFFF
    return out


def l1t3(first_pid: int, count: int, mask: int, first_tl0: int = 0) -> list[tuple[int, int, int]]:
    pattern = (0, 2, 1, 2)
    frames = []
    tl0 = first_tl0 - 1
    for i in range(count):
        tid = pattern[i % 4]
        if tid == 0:
            tl0 = (tl0 + 1) & 0xFF
        frames.append(((first_pid + i) & mask, tl0, tid))
    return frames


@pytest.mark.parametrize(
    ("name", "first_pid", "mask", "wide", "first_tl0"),
    [
        ("15-bit pid wraps", 0x7FF8, 0x7FFF, True, 0),
        ("7-bit pid wraps", 0x78, 0x7F, False, 0),
        ("TL0PICIDX wraps", 100, 0x7FFF, True, 0xFE),
    ],
)
@pytest.mark.parametrize(("target", "per_period"), [(0, 1), (1, 2), (ALL_LAYERS, 4)])
def test_vp8_dropped_layers_leave_no_gaps(name: str, first_pid: int, mask: int, wide: bool, first_tl0: int,
                                          target: int, per_period: int) -> None:
    frames = l1t3(first_pid, 16, mask, first_tl0)
    out = run_vp8(frames, target, wide=wide)
    assert len(out) == 2 * 16 * per_period // 4
    assert all(tid <= target for *_, tid in out)
    for a, b in zip(out, out[1:], strict=False):
        assert b[0] == (a[0] + 1) & 0xFFFF  # sequence numbers: no hole where packets were dropped
    firsts, seconds = out[::2], out[1::2]
    assert [o[1] for o in seconds] == [o[1] for o in firsts]  # a picture's packets share its id
    for a, b in zip(firsts, firsts[1:], strict=False):
        assert (b[1] - a[1]) & mask == 1  # consecutive picture ids on what is sent
    assert out[0][1] == first_pid  # the first picture passes as it came
    # TL0PICIDX is what the publisher sent (T0 frames are never dropped)
    sent_tl0 = [tl0 for _, tl0, tid in frames if tid <= target]
    assert [o[2] for o in out[::2]] == sent_tl0


def test_vp8_retransmission_keeps_the_picture_id_it_was_sent_with() -> None:
    m = Vp8Munger()
    first = vp8(10, 0)
    m.rewrite(first, 0, len(first))
    m.drop(11)
    m.drop(11)  # a second packet of the same picture: counted once
    third = vp8(12, 1)
    m.rewrite(third, 0, len(third))
    assert vp8_descriptor(third).picture_id == 11  # type: ignore[union-attr]
    m.drop(13)
    again = vp8(12, 1)  # NACKed after one more drop
    m.rewrite(again, 0, len(again), retransmission=True)
    assert vp8_descriptor(again).picture_id == 11  # type: ignore[union-attr]
    later = vp8(14, 0)
    m.rewrite(later, 0, len(later))
    assert vp8_descriptor(later).picture_id == 12  # type: ignore[union-attr]


def test_vp8_drop_before_anything_sent_changes_nothing() -> None:
    m = Vp8Munger()
    m.drop(5)
    buf = vp8(6, 0)
    m.rewrite(buf, 0, len(buf))
    assert vp8_descriptor(buf).picture_id == 6  # type: ignore[union-attr]


def test_vp9_keeps_picture_ids_across_dropped_layers() -> None:
    """VP9 frames name references by picture ID difference: dropped pictures leave gaps."""
    m = Vp9Munger()
    a = vp9(20, 0)
    m.rewrite(a, 0, len(a))
    m.drop(21)
    b = vp9(22, 1)
    m.rewrite(b, 0, len(b))
    assert vp9_descriptor(b).picture_id == 22  # type: ignore[union-attr]


def test_any_bytes_read_without_an_exception() -> None:
    """Truncations of every case and random payloads: an int, never an exception or a read past
    ``end`` (the bytes after it are there but must not change the answer)."""
    import random

    rng = random.Random(12)
    samples = [c[1] for c in VP8_CASES + VP9_CASES]
    samples += [bytearray(rng.getrandbits(8) for _ in range(rng.randrange(0, 12))) for _ in range(3000)]
    for buf in samples:
        for end in range(len(buf) + 1):
            for read in (vp8_temporal, vp9_temporal):
                got = read(buf, 0, end)
                assert got == NONE or got >= 0
                assert read(buf[:end] + b"\xff\xff\xff\xff", 0, end) == got
