"""``python -m sfu`` / ``levelchat-sfu``: run an SFU node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from levelchat.config import ConfigError
from sfu import config as node_config
from sfu.logs import setup_logging
from sfu.signals import stop_on_signals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="levelchat-sfu", description="LevelChat SFU node")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--dev", action="store_true", help="dev mode: key devkey/secret, loopback, rooms on first join")
    p.add_argument("--dev-allow-remote", action="store_true", default=None)
    p.add_argument("--node-id")
    p.add_argument("--region")
    p.add_argument("--http-host")
    p.add_argument("--http-port", type=int)
    p.add_argument("--media-host")
    p.add_argument("--media-port", type=int)
    p.add_argument("--tcp-port", type=int, help="ICE-TCP media port (0: any free port)")
    p.add_argument("--ice-tcp", action=argparse.BooleanOptionalAction, default=None, help="offer ICE-TCP candidates")
    p.add_argument(
        "--public-ip", help="address(es) advertised in ICE candidates (NAT 1:1): one, or an IPv4 and an IPv6 comma-separated"
    )
    p.add_argument("--public-url")
    p.add_argument("--control-url")
    p.add_argument("--control-urls", help="control-plane replicas to fail over between, comma-separated")
    p.add_argument("--workers", help='forwarding worker processes: a number, or "auto" (one per core)')
    p.add_argument("--drain-deadline-s", type=float, help="SIGTERM drain deadline (seconds)")
    p.add_argument("--log-json", action="store_true", default=None)
    p.add_argument("--log-level")
    return p.parse_args(argv)


async def run(cfg: node_config.NodeConfig) -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or until the control-plane agent gives up (exit 1)."""
    from sfu.node import Node
    from sfu.workers.front import Front

    # more than one worker: this process is the front (sfu.workers), the workers forward
    node: Node | Front = Front(cfg) if cfg.worker_count > 1 else Node(cfg)
    await node.start()
    if isinstance(node, Node):
        node.own_gc()

    def announce_drain() -> None:
        print(f"levelchat-sfu: SIGTERM: draining (up to {cfg.drain_deadline_s:.0f} s)", file=sys.stderr, flush=True)

    # first SIGTERM: graceful drain, exit when it completes; a second one: exit at once
    stop = stop_on_signals(node, cfg.drain_deadline_s, announce_drain)
    ports = f"{node.media_port}" if cfg.worker_count == 1 else f"{node.media_port}+, {cfg.worker_count} workers"
    print(f"LevelChat SFU node ready: {node.url}  (media udp {' '.join(cfg.advertised_ips)} port {ports})", flush=True)
    waiters = [asyncio.create_task(stop.wait())]
    if node.agent is not None:
        waiters.append(asyncio.create_task(node.agent.fatal.wait()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    reason = node.agent.fatal_reason if node.agent is not None else None
    await node.stop()
    if reason is not None:
        print(f"levelchat-sfu: exiting: {reason}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "dev") and v is not None}
    try:
        cfg = node_config.load(file=args.config, flags=flags, dev=args.dev)
    except ConfigError as exc:
        print(f"levelchat-sfu: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        logging.getLogger(__name__).warning("uvloop is not installed; using asyncio's loop")
    try:
        return asyncio.run(run(cfg))
    except OSError as exc:
        print(f"levelchat-sfu: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
