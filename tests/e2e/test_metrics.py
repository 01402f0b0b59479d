"""/metrics during a live session: the counters move as packets flow; no ids in labels."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token


async def _scrape(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(node.url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_counters_move_during_a_live_session(node: Node) -> None:
    room = "metrics-room-1"
    pub = WhipPublisher(node.url, room, token(room, "alice-identity"))
    sub = WhepSubscriber(node.url, room, token(room, "bob-identity"))
    try:
        await pub.connect()
        await sub.connect()
        await wait_for(lambda: sub.frames["video"] >= 5, 10, "frames")
        first = await _scrape(node)
        await asyncio.sleep(1.5)
        second = await _scrape(node)
        for kind in ("audio", "video"):
            key = ("levelchat_sfu_packets_forwarded_total", (("kind", kind),))
            assert second[key] > first[key] > 0
            key = ("levelchat_sfu_packets_received_total", (("kind", kind),))
            assert second[key] > first[key] > 0
        assert second[("levelchat_sfu_bytes_forwarded_total", ())] > first[("levelchat_sfu_bytes_forwarded_total", ())]
        assert second[("levelchat_sfu_participants", ())] == 2
        assert second[("levelchat_sfu_rooms", ())] == 1
        assert second[("levelchat_sfu_tracks", ())] == 2
        assert second[("levelchat_sfu_forward_latency_seconds_count", ())] > 0
        assert second[("levelchat_sfu_self_check_ok", ())] == 1
        assert second[("levelchat_http_requests_total", (("code", "201"), ("route", "/whip/{room}")))] == 1
        everything = " ".join(f"{name} {labels}" for name, labels in second)
        for secret in (room, "alice-identity", "bob-identity"):
            assert secret not in everything
    finally:
        await sub.close()
        await pub.close()
