from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import pytest

from levelchat.tokens import ApiKey, mint
from sfu.config import load
from sfu.node import Node
from tests.e2e.procs import Procs

DEV_KEY = ApiKey("devkey", "secret")
#: the node's self-check keeps a probe publisher and a probe subscriber on its media port
PROBE_PEERS = 2


def public_participants(node: Node) -> list[Any]:
    return [p for p in node.router.participants.values() if not p.identity.startswith("selfcheck-")]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """aioice skips 127.0.0.1 when gathering: give it only loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Real processes (``tests.e2e.procs``), every one ended in teardown."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def node_factory() -> Callable[..., Any]:
    nodes: list[Node] = []

    async def start(**flags: Any) -> Node:
        cfg = load(dev=True, flags={"http_port": 0, "media_port": 0, **flags}, environ={})
        node = Node(cfg)
        await node.start()
        nodes.append(node)
        return node

    start.nodes = nodes  # type: ignore[attr-defined]
    return start


@pytest.fixture
async def node(node_factory: Callable[..., Any]) -> AsyncIterator[Node]:
    n = await node_factory()
    yield n
    await n.stop()


def token(room: str, identity: str, scopes: tuple[str, ...] = ("room:join", "room:publish", "room:subscribe"), ttl_s: int = 600, **kw: Any) -> str:
    return mint(DEV_KEY, project="levelchat", now_s=time.time(), ttl_s=ttl_s, identity=identity, room=room, scopes=scopes, **kw)
