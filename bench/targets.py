"""What the harness compares: a target starts a forwarder that takes SRTP from the source and
delivers it to every sink; its running form reports the pid whose CPU time is measured.

Two kinds:
  * ``KeyedTarget`` (``CTarget`` = bench/cforward.c, ``BaselineTarget`` = bench/baseline.py): the
    harness makes pre-shared keys (``make_keys``), opens the sinks, then ``start(Wiring)`` gives
    the forwarder the keys and sink ports; the source sends to ``RunningTarget.port``.
  * ``SessionTarget`` (``NodeTarget`` = the SFU node, ``python -m sfu --dev``): ``launch`` starts
    the node; the source and the sinks then set up their own sessions with it
    (``bench.session``: WHIP for the source, one WHEP per sink; ICE-lite + DTLS-SRTP), so each
    keeps its ICE-verified socket and its DTLS-derived key.  ``RunningSessionTarget`` hands out
    the WHIP/WHEP URLs and tokens (``publisher``/``subscriber``) and, on ``stop``, the node's own
    counters scraped from ``/metrics``.

``bench.compare.run_target`` drives both; figures of the target named ``"node"`` become
``node_out_pps_per_cpu``, ``ratio`` (node / bare Python) and ``ratio_vs_c`` (node / C).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

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


class KeyedTarget(Protocol):
    name: str

    def make_keys(self, fanout: int) -> tuple[Key, list[Key]]:
        """The source's key and one key per sink."""
        ...

    def start(self, wiring: Wiring) -> RunningTarget:
        ...


@dataclass(frozen=True)
class Endpoint:
    """A WHIP or WHEP URL and the bearer token to POST an offer there with."""

    url: str
    token: str


class RunningSessionTarget(Protocol):
    pid: int  # whose CPU time is the forwarder's

    def publisher(self) -> Endpoint:
        """Where the source publishes (WHIP)."""
        ...

    def subscriber(self, index: int) -> Endpoint:
        """Where sink ``index`` subscribes (WHEP)."""
        ...

    def stop(self) -> dict[str, Any]:
        """Stop the forwarder (bounded wait) and return its own stats."""
        ...


@runtime_checkable
class SessionTarget(Protocol):
    name: str

    def launch(self, seconds: float) -> RunningSessionTarget:
        """Start the forwarder; it must stop by itself (or be stopped) within ``seconds``."""
        ...


Target = KeyedTarget | SessionTarget


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


# -- the SFU node ----------------------------------------------------------------------------------

#: The dev-mode API key of ``python -m sfu --dev`` (see sfu/config.py DEV_KEYS).
DEV_KEY_ID = "devkey"
DEV_KEY_SECRET = "secret"  # noqa: S105 - the public dev key, loopback only
BENCH_ROOM = "bench"
_NODE_READY = re.compile(r"ready: (http://\S+)")
_LATENCY_BUCKET = re.compile(r'^levelchat_sfu_forward_latency_seconds_bucket\{le="([^"]+)"\} (\S+)$')
_METRIC = re.compile(r'^levelchat_sfu_([a-z_]+?)(?:_total)?(?:\{(?:kind|reason|direction)="([a-z_]+)"\})? (\S+)$')


class RunningNode:
    """A ``python -m sfu --dev`` process on ephemeral loopback ports."""

    def __init__(
        self, argv: list[str], start_timeout: float = 30.0, env: dict[str, str] | None = None, *, record: bool = False
    ) -> None:
        """``record``: the room is recorded (``node_recorded``): created with ``recording`` on,
        its recording started once the source publishes, into a temporary directory."""
        self._log: IO[str] = tempfile.TemporaryFile("w+", prefix="bench-node-")  # noqa: SIM115
        self.record = record
        self._recordings: tempfile.TemporaryDirectory[str] | None = None
        if record:
            self._recordings = tempfile.TemporaryDirectory(prefix="bench-recordings-")
            env = {**(env or {}), "LEVELCHAT_SFU_RECORDINGS_DIR": self._recordings.name}
        self.recording: dict[str, Any] = {}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=REPO_ROOT,
                                     env={**os.environ, **env} if env else None)
        self.pid = self.proc.pid
        self.url = self._read_url(start_timeout)

    def _read_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        line = self.proc.stdout.readline() if ready else ""
        match = _NODE_READY.search(line)
        if match is None:
            self.proc.kill()
            self.proc.wait(5)
            raise TargetError(f"the node did not get ready: {line!r} {self.log_tail()}")
        return match.group(1)

    def log_tail(self, limit: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read()[-limit:]

    def _token(self, identity: str, scopes: tuple[str, ...] = ("room:join", "room:publish", "room:subscribe")) -> str:
        from levelchat.tokens import ApiKey, mint

        with warnings.catch_warnings():  # PyJWT: the dev key is short (InsecureKeyLengthWarning)
            warnings.simplefilter("ignore")
            return mint(ApiKey(DEV_KEY_ID, DEV_KEY_SECRET), project="levelchat", now_s=time.time(), ttl_s=600,
                        identity=identity, room=BENCH_ROOM, scopes=list(scopes))

    def _post(self, path: str, body: dict[str, Any], scopes: tuple[str, ...]) -> dict[str, Any]:
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {self._token('bench-operator', scopes)}",
                     "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    def publisher(self) -> Endpoint:
        if self.record:
            self._post("/v1/rooms", {"room": BENCH_ROOM, "recording": True}, ("room:create",))
        return Endpoint(f"{self.url}/whip/{BENCH_ROOM}", self._token("bench-source"))

    def subscriber(self, index: int) -> Endpoint:
        if self.record and not self.recording:  # the source publishes by now
            self.recording = self._post(f"/v1/rooms/{BENCH_ROOM}/recording", {}, ("room:join", "recording:write"))
        return Endpoint(f"{self.url}/whep/{BENCH_ROOM}", self._token(f"bench-sink-{index}"))

    def counters(self) -> dict[str, Any]:
        """The node's media counters from ``/metrics`` (non-zero ones; drops by reason)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
        return parse_node_metrics(text)

    def stop(self) -> dict[str, Any]:
        own: dict[str, Any] = {}
        if self.proc.poll() is None:
            try:
                own = self.counters()
            except OSError as exc:
                own = {"metrics_error": str(exc)}
            self.proc.send_signal(signal.SIGINT)  # stop now (SIGTERM would start a graceful drain)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise TargetError(f"the node did not stop in 10 s: {self.log_tail()}") from None
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        warnings = [line for line in self.log_tail(20_000).splitlines() if line.strip()]
        self._log.close()
        if self._recordings is not None:
            own["recording"] = self.recording.get("id")
            self._recordings.cleanup()
        if self.proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
            raise TargetError(f"the node exited {self.proc.returncode}: {warnings[-20:]}")
        own["log_lines"] = len(warnings)
        own["log_tail"] = warnings[-5:]
        return own


def parse_node_metrics(text: str) -> dict[str, Any]:
    """``packets_received.video`` -> ``in_packets`` etc. from the node's Prometheus text."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match is None:
            continue
        name, label, value = match.groups()
        values[f"{name}.{label}" if label else name] = float(value)
    drops = {k.split(".", 1)[1]: int(v) for k, v in values.items() if k.startswith("packets_dropped.") and v}
    buckets: list[tuple[float, int]] = []
    for line in text.splitlines():
        bucket = _LATENCY_BUCKET.match(line)
        if bucket is not None:
            buckets.append((float(bucket.group(1)), int(float(bucket.group(2)))))
    return {
        "in_packets": int(values.get("packets_received.video", 0)),
        "out_packets": int(values.get("packets_forwarded.video", 0)),
        "rtcp_in": int(values.get("packets_received.rtcp", 0)),
        "rtcp_out": int(values.get("packets_forwarded.rtcp", 0)),
        "keyframe_requests": int(values.get("keyframe_requests", 0)),
        "twcc_feedback": int(values.get("twcc_feedback", 0)),
        "drops": drops,
        "srtp_errors": {k.split(".", 1)[1]: int(v) for k, v in values.items()
                        if k.startswith("srtp_errors.") and v},
        "forward_latency": latency_summary(buckets),
    }


def latency_summary(buckets: list[tuple[float, int]]) -> dict[str, float | int | None]:
    """The node's own receive-to-sent histogram (1 datagram in 64 is timed): sample count and the
    bucket bound (ms) that holds the median / 99th / 99.9th percentile (None: past the last bound)."""
    buckets = sorted(buckets)
    count = buckets[-1][1] if buckets else 0
    out: dict[str, float | int | None] = {"samples": count}
    for name, q in (("p50_le_ms", 0.5), ("p99_le_ms", 0.99), ("p999_le_ms", 0.999)):
        want = q * count
        bound = next((le for le, c in buckets if c >= want), None) if count else None
        out[name] = None if bound is None or bound == float("inf") else round(bound * 1000, 3)
    return out


class NodeTarget:
    """The LevelChat SFU node, ``python -m sfu --dev`` on ephemeral ports, sessions over WHIP/WHEP."""

    name = "node"
    #: Flood at most this many in-packets/s: at 150k/s (what the source can push) a node that
    #: forwards ~40-60k/s and is descheduled for ~0.25 s on a busy box loses >32k packets in a
    #: row, and libsrtp's rollover guess then fails (``srtp_errors`` in its report).
    max_flood_in_pps = 60_000.0

    def __init__(
        self, log_level: str = "WARNING", *, name: str = "node", env: dict[str, str] | None = None, record: bool = False
    ) -> None:
        """``name``, ``env`` and ``record``: a variant of the node side by side with it
        (``node_sysmalloc``: ``PYTHONMALLOC=malloc``, what the deploy units set;
        ``node_recorded``: the room is recorded)."""
        self.log_level = log_level
        self.name = name
        self.env = env or {}
        self.record = record

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "sfu", "--dev", "--http-port", "0", "--media-port", "0",
                "--log-level", self.log_level]

    def launch(self, seconds: float) -> RunningSessionTarget:
        return RunningNode(self.argv(), env=self.env, record=self.record)
