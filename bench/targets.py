"""What the harness compares: a ``Target`` starts a forwarder that takes SRTP from the source and
delivers it to every sink; ``RunningTarget`` is its live process.

Shipped targets: ``CTarget`` (bench/cforward.c) and ``BaselineTarget`` (bench/baseline.py).

=== HOOK: the SFU node target ================================================================
A ``NodeTarget`` (name ``"node"``) plugs in here later; the harness already reports
``node_out_pps_per_cpu``, ``ratio`` (node / bare Python) and ``ratio_vs_c`` (node / C) as soon as a
target named ``"node"`` is in the run (see ``compare.NODE``).  It will:
  * start ``python -m sfu --dev`` (or attach to a running node) and return its pid for CPU sampling;
  * publish one track and subscribe ``fanout`` times through a client that does ICE-lite STUN +
    DTLS-SRTP, so its ``make_keys`` must return the keys that DTLS negotiated (not random ones) and
    ``start`` must tell the source where to send (``RunningTarget.port``) - or the handshake client
    must own the source/sink sockets and hand them to ``bench.traffic``;
  * stop the node (or just detach) in ``RunningTarget.stop``.
Nothing else in the harness needs to change.
===============================================================================================
"""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.cbuild import build_cforward
from bench.proc import READY
from bench.srtpkit import Key, binding_path

#: The directory that holds the ``bench`` package; bench subprocesses run from here.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class Wiring:
    """Everything a forwarder needs to know about the traffic around it."""

    in_key: Key  # what the source protects with
    sink_ports: list[int]  # one per destination, on 127.0.0.1
    sink_keys: list[Key]  # one outbound key per destination
    seconds: float  # hard bound on the forwarder's life

    def __post_init__(self) -> None:
        if len(self.sink_ports) != len(self.sink_keys) or not self.sink_ports:
            raise ValueError("one key per sink port, and at least one sink")


class RunningTarget(Protocol):
    pid: int  # whose CPU time is the forwarder's
    port: int  # where the source sends, on 127.0.0.1

    def stop(self) -> dict[str, Any]:
        """Stop the forwarder (bounded wait) and return its own stats, if it reports any."""
        ...


class Target(Protocol):
    name: str

    def make_keys(self, fanout: int) -> tuple[Key, list[Key]]:
        """The source's key and one key per sink."""
        ...

    def start(self, wiring: Wiring) -> RunningTarget:
        ...


class TargetError(RuntimeError):
    """A target failed to start or to report."""


class ProcessTarget:
    """A forwarder process that prints ``READY <port>`` and, on SIGTERM or its own limits, JSON."""

    def __init__(self, argv: list[str], start_timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=REPO_ROOT)
        self.pid = self.proc.pid
        self.port = read_ready(self.proc, start_timeout)[0]

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return finish_json(self.proc, timeout=10.0)


def read_ready(proc: subprocess.Popen[str], timeout: float) -> list[int]:
    """Wait for the ``READY p[,p...]`` line of a bench process."""

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout)
    sel.close()
    line = proc.stdout.readline() if ready else ""
    if not line.startswith(READY + " "):
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise TargetError(f"{proc.args!r} did not get ready: {line!r} {err[-2000:]}")
    return [int(p) for p in line.split()[1].split(",")]


def finish_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Wait for a bench process to end and parse its last stdout line as JSON."""

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
        raise TargetError(f"{proc.args!r} did not stop in {timeout}s") from None
    lines = [line for line in out.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise TargetError(f"{proc.args!r} exited {proc.returncode}: {err[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _random_keys(fanout: int) -> tuple[Key, list[Key]]:
    return Key.random(), [Key.random() for _ in range(fanout)]


class CTarget:
    """bench/cforward.c, compiled at run time against pylibsrtp's own libsrtp."""

    name = "c"

    def make_keys(self, fanout: int) -> tuple[Key, list[Key]]:
        return _random_keys(fanout)

    def start(self, wiring: Wiring) -> RunningTarget:
        argv = [str(build_cforward()), "--lib", binding_path(), "--port", "0", "--in-key", str(wiring.in_key),
                "--seconds", str(wiring.seconds)]
        for port, key in zip(wiring.sink_ports, wiring.sink_keys, strict=True):
            argv += ["--dest", f"{port}:{key}"]
        return ProcessTarget(argv)


class BaselineTarget:
    """bench/baseline.py: the bare uvloop loop, with recvmmsg/sendmmsg (``io="mmsg"``) or not."""

    def __init__(self, io: str = "mmsg") -> None:
        self.io = io
        self.name = "baseline" if io == "mmsg" else f"baseline_{io}"

    def make_keys(self, fanout: int) -> tuple[Key, list[Key]]:
        return _random_keys(fanout)

    def start(self, wiring: Wiring) -> RunningTarget:
        argv = [sys.executable, "-m", "bench.baseline", "--io", self.io, "--port", "0",
                "--in-key", str(wiring.in_key), "--seconds", str(wiring.seconds)]
        for port, key in zip(wiring.sink_ports, wiring.sink_keys, strict=True):
            argv += ["--dest", f"{port}:{key}"]
        return ProcessTarget(argv)
