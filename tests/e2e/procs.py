"""Real processes for multi-process end-to-end tests: ``python -m control`` and ``python -m sfu``
on 127.0.0.1 with free ports, their stdout/stderr in files, every one ended in teardown.

Children get a clean environment: no inherited ``LEVELCHAT_*`` variables (the node refuses unknown
``LEVELCHAT_SFU_*`` ones and would pick up stray settings), only what the test passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from levelchat.tokens import ApiKey, mint

REPO = Path(__file__).resolve().parents[2]
DEV_KEY = ApiKey("devkey", "secret")
PROJECT = "levelchat"
ADMIN_SCOPES = ("node:admin", "room:admin", "room:create")
START_TIMEOUT_S = 20.0


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    """Nothing holds ``port`` on loopback, for TCP or UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(kind: int = socket.SOCK_STREAM, count: int = 1) -> int:
    """A port, and the ``count - 1`` after it, that nothing holds for TCP or UDP, for a server a
    test starts (``kind`` is kept for the callers; both are checked).  Taken below the kernel's
    ephemeral range: a port the kernel hands out (``bind(0)``) can be given again to any client
    socket, of this run or of another on the machine, between the pick and the server's bind, and
    a multi-worker node binds ``media_port + i`` for its workers."""
    low = _ephemeral_low()
    pick = random.SystemRandom()
    for _ in range(1000):
        base = pick.randrange(15_000, max(15_001, low - count))
        if all(_bindable(p) for p in range(base, base + count)):
            return base
    with socket.socket(socket.AF_INET, kind) as s:  # a machine with no room below its ephemeral range
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVELCHAT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def admin_token(*scopes: str, room: str | None = None, identity: str = "e2e-admin") -> str:
    return mint(
        DEV_KEY, project=PROJECT, now_s=time.time(), ttl_s=600, identity=identity, room=room,
        scopes=scopes or ADMIN_SCOPES,
    )


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


async def call(method: str, url: str, body: Any = None, *, token: str | None = None, sdp: str | None = None,
               timeout_s: float = 5.0) -> Reply:
    """One HTTP request; JSON (or problem+json) bodies decoded, others as text."""
    headers = {"Authorization": f"Bearer {token or admin_token()}"}
    kwargs: dict[str, Any] = {"json": body} if sdp is None else {"data": sdp}
    if sdp is not None:
        headers["Content-Type"] = "application/sdp"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        async with http.request(method, url, headers=headers, **kwargs) as resp:
            raw = await resp.read()
            headers = dict(resp.headers)
            if "json" in resp.headers.get("Content-Type", ""):
                return Reply(resp.status, json.loads(raw), headers)
            return Reply(resp.status, raw.decode("utf-8", "replace"), headers)


@dataclass
class Proc:
    """One child process; ``url`` is its HTTP base URL."""

    name: str
    args: Sequence[str]
    url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.stderr"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"{self.name}.stdout"

    def start(self) -> Proc:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, *self.args], cwd=self.workdir, env=self.env, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:])

    def kill9(self) -> None:
        assert self.popen is not None
        if self.running:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; this process only."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=0.5)
            return
        except subprocess.TimeoutExpired:
            self.popen.terminate()  # a node drains on the first SIGTERM; the second ends it at once
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=timeout_s)

    async def wait_exit(self, timeout_s: float) -> int:
        assert self.popen is not None
        deadline = time.monotonic() + timeout_s
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} still running after {timeout_s} s:\n{self.tail()}")
            await asyncio.sleep(0.05)
        return code

    async def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running:
                raise AssertionError(f"{self.name} exited with {self.popen and self.popen.returncode}:\n{self.tail()}")
            try:
                reply = await call("GET", self.url + "/healthz", timeout_s=1.0)
                if reply.status == 200:
                    return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not healthy within {timeout_s} s:\n{self.tail()}")
            await asyncio.sleep(0.05)


class Procs:
    """Starts control planes and nodes; ``stop_all()`` ends each one it started, by its own handle."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def control(self, name: str = "control", *, lease_s: float = 3.0, heartbeat_s: float = 0.5,
                extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Proc:
        port = free_port()
        args = ["-m", "control", "--dev", "--port", str(port), "--lease-seconds", str(lease_s),
                "--heartbeat-interval-seconds", str(heartbeat_s), *extra_args]
        return self._start(Proc(name, args, f"http://127.0.0.1:{port}", self.workdir, child_env(env)))

    def node(self, node_id: str, control_url: str | None, *, env: Mapping[str, str] | None = None,
             extra_args: Sequence[str] = ()) -> Proc:
        args_in = list(extra_args)
        given = args_in[args_in.index("--workers") + 1] if "--workers" in args_in[:-1] else "1"
        workers = int(given) if given.isdigit() else os.cpu_count() or 1  # "auto": one per core
        http_port, media_port = free_port(), free_port(socket.SOCK_DGRAM, count=max(1, workers))
        args = ["-m", "sfu", "--dev", "--http-port", str(http_port), "--media-port", str(media_port), "--tcp-port", "0",
                "--node-id", node_id, *(["--control-url", control_url] if control_url else []), *extra_args]
        name = f"node-{node_id}-{len(self.started)}"
        return self._start(Proc(name, args, f"http://127.0.0.1:{http_port}", self.workdir, child_env(env)))

    def _start(self, proc: Proc) -> Proc:
        self.started.append(proc.start())
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.terminate()


async def control_nodes(control_url: str) -> dict[str, dict[str, Any]]:
    reply = await call("GET", control_url + "/v1/nodes")
    assert reply.status == 200, reply.body
    return {n["id"]: n for n in reply.body["nodes"]}


async def wait_nodes_state(control_url: str, ids: Sequence[str], state: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = await control_nodes(control_url)
        if all(nodes.get(i, {}).get("state") == state for i in ids):
            return nodes
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes {list(ids)} not all {state} within {timeout_s} s: "
                                 f"{ {i: n.get('state') for i, n in nodes.items()} }")
        await asyncio.sleep(0.1)
