"""Fixtures for control-plane tests: a real redis-server, stand-in nodes, a control plane per backend."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.control.harness import ControlPlane, StandInNode, flush_redis, free_port, make_config


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); Redis-backed tests skipped")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not answer PING within 10 s")
    yield f"redis://127.0.0.1:{port}/0"
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
