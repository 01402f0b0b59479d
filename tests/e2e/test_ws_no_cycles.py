"""A closed signaling WebSocket is freed by reference counting, at once: no reference cycle per
connection is left for the collector's full pass (aiohttp keeps the WebSocket's data-received
callback, a bound method of the response, on its connection handler; the mask check held a bound
method of the response that holds it), whether the client leaves or the join deadline closes it.  2,000 such sockets left 68,000 objects in cycles whose
collection stalled the node's loop for 0.5-1.9 s (tests/e2e/test_ws_idle_many.py)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from levelchat.httpserver import GuardedRequestHandler
from sfu.api.ws_mask import MaskCheck, MaskedWebSocketResponse
from sfu.node import Node
from tests.e2e.conftest import token

SOCKETS = 20
KINDS = (GuardedRequestHandler, MaskedWebSocketResponse, MaskCheck)


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


async def _one_socket(node: Node, http: aiohttp.ClientSession, i: int, *, idle: bool) -> None:
    url = node.url.replace("http://", "ws://") + "/v1/rtc?access_token=" + token("cycles", f"p{i}")
    async with http.ws_connect(url) as ws:
        if idle:  # never joins: the node closes it at the join deadline (1008)
            msg = await ws.receive(timeout=10)
            while msg.type == aiohttp.WSMsgType.TEXT:
                msg = await ws.receive(timeout=10)
            assert ws.close_code == 1008, msg
        else:
            await ws.send_json({"id": 1, "method": "join", "params": {}})
            await ws.receive(timeout=10)
        await ws.close()


@pytest.mark.parametrize("idle", [False, True], ids=["joined-and-left", "closed-at-join-deadline"])
async def test_closed_websockets_leave_no_cycles(node_factory: Callable[..., Any], collector_off: None, idle: bool) -> None:
    node: Node = await node_factory(signaling_join_timeout_s=0.3)
    before = {k: alive(k) for k in KINDS}
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(_one_socket(node, http, i, idle=idle) for i in range(SOCKETS)))
        await asyncio.sleep(0.5)  # the node sees the connections end
    finally:
        await node.stop()
    left = {k.__name__: alive(k) - before[k] for k in KINDS}
    assert left == {k.__name__: 0 for k in KINDS}, left
    # and the collector really is what would have freed them: with the collector's pass they go too
    gc.collect()
    assert all(alive(k) == before[k] for k in KINDS)
