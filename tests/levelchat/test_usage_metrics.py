"""Usage on ``/metrics`` (``levelchat.usage.metrics``): the meter's counted time (injected clock)
never goes down whatever the takes do, and the collector renders the contract's families."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from levelchat.usage.meter import JoinKind, Usage, UsageMeter
from levelchat.usage.metrics import UsageCollector, UsageFigures

T0 = 1_796_400_000_000
JAN = 1_798_761_600_000  # 2027-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (op, key, at ms after T0): counted participant ms after the steps, read at T0 + 10 s
        ([("join", "a", 0)], 10_000),
        ([("join", "a", 0), ("leave", "a", 4_000)], 4_000),
        ([("join", "a", 0), ("take", "", 3_000), ("take", "", 5_000), ("leave", "a", 6_000)], 6_000),
        ([("join", "a", 0), ("join", "b", 2_000), ("take", "", 5_000), ("leave", "b", 7_000)], 15_000),
        ([("join", "a", 0), ("join", "a", 5_000)], 10_000),  # a second join of the same sid
        ([("join", "a", 0), ("leave", "a", 1_000), ("leave", "a", 2_000)], 1_000),  # only once
        ([("leave", "x", 1_000)], 0),  # never joined
    ],
)
def test_the_meter_counts_each_participant_millisecond_once(steps: list[tuple[str, str, int]], expected: int) -> None:
    m = UsageMeter()
    for op, key, at in steps:
        if op == "join":
            m.join(key, T0 + at)
        elif op == "leave":
            m.leave(key, T0 + at)
        else:
            m.take(T0 + at)
    assert m.counted(T0 + 10_000) == (expected, 0)


def test_counted_time_only_grows_across_takes_a_failed_write_and_a_period_end() -> None:
    m = UsageMeter()
    m.join("a", JAN - 30_000)
    seen = [m.counted(JAN - 10_000)[0]]
    taken, _ = m.take(JAN + 10_000)  # split across the period end
    seen.append(m.counted(JAN + 10_000)[0])
    m.closed.update(taken)  # a book write that failed puts the take back: counted once still
    seen.append(m.counted(JAN + 20_000)[0])
    m.take(JAN + 20_000)
    seen.append(m.counted(JAN + 20_000)[0])
    m.add_recording(JAN, JAN + 90_000)
    assert seen == [20_000, 40_000, 50_000, 50_000]
    assert m.counted(JAN + 20_000) == (50_000, 90_000)


def _families(collector: UsageCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry()
    registry.register(collector)
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if not s.name.endswith("_created"):
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_the_collector_renders_counters_refusals_by_join_and_the_period() -> None:
    figures = UsageFigures(
        participant_ms_total=125_500,
        recording_ms_total=60_000,
        refusals={JoinKind.WHIP: 2, JoinKind.RTC: 1},
        period=Usage(JAN, 90_000, 30_000, 1.5),
    )
    got = _families(UsageCollector("acme", lambda: figures, (JoinKind.WHIP, JoinKind.WHEP, JoinKind.RTC)))
    p = (("project", "acme"),)
    assert got == {
        "levelchat_usage_participant_seconds_total": {p: 125.5},
        "levelchat_usage_recording_seconds_total": {p: 60.0},
        "levelchat_usage_quota_refusals_total": {
            (("join", "rtc"), *p): 1.0, (("join", "whep"), *p): 0.0, (("join", "whip"), *p): 2.0,
        },
        "levelchat_usage_period_participant_seconds": {p: 90.0},
        "levelchat_usage_period_recording_seconds": {p: 30.0},
        "levelchat_usage_quota_participant_seconds": {p: 90.0},
    }


def test_before_the_period_is_known_the_gauges_are_zero() -> None:
    got = _families(UsageCollector("acme", lambda: UsageFigures(0, 0), (JoinKind.TOKEN,)))
    assert got["levelchat_usage_period_participant_seconds"] == {(("project", "acme"),): 0.0}
    assert got["levelchat_usage_quota_refusals_total"] == {(("join", "token"), ("project", "acme")): 0.0}
