"""Prometheus export of usage and quotas, on the node's ``/metrics`` and the control plane's:

* ``levelchat_usage_participant_seconds_total{project}`` and
  ``levelchat_usage_recording_seconds_total{project}``: participant and recording time this
  process counted since it started (a node: its own participants, live ones up to the scrape, and
  its recordings; a control plane: what its nodes reported, each report once);
* ``levelchat_usage_quota_refusals_total{project,join}``: joins refused with ``quota_exceeded``,
  by where (``whip``, ``whep``, ``rtc`` on a node, ``token`` on the control plane);
* ``levelchat_usage_period_participant_seconds{project}``,
  ``levelchat_usage_period_recording_seconds{project}``: the current period's totals as this
  process last knew them (``GET /v1/usage``'s figures, in seconds);
* ``levelchat_usage_quota_participant_seconds{project}``: the quota (0: none).

Seconds, as Prometheus wants base units (``GET /v1/usage`` speaks minutes).  ``project`` is the
configured project id: one value per process, no room or identity ever."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from levelchat.usage.meter import MS_PER_MINUTE, JoinKind, Usage


@dataclass(frozen=True)
class UsageFigures:
    participant_ms_total: int
    recording_ms_total: int
    refusals: Mapping[JoinKind, int] = field(default_factory=dict)
    period: Usage | None = None  # None: not known yet


class UsageCollector(Collector):
    """Reads ``figures()`` at scrape time; ``joins`` are the refusal labels this process has."""

    def __init__(
        self,
        project: str,
        figures: Callable[[], UsageFigures],
        joins: tuple[JoinKind, ...],
        prefix: str = "levelchat_",
    ) -> None:
        self._project = project
        self._figures = figures
        self._joins = joins
        self._prefix = prefix

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        f = self._figures()
        p, project = self._prefix, [self._project]
        for name, ms, what in (
            ("participant", f.participant_ms_total, "participant time counted by this process"),
            ("recording", f.recording_ms_total, "recording time counted by this process"),
        ):
            c = CounterMetricFamily(f"{p}usage_{name}_seconds", what, labels=["project"])
            c.add_metric(project, ms / 1000)
            yield c
        refused = CounterMetricFamily(
            p + "usage_quota_refusals", "joins refused with quota_exceeded", labels=["project", "join"]
        )
        for join in self._joins:
            refused.add_metric([self._project, join.value], f.refusals.get(join, 0))
        yield refused
        period = f.period
        for name, value, what in (
            ("period_participant", period.participant_ms / 1000 if period else 0.0, "participant time of the period"),
            ("period_recording", period.recording_ms / 1000 if period else 0.0, "recording time of the period"),
            (
                "quota_participant",
                period.quota_participant_minutes * MS_PER_MINUTE / 1000 if period else 0.0,
                "the period's participant quota (0: none)",
            ),
        ):
            g = GaugeMetricFamily(f"{p}usage_{name}_seconds", what, labels=["project"])
            g.add_metric(project, value)
            yield g
