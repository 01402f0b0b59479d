"""``python -m bench run SCENARIO.toml``: the load generator's command line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

from bench.loadgen.nodes import ControlPlaneTokens, LocalTokens, TokenSource, spawn_node
from bench.loadgen.plan import ROOM_PREFIX, check_room_prefix
from bench.loadgen.report import PLOT_MISSING, can_plot, plot, table
from bench.loadgen.runner import StepError, run_scenario
from bench.loadgen.scenario import ScenarioError, load_scenario
from bench.targets import DEV_KEY_ID, DEV_KEY_SECRET, TargetError


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser("run", help="run a load scenario (bench/scenarios/*.toml) against a node or a fleet")
    cmd.add_argument("scenario", help="scenario TOML file")
    where = cmd.add_mutually_exclusive_group()
    where.add_argument("--spawn-node", action="store_true", help="start a node on loopback (the default)")
    where.add_argument("--node-url", help="drive this running node (loopback URL)")
    where.add_argument("--control-url", help="drive a fleet: tokens and node URLs from this control plane "
                       "(several replicas comma-separated: failed over)")
    cmd.add_argument("--workers", type=int, default=0,
                     help="with --spawn-node: the node runs a front and this many forwarding worker processes "
                          "(0: the scenario's node_workers)")
    cmd.add_argument("--api-key", default=None, help=f"API key id (default {DEV_KEY_ID})")
    cmd.add_argument("--api-secret", default=None, help="API secret (default: the dev secret)")
    cmd.add_argument("--project", default="levelchat")
    cmd.add_argument("--generators", type=int, default=0, help="generator processes (0: the scenario's)")
    cmd.add_argument("--seconds", type=float, default=0.0, help="override the scenario's seconds (fixed runs)")
    cmd.add_argument("--json", dest="json_path", help="write the result JSON here")
    cmd.add_argument("--plot", dest="plot_path", help="write a PNG plot here")
    cmd.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    cmd.add_argument("--room-prefix", default=ROOM_PREFIX,
                     help="room names start with this (another run against the same node: a join storm)")


def _progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    if args.plot_path and not can_plot():
        sys.stderr.write(PLOT_MISSING + "\n")  # before the run, not after it
        return 2
    try:
        scenario = load_scenario(args.scenario)
        if args.generators:
            scenario = replace(scenario, generators=args.generators)
        if args.seconds:
            scenario = replace(scenario, seconds=args.seconds)
        if args.workers:
            scenario = replace(scenario, node_workers=args.workers)
        scenario.validate()
    except ScenarioError as exc:
        sys.stderr.write(f"scenario error: {exc}\n")
        return 2
    if args.workers and (args.node_url or args.control_url):
        sys.stderr.write("--workers applies to a spawned node only (--spawn-node)\n")
        return 2
    key_id = args.api_key or DEV_KEY_ID
    secret = args.api_secret or DEV_KEY_SECRET
    node = None
    cfg = None
    tokens: TokenSource
    node_pid: int | None = None
    target: dict[str, Any]
    node_log: dict[str, Any] = {}
    try:
        if args.control_url:
            tokens = ControlPlaneTokens(args.control_url, key_id, secret, args.project)
            target = {"mode": "control", "control_url": args.control_url}
        elif args.node_url:
            tokens = LocalTokens(args.node_url, key_id, secret, args.project)
            target = {"mode": "node", "node_url": args.node_url}
        else:
            node, cfg = spawn_node(workers=scenario.node_workers)
            tokens = LocalTokens(node.url)
            node_pid = node.pid
            target = {"mode": "spawned", "node_url": node.url, "node_pid": node.pid, "workers": scenario.node_workers}
        started = time.time()
        doc = run_scenario(scenario, tokens, node_pid, None if args.quiet else _progress,
                           room_prefix=check_room_prefix(args.room_prefix))
    except (StepError, TargetError, ValueError, OSError) as exc:
        sys.stderr.write(f"run failed: {exc}\n")
        return 1
    finally:
        if node is not None:
            try:
                own = node.stop()
                node_log = {"lines": own.get("log_lines"), "tail": own.get("log_tail")}
            except TargetError as exc:
                sys.stderr.write(f"node stop: {exc}\n")
        if cfg is not None:
            cfg.unlink(missing_ok=True)
    doc["target"] = target
    if node_log:
        doc["node_log"] = node_log  # the spawned node's WARNING+ lines
    doc["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "loadavg_1m": round(os.getloadavg()[0], 2), "started_unix": round(started)}
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
    if args.plot_path:
        plot(doc, args.plot_path)
    print(table(doc))
    return 0
