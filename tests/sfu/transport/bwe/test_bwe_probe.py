"""The probe controller: when it probes, what a cluster looks like, how feedback of the
cluster becomes a result, and its back-off; and, over the simulated link, that probing finds
a capacity step up far sooner than the estimator's own increase, and stops when the link is
full."""

from __future__ import annotations

import pytest

from sfu.transport.bwe.estimator import BweConfig, SendSideBwe
from sfu.transport.bwe.feedback import PacketFeedback
from sfu.transport.bwe.pacer import ProbeCluster
from sfu.transport.bwe.probe import ProbeConfig, ProbeController
from tests.sfu.transport.bwe.linksim import PACKET, Link, Run


@pytest.mark.parametrize(
    ("estimate", "target", "rate"),
    [
        (1_000_000, None, None),  # nothing wanted
        (1_000_000, 1_040_000, None),  # within the margin: not worth it
        (1_000_000, 1_500_000, 2_000_000),  # 2x the estimate
        (1_000_000, 2_500_000, 2_500_000),  # the target
        (1_000_000, 8_000_000, 3_000_000),  # at most 3x
        (19_000_000, 30_000_000, 20_000_000),  # at most max_bps
    ],
)
def test_when_and_how_fast_to_probe(estimate: int, target: int | None, rate: int | None) -> None:
    cluster = ProbeController().want(estimate, target, 0.0)
    if rate is None:
        assert cluster is None
        return
    assert cluster is not None
    assert cluster.rate_bps == rate
    assert cluster.min_bytes == rate * 15 // 8000 and cluster.min_packets == 5


def send_cluster(ctl: ProbeController, cluster: ProbeCluster, first_seq: int, t0: float,
                 recv_rate_bps: float) -> list[PacketFeedback]:
    """The cluster's packets as the receiver reports them when the path carries ``recv_rate``."""
    count = max(cluster.min_packets, -(-cluster.min_bytes // PACKET))
    spacing = PACKET * 8000 / cluster.rate_bps
    recv_spacing = max(spacing, PACKET * 8000 / recv_rate_bps)
    out = []
    for i in range(count):
        ctl.on_probe_sent(cluster.id, first_seq + i)
        out.append(PacketFeedback(first_seq + i, t0 + i * spacing, 30 + t0 + i * recv_spacing, PACKET))
    return out


def test_result_is_what_got_through_and_failures_back_off() -> None:
    ctl = ProbeController(ProbeConfig(min_interval_ms=1000.0))
    cluster = ctl.want(1_000_000, 1_800_000, 0.0)
    assert cluster is not None and cluster.rate_bps == 2_000_000
    assert ctl.want(1_000_000, 1_800_000, 1.0) is None  # one at a time
    fb = send_cluster(ctl, cluster, 100, 0.0, recv_rate_bps=10_000_000)
    assert ctl.on_feedback(fb[:2], 50.0) is None  # not all reported yet
    result = ctl.on_feedback(fb[2:], 60.0)
    assert result is not None and 1_900_000 <= result <= 2_100_000
    assert ctl.outcomes["success"] == 1
    assert ctl.want(2_000_000, 2_000_000, 500.0) is None  # probed recently
    # from now on the path takes only 2.1 Mbit/s: each probe fails, and waits double (to 8 s)
    now, starts = 1060.0, []
    while now < 40_000:
        c = ctl.want(2_000_000, 2_500_000, now)
        if c is not None:
            starts.append(now)
            assert ctl.on_feedback(send_cluster(ctl, c, 1000 + len(starts) * 100, now, 2_100_000), now + 50) is None
        now += 10
    gaps = [round((b - a) / 1000) for a, b in zip(starts, starts[1:], strict=False)]
    assert ctl.outcomes["failure"] == len(starts)
    assert gaps[:5] == [1, 2, 4, 8, 8], gaps
    # a new, higher need starts over at once
    assert ctl.want(2_000_000, 4_000_000, now) is not None


def test_lost_cluster_times_out() -> None:
    ctl = ProbeController()
    cluster = ctl.want(500_000, 1_000_000, 0.0)
    assert cluster is not None
    for i in range(5):
        ctl.on_probe_sent(cluster.id, i)
    ctl.on_feedback([PacketFeedback(0, 0.0, None, PACKET)], 100.0)  # the rest never reported
    assert ctl.want(500_000, 1_000_000, 500.0) is None
    assert ctl.want(500_000, 1_000_000, 1000.0) is None  # timed out now; backs off
    assert ctl.outcomes["timeout"] == 1
    assert ctl.want(500_000, 1_000_000, 2100.0) is not None


def probing_run(capacity: object, target: int, start_bps: int) -> tuple[Run, ProbeController]:
    bwe = SendSideBwe(BweConfig(start_bps=start_bps))
    ctl = ProbeController()

    def tick(now: float, run: Run) -> None:
        cluster = ctl.want(bwe.estimate_bps, target, now)
        if cluster is None:
            return
        count = max(cluster.min_packets, -(-cluster.min_bytes // PACKET))
        spacing = PACKET * 8000 / cluster.rate_bps
        for i in range(count):
            ctl.on_probe_sent(cluster.id, run.send_packet(now + i * spacing))

    def feedback(packets: list[PacketFeedback], now: float) -> None:
        result = ctl.on_feedback(packets, now)
        if result is not None:
            bwe.on_probe_result(result, now)

    assert callable(capacity)
    run = Run(bwe, Link(capacity), on_tick=tick, on_feedback=feedback)
    return run, ctl


def test_probing_finds_a_step_up_within_seconds() -> None:
    run, ctl = probing_run(lambda t: 500_000 if t < 20_000 else 2_500_000, 2_400_000, 450_000)
    run.run_until(30_000)
    assert max(run.estimates(19_000, 20_000)) <= 600_000  # probes did not overshoot the old link
    reached = [t for t, e in run.samples if t >= 20_000 and e >= 2_000_000]
    assert reached and reached[0] <= 25_000, reached[:1]  # the estimator alone needs ~19 s
    assert ctl.outcomes["success"] >= 1


def test_probing_stops_when_the_link_is_full() -> None:
    run, ctl = probing_run(lambda t: 1_000_000, 3_000_000, 900_000)
    run.run_until(60_000)
    total = sum(ctl.outcomes.values())
    assert total <= 12, ctl.outcomes
    assert ctl.failures >= 3
    low, high = min(run.estimates(30_000, 60_000)), max(run.estimates(30_000, 60_000))
    assert 700_000 <= low and high <= 1_150_000, (low, high)
