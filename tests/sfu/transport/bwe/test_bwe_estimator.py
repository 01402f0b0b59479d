"""The send-side estimator over synthetic traces of a simulated bottleneck (``linksim``), and
its robustness to duplicate, reordered, lost and time-jumped feedback."""

from __future__ import annotations

from collections import deque

import pytest

from sfu.transport.bwe.delay import InterArrival, OveruseDetector, Trendline, _slope
from sfu.transport.bwe.estimator import BweConfig, SendSideBwe
from sfu.transport.bwe.feedback import BweState, PacketFeedback
from tests.sfu.transport.bwe.linksim import Link, Run


def band(run: Run, start_ms: float, end_ms: float, capacity: float) -> tuple[float, float]:
    es = run.estimates(start_ms, end_ms)
    assert es, "no feedback in that span"
    return min(es) / capacity, max(es) / capacity


@pytest.mark.parametrize("capacity", [500_000, 1_500_000, 3_000_000])
def test_constant_capacity_converges_and_stays(capacity: int) -> None:
    run = Run(SendSideBwe(), Link(lambda t: capacity))
    run.run_until(60_000)
    low, high = band(run, 40_000, 60_000, capacity)
    assert 0.8 <= low and high <= 1.1, (low, high)
    assert high / low < 1.3  # AIMD saw-tooth, not wild swings


def test_step_down_follows_within_three_seconds() -> None:
    run = Run(SendSideBwe(BweConfig(start_bps=2_000_000)),
              Link(lambda t: 2_500_000 if t < 20_000 else 500_000))
    run.run_until(40_000)
    assert band(run, 15_000, 20_000, 2_500_000)[0] >= 0.8
    assert max(run.estimates(23_000, 24_000)) < 500_000
    low, high = band(run, 25_000, 40_000, 500_000)
    assert 0.6 <= low and high <= 1.1, (low, high)


def test_step_up_rises_and_reaches_the_new_capacity() -> None:
    run = Run(SendSideBwe(BweConfig(start_bps=450_000)),
              Link(lambda t: 500_000 if t < 20_000 else 2_500_000))
    run.run_until(50_000)
    before = max(run.estimates(19_000, 20_000))
    assert before <= 550_000
    assert min(run.estimates(30_000, 31_000)) >= 1.5 * before  # rising within 10 s
    assert band(run, 45_000, 50_000, 2_500_000)[0] >= 0.8


def test_random_loss_of_five_percent_does_not_collapse() -> None:
    run = Run(SendSideBwe(BweConfig(start_bps=1_000_000)), Link(lambda t: 1_500_000, loss=0.05))
    run.run_until(30_000)
    assert min(run.estimates(0, 30_000)) >= 700_000
    last = run.estimates(20_000, 30_000)
    assert sum(last) / len(last) >= 900_000


def test_random_loss_of_twenty_percent_decreases() -> None:
    bwe = SendSideBwe(BweConfig(start_bps=1_000_000))
    run = Run(bwe, Link(lambda t: 1_500_000, loss=0.2))
    run.run_until(10_000)
    assert max(run.estimates(9_000, 10_000)) < 500_000


def test_reordering_is_not_congestion() -> None:
    clean = Run(SendSideBwe(), Link(lambda t: 1_500_000))
    clean.run_until(60_000)
    run = Run(SendSideBwe(), Link(lambda t: 1_500_000, reorder=0.2, reorder_ms=15.0))
    run.run_until(60_000)
    low, high = band(run, 40_000, 60_000, 1_500_000)
    assert 0.8 <= low and high <= 1.1, (low, high)
    assert run.states.count("overusing") <= 2 * clean.states.count("overusing") + 2


def test_lost_feedback_is_not_congestion() -> None:
    clean = Run(SendSideBwe(), Link(lambda t: 1_500_000))
    clean.run_until(60_000)
    run = Run(SendSideBwe(), Link(lambda t: 1_500_000), feedback_loss=0.3)
    run.run_until(60_000)
    low, high = band(run, 40_000, 60_000, 1_500_000)
    assert 0.8 <= low and high <= 1.1, (low, high)
    assert run.states.count("overusing") <= 2 * clean.states.count("overusing") + 2


def test_bounds_hold() -> None:
    run = Run(SendSideBwe(BweConfig(start_bps=300_000, min_bps=200_000, max_bps=800_000)),
              Link(lambda t: 3_000_000 if t < 30_000 else 100_000))
    run.run_until(45_000)
    assert max(run.estimates(0, 30_000)) == 800_000
    assert min(run.estimates(30_000, 45_000)) == 200_000


def _feedback(first_seq: int, count: int, t0: float, spacing: float = 5.0) -> list[PacketFeedback]:
    return [PacketFeedback(first_seq + i, t0 + i * spacing, 1000.0 + t0 + i * spacing, 1200) for i in range(count)]


def test_duplicate_feedback_is_ignored() -> None:
    bwe = SendSideBwe()
    lost = [PacketFeedback(i, float(i), None, 1200) for i in range(30)]
    bwe.on_feedback(_feedback(100, 30, 0.0), 200.0)
    after = bwe.estimate_bps
    bwe.on_feedback(_feedback(100, 30, 0.0), 250.0)  # the same report again
    bwe.on_feedback(lost, 300.0)  # seqs below what was reported: old news
    assert bwe.estimate_bps == after
    assert bwe.loss_fraction == 0.0


def test_all_lost_feedback_lowers_the_loss_limit_only() -> None:
    bwe = SendSideBwe(BweConfig(start_bps=1_000_000))
    bwe.on_feedback([PacketFeedback(i, i * 5.0, None, 1200) for i in range(40)], 500.0)
    assert bwe.estimate_bps == 500_000  # 1 - 0.5 x 100 % loss
    assert bwe.state is BweState.NORMAL


def test_receiver_clock_jump_is_not_overuse() -> None:
    bwe = SendSideBwe()
    seq = 0
    for k in range(40):  # steady, then the receiver's clock jumps by 10 s
        jump = 10_000.0 if k >= 20 else 0.0
        batch = [PacketFeedback(seq + i, k * 50.0 + i * 5, 20.0 + jump + k * 50.0 + i * 5, 1200) for i in range(10)]
        seq += 10
        bwe.on_feedback(batch, k * 50.0 + 70)
        assert bwe.state is not BweState.OVERUSING


def test_probe_result_raises_never_lowers() -> None:
    bwe = SendSideBwe(BweConfig(start_bps=300_000))
    bwe.on_probe_result(1_200_000, 10.0)
    assert bwe.estimate_bps == 1_200_000
    bwe.on_probe_result(400_000, 20.0)
    assert bwe.estimate_bps == 1_200_000


@pytest.mark.parametrize(
    ("growth_ms_per_group", "expected"),
    [(0.0, BweState.NORMAL), (1.0, BweState.OVERUSING), (-1.0, BweState.UNDERUSING)],
)
def test_detector_reads_the_queue_trend(growth_ms_per_group: float, expected: BweState) -> None:
    """Groups every 10 ms whose arrival spacing grows, keeps, or shrinks by a fixed amount."""
    inter, trend, detector = InterArrival(), Trendline(), OveruseDetector()
    recv = 100.0
    state = BweState.NORMAL
    for g in range(60):
        recv += 10.0 + growth_ms_per_group
        deltas = inter.add(g * 10.0, recv)
        if deltas is None:
            continue
        value = trend.update(*deltas)
        if value is not None:
            state = detector.detect(value, deltas[0], recv)
    assert state is expected


def test_threshold_adapts_within_its_clamp() -> None:
    detector = OveruseDetector()
    for i in range(1000):
        detector.detect(0.0, 10.0, i * 10.0)
    assert detector.threshold == 6.0
    for i in range(1000, 3000):
        detector.detect(detector.threshold + 10.0, 10.0, i * 10.0)
    assert 6.0 < detector.threshold <= 600.0


def test_restarted_numbering_is_not_old_news() -> None:
    """A caller that (wrongly) passes 16-bit seqs: after the wrap, feedback still counts."""
    bwe = SendSideBwe(BweConfig(start_bps=1_000_000))
    bwe.on_feedback(_feedback(65_500, 30, 0.0), 200.0)
    bwe.on_feedback([PacketFeedback(i, 200.0 + i, None, 1200) for i in range(40)], 400.0)  # wrapped
    assert bwe.loss_fraction == 1.0 and bwe.estimate_bps < 1_000_000


def test_feedback_that_stops_lowers_the_estimate_until_it_resumes() -> None:
    bwe = SendSideBwe()

    def silence(now: float, run: Run) -> None:
        if int(now) % 1000 == 0:
            bwe.tick(now, sending=True)
        run.feedback_loss = 1.0 if 30_000 <= now < 35_000 else 0.0

    run = Run(bwe, Link(lambda t: 1_500_000), on_tick=silence)
    run.run_until(30_000)
    before = bwe.estimate_bps
    assert before >= 1_200_000
    run.run_until(35_000)  # five seconds without a single feedback
    assert bwe.estimate_bps <= before * 0.8 ** 3
    assert bwe.estimate_bps >= bwe.config.min_bps
    run.run_until(60_000)
    assert band(run, 50_000, 60_000, 1_500_000)[0] >= 0.8  # back once feedback resumes


def test_quiet_transport_keeps_its_estimate() -> None:
    bwe = SendSideBwe(BweConfig(start_bps=800_000))
    for now in range(0, 10_000, 1000):
        bwe.tick(float(now), sending=False)  # nothing sent: no feedback expected
    assert bwe.estimate_bps == 800_000


def test_trend_is_exact_after_days_of_arrival_time() -> None:
    """The regression runs on arrival times since the first group: after three days of them
    it must still read a queue growing by 1 ms per 10 ms group as a slope of 0.1."""
    base = 3 * 86_400_000.0
    points = deque((base + 10.0 * i, 5.0 + 0.1 * 10.0 * i) for i in range(20))
    assert abs(_slope(points) - 0.1) < 1e-9
