"""Prometheus metrics of one control-plane instance (its own registry: several may share a process)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from control.model import Node, NodeState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ControlMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.nodes = Gauge(
            "levelchat_control_nodes", "Registered nodes by state", ["state"], registry=self.registry
        )
        self.rooms_placed = Counter(
            "levelchat_control_rooms_placed", "Rooms placed and created on a node", registry=self.registry
        )
        self.http_requests = Counter(
            "levelchat_http_requests",
            "HTTP requests by route template and status code",
            ["route", "code"],
            registry=self.registry,
        )
        self.store_up = Gauge(
            "levelchat_control_store_up",
            "1 while the store answers, 0 during a store outage (control.store.bounded)",
            registry=self.registry,
        )
        self.store_up.set(1)
        for state in NodeState:
            self.nodes.labels(state=state.value).set(0)

    def observe_nodes(self, nodes: Iterable[Node], now_ms: int) -> None:
        counts = {state: 0 for state in NodeState}
        for node in nodes:
            counts[node.state(now_ms)] += 1
        for state, n in counts.items():
            self.nodes.labels(state=state.value).set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
