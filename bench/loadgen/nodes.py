"""Where the load goes and what it costs there: join tokens, a spawned node, node CPU/RSS/counters.

Tokens come from one of two places:
  * ``LocalTokens``: a node URL and an API key (the spawned dev node's ``devkey``/``secret`` by
    default): the generator mints its own join tokens.
  * ``ControlPlaneTokens``: a control-plane URL (or several replicas, failed over) and an admin key: ``POST /v1/tokens`` per
    identity (scope ``room:admin`` on an admin token minted locally) answers the token and the URL
    of the node that holds the room, placing the room first if needed.

``NodeProbe`` samples a node: CPU seconds and RSS from ``/proc/<pid>`` when the harness spawned it,
else from the node's ``/metrics`` (``levelchat_sfu_process_cpu_seconds_total``,
``..._process_resident_memory_bytes``, or the unprefixed standard names); forwarded and received
media packets from ``levelchat_sfu_packets_{forwarded,received}_total`` (audio + video).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.proc import cpu_seconds
from bench.targets import DEV_KEY_ID, DEV_KEY_SECRET, NodeTarget, RunningNode

SCOPES = ["room:join", "room:publish", "room:subscribe"]
TOKEN_TTL_S = 3600
_SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$")


def _loopback(url: str) -> str:
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"the load generator only talks to loopback URLs, got {url!r}")
    return url.rstrip("/")


class TokenSource(Protocol):
    def token(self, room: str, identity: str) -> tuple[str, str]:
        """(node base URL, join token) for ``identity`` in ``room``."""
        ...


def _mint(key_id: str, secret: str, project: str, room: str, identity: str, scopes: list[str]) -> str:
    from levelchat.tokens import ApiKey, mint

    with warnings.catch_warnings():  # PyJWT warns about the short dev secret
        warnings.simplefilter("ignore")
        return mint(ApiKey(key_id, secret), project=project, now_s=time.time(), ttl_s=TOKEN_TTL_S,
                    identity=identity, room=room, scopes=scopes)


@dataclass(frozen=True)
class LocalTokens:
    node_url: str
    key_id: str = DEV_KEY_ID
    secret: str = DEV_KEY_SECRET
    project: str = "levelchat"

    def token(self, room: str, identity: str) -> tuple[str, str]:
        return _loopback(self.node_url), _mint(self.key_id, self.secret, self.project, room, identity, SCOPES)


@dataclass
class ControlPlaneTokens:
    """``control_url`` may name several control-plane replicas, comma-separated: a request that
    gets no answer or a 5xx goes to the next one at once, and later requests stay with the one
    that answered."""

    control_url: str
    key_id: str
    secret: str
    project: str = "levelchat"
    _current: int = field(default=0, repr=False)

    @property
    def control_urls(self) -> list[str]:
        return [_loopback(u.strip()) for u in self.control_url.split(",") if u.strip()]

    def token(self, room: str, identity: str) -> tuple[str, str]:
        admin = _mint(self.key_id, self.secret, self.project, room, "loadgen-admin", ["room:admin"])
        body = json.dumps({"room": room, "identity": identity, "scopes": SCOPES, "ttl_s": TOKEN_TTL_S}).encode()
        urls = self.control_urls
        if not urls:
            raise ValueError("no control-plane URL given")
        failure: Exception | None = None
        for step in range(len(urls)):
            index = (self._current + step) % len(urls)
            req = urllib.request.Request(f"{urls[index]}/v1/tokens", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {admin}",
                                                  "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
                    answer = json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise
                failure = exc
                continue
            except OSError as exc:  # no answer (URLError, refused, timed out): the next replica
                failure = exc
                continue
            self._current = index
            return _loopback(str(answer["url"])), str(answer["token"])
        assert failure is not None
        raise failure


# -- the node ----------------------------------------------------------------------------------------

#: what the spawned node is told beyond ``--dev``: no rate limits or caps that a load test trips over
SPAWN_CONFIG = """\
rate_limit_ip_per_s = 0.0
rate_limit_key_per_s = 0.0
default_max_participants = 5000
max_participants = 10000
max_rooms = 1000
"""


def spawn_node(log_level: str = "WARNING", workers: int = 1) -> tuple[RunningNode, Path]:
    """``python -m sfu --dev`` on ephemeral loopback ports with ``SPAWN_CONFIG`` (``workers`` > 1: a
    front and that many forwarding worker processes); the caller stops it."""
    if not 1 <= workers <= 16:
        raise ValueError(f"workers must be 1..16, got {workers}")
    cfg = Path(tempfile.mkstemp(prefix="loadgen-node-", suffix=".toml")[1])
    cfg.write_text(SPAWN_CONFIG, encoding="utf-8")
    extra = ["--workers", str(workers)] if workers > 1 else []
    return RunningNode([*NodeTarget(log_level).argv(), "--config", str(cfg), *extra]), cfg


@dataclass(frozen=True)
class ProcSample:
    """One process of a node: the node itself, or a multi-worker node's front or one of its workers."""

    role: str  # "node", "front", "worker 0", ...
    pid: int
    cpu_s: float | None
    rss_bytes: int | None
    forwarded: int | None  # media packets this worker forwarded (None: the front, or not known)


@dataclass(frozen=True)
class NodeSample:
    cpu_s: float | None  # every process of the node summed
    rss_bytes: int | None  # every process of the node summed
    forwarded: int  # media packets the node sent to subscribers (audio + video)
    received: int  # media packets it received from publishers
    at: float  # time.monotonic() of the sample
    procs: tuple[ProcSample, ...] = ()  # per process, when the harness spawned the node


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for the samples the probe needs (kind labels kept)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, value = m.groups()
        out[f"{name}{{{labels}}}" if labels else name] = float(value)
    return out


def metric_sum(values: dict[str, float], name: str, kinds: tuple[str, ...] = (),
               worker: str | None = None) -> float | None:
    """Sum of every sample of ``name`` (any labels; ``kinds``: only these ``kind`` labels; ``worker``:
    only that worker's samples); None when there is none."""
    total: float | None = None
    for key, value in values.items():
        base, _, labels = key.partition("{")
        if base != name:
            continue
        if kinds and not any(f'kind="{k}"' in labels for k in kinds):
            continue
        if worker is not None and f'worker="{worker}"' not in labels:
            continue
        total = (total or 0.0) + value
    return total


FORWARDED = "levelchat_sfu_packets_forwarded_total"
RECEIVED = "levelchat_sfu_packets_received_total"
MEDIA = ("audio", "video")


class NodeProbe:
    """Reads one node's CPU, RSS and media counters; ``pid`` when the process is ours.

    A multi-worker node (its ``/healthz`` lists ``workers``) is its front plus every worker
    process: CPU and RSS are summed over them and reported per process (``NodeSample.procs``),
    packets forwarded per worker from the front's ``/metrics`` (``worker`` label).
    """

    def __init__(self, url: str, pid: int | None = None) -> None:
        self.url = _loopback(url)
        self.pid = pid

    def _workers(self) -> list[tuple[int, int]]:
        """(index, pid) of a multi-worker node's workers; [] for a plain node."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as resp:  # noqa: S310
                health = json.loads(resp.read())
        except (OSError, ValueError):
            return []
        return [(int(w["index"]), int(w["pid"])) for w in health.get("workers", ()) if w.get("pid")]

    def sample(self) -> NodeSample:
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:  # noqa: S310
                values = parse_metrics(resp.read().decode())
        except OSError:
            values = {}
        fwd = metric_sum(values, FORWARDED, MEDIA) or 0.0
        rx = metric_sum(values, RECEIVED, MEDIA) or 0.0
        cpu: float | None
        rss: int | None
        procs: list[ProcSample] = []
        if self.pid is not None:
            workers = self._workers()
            procs.append(ProcSample("front" if workers else "node", self.pid, _cpu(self.pid), _rss_bytes(self.pid),
                                    None if workers else int(fwd)))
            for index, pid in workers:
                done = metric_sum(values, FORWARDED, MEDIA, worker=str(index))
                procs.append(ProcSample(f"worker {index}", pid, _cpu(pid), _rss_bytes(pid),
                                        None if done is None else int(done)))
            cpus = [p.cpu_s for p in procs]
            cpu = None if any(c is None for c in cpus) else sum(c or 0.0 for c in cpus)
            rss = sum(p.rss_bytes or 0 for p in procs) or None
        else:  # a multi-worker node's front reports its own and each worker's (``worker`` label): all summed
            cpu = metric_sum(values, "levelchat_sfu_process_cpu_seconds_total")
            if cpu is None:
                cpu = metric_sum(values, "process_cpu_seconds_total")
            rss_f = metric_sum(values, "levelchat_sfu_process_resident_memory_bytes")
            if rss_f is None:
                rss_f = metric_sum(values, "process_resident_memory_bytes")
            rss = None if rss_f is None else int(rss_f)
        return NodeSample(cpu, rss, int(fwd), int(rx), time.monotonic(), tuple(procs))


def _cpu(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (ProcessLookupError, OSError):
        return None


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
