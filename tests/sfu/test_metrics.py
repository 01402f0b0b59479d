"""The Prometheus collector: the contract's metric names and labels, parsed back from the text
format with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sfu.counters import Direction, DropReason, MediaCounters, PacerDrop, SwitchDirection, SwitchReason
from sfu.metrics import CONTENT_TYPE, NodeCollector, make_registry, render

ALLOWED_LABELS = {"kind", "reason", "direction", "route", "code", "le", "attempt", "via", "outcome"}  # enum values only


def scrape(counters: MediaCounters, gauges: Mapping[str, float] | None = None, http: dict[tuple[str, str], int] | None = None) -> dict[str, Sample]:
    """Samples by ``name{label=value,...}`` (labels sorted)."""
    collector = NodeCollector(counters, lambda: dict(gauges or {}), http if http is not None else {})
    text = render(make_registry(collector)).decode()
    out: dict[str, Sample] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            assert key not in out, key
            out[key] = s
    return out


def value(samples: dict[str, Sample], key: str) -> float:
    assert key in samples, f"{key} not exported; have {sorted(samples)}"
    return samples[key].value


@pytest.fixture
def counters() -> MediaCounters:
    c = MediaCounters()
    c.rtp_in = [11, 12]
    c.rtcp_in = 13
    c.rtp_out = [21, 22]
    c.rtcp_out = 23
    c.bytes_out = 123_456
    for reason in DropReason:
        c.drops[reason] = 100 + reason.value
    c.srtp_errors[Direction.INBOUND] = 31
    c.srtp_errors[Direction.OUTBOUND] = 32
    c.nack_in = 41
    c.pli_in = 42
    c.keyframe_requests = 43
    c.retransmits = 44
    c.nack_out = 51
    c.nack_out_seqs = [52, 53]
    c.recovered = [54, 55]
    c.holes_given_up = [56, 57, 58, 59, 60]
    c.stun_keepalives = 61
    c.twcc_feedback_out = 71
    c.twcc_dropped = [72, 73, 74, 75]
    return c


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("levelchat_sfu_packets_received_total{kind=audio}", 11),
        ("levelchat_sfu_packets_received_total{kind=video}", 12),
        ("levelchat_sfu_packets_received_total{kind=rtcp}", 13),
        ("levelchat_sfu_packets_forwarded_total{kind=audio}", 21),
        ("levelchat_sfu_packets_forwarded_total{kind=video}", 22),
        ("levelchat_sfu_packets_forwarded_total{kind=rtcp}", 23),
        ("levelchat_sfu_bytes_forwarded_total{}", 123_456),
        ("levelchat_sfu_srtp_errors_total{direction=inbound}", 31),
        ("levelchat_sfu_srtp_errors_total{direction=outbound}", 32),
        ("levelchat_sfu_nack_total{}", 41),
        ("levelchat_sfu_pli_total{}", 42),
        ("levelchat_sfu_keyframe_requests_total{}", 43),
        ("levelchat_sfu_retransmits_total{}", 44),
        ("levelchat_sfu_stun_keepalives_total{}", 61),
        ("levelchat_sfu_upstream_nack_total{}", 51),
        ("levelchat_sfu_upstream_nacked_packets_total{attempt=first}", 52),
        ("levelchat_sfu_upstream_nacked_packets_total{attempt=retry}", 53),
        ("levelchat_sfu_upstream_recovered_packets_total{via=rtx}", 54),
        ("levelchat_sfu_upstream_recovered_packets_total{via=reorder}", 55),
        ("levelchat_sfu_upstream_holes_given_up_total{reason=retries}", 56),
        ("levelchat_sfu_upstream_holes_given_up_total{reason=overflow}", 57),
        ("levelchat_sfu_upstream_holes_given_up_total{reason=too_old}", 58),
        ("levelchat_sfu_upstream_holes_given_up_total{reason=reset}", 59),
        ("levelchat_sfu_upstream_holes_given_up_total{reason=keyframe}", 60),
        ("levelchat_sfu_twcc_feedback_total{}", 71),
        ("levelchat_sfu_twcc_seqs_dropped_total{reason=too_old}", 72),
        ("levelchat_sfu_twcc_seqs_dropped_total{reason=duplicate}", 73),
        ("levelchat_sfu_twcc_seqs_dropped_total{reason=overflowed}", 74),
        ("levelchat_sfu_twcc_seqs_dropped_total{reason=reset}", 75),
    ],
)
def test_counter_names_and_values(counters: MediaCounters, key: str, expected: int) -> None:
    assert value(scrape(counters), key) == expected


def test_every_drop_reason_is_exported_by_its_label(counters: MediaCounters) -> None:
    samples = scrape(counters)
    dropped = {k: s for k, s in samples.items() if k.startswith("levelchat_sfu_packets_dropped_total{")}
    assert len(dropped) == len(DropReason)
    for reason in DropReason:
        assert value(samples, f"levelchat_sfu_packets_dropped_total{{reason={reason.name.lower()}}}") == 100 + reason.value


def test_forward_latency_histogram(counters: MediaCounters) -> None:
    observed = [0.00005, 0.0002, 0.0002, 0.003, 0.02, 0.5]
    for v in observed:
        counters.observe_latency(v)
    samples = scrape(counters)
    name = "levelchat_sfu_forward_latency_seconds"
    buckets = {float(s.labels["le"]): s.value for k, s in samples.items() if k.startswith(name + "_bucket{")}
    assert sorted(buckets)[:-1] == list(MediaCounters.LATENCY_BOUNDS)
    assert buckets[float("inf")] == len(observed)
    for bound, count in buckets.items():
        assert count == len([v for v in observed if v <= bound]), bound
    assert value(samples, name + "_count{}") == len(observed)
    assert value(samples, name + "_sum{}") == pytest.approx(sum(observed))


def test_gauges_and_http_counts(counters: MediaCounters) -> None:
    gauges = {"sfu_rooms": 3, "sfu_participants": 17, "sfu_tracks": 9, "sfu_self_check_ok": 1}
    http = {("/whip/{room}", "201"): 5, ("/whip/{room}", "429"): 2, ("/metrics", "200"): 1}
    samples = scrape(counters, gauges, http)
    for name, v in gauges.items():
        assert value(samples, f"levelchat_{name}{{}}") == v
    assert value(samples, "levelchat_http_requests_total{code=201,route=/whip/{room}}") == 5
    assert value(samples, "levelchat_http_requests_total{code=429,route=/whip/{room}}") == 2
    assert value(samples, "levelchat_http_requests_total{code=200,route=/metrics}") == 1


def test_labels_never_carry_ids(counters: MediaCounters) -> None:
    samples = scrape(counters, {"sfu_rooms": 1}, {("/whep/{room}", "201"): 1})
    used = {label for s in samples.values() for label in s.labels}
    assert used <= ALLOWED_LABELS
    assert all(k.startswith("levelchat_") for k in samples)


def test_values_are_read_at_scrape_time() -> None:
    c = MediaCounters()
    collector = NodeCollector(c, dict, {})
    registry = make_registry(collector)

    def dropped() -> float:
        for family in text_string_to_metric_families(render(registry).decode()):
            for s in family.samples:
                if s.name == "levelchat_sfu_packets_dropped_total" and s.labels["reason"] == "too_short":
                    return s.value
        raise AssertionError("not exported")

    assert dropped() == 0
    c.drops[DropReason.TOO_SHORT] += 5
    assert dropped() == 5


def test_content_type_is_the_text_format() -> None:
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_the_process_collector_is_exported_under_the_prefix() -> None:
    text = render(make_registry(NodeCollector(MediaCounters(), dict, {}))).decode()
    values = {f.name: f.samples[0].value for f in text_string_to_metric_families(text) if f.samples}
    assert values["levelchat_sfu_process_cpu_seconds"] > 0  # the client strips _total from counter families
    assert values["levelchat_sfu_process_resident_memory_bytes"] > 1 << 20


def test_congestion_control_metrics(counters: MediaCounters) -> None:
    """The contract's names: ``sfu_bwe_estimate_bps`` (histogram), ``sfu_layer_switches_total``
    and ``sfu_probes_total``."""
    for bps in (250_000, 700_000, 700_000, 40_000_000):
        counters.cc.observe_estimate(bps)
    counters.cc.switches[SwitchDirection.DOWN][SwitchReason.BANDWIDTH] += 3
    counters.cc.probes["limited"] += 2
    samples = scrape(counters)
    name = "levelchat_sfu_bwe_estimate_bps"
    assert value(samples, name + "_bucket{le=300000.0}") == 1
    assert value(samples, name + "_bucket{le=700000.0}") == 3
    assert value(samples, name + "_bucket{le=+Inf}") == 4
    assert value(samples, name + "_sum{}") == 250_000 + 1_400_000 + 40_000_000
    assert value(samples, "levelchat_sfu_layer_switches_total{direction=down,reason=bandwidth}") == 3
    assert value(samples, "levelchat_sfu_layer_switches_total{direction=up,reason=publisher}") == 0
    assert value(samples, "levelchat_sfu_probes_total{outcome=limited}") == 2


def test_pacer_metrics(counters: MediaCounters) -> None:
    """``sfu_pacer_delay_seconds`` (histogram of the time queued packets waited) and the queue's
    drops by reason."""
    for ms in (0.5, 3.0, 7.0, 7.0, 900.0):
        counters.cc.observe_pacer_delay(ms)
    counters.cc.pacer_drops[PacerDrop.QUEUE_DELAY] += 4
    samples = scrape(counters)
    name = "levelchat_sfu_pacer_delay_seconds"
    assert value(samples, name + "_bucket{le=0.001}") == 1
    assert value(samples, name + "_bucket{le=0.005}") == 2
    assert value(samples, name + "_bucket{le=0.01}") == 4
    assert value(samples, name + "_bucket{le=0.5}") == 4
    assert value(samples, name + "_bucket{le=+Inf}") == 5
    assert value(samples, name + "_count{}") == 5
    assert value(samples, name + "_sum{}") == pytest.approx(0.9175)
    assert value(samples, "levelchat_sfu_pacer_dropped_total{reason=queue_delay}") == 4
    assert value(samples, "levelchat_sfu_pacer_dropped_total{reason=queue_full}") == 0
