"""A node with two forwarding workers (``workers = 2``), as real processes on loopback: rooms land on
different workers, media and signaling go through the front, health, metrics and the room list
cover both, a killed worker is restarted, SIGTERM drains both, the control plane sees one node."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Proc, Procs, admin_token, call, control_nodes, wait_nodes_state
from tests.e2e.test_rtc_signaling import RtcClient, receives_from

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
WORKERS = ("--workers", "2")
CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host", re.MULTILINE)


def candidate_port(sdp: str) -> int:
    match = CANDIDATE.search(sdp)
    assert match, sdp
    return int(match.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def worker_pids(node: Proc) -> list[int]:
    reply = await call("GET", node.url + "/healthz")
    return [w["pid"] for w in reply.body["workers"]]


@dataclass
class Two:
    procs: Procs
    node: Proc


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    procs = Procs(tmp_path)
    try:
        node = procs.node("multi", None, extra_args=WORKERS)
        await node.wait_healthy()
        await wait_for_ready(node)
        yield Two(procs, node)
    finally:
        procs.stop_all()


async def wait_for_ready(node: Proc, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await call("GET", node.url + "/readyz")
        if reply.status == 200 or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.1)





async def test_rooms_spread_over_workers_and_media_flows_through_the_front(two: Two) -> None:
    url = two.node.url
    pubs = [WhipPublisher(url, room, token(room, "alice")) for room in ("spread-one", "spread-two")]
    subs = [WhepSubscriber(url, room, token(room, "bob")) for room in ("spread-one", "spread-two")]
    try:
        for pub in pubs:
            await pub.connect(timeout=20)
        ports = [candidate_port(p.pc.remoteDescription.sdp) for p in pubs]
        assert len(set(ports)) == 2, ports  # each room on its own worker, its own media port
        for sub in subs:
            status, answer = await sub.connect(timeout=20)
            assert status == 201
        # each subscriber is on its room's worker
        assert [candidate_port(s.pc.remoteDescription.sdp) for s in subs] == ports
        for sub in subs:
            await wait_for(lambda sub=sub: sub.frames["video"] >= 5 and sub.frames["audio"] >= 5, 30, "media")

        # the room API lists the rooms of both workers
        reply = await call("GET", url + "/v1/rooms")
        assert reply.status == 200
        assert sorted(r["room"] for r in reply.body["rooms"]) == ["spread-one", "spread-two"]
        reply = await call("GET", url + "/v1/rooms/spread-two")
        assert reply.status == 200 and reply.body["room"] == "spread-two"
        # the operator console is served by the front too; its participants listing reaches the room's worker
        reply = await call("GET", url + "/console")
        assert reply.status == 200 and "console.js" in reply.body
        reply = await call("GET", url + "/v1/rooms/spread-two/participants")
        assert reply.status == 200 and [p["transport"] for p in reply.body["participants"]] == ["udp", "udp"], reply.body

        # readiness and metrics aggregate both workers
        reply = await call("GET", url + "/readyz")
        assert reply.status == 200 and [w["state"] for w in reply.body["workers"]] == ["up", "up"]
        assert sorted(w["media_port"] for w in reply.body["workers"]) == sorted(ports)
        metrics = await scrape(url)
        for worker in ("0", "1"):
            key = ("levelchat_sfu_packets_forwarded_total", (("kind", "video"), ("worker", worker)))
            assert metrics[key] > 0, key
            assert metrics[("levelchat_sfu_participants", (("worker", worker),))] == 2
        assert metrics[("levelchat_http_requests_total", (("code", "201"), ("route", "/whip/{room}")))] == 2
        assert metrics[("levelchat_sfu_workers", (("state", "up"),))] == 2
        everything = " ".join(f"{name} {labels}" for name, labels in metrics)
        assert "spread-one" not in everything and "alice" not in everything

        # a worker's refusal comes back as its catalogue problem, with the front's request id
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/whip/spread-one", data="v=0", headers={"Content-Type": "application/sdp"}) as resp:
                problem = await resp.json(content_type=None)
                assert (resp.status, problem["code"]) == (401, "unauthorized")
                assert resp.headers["X-Request-Id"] == problem["request_id"]
            async with http.patch(url + pubs[1].location, headers={"Authorization": f"Bearer {pubs[1].token}"}) as resp:
                problem = await resp.json(content_type=None)
                assert (resp.status, problem["code"]) == (400, "bad_request")
                assert resp.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
            # an ICE restart reaches the room's worker and its answer (fragment, ETag) comes back
            frag = "a=ice-ufrag:abcd\r\na=ice-pwd:" + "p" * 22 + "\r\n"
            async with http.patch(
                url + pubs[1].location,
                data=frag,
                headers={
                    "Authorization": f"Bearer {pubs[1].token}",
                    "Content-Type": "application/trickle-ice-sdpfrag",
                    "If-Match": "*",
                },
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["Content-Type"] == "application/trickle-ice-sdpfrag"
                assert resp.headers["ETag"].startswith('"') and "a=ice-ufrag:" in await resp.text()

        # the session URL points at the front, which sends the DELETE to the room's worker
        assert pubs[1].location is not None and pubs[1].location.startswith("/whip/spread-two/")
        assert await pubs[1].delete() == 200
        reply = await call("GET", url + "/v1/rooms/spread-two")
        assert reply.status == 200 and [p["identity"] for p in reply.body["participants"]] == ["bob"]
    finally:
        for c in (*subs, *pubs):
            await c.close()


async def test_signaling_websocket_through_the_front(two: Two) -> None:
    node = SimpleNamespace(url=two.node.url)
    room = "ws-front-room"
    alice, bob = RtcClient(node, room, "alice"), RtcClient(node, room, "bob")  # type: ignore[arg-type]
    try:
        await alice.join()
        await alice.publish()
        joined = await bob.join()
        assert [p["identity"] for p in joined["participants"]] == ["alice"]
        await bob.publish()
        await wait_for(receives_from(alice, ["bob"], 10), 40, "alice receives bob")
        await wait_for(receives_from(bob, ["alice"], 10), 40, "bob receives alice")
        # both signaling sessions are on the same worker: the room's
        assert candidate_port(alice.pub.remoteDescription.sdp) == candidate_port(bob.pub.remoteDescription.sdp)
        # the worker's close reaches the client through the front
        assert await bob.call("leave") == {}
        await wait_for(lambda: bob.closed_with == 1000, 5, "bob's socket closed")
        await wait_for(lambda: alice.named("participant_left"), 5, "alice sees bob leave")
    finally:
        await alice.close()
        await bob.close()
    # a refused session: the worker's refusal comes through, close code 4000 + status
    async with aiohttp.ClientSession() as http:
        tok = token(room, "mallory", scopes=("room:subscribe",))
        async with http.ws_connect(two.node.url.replace("http", "ws") + f"/v1/rtc?access_token={tok}") as ws:
            msg = await ws.receive_json()
            assert msg["error"]["data"]["code"] == "token/unauthorized"
            await ws.receive()
            assert ws.close_code == 4401  # token/unauthorized is a 401


async def test_a_killed_worker_is_restarted_and_the_node_says_so(two: Two) -> None:
    url = two.node.url
    pids = await worker_pids(two.node)
    pub = WhipPublisher(url, "doomed-room", token("doomed-room", "alice"))
    other = WhipPublisher(url, "other-room", token("other-room", "alice"))
    try:
        await pub.connect(timeout=20)
        await other.connect(timeout=20)
        doomed_port = candidate_port(pub.pc.remoteDescription.sdp)
        reply = await call("GET", url + "/readyz")
        victim = next(w for w in reply.body["workers"] if w["media_port"] == doomed_port)
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 5
        reasons = []
        while time.monotonic() < deadline:
            reply = await call("GET", url + "/readyz")
            if reply.status == 503:
                reasons.append(reply.body["reason"])
                break
            await asyncio.sleep(0.02)
        assert reasons and reasons[0].startswith(f"worker {victim['index']}:"), reasons
        reply = await wait_for_ready(two.node)
        assert reply.status == 200, reply.body
        back = reply.body["workers"][victim["index"]]
        assert back["restarts"] == 1 and back["pid"] not in pids and back["last_exit"] == -9
        assert alive(pids[1 - victim["index"]])  # the other worker went on
        rooms = (await call("GET", url + "/v1/rooms")).body["rooms"]
        assert [r["room"] for r in rooms] == ["other-room"]  # the dead worker's room is gone
        # the room can be joined again (on a live worker)
        again = WhipPublisher(url, "doomed-room", token("doomed-room", "alice"))
        try:
            await again.connect(timeout=20)
        finally:
            await again.close()
        metrics = await scrape(url)
        assert metrics[("levelchat_sfu_worker_restarts_total", (("worker", str(victim["index"])),))] == 1
    finally:
        await pub.close()
        await other.close()


async def test_sigterm_drains_every_worker_and_exits_0(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        node = procs.node("drainer", None, extra_args=(*WORKERS, "--drain-deadline-s", "1.5"))
        await node.wait_healthy()
        await wait_for_ready(node)
        pids = await worker_pids(node)
        pubs = [WhipPublisher(node.url, room, token(room, "alice")) for room in ("drain-one", "drain-two")]
        try:
            for pub in pubs:
                await pub.connect(timeout=20)
            assert len({candidate_port(p.pc.remoteDescription.sdp) for p in pubs}) == 2
            started = time.monotonic()
            assert node.popen is not None
            node.popen.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            reply = await call("GET", node.url + "/readyz")
            assert (reply.status, reply.body["reason"]) == (503, "draining")
            reply = await call("POST", node.url + "/v1/rooms", {"room": "too-late"})
            assert (reply.status, reply.body["code"]) == (503, "service_unavailable")
            assert await node.wait_exit(20) == 0
            assert time.monotonic() - started > 1.4  # live rooms went on until the deadline
            for pub in pubs:
                await wait_for(lambda pub=pub: pub.pc.connectionState in ("closed", "failed"), 40, "session ended")
        finally:
            for pub in pubs:
                await pub.close()
        await wait_for(lambda: not any(alive(p) for p in pids), 5, "workers gone")
    finally:
        procs.stop_all()


async def test_the_control_plane_sees_one_node_with_the_summed_load(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        control = procs.control(lease_s=3.0, heartbeat_s=0.3)
        await control.wait_healthy()
        node = procs.node("multi-cp", control.url, extra_args=WORKERS)
        await node.wait_healthy()
        await wait_nodes_state(control.url, ["multi-cp"], "live", 20)
        pubs = [WhipPublisher(node.url, room, token(room, "alice")) for room in ("cp-one", "cp-two")]
        sub = WhepSubscriber(node.url, "cp-two", token("cp-two", "bob"))
        try:
            for pub in pubs:
                await pub.connect(timeout=20)
            assert len({candidate_port(p.pc.remoteDescription.sdp) for p in pubs}) == 2
            assert (await sub.connect(timeout=20))[0] == 201

            async def load() -> dict[str, Any]:
                view = (await control_nodes(control.url))["multi-cp"]
                result: dict[str, Any] = view["load"]
                return result

            deadline = time.monotonic() + 10
            seen = await load()
            while (seen["rooms"], seen["participants"], seen["packets_per_s"] > 0, seen["cpu"] > 0) != (
                2, 3, True, True
            ) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                seen = await load()
            assert (seen["rooms"], seen["participants"]) == (2, 3)
            assert seen["packets_per_s"] > 0 and 0 < seen["cpu"] <= 1
            # the front lists each worker's rooms with their participants (issue 11, defect 12)
            deadline = time.monotonic() + 10
            while (view := await call("GET", control.url + "/v1/rooms/cp-two")).body.get("participants") != 2:
                assert time.monotonic() < deadline, view.body
                await asyncio.sleep(0.2)
            assert view.body["node"]["id"] == "multi-cp"
            nodes = await control_nodes(control.url)
            assert list(nodes) == ["multi-cp"]  # one node, not one per worker
            assert nodes["multi-cp"]["url"] == node.url
            # capacity: each worker's limits (the defaults, 200 rooms and 1000 participants), twice
            assert nodes["multi-cp"]["capacity"] == {"max_rooms": 400, "max_participants": 2000}
            # a room placed by the control plane is created through the front
            reply = await call("POST", control.url + "/v1/rooms", {"room": "cp-three"}, token=admin_token())
            assert reply.status == 201, reply.body
            rooms = (await call("GET", node.url + "/v1/rooms")).body["rooms"]
            assert sorted(r["room"] for r in rooms) == ["cp-one", "cp-three", "cp-two"]
            # revoked by an operator: every worker refuses new work, live sessions go on
            assert (await call("DELETE", control.url + "/v1/nodes/multi-cp")).status in (200, 204)
            deadline = time.monotonic() + 10
            refused = None
            while time.monotonic() < deadline:
                refused = await call("POST", node.url + "/v1/rooms", {"room": "cp-after-revoke"})
                if refused.status == 410:
                    break
                await asyncio.sleep(0.2)
            assert refused is not None and (refused.status, refused.body["code"]) == (410, "node_revoked")
            ready = await call("GET", node.url + "/readyz")
            assert (ready.status, ready.body["reason"]) == (503, "revoked")
            assert pubs[0].pc.connectionState == "connected"
        finally:
            await sub.close()
            for pub in pubs:
                await pub.close()
    finally:
        procs.stop_all()
