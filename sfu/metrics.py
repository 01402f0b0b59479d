"""Prometheus export of the node's plain-integer counters (read at scrape time, not on the hot path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from sfu.counters import Direction, DropReason, MediaCounters

PREFIX = "levelchat_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeCollector(Collector):
    def __init__(
        self,
        counters: MediaCounters,
        gauges: Callable[[], dict[str, float]],
        http_counts: dict[tuple[str, str], int],
        counter_values: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self._c = counters
        self._gauges = gauges
        self._http = http_counts
        #: plain totals kept elsewhere (name without ``_total``), exported as counters
        self._counter_values = counter_values

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        c = self._c
        for name, value in self._gauges().items():
            g = GaugeMetricFamily(PREFIX + name, name.replace("_", " "))
            g.add_metric([], value)
            yield g
        for name, value in (self._counter_values() if self._counter_values is not None else {}).items():
            yield CounterMetricFamily(PREFIX + name, name.replace("_", " "), value=value)
        rx = CounterMetricFamily(PREFIX + "sfu_packets_received", "RTP packets received", labels=["kind"])
        rx.add_metric(["audio"], c.rtp_in[0])
        rx.add_metric(["video"], c.rtp_in[1])
        rx.add_metric(["rtcp"], c.rtcp_in)
        yield rx
        fw = CounterMetricFamily(PREFIX + "sfu_packets_forwarded", "RTP packets forwarded", labels=["kind"])
        fw.add_metric(["audio"], c.rtp_out[0])
        fw.add_metric(["video"], c.rtp_out[1])
        fw.add_metric(["rtcp"], c.rtcp_out)
        yield fw
        yield CounterMetricFamily(PREFIX + "sfu_bytes_forwarded", "bytes forwarded", value=c.bytes_out)
        drops = CounterMetricFamily(PREFIX + "sfu_packets_dropped", "datagrams dropped", labels=["reason"])
        for reason in DropReason:
            drops.add_metric([reason.name.lower()], c.drops[reason])
        yield drops
        srtp = CounterMetricFamily(PREFIX + "sfu_srtp_errors", "SRTP failures", labels=["direction"])
        for d in Direction:
            srtp.add_metric([d.name.lower()], c.srtp_errors[d])
        yield srtp
        yield CounterMetricFamily(PREFIX + "sfu_nack", "NACKs received from subscribers", value=c.nack_in)
        yield CounterMetricFamily(PREFIX + "sfu_pli", "PLI/FIR received from subscribers", value=c.pli_in)
        yield CounterMetricFamily(PREFIX + "sfu_keyframe_requests", "keyframe requests sent", value=c.keyframe_requests)
        yield CounterMetricFamily(PREFIX + "sfu_retransmits", "packets resent from the NACK cache", value=c.retransmits)
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(c.LATENCY_BOUNDS, c.latency_buckets, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", c.latency_count))
        h = HistogramMetricFamily(PREFIX + "sfu_forward_latency_seconds", "receive-to-send latency")
        h.add_metric([], buckets, sum_value=c.latency_sum_s)
        yield h
        http = CounterMetricFamily(PREFIX + "http_requests", "HTTP requests", labels=["route", "code"])
        for (route, code), n in sorted(self._http.items()):
            http.add_metric([route, code], n)
        yield http


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    # the standard process collector (from /proc), under the project prefix:
    # levelchat_sfu_process_cpu_seconds_total, levelchat_sfu_process_resident_memory_bytes, ...
    ProcessCollector(namespace=PREFIX + "sfu", registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
