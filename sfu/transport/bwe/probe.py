"""Probing: when the allocator wants more than the estimate (the next layer's need), send a
short cluster above the estimate and read the cluster's feedback as a capacity measurement.

``ProbeController.want(estimate, target, now)`` returns a ``ProbeCluster`` for the pacer when
a probe is due: the target is above the estimate, no cluster is in flight, and the back-off
has passed.  Clusters run at 2x the estimate, or the target when higher, at most 3x the
estimate (and ``max_bps``), for ``cluster_ms`` and at least ``min_packets`` packets.  The
caller tells it the transport-wide seq of every packet sent for the cluster
(``on_probe_sent``) and passes every feedback (``on_feedback``); once the cluster's packets are
all reported (or ``result_timeout_ms`` passed), the result is min(send rate, receive rate),
and 0.95 x the receive rate when the receiver got less than 90 % of the send rate (the link
is full).  A result above the estimate by ``success_margin`` is returned, for the estimator's
``on_probe_result``.  Unless the cluster got through at its own rate ("success"), the probe
counts as failed for the back-off ("limited": the path is full, its rate still returned;
"failure": too few packets back or no gain; "timeout"): ``min_interval_ms`` after one failure,
then doubling per further failure up to ``max_backoff_ms``; a target higher than the previous
one by ``new_need`` (a new layer, a new track) starts over.  ``outcomes`` counts each outcome
(the ``sfu_probes_total{outcome}`` metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sfu.transport.bwe.feedback import PacketFeedback
from sfu.transport.bwe.pacer import ProbeCluster


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    cluster_ms: float = 15.0
    min_packets: int = 5
    min_interval_ms: float = 1000.0
    max_backoff_ms: float = 8_000.0
    result_timeout_ms: float = 1000.0
    success_margin: float = 1.1
    #: the target must exceed the estimate by this factor for a probe to be worth it
    want_margin: float = 1.05
    max_bps: int = 20_000_000
    max_cluster_packets: int = 256
    new_need: float = 1.2


class ProbeController:
    __slots__ = ("config", "outcomes", "failures", "_next_id", "_cluster", "_estimate_at_start",
                 "_seqs", "_reported", "_started_ms", "_not_before_ms", "_last_target")

    def __init__(self, config: ProbeConfig | None = None) -> None:
        self.config = config or ProbeConfig()
        self.outcomes = {"success": 0, "limited": 0, "failure": 0, "timeout": 0}
        self.failures = 0
        self._next_id = 1
        self._cluster: ProbeCluster | None = None
        self._estimate_at_start = 0
        self._seqs: set[int] = set()
        self._reported: list[PacketFeedback] = []
        self._started_ms = 0.0
        self._not_before_ms = -1e18
        self._last_target = 0

    @property
    def in_flight(self) -> ProbeCluster | None:
        return self._cluster

    def want(self, estimate_bps: int, target_bps: int | None, now_ms: float) -> ProbeCluster | None:
        """The cluster to start now, or None."""
        c = self.config
        if self._cluster is not None:
            if now_ms - self._started_ms < c.result_timeout_ms:
                return None
            self._finish("timeout", now_ms)
        if target_bps is None or target_bps <= estimate_bps * c.want_margin or estimate_bps >= c.max_bps:
            return None
        if target_bps > self._last_target * c.new_need:
            self.failures = 0
            self._not_before_ms = -1e18
        self._last_target = target_bps
        if now_ms < self._not_before_ms:
            return None
        rate = min(max(target_bps, 2 * estimate_bps), 3 * estimate_bps, c.max_bps)
        cluster = ProbeCluster(self._next_id, int(rate), int(rate * c.cluster_ms / 8000), c.min_packets)
        self._next_id += 1
        self._cluster = cluster
        self._estimate_at_start = estimate_bps
        self._seqs.clear()
        self._reported.clear()
        self._started_ms = now_ms
        return cluster

    def on_probe_sent(self, cluster_id: int, seq: int) -> None:
        if self._cluster is not None and cluster_id == self._cluster.id \
                and len(self._seqs) < self.config.max_cluster_packets:
            self._seqs.add(seq)

    def on_feedback(self, packets: Sequence[PacketFeedback], now_ms: float) -> int | None:
        """The probe's result (bps) for the estimator when this feedback completes a successful
        cluster, else None."""
        if self._cluster is None or not self._seqs:
            return None
        for p in packets:
            if p.seq in self._seqs:
                self._seqs.discard(p.seq)
                self._reported.append(p)
        if self._seqs:
            if now_ms - self._started_ms >= self.config.result_timeout_ms:
                self._finish("timeout", now_ms)
            return None
        measured = self._measure()
        if measured is None:
            self._finish("failure", now_ms)
            return None
        result, limited = measured
        if result < self._estimate_at_start * self.config.success_margin:
            self._finish("failure", now_ms)
            return None
        self._finish("limited" if limited else "success", now_ms)
        return int(result)

    def _measure(self) -> tuple[float, bool] | None:
        """(rate that got through, whether the path limited it) or None when unusable."""
        got = [p for p in self._reported if p.recv_ms is not None]
        if len(got) < max(2, int(self.config.min_packets * 0.8)):
            return None
        by_send = sorted(got, key=lambda p: p.send_ms)
        by_recv = sorted(got, key=lambda p: p.recv_ms or 0.0)
        send_span = by_send[-1].send_ms - by_send[0].send_ms
        first_recv, last_recv = by_recv[0].recv_ms, by_recv[-1].recv_ms
        assert first_recv is not None and last_recv is not None
        recv_span = last_recv - first_recv
        total = sum(p.size for p in got)
        if send_span <= 0 or recv_span <= 0:
            return None
        send_bps = (total - by_send[-1].size) * 8000 / send_span
        recv_bps = (total - by_recv[0].size) * 8000 / recv_span
        if recv_bps < 0.9 * send_bps:
            return 0.95 * recv_bps, True
        return min(send_bps, recv_bps), False

    def _finish(self, outcome: str, now_ms: float) -> None:
        self.outcomes[outcome] += 1
        self._cluster = None
        self._seqs.clear()
        self._reported.clear()
        c = self.config
        if outcome == "success":
            self.failures = 0
            self._not_before_ms = now_ms + c.min_interval_ms
            return
        self.failures += 1
        backoff = c.min_interval_ms * (2.0 ** (self.failures - 1))
        self._not_before_ms = now_ms + min(backoff, c.max_backoff_ms)
