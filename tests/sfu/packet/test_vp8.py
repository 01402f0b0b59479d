"""VP8 payload descriptor rewriting: picture ID / TL0PICIDX / KEYIDX continuous across switches."""

from __future__ import annotations

import pytest

from sfu.packet.codecs import vp8_descriptor
from sfu.packet.vp8 import Vp8Munger, descriptor_fields


def desc(pid: int | None = None, *, wide: bool = True, tl0: int | None = None, keyidx: int | None = None,
         tid: int = 0, start: bool = True) -> bytearray:
    """A VP8 payload descriptor (plus one payload byte) with the given fields."""
    x = (0x80 if pid is not None else 0) | (0x40 if tl0 is not None else 0) | (0x10 if keyidx is not None else 0)
    x |= 0x20 if keyidx is not None else 0  # T with K (a TID/Y/KEYIDX byte)
    out = bytearray([(0x80 if x else 0) | (0x10 if start else 0)])
    if x:
        out.append(x)
    if pid is not None:
        out += bytes([0x80 | (pid >> 8), pid & 0xFF]) if wide else bytes([pid & 0x7F])
    if tl0 is not None:
        out.append(tl0)
    if keyidx is not None:
        out.append((tid << 6) | 0x20 | keyidx)
    out.append(0x00)  # the frame tag's first byte
    return out


def fields(buf: bytearray) -> tuple[int, int, int]:
    d = vp8_descriptor(buf)
    assert d is not None
    return d.picture_id, d.tl0picidx, d.keyidx


DESCRIPTOR_CASES = [
    ("no extension", bytearray([0x10, 0x00]), (-1, 0, -1, -1)),
    ("15-bit pid", desc(300), (2, 15, -1, -1)),
    ("7-bit pid", desc(5, wide=False), (2, 7, -1, -1)),
    ("pid tl0 keyidx", desc(300, tl0=9, keyidx=3), (2, 15, 4, 5)),
    ("tl0 only", desc(None, tl0=9), (-1, 0, 2, -1)),
    ("truncated pid", bytearray([0x90, 0x80]), None),
    ("truncated wide pid", bytearray([0x90, 0x80, 0x81]), None),
    ("empty", bytearray(), None),
]


@pytest.mark.parametrize(("name", "buf", "want"), DESCRIPTOR_CASES, ids=[c[0] for c in DESCRIPTOR_CASES])
def test_descriptor_fields(name: str, buf: bytearray, want: tuple[int, int, int, int] | None) -> None:
    assert descriptor_fields(buf, 0, len(buf)) == want


# (source, pid, tl0, keyidx, wide) in arrival order; "switch" marks a layer change before the packet
SWITCH_CASES = [
    (
        "15-bit: the new layer follows the old one",
        [("a", 100, 7, 1, True), ("a", 101, 8, 1, True), "switch", ("b", 5000, 200, 9, True), ("b", 5001, 200, 9, True),
         ("b", 5002, 201, 10, True)],
        [(100, 7, 1), (101, 8, 1), (102, 9, 2), (103, 9, 2), (104, 10, 3)],
    ),
    (
        "15-bit picture id wraps at 2^15",
        [("a", 0x7FFE, 255, 31, True), "switch", ("b", 10, 3, 0, True), ("b", 11, 4, 1, True)],
        [(0x7FFE, 255, 31), (0x7FFF, 0, 0), (0, 1, 1)],
    ),
    (
        "the new layer's own wrap",
        [("a", 50, 50, 5, True), "switch", ("b", 0x7FFF, 255, 31, True), ("b", 0, 0, 0, True)],
        [(50, 50, 5), (51, 51, 6), (52, 52, 7)],
    ),
    (
        "7-bit ids wrap at 2^7",
        [("a", 126, 1, 0, False), ("a", 127, 2, 0, False), "switch", ("b", 40, 9, 0, False), ("b", 41, 9, 0, False)],
        [(126, 1, 0), (127, 2, 0), (0, 3, 1), (1, 3, 1)],
    ),
    (
        "several switches",
        [("a", 10, 1, 0, True), "switch", ("b", 900, 77, 4, True), "switch", ("c", 3, 3, 3, True), "switch",
         ("a", 20, 2, 1, True)],
        [(10, 1, 0), (11, 2, 1), (12, 3, 2), (13, 4, 3)],
    ),
    (
        "a reordered packet of the same source keeps its place",
        [("a", 10, 1, 0, True), "switch", ("b", 500, 40, 2, True), ("b", 502, 41, 2, True), ("b", 501, 40, 2, True),
         ("b", 503, 41, 2, True)],
        [(10, 1, 0), (11, 2, 1), (13, 3, 1), (12, 2, 1), (14, 3, 1)],
    ),
]


@pytest.mark.parametrize(("name", "packets", "want"), SWITCH_CASES, ids=[c[0] for c in SWITCH_CASES])
def test_switches_keep_the_fields_continuous(name: str, packets: list[object], want: list[tuple[int, int, int]]) -> None:
    m = Vp8Munger()
    got = []
    for p in packets:
        if p == "switch":
            m.switch()
            continue
        assert isinstance(p, tuple)
        _, pid, tl0, key, wide = p
        buf = desc(pid, wide=wide, tl0=tl0, keyidx=key)
        assert m.rewrite(buf, 0, len(buf))
        got.append(fields(buf))
        again = descriptor_fields(buf, 0, len(buf))
        assert again is not None and again[1] == (15 if wide else 7)  # the width is kept
    assert got == want


def test_first_source_passes_unchanged_and_other_bits_are_kept() -> None:
    m = Vp8Munger()
    m.switch()  # the first bind: nothing to follow yet
    buf = desc(1234, tl0=77, keyidx=12, tid=2)
    before = bytes(buf)
    assert m.rewrite(buf, 0, len(buf))
    assert bytes(buf) == before
    m.switch()
    buf = desc(9, tl0=1, keyidx=30, tid=2, start=False)
    assert m.rewrite(buf, 0, len(buf))
    assert fields(buf) == (1235, 78, 13)
    assert buf[0] == 0x80 and buf[-2] >> 5 == (2 << 1) | 1  # S bit, TID and Y untouched


def test_retransmissions_get_the_offset_and_move_nothing() -> None:
    m = Vp8Munger()
    first = desc(10, tl0=1)
    m.rewrite(first, 0, len(first))
    m.switch()
    buf = desc(500, tl0=40)
    m.rewrite(buf, 0, len(buf))
    old = desc(499, tl0=40)
    assert m.rewrite(old, 0, len(old), retransmission=True)
    assert fields(old)[:2] == (10, 2)
    nxt = desc(501, tl0=41)
    m.rewrite(nxt, 0, len(nxt))
    assert fields(nxt)[:2] == (12, 3)


def test_a_retransmission_does_not_take_the_switch() -> None:
    m = Vp8Munger()
    m.rewrite(desc(10), 0, 4)
    m.switch()
    rtx = desc(11)
    m.rewrite(rtx, 0, len(rtx), retransmission=True)  # an old packet of the previous source
    buf = desc(700)
    m.rewrite(buf, 0, len(buf))
    assert fields(buf)[0] == 11


@pytest.mark.parametrize("buf", [bytearray(), bytearray([0x90]), bytearray([0x90, 0x80]), bytearray([0x90, 0xC0, 0x81, 0x01])])
def test_truncated_descriptors_are_left_alone(buf: bytearray) -> None:
    m = Vp8Munger()
    before = bytes(buf)
    assert not m.rewrite(buf, 0, len(buf))
    assert bytes(buf) == before


def test_rewrite_within_a_larger_buffer() -> None:
    m = Vp8Munger()
    m.rewrite(desc(10), 0, 4)
    m.switch()
    packet = bytearray(12) + desc(4000, tl0=5) + bytearray(20)
    assert m.rewrite(packet, 12, len(packet))
    assert fields(packet[12:])[:2] == (11, 5)
    assert packet[:12] == bytearray(12)
