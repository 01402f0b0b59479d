"""The participants API through the control plane (forwarded to the room's node) and through a
two-worker node's front (proxied to the room's worker), with real processes and aiortc clients."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Procs, call, wait_nodes_state
from tests.e2e.test_participants_api import grows, stays
from tests.e2e.test_rtc_data import DataClient
from tests.e2e.test_rtc_signaling import RtcClient, receives_from
from tests.e2e.ws_support import env_of, wait_for_ready

pytestmark = pytest.mark.timeout(150)
SUB = ("room:join", "room:subscribe")
NODE_ENV = env_of(rate_limit_ip_per_s=0, rate_limit_key_per_s=0)


def admin(room: str) -> str:
    return token(room, "operator", ("room:admin",))


async def moderate(base: str, room: str, alice: RtcClient, bob: DataClient) -> None:
    """Every route once through ``base``: alice publishes, bob (data channels) receives her."""
    plist = f"{base}/v1/rooms/{room}/participants"
    reply = await call("GET", plist, token=admin(room))
    assert reply.status == 200, reply.body
    views: dict[str, Any] = {p["identity"]: p for p in reply.body["participants"]}
    assert set(views) == {"alice", "bob"}
    audio = next(t["id"] for t in views["alice"]["tracks"] if t["kind"] == "audio")

    # refusals come back as problems: not an admin, unknown participant, unknown track
    reply = await call("GET", plist, token=token(room, "alice"))
    assert (reply.status, reply.body["code"]) == (401, "token/unauthorized")
    reply = await call("DELETE", f"{plist}/nobody", token=admin(room))
    assert (reply.status, reply.body["code"]) == (404, "not_found")
    reply = await call("POST", f"{plist}/alice/tracks/TR_none/mute", {"muted": True}, token=admin(room))
    assert (reply.status, reply.body["code"]) == (404, "not_found")

    # server mute: the publisher told within 1 s, the subscriber's audio stops, video goes on
    reply = await call("POST", f"{plist}/alice/tracks/{audio}/mute", {"muted": True}, token=admin(room))
    assert reply.status == 200 and reply.body["muted"] is True, reply.body
    await wait_for(lambda: alice.named("track_muted"), 1.0, "alice told of the server mute")
    await stays(bob, "alice", "audio")
    await grows(bob, "alice", "video")

    # metadata: the room told
    reply = await call("PATCH", f"{plist}/alice", {"metadata": "presenter"}, token=admin(room))
    assert reply.status == 200 and reply.body["metadata"] == "presenter", reply.body
    await wait_for(lambda: bob.named("participant_updated"), 1.0, "bob told of the update")

    # server data on bob's data channel
    reply = await call("POST", f"{base}/v1/rooms/{room}/data", {"data": "from ops", "destinations": ["bob"]}, token=admin(room))
    assert (reply.status, reply.body) == (202, {"recipients": 1})
    await wait_for(lambda: bob.from_("") == ["from ops"], 5, "bob gets the server's message")

    # remove bob: room_closed within 1 s
    reply = await call("DELETE", f"{plist}/bob", token=admin(room))
    assert reply.status == 204, reply.body
    await wait_for(lambda: bob.named("room_closed") == [{"room": room, "reason": "removed"}], 1.0, "bob removed")
    reply = await call("GET", plist, token=admin(room))
    assert [p["identity"] for p in reply.body["participants"]] == ["alice"]


async def pair(url: str, room: str) -> tuple[RtcClient, DataClient]:
    where: Any = SimpleNamespace(url=url)
    alice = RtcClient(where, room, "alice")
    bob = DataClient(where, room, "bob")
    await alice.join()
    await alice.publish()
    await bob.join()
    await bob.open_data()
    await wait_for(receives_from(bob, ["alice"], 10), 30, f"bob receives alice in {room}")
    return alice, bob


async def test_through_the_control_plane(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    clients: list[RtcClient] = []
    try:
        control = procs.control()
        await control.wait_healthy()
        node = procs.node("sfu-mod", control.url, env=NODE_ENV)
        await node.wait_healthy()
        await wait_nodes_state(control.url, ["sfu-mod"], "live", timeout_s=15)
        room = "cp-mod"
        reply = await call("POST", control.url + "/v1/rooms", {"room": room})
        assert reply.status == 201, reply.body
        # a room the control plane does not know
        reply = await call("GET", control.url + "/v1/rooms/nowhere/participants", token=admin("nowhere"))
        assert (reply.status, reply.body["code"]) == (404, "room_not_found")
        alice, bob = await pair(node.url, room)
        clients += [alice, bob]
        await moderate(control.url, room, alice, bob)
        # a node that does not answer: service_unavailable with Retry-After, not a hang
        node.kill9()
        reply = await call("GET", f"{control.url}/v1/rooms/{room}/participants", token=admin(room), timeout_s=30)
        # (within the node's lease the room is still placed there; after it, placing it again finds
        # no live node: service_unavailable too)
        assert (reply.status, reply.body["code"]) == (503, "service_unavailable"), reply.body
        assert int(reply.headers["Retry-After"]) >= 1
    finally:
        for c in clients:
            await c.close()
        procs.stop_all()


async def test_through_a_two_worker_front(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    clients: list[RtcClient] = []
    try:
        node = procs.node("front-mod", None, env=NODE_ENV, extra_args=("--workers", "2"))
        await node.wait_healthy()
        await wait_for_ready(node.url)
        rooms = ["front-mod-1", "front-mod-2"]
        for room in rooms:
            reply = await call("POST", node.url + "/v1/rooms", {"room": room})
            assert reply.status == 201, reply.body
        pairs = []
        for room in rooms:
            alice, bob = await pair(node.url, room)
            clients += [alice, bob]
            pairs.append((room, alice, bob))
        # the two rooms live on different workers (placement by load): each is reached through the front
        rooms_per_worker: list[int] = []

        async def spread() -> bool:
            health = await call("GET", node.url + "/healthz")
            rooms_per_worker[:] = [w["rooms"] for w in health.body["workers"]]
            return rooms_per_worker == [1, 1]

        for _ in range(100):
            if await spread():
                break
            await asyncio.sleep(0.1)
        assert rooms_per_worker == [1, 1]
        for room, alice, bob in pairs:
            await moderate(node.url, room, alice, bob)
    finally:
        for c in clients:
            await c.close()
        procs.stop_all()
