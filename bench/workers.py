"""``python -m bench workers``: does forwarding scale with worker processes?

For each worker count N (``--workers 1,2``): start ``python -m sfu --dev --workers N`` (N = 1: a
plain node, no front), open N rooms, each with one WHIP source and ``--fanout`` WHEP sinks
(``bench.traffic``, the same processes as ``bench compare``), so each worker carries one room at
the same load; then let every source send ``--in-pps`` packets/s for ``--seconds``.

Measured per worker, over the traffic window: video packets it forwarded (its
``levelchat_sfu_packets_forwarded_total{kind="video"}`` from the node's ``/metrics``, per
``worker`` label) and its CPU seconds (``/proc/<pid>/task/*/schedstat`` of the worker process).
``out_pps_per_cpu`` per worker = forwarded / CPU seconds.  ``ratio`` = the mean per-worker figure
with the largest N over the one with N = 1 (1.0: no cross-worker cost).  The front's CPU (proxying
is idle during traffic: it polls the workers twice a second) and the spread of rooms, packets and
CPU over the workers are reported alongside.

Unpinned: with 2 cores, the workers share them with the sources and sinks, so the per-worker
figure includes the cost of that contention; run ``--repeat`` times to see the noise.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Any

from bench.compare import Workload, _sink_argv, _source_argv, _spawn, kill_all
from bench.fmt import grid, num
from bench.proc import cpu_seconds
from bench.targets import DEV_KEY_ID, DEV_KEY_SECRET, RunningNode, TargetError, finish_json, read_ready

VIDEO_FORWARDED = "levelchat_sfu_packets_forwarded_total"


@dataclass(frozen=True)
class WorkersRun:
    workers: int
    fanout: int = 16
    seconds: float = 10.0
    in_pps: float = 1000.0  # per room (per worker)
    size: int = 1200

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 16:
            raise ValueError(f"workers must be 1..16, got {self.workers}")
        if self.in_pps <= 0:
            raise ValueError("in_pps must be positive: the workers bench is paced")

    @property
    def work(self) -> Workload:
        return Workload(fanout=self.fanout, seconds=self.seconds, in_pps=self.in_pps, size=self.size, pin=False)


def _token(room: str, identity: str) -> str:
    from levelchat.tokens import ApiKey, mint

    with warnings.catch_warnings():  # PyJWT: the dev key is short
        warnings.simplefilter("ignore")
        return mint(ApiKey(DEV_KEY_ID, DEV_KEY_SECRET), project="levelchat", now_s=time.time(), ttl_s=600,
                    identity=identity, room=room, scopes=["room:join", "room:publish", "room:subscribe"])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
        body = resp.read().decode()
    return json.loads(body) if body.startswith("{") else body


def forwarded_by_worker(metrics_text: str) -> dict[int, float]:
    """Video packets forwarded, by worker index (a plain node's samples have no label: worker 0)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[int, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == VIDEO_FORWARDED and s.labels.get("kind") == "video":
                index = int(s.labels.get("worker", "0"))
                out[index] = out.get(index, 0.0) + s.value
    return out


def worker_pids(node: RunningNode, workers: int) -> dict[int, int]:
    if workers == 1:
        return {0: node.pid}
    health = _get(node.url + "/healthz")
    return {int(w["index"]): int(w["pid"]) for w in health["workers"]}


def run_once(run: WorkersRun) -> dict[str, Any]:
    work = run.work
    bound = work.source_bound_s + 10.0
    argv = [sys.executable, "-m", "sfu", "--dev", "--http-port", "0", "--media-port", "0",
            "--log-level", "WARNING", "--workers", str(run.workers)]
    node = RunningNode(argv)
    procs: list[subprocess.Popen[str]] = []
    sources: list[subprocess.Popen[str]] = []
    sinks: list[subprocess.Popen[str]] = []
    try:
        for r in range(run.workers):
            room = f"bench-w{r}"
            src = _spawn([*_source_argv(work), "--whip", f"{node.url}/whip/{room}",
                          "--token", _token(room, "bench-source")], stdin=True)
            procs.append(src)
            sources.append(src)
            read_ready(src, timeout=30)
            sink_argv = _sink_argv(work, bound)
            for i in range(run.fanout):
                sink_argv += ["--whep", f"{node.url}/whep/{room}", "--token", _token(room, f"bench-sink-{i}")]
            snk = _spawn(sink_argv)
            procs.append(snk)
            sinks.append(snk)
            read_ready(snk, timeout=30)
        time.sleep(1.2)  # the front's next status poll: rooms per worker
        spread = _spread(node, run.workers)
        pids = worker_pids(node, run.workers)
        cpu0 = {i: cpu_seconds(pid) for i, pid in pids.items()}
        front0 = cpu_seconds(node.pid) if run.workers > 1 else 0.0
        fw0 = forwarded_by_worker(_get(node.url + "/metrics"))
        t0 = time.monotonic()
        for src in sources:
            assert src.stdin is not None
            src.stdin.write("go\n")
            src.stdin.flush()
        src_out = [finish_json(s, timeout=work.seconds + 20) for s in sources]
        snk_out = [finish_json(s, timeout=bound + 10) for s in sinks]
        window = time.monotonic() - t0
        cpu = {i: cpu_seconds(pid) - cpu0[i] for i, pid in pids.items()}
        front_cpu = cpu_seconds(node.pid) - front0 if run.workers > 1 else 0.0
        fw1 = forwarded_by_worker(_get(node.url + "/metrics"))
    finally:
        try:
            node.stop()
        except TargetError:
            pass
        kill_all(*procs)
    per_worker = []
    for i in sorted(pids):
        forwarded = fw1.get(i, 0.0) - fw0.get(i, 0.0)
        per_worker.append({
            "worker": i,
            "rooms": spread.get(i),
            "forwarded": int(forwarded),
            "cpu_s": round(cpu[i], 4),
            "cpu_share": round(cpu[i] / window, 4) if window > 0 else None,
            "out_pps_per_cpu": round(forwarded / cpu[i], 1) if cpu[i] > 0 else None,
        })
    sent = sum(int(s["sent"]) for s in src_out)
    delivered = sum(int(s["received"]) for s in snk_out)
    figures = [w["out_pps_per_cpu"] for w in per_worker if w["out_pps_per_cpu"]]
    return {
        "workers": run.workers,
        "per_worker": per_worker,
        "out_pps_per_cpu_per_worker": round(statistics.fmean(figures), 1) if figures else None,
        "total_forwarded": sum(w["forwarded"] for w in per_worker),
        "front_cpu_s": round(front_cpu, 4),
        "window_s": round(window, 3),
        "sent": sent,
        "delivered": delivered,
        "loss": round(1 - delivered / (sent * run.fanout), 6) if sent else None,
    }


def _spread(node: RunningNode, workers: int) -> dict[int, int]:
    """Open rooms per worker, as the front reports them (a plain node has the one room)."""
    if workers == 1:
        return {0: 1}
    health = _get(node.url + "/healthz")
    return {int(w["index"]): int(w["rooms"]) for w in health["workers"]}


def bench_workers(counts: list[int], *, fanout: int, seconds: float, in_pps: float, repeat: int = 1,
                  size: int = 1200) -> dict[str, Any]:
    """Runs alternate between the worker counts (1, 2, 1, 2, ...) so slow drifts of the shared
    machine's load hit both; each figure is the median over ``repeat`` runs."""
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for _ in range(repeat):
        for n in counts:
            runs[n].append(run_once(WorkersRun(workers=n, fanout=fanout, seconds=seconds, in_pps=in_pps, size=size)))
    medians: dict[int, float | None] = {}
    for n, rs in runs.items():
        values = [r["out_pps_per_cpu_per_worker"] for r in rs if r["out_pps_per_cpu_per_worker"]]
        medians[n] = round(statistics.median(values), 1) if values else None
    base, top = medians.get(min(counts)), medians.get(max(counts))
    ratio = round(top / base, 4) if base and top else None
    spread = {
        n: [round(min(w["out_pps_per_cpu"] or 0 for w in r["per_worker"]) / max(1.0, max(w["out_pps_per_cpu"] or 0 for w in r["per_worker"])), 3)
            for r in rs]
        for n, rs in runs.items()
    }
    return {
        "workload": {"fanout": fanout, "seconds": seconds, "in_pps_per_room": in_pps, "size": size,
                     "repeat": repeat, "workers": counts},
        "out_pps_per_cpu_per_worker": {str(n): v for n, v in medians.items()},
        "ratio": ratio,
        "target_ratio": 0.9,
        "runs_ratio_min_max": _ratio_range(runs, min(counts), max(counts)),
        "worker_balance": {str(n): v for n, v in spread.items()},
        "runs": {str(n): rs for n, rs in runs.items()},
    }


def _ratio_range(runs: dict[int, list[dict[str, Any]]], lo: int, hi: int) -> list[float] | None:
    a = [r["out_pps_per_cpu_per_worker"] for r in runs.get(lo, []) if r["out_pps_per_cpu_per_worker"]]
    b = [r["out_pps_per_cpu_per_worker"] for r in runs.get(hi, []) if r["out_pps_per_cpu_per_worker"]]
    if not a or not b or lo == hi:
        return None
    return [round(min(b) / max(a), 4), round(max(b) / min(a), 4)]


def table(result: dict[str, Any]) -> str:
    rows = []
    for n, rs in result["runs"].items():
        for k, r in enumerate(rs):
            for w in r["per_worker"]:
                rows.append([str(n), str(k), str(w["worker"]), num(w["rooms"] or 0), num(w["forwarded"]),
                             num(w["cpu_s"], "s"), num(w["out_pps_per_cpu"], "pps"), num(r["front_cpu_s"], "s"),
                             num(r["loss"], "loss")])
    header = ("workers", "run", "worker", "rooms", "forwarded", "cpu s", "out pps/CPU-s", "front cpu s", "loss")
    medians = ", ".join(f"{n} workers {num(v, 'pps')}" for n, v in result["out_pps_per_cpu_per_worker"].items())
    lo_hi = result["runs_ratio_min_max"]
    spread = " to ".join(num(v, "ratio") for v in lo_hi) if isinstance(lo_hi, list | tuple) else num(lo_hi)
    return "\n".join([
        grid(header, rows),
        f"median out pps/CPU-s per worker: {medians}; ratio {num(result['ratio'], 'ratio')} "
        f"(target >= {num(result['target_ratio'], 'ratio')}); run-to-run ratio range {spread}",
    ])
