"""Prometheus export of webhook delivery: delivered, retried, dropped (by reason), queue depth."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from levelchat.webhooks.dispatcher import WebhookDispatcher

DROP_REASONS = ("queue_full", "expired", "endpoint_removed")


class WebhookCollector(Collector):
    """Reads the dispatcher ``current()`` returns at scrape time (None: all zero)."""

    def __init__(self, current: Callable[[], WebhookDispatcher | None], prefix: str = "levelchat_") -> None:
        self._current = current
        self._prefix = prefix

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        d = self._current()
        p = self._prefix
        yield CounterMetricFamily(p + "webhooks_delivered", "webhook events delivered (2xx)", value=d.stats.delivered if d else 0)
        yield CounterMetricFamily(p + "webhooks_retried", "webhook attempts that failed and were rescheduled", value=d.stats.retried if d else 0)
        dropped = CounterMetricFamily(p + "webhooks_dropped", "webhook events given up", labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], d.stats.dropped.get(reason, 0) if d else 0)
        yield dropped
        depth = GaugeMetricFamily(p + "webhooks_queue_depth", "webhook deliveries waiting in the queue")
        depth.add_metric([], d.queue_depth() if d else 0)
        yield depth
