"""One forwarding worker process: a ``sfu.node.Node`` on its own media port whose HTTP API listens
on a private unix socket that only the front (``sfu.workers.front``) talks to.

Started by the supervisor as ``python -m sfu.workers.worker --index I --socket PATH --parent PID``
with the worker's configuration as one JSON line on stdin (secrets stay out of argv and the
environment).  stdin stays open: when the front goes away it reads end-of-file and the worker
exits; on Linux the kernel also kills it when the front dies (``PR_SET_PDEATHSIG``), so a worker
never outlives its front.

Besides the node's own API the socket serves the front's private routes (``/internal/...``):
status (health, load, open rooms), revoke, drain and close-all.  They are never proxied from the
public port: the front routes by an explicit list.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import asdict, replace
from typing import Any

from aiohttp import web

from levelchat.config import ConfigError, build
from levelchat.errors import ApiError
from levelchat.web import REQUEST_ID_KEY, json_response, read_json
from sfu.api.rtc import RTC_SERVICE_KEY
from sfu.config import NodeConfig
from sfu.logs import setup_logging
from sfu.node import Node
from sfu.signals import stop_on_signals
from sfu.transport.peer import CloseReason
from sfu.workers.relay import RELAY_WS, RelayCollector, RelayHub
from sfu.workers.relay_json import RelaySetup

log = logging.getLogger("sfu.workers.worker")

#: the front passes its request id, so a worker's problem carries the id the client sees
FRONT_REQUEST_ID = "X-LevelChat-Front-Request-Id"
PR_SET_PDEATHSIG = 1
INTERNAL = "/internal"


def worker_config(cfg: NodeConfig, index: int, run_dir: str = "") -> NodeConfig:
    """Worker ``index``'s configuration: media port ``media_port + index`` and ICE-TCP port
    ``tcp_port + index`` (any free port when the base is 0), no control plane (the front registers the node), no rate limits and no
    CORS of its own (the front applies them, seeing the real clients)."""
    return replace(
        cfg,
        workers=1,
        node_id=f"{cfg.effective_node_id}-w{index}",
        media_port=cfg.media_port + index if cfg.media_port else 0,
        tcp_port=cfg.ice_tcp_port + index if cfg.ice_tcp_port else 0,
        http_host="127.0.0.1",
        http_port=0,
        public_url="",
        control_url="",
        control_urls=(),
        cors_origins=None,
        rate_limit_ip_per_s=0.0,
        rate_limit_key_per_s=0.0,
        # each worker queues its own webhook events (its node id names the default file)
        webhooks_db=f"{cfg.webhooks_db}-w{index}" if cfg.webhooks_db not in ("", ":memory:") else cfg.webhooks_db,
        # the workers share the node's usage file (each adds its own participants' minutes); an
        # in-memory one would be per worker, so a dev node's workers share one in the front's
        # ``run_dir`` (removed when the front stops)
        usage_db=_shared_usage_db(cfg, run_dir),
    )


#: the usage file of a dev node's workers, in the front's private directory
RUN_DIR_USAGE_DB = "usage.db"


def _shared_usage_db(cfg: NodeConfig, run_dir: str) -> str:
    path = cfg.usage_db_at(cfg.http_port)
    if path == ":memory:":
        return os.path.join(run_dir or tempfile.gettempdir(), RUN_DIR_USAGE_DB)
    return path


def encode_config(cfg: NodeConfig) -> bytes:
    return json.dumps(asdict(cfg)).encode() + b"\n"


def decode_config(line: bytes) -> NodeConfig:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"worker configuration is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("worker configuration is not a JSON object")
    return build(NodeConfig, data)


class WorkerNode(Node):
    """A node whose HTTP API is on a unix socket, with the front's private routes."""

    def __init__(self, config: NodeConfig, *, index: int, socket_path: str) -> None:
        super().__init__(config)
        self.index = index
        self.socket_path = socket_path
        #: relays to the node's other workers (sfu.workers.relay), set up by the front (the
        #: router it needs exists before the private socket serves)
        self.relays = RelayHub(self)
        self.metrics_registry.register(RelayCollector(self.relays))  # type: ignore[arg-type]

    async def stop(self) -> None:
        await self.relays.stop()
        await super().stop()

    def make_app(self) -> web.Application:
        app = super().make_app()
        self.relays.attach_data(app[RTC_SERVICE_KEY].data.relay)  # data messages cross relays too
        app.middlewares.insert(0, _adopt_front_request_id)
        r = app.router
        r.add_get(INTERNAL + "/status", self._status)
        r.add_post(INTERNAL + "/revoke", self._revoke)
        r.add_post(INTERNAL + "/drain", self._drain_post)
        r.add_delete(INTERNAL + "/drain", self._drain_delete)
        r.add_post(INTERNAL + "/close_all", self._close_all)
        r.add_post(INTERNAL + "/webhooks", self._webhook_add)
        r.add_delete(INTERNAL + "/webhooks/{id}", self._webhook_remove)
        r.add_post(INTERNAL + "/usage", self._usage_total)
        r.add_post(INTERNAL + "/relay", self._relay_add)
        r.add_post(INTERNAL + "/relay/close", self._relay_close)
        r.add_post(INTERNAL + "/relay/open", self._relay_open)
        r.add_get(RELAY_WS, self._relay_ws)
        return app

    def make_site(self, runner: web.AppRunner) -> web.BaseSite:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)  # a previous run of this worker left it
        return web.UnixSite(runner, self.socket_path)

    def status(self) -> dict[str, Any]:
        ready, reason = self.readiness()
        snap = self.load_snapshot()
        return {
            "index": self.index,
            "pid": os.getpid(),
            "ready": ready,
            "reason": reason,
            "healthy": snap.healthy,
            "draining": self.draining,
            "drained": self.drained.is_set(),
            "revoked": self.revoked,
            "rooms": self.room_ids(),
            "room_settings": self.room_settings(),
            "room_participants": self.room_participants(),
            "participants": snap.participants,
            "packets_out": snap.packets_out,
            "media_port": self.media_port,
            "tcp_port": self.tcp_port,
            "relays": sorted(r.setup.remote for r in self.relays.relays.values()),
        }

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.status())

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        self.revoked = bool(body.get("revoked", True))
        return json_response(self.status())

    async def _drain_post(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        deadline = body.get("deadline_s", self.config.drain_deadline_s)
        self.start_drain(float(deadline))
        return json_response(self.drain_state(), status=202)

    async def _drain_delete(self, request: web.Request) -> web.StreamResponse:
        self.cancel_drain()
        return json_response(self.drain_state())

    async def _webhook_add(self, request: web.Request) -> web.StreamResponse:
        """An endpoint another worker accepted (``POST /v1/webhooks`` through the front), same id."""
        body = await read_json(request)
        d = await self.webhooks.ensure()
        ep = d.parse_endpoint({k: body[k] for k in ("url", "events", "key") if body.get(k) is not None})
        return json_response(await d.add(ep, str(body.get("id") or "")), status=201)

    async def _webhook_remove(self, request: web.Request) -> web.StreamResponse:
        d = self.webhooks.dispatcher
        eid = request.match_info["id"]
        if d is not None and eid in d.endpoints:
            await d.remove(eid)
        return json_response({"removed": eid})

    async def _usage_total(self, request: web.Request) -> web.StreamResponse:
        """The project's usage and quota from the control plane's heartbeat answer (the front's)."""
        self.usage.adopt_control_total(await read_json(request))
        return json_response(self.usage.current().to_json())

    async def _relay_add(self, request: web.Request) -> web.StreamResponse:
        """A relay to another worker (the front's setup, sfu.workers.relay)."""
        try:
            relay = self.relays.add(RelaySetup.parse(await read_json(request)))
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"relay": relay.setup.relay_id})

    async def _relay_open(self, request: web.Request) -> web.StreamResponse:
        """The front is about to proxy a join of this room here: the far ends are asked for it
        first, so the join finds the room and its participants (``RelayHub.prepare``)."""
        room = (await read_json(request)).get("room")
        if not isinstance(room, str):
            return json_response({"error": "room: a string"}, status=400)
        try:
            found = await self.relays.prepare(room)
        except ApiError as exc:  # not accepting rooms (draining, revoked): the join says so
            return json_response({"open": False, "error": exc.code})
        return json_response({"open": found})

    async def _relay_close(self, request: web.Request) -> web.StreamResponse:
        """The front saw the far end die: its relays go now (not after their silence)."""
        remote = (await read_json(request)).get("remote")
        return json_response({"closed": self.relays.close_peer(str(remote))})

    async def _relay_ws(self, request: web.Request) -> web.StreamResponse:
        return await self.relays.accept(request)

    async def _close_all(self, request: web.Request) -> web.StreamResponse:
        return json_response({"closed": self.close_all_rooms(CloseReason.DRAINED)})


@web.middleware
async def _adopt_front_request_id(request: web.Request, handler: Any) -> web.StreamResponse:
    rid = request.headers.get(FRONT_REQUEST_ID)
    if rid:
        request[REQUEST_ID_KEY] = rid
    resp: web.StreamResponse = await handler(request)
    return resp


def die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent exits.  Also exits at once
    when the parent is already gone (it died before the call)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover
            log.warning("prctl(PR_SET_PDEATHSIG) is not available; relying on the stdin pipe")
    if os.getppid() != parent_pid:
        os._exit(1)


async def run(cfg: NodeConfig, index: int, socket_path: str) -> int:
    node = WorkerNode(cfg, index=index, socket_path=socket_path)
    await node.start()
    node.own_gc()
    loop = asyncio.get_running_loop()
    # the front drains its workers itself; a SIGTERM sent to the worker (systemd's control group,
    # an operator) drains it like a node, and a second one ends it
    stop = stop_on_signals(node, cfg.drain_deadline_s)
    # the front keeps our stdin open: end-of-file means it is gone
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def _watch_parent() -> None:
        while await reader.read(4096):
            pass
        log.warning("worker %d: the front closed the pipe; exiting", index)
        stop.set()

    watcher = loop.create_task(_watch_parent())
    log.info(
        "worker %d (pid %d) ready: media udp %s:%d, tcp %s",
        index, os.getpid(), cfg.advertised_ip, node.media_port, node.port.tcp_port or "off",
    )
    await stop.wait()
    watcher.cancel()
    await node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="levelchat-sfu-worker", description="LevelChat SFU forwarding worker")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--parent", type=int, required=True)
    args = p.parse_args(argv)
    die_with_parent(args.parent)
    try:
        cfg = decode_config(sys.stdin.buffer.readline())
    except ConfigError as exc:
        sys.stderr.write(f"levelchat-sfu worker {args.index}: configuration error: {exc}\n")
        return 2
    setup_logging(cfg.log_level, cfg.log_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        return asyncio.run(run(cfg, args.index, args.socket))
    except OSError as exc:
        sys.stderr.write(f"levelchat-sfu worker {args.index}: cannot start: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
