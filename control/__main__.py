"""``python -m control`` / ``levelchat-control``: serve, or run an operator command.

    python -m control --dev                      serve (flags, LEVELCHAT_CONTROL_*, --config FILE)
    python -m control nodes list|revoke ID|provision ID
    python -m control rooms create [--room R] [--max-participants N] [--codecs opus,VP8] [--region X]
    python -m control rooms get ROOM
    python -m control token mint --room R --identity I --scopes room:join,room:publish [--ttl 3600]

Commands print the JSON reply on stdout and exit 0 on success, 1 when refused, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from control.cli import ClientSettings, Reply, call


def _serve_flags(p: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    p.add_argument("--config", dest="config_file", default=None, help="TOML config file")
    p.add_argument("--host", default=s, help="listen address [127.0.0.1]")
    p.add_argument("--port", type=int, default=s, help="listen port [7700]")
    p.add_argument("--project", default=s, help="project id, the tokens' audience [levelchat]")
    p.add_argument("--store", default=s, help="sqlite:///PATH, sqlite://:memory: or redis://HOST:PORT/DB")
    p.add_argument("--api-key", dest="api_keys", action="append", default=s, metavar="KID:SECRET")
    p.add_argument("--lease-seconds", type=float, default=s)
    p.add_argument("--heartbeat-interval-seconds", type=float, default=s)
    p.add_argument("--node-timeout-seconds", type=float, default=s)
    p.add_argument("--store-timeout-seconds", type=float, default=s, help="bound of one store call [1]")
    p.add_argument("--max-placement-attempts", type=int, default=s)
    p.add_argument("--room-grace-seconds", type=float, default=s,
                   help="after a node's lease lapses, its rooms wait this long for it before being placed again [30]")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=s, metavar="ORIGIN")
    p.add_argument("--log-level", default=s)
    p.add_argument("--dev", action="store_true", default=s, help="dev key devkey/secret, memory store")
    p.add_argument("--dev-allow-remote", action="store_true", default=s)


def _client_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("control plane")
    g.add_argument("--url", dest="c_url", help="control plane URL [$LEVELCHAT_API_URL or http://127.0.0.1:7700]")
    g.add_argument("--api-key", dest="c_key", help="API key id [$LEVELCHAT_API_KEY]")
    g.add_argument("--api-secret", dest="c_secret", help="API secret [$LEVELCHAT_API_SECRET]")
    g.add_argument("--project", dest="c_project", help="project id [$LEVELCHAT_PROJECT or levelchat]")
    g.add_argument("--dev", dest="c_dev", action="store_true", help="use the dev key devkey/secret")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="levelchat-control", description="LevelChat control plane")
    _serve_flags(parser)
    client = _client_flags()
    sub = parser.add_subparsers(dest="command")

    nodes = sub.add_parser("nodes", help="list, revoke or provision nodes").add_subparsers(dest="action", required=True)
    nodes.add_parser("list", parents=[client])
    for action in ("revoke", "provision"):
        nodes.add_parser(action, parents=[client]).add_argument("node_id", metavar="ID")

    rooms = sub.add_parser("rooms", help="create or look up rooms").add_subparsers(dest="action", required=True)
    create = rooms.add_parser("create", parents=[client])
    create.add_argument("--room")
    create.add_argument("--max-participants", type=int)
    create.add_argument("--codecs", help="comma-separated, e.g. opus,VP8")
    create.add_argument("--region")
    rooms.add_parser("get", parents=[client]).add_argument("room")

    token = sub.add_parser("token", help="mint join tokens").add_subparsers(dest="action", required=True)
    mint_p = token.add_parser("mint", parents=[client])
    mint_p.add_argument("--room", required=True)
    mint_p.add_argument("--identity", required=True)
    mint_p.add_argument("--scopes", required=True, help="comma-separated, e.g. room:join,room:publish")
    mint_p.add_argument("--ttl", type=int, default=3600, help="seconds [3600]")
    mint_p.add_argument("--name")
    mint_p.add_argument("--metadata")
    return parser


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    cmd, action = args.command, args.action
    if cmd == "nodes":
        if action == "list":
            return "GET", "/v1/nodes", None
        if action == "revoke":
            return "DELETE", f"/v1/nodes/{args.node_id}", None
        return "POST", f"/v1/nodes/{args.node_id}/provision", None
    if cmd == "rooms":
        if action == "get":
            return "GET", f"/v1/rooms/{args.room}", None
        body = {"room": args.room, "max_participants": args.max_participants,
                "codecs": _split(args.codecs), "region": args.region}
        return "POST", "/v1/rooms", {k: v for k, v in body.items() if v is not None}
    body = {"room": args.room, "identity": args.identity, "scopes": _split(args.scopes), "ttl_s": args.ttl,
            "name": args.name, "metadata": args.metadata}
    return "POST", "/v1/tokens", {k: v for k, v in body.items() if v is not None}


def _run_command(args: argparse.Namespace) -> int:
    try:
        settings = ClientSettings.resolve(
            url=args.c_url, key_id=args.c_key, secret=args.c_secret, project=args.c_project,
            dev=bool(args.c_dev or getattr(args, "dev", False)), environ=os.environ,
        )
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    method, path, body = _request(args)
    reply: Reply = call(settings, method, path, body)
    print(json.dumps(reply.body, indent=2, sort_keys=True))
    return 0 if reply.ok else 1


def _serve(args: argparse.Namespace) -> int:
    from control.app import serve
    from control.config import load_config

    flags = {k: v for k, v in vars(args).items() if k not in ("config_file", "command")}
    try:
        config = load_config(flags=flags, environ=os.environ, config_file=args.config_file)
    except ValueError as exc:
        print(f"levelchat-control: configuration refused: {exc}", file=sys.stderr)
        return 2
    serve(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        return _serve(args)
    return _run_command(args)


if __name__ == "__main__":
    sys.exit(main())
