"""TransportSender: stamping into buffers, feedback into the estimate, its per-second budget, REMB
as the estimate of subscribers without transport-cc.  Injected clock."""

from __future__ import annotations

import pytest

from sfu.counters import CongestionCounters
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.packet.twcc import TransportFeedback, read_seq
from sfu.transport.sender import FEEDBACK_PER_S, STATUSES_PER_S, TransportSender

TW = 3


def packet(extensions: list[tuple[int, bytes]] | None = None, size: int = 100) -> bytearray:
    header = RtpHeader(payload_type=96, sequence_number=1, timestamp=2, ssrc=3, extensions=extensions or [])
    return bytearray(bytes(RtpPacket(header, bytes(size)))) + bytearray(8)


def test_stamp_numbers_and_records_each_packet() -> None:
    s = TransportSender(TW, CongestionCounters())
    lengths = []
    for i in range(5):
        buf = packet([(TW, b"\xff\xff")] if i % 2 else None)
        n = s.stamp(buf, len(buf) - 8, 100.0 + i)
        assert read_seq(buf, n, TW) == i
        lengths.append(n)
    assert s.history.high == 4
    assert list(s.history.sizes[:5]) == lengths and list(s.history.send_times[:5]) == [100.0 + i for i in range(5)]
    other = bytearray(packet())
    other[0] |= 0x10  # an X bit with no room for a block: refused, sent as it is, counted
    assert s.stamp(other, 14, 200.0) == 14 and s.counters.unstamped == 1 and s.history.high == 4


def test_feedback_sets_the_estimate_and_remb_serves_until_it_comes() -> None:
    s = TransportSender(TW, CongestionCounters())
    assert s.estimate_bps(0) is None
    s.on_remb(640_000, 0)
    assert s.estimate_bps(0) == 640_000
    now = 1000.0
    for round_ in range(20):
        base = s.history.high + 1
        for _ in range(20):
            buf = packet(size=1000)
            s.stamp(buf, len(buf) - 8, now)
            now += 5
        fb = TransportFeedback(1, 2, base & 0xFFFF, round_, round_, [20] * 20)  # 5 ms apart: as sent
        s.on_transport_cc(fb.to_transport_cc(), now)
    assert s.feedback_seen and s.counters.feedback_in == 20
    estimate = s.estimate_bps(now)
    assert estimate is not None and estimate != 640_000 and estimate > 0


@pytest.mark.parametrize("statuses", [1, 1000])
def test_feedback_over_the_budget_is_skipped_and_counted(statuses: int) -> None:
    s = TransportSender(TW, CongestionCounters())
    for _ in range(statuses):
        buf = packet()
        s.stamp(buf, len(buf) - 8, 0.0)
    fb = TransportFeedback(1, 2, 0, 0, 0, [1] * statuses).to_transport_cc()
    for k in range(200):
        s.on_transport_cc(fb, 10.0 + k)
    taken = min(FEEDBACK_PER_S, STATUSES_PER_S // statuses)
    assert s.counters.feedback_in == taken
    assert s.counters.feedback_limited == 200 - taken
    s.on_transport_cc(fb, 2000.0)  # a new second
    assert s.counters.feedback_in == taken + 1


def test_an_id_outside_the_one_byte_range_is_refused() -> None:
    with pytest.raises(ValueError, match="one-byte range"):
        TransportSender(15, CongestionCounters())
