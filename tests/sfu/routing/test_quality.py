"""The connection quality scorer (sfu.routing.quality): one sample's rating, table-driven, and
the hysteresis over time with an injected clock."""

from __future__ import annotations

import pytest

from sfu.routing.quality import LinkSample, Quality, QualityConfig, QualityScorer, judge, score

E, G, P, L = Quality.EXCELLENT, Quality.GOOD, Quality.POOR, Quality.LOST


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (LinkSample(), None),  # nothing to judge
        (LinkSample(loss=0.0), E),
        (LinkSample(loss=0.02), E),  # 2 % lost: MOS 4.29
        (LinkSample(loss=0.05), G),  # 5 %: 4.04
        (LinkSample(loss=0.08), G),
        (LinkSample(loss=0.10), P),  # 10 %: 3.50
        (LinkSample(loss=0.20), P),
        (LinkSample(loss=1.0), P),
        (LinkSample(loss=-0.1), E),  # a duplicate-inflated window counts as no loss
        (LinkSample(loss=0.0, rtt_ms=100, jitter_ms=10), E),
        (LinkSample(loss=0.0, rtt_ms=400, jitter_ms=20), G),  # 250 ms one way
        (LinkSample(loss=0.0, rtt_ms=800, jitter_ms=50), P),
        (LinkSample(rtt_ms=30), E),  # round trip only
        (LinkSample(loss=0.0, bandwidth=1.5), E),
        (LinkSample(loss=0.0, bandwidth=0.8), E),
        (LinkSample(loss=0.0, bandwidth=0.79), G),  # the estimate covers less than it wants
        (LinkSample(bandwidth=0.5), G),
        (LinkSample(loss=0.0, bandwidth=0.29), P),
        (LinkSample(loss=0.10, bandwidth=0.5), P),  # a cap never raises
        (LinkSample(loss=0.0, silent_ms=7_999), E),
        (LinkSample(loss=0.0, silent_ms=8_000), L),
        (LinkSample(silent_ms=9_000), L),  # lost needs no figures
        (LinkSample(loss=0.0, closed=True), L),
    ],
)
def test_judge_table(sample: LinkSample, expected: Quality | None) -> None:
    assert judge(sample) is expected


def test_score_is_monotonic_in_loss_and_delay() -> None:
    losses = [score(LinkSample(loss=x / 100)) for x in range(0, 60, 2)]
    assert losses == sorted(losses, reverse=True) and losses[0] <= 4.5 and losses[-1] >= 1.0
    delays = [score(LinkSample(loss=0.0, rtt_ms=ms)) for ms in range(0, 3000, 100)]
    assert delays == sorted(delays, reverse=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"good_mos": 4.2, "excellent_mos": 4.1}, "good_mos"),
        ({"excellent_mos": 4.6}, "excellent_mos"),
        ({"bandwidth_poor": 0.9, "bandwidth_good": 0.8}, "bandwidth_poor"),
        ({"down_samples": 0}, "down_samples"),
        ({"lost_after_ms": 0}, "lost_after_ms"),
    ],
)
def test_config_is_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QualityConfig(**kwargs)  # type: ignore[arg-type]


CLEAN, LOSSY, BAD, SILENT = LinkSample(loss=0.0), LinkSample(loss=0.06), LinkSample(loss=0.2), LinkSample(silent_ms=10_000)


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        # (ms, sample, rating after it)
        ("steady", [(0, CLEAN, E), (1000, CLEAN, E), (2000, LinkSample(), E)]),
        ("one bad second does not flap", [(0, CLEAN, E), (1000, BAD, E), (2000, CLEAN, E), (3000, BAD, E)]),
        ("down after two worse samples", [(0, BAD, E), (1000, BAD, P)]),
        ("down to the best of the run", [(0, LOSSY, E), (1000, BAD, G)]),
        ("an empty window keeps the run", [(0, BAD, E), (1000, LinkSample(), E), (2000, BAD, P)]),
        ("up only after the hold",
         [(0, BAD, E), (1000, BAD, P), (2000, CLEAN, P), (6000, CLEAN, P), (7000, CLEAN, E)]),
        ("up to the worst of the hold",
         [(0, BAD, E), (1000, BAD, P), (2000, CLEAN, P), (4000, LOSSY, P), (7000, CLEAN, G)]),
        ("a worse sample restarts the hold",
         [(0, BAD, E), (1000, BAD, P), (2000, CLEAN, P), (5000, BAD, P), (6000, CLEAN, P), (10_000, CLEAN, P),
          (11_000, CLEAN, E)]),
        ("lost at once, back at once", [(0, CLEAN, E), (1000, SILENT, L), (2000, SILENT, L), (3000, CLEAN, E)]),
        ("back from lost as it is", [(0, SILENT, L), (1000, BAD, P)]),
        ("back from lost as before", [(0, BAD, E), (1000, BAD, P), (2000, SILENT, L), (3000, LinkSample(), P)]),
        ("closed", [(0, CLEAN, E), (500, LinkSample(closed=True), L)]),
    ],
)
def test_hysteresis(name: str, steps: list[tuple[int, LinkSample, Quality]]) -> None:
    scorer = QualityScorer()
    got = [(ms, scorer.update(sample, ms)) for ms, sample, _ in steps]
    assert got == [(ms, want) for ms, _, want in steps], name


def test_a_wrapping_clock_is_not_needed_but_a_late_start_is_fine() -> None:
    scorer = QualityScorer(QualityConfig(up_hold_ms=0, down_samples=1))
    t0 = 2**40  # a monotonic clock far from zero
    assert scorer.update(BAD, t0) is P
    assert scorer.update(CLEAN, t0 + 1) is E
