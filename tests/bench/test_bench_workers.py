"""Smoke test of ``python -m bench workers``' run: a real 2-worker node, one room per worker, a
few hundred paced packets; each worker forwards its room's share and its CPU is measured."""

from __future__ import annotations

import pytest

from bench.workers import WorkersRun, forwarded_by_worker, run_once

SENT = 300


@pytest.mark.timeout(120)
def test_two_workers_each_carry_one_room() -> None:
    result = run_once(WorkersRun(workers=2, fanout=2, seconds=1.0, in_pps=float(SENT)))
    assert result["sent"] == 2 * SENT
    assert result["loss"] == 0
    workers = result["per_worker"]
    assert [w["worker"] for w in workers] == [0, 1]
    assert [w["rooms"] for w in workers] == [1, 1]  # the load spread: a room on each worker
    for w in workers:
        assert w["forwarded"] >= SENT * 2  # its room's packets to its two sinks (+ self-check probes)
        assert w["cpu_s"] > 0 and w["out_pps_per_cpu"] > 0
    assert result["out_pps_per_cpu_per_worker"] > 0


def test_forwarded_video_is_read_per_worker_label() -> None:
    text = """\
# HELP levelchat_sfu_packets_forwarded_total RTP packets forwarded
# TYPE levelchat_sfu_packets_forwarded_total counter
levelchat_sfu_packets_forwarded_total{kind="video",worker="0"} 10.0
levelchat_sfu_packets_forwarded_total{kind="audio",worker="0"} 99.0
levelchat_sfu_packets_forwarded_total{kind="video",worker="1"} 7.0
"""
    assert forwarded_by_worker(text) == {0: 10.0, 1: 7.0}
    plain = 'levelchat_sfu_packets_forwarded_total{kind="video"} 5.0\n'
    assert forwarded_by_worker(plain) == {0: 5.0}
