"""The front's /metrics: the workers' samples with a worker label, the front's own counters once."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sfu.counters import MediaCounters
from sfu.metrics import NodeCollector, make_registry, render
from sfu.workers.metrics import FrontCollector, relabel, render_front


def worker_text(forwarded: int, requests: int) -> str:
    counters = MediaCounters()
    counters.rtp_out[1] = forwarded
    collector = NodeCollector(counters, lambda: {"sfu_rooms": 1}, {("/whip/{room}", "201"): requests},
                              lambda: {"sfu_control_plane_heartbeat_failures": 0})
    return render(make_registry(collector)).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_worker_samples_are_labelled_and_front_counters_exported_once() -> None:
    families = relabel([(0, worker_text(10, 5)), (1, worker_text(7, 9))])
    text = render_front(FrontCollector(families, {("/whip/{room}", "201"): 2}, 3, {"up": 2, "restarting": 0}, {0: 0, 1: 1})).decode()
    got = samples(text)
    assert got[("levelchat_sfu_packets_forwarded_total", (("kind", "video"), ("worker", "0")))] == 10
    assert got[("levelchat_sfu_packets_forwarded_total", (("kind", "video"), ("worker", "1")))] == 7
    assert got[("levelchat_sfu_rooms", (("worker", "1"),))] == 1
    assert got[("levelchat_sfu_forward_latency_seconds_count", (("worker", "0"),))] == 0
    # the front counts requests and heartbeats itself: the workers' are not exported
    http = {k: v for k, v in got.items() if k[0] == "levelchat_http_requests_total"}
    assert http == {("levelchat_http_requests_total", (("code", "201"), ("route", "/whip/{room}"))): 2}
    assert got[("levelchat_sfu_control_plane_heartbeat_failures_total", ())] == 3
    assert got[("levelchat_sfu_workers", (("state", "up"),))] == 2
    assert got[("levelchat_sfu_worker_restarts_total", (("worker", "1"),))] == 1
