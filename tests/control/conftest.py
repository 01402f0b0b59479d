"""Fixtures for control-plane tests: a real redis-server, stand-in nodes, a control plane per backend."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.control.harness import ControlPlane, StandInNode, flush_redis, make_config, start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); Redis-backed tests skipped")
    proc, url = start_redis(binary)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/control.db"
    url: str = request.getfixturevalue("redis_server")
    flush_redis(url)
    return url


@pytest.fixture
async def nodes() -> AsyncIterator[list[StandInNode]]:
    started = [await StandInNode(f"node-{i}").start() for i in range(1, 4)]
    yield started
    for n in started:
        await n.stop()


@pytest.fixture
async def cp(store_url: str) -> AsyncIterator[ControlPlane]:
    plane = await ControlPlane(make_config(store_url)).start()
    yield plane
    await plane.stop()
