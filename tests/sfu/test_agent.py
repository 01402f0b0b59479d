"""sfu.agent against a real control plane (control.app.create_app, in-memory SQLite, loopback port)
and a real in-process Node; plus the agent's pure parts, table-driven."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import aioice.ice
import pytest
from aiohttp import web

from control.app import create_app as create_control_app
from control.config import ControlConfig
from levelchat.tokens import ApiKey, TokenVerifier, mint
from sfu.agent import (
    AgentSettings,
    AgentState,
    Backoff,
    ControlPlaneAgent,
    ControlReply,
    LoadMeter,
    NodeTokens,
    ReplyKind,
    classify,
    parse_retry_after,
)
from sfu.config import load
from sfu.node import Node
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for

KEY = ApiKey("devkey", "secret")
PROJECT = "levelchat"
SDP = "v=0\r\n"  # the revocation check comes before the offer is parsed


def token(*scopes: str, room: str | None = None, identity: str = "tester") -> str:
    return mint(KEY, project=PROJECT, now_s=time.time(), ttl_s=600, identity=identity, room=room, scopes=scopes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    await wait_for(predicate, timeout, what)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """aioice skips 127.0.0.1 when gathering: give it only loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


# -- a real control plane, in process ---------------------------------------------------------------


class ControlClock:
    """The control plane's clock: real time plus an offset the test can move forward."""

    def __init__(self) -> None:
        self.offset_s = 0.0
        self.frozen_at: float | None = None

    def __call__(self) -> float:
        return (self.frozen_at if self.frozen_at is not None else time.time()) + self.offset_s


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any


class ControlPlane:
    def __init__(self, *, lease_s: float = 3.0, heartbeat_s: float = 0.2, port: int = 0) -> None:
        self.config = ControlConfig(
            host="127.0.0.1",
            port=port,
            api_keys={KEY.key_id: KEY.secret},
            project=PROJECT,
            store="sqlite://:memory:",
            lease_seconds=lease_s,
            heartbeat_interval_seconds=heartbeat_s,
            node_timeout_seconds=1.0,
            dev=True,
        ).validate()
        self.clock = ControlClock()
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ControlPlane:
        self._runner = web.AppRunner(create_control_app(self.config, clock=self.clock))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def call(self, method: str, path: str, body: Any = None, *, scopes: tuple[str, ...] = ("node:admin",)) -> Reply:
        async with aiohttp.ClientSession() as http:
            async with http.request(
                method, self.url + path, json=body, headers={"Authorization": f"Bearer {token(*scopes)}"}
            ) as resp:
                return Reply(resp.status, resp.headers, await resp.json(content_type=None))

    async def node_view(self, node_id: str) -> dict[str, Any] | None:
        reply = await self.call("GET", "/v1/nodes")
        assert reply.status == 200, reply.body
        return next((n for n in reply.body["nodes"] if n["id"] == node_id), None)

    async def wait_state(self, node_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view = await self.node_view(node_id)
            if view is not None and view["state"] == state:
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"node {node_id} not {state} within {timeout} s: {view}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def control() -> AsyncIterator[ControlPlane]:
    cp = await ControlPlane().start()
    yield cp
    await cp.stop()


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Any]]:
    started: list[Node] = []

    async def start(node_id: str, control_url: str, **flags: Any) -> Node:
        cfg = load(
            dev=True,
            flags={"http_port": 0, "media_port": 0, "node_id": node_id, "control_url": control_url, **flags},
            environ={},
        )
        node = Node(cfg)
        await node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop()


async def http(method: str, url: str, *, tok: str, body: Any = None, sdp: str | None = None) -> Reply:
    headers = {"Authorization": f"Bearer {tok}"}
    kwargs: dict[str, Any] = {"json": body} if sdp is None else {"data": sdp}
    if sdp is not None:
        headers["Content-Type"] = "application/sdp"
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, headers=headers, **kwargs) as resp:
            raw = await resp.read()
            data: Any = raw.decode()
            if "json" in resp.headers.get("Content-Type", ""):
                import json

                data = json.loads(raw)
            return Reply(resp.status, resp.headers, data)


def agent_of(node: Node) -> ControlPlaneAgent:
    assert node.agent is not None
    return node.agent


# -- against the real control plane ----------------------------------------------------------------


async def test_registers_and_heartbeats_carry_the_nodes_load(control: ControlPlane, nodes: Any) -> None:
    node: Node = await nodes("sfu-load", control.url)
    view = await control.wait_state("sfu-load", "live")
    assert view["url"] == node.url
    assert view["media"] == {"host": "127.0.0.1", "port": node.port.port, "hosts": ["127.0.0.1"],
                             "tcp_port": node.port.tcp_port}
    assert view["capacity"] == {"max_participants": node.config.max_participants, "max_rooms": node.config.max_rooms}
    agent = agent_of(node)
    assert agent.state is AgentState.REGISTERED and agent.registrations == 1
    assert agent.heartbeat_interval_s == control.config.heartbeat_interval_seconds
    assert agent.lease_s == control.config.lease_seconds

    for room in ("load-a", "load-b"):
        reply = await http("POST", f"{node.url}/v1/rooms", tok=token("room:create"), body={"room": room})
        assert reply.status == 201, reply.body
    pub = WhipPublisher(node.url, "load-a", token("room:join", "room:publish", room="load-a", identity="alice"))
    sub = WhepSubscriber(node.url, "load-a", token("room:join", "room:subscribe", room="load-a", identity="bob"))
    try:
        await pub.connect()
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= 10, 15, "frames reach the subscriber")
        deadline = time.monotonic() + 5
        while True:
            current = await control.node_view("sfu-load")
            assert current is not None
            load_ = current["load"]
            if load_["rooms"] == 2 and load_["participants"] == 2 and load_["packets_per_s"] > 0:
                break
            assert time.monotonic() < deadline, f"heartbeats never carried the load: {load_}"
            await asyncio.sleep(0.1)
        assert 0.0 < load_["cpu"] <= 1.0, load_
        assert current["healthy"] is True and current["draining"] is False
        # issue 11 defect 12: heartbeats list the rooms with their participants, and the instance
        assert current["instance"] == agent.instance
        while True:
            rooms = {r: await control.call("GET", f"/v1/rooms/{r}", scopes=("room:admin",)) for r in ("load-a", "load-b")}
            if all(v.status == 200 for v in rooms.values()) and rooms["load-a"].body["participants"] == 2:
                break
            assert time.monotonic() < deadline, {r: v.body for r, v in rooms.items()}
            await asyncio.sleep(0.1)
        assert rooms["load-a"].body["node"]["id"] == "sfu-load" and rooms["load-b"].body["participants"] == 0
    finally:
        await sub.close()
        await pub.close()
    assert agent.heartbeats >= 1 and agent.heartbeat_failures == 0


async def test_revocation_refuses_new_work_and_closes_sessions_after_the_drain_deadline(
    control: ControlPlane, nodes: Any
) -> None:
    node: Node = await nodes("sfu-rev", control.url, revoke_drain_s=1.5)
    await control.wait_state("sfu-rev", "live")
    agent = agent_of(node)
    pub = WhipPublisher(node.url, "rev-room", token("room:join", "room:publish", room="rev-room", identity="alice"))
    await pub.connect()
    try:
        reply = await control.call("DELETE", "/v1/nodes/sfu-rev")
        assert reply.status == 200, reply.body
        revoked_at = time.monotonic()
        await until(lambda: node.revoked, 2 * control.config.heartbeat_interval_seconds + 1, "node.revoked")
        assert agent.state is AgentState.REVOKED

        whip = await http("POST", f"{node.url}/whip/new-room", tok=token("room:join", "room:publish", room="new-room"), sdp=SDP)
        assert whip.status == 410 and whip.body["code"] == "node_revoked", whip.body
        rooms = await http("POST", f"{node.url}/v1/rooms", tok=token("room:create"), body={"room": "other-room"})
        assert rooms.status == 410 and rooms.body["code"] == "node_revoked", rooms.body
        ready = await http("GET", f"{node.url}/readyz", tok="-")
        assert ready.status == 503 and ready.body["reason"] == "revoked"
        # one shape with the control plane's: a problem that also says ready and why
        assert ready.headers["Content-Type"].startswith("application/problem+json")
        assert (ready.body["code"], ready.body["ready"]) == ("service_unavailable", False)

        # the live publisher keeps its session until the drain deadline, then it is closed
        assert node.rooms.room_count == 1 and "alice" in node.rooms.rooms["rev-room"].participants
        await until(lambda: node.rooms.room_count == 0, 5, "rooms closed at the drain deadline")
        assert time.monotonic() - revoked_at >= 1.0
        # and heartbeats stopped
        beats = agent.heartbeats
        await asyncio.sleep(3 * control.config.heartbeat_interval_seconds)
        assert agent.heartbeats == beats
    finally:
        await pub.close()


async def test_revoked_node_refuses_whep(control: ControlPlane, nodes: Any) -> None:
    node: Node = await nodes("sfu-rev-whep", control.url)
    await control.wait_state("sfu-rev-whep", "live")
    created = await http("POST", f"{node.url}/v1/rooms", tok=token("room:create"), body={"room": "whep-room"})
    assert created.status == 201
    await control.call("DELETE", "/v1/nodes/sfu-rev-whep")
    await until(lambda: node.revoked, 3, "node.revoked")
    whep = await http("POST", f"{node.url}/whep/whep-room", tok=token("room:join", "room:subscribe", room="whep-room"), sdp=SDP)
    assert whep.status == 410 and whep.body["code"] == "node_revoked", whep.body


async def test_revoked_at_registration(control: ControlPlane, nodes: Any) -> None:
    first: Node = await nodes("sfu-gone", control.url)
    await control.wait_state("sfu-gone", "live")
    await first.stop()
    assert (await control.call("DELETE", "/v1/nodes/sfu-gone")).status == 200
    again: Node = await nodes("sfu-gone", control.url, revoke_drain_s=0)
    await until(lambda: again.revoked, 3, "a revoked id is revoked at registration")
    assert agent_of(again).state is AgentState.REVOKED and agent_of(again).registrations == 0


async def test_control_plane_down_at_start_node_serves_then_registers(nodes: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    node: Node = await nodes("sfu-early", url)
    agent = agent_of(node)
    # the node serves at once: readiness is local, rooms and WHIP work
    ready = await http("GET", f"{node.url}/readyz", tok="-")
    assert ready.status == 200, ready.body
    created = await http("POST", f"{node.url}/v1/rooms", tok=token("room:create"), body={"room": "early-room"})
    assert created.status == 201, created.body
    pub = WhipPublisher(node.url, "early-room", token("room:join", "room:publish", room="early-room", identity="a"))
    await pub.connect()
    try:
        await asyncio.sleep(1.0)
        assert agent.state is AgentState.REGISTERING and agent.registrations == 0
        control = await ControlPlane(port=port).start()
        try:
            view = await control.wait_state("sfu-early", "live", timeout=10)
            assert view["url"] == node.url
            assert agent.registrations == 1
            await until(lambda: agent.heartbeats >= 1, 3, "a heartbeat after registration")
            assert (await control.node_view("sfu-early") or {})["load"]["participants"] == 1
        finally:
            await control.stop()
    finally:
        await pub.close()


async def test_node_exists_twice_signals_exit(nodes: Any) -> None:
    control = await ControlPlane(lease_s=1.0).start()
    control.clock.frozen_at = time.time()  # the other holder's lease never lapses
    try:
        holder = await control.call(
            "POST",
            "/v1/nodes",
            {"id": "sfu-dup", "url": "http://127.0.0.1:9", "media": {"host": "127.0.0.1", "port": 9},
             "capacity": {"max_participants": 10, "max_rooms": 10}},
            scopes=("node:register",),
        )
        assert holder.status == 201, holder.body
        node: Node = await nodes("sfu-dup", control.url)
        agent = agent_of(node)
        started = time.monotonic()
        await asyncio.wait_for(agent.fatal.wait(), 6)
        assert time.monotonic() - started >= 1.0, "the agent must wait Retry-After once before giving up"
        assert agent.state is AgentState.FAILED
        assert agent.fatal_reason is not None and "node_exists" in agent.fatal_reason
        assert agent.registrations == 0
        view = await control.node_view("sfu-dup")
        assert view is not None and view["url"] == "http://127.0.0.1:9"  # the holder kept its id
    finally:
        await control.stop()


async def test_a_restarted_node_retires_its_previous_lease_at_once(
    nodes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    control = await ControlPlane(lease_s=2.0).start()
    try:
        previous: Node = await nodes("sfu-restart", control.url)
        await control.wait_state("sfu-restart", "live")
        await previous.stop()  # a quick restart: its lease is still alive
        caplog.set_level("WARNING", logger="sfu.agent")
        node: Node = await nodes("sfu-restart", control.url)
        started = time.monotonic()
        await until(lambda: agent_of(node).registrations == 1, 6, "the new run registers")
        # issue 11 defect 14: the new instance retires the old lease at once (the old URL is dead)
        assert time.monotonic() - started < 1.5, "the new run waited for the old lease"
        assert not any("node_exists" in r.getMessage() for r in caplog.records), "the old lease was not retired"
        view = await control.node_view("sfu-restart")
        assert view is not None and view["url"] == node.url
        assert not agent_of(node).fatal.is_set()
    finally:
        await control.stop()


async def test_lapsed_lease_not_found_registers_again(control: ControlPlane, nodes: Any) -> None:
    node: Node = await nodes("sfu-lapse", control.url)
    await control.wait_state("sfu-lapse", "live")
    agent = agent_of(node)
    assert agent.registrations == 1
    placed = await control.call("POST", "/v1/rooms", {"room": "lapse-room"}, scopes=("room:create",))
    assert placed.status == 201 and placed.body["node"]["id"] == "sfu-lapse"
    control.clock.offset_s = control.config.lease_seconds + 1  # the lease lapses under the node's feet
    await until(lambda: agent.registrations == 2, 3, "re-registration after not_found")
    view = await control.wait_state("sfu-lapse", "live")
    assert view["url"] == node.url
    assert agent.state is AgentState.REGISTERED
    # the node listed its live room when it registered again: it stays there, not placed twice
    room = await control.call("GET", "/v1/rooms/lapse-room", scopes=("room:admin",))
    assert room.status == 200 and room.body["state"] == "live"
    assert room.body["node"]["id"] == "sfu-lapse" and room.body["placed_at"] == placed.body["placed_at"]


async def test_heartbeat_failures_are_counted_and_a_restarted_control_plane_learns_the_node(nodes: Any) -> None:
    control = await ControlPlane().start()
    port = control.port
    node: Node = await nodes("sfu-outage", control.url)
    await control.wait_state("sfu-outage", "live")
    agent = agent_of(node)
    await control.stop()
    await until(lambda: agent.heartbeat_failures >= 2, 3, "heartbeat failures")
    metrics = await http("GET", f"{node.url}/metrics", tok="-")
    line = next(x for x in metrics.body.splitlines() if x.startswith("levelchat_sfu_control_plane_heartbeat_failures_total"))
    assert float(line.split()[-1]) >= 2
    assert (await http("GET", f"{node.url}/readyz", tok="-")).status == 200  # readiness stays local

    restarted = await ControlPlane(port=port).start()  # a fresh in-memory store: it never saw the node
    try:
        await restarted.wait_state("sfu-outage", "live", timeout=5)
        await until(lambda: agent.registrations == 2, 3, "the agent counts its second registration")
    finally:
        await restarted.stop()


async def test_no_control_url_no_agent(nodes: Any) -> None:
    node: Node = await nodes("sfu-alone", "")
    assert node.agent is None
    metrics = await http("GET", f"{node.url}/metrics", tok="-")
    assert "levelchat_sfu_control_plane_heartbeat_failures_total 0.0" in metrics.body


# -- pure parts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (200, None, ReplyKind.OK),
        (201, None, ReplyKind.OK),
        (409, "node_exists", ReplyKind.EXISTS),
        (409, "conflict", ReplyKind.REFUSED),
        (410, "node_revoked", ReplyKind.REVOKED),
        (404, "not_found", ReplyKind.NOT_FOUND),
        (500, "internal_error", ReplyKind.UNAVAILABLE),
        (503, "service_unavailable", ReplyKind.UNAVAILABLE),
        (502, None, ReplyKind.UNAVAILABLE),
        (429, "rate_limited", ReplyKind.UNAVAILABLE),
        (401, "token/invalid", ReplyKind.REFUSED),
        (400, "bad_request", ReplyKind.REFUSED),
    ],
)
def test_classify(status: int, code: str | None, kind: ReplyKind) -> None:
    assert classify(status, code) is kind


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("3", 3.0), (" 7 ", 7.0), ("0.5", 0.5), ("-1", None), ("soon", None), ("nan", None), ("inf", None)],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_reply_parse_reads_problem_and_retry_after() -> None:
    reply = ControlReply.parse(409, "4", b'{"code": "node_exists", "detail": "held"}')
    assert (reply.kind, reply.code, reply.detail, reply.retry_after_s) == (ReplyKind.EXISTS, "node_exists", "held", 4.0)
    garbage = ControlReply.parse(502, None, b"<html>bad gateway</html>")
    assert (garbage.kind, garbage.code, garbage.detail) == (ReplyKind.UNAVAILABLE, None, "HTTP 502")


@pytest.mark.parametrize(
    ("rands", "ceilings"),
    [
        ([0.999999] * 8, [0.5, 1, 2, 4, 8, 16, 30, 30]),
        ([0.5] * 3, [0.5, 1, 2]),
    ],
)
def test_backoff_full_jitter_doubles_to_the_cap(rands: list[float], ceilings: list[float]) -> None:
    b = Backoff(0.5, 30.0)
    for rand, ceiling in zip(rands, ceilings, strict=True):
        assert b.next_delay(rand) == pytest.approx(ceiling * rand)
    b.reset()
    assert b.next_delay(0.0) == 0.0 and b.attempt == 1
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        b.next_delay(1.0)
    many = Backoff(0.5, 30.0, attempt=10_000)
    assert many.next_delay(0.5) == 15.0


@pytest.mark.parametrize(
    ("elapsed", "cpu", "packets", "expected"),
    [
        (2.0, 0.5, 1000, (0.25, 500.0)),
        (1.0, 3.0, 0, (1.0, 0.0)),  # more than one core (threads): clamped
        (0.0, 1.0, 10, (0.0, 0.0)),  # no time passed
        (1.0, -0.1, -5, (0.0, 0.0)),  # counters never go backwards in rates
    ],
)
def test_load_meter(elapsed: float, cpu: float, packets: int, expected: tuple[float, float]) -> None:
    meter = LoadMeter(100.0, 10.0, 5000)
    assert meter.sample(100.0 + elapsed, 10.0 + cpu, 5000 + packets) == pytest.approx(expected)


def test_node_tokens_are_node_register_and_re_minted_at_half_life() -> None:
    tokens = NodeTokens(KEY, PROJECT, "sfu-1", ttl_s=60)
    first = tokens.get(1_000.0)
    assert tokens.get(1_029.0) == first
    later = tokens.get(1_030.0)
    assert later != first
    claims = TokenVerifier([KEY], PROJECT).verify(later, 1_031.0)
    assert claims.scopes == frozenset({"node:register"}) and claims.identity == "node:sfu-1"
    with pytest.raises(ValueError, match="at least 2 s"):
        NodeTokens(KEY, PROJECT, "sfu-1", ttl_s=1)


def test_settings_from_config() -> None:
    cfg = load(dev=True, flags={"control_url": "http://127.0.0.1:7700/", "node_id": "n-1", "revoke_drain_s": 4}, environ={})
    s = AgentSettings.from_config(cfg)
    assert (s.control_url, s.node_id, s.revoke_drain_s) == ("http://127.0.0.1:7700", "n-1", 4.0)


async def test_revoked_node_comes_back_when_reprovisioned(control: ControlPlane, nodes: Any) -> None:
    node: Node = await nodes("sfu-back", control.url, revoke_drain_s=0)
    await control.wait_state("sfu-back", "live")
    await control.call("DELETE", "/v1/nodes/sfu-back")
    await until(lambda: node.revoked, 3, "node.revoked")
    refused = await http("POST", f"{node.url}/v1/rooms", tok=token("room:create"), body={"room": "back-room"})
    assert refused.status == 410 and refused.body["code"] == "node_revoked"
    assert (await control.call("POST", "/v1/nodes/sfu-back/provision")).status == 200
    await until(lambda: not node.revoked, 5, "the node takes work again")
    await control.wait_state("sfu-back", "live")
    assert agent_of(node).state is AgentState.REGISTERED
    created = await http("POST", f"{node.url}/v1/rooms", tok=token("room:create"), body={"room": "back-room"})
    assert created.status == 201, created.body
    ready = await http("GET", f"{node.url}/readyz", tok="-")
    assert ready.status == 200


async def test_a_starting_node_answers_unknown_rooms_retryably(nodes: Any) -> None:
    """Issue 11 defect 14: with auto-creation off, a node that has not registered yet (or only just:
    its control plane may be placing its previous run's rooms again) answers a join for a room it
    does not have 503 + Retry-After, not room_not_found; settled, room_not_found as before."""
    control = await ControlPlane(heartbeat_s=0.2).start()
    port = control.port
    await control.stop()  # down at the node's start: it cannot register
    try:
        node: Node = await nodes("sfu-starting", control.url, auto_create_rooms=False)
        whip = token("room:join", "room:publish", room="ghost-room", identity="a")
        whep = token("room:join", "room:subscribe", room="ghost-room", identity="b")
        for kind, tok in (("whip", whip), ("whep", whep)):
            early = await http("POST", f"{node.url}/{kind}/ghost-room", tok=tok, sdp="v=0\r\n")
            assert early.status == 503 and early.body["code"] == "service_unavailable", (kind, early.body)
            assert early.headers["Retry-After"] == "1"
        control = await ControlPlane(heartbeat_s=0.2, port=port).start()
        await until(lambda: agent_of(node).registrations == 1, 10, "registration")
        await until(lambda: not agent_of(node).settling(), 5, "settled")
        for kind, tok in (("whip", whip), ("whep", whep)):
            late = await http("POST", f"{node.url}/{kind}/ghost-room", tok=tok, sdp="v=0\r\n")
            assert late.status == 404 and late.body["code"] == "room_not_found", (kind, late.body)
    finally:
        await control.stop()
