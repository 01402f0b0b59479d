"""Runs a scenario: per step, tokens, generator processes, a live progress line, the step's figures.

A step: ``build_plan`` -> join tokens (``nodes.TokenSource``) -> ``generators`` worker processes
(``bench.loadgen.worker``) open every publisher, then every receiver, then all start on one ``go``
-> once a second the runner folds the workers' cumulative counters and samples the node(s) into a
progress line on stderr -> after ``seconds`` + ``drain_s`` the workers report their final counters
and their own CPU time, and the step's result is computed.  A ramp repeats that with fresh rooms
per step until a step is not clean (loss above ``max_loss``, p99 above ``max_p99_ms``, a corrupt
packet, or sessions that did not come up) or its ``max``; the node stays up between steps.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from bench.loadgen.nodes import NodeProbe, NodeSample, TokenSource
from bench.loadgen.plan import ROOM_PREFIX, Plan, build_plan
from bench.loadgen.scenario import Scenario
from bench.loadgen.wire import percentiles_ms
from bench.targets import REPO_ROOT

#: setup (sessions up) of one step may take this long
SETUP_TIMEOUT_S = 180.0
#: past seconds + drain, workers must have reported their final counters within this
FINISH_GRACE_S = 40.0


class Sampler:
    """Samples the node(s) once a second on its own thread: a busy node's slow /metrics answer
    must not hold up the progress line (the line then shows the last complete sample)."""

    def __init__(self, probes: list[NodeProbe]) -> None:
        self.probes = probes
        self.latest = [p.sample() for p in probes]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="node-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.latest = [p.sample() for p in self.probes]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class StepError(RuntimeError):
    """A step could not run (a session was refused, a worker died)."""


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    log: IO[str]
    last: dict[str, Any] = field(default_factory=dict)  # latest cumulative stats
    final: dict[str, Any] | None = None
    ready: dict[str, Any] | None = None
    buf: bytes = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def lines(self) -> list[str] | None:
        """Complete lines read now from the worker's stdout (None at EOF); no buffering behind select."""
        assert self.proc.stdout is not None
        data = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not data:
            return None
        *done, self.buf = (self.buf + data).split(b"\n")
        return [line.decode() for line in done if line.strip()]

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-1500:]


def _sum_dicts(parts: list[dict[Any, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in parts:
        for k, v in part.items():
            out[int(k)] = out.get(int(k), 0) + int(v)
    return out


def fold(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' cumulative counters added up."""
    out: dict[str, Any] = {"sent": _sum_dicts([s.get("sent", {}) for s in snaps]),
                           "recv": _sum_dicts([s.get("recv", {}) for s in snaps]),
                           "hist": _sum_dicts([s.get("hist", {}) for s in snaps]),
                           "cpu_s": sum(float(s.get("cpu_s", 0.0)) for s in snaps)}
    for key in ("verified", "corrupt", "rejected", "gaps", "missing", "late", "skipped"):
        out[key] = sum(int(s.get(key, 0)) for s in snaps)
    return out


def _minus(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}


def delivery(plan: Plan, sent: dict[int, int], recv: dict[int, int]) -> tuple[int, int]:
    """(expected, received) deliveries: each receiver expects every packet of the streams it follows."""
    receivers: dict[int, int] = {}
    for sub in plan.subscribers:
        for sid in sub.expects:
            receivers[sid] = receivers.get(sid, 0) + 1
    expected = sum(sent.get(sid, 0) * n for sid, n in receivers.items())
    received = sum(recv.get(sid, 0) for sid in receivers)
    return expected, received


@dataclass
class Progress:
    """One line a second on stderr (or wherever ``write`` goes)."""

    label: str
    write: Callable[[str], None]

    def line(self, t: float, sessions: str, fwd_pps: float | None, rx_pps: float, loss: float,
             p99: float | None, node_pct: float | None, gen_pct: float) -> None:
        fwd = "-" if fwd_pps is None else f"{fwd_pps:,.0f}"
        node = "-" if node_pct is None else f"{node_pct:.0f}%"
        p99s = "-" if p99 is None else f"{p99:.2f} ms"
        self.write(f"[{self.label}] {t:5.1f}s sessions {sessions} fwd {fwd} pps rx {rx_pps:,.0f} pps "
                   f"loss {loss:.3%} p99 {p99s} node CPU {node} gen CPU {gen_pct:.0f}%")


class StepRunner:
    """Runs one plan against the node(s) its tokens point at."""

    def __init__(self, tokens: TokenSource, node_pid: int | None, progress: Progress | None) -> None:
        self.tokens = tokens
        self.node_pid = node_pid
        self.progress = progress

    def _resolve(self, plan: Plan) -> tuple[list[NodeProbe], dict[str, _Carried]]:
        """Tokens and URLs for every session; one probe per node the rooms landed on, and what each carries."""
        bases: dict[str, _Carried] = {}
        for i, p in enumerate(plan.publishers):
            base, tok = self.tokens.token(p.room, p.identity)
            plan.publishers[i] = type(p)(**{**p.__dict__, "url": f"{base}/whip/{p.room}", "token": tok})
            carried = bases.setdefault(base, _Carried())
            carried.rooms.add(p.room)
            carried.publishers += 1
        for i, s in enumerate(plan.subscribers):
            base, tok = self.tokens.token(s.room, s.identity)
            plan.subscribers[i] = type(s)(**{**s.__dict__, "url": f"{base}/whep/{s.room}/{s.target}", "token": tok})
            carried = bases.setdefault(base, _Carried())
            carried.rooms.add(s.room)
            carried.receivers += 1
        single = len(bases) == 1
        return [NodeProbe(b, self.node_pid if single else None) for b in bases], bases

    def _start(self, plan: Plan) -> list[_Worker]:
        workers = []
        for job in plan.assignments():
            log = tempfile.TemporaryFile("w+", prefix="loadgen-worker-")  # noqa: SIM115
            proc = subprocess.Popen([sys.executable, "-m", "bench.loadgen.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT)
            w = _Worker(proc, log)
            w.send(json.dumps(job.to_json()))
            workers.append(w)
        return workers

    @staticmethod
    def _read(workers: list[_Worker], timeout: float) -> list[tuple[_Worker, dict[str, Any]]]:
        sel = selectors.DefaultSelector()
        for w in workers:
            if w.proc.stdout is not None and w.final is None:
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        got = []
        for key, _ in sel.select(timeout):
            w = key.data
            lines = w.lines()
            if lines is None:
                sel.close()
                raise StepError(f"generator {w.proc.pid} exited {w.proc.wait(5)}: {w.stderr_tail()}")
            for line in lines:
                event = json.loads(line)
                if event.get("event") == "error":
                    sel.close()
                    raise StepError(f"generator {w.proc.pid}: {event.get('message')}")
                got.append((w, event))
        sel.close()
        return got

    def _wait_all(self, workers: list[_Worker], event: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(range(len(workers)))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepError(f"generators did not report {event!r} within {timeout:.0f} s")
            for w, ev in self._read([workers[i] for i in pending], left):
                if ev.get("event") == event:
                    pending.discard(workers.index(w))
                    if event == "ready":
                        w.ready = ev

    def run(self, plan: Plan, label: str) -> dict[str, Any]:
        t_setup = time.monotonic()
        probes, carried = self._resolve(plan)
        workers = self._start(plan)
        try:
            self._wait_all(workers, "published", SETUP_TIMEOUT_S)
            for w in workers:
                w.send("subscribe")
            self._wait_all(workers, "ready", SETUP_TIMEOUT_S)
            up = sum(int(w.ready["publishers"]) + int(w.ready["receivers"]) for w in workers if w.ready)
            setup_s = time.monotonic() - t_setup
            node0 = [p.sample() for p in probes]
            for w in workers:
                w.send("go")
            t0 = time.monotonic()
            timeline = self._follow(plan, workers, probes, t0, f"{up}/{plan.sessions}", label)
            node1 = [p.sample() for p in probes]
            wall = time.monotonic() - t0
        finally:
            for w in workers:
                if w.proc.poll() is None and w.final is None:
                    w.proc.terminate()
            for w in workers:
                try:
                    w.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait(5)
                w.log.close()
        finals = [w.final or {} for w in workers]
        result = self._result(plan, fold(finals), node0, node1, wall, up, setup_s, timeline,
                              sum(int(f.get("deleted", 0)) for f in finals))
        result["node_urls"] = [p.url for p in probes]
        result["nodes"] = [_per_node(p.url, carried[p.url], a, b, wall) for p, a, b in zip(probes, node0, node1, strict=True)]
        return result

    def _follow(self, plan: Plan, workers: list[_Worker], probes: list[NodeProbe], t0: float, sessions: str,
                label: str) -> list[dict[str, Any]]:
        sc = plan.scenario
        deadline = t0 + sc.seconds + sc.drain_s + FINISH_GRACE_S
        timeline: list[dict[str, Any]] = []
        prev = fold([])
        sampler = Sampler(probes)
        prev_node = sampler.latest
        try:
            self._loop(plan, workers, sampler, t0, deadline, sessions, label, prev, prev_node, timeline)
        finally:
            sampler.stop()
        return timeline

    def _loop(self, plan: Plan, workers: list[_Worker], sampler: Sampler, t0: float, deadline: float, sessions: str,
              label: str, prev: dict[str, Any], prev_node: list[NodeSample], timeline: list[dict[str, Any]]) -> None:
        sc = plan.scenario
        tick = 1  # the k-th progress line folds the workers' stats of second k (or is 0.5 s late)
        last_t = 0.0
        while any(w.final is None for w in workers):
            now = time.monotonic()
            if now > deadline:
                raise StepError(f"generators did not finish within {sc.seconds + sc.drain_s + FINISH_GRACE_S:.0f} s")
            late_at = t0 + tick + 0.5
            for w, ev in self._read(workers, max(0.0, min(late_at, deadline) - now)):
                if ev.get("event") == "stats":
                    w.last = ev
                elif ev.get("event") == "final":
                    w.final = ev
                    w.last = ev
            now = time.monotonic()
            fresh = all(w.final is not None or float(w.last.get("t", 0.0)) >= tick - 0.05 for w in workers)
            if fresh or now >= late_at:
                cur = fold([w.last for w in workers])
                node = sampler.latest
                timeline.append(self._tick(prev, cur, prev_node, node, now - t0, now - t0 - last_t, sessions))
                prev, prev_node, last_t = cur, node, now - t0
                tick = max(tick + 1, int(now - t0) + 1)  # a late runner does not print a burst of lines

    def _tick(self, prev: dict[str, Any], cur: dict[str, Any], prev_node: list[NodeSample], node: list[NodeSample],
              t: float, dt: float, sessions: str) -> dict[str, Any]:
        dt = max(1e-3, dt)
        node_dt = node[0].at - prev_node[0].at
        rx = sum(_minus(cur["recv"], prev["recv"]).values())
        sent = sum(_minus(cur["sent"], prev["sent"]).values())
        missing = cur["missing"] - prev["missing"]
        loss = missing / (rx + missing) if rx + missing else 0.0
        p99 = percentiles_ms(_minus(cur["hist"], prev["hist"]))["p99"]
        fwd: float | None = None
        node_pct: float | None = None
        if node_dt > 0.2:  # a fresh node sample
            fwd = sum(n.forwarded - p.forwarded for n, p in zip(node, prev_node, strict=True)) / node_dt
            node_cpu = _cpu_delta(prev_node, node)
            node_pct = None if node_cpu is None else 100 * node_cpu / node_dt
        gen_pct = 100 * (cur["cpu_s"] - prev["cpu_s"]) / dt
        if self.progress is not None:
            self.progress.line(t, sessions, fwd, rx / dt, loss, p99, node_pct, gen_pct)
        return {"t": round(t, 2), "sent_pps": round(sent / dt, 1), "received_pps": round(rx / dt, 1),
                "forwarded_pps": None if fwd is None else round(fwd, 1), "loss": round(loss, 6), "p99_ms": p99,
                "node_cpu_pct": None if node_pct is None else round(node_pct, 1), "generator_cpu_pct": round(gen_pct, 1)}

    @staticmethod
    def _result(plan: Plan, total: dict[str, Any], node0: list[NodeSample], node1: list[NodeSample], wall: float,
                up: int, setup_s: float, timeline: list[dict[str, Any]], deleted: int) -> dict[str, Any]:
        sc = plan.scenario
        expected, received = delivery(plan, total["sent"], total["recv"])
        sent = sum(total["sent"].values())
        forwarded = sum(b.forwarded - a.forwarded for a, b in zip(node0, node1, strict=True))
        node_cpu = _cpu_delta(node0, node1)
        rss = [s.rss_bytes for s in node1 if s.rss_bytes is not None]
        gen_cpu = float(total["cpu_s"])
        loss = max(0.0, 1 - received / expected) if expected else None
        return {
            "rooms": sc.rooms.count,
            "publishers": len(plan.publishers),
            "receiving_sessions": len(plan.subscribers),
            "sessions": plan.sessions,
            "sessions_up": up,
            "setup_s": round(setup_s, 2),
            "seconds": sc.seconds,
            "wall_s": round(wall, 3),
            "generators": sc.generators,
            "offered_pps": round(plan.offered_pps(), 1),
            "expected_out_pps": round(plan.expected_out_pps(), 1),
            "sent": sent,
            "sent_pps": round(sent / sc.seconds, 1),
            "expected_deliveries": expected,
            "received": received,
            "received_pps": round(received / sc.seconds, 1),
            "forwarded": forwarded,
            "forwarded_pps": round(forwarded / sc.seconds, 1),
            "loss": None if loss is None else round(loss, 6),
            "latency_ms": percentiles_ms(total["hist"]),
            "verified": total["verified"],
            "corrupt": total["corrupt"],
            "rejected": total["rejected"],
            "gaps": total["gaps"],
            "missing_at_gaps": total["missing"],
            "late": total["late"],
            "node_cpu_s": None if node_cpu is None else round(node_cpu, 4),
            "node_cpu_pct": None if node_cpu is None else round(100 * node_cpu / wall, 1),
            "node_rss_mb": round(sum(rss) / 2**20, 1) if rss else None,
            "out_pps_per_node_cpu": round(forwarded / node_cpu, 1) if node_cpu else None,
            "generator_cpu_s": round(gen_cpu, 4),
            "generator_cpu_pct": round(100 * gen_cpu / wall, 1),
            "generator_vs_node_cpu": round(gen_cpu / node_cpu, 3) if node_cpu else None,
            "sessions_deleted": deleted,
            "timeline": timeline,
        }


@dataclass
class _Carried:
    """What one node carries in a step: its rooms and sessions."""

    rooms: set[str] = field(default_factory=set)
    publishers: int = 0
    receivers: int = 0


def _per_node(url: str, carried: _Carried, a: NodeSample, b: NodeSample, wall: float) -> dict[str, Any]:
    """One node's share of a step: rooms and sessions placed on it, packets it forwarded, its CPU and
    RSS, and (a spawned node) the same per process: the node, or a front and each worker."""
    cpu = None if a.cpu_s is None or b.cpu_s is None else b.cpu_s - a.cpu_s
    out: dict[str, Any] = {
        "url": url,
        "rooms": len(carried.rooms),
        "sessions": carried.publishers + carried.receivers,
        "publishers": carried.publishers,
        "receiving_sessions": carried.receivers,
        "forwarded": b.forwarded - a.forwarded,
        "cpu_s": None if cpu is None else round(cpu, 4),
        "cpu_pct": None if cpu is None else round(100 * cpu / wall, 1),
        "rss_mb": None if b.rss_bytes is None else round(b.rss_bytes / 2**20, 1),
    }
    if b.procs:
        before = {p.pid: p for p in a.procs}
        procs = []
        for p in b.procs:
            q = before.get(p.pid)  # a worker that restarted has a new pid: no delta
            pcpu = None if q is None or q.cpu_s is None or p.cpu_s is None else p.cpu_s - q.cpu_s
            fwd = None if q is None or q.forwarded is None or p.forwarded is None else p.forwarded - q.forwarded
            procs.append({"role": p.role, "pid": p.pid, "cpu_s": None if pcpu is None else round(pcpu, 4),
                          "cpu_pct": None if pcpu is None else round(100 * pcpu / wall, 1),
                          "rss_mb": None if p.rss_bytes is None else round(p.rss_bytes / 2**20, 1),
                          "forwarded": fwd})
        out["processes"] = procs
    return out


def _cpu_delta(a: list[NodeSample], b: list[NodeSample]) -> float | None:
    if any(s.cpu_s is None for s in [*a, *b]):
        return None
    return sum(float(y.cpu_s or 0) - float(x.cpu_s or 0) for x, y in zip(a, b, strict=True))


def is_clean(step: dict[str, Any], max_loss: float, max_p99_ms: float) -> str | None:
    """Why a step is not clean (None: it is)."""
    if "error" in step:
        return "error"
    if step["sessions_up"] < step["sessions"]:
        return "sessions"
    if step["corrupt"] or step["rejected"]:
        return "corrupt"
    if step["loss"] is None or step["loss"] > max_loss:
        return "loss"
    p99 = step["latency_ms"]["p99"]
    if p99 is None or p99 > max_p99_ms:
        return "p99"
    return None


def run_scenario(scenario: Scenario, tokens: TokenSource, node_pid: int | None,
                 progress: Callable[[str], None] | None = None, room_prefix: str = ROOM_PREFIX) -> dict[str, Any]:
    """Every step of ``scenario``; the result document (without node/process metadata)."""
    ramp = scenario.ramp
    values = ramp.values() if ramp else [0]
    steps: list[dict[str, Any]] = []
    stopped_by = "done"
    highest_clean: int | None = None
    for index, value in enumerate(values):
        fixed = scenario.at(value)
        plan = build_plan(fixed, step=index, room_prefix=room_prefix)
        label = f"{scenario.name} {ramp.vary.value}={value}" if ramp else scenario.name
        runner = StepRunner(tokens, node_pid, Progress(label, progress) if progress else None)
        try:
            step = runner.run(plan, label)
        except StepError as exc:
            if ramp is None:
                raise
            step = {"error": str(exc), "sessions": plan.sessions}
        step = {"step": index, "load": value if ramp else plan.sessions, **step}
        if ramp is not None:
            why = is_clean(step, ramp.max_loss, ramp.max_p99_ms)
            step["clean"] = why is None
            steps.append(step)
            if why is not None:
                stopped_by = why
                break
            highest_clean = value
        else:
            steps.append(step)
    else:
        if ramp is not None:
            stopped_by = "max"
    doc: dict[str, Any] = {"scenario": scenario.name, "description": scenario.description}
    if ramp is not None:
        doc["ramp"] = {"vary": ramp.vary.value, "values": values, "stopped_by": stopped_by,
                       "highest_clean": highest_clean, "max_loss": ramp.max_loss, "max_p99_ms": ramp.max_p99_ms}
    doc["steps"] = steps
    last = next((s for s in reversed(steps) if "error" not in s and s.get("clean", True)), steps[-1])
    for key in ("forwarded_pps", "received_pps", "out_pps_per_node_cpu", "loss", "latency_ms", "node_cpu_pct",
                "node_rss_mb", "generator_cpu_pct", "generator_vs_node_cpu"):
        doc[key] = last.get(key)
    return doc
