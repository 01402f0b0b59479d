"""The comparison harness: same SRTP traffic through each target, one after the other.

For each target: set up (keyed targets: start the sinks, one socket per destination, then the
forwarder with their ports and keys, then the source; session targets such as the SFU node:
start the node, then the source, which publishes over WHIP, then the sinks, which subscribe over
WHEP), pin the forwarder to its own core (``pin``), sample its CPU time, tell the source to go,
wait for the sinks to drain, sample the CPU time again, stop it.  ``out_pps_per_cpu`` = packets
delivered to the sinks / forwarder CPU seconds over the traffic window (``bench.proc.cpu_seconds``:
exact, from /proc schedstat); session setup is outside that window.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from bench.fmt import grid, num
from bench.proc import cpu_seconds
from bench.targets import (
    REPO_ROOT,
    BaselineTarget,
    CTarget,
    KeyedTarget,
    NodeTarget,
    SessionTarget,
    Target,
    TargetError,
    Wiring,
    finish_json,
    read_ready,
)

#: Name of the SFU node target (``NodeTarget`` in bench/targets.py); its figures get the ratios.
NODE = "node"


@dataclass(frozen=True)
class Workload:
    fanout: int
    seconds: float = 3.0
    in_pps: float = 0.0  # 0: as fast as the source can push
    size: int = 1200
    verify_every: int = 0  # 0: automatic (every packet when it is cheap enough)
    drain_ms: int = 1000  # sinks stop after this much silence (a busy box stalls processes for 100s of ms)
    pin: bool = True
    #: Flood runs send at most this many out-packets' worth per second (in-rate = this / fanout):
    #: roughly 2x what the fastest forwarder handles, so the overload is spread evenly.  An
    #: unbounded flood makes the forwarder drop >32k packets in a row, libsrtp's rollover-counter
    #: guess goes wrong and every later packet fails authentication.
    flood_out_pps: float = 600_000.0
    #: A per-target bound on the flood's in-rate (0: none), set by ``run_target`` from the target's
    #: ``max_flood_in_pps``: a forwarder that falls far behind drops long runs in its socket
    #: queue whenever it is descheduled, and a run of >32k lost packets desyncs SRTP (above).
    max_flood_in_pps: float = 0.0
    #: every packet carries a transport-wide seq extension block (all targets forward it as it
    #: is); the node's publisher negotiates transport-cc, so the node also records each packet's
    #: arrival and sends transport-cc feedback every 100 ms: that cost is in its figure
    twcc: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.fanout <= 64:
            raise ValueError(f"fanout must be 1..64, got {self.fanout}")
        if not 0 < self.seconds <= 600:
            raise ValueError(f"seconds must be in (0, 600], got {self.seconds}")
        if self.in_pps < 0:
            raise ValueError(f"in_pps must be >= 0, got {self.in_pps}")

    @property
    def source_pps(self) -> float:
        """What the source is asked for: ``in_pps``, or the flood cap when flooding."""
        if self.in_pps > 0:
            return self.in_pps
        flood = self.flood_out_pps / self.fanout
        return min(flood, self.max_flood_in_pps) if self.max_flood_in_pps > 0 else flood

    @property
    def count(self) -> int:
        """Packets the source sends (flooding: a cap it may not reach before ``seconds``)."""
        return max(1, int(self.source_pps * self.seconds))

    @property
    def source_bound_s(self) -> float:
        """The source's own time bound: the duration when flooding, some slack when paced."""
        return self.seconds if self.in_pps <= 0 else self.seconds * 1.5 + 1.0

    @property
    def sample_every(self) -> int:
        """Sinks decrypt and check every V-th packet, so that about 20k/s get checked in total."""
        if self.verify_every:
            return self.verify_every
        if self.in_pps <= 0:
            return 16
        return max(1, math.ceil(self.in_pps * self.fanout / 20_000))


def _spawn(argv: list[str], stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)


def pin(pid: int, cpu: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(pid, {cpus[cpu % len(cpus)]})


class Stoppable(Protocol):
    pid: int

    def stop(self) -> dict[str, Any]: ...


@dataclass
class RunSetup:
    """The processes of one run once every session is up and the source waits for its go."""

    running: Stoppable
    sinks: subprocess.Popen[str]
    source: subprocess.Popen[str]

    def pin(self) -> None:
        """The forwarder alone on the second CPU, source and sinks on the first."""
        pin(self.running.pid, 1)
        pin(self.sinks.pid, 0)
        pin(self.source.pid, 0)

    def go(self) -> None:
        """Let the source start sending."""
        assert self.source.stdin is not None
        self.source.stdin.write("go\n")
        self.source.stdin.flush()


def _sink_argv(work: Workload, bound: float) -> list[str]:
    return [sys.executable, "-m", "bench.traffic", "sink", "--expect", str(work.count),
            "--seconds", str(bound), "--idle-ms", str(work.drain_ms),
            "--verify-every", str(work.sample_every), "--size", str(work.size)] + (["--twcc"] if work.twcc else [])


def _source_argv(work: Workload) -> list[str]:
    return [sys.executable, "-m", "bench.traffic", "source", "--count", str(work.count),
            "--pps", str(work.source_pps), "--seconds", str(work.source_bound_s), "--size", str(work.size),
            "--wait-go"] + (["--twcc"] if work.twcc else [])


def kill_all(*procs: subprocess.Popen[str] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _setup_keyed(target: KeyedTarget, work: Workload, bound: float, procs: list[subprocess.Popen[str]]) -> RunSetup:
    in_key, sink_keys = target.make_keys(work.fanout)
    sink_argv = _sink_argv(work, bound)
    for key in sink_keys:
        sink_argv += ["--key", str(key)]
    sinks = _spawn(sink_argv)
    procs.append(sinks)
    ports = read_ready(sinks, timeout=20)
    running = target.start(Wiring(in_key, ports, sink_keys, bound))
    try:
        source = _spawn([*_source_argv(work), "--port", str(running.port), "--key", str(in_key)], stdin=True)
        procs.append(source)
        read_ready(source, timeout=20)
    except BaseException:
        stop_quietly(running)
        raise
    return RunSetup(running, sinks, source)


def _setup_sessions(target: SessionTarget, work: Workload, bound: float,
                    procs: list[subprocess.Popen[str]]) -> RunSetup:
    running = target.launch(bound)
    try:
        pub = running.publisher()
        source = _spawn([*_source_argv(work), "--whip", pub.url, "--token", pub.token], stdin=True)
        procs.append(source)
        read_ready(source, timeout=30)  # published: WHEP needs a publisher in the room
        sink_argv = _sink_argv(work, bound)
        for i in range(work.fanout):
            sub = running.subscriber(i)
            sink_argv += ["--whep", sub.url, "--token", sub.token]
        sinks = _spawn(sink_argv)
        procs.append(sinks)
        read_ready(sinks, timeout=30)
    except BaseException:
        stop_quietly(running)
        raise
    return RunSetup(running, sinks, source)


def stop_quietly(running: Stoppable) -> None:
    try:
        running.stop()
    except TargetError:
        pass


def target_workload(target: Target, work: Workload) -> Workload:
    """``work`` with the target's own flood bound applied (``max_flood_in_pps``, if it has one)."""
    cap = float(getattr(target, "max_flood_in_pps", 0.0))
    return replace(work, max_flood_in_pps=cap) if work.in_pps <= 0 and cap > 0 else work


def setup_run(target: Target, work: Workload, bound: float, procs: list[subprocess.Popen[str]]) -> RunSetup:
    """Start the forwarder, the sinks and the source (which then waits for ``go``); every process
    started is appended to ``procs`` so the caller can kill them whatever happens."""
    if isinstance(target, SessionTarget):
        return _setup_sessions(target, work, bound, procs)
    return _setup_keyed(target, work, bound, procs)


def run_target(target: Target, work: Workload) -> dict[str, Any]:
    """One measured run of one target; returns its figures."""
    work = target_workload(target, work)
    bound = work.source_bound_s + 10.0
    procs: list[subprocess.Popen[str]] = []
    setup: RunSetup | None = None
    try:
        setup = setup_run(target, work, bound, procs)
        running, sinks, source = setup.running, setup.sinks, setup.source
        if work.pin:
            setup.pin()
        cpu0 = cpu_seconds(running.pid)
        t0 = time.monotonic()
        setup.go()
        src = finish_json(source, timeout=work.seconds + 20)
        snk = finish_json(sinks, timeout=bound + 10)
        cpu = cpu_seconds(running.pid) - cpu0
        window = time.monotonic() - t0
        own = running.stop()
        setup = None
    finally:
        if setup is not None:
            stop_quietly(setup.running)
        kill_all(*procs)
    delivered = int(snk["received"])
    expected = int(src["sent"]) * work.fanout
    return {
        "target": target.name,
        "in_pps": work.in_pps,
        "out_pps_per_cpu": round(delivered / cpu, 1) if cpu > 0 else None,
        "forwarded_pps_per_cpu": round(own["out_packets"] / cpu, 1) if cpu > 0 and "out_packets" in own else None,
        "delivered": delivered,
        "sent": int(src["sent"]),
        "loss": round(1 - delivered / expected, 6) if expected else None,
        "latency_ms": snk["latency_ms"],
        "forwarder_cpu_s": round(cpu, 6),
        "forwarder_cpu_share": round(cpu / window, 4) if window > 0 else None,
        "sample_every": work.sample_every,
        "verified": snk["verified"],
        "corrupt": snk["corrupt"],
        "rejected_at_sinks": snk["rejected"],
        "gaps_at_sinks": snk["gaps"],
        "late_at_sinks": snk["late"],
        "sink_cpu_s": snk["cpu_s"],
        "source_cpu_s": src["cpu_s"],
        "source_pps": src["pps"],
        "source_asked_pps": round(work.source_pps, 1),
        "forwarder_reported": own,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


#: Paced phase rate as a share of the slowest target's capacity (so every target keeps up).
PACED_LOAD = 0.5
#: What the Python source can push on a shared core; the paced rate never asks for more.
SOURCE_MAX_PPS = 120_000.0


def paced_rate(capacity_out_pps_per_cpu: list[float | None], fanout: int) -> float:
    """A common in-rate for the paced phase: half what the slowest target forwards on one core."""
    known = [c for c in capacity_out_pps_per_cpu if c]
    if not known:
        return 1000.0
    return round(min(SOURCE_MAX_PPS, PACED_LOAD * min(known) / fanout), 1)


#: ``node_dualstack``: the node's media port on ``::`` (dual-stack), advertising 127.0.0.1, so the
#: bench's IPv4 packets take the IPv6 socket's v4-mapped path (issue 13)
DUAL_STACK_ENV = {"LEVELCHAT_SFU_MEDIA_HOST": "::", "LEVELCHAT_SFU_DEV_ALLOW_REMOTE": "true",
                  "LEVELCHAT_SFU_PUBLIC_IP": "127.0.0.1"}

#: How the tables name the targets.
LABELS = {NODE: "node (SFU)", "baseline": "bare Python", "c": "C", "baseline_plain": "bare Python, plain I/O",
          "node_sysmalloc": "node, PYTHONMALLOC=malloc",
          "node_dualstack": "node on :: (IPv4 v4-mapped)"}


def label(name: str) -> str:
    return LABELS.get(name, name)


Progress = Callable[[str], None]


def _run_all(targets: list[Target], work: Workload, phase: str, progress: Progress | None,
             done: int, total: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(targets):
        if progress:
            rate = "flood" if work.in_pps <= 0 else f"{num(work.in_pps, 'pps')} in pps"
            progress(f"[{done + i + 1}/{total}] {phase} run, {label(t.name)}: fan-out {work.fanout}, {rate}, "
                     f"{work.seconds:g} s ...")
        r = out[t.name] = run_target(t, work)
        if progress:
            progress(f"    {num(r['out_pps_per_cpu'], 'pps')} out pps per CPU-s, loss {num(r['loss'], 'loss')}, "
                     f"p99 {num(r['latency_ms']['p99'], 'ms')} ms")
    return out


def compare(targets: list[Target], work: Workload, mode: str = "both",
            progress: Progress | None = None) -> dict[str, Any]:
    """Run every target with the same traffic and assemble the contract's JSON object.

    ``mode`` ``capacity``: one flood run per target (``work.in_pps`` ignored), whose delivered
    out-packets per forwarder CPU-second are the headline; loss and latency then describe an
    overloaded forwarder.  ``paced``: one run per target at ``work.in_pps``.  ``both`` (default):
    the capacity runs give ``out_pps_per_cpu``, then paced runs at ``work.in_pps`` (or, when it is
    0, half the slowest target's capacity) give ``loss`` and ``latency_ms`` under the same load.
    """
    if mode not in ("both", "capacity", "paced"):
        raise ValueError(f"mode must be both, capacity or paced, got {mode!r}")
    if mode == "paced" and work.in_pps <= 0:
        raise ValueError("paced mode needs in_pps > 0")
    total = len(targets) * (2 if mode == "both" else 1)
    capacity: dict[str, dict[str, Any]] = {}
    paced: dict[str, dict[str, Any]] = {}
    if mode in ("both", "capacity"):
        flood = replace(work, in_pps=0.0)
        capacity = _run_all(targets, flood, "capacity", progress, 0, total)
    paced_work = work
    if mode == "both":
        rate = work.in_pps or paced_rate([r["out_pps_per_cpu"] for r in capacity.values()], work.fanout)
        # unpinned: at half load the forwarder leaves room on its core that the sinks can use
        paced_work = replace(work, in_pps=rate, pin=False)
    if mode in ("both", "paced"):
        paced = _run_all(targets, paced_work, "paced", progress, total - len(targets), total)

    runs: dict[str, dict[str, Any]] = {}
    for t in targets:
        head = capacity.get(t.name) or paced[t.name]
        tail = paced.get(t.name) or capacity[t.name]
        runs[t.name] = {
            "out_pps_per_cpu": head["out_pps_per_cpu"],
            "loss": tail["loss"],
            "latency_ms": tail["latency_ms"],
            "capacity_run": capacity.get(t.name),
            "paced_run": paced.get(t.name),
        }

    def pps(name: str) -> float | None:
        run = runs.get(name)
        return run["out_pps_per_cpu"] if run else None

    primary = NODE if NODE in runs else ("baseline" if "baseline" in runs else next(iter(runs)))
    return {
        "workload": asdict(work) | {"mode": mode, "paced_in_pps": paced_work.in_pps if paced else None},
        "node_out_pps_per_cpu": pps(NODE),
        "baseline_out_pps_per_cpu": pps("baseline"),
        "c_out_pps_per_cpu": pps("c"),
        "ratio": _ratio(pps(NODE), pps("baseline")),
        "ratio_vs_c": _ratio(pps(NODE), pps("c")),
        "baseline_vs_c": _ratio(pps("baseline"), pps("c")),
        "primary": primary,
        "loss": runs[primary]["loss"],
        "latency_ms": runs[primary]["latency_ms"],
        "targets": runs,
    }


def default_targets(names: list[str]) -> list[Target]:
    """Targets by name: ``node`` (the SFU node), ``c``, ``baseline`` (mmsg), ``baseline_plain``,
    ``node_sysmalloc`` (the node with ``PYTHONMALLOC=malloc``), ``node_dualstack`` (the node's
    media socket dual-stack on ``::``, the bench's IPv4 traffic arriving v4-mapped), ``node_recorded``
    (the node with the room recorded: what recording costs the forwarding process)."""
    known: dict[str, Target] = {NODE: NodeTarget(), "c": CTarget(), "baseline": BaselineTarget("mmsg"),
                                "baseline_plain": BaselineTarget("plain"),
                                "node_sysmalloc": NodeTarget(name="node_sysmalloc", env={"PYTHONMALLOC": "malloc"}),
                                "node_dualstack": NodeTarget(name="node_dualstack", env=DUAL_STACK_ENV),
                                "node_recorded": NodeTarget(name="node_recorded", record=True)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown target(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]


SUMMARY_HEADER = ("target", "out pps/CPU-s", "node vs it", "vs C", "loss", "p50 ms", "p99 ms", "p999 ms",
                  "CPU share")


def summary(result: dict[str, Any]) -> str:
    """The result of one ``compare`` for a person: a line on the workload, one row per target,
    the ratios in words.  Throughput is from the capacity (flood) runs; loss, latency and the
    forwarder's CPU share from the paced runs (the capacity runs' when there were none)."""
    work = result["workload"]
    node, c_pps = result["node_out_pps_per_cpu"], result["c_out_pps_per_cpu"]
    rows = []
    for name, run in result["targets"].items():
        pps = run["out_pps_per_cpu"]
        lat = run["latency_ms"]
        tail = run["paced_run"] or run["capacity_run"]
        rows.append([label(name), num(pps, "pps"), "" if name == NODE else num(_ratio(node, pps), "ratio"),
                     "" if name == "c" else num(_ratio(pps, c_pps), "ratio"), num(run["loss"], "loss"),
                     num(lat["p50"], "ms"), num(lat["p99"], "ms"), num(lat["p999"], "ms"),
                     num(100 * tail["forwarder_cpu_share"] if tail["forwarder_cpu_share"] is not None else None, "pct")])
    paced = work.get("paced_in_pps")
    lines = [f"fan-out {work['fanout']}, {work['size']}-byte packets, {work['seconds']:g} s per run, mode {work['mode']}"
             + (f"; paced runs at {num(paced, 'pps')} in pps ({num(paced * work['fanout'], 'pps')} out)" if paced else ""),
             _grid_without_empty(SUMMARY_HEADER, rows)]
    words = []
    if result["ratio"] is not None:
        words.append(f"node / bare Python {num(result['ratio'], 'ratio')}")
    if result["ratio_vs_c"] is not None:
        words.append(f"node / C {num(result['ratio_vs_c'], 'ratio')}")
    if result["baseline_vs_c"] is not None:
        words.append(f"bare Python / C {num(result['baseline_vs_c'], 'ratio')}")
    if words:
        lines.append("; ".join(words) + " (packets delivered per CPU-second of the forwarder: higher is better)")
    return "\n".join(lines)


def _grid_without_empty(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """``grid`` without the ratio columns no row has a figure for (no node, or no C, ran)."""
    keep = [i for i in range(len(header)) if i < 2 or any(r[i] not in ("", "-") for r in rows)]
    return grid([header[i] for i in keep], [[r[i] for i in keep] for r in rows], left=1)


TABLE_HEADER = ("fan-out", "target", "out pps/CPU-s", "vs C", "paced in pps", "loss", "p50 ms", "p99 ms", "p999 ms")


def table(results: list[dict[str, Any]]) -> str:
    """A plain-text table: one row per (fan-out, target); loss/latency are from the paced runs."""
    rows = []
    for res in results:
        c_pps = res["c_out_pps_per_cpu"]
        for name, run in res["targets"].items():
            lat = run["latency_ms"]
            rows.append([str(res["workload"]["fanout"]), label(name), num(run["out_pps_per_cpu"], "pps"),
                         num(_ratio(run["out_pps_per_cpu"], c_pps), "ratio"),
                         num(res["workload"]["paced_in_pps"], "pps"), num(run["loss"], "loss"),
                         num(lat["p50"], "ms"), num(lat["p99"], "ms"), num(lat["p999"], "ms")])
    return grid(TABLE_HEADER, rows)
