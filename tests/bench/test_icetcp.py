"""``python -m bench.icetcp`` smoke test: a node process, a lite publisher, viewers over UDP then
over ICE-TCP; both phases forward, the viewers receive what was forwarded, the CPU is measured."""

from __future__ import annotations

import pytest

from bench.icetcp import run

pytestmark = pytest.mark.timeout(120)


async def test_both_transports_forward_and_are_measured() -> None:
    result = await run(subscribers=2, seconds=1.5, pps=100, size=200)
    udp, tcp = result["phases"]
    assert (udp["transport"], tcp["transport"]) == ("udp", "tcp")
    for phase in (udp, tcp):
        assert phase["out_packets"] > 100, phase
        assert phase["received"] >= phase["out_packets"] * 0.9, phase
        assert phase["node_cpu_s"] > 0 and phase["out_packets_per_cpu_s"] > 0, phase
