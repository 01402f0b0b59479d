"""The self-check exercises the real media path; breaking that path makes the node unready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from sfu.node import Node
from sfu.selfcheck import PROBE_PUBLISHER, SelfCheck
from tests.e2e.clients import WhipPublisher, wait_for
from tests.e2e.conftest import token

FAST = {
    "self_check_interval_s": 0.1,
    "self_check_deadline_ms": 300,
    "self_check_failures": 2,
    "self_check_recoveries": 2,
    "max_loop_lag_ms": 250,
}


async def _get(node: Node, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(node.url + path) as resp:
            return resp.status, await resp.json() if resp.content_type.endswith("json") else await resp.text()


async def _whip_status(node: Node, room: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    pub = WhipPublisher(node.url, room, token(room, "carol"))
    await pub.pc.setLocalDescription(await pub.pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(
            node.url + f"/whip/{room}",
            data=pub.pc.localDescription.sdp,
            headers={"Authorization": f"Bearer {token(room, 'carol')}", "Content-Type": "application/sdp"},
        ) as resp:
            body = await resp.json() if resp.content_type.endswith("json") else {}
            headers = dict(resp.headers)
            status = resp.status
    await pub.close()
    return status, body, headers


async def test_healthy_node_passes_and_reports(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(**FAST)
    try:
        assert node.selfcheck is not None and node.selfcheck.last is not None
        assert node.selfcheck.last.ok, node.selfcheck.last.reason
        runs = node.selfcheck.runs
        await wait_for(lambda: node.selfcheck is not None and node.selfcheck.runs >= runs + 3, 5, "more checks")
        assert node.self_check_ok
        status, body = await _get(node, "/readyz")
        assert status == 200 and body["ready"] is True
        status, text = await _get(node, "/metrics")
        assert "levelchat_sfu_self_check_ok 1.0" in text
        assert "levelchat_sfu_self_check_duration_seconds" in text
        assert "levelchat_sfu_event_loop_lag_seconds" in text
        # probes are not rooms or participants of anyone's
        assert node.rooms.room_count == 0 and node.rooms.participant_count == 0
    finally:
        await node.stop()


async def test_closed_media_socket_fails_then_recovers(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(**FAST)
    try:
        live = WhipPublisher(node.url, "existing", token("existing", "alice"))
        await live.connect()
        node.port.close()
        await wait_for(lambda: not node.self_check_ok, 5, "node unhealthy")
        status, body = await _get(node, "/readyz")
        assert status == 503 and body["reason"] in ("media port closed", "self-check failing: media socket is closed")
        status, problem, headers = await _whip_status(node, "brand-new")
        assert status == 503 and problem["code"] == "room_check_failed"
        assert headers["Retry-After"] == "30"
        _, text = await _get(node, "/metrics")
        assert "levelchat_sfu_self_check_ok 0.0" in text
        # an existing room still takes joins
        status, _, _ = await _whip_status(node, "existing")
        assert status == 201
        node.port.open(asyncio.get_running_loop())
        await wait_for(lambda: node.self_check_ok, 5, "node recovered")
        status, body = await _get(node, "/readyz")
        assert status == 200
        assert (await _whip_status(node, "brand-new-2"))[0] == 201
        await live.close()
    finally:
        await node.stop()


async def test_corrupted_srtp_path_is_detected(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(**{**FAST, "self_check_failures": 1, "self_check_interval_s": 0.2})
    try:
        check = node.selfcheck
        assert check is not None
        probe = next(p for p in node.router.participants.values() if p.identity == PROBE_PUBLISHER)
        assert probe.publisher is not None and probe.publisher.rx is not None
        failures = check.consecutive_failures
        probe.publisher.rx.close()  # the node can no longer unprotect the probe's SRTP
        await wait_for(lambda: check.last is not None and not check.last.ok, 5, "a failed check")
        assert check.last is not None and "did not return" in check.last.reason
        assert check.consecutive_failures > failures
        assert node.counters.drop_counts()["srtp_other"] >= 1
        # the checker rebuilds its probe sessions: the node heals by itself
        await wait_for(lambda: node.self_check_ok and check.consecutive_passes >= 2, 5, "recovery")
    finally:
        await node.stop()


async def test_stalled_event_loop_fails_the_check(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(**{**FAST, "self_check_failures": 1})
    try:
        check = node.selfcheck
        assert check is not None
        await asyncio.sleep(0.3)
        time.sleep(0.6)  # block the loop, as a runaway handler would
        await wait_for(lambda: check.last is not None and "lagged" in check.last.reason, 5, "lag detected")
        assert not node.self_check_ok
        await wait_for(lambda: node.self_check_ok, 5, "recovery")
    finally:
        await node.stop()


async def test_a_node_whose_first_check_fails_starts_unhealthy(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(**FAST)
    check = None
    try:
        node.port.close()  # the media path is broken before the checker's first run
        check = SelfCheck(
            node, interval_s=60, deadline_ms=300, failures_to_fail=3, passes_to_recover=2, max_loop_lag_ms=250
        )
        await check.start()
        assert check.runs == 1 and check.last is not None and not check.last.ok
        assert not node.self_check_ok  # at once, not after three failures
        status, body = await _get(node, "/readyz")
        assert status == 503
        status, problem, _ = await _whip_status(node, "first-room")
        assert (status, problem["code"]) == (503, "room_check_failed")
    finally:
        if check is not None:
            await check.stop()
        await node.stop()
