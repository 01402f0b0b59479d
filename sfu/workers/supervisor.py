"""Starts the forwarding worker processes, polls their status, restarts one that dies.

Each worker (``sfu.workers.worker``) is a child process in its own session (a terminal's Ctrl-C
reaches the front only, which stops the workers itself), fed its configuration on stdin, which
stays open as the pipe it watches; on Linux it also dies with the front (``PR_SET_PDEATHSIG``).
The supervisor talks to it over its unix socket with one ``aiohttp`` session per worker.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sfu.config import NodeConfig
from sfu.workers.worker import RUN_DIR_USAGE_DB, encode_config, worker_config

log = logging.getLogger(__name__)

POLL_S = 0.5
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
#: a worker that stayed up this long has its restart backoff reset
STABLE_S = 30.0
REQUEST_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class WorkerState(enum.Enum):
    STARTING = "starting"
    UP = "up"
    RESTARTING = "restarting"  # it died; a new one is on its way
    STOPPED = "stopped"


def proc_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a process, all threads: ``/proc/<pid>/task/*/schedstat`` (nanoseconds), else
    user + system from ``/proc/<pid>/stat`` (clock ticks).  None: not readable (gone)."""
    try:
        total_ns = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended between listing and reading
        if total_ns:
            return total_ns / 1e9
    except OSError:
        pass
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: split after its closing one
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Worker:
    index: int
    config: NodeConfig
    socket_path: str
    state: WorkerState = WorkerState.STARTING
    proc: asyncio.subprocess.Process | None = None
    #: its last status report (``/internal/status``); None until the first one after a (re)start
    status: dict[str, Any] | None = None
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    #: CPU seconds and forwarded packets of its previous (dead) runs, so totals never go back
    retired_cpu_s: float = 0.0
    retired_packets: int = 0
    last_cpu_s: float = 0.0
    session: aiohttp.ClientSession | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def up(self) -> bool:
        return self.state is WorkerState.UP

    @property
    def media_port(self) -> int:
        port = (self.status or {}).get("media_port")
        return int(port) if isinstance(port, int) else self.config.media_port

    @property
    def tcp_port(self) -> int | None:
        """The worker's ICE-TCP port as it reported it (None: off, or not reported yet)."""
        port = (self.status or {}).get("tcp_port")
        return port if isinstance(port, int) and not isinstance(port, bool) and port > 0 else None

    def cpu_seconds(self) -> float:
        if self.proc is not None and self.proc.returncode is None:
            now = proc_cpu_seconds(self.proc.pid)
            if now is not None:
                self.last_cpu_s = now
        return self.retired_cpu_s + self.last_cpu_s

    def packets_out(self) -> int:
        current = (self.status or {}).get("packets_out", 0)
        return self.retired_packets + (int(current) if isinstance(current, int) else 0)

    def describe(self) -> dict[str, Any]:
        status = self.status or {}
        return {
            "index": self.index,
            "state": self.state.value,
            "pid": self.pid,
            "media_port": self.media_port,
            "ready": bool(status.get("ready")) and self.up,
            "reason": status.get("reason", self.state.value) if self.up else self.state.value,
            "rooms": len(status.get("rooms", ())),
            "participants": status.get("participants", 0),
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class Supervisor:
    """Runs ``config.worker_count`` workers.  Callbacks: ``on_status(worker)`` after each status
    report, ``on_down(worker)`` when one dies, ``on_up(worker)`` when one (re)starts."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        on_status: Callable[[Worker], None],
        on_down: Callable[[Worker], None],
        on_up: Callable[[Worker], Any],
    ) -> None:
        self.config = config
        self._dir = tempfile.mkdtemp(prefix="levelchat-sfu-")
        os.chmod(self._dir, 0o700)
        self.workers = [
            Worker(i, worker_config(config, i, self._dir), os.path.join(self._dir, f"worker-{i}.sock"))
            for i in range(config.worker_count)
        ]
        self.stopping = False
        self._on_status = on_status
        self._on_down = on_down
        self._on_up = on_up

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until each answers; raises ``RuntimeError`` naming the first
        that exits or does not answer in time (the others are stopped)."""
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
            await asyncio.gather(*(self._wait_ready(w, START_TIMEOUT_S) for w in self.workers))
        except BaseException:
            await self.stop()
            raise
        for w in self.workers:
            w.state = WorkerState.UP
            w.tasks.append(asyncio.create_task(self._watch(w), name=f"worker-{w.index}-watch"))
            w.tasks.append(asyncio.create_task(self._poll(w), name=f"worker-{w.index}-poll"))
            await self._poll_once(w)

    async def stop(self) -> None:
        """SIGINT to each worker (it closes its rooms and exits), SIGKILL after ``STOP_TIMEOUT_S``."""
        self.stopping = True
        for w in self.workers:
            for t in w.tasks:
                t.cancel()
            w.tasks.clear()
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGINT)
        for w in self.workers:
            if w.proc is not None:
                try:
                    await asyncio.wait_for(w.proc.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    log.error("worker %d (pid %d) did not stop; killing it", w.index, w.proc.pid)
                    w.proc.kill()
                    await w.proc.wait()
                if w.proc.stdin is not None:
                    w.proc.stdin.close()
            w.state = WorkerState.STOPPED
            if w.session is not None:
                await w.session.close()
                w.session = None
        for w in self.workers:
            try:
                os.unlink(w.socket_path)
            except OSError:
                pass
        for name in (RUN_DIR_USAGE_DB, RUN_DIR_USAGE_DB + "-wal", RUN_DIR_USAGE_DB + "-shm"):
            try:
                os.unlink(os.path.join(self._dir, name))
            except OSError:
                pass
        try:
            os.rmdir(self._dir)
        except OSError:
            pass

    async def _spawn(self, w: Worker) -> None:
        w.status = None
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfu.workers.worker",
            "--index", str(w.index), "--socket", w.socket_path, "--parent", str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert w.proc.stdin is not None
        w.proc.stdin.write(encode_config(w.config))
        await w.proc.stdin.drain()
        w.started_at = time.monotonic()
        w.last_cpu_s = 0.0
        if w.session is None:
            w.session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=w.socket_path),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            )
        log.info("worker %d started (pid %d, media port %s)", w.index, w.proc.pid, w.config.media_port or "any")

    async def _wait_ready(self, w: Worker, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        assert w.proc is not None
        while True:
            if w.proc.returncode is not None:
                raise RuntimeError(f"worker {w.index} exited with status {w.proc.returncode} while starting")
            try:
                await self.request(w, "GET", "/internal/status", timeout_s=1.0)
                return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {w.index} did not answer within {timeout_s:.0f} s")
            await asyncio.sleep(0.05)

    async def _watch(self, w: Worker) -> None:
        """Wait for the worker to exit; unless stopping, restart it (with backoff)."""
        attempt = 0
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            w.last_exit = code
            w.retired_cpu_s += w.last_cpu_s
            w.last_cpu_s = 0.0
            w.retired_packets = w.packets_out()
            w.status = None
            if self.stopping:
                return
            w.state = WorkerState.RESTARTING
            if time.monotonic() - w.started_at > STABLE_S:
                attempt = 0
            delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
            attempt += 1
            log.error("worker %d (pid %d) exited with status %d; its rooms are gone; restarting it in %.1f s",
                      w.index, w.proc.pid, code, delay)
            self._on_down(w)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            try:
                await self._spawn(w)
                await self._wait_ready(w, START_TIMEOUT_S)
            except RuntimeError as exc:
                log.error("worker %d: restart failed: %s", w.index, exc)
                if w.proc is not None and w.proc.returncode is None:
                    w.proc.kill()
                continue
            w.restarts += 1
            w.state = WorkerState.UP
            await self._poll_once(w)
            result = self._on_up(w)
            if asyncio.iscoroutine(result):
                await result
            log.warning("worker %d restarted (pid %d)", w.index, w.proc.pid)

    async def _poll(self, w: Worker) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if w.up:
                await self._poll_once(w)

    async def _poll_once(self, w: Worker) -> None:
        try:
            status = await self.request(w, "GET", "/internal/status", timeout_s=2.0)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.debug("worker %d: status failed: %s", w.index, exc)
            return
        if isinstance(status, dict) and w.up:
            w.status = status
            w.cpu_seconds()
            self._on_status(w)

    # -- talking to workers ---------------------------------------------------------------------
    async def request(
        self, w: Worker, method: str, path: str, body: Any = None, *, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> Any:
        """A private call to a worker; its JSON answer (raises ``aiohttp.ClientError`` on failure)."""
        if w.session is None:
            raise aiohttp.ClientConnectionError(f"worker {w.index} has no session")
        async with w.session.request(
            method, "http://worker" + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def broadcast(self, method: str, path: str, body: Any = None) -> list[Any]:
        """The same private call to every worker that is up; failures are logged and skipped."""

        async def one(w: Worker) -> Any:
            try:
                return await self.request(w, method, path, body)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning("worker %d: %s %s failed: %s", w.index, method, path, exc)
                return None

        return list(await asyncio.gather(*(one(w) for w in self.workers if w.up)))
