"""The HTTP server's read timeouts (issue 11, defect 5), on a node with 1 s timeouts: a body that
stops short is answered ``bad_request`` at the body timeout and the connection closed; a head that
trickles in is cut at the header timeout however often bytes come; an idle keep-alive connection
is closed at the keep-alive timeout.  ``/healthz`` stays fast meanwhile.  A WebSocket session
outlives the read timeouts and counts against the per-address connection cap."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from sfu.node import Node
from tests.e2e.conftest import token
from tests.e2e.procs import admin_token
from tests.e2e.rawhttp import exchange, problem_code, request_bytes

TIMEOUT_S = 1.0


@pytest.fixture
async def quick(node_factory: Callable[..., Any]) -> AsyncIterator[Node]:
    n = await node_factory(http_body_timeout_s=TIMEOUT_S, http_header_timeout_s=TIMEOUT_S,
                           http_keepalive_timeout_s=TIMEOUT_S)
    yield n
    await n.stop()


async def test_short_body_is_refused_at_the_body_timeout(quick: Node) -> None:
    raw = request_bytes("POST", "/v1/rooms", body=b'{"room": "short-body"}', headers=[
        ("Authorization", f"Bearer {admin_token()}"), ("Content-Type", "application/json")], close=False)
    reply = await exchange(quick.http_port, [raw[:-5]], timeout_s=10)
    assert reply.status == 400 and problem_code(reply) == "bad_request", reply
    assert "in time" in reply.json()["detail"]
    assert TIMEOUT_S - 0.2 <= reply.elapsed_s <= TIMEOUT_S + 5
    assert "short-body" not in quick.rooms.rooms


async def test_short_sdp_is_refused_at_the_body_timeout(quick: Node) -> None:
    raw = request_bytes("POST", "/whip/short-sdp", body=b"v=0\r\n" * 100, headers=[
        ("Authorization", f"Bearer {token('short-sdp', 'a')}"), ("Content-Type", "application/sdp")])
    reply = await exchange(quick.http_port, [raw[:-100]], timeout_s=10)
    assert reply.status == 400 and problem_code(reply) == "bad_request", reply
    assert "SDP offer was not received in time" in reply.json()["detail"]


async def test_trickled_head_is_cut_at_the_header_timeout(quick: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", quick.http_port)
    t0 = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    closed_at = None
    for _ in range(40):  # a byte every 0.1 s: 4 s of trickle if nothing stops it
        await asyncio.sleep(0.1)
        if reader.at_eof() or writer.is_closing():
            break
        try:
            writer.write(b"X")
            await writer.drain()
        except ConnectionError:
            break
        fast = await exchange(quick.http_port, [request_bytes("GET", "/healthz")], timeout_s=5)
        assert fast.status == 200 and fast.elapsed_s < 1.0
        if reader._buffer or reader.at_eof():  # type: ignore[attr-defined]
            break
    data = await asyncio.wait_for(reader.read(), 5)
    closed_at = time.monotonic() - t0
    writer.close()
    assert data.startswith(b"HTTP/1.1 400"), data[:100]
    assert b"bad_request" in data and b"request head was not received" in data
    assert TIMEOUT_S - 0.2 <= closed_at <= TIMEOUT_S + 3, closed_at


async def test_idle_keepalive_connection_is_closed(quick: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", quick.http_port)
    writer.write(request_bytes("GET", "/healthz", close=False))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    rest = await asyncio.wait_for(reader.read(), 10)  # the body, then the close
    idle = time.monotonic() - t0
    writer.close()
    assert rest.endswith(b"}") and TIMEOUT_S - 0.2 <= idle <= TIMEOUT_S + 5, idle


async def test_keepalive_still_applies_after_a_slow_head(quick: Node) -> None:
    """A head that takes most of the header timeout (past the idle timer's first deadline) is
    answered, and the idle timer still closes the connection afterwards."""
    reader, writer = await asyncio.open_connection("127.0.0.1", quick.http_port)
    await asyncio.sleep(0.6)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.7)  # the idle timer (1 s from the connection) fires while the head is open
    writer.write(b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    await asyncio.wait_for(reader.read(), 10)
    idle = time.monotonic() - t0
    writer.close()
    assert idle <= TIMEOUT_S + 5, idle


async def test_websocket_outlives_the_read_timeouts(quick: Node) -> None:
    """An upgraded connection is no request body: the body and header timeouts never cut it."""
    url = quick.url.replace("http://", "ws://") + "/v1/rtc?access_token=" + token("ws-long", "w")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for _ in range(3):
            await asyncio.sleep(TIMEOUT_S * 1.5)
            await ws.send_str("{nope")
            frame = await ws.receive(timeout=5)
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
            assert json.loads(frame.data)["error"]["code"] == -32700


async def test_websocket_sessions_count_against_the_address_cap(node_factory: Callable[..., Any]) -> None:
    """The per-address cap counts connections, WebSocket sessions included: with a cap of 2, two
    open signaling sockets leave no room for a third connection from the same address, and
    closing one makes room again."""
    capped = await node_factory(http_max_connections_per_ip=2)
    url = capped.url.replace("http://", "ws://") + "/v1/rtc?access_token="
    try:
        async with aiohttp.ClientSession() as a, aiohttp.ClientSession() as b:
            ws1 = await a.ws_connect(url + token("ws-cap", "one"))
            ws2 = await b.ws_connect(url + token("ws-cap", "two"))
            third = await exchange(capped.http_port, [request_bytes("GET", "/healthz")])
            assert third.status == 429 and problem_code(third) == "rate_limited", third
            assert third.headers.get("retry-after")
            await ws2.close()
            for _ in range(50):
                again = await exchange(capped.http_port, [request_bytes("GET", "/healthz")])
                if again.status == 200:
                    break
                await asyncio.sleep(0.05)
            assert again.status == 200, again
            await ws1.close()
    finally:
        await capped.stop()
