"""The agent with several control-plane URLs (``control_urls``): a replica that cannot be reached
or answers 5xx is left at once for the next one, and the agent stays with the one that answers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from levelchat.config import ConfigError
from sfu.config import load
from sfu.node import Node
from tests.sfu.test_agent import ControlPlane, free_port, loopback_only, until  # noqa: F401 (fixture)


@pytest.fixture
async def broken_replica() -> AsyncIterator[str]:
    """A control-plane replica whose store is down: every request is answered 503."""

    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response({"code": "service_unavailable", "detail": "store down"}, status=503,
                                 headers={"Retry-After": "30"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def start_node(**flags: Any) -> Node:
    cfg = load(dev=True, flags={"http_port": 0, "media_port": 0, "node_id": "fo-1", **flags}, environ={})
    node = Node(cfg)
    await node.start()
    return node


async def test_a_503_and_a_dead_replica_are_skipped_at_once_and_the_live_one_kept(broken_replica: str) -> None:
    control = await ControlPlane(heartbeat_s=0.1).start()
    dead = f"http://127.0.0.1:{free_port()}"
    node = await start_node(control_urls=f"{broken_replica},{dead},{control.url}")
    try:
        started = time.monotonic()
        assert node.agent is not None
        await until(lambda: node.agent is not None and node.agent.registrations == 1, 10, "registered")
        # one round, no backoff: the agent's first backoff step alone is up to 0.5 s
        assert time.monotonic() - started < 3.0
        assert node.agent.control_url == control.url and node.agent.failovers == 2
        await until(lambda: node.agent is not None and node.agent.heartbeats >= 10, 10, "heartbeats")
        assert node.agent.failovers == 2 and node.agent.control_url == control.url  # stuck to it
        view = await control.node_view("fo-1")
        assert view is not None and view["state"] == "live"
    finally:
        await node.stop()
        await control.stop()


async def test_all_replicas_down_then_one_back() -> None:
    """A full round of failures backs off; a replica coming back (on either URL) is found."""
    ports = [free_port(), free_port()]
    node = await start_node(control_urls=",".join(f"http://127.0.0.1:{p}" for p in ports))
    control = ControlPlane(heartbeat_s=0.1, port=ports[1])
    try:
        assert node.agent is not None
        await until(lambda: node.agent is not None and node.agent.failovers >= 2, 10, "rounds of failures")
        assert node.agent.registrations == 0
        await control.start()
        await until(lambda: node.agent is not None and node.agent.registrations == 1, 15, "registered")
        assert node.agent.control_url == control.url
    finally:
        await node.stop()
        await control.stop()


def test_control_urls_config() -> None:
    cfg = load(dev=True, flags={"control_url": "http://a:1/", "control_urls": "http://b:2,http://a:1"}, environ={})
    assert cfg.control_endpoints == ("http://a:1", "http://b:2")  # control_url first, no duplicates
    env = load(dev=True, environ={"LEVELCHAT_SFU_CONTROL_URLS": "http://x:1,http://y:2/"})
    assert env.control_endpoints == ("http://x:1", "http://y:2")
    assert load(dev=True, environ={}).control_endpoints == ()
    with pytest.raises(ConfigError, match="control_urls"):
        load(dev=True, flags={"control_urls": "http://ok:1,ftp://bad"}, environ={})
