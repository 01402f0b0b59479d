"""``python -m bench.nodeprof``: profile the SFU node's forwarding path under bench load with py-spy.

Starts the node target, the WHIP source and ``--fanout`` WHEP sinks exactly as ``bench.compare``
does (node pinned alone on CPU 1), attaches ``py-spy record --nonblocking`` to the node for the
traffic window and, for ``--format raw`` (collapsed stacks), prints the functions with the most
samples, by own time and including callees, as shares of the node's non-idle samples.  Needs
``py-spy`` on PATH (``pip install py-spy``); ptrace must be allowed.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.compare import RunSetup, Workload, kill_all, setup_run, stop_quietly, target_workload
from bench.targets import NodeTarget, finish_json

_LINE_NO = re.compile(r":\d+\)$")


@dataclass(frozen=True)
class Hotspot:
    function: str  # "Class.method (path)"
    share: float  # of all non-idle samples, 0..1


def summarize(collapsed: str, top: int = 20) -> tuple[int, list[Hotspot], list[Hotspot]]:
    """From py-spy's raw (collapsed) output: total samples, top functions by own and inclusive share."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.strip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE_NO.sub(")", f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in dict.fromkeys(frames):  # once each, outermost first (ties rank callers first)
            incl[frame] += n
    if total == 0:
        return 0, [], []

    def rank(counter: collections.Counter[str]) -> list[Hotspot]:
        return [Hotspot(f, n / total) for f, n in counter.most_common(top)]

    return total, rank(own), rank(incl)


def profile(fanout: int, seconds: float, in_pps: float, out: Path, fmt: str, rate: int) -> dict[str, Any]:
    target = NodeTarget()
    work = target_workload(target, Workload(fanout=fanout, seconds=seconds, in_pps=in_pps))
    bound = work.source_bound_s + 10.0
    procs: list[subprocess.Popen[str]] = []
    setup: RunSetup | None = None
    try:
        setup = setup_run(target, work, bound, procs)
        setup.pin()
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(setup.running.pid), "--output", str(out),
                                "--format", fmt, "--rate", str(rate), "--duration", str(max(1, int(seconds))),
                                "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(spy)
        setup.go()
        src = finish_json(setup.source, timeout=seconds + 20)
        snk = finish_json(setup.sinks, timeout=bound + 10)
        _, err = spy.communicate(timeout=seconds + 30)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err[-1000:]}")
        own = setup.running.stop()
        setup = None
    finally:
        if setup is not None:
            stop_quietly(setup.running)
        kill_all(*procs)
    return {"source": src, "sinks": {k: snk[k] for k in ("received", "gaps", "corrupt", "latency_ms")},
            "node": {k: v for k, v in own.items() if k != "log_tail"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nodeprof", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fanout", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--in-pps", type=float, default=0.0, help="source rate (0: the node target's flood)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/node-profile.txt"))
    parser.add_argument("--format", choices=("raw", "flamegraph", "speedscope"), default="raw")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        parser.error("py-spy is not installed (pip install py-spy)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = profile(args.fanout, args.seconds, args.in_pps, args.out, args.format, args.rate)
    print(f"traffic: {result}")
    if args.format == "raw":
        total, own, incl = summarize(args.out.read_text(), args.top)
        print(f"{total} non-idle samples of the node; own time:")
        for h in own:
            print(f"  {100 * h.share:5.1f}%  {h.function}")
        print("including callees:")
        for h in incl:
            print(f"  {100 * h.share:5.1f}%  {h.function}")
    print(f"profile written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
