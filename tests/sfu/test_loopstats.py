"""Loop stalls and collector pauses: the histogram, the probe on a real loop, gc.callbacks, and
their export (parsed back with prometheus_client's parser)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sfu.loopstats import GcPauses, Histogram, LoopLagProbe
from sfu.metrics import LoopCollector


@pytest.mark.parametrize(
    ("observations", "counts", "p99"),
    [
        ([], [0, 0, 0, 0], 0.0),
        ([0.0005], [1, 0, 0, 0], 0.001),  # upper bounds are inclusive
        ([0.0011], [0, 1, 0, 0], 0.002),
        ([0.003], [0, 0, 1, 0], 0.005),
        ([0.7], [0, 0, 0, 1], float("inf")),  # past the last bound: +Inf
        ([0.0001] * 99 + [0.004], [99, 0, 1, 0], 0.001),  # p99 is the 99th of 100
        ([0.0001] * 98 + [0.004] * 2, [98, 0, 2, 0], 0.005),
    ],
)
def test_histogram_buckets_and_quantile(observations: list[float], counts: list[int], p99: float) -> None:
    h = Histogram((0.001, 0.002, 0.005))
    for s in observations:
        h.observe(s)
    assert h.counts == counts
    assert h.count == len(observations)
    assert h.sum_s == pytest.approx(sum(observations))
    assert h.quantile_bound(0.99) == p99
    assert h.cumulative()[-1] == ("+Inf", len(observations))


@pytest.mark.parametrize("bounds", [(), (0.002, 0.001), (0.001, 0.001)])
def test_histogram_rejects_bad_bounds(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histogram(bounds)


def test_probe_sees_a_blocking_callback() -> None:
    """A callback that holds the loop for 60 ms shows as one stall of more than 50 ms."""

    async def main() -> LoopLagProbe:
        loop = asyncio.get_running_loop()
        probe = LoopLagProbe(period_s=0.005)
        probe.start(loop)
        await asyncio.sleep(0.05)
        loop.call_soon(time.sleep, 0.06)
        await asyncio.sleep(0.05)
        probe.stop()
        return probe

    probe = asyncio.run(main())
    assert probe.lag.count >= 2
    stalled = sum(n for bound, n in zip(probe.lag.bounds, probe.lag.counts, strict=False) if bound > 0.05)
    assert stalled + probe.lag.counts[-1] >= 1
    assert probe.lag.sum_s >= 0.05


def test_gc_pauses_timed_by_generation() -> None:
    pauses = GcPauses()
    pauses.install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.uninstall()
    assert gc.callbacks.count(pauses._callback) == 0
    assert pauses.pauses[0].count >= 1
    assert pauses.pauses[2].count >= 1
    before = pauses.pauses[2].count
    gc.collect(2)  # uninstalled: not counted any more
    assert pauses.pauses[2].count == before


def test_exported_names_and_labels() -> None:
    probe, pauses = LoopLagProbe(), GcPauses()
    probe.lag.observe(0.004)
    pauses.pauses[1].observe(0.002)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LoopCollector(probe, pauses))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    lag = families["levelchat_sfu_loop_lag_seconds"]
    assert {s.labels["le"]: s.value for s in lag.samples if s.name.endswith("_bucket")}["0.005"] == 1
    gc_family = families["levelchat_sfu_gc_pause_seconds"]
    counts = {s.labels["generation"]: s.value for s in gc_family.samples if s.name.endswith("_count")}
    assert counts == {"0": 0, "1": 1, "2": 0}
