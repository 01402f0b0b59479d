"""SendHistory: sent packets matched with transport-cc feedback into PacketFeedback.

The feedback comes from the node's own receive side (``FeedbackBuilder``) over the wire
format (serialized and parsed), as a subscriber's would."""

from __future__ import annotations

import random
import struct

import pytest

from sfu.packet.rtcp import ReceiverReport, TransportCC, compound, parse_compound
from sfu.packet.twcc import TransportFeedback
from sfu.transport.twcc_recv import FeedbackBuilder
from sfu.transport.twcc_send import PacketFeedback, SendHistory

T0 = 5_000_000_000


def over_wire(fbs: list[TransportFeedback]) -> list[TransportFeedback]:
    return [TransportFeedback.parse(bytes(fb)) for fb in fbs]


def feed(history: SendHistory, fbs: list[TransportFeedback]) -> list[PacketFeedback]:
    out: list[PacketFeedback] = []
    for fb in over_wire(fbs):
        out.extend(history.on_feedback(fb))
    return out


def test_sent_packets_come_back_with_arrival_and_size() -> None:
    h = SendHistory()
    rx = FeedbackBuilder(1)
    for seq in range(10):
        h.on_sent(seq, 100.0 + seq, 1000 + seq)
        if seq != 2:  # lost on the way
            rx.on_packet(seq, T0 + 20_000 + 1000 * seq)
    results = feed(h, rx.poll(0))
    assert [(r.seq, r.send_ms, r.size) for r in results] == [(s, 100.0 + s, 1000 + s) for s in range(10)]
    assert [r.recv_ms is None for r in results] == [s == 2 for s in range(10)]
    base = results[0].recv_ms
    assert base is not None
    for r in results:
        if r.recv_ms is not None:
            assert r.recv_ms - base == pytest.approx(r.seq * 1.0, abs=0.125)


def test_seq_wrap_gives_extended_seqs() -> None:
    h = SendHistory()
    rx = FeedbackBuilder(1)
    wire_seqs = [65533, 65534, 65535, 0, 1]
    for k, seq in enumerate(wire_seqs):
        assert h.on_sent(seq, float(k), 100) == 65533 + k
        rx.on_packet(seq, T0 + 100 * k)
    results = feed(h, rx.poll(0))
    assert [r.seq for r in results] == [65533, 65534, 65535, 65536, 65537]
    assert all(r.recv_ms is not None for r in results)


def test_reported_again_after_reordering_is_returned_once() -> None:
    h = SendHistory()
    rx = FeedbackBuilder(1)
    for seq in range(5):
        h.on_sent(seq, float(seq), 500)
    for seq in (0, 1, 3):
        rx.on_packet(seq, T0 + 1000 * seq)
    first = feed(h, rx.poll(0))
    assert [(r.seq, r.recv_ms is None) for r in first] == [(0, False), (1, False), (2, True), (3, False)]
    rx.on_packet(2, T0 + 5000)  # late: the receiver reports 2 and 3 again
    rx.on_packet(4, T0 + 6000)
    second = feed(h, rx.poll(100))
    assert [(r.seq, r.recv_ms is None) for r in second] == [(2, False), (4, False)]
    assert h.duplicates == 1  # 3 again


def test_a_loss_reported_twice_is_returned_once() -> None:
    h = SendHistory()
    for seq in range(3):
        h.on_sent(seq, float(seq), 100)
    fb = TransportFeedback(1, 2, 0, 10, 0, [4, None, 8])
    assert [r.recv_ms is None for r in h.on_feedback(fb)] == [False, True, False]
    again = TransportFeedback(1, 2, 1, 10, 1, [None, 8])
    assert h.on_feedback(again) == []
    assert h.duplicates == 2


def test_unknown_and_too_old_seqs_are_skipped() -> None:
    h = SendHistory(capacity=16)
    assert h.on_feedback(TransportFeedback(1, 2, 0, 0, 0, [1])) == []  # nothing sent yet
    for seq in range(40):
        h.on_sent(seq, float(seq), 100)
    unknown = h.unknown
    results = h.on_feedback(TransportFeedback(1, 2, 20, 3, 1, [4] * 25))  # 20..44, 1 ms apart
    assert [r.seq for r in results] == list(range(24, 40))  # 20-23 overwritten, 40-44 never sent
    assert h.unknown - unknown == 9
    # arrival times count the deltas of the statuses skipped before the history's range
    assert [r.recv_ms for r in results] == [3 * 64.0 + (seq - 19) for seq in range(24, 40)]


def test_transport_cc_from_the_compound_parser() -> None:
    h = SendHistory(capacity=16)
    for seq in range(3):
        h.on_sent(seq, float(seq), 100)
    data = compound([ReceiverReport(7), TransportFeedback(1, 2, 0, 0, 0, [1, None, 2]).to_transport_cc()])
    packet = parse_compound(data)[1]
    assert isinstance(packet, TransportCC)
    results = h.on_transport_cc(packet)
    assert [(r.seq, r.recv_ms) for r in results] == [(0, 0.25), (1, None), (2, 0.75)]
    # a 20-byte message may claim 65,535 statuses: refused above what the history holds
    claim = TransportCC(1, 2, struct.pack("!HHIH", 0, 17, 0, 0x0011) + bytes(2))
    with pytest.raises(ValueError, match="status count 17 is over the limit of 16"):
        h.on_transport_cc(claim)
    assert len(TransportFeedback.from_transport_cc(claim).deltas) == 17


def test_reference_time_unwraps_across_messages() -> None:
    h = SendHistory()
    for seq in range(3):
        h.on_sent(seq, float(seq), 100)
    top = (1 << 24) - 1
    (a,) = h.on_feedback(TransportFeedback(1, 2, 0, top, 0, [0]))
    (b,) = h.on_feedback(TransportFeedback(1, 2, 1, 1, 1, [0]))  # wrapped: 2 x 64 ms later
    (c,) = h.on_feedback(TransportFeedback(1, 2, 2, top, 2, [4]))  # late message from before
    assert a.recv_ms is not None and b.recv_ms is not None and c.recv_ms is not None
    assert b.recv_ms - a.recv_ms == pytest.approx(128.0)
    assert c.recv_ms - a.recv_ms == pytest.approx(1.0)


def test_reference_wrap_from_the_builder() -> None:
    h = SendHistory()
    rx = FeedbackBuilder(1)
    wrap_us = (1 << 24) * 64_000
    results = []
    for k in range(6):
        h.on_sent(k, 10.0 * k, 100)
        rx.on_packet(k, wrap_us - 150_000 + 60_000 * k)
        results += feed(h, rx.poll(1000 * k))
    assert [r.seq for r in results] == list(range(6))
    times = [r.recv_ms for r in results]
    assert all(t is not None for t in times)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]  # type: ignore[operator]
    assert gaps == pytest.approx([60.0] * 5, abs=0.125)


def test_send_numbers_consecutively_across_the_wrap() -> None:
    h = SendHistory()
    assert [h.send(float(k), 100) for k in range(3)] == [0, 1, 2]
    h2 = SendHistory()
    h2.on_sent(65534, 0.0, 100)
    assert [h2.send(1.0, 100), h2.send(2.0, 100), h2.send(3.0, 100)] == [65535, 0, 1]
    results = h2.on_feedback(TransportFeedback(1, 2, 65534, 0, 0, [1, 1, None, 1]))
    assert [(r.seq, r.send_ms) for r in results] == [(65534, 0.0), (65535, 1.0), (65536, 2.0), (65537, 3.0)]


def test_an_empty_slot_never_matches() -> None:
    h = SendHistory(capacity=16)
    h.on_sent(5, 0.0, 100)
    assert h.on_feedback(TransportFeedback(1, 2, 65535, 0, 0, [1])) == []  # ext -1: never sent
    assert h.unknown == 1


def test_feedback_loss_is_counted() -> None:
    h = SendHistory()
    h.on_sent(0, 0.0, 100)
    for count in (254, 255, 1, 2, 2):  # 0 missing, then a repeat
        h.on_feedback(TransportFeedback(1, 2, 0, 0, count, [None]))
    assert h.feedback_lost == 1


def test_ring_stays_bounded() -> None:
    h = SendHistory(capacity=64)
    for k in range(100_000):
        h.on_sent(k & 0xFFFF, float(k), 1200)
    assert len(h.exts) == 64 and len(h.send_times) == 64 and len(h.states) == 64
    (r,) = h.on_feedback(TransportFeedback(1, 2, 99_999 & 0xFFFF, 0, 0, [3]))
    assert r.seq == 99_999 and r.send_ms == 99_999.0


def test_argument_bounds() -> None:
    with pytest.raises(ValueError, match="power of two"):
        SendHistory(capacity=100)
    h = SendHistory()
    with pytest.raises(ValueError, match="seq 65536"):
        h.on_sent(65536, 0.0, 1)
    with pytest.raises(ValueError, match="size -1"):
        h.on_sent(1, 0.0, -1)


def test_one_way_delay_trace_survives_the_round_trip() -> None:
    """A sender at 1 packet/ms through a path with a queue that builds up, jitter and 5 % loss,
    feedback every 100 ms: the estimator's input shows the delay build-up to within the
    250 us of quantization, every sent packet is accounted for once."""
    rng = random.Random(3)
    h = SendHistory()
    rx = FeedbackBuilder(1, interval_ms=100)
    delay_us: dict[int, int] = {}
    results: list[PacketFeedback] = []
    for k in range(3000):
        send_ms = 1000.0 + k
        h.on_sent(k & 0xFFFF, send_ms, 1200)
        queue_us = 20_000 + (k % 1000) * 50 + rng.randrange(0, 500)  # grows 50 ms per second
        if rng.random() >= 0.05:
            rx.on_packet(k & 0xFFFF, T0 + int(send_ms * 1000) + queue_us)
            delay_us[k] = queue_us
        results += feed(h, rx.poll(int(send_ms)))
    results += feed(h, rx.build())
    seqs = [r.seq for r in results]
    assert sorted(seqs) == list(range(len(seqs))) and len(seqs) >= 2990
    ref = next(r for r in results if r.recv_ms is not None)
    for r in results:
        if r.recv_ms is None:
            assert r.seq not in delay_us
            continue
        owd = (r.recv_ms - r.send_ms) - (ref.recv_ms - ref.send_ms)  # type: ignore[operator]
        assert owd * 1000 == pytest.approx(delay_us[r.seq] - delay_us[ref.seq], abs=250)
