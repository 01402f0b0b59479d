"""bench.microfwd: the in-process forwarding loop forwards every packet to every subscriber."""

from __future__ import annotations

from bench.microfwd import run


def test_every_packet_reaches_every_subscriber_through_the_fan_out_group() -> None:
    result = run(fanout=3, packets=100, batch=32, size=1200)
    assert result["rtp_in"] == 100
    assert result["rtp_out"] == 300
    assert result["drops"] == {}
    assert result["us_per_out"] > 0


def test_with_transport_cc_every_subscriber_stamps_its_own_seqs() -> None:
    result = run(fanout=3, packets=100, batch=32, size=1200, transport_cc="on")
    assert result["rtp_in"] == 100 and result["rtp_out"] == 300 and result["drops"] == {}
    assert result["stamped"] == 300  # in place, in the fan-out group
    assert run(fanout=3, packets=50, batch=32, size=1200)["stamped"] == 0
