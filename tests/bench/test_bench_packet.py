"""bench.packet: the synthetic RTP packet round-trips and every corruption is caught."""

from __future__ import annotations

import pytest

from bench.packet import RTP_HEADER_LEN, BenchPacket, FillerTable


@pytest.mark.parametrize("seq", [0, 1, 250, 251, 65535, 65536, 2**32 - 1])
def test_round_trip(seq: int) -> None:
    pkt = BenchPacket(ssrc=0x1234, seq=seq, send_ns=987654321, size=1200)
    data = bytes(pkt)
    assert len(data) == 1200
    assert BenchPacket.parse(data) == pkt
    assert data[-FillerTable(1200).length:] == FillerTable(1200).for_seq(seq)


@pytest.mark.parametrize(
    ("offset", "message"),
    [(0, "not a bench RTP header"), (3, "does not match"), (RTP_HEADER_LEN, "magic"), (500, "corrupt"), (1199, "corrupt")],
)
def test_corruption_is_reported(offset: int, message: str) -> None:
    data = bytearray(bytes(BenchPacket(ssrc=1, seq=77, send_ns=5, size=1200)))
    data[offset] ^= 0x01
    with pytest.raises(ValueError, match=message):
        BenchPacket.parse(bytes(data))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"size": 20}, "below the minimum"), ({"seq": -1}, "out of range"), ({"seq": 2**32}, "out of range")],
)
def test_invalid_packets(kwargs: dict[str, int], message: str) -> None:
    args = {"ssrc": 1, "seq": 1, "send_ns": 0, "size": 100} | kwargs
    with pytest.raises(ValueError, match=message):
        BenchPacket(**args)


def test_short_packet() -> None:
    with pytest.raises(ValueError, match="too short"):
        BenchPacket.parse(b"\x80\x60")
