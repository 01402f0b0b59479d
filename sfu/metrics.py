"""Prometheus export of the node's plain-integer counters (read at scrape time, not on the hot path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from sfu.counters import (
    CongestionCounters,
    Direction,
    DropReason,
    MediaCounters,
    PacerDrop,
    RecoveredVia,
    ResumeOutcome,
    SignalingCounters,
    SwitchDirection,
    SwitchReason,
    TwccDrop,
    WsClose,
    WsDrop,
)
from sfu.loopstats import GcPauses, Histogram, LoopLagProbe
from sfu.packet.nack import GiveUp, NackAttempt
from sfu.routing.data import DataCounters, DataDrop, DataKind
from sfu.transport.sctp.association import SctpDrop, SctpStats

PREFIX = "levelchat_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeCollector(Collector):
    def __init__(
        self,
        counters: MediaCounters,
        gauges: Callable[[], dict[str, float]],
        http_counts: dict[tuple[str, str], int],
        counter_values: Callable[[], dict[str, float]] | None = None,
        transports: Callable[[], dict[str, int]] | None = None,
        qualities: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self._c = counters
        #: sessions (transports with a selected address) by transport: udp, tcp
        self._transports = transports
        #: participants by connection quality: excellent, good, poor, lost
        self._qualities = qualities
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
        if self._transports is not None:
            g = GaugeMetricFamily(
                PREFIX + "sfu_sessions_by_transport", "transports with a selected address, by transport", labels=["transport"]
            )
            for kind, n in self._transports().items():
                g.add_metric([kind], n)
            yield g
        if self._qualities is not None:
            g = GaugeMetricFamily(
                PREFIX + "sfu_participants_by_quality", "participants by connection quality", labels=["quality"]
            )
            for quality, n in self._qualities().items():
                g.add_metric([quality], n)
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
        yield _by_member("sfu_packets_dropped", "datagrams dropped", "reason", DropReason, c.drops)
        yield CounterMetricFamily(
            PREFIX + "sfu_stun_keepalives", "STUN Binding indications from sessions (RFC 8445 keepalives)", value=c.stun_keepalives
        )
        yield _by_member("sfu_srtp_errors", "SRTP failures", "direction", Direction, c.srtp_errors)
        yield CounterMetricFamily(PREFIX + "sfu_nack", "NACKs received from subscribers", value=c.nack_in)
        yield CounterMetricFamily(PREFIX + "sfu_pli", "PLI/FIR received from subscribers", value=c.pli_in)
        yield CounterMetricFamily(PREFIX + "sfu_keyframe_requests", "keyframe requests sent", value=c.keyframe_requests)
        yield CounterMetricFamily(PREFIX + "sfu_retransmits", "packets resent from the NACK cache", value=c.retransmits)
        yield from _upstream_recovery(c)
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(c.LATENCY_BOUNDS, c.latency_buckets, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", c.latency_count))
        h = HistogramMetricFamily(PREFIX + "sfu_forward_latency_seconds", "receive-to-send latency")
        h.add_metric([], buckets, sum_value=c.latency_sum_s)
        yield h
        yield from _congestion(c.cc)
        http = CounterMetricFamily(PREFIX + "http_requests", "HTTP requests", labels=["route", "code"])
        for (route, code), n in sorted(self._http.items()):
            http.add_metric([route, code], n)
        yield http


def _congestion(cc: CongestionCounters) -> Iterator[object]:
    """Congestion control on the subscriber leg (contract: "Adaptive media")."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(cc.ESTIMATE_BOUNDS, cc.estimate_buckets, strict=False):
        cumulative += count
        buckets.append((str(float(bound)), cumulative))
    buckets.append(("+Inf", cc.estimate_count))
    h = HistogramMetricFamily(PREFIX + "sfu_bwe_estimate_bps", "subscribers' bandwidth estimates, per allocation")
    h.add_metric([], buckets, sum_value=cc.estimate_sum)
    yield h
    switches = CounterMetricFamily(
        PREFIX + "sfu_layer_switches", "layer changes the allocator made", labels=["direction", "reason"]
    )
    for direction in SwitchDirection:
        for reason in SwitchReason:
            switches.add_metric([direction.name.lower(), reason.name.lower()], cc.switches[direction][reason])
    yield switches
    buckets = []
    cumulative = 0
    for bound_ms, count in zip(cc.PACER_DELAY_BOUNDS_MS, cc.pacer_delay_buckets, strict=False):
        cumulative += count
        buckets.append((str(bound_ms / 1000), cumulative))
    buckets.append(("+Inf", cc.pacer_delay_count))
    h = HistogramMetricFamily(PREFIX + "sfu_pacer_delay_seconds", "how long paced packets waited in a subscriber's pacer")
    h.add_metric([], buckets, sum_value=cc.pacer_delay_sum / 1000)
    yield h
    dropped = CounterMetricFamily(
        PREFIX + "sfu_pacer_dropped", "packets a subscriber's pacer dropped from its queue", labels=["reason"]
    )
    for drop in PacerDrop:
        dropped.add_metric([drop.name.lower()], cc.pacer_drops[drop])
    yield dropped
    probes = CounterMetricFamily(PREFIX + "sfu_probes", "bandwidth probe clusters by outcome", labels=["outcome"])
    for outcome, n in cc.probes.items():
        probes.add_metric([outcome], n)
    yield probes
    yield CounterMetricFamily(
        PREFIX + "sfu_transport_cc_feedback", "subscribers' transport-cc messages taken", value=cc.feedback_in
    )
    yield CounterMetricFamily(
        PREFIX + "sfu_transport_cc_feedback_skipped",
        "subscribers' transport-cc messages over the per-second budget",
        value=cc.feedback_limited,
    )


def _upstream_recovery(c: MediaCounters) -> Iterator[object]:
    """Loss recovery on the publisher leg: NACKs sent upstream, holes recovered or given up."""
    yield CounterMetricFamily(PREFIX + "sfu_upstream_nack", "NACKs sent to publishers", value=c.nack_out)
    yield _by_member(
        "sfu_upstream_nacked_packets", "sequence numbers NACKed to publishers", "attempt", NackAttempt, c.nack_out_seqs
    )
    yield _by_member(
        "sfu_upstream_recovered_packets", "lost publisher packets that arrived after all", "via", RecoveredVia, c.recovered
    )
    yield _by_member(
        "sfu_upstream_holes_given_up", "lost publisher packets no longer asked for", "reason", GiveUp, c.holes_given_up
    )
    yield CounterMetricFamily(
        PREFIX + "sfu_twcc_feedback", "transport-cc feedback messages sent to publishers", value=c.twcc_feedback_out
    )
    yield _by_member(
        "sfu_twcc_seqs_dropped",
        "publisher transport-wide sequence numbers the feedback does not report",
        "reason",
        TwccDrop,
        c.twcc_dropped,
    )


def _by_member(name: str, doc: str, label: str, members: type[IntEnum], counts: Sequence[int]) -> CounterMetricFamily:
    """A counter family with one sample per member of ``members`` (labelled with its lower-case
    name), read from ``counts`` indexed by member."""
    family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    for member in members:
        family.add_metric([member.name.lower()], counts[member])
    return family


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    # the standard process collector (from /proc), under the project prefix:
    # levelchat_sfu_process_cpu_seconds_total, levelchat_sfu_process_resident_memory_bytes, ...
    ProcessCollector(namespace=PREFIX + "sfu", registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class DataCollector(Collector):
    """Data channel counters: relayed messages, drops by reason, SCTP input refused by reason."""

    def __init__(self, counters: DataCounters, sctp: SctpStats, gauges: Callable[[], dict[str, float]]) -> None:
        self._c = counters
        self._sctp = sctp
        self._gauges = gauges

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        c, s = self._c, self._sctp
        for name, value in self._gauges().items():
            g = GaugeMetricFamily(PREFIX + name, name.replace("_", " "))
            g.add_metric([], value)
            yield g
        yield _by_member("sfu_data_messages_received", "data messages received", "kind", DataKind, c.received)
        yield _by_member("sfu_data_messages_relayed", "data messages delivered to a participant", "kind", DataKind, c.relayed)
        yield CounterMetricFamily(PREFIX + "sfu_data_bytes_relayed", "data payload bytes relayed", value=c.bytes_relayed)
        yield _by_member("sfu_data_messages_dropped", "data messages not relayed", "reason", DataDrop, c.drops)
        yield _by_member("sfu_sctp_dropped", "SCTP input refused", "reason", SctpDrop, s.drops)
        yield CounterMetricFamily(PREFIX + "sfu_sctp_packets_received", "SCTP packets received", value=s.packets_in)
        yield CounterMetricFamily(PREFIX + "sfu_sctp_packets_sent", "SCTP packets sent", value=s.packets_out)
        yield CounterMetricFamily(PREFIX + "sfu_sctp_retransmissions", "SCTP chunks retransmitted", value=s.retransmissions)
        yield CounterMetricFamily(
            PREFIX + "sfu_sctp_messages_abandoned", "partially reliable messages given up", value=s.abandoned
        )


class SignalingCollector(Collector):
    """Signaling WebSocket counters: frames received and dropped, sockets the node closed, open sockets."""

    def __init__(self, counters: SignalingCounters) -> None:
        self._c = counters

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        c = self._c
        g = GaugeMetricFamily(PREFIX + "sfu_signaling_sockets", "signaling WebSockets open")
        g.add_metric([], c.sockets)
        yield g
        yield CounterMetricFamily(PREFIX + "sfu_signaling_frames_received", "signaling frames received", value=c.frames_in)
        yield _by_member("sfu_signaling_frames_dropped", "signaling frames not handled", "reason", WsDrop, c.dropped)
        yield _by_member("sfu_signaling_sockets_closed", "signaling WebSockets the node closed", "reason", WsClose, c.closed)
        yield _by_member(
            "sfu_signaling_resumes", "signaling sessions kept for a resume, and what became of them", "outcome",
            ResumeOutcome, c.resumes,
        )
        d = GaugeMetricFamily(PREFIX + "sfu_signaling_detached", "signaling sessions waiting for a resume")
        d.add_metric([], c.detached)
        yield d


class LoopCollector(Collector):
    """The forwarding loop's stalls (``sfu_loop_lag_seconds``: how late a 5 ms timer ran) and the
    garbage collector's pauses by generation (``sfu_gc_pause_seconds``), both histograms."""

    def __init__(self, probe: LoopLagProbe, gc_pauses: GcPauses) -> None:
        self._probe = probe
        self._gc = gc_pauses

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        lag = HistogramMetricFamily(PREFIX + "sfu_loop_lag_seconds", "how late the event loop ran a 5 ms timer")
        _add(lag, [], self._probe.lag)
        yield lag
        pauses = HistogramMetricFamily(
            PREFIX + "sfu_gc_pause_seconds", "garbage collector pauses", labels=["generation"]
        )
        for generation, h in enumerate(self._gc.pauses):
            _add(pauses, [str(generation)], h)
        yield pauses


def _add(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    family.add_metric(labels, h.cumulative(), sum_value=h.sum_s)
