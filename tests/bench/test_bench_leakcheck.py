"""Smoke test of ``python -m bench.leakcheck``: a node in the process, two client processes with
real WHIP/WHEP sessions (ICE, DTLS, SRTP, media), the figures it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.leakcheck import slope
from bench.targets import REPO_ROOT


def test_slope_is_growth_per_cycle() -> None:
    assert slope([1.0, 3.0, 5.0, 7.0]) == 2.0
    assert slope([4.0, 4.0, 4.0]) == 0.0
    assert slope([9.0]) == 0.0


def test_two_cycles_leave_only_the_self_checks_sessions(tmp_path: Path) -> None:
    out = tmp_path / "leak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.leakcheck", "--cycles", "2", "--rooms", "1", "--publishers", "1",
         "--viewers", "2", "--seconds", "0.5", "--pause", "0", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=90, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    samples = result["samples"]
    assert len(samples) == 2
    for s in samples:
        assert s["client"]["opened"] == s["client"]["deleted"] == 3 and s["client"]["failed"] == 0
        assert s["client"]["received"] > 0
        assert s["cyclic_types"].get("sfu.transport.peer.PeerTransport", 0) == 0
    final = result["summary"]
    # what is left is the self-check's probe publisher and subscriber, on both ends
    assert final["final_session"]["transports"] == 2 and final["final_session"]["srtp_open"] == 8
    assert final["final_tables"]["router_participants"] == 2
    assert final["final_tables"]["rooms_open"] == 0 and final["final_tables"]["rooms_closed"] == 2
