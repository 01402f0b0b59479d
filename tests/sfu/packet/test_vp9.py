"""VP9 payload descriptor rewriting: picture ID (7/15-bit) and TL0PICIDX continuous across switches."""

from __future__ import annotations

import pytest

from sfu.packet.codecs import vp9_descriptor
from sfu.packet.vp9 import Vp9Munger, descriptor_fields

KEY_HEADER = bytes([0x82, 0x49, 0x83, 0x42])


def desc(pid: int | None = None, *, wide: bool = True, tl0: int | None = None, tid: int = 0, flexible: bool = False,
         layers: bool | None = None, start: bool = True, inter: bool = True, p_diff: int = 1) -> bytearray:
    """A VP9 payload descriptor (plus the first bytes of a frame header) with the given fields."""
    layers = tl0 is not None or flexible if layers is None else layers
    b0 = (0x80 if pid is not None else 0) | (0x40 if inter else 0) | (0x20 if layers else 0)
    b0 |= (0x10 if flexible else 0) | (0x08 if start else 0)
    out = bytearray([b0])
    if pid is not None:
        out += bytes([0x80 | (pid >> 8), pid & 0xFF]) if wide else bytes([pid & 0x7F])
    if layers:
        out.append((tid << 5) | 0x10)  # U set, SID 0, D 0
        if not flexible:
            out.append(tl0 if tl0 is not None else 0)
    if flexible and inter:
        out.append(p_diff << 1)
    out += KEY_HEADER
    return out


def fields(buf: bytearray) -> tuple[int, int]:
    d = vp9_descriptor(buf)
    assert d is not None
    return d.picture_id, d.tl0picidx


DESCRIPTOR_CASES = [
    ("no picture id, no layers", bytearray([0x48]) + KEY_HEADER, (-1, 0, -1)),
    ("15-bit pid", desc(300), (1, 15, -1)),
    ("7-bit pid", desc(5, wide=False), (1, 7, -1)),
    ("15-bit pid, non-flexible tl0", desc(300, tl0=9), (1, 15, 4)),
    ("7-bit pid, non-flexible tl0", desc(3, wide=False, tl0=9), (1, 7, 3)),
    ("flexible: layers but no tl0", desc(300, flexible=True), (1, 15, -1)),
    ("tl0 without pid", desc(None, tl0=9), (-1, 0, 2)),
    ("truncated pid", bytearray([0x80]), None),
    ("truncated tl0", bytearray([0xA8, 0x81, 0x02, 0x00]), None),
    ("empty", bytearray(), None),
]


@pytest.mark.parametrize(("name", "buf", "want"), DESCRIPTOR_CASES, ids=[c[0] for c in DESCRIPTOR_CASES])
def test_descriptor_fields(name: str, buf: bytearray, want: tuple[int, int, int] | None) -> None:
    assert descriptor_fields(buf, 0, len(buf)) == want


# (source, pid, tl0, wide) in arrival order; "switch" marks a layer change before the packet
SWITCH_CASES = [
    (
        "15-bit: the new layer follows the old one",
        [("a", 100, 7, True), ("a", 101, 8, True), "switch", ("b", 5000, 200, True), ("b", 5001, 200, True),
         ("b", 5002, 201, True)],
        [(100, 7), (101, 8), (102, 9), (103, 9), (104, 10)],
    ),
    (
        "15-bit picture id and TL0PICIDX wrap",
        [("a", 0x7FFE, 255, True), "switch", ("b", 10, 3, True), ("b", 11, 4, True)],
        [(0x7FFE, 255), (0x7FFF, 0), (0, 1)],
    ),
    (
        "the new layer's own wrap",
        [("a", 50, 50, True), "switch", ("b", 0x7FFF, 255, True), ("b", 0, 0, True)],
        [(50, 50), (51, 51), (52, 52)],
    ),
    (
        "7-bit ids wrap at 2^7",
        [("a", 126, 1, False), ("a", 127, 2, False), "switch", ("b", 40, 9, False), ("b", 41, 9, False)],
        [(126, 1), (127, 2), (0, 3), (1, 3)],
    ),
    (
        "several switches, back to the first layer",
        [("a", 10, 1, True), "switch", ("b", 900, 77, True), "switch", ("c", 3, 3, True), "switch",
         ("a", 20, 2, True)],
        [(10, 1), (11, 2), (12, 3), (13, 4)],
    ),
    (
        "a reordered packet of the same source keeps its place",
        [("a", 10, 1, True), "switch", ("b", 500, 40, True), ("b", 502, 41, True), ("b", 501, 40, True),
         ("b", 503, 41, True)],
        [(10, 1), (11, 2), (13, 3), (12, 2), (14, 3)],
    ),
]


@pytest.mark.parametrize(("name", "packets", "want"), SWITCH_CASES, ids=[c[0] for c in SWITCH_CASES])
def test_switches_keep_the_fields_continuous(name: str, packets: list[object], want: list[tuple[int, int]]) -> None:
    m = Vp9Munger()
    got = []
    for p in packets:
        if p == "switch":
            m.switch()
            continue
        assert isinstance(p, tuple)
        _, pid, tl0, wide = p
        buf = desc(pid, wide=wide, tl0=tl0)
        assert m.rewrite(buf, 0, len(buf))
        got.append(fields(buf))
        again = descriptor_fields(buf, 0, len(buf))
        assert again is not None and again[1] == (15 if wide else 7)  # the width is kept
        assert buf[-4:] == KEY_HEADER  # the frame is not touched
    assert got == want


def test_flexible_mode_keeps_p_diff_and_layer_bits() -> None:
    m = Vp9Munger()
    first = desc(1000, flexible=True, tid=1)
    assert m.rewrite(first, 0, len(first))
    m.switch()
    buf = desc(77, flexible=True, tid=2, p_diff=3)
    before = bytes(buf)
    assert m.rewrite(buf, 0, len(buf))
    d = vp9_descriptor(buf)
    assert d is not None and (d.picture_id, d.tl0picidx, d.tid, d.sid) == (1001, -1, 2, 0)
    assert buf[0] == before[0] and buf[3:] == before[3:]  # flags, layer byte, P_DIFF, frame


def test_first_source_passes_unchanged() -> None:
    m = Vp9Munger()
    m.switch()  # the first bind: nothing to follow yet
    buf = desc(1234, tl0=77, tid=2)
    before = bytes(buf)
    assert m.rewrite(buf, 0, len(buf))
    assert bytes(buf) == before


def test_retransmissions_get_the_offset_and_move_nothing() -> None:
    m = Vp9Munger()
    first = desc(10, tl0=1)
    m.rewrite(first, 0, len(first))
    m.switch()
    rtx = desc(7, tl0=0)  # an old packet of the previous source, before the switch took
    m.rewrite(rtx, 0, len(rtx), retransmission=True)
    buf = desc(500, tl0=40)
    m.rewrite(buf, 0, len(buf))
    old = desc(499, tl0=40)
    assert m.rewrite(old, 0, len(old), retransmission=True)
    assert fields(old) == (10, 2)
    nxt = desc(501, tl0=41)
    m.rewrite(nxt, 0, len(nxt))
    assert fields(nxt) == (12, 3)


@pytest.mark.parametrize("buf", [bytearray(), bytearray([0x88]), bytearray([0x88, 0x80]), bytearray([0xA8, 0x81, 0x01, 0x00])])
def test_truncated_descriptors_are_left_alone(buf: bytearray) -> None:
    m = Vp9Munger()
    m.rewrite(desc(10), 0, len(desc(10)))
    m.switch()
    before = bytes(buf)
    assert not m.rewrite(buf, 0, len(buf))
    assert bytes(buf) == before


def test_rewrite_within_a_larger_buffer() -> None:
    m = Vp9Munger()
    m.rewrite(desc(10), 0, len(desc(10)))
    m.switch()
    packet = bytearray(12) + desc(4000, tl0=5) + bytearray(20)
    assert m.rewrite(packet, 12, len(packet))
    assert fields(packet[12:]) == (11, 5)
    assert packet[:12] == bytearray(12)
