"""``python -m bench``: the forwarding-throughput comparison and ``run``, the load generator (see bench/README.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bench.compare import Workload, compare, default_targets, summary, table
from bench.loadgen import cli as loadgen_cli


def _fanouts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"fan-out list must be integers: {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("empty fan-out list")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="LevelChat forwarding bench")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fanout_default, help_text in (
        ("compare", "16", "run the targets side by side at one fan-out (or a comma list)"),
        ("sweep", "1,4,16", "compare at several fan-outs and print a table"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--fanout", type=_fanouts, default=_fanouts(fanout_default),
                         help=f"destinations per packet, or a comma list (default {fanout_default})")
        cmd.add_argument("--seconds", type=float, default=3.0, help="traffic duration per run (default 3)")
        cmd.add_argument("--in-pps", type=float, default=0.0,
                         help="paced-phase source packets/s (0, default: half the slowest target's capacity)")
        cmd.add_argument("--mode", choices=("both", "capacity", "paced"), default="both",
                         help="capacity: flood runs only; paced: runs at --in-pps only; both (default)")
        cmd.add_argument("--targets", default="node,baseline,c",
                         help="comma list of node, baseline, c, baseline_plain (default node,baseline,c)")
        cmd.add_argument("--verify-every", type=int, default=0, help="sinks check every V-th packet (0: auto)")
        cmd.add_argument("--size", type=int, default=1200, help="RTP packet size in bytes")
        cmd.add_argument("--no-pin", action="store_true", help="do not pin the forwarder to its own core")
        cmd.add_argument("--twcc", action="store_true",
                         help="every packet carries a transport-wide seq extension; the node's publisher "
                              "negotiates transport-cc, so its feedback is in the node's figure")
        cmd.add_argument("--json", dest="json_path", help="write the result JSON here ('-': to stdout)")
        cmd.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _workers_parser(sub)
    loadgen_cli.add_parser(sub)
    return parser


def _workers_parser(sub: Any) -> None:
    cmd = sub.add_parser("workers", help="per-worker forwarding efficiency with 1 and more workers (bench/workers.py)")
    cmd.add_argument("--workers", type=_fanouts, default=[1, 2], help="worker counts (default 1,2)")
    cmd.add_argument("--fanout", type=int, default=16)
    cmd.add_argument("--seconds", type=float, default=10.0)
    cmd.add_argument("--in-pps", type=float, default=1000.0, help="source packets/s per room (default 1000)")
    cmd.add_argument("--repeat", type=int, default=1, help="runs per worker count, alternating (median)")
    cmd.add_argument("--json", dest="json_path", help="write the result JSON here")


def _run_workers(args: argparse.Namespace) -> int:
    from bench.workers import bench_workers
    from bench.workers import table as workers_table

    result = bench_workers(args.workers, fanout=args.fanout, seconds=args.seconds, in_pps=args.in_pps,
                           repeat=args.repeat)
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    print(workers_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "workers":
        return _run_workers(args)
    if args.command == "run":
        return loadgen_cli.main(args)
    targets = default_targets([t for t in args.targets.split(",") if t])
    progress = None if args.quiet else _progress
    results = []
    for fanout in args.fanout:
        work = Workload(fanout=fanout, seconds=args.seconds, in_pps=args.in_pps, size=args.size,
                        verify_every=args.verify_every, pin=not args.no_pin, twcc=args.twcc)
        results.append(compare(targets, work, args.mode, progress=progress))
    doc = results[0] if len(results) == 1 else {"runs": results}
    text = table(results) if len(results) > 1 or args.command == "sweep" else summary(results[0])
    if args.json_path == "-":
        sys.stderr.write(text + "\n")
        print(json.dumps(doc, indent=2))
        return 0
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
    print(text)
    if args.json_path:
        print(f"full result: {args.json_path}")
    return 0


def _progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()

if __name__ == "__main__":
    sys.exit(main())
