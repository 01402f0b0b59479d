"""The front's ``/metrics``: every worker's samples with a ``worker`` label, plus the front's own
(HTTP requests as the front saw them, control-plane heartbeats, worker states and restarts).

Metric names are the node's (``sfu.metrics``), so dashboards built on one node work on a
multi-worker node (``sum`` over the ``worker`` label).  The workers' own ``http_requests_total``
and heartbeat counters are left out: the front counts every request once, and only the front
talks to the control plane.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from sfu.metrics import PREFIX, make_registry, render

#: families (names without ``_total``) that the front exports itself instead of the workers'
FRONT_ONLY = frozenset((
    PREFIX + "http_requests", PREFIX + "sfu_control_plane_heartbeat_failures", PREFIX + "sfu_control_plane_failovers"
))


def relabel(texts: Sequence[tuple[int, str]]) -> list[Metric]:
    """Workers' Prometheus texts (index, text) as families whose samples carry ``worker``."""
    families: dict[str, Metric] = {}
    for index, text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name in FRONT_ONLY:
                continue
            out = families.get(fam.name)
            if out is None:
                out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for s in fam.samples:
                labels = {**s.labels, "worker": str(index)}
                out.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
    return list(families.values())


class FrontCollector(Collector):
    def __init__(
        self,
        workers: Sequence[Metric],
        http_counts: dict[tuple[str, str], int],
        heartbeat_failures: int,
        states: dict[str, int],
        restarts: dict[int, int],
        failovers: int = 0,
    ) -> None:
        self._workers = workers
        self._http = http_counts
        self._failures = heartbeat_failures
        self._states = states
        self._restarts = restarts
        self._failovers = failovers

    def collect(self) -> Iterator[Metric]:
        yield from self._workers
        states = GaugeMetricFamily(PREFIX + "sfu_workers", "forwarding worker processes by state", labels=["state"])
        for state, n in sorted(self._states.items()):
            states.add_metric([state], n)
        yield states
        restarts = CounterMetricFamily(
            PREFIX + "sfu_worker_restarts", "forwarding workers restarted after they died", labels=["worker"]
        )
        for index, n in sorted(self._restarts.items()):
            restarts.add_metric([str(index)], n)
        yield restarts
        yield CounterMetricFamily(
            PREFIX + "sfu_control_plane_heartbeat_failures", "sfu control plane heartbeat failures", value=self._failures
        )
        yield CounterMetricFamily(
            PREFIX + "sfu_control_plane_failovers", "sfu control plane failovers", value=self._failovers
        )
        http = CounterMetricFamily(PREFIX + "http_requests", "HTTP requests", labels=["route", "code"])
        for (route, code), n in sorted(self._http.items()):
            http.add_metric([route, code], n)
        yield http


def render_front(collector: FrontCollector) -> bytes:
    return render(make_registry(collector))
