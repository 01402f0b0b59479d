"""Smoke test of the node target: a real ``python -m sfu --dev`` process, a WHIP source and two WHEP
sinks (ICE + DTLS-SRTP through sfu.client.lite), a few hundred paced packets, every one decrypted
and checked at every sink, in order.  Plus the parsing of the node's /metrics text.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import Any

import pytest

from bench.compare import Workload, compare
from bench.session import Role, SessionSpec
from bench.targets import NodeTarget, parse_node_metrics

SMOKE = Workload(fanout=2, seconds=1.0, in_pps=300.0, verify_every=1, drain_ms=500)

_missing = [m for m in ("sfu.client.lite", "aiohttp", "aioice") if importlib.util.find_spec(m) is None]
needs_node = pytest.mark.skipif(bool(_missing), reason=f"missing for the node target: {_missing}")


@needs_node
@pytest.mark.timeout(90)
def test_node_forwards_every_packet_intact_and_in_order() -> None:
    result = compare([NodeTarget()], SMOKE, mode="paced")
    run = result["targets"]["node"]["paced_run"]
    sent = int(SMOKE.in_pps * SMOKE.seconds)
    assert run["sent"] == sent
    assert run["delivered"] == sent * SMOKE.fanout  # every packet at every sink ...
    assert run["verified"] == run["delivered"]  # ... decrypted with the DTLS key, byte for byte intact
    assert run["corrupt"] == 0 and run["rejected_at_sinks"] == 0
    assert run["gaps_at_sinks"] == 0 and run["late_at_sinks"] == 0  # ... and in order on the node's seq
    assert run["loss"] == 0
    lat = run["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] < 500
    own = run["forwarder_reported"]
    assert own["in_packets"] >= sent and own["out_packets"] >= sent * SMOKE.fanout  # (+ self-check probes)
    assert own["srtp_errors"] == {}
    assert result["node_out_pps_per_cpu"] == run["out_pps_per_cpu"] > 0
    assert result["primary"] == "node" and result["loss"] == run["loss"]
    assert result["ratio"] is None and result["ratio_vs_c"] is None  # no baseline, no C in this run


@needs_node
@pytest.mark.timeout(90)
def test_node_with_twcc_sends_feedback_and_forwards_intact() -> None:
    """``--twcc``: the WHIP source offers transport-cc and numbers every packet; the node sends it
    feedback (about 10 a second) and the sinks still get every packet intact (the extension
    block passes through as it is)."""
    work = replace(SMOKE, twcc=True, seconds=2.0)
    result = compare([NodeTarget()], work, mode="paced")
    run = result["targets"]["node"]["paced_run"]
    sent = int(work.in_pps * work.seconds)
    assert run["delivered"] == run["verified"] == sent * work.fanout and run["corrupt"] == 0
    assert run["gaps_at_sinks"] == 0 and run["loss"] == 0
    assert 10 <= run["forwarder_reported"]["twcc_feedback"] <= 60, run["forwarder_reported"]


_METRICS = """\
# HELP levelchat_sfu_packets_received_total RTP packets received
# TYPE levelchat_sfu_packets_received_total counter
levelchat_sfu_packets_received_total{kind="audio"} 0.0
levelchat_sfu_packets_received_total{kind="video"} 1234.0
levelchat_sfu_packets_received_total{kind="rtcp"} 5.0
levelchat_sfu_packets_received_created{kind="video"} 1.7e9
levelchat_sfu_packets_forwarded_total{kind="video"} 4936.0
levelchat_sfu_packets_forwarded_total{kind="rtcp"} 8.0
levelchat_sfu_packets_dropped_total{reason="srtp_replay"} 3.0
levelchat_sfu_packets_dropped_total{reason="too_short"} 0.0
levelchat_sfu_srtp_errors_total{direction="inbound"} 3.0
levelchat_sfu_keyframe_requests_total 2.0
levelchat_sfu_twcc_feedback_total 7.0
levelchat_sfu_rooms 1.0
levelchat_sfu_forward_latency_seconds_bucket{le="0.0001"} 10.0
levelchat_sfu_forward_latency_seconds_bucket{le="0.00025"} 60.0
levelchat_sfu_forward_latency_seconds_bucket{le="0.0005"} 99.0
levelchat_sfu_forward_latency_seconds_bucket{le="0.001"} 99.0
levelchat_sfu_forward_latency_seconds_bucket{le="+Inf"} 100.0
levelchat_sfu_forward_latency_seconds_count 100.0
"""


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("in_packets", 1234),
        ("out_packets", 4936),
        ("rtcp_in", 5),
        ("rtcp_out", 8),
        ("keyframe_requests", 2),
        ("twcc_feedback", 7),
        ("drops", {"srtp_replay": 3}),
        ("srtp_errors", {"inbound": 3}),
        ("forward_latency", {"samples": 100, "p50_le_ms": 0.25, "p99_le_ms": 0.5, "p999_le_ms": None}),
    ],
)
def test_parse_node_metrics(field: str, expected: object) -> None:
    assert parse_node_metrics(_METRICS)[field] == expected


def test_parse_node_metrics_of_nothing() -> None:
    assert parse_node_metrics("") == {"in_packets": 0, "out_packets": 0, "rtcp_in": 0, "rtcp_out": 0,
                                      "keyframe_requests": 0, "twcc_feedback": 0, "drops": {}, "srtp_errors": {},
                                      "forward_latency": {"samples": 0, "p50_le_ms": None,
                                                          "p99_le_ms": None, "p999_le_ms": None}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": Role.SUBSCRIBE, "url": "http://10.0.0.1:7880/whep/r"}, "loopback"),
        ({"role": Role.PUBLISH, "url": "http://127.0.0.1:7880/whip/r"}, "SSRC"),
        ({"role": Role.PUBLISH, "url": "http://127.0.0.1:7880/whip/r", "video_ssrc": 1 << 32}, "SSRC"),
    ],
)
def test_session_spec_bounds(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SessionSpec(token="t", **kwargs)
