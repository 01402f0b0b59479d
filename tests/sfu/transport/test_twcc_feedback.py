"""PublisherFeedback and FeedbackTimer: the transport-wide seq read from publisher packets, and
the feedback they turn into (serialized and parsed back, as the publisher reads it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sfu.counters import MediaCounters, TwccDrop
from sfu.packet.rtp import RtpHeader
from sfu.packet.twcc import TransportFeedback
from sfu.transport.twcc_feedback import FeedbackTimer, PublisherFeedback

SENDER = 0x4C430001
SSRC = 0x11223344


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def packet(extensions: list[tuple[int, bytes]], *, profile: int | None = None, csrcs: int = 0, payload: bytes = b"\x10\x00") -> bytearray:
    header = RtpHeader(96, 1, 2, SSRC, csrcs=list(range(csrcs)), extension_profile=profile, extensions=extensions)
    return bytearray(bytes(header) + payload)


def make(loop: asyncio.AbstractEventLoop, ext_id: int = 5) -> tuple[PublisherFeedback, FeedbackTimer, MediaCounters, list[bytes]]:
    counters = MediaCounters()
    timer = FeedbackTimer(loop, counters, 100)
    sent: list[bytes] = []

    def send(data: bytes) -> bool:
        sent.append(data)
        return True

    return PublisherFeedback(ext_id, SENDER, send, timer), timer, counters, sent


def seqs_of(sent: list[bytes]) -> list[tuple[int, bool]]:
    return [(s.seq, s.received) for data in sent for s in TransportFeedback.parse(data).statuses()]


TS = (5, b"\x01\x02")  # transport seq 0x0102 under id 5


@pytest.mark.parametrize(
    ("name", "data", "seq"),
    [
        ("alone", packet([TS]), 0x0102),
        ("first of three", packet([TS, (2, b"\x00\x00\x01"), (4, b"0")]), 0x0102),
        ("after others", packet([(2, b"\x00\x00\x01"), (4, b"0"), TS]), 0x0102),
        ("after CSRCs", packet([(3, b"\x7f"), TS], csrcs=2), 0x0102),
        ("two-byte form", packet([(1, b""), TS], profile=0x1000), 0x0102),
        ("no extension", packet([]), None),
        ("other ids only", packet([(2, b"\x00\x00\x01"), (4, b"0")]), None),
        ("wrong size under the id", packet([(5, b"\x01\x02\x03")]), None),
    ],
)
def test_reads_the_seq_wherever_it_is(loop: asyncio.AbstractEventLoop, name: str, data: bytearray, seq: int | None) -> None:
    fb, timer, counters, sent = make(loop)
    fb.on_rtp(memoryview(data), len(data))
    assert fb.armed is (seq is not None) and timer.pending == (seq is not None)
    timer.tick()
    assert seqs_of(sent) == ([] if seq is None else [(seq, True)]), name
    if seq is not None:
        assert TransportFeedback.parse(sent[0]).media_ssrc == SSRC  # the packet's SSRC
        assert TransportFeedback.parse(sent[0]).sender_ssrc == SENDER
        assert counters.twcc_feedback_out == 1
    timer.close()


def test_padding_and_id_15_and_truncation(loop: asyncio.AbstractEventLoop) -> None:
    """Padding bytes between elements are skipped; id 15 ends the walk; a block or element cut
    by the packet's length reads nothing (never past ``length``)."""
    fb, timer, _counters, sent = make(loop)
    base = bytes(RtpHeader(96, 1, 2, SSRC))
    base = bytes([base[0] | 0x10]) + base[1:]
    padded = bytearray(base + b"\xbe\xde\x00\x02" + b"\x00\x00\x51\x00\x07\x00\x00\x00")
    stop = bytearray(base + b"\xbe\xde\x00\x02" + b"\xf0\x51\x00\x07\x00\x00\x00\x00")
    fb.on_rtp(memoryview(padded), len(padded))
    fb.on_rtp(memoryview(stop), len(stop))
    whole = packet([(2, b"\x00\x00\x01"), TS])
    fb.on_rtp(memoryview(whole), len(whole) - 2 - 4)  # the block runs past length
    fb.on_rtp(memoryview(whole), 14)  # not even the block header
    timer.tick()
    assert seqs_of(sent) == [(7, True)]
    timer.close()


def test_two_byte_ids_above_14(loop: asyncio.AbstractEventLoop) -> None:
    fb, timer, _counters, sent = make(loop, ext_id=20)
    data = packet([(20, b"\x00\x09")], profile=0x1000)
    fb.on_rtp(memoryview(data), len(data))
    timer.tick()
    assert seqs_of(sent) == [(9, True)]
    timer.close()


def test_losses_reordering_and_counters(loop: asyncio.AbstractEventLoop) -> None:
    """A gap is reported lost; the timer keeps a transport only while it has packets; too-old
    and duplicate seqs are counted at the next flush."""
    fb, timer, counters, sent = make(loop)
    for seq in (1000, 1001, 1004, 1002):
        data = packet([(5, seq.to_bytes(2, "big"))])
        fb.on_rtp(memoryview(data), len(data))
    timer.tick()
    assert seqs_of(sent) == [(1000, True), (1001, True), (1002, True), (1003, False), (1004, True)]
    assert timer.pending == 1  # had packets: flushed, kept for one more tick
    timer.tick()
    assert timer.pending == 0 and not fb.armed and len(sent) == 1
    for seq in (1004, 1005, (1005 - 1500) & 0xFFFF):  # a duplicate, a new one, a straggler
        data = packet([(5, seq.to_bytes(2, "big"))])
        fb.on_rtp(memoryview(data), len(data))
    assert fb.armed and timer.pending == 1
    timer.tick()
    assert seqs_of(sent[1:]) == [(1005, True)]
    assert counters.twcc_dropped[TwccDrop.DUPLICATE] == 1 and counters.twcc_dropped[TwccDrop.TOO_OLD] == 1
    assert counters.twcc_feedback_out == 2
    fb.close()
    assert timer.pending == 0
    timer.close()


async def test_timer_runs_while_packets_arrive_then_stops() -> None:
    """The event-loop timer sends feedback about every interval while packets come, and is
    not scheduled once they stop."""
    fb, timer, counters, sent = make(asyncio.get_running_loop())
    for seq in range(3):
        data = packet([(5, seq.to_bytes(2, "big"))])
        fb.on_rtp(memoryview(data), len(data))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if sent:
            break
    assert seqs_of(sent) == [(0, True), (1, True), (2, True)]
    for _ in range(100):
        await asyncio.sleep(0.02)
        if timer._handle is None:
            break
    assert timer._handle is None and timer.pending == 0 and counters.twcc_feedback_out == 1
    timer.close()


def test_refuses_bad_settings(loop: asyncio.AbstractEventLoop) -> None:
    counters = MediaCounters()
    with pytest.raises(ValueError, match="interval"):
        FeedbackTimer(loop, counters, 0)
    timer = FeedbackTimer(loop, counters, 50)
    with pytest.raises(ValueError, match="extension id"):
        PublisherFeedback(0, SENDER, lambda b: True, timer)
