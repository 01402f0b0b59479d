"""``python -m bench.selfcheck_cost``: what the node's self-check costs in CPU.

Idle node processes run side by side, identical but for ``self_check_interval_s``: a baseline
whose check runs once at start and never again in the window (interval 1 day), and variants at
the default 10 s and at short intervals (1 s, 0.2 s) that make the per-check cost measurable.
For each process the window's CPU time comes from ``/proc`` (``bench.proc.cpu_seconds``) and the
number of checks from the node's own counters: every check sends exactly one probe RTP packet
(``levelchat_sfu_packets_received_total{kind="video"}``; nothing else sends media to an idle
node). Per-check CPU = (variant CPU - baseline CPU) / checks; as a share of one core at the
default period = per-check CPU / 10 s.

Everything is on 127.0.0.1 and bounded: ``--seconds`` of measurement (60 by default) plus start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.proc import cpu_seconds

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INTERVAL_S = 10.0
#: long enough that the baseline's periodic check never runs within a window
BASELINE_INTERVAL_S = 86400.0
START_TIMEOUT_S = 30.0
SETTLE_S = 2.0
_READY = re.compile(r"ready: (http://\S+)")
_PROBE = re.compile(r'^levelchat_sfu_packets_received_total\{kind="video"\} (\S+)$', re.MULTILINE)


@dataclass
class IdleNode:
    """One ``python -m sfu --dev`` process with its own self-check interval."""

    interval_s: float
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    cpu0: float = 0.0
    probes0: float = 0.0
    results: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEVELCHAT_")}
        env["LEVELCHAT_SFU_SELF_CHECK_INTERVAL_S"] = repr(self.interval_s)
        argv = [sys.executable, "-m", "sfu", "--dev", "--http-port", "0", "--media-port", "0", "--log-level", "WARNING"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = self.proc.stdout.readline() if sel.select(timeout_s) else ""
        sel.close()
        m = _READY.search(line)
        if m is None:
            raise RuntimeError(f"node (interval {self.interval_s} s) did not get ready: {line!r}")
        self.url = m.group(1)

    def probes(self) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        m = _PROBE.search(text)
        if m is None:
            raise RuntimeError("no levelchat_sfu_packets_received_total{kind=\"video\"} in /metrics")
        return float(m.group(1))

    def mark(self) -> None:
        assert self.proc is not None
        self.probes0 = self.probes()
        self.cpu0 = cpu_seconds(self.proc.pid)

    def measure(self, window_s: float) -> None:
        assert self.proc is not None
        cpu = cpu_seconds(self.proc.pid) - self.cpu0
        self.results = {"cpu_s": cpu, "checks": self.probes() - self.probes0, "core_pct": 100 * cpu / window_s}

    def stop(self) -> None:
        """SIGINT (SIGTERM would start a graceful drain), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def measure(seconds: float, intervals: list[float]) -> dict[str, Any]:
    nodes = [IdleNode(BASELINE_INTERVAL_S), *(IdleNode(i) for i in intervals)]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(START_TIMEOUT_S)
        time.sleep(SETTLE_S)  # imports and the first check are start-up, not the window
        for node in nodes:
            node.mark()
        started = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - started
        for node in nodes:
            node.measure(window)
    finally:
        for node in nodes:
            node.stop()
    base = nodes[0].results
    variants = []
    for node in nodes[1:]:
        r = node.results
        checks = r["checks"] - base["checks"]
        per_check = (r["cpu_s"] - base["cpu_s"]) / checks if checks > 0 else float("nan")
        variants.append({"interval_s": node.interval_s, **r, "cpu_per_check_ms": 1000 * per_check})
    short = [v for v in variants if v["checks"] >= 20]
    best = max(short, key=lambda v: v["checks"]) if short else None
    per_check_ms = best["cpu_per_check_ms"] if best else float("nan")
    return {
        "window_s": window,
        "baseline": {"interval_s": BASELINE_INTERVAL_S, **base},
        "variants": variants,
        "cpu_per_check_ms": per_check_ms,
        "from_interval_s": best["interval_s"] if best else None,
        "core_pct_at_default": per_check_ms / 1000 / DEFAULT_INTERVAL_S * 100,
    }


def table(report: dict[str, Any]) -> str:
    lines = [f"window {report['window_s']:.1f} s, idle nodes side by side",
             f"{'interval':>10} {'checks':>7} {'cpu s':>8} {'% core':>7} {'ms/check':>9}"]
    b = report["baseline"]
    lines.append(f"{'baseline':>10} {b['checks']:7.0f} {b['cpu_s']:8.3f} {b['core_pct']:7.2f} {'':>9}")
    for v in report["variants"]:
        lines.append(f"{v['interval_s']:9g}s {v['checks']:7.0f} {v['cpu_s']:8.3f} {v['core_pct']:7.2f} "
                     f"{v['cpu_per_check_ms']:9.2f}")
    lines.append(f"self-check: {report['cpu_per_check_ms']:.2f} ms CPU per check (from the {report['from_interval_s']} s "
                 f"variant) = {report['core_pct_at_default']:.3f} % of one core at the default {DEFAULT_INTERVAL_S:g} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.selfcheck_cost", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=60.0, help="measurement window (default 60)")
    p.add_argument("--intervals", default="10,1,0.2", help="self-check intervals to compare, seconds (default 10,1,0.2)")
    p.add_argument("--json", help="also write the report to this file")
    args = p.parse_args(argv)
    if not 1 <= args.seconds <= 3600:
        p.error("--seconds must be 1..3600")
    intervals = [float(v) for v in args.intervals.split(",") if v.strip()]
    if not intervals or any(i < 0.05 for i in intervals):
        p.error("--intervals: a comma list of seconds, each >= 0.05")
    report = measure(args.seconds, intervals)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
