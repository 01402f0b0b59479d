"""A throw-away ``redis-server`` for multi-process tests, and two control-plane replicas on it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.control.harness import flush_redis, start_redis
from tests.e2e.procs import Proc, Procs

__all__ = ["RedisServer", "flush_redis", "redis_server", "replicas", "wait_log"]


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        """SIGSTOP: the server keeps its sockets (connects still succeed) but answers nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def flushall(self) -> None:
        flush_redis(self.url)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    proc, url = start_redis(binary)
    try:
        yield RedisServer(proc, url)
    finally:
        if proc.poll() is None:
            proc.kill()  # SIGKILL ends a stopped process too
        proc.wait(timeout=10)


def replicas(procs: Procs, store_url: str, count: int, *, lease_s: float, heartbeat_s: float,
             extra_args: tuple[str, ...] = ()) -> list[Proc]:
    """``count`` control planes (``--dev``) sharing the store at ``store_url``."""
    return [
        procs.control(f"control-{i}", lease_s=lease_s, heartbeat_s=heartbeat_s,
                      extra_args=("--store", store_url, *extra_args))
        for i in range(count)
    ]


async def wait_log(proc: Proc, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in proc.stderr():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log of {proc.name} within {timeout_s} s:\n{proc.tail()}")
        await asyncio.sleep(0.1)
