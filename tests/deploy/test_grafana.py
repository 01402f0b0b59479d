"""deploy/grafana/levelchat-dashboard.json: it parses, covers what operators watch, and every
metric (and label) its queries use exists in the /metrics output of a real node and a real control
plane, started here in-process; the node registers with the control plane and gets a room placed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from control.app import create_app
from control.config import load_config
from levelchat.tokens import ApiKey, mint
from sfu.config import load
from sfu.node import Node
from tests.deploy.support import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "levelchat-dashboard.json"
#: what the dashboard must show (issue 5): one metric per thing an operator watches
REQUIRED = {
    "levelchat_sfu_rooms", "levelchat_sfu_participants", "levelchat_sfu_packets_received_total",
    "levelchat_sfu_packets_forwarded_total", "levelchat_sfu_packets_dropped_total",
    "levelchat_sfu_srtp_errors_total", "levelchat_sfu_nack_total", "levelchat_sfu_pli_total",
    "levelchat_sfu_forward_latency_seconds_bucket", "levelchat_sfu_event_loop_lag_seconds",
    "levelchat_sfu_self_check_ok", "levelchat_sfu_self_check_duration_seconds",
    "levelchat_sfu_control_plane_heartbeat_failures_total", "levelchat_control_nodes",
    "levelchat_control_rooms_placed_total", "levelchat_http_requests_total",
}
#: labels Prometheus adds at scrape time
TARGET_LABELS = {"job", "instance"}
METRIC = re.compile(r"\b(levelchat_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
KEY = ApiKey("devkey", "secret")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def samples(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from Prometheus text."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def token(*scopes: str) -> str:
    return mint(KEY, project="levelchat", now_s=time.time(), ttl_s=300, identity="deploy-test", scopes=scopes)


async def get_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        assert resp.status == 200, url
        return await resp.text()


@pytest.fixture
async def scraped() -> AsyncIterator[dict[str, set[str]]]:
    control_cfg = load_config(flags={"dev": True, "port": 0, "lease_seconds": 3.0,
                                     "heartbeat_interval_seconds": 0.3}, environ={})
    runner = web.AppRunner(create_app(control_cfg))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    node = Node(load(dev=True, flags={"http_port": 0, "media_port": 0, "node_id": "dash-node",
                                      "control_url": control_url}, environ={}))
    await node.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token('node:admin', 'room:create')}"}) as http:
            deadline = time.monotonic() + 10
            while True:
                async with http.get(control_url + "/v1/nodes") as resp:
                    nodes = (await resp.json())["nodes"]
                if [n["state"] for n in nodes] == ["live"]:
                    break
                assert time.monotonic() < deadline, nodes
                await asyncio.sleep(0.1)
            async with http.post(control_url + "/v1/rooms", json={"room": "dash-room"}) as resp:
                assert resp.status == 201, await resp.text()
            await get_text(http, node.url + "/healthz")
            node_text = await get_text(http, node.url + "/metrics")
            control_text = await get_text(http, control_url + "/metrics")
        assert "levelchat_control_rooms_placed_total 1.0" in control_text
        assert 'levelchat_control_nodes{state="live"} 1.0' in control_text
        assert "levelchat_sfu_rooms 1.0" in node_text
        merged = samples(node_text)
        for name, labels in samples(control_text).items():
            merged.setdefault(name, set()).update(labels)
        yield merged
    finally:
        await node.stop()
        await runner.cleanup()


def test_dashboard_parses_and_covers_what_operators_watch() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    used = {m.group(1) for q in queries(dash) for m in METRIC.finditer(q)}
    assert REQUIRED <= used, REQUIRED - used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
    quantiles = [q for q in queries(dash) if q.startswith("histogram_quantile(")]
    assert {q.split(",")[0] for q in quantiles} >= {"histogram_quantile(0.5", "histogram_quantile(0.99"}


def problems(exprs: list[str], scraped: dict[str, set[str]]) -> list[str]:
    """Metric names, selector labels and ``by`` labels the scrape does not have."""
    missing: list[str] = []
    for query in exprs:
        names = set()
        for m in METRIC.finditer(query):
            name, selector = m.group(1), m.group(2) or ""
            names.add(name)
            if name not in scraped:
                missing.append(f"{name} (in {query})")
                continue
            for label in MATCHER.findall(selector):
                if label not in scraped[name] | TARGET_LABELS:
                    missing.append(f"label {label} of {name} (in {query})")
        if len(names) == 1:  # aggregation labels must be the one metric's own
            (name,) = names
            for group in BY.findall(query):
                for label in (lbl.strip() for lbl in group.split(",") if lbl.strip()):
                    if label not in scraped.get(name, set()) | TARGET_LABELS:
                        missing.append(f"by label {label} of {name} (in {query})")
    return missing


async def test_every_metric_and_label_in_the_dashboard_is_exported(scraped: dict[str, set[str]]) -> None:
    missing = problems(queries(dashboard()), scraped)
    assert not missing, "\n".join(missing)


def test_the_check_catches_misspelt_metrics_and_labels() -> None:
    scraped = {"levelchat_sfu_rooms": set(), "levelchat_sfu_packets_dropped_total": {"reason"}}
    table = [
        ('sum by (instance) (levelchat_sfu_room{job="x"})', ["levelchat_sfu_room (in"]),
        ('sum(rate(levelchat_sfu_packets_dropped_total{kind="audio"}[1m]))', ["label kind of"]),
        ("sum by (kind) (rate(levelchat_sfu_packets_dropped_total[1m]))", ["by label kind of"]),
        ("sum by (reason) (rate(levelchat_sfu_packets_dropped_total{job=~\"a\", reason!=\"x\"}[1m]))", []),
    ]
    for query, want in table:
        got = problems([query], scraped)
        assert len(got) == len(want) and all(g.startswith(w) for g, w in zip(got, want, strict=True)), (query, got)
