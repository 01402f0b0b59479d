"""Helpers for control-plane tests: stand-in SFU nodes (real HTTP peers that implement the node's
``POST /v1/rooms``), control planes served on ephemeral loopback ports, tokens."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp import web

from control.app import create_app
from control.config import ControlConfig
from levelchat.errors import ApiError
from levelchat.tokens import ApiKey, TokenVerifier, mint
from levelchat.web import bearer_token, json_response, make_error_middleware, read_json

KEY_ID = "testkey"
SECRET = "s" * 40
PROJECT = "levelchat"
KEY = ApiKey(KEY_ID, SECRET)
ALL_SCOPES = ("node:register", "node:admin", "room:create", "room:admin")


def token(*scopes: str, room: str | None = None, key: ApiKey = KEY, ttl_s: int = 600) -> str:
    return mint(key, project=PROJECT, now_s=time.time(), ttl_s=ttl_s, identity="tester", room=room, scopes=scopes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(binary: str) -> tuple[subprocess.Popen[bytes], str]:
    """A throw-away redis-server on a free loopback port (no persistence); its URL once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not answer PING within 10 s")


def flush_redis(url: str) -> None:
    host_port = url.split("//")[1].split("/")[0]
    host, port = host_port.split(":")
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(b"FLUSHALL\r\n")
        assert s.recv(16).startswith(b"+OK")


# -- stand-in SFU nodes --------------------------------------------------------------------------


@dataclass
class StandInNode:
    """A real HTTP peer answering ``POST /v1/rooms`` like an SFU node would."""

    name: str
    reply_status: int = 201
    reply_code: str | None = None
    rooms: list[str] = field(default_factory=list)
    seen_scopes: list[frozenset[str]] = field(default_factory=list)
    #: participants per room, as ``GET /v1/rooms/{room}`` reports them (0 when not set)
    participants: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> StandInNode:
        verifier = TokenVerifier([KEY], PROJECT)

        async def create_room(request: web.Request) -> web.Response:
            claims = verifier.verify(bearer_token(request), time.time())
            claims.require("room:create")
            body = await read_json(request)
            claims.require_room(body["room"])
            self.seen_scopes.append(claims.scopes)
            if self.reply_code is not None:
                raise ApiError(self.reply_code, f"{self.name} refuses", status=self.reply_status
                               if self.reply_status in (406, 415) else None)
            self.rooms.append(body["room"])
            return json_response({"room": body["room"]}, status=self.reply_status)

        def room_claims(request: web.Request) -> str:
            claims = verifier.verify(bearer_token(request), time.time())
            claims.require("room:admin")
            room = request.match_info["room"]
            claims.require_room(room)
            if room not in self.rooms:
                raise ApiError("room_not_found", f"{self.name} has no room {room}")
            return room

        async def get_room(request: web.Request) -> web.Response:
            room = room_claims(request)
            return json_response({"room": room, "num_participants": self.participants.get(room, 0)})

        async def delete_room(request: web.Request) -> web.Response:
            room = room_claims(request)
            self.rooms.remove(room)
            self.deleted.append(room)
            return web.Response(status=204)

        async def healthz(request: web.Request) -> web.Response:
            return json_response({"status": "ok"})

        app = web.Application(middlewares=[make_error_middleware()])
        app.router.add_post("/v1/rooms", create_room)
        app.router.add_get("/v1/rooms/{room}", get_room)
        app.router.add_delete("/v1/rooms/{room}", delete_room)
        app.router.add_get("/healthz", healthz)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- control planes -----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any

    def problem(self, status: int, code: str) -> dict[str, Any]:
        """Assert this is the problem ``code`` with ``status``, RFC 7807 shaped; return the body."""
        assert self.status == status, (self.status, self.body)
        assert self.headers["Content-Type"].startswith("application/problem+json")
        assert self.body["code"] == code, self.body
        assert self.body["status"] == status
        assert self.body["type"] == f"https://levelchat.io/errors/{code}"
        assert self.headers["X-Request-Id"] == self.body["request_id"]
        return dict(self.body)


class ControlPlane:
    def __init__(self, config: ControlConfig) -> None:
        self.config = config
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> ControlPlane:
        self._runner = web.AppRunner(create_app(self.config), shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def call(
        self, method: str, path: str, body: Any = None, *, tok: str | None = None, scopes: tuple[str, ...] = ALL_SCOPES,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        assert self.session is not None
        h = dict(headers or {})
        if tok is None and scopes:
            tok = token(*scopes)
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        # bounded: a stuck request fails the test with its path instead of hanging it
        timeout = aiohttp.ClientTimeout(total=30)
        async with self.session.request(method, self.url + path, json=body, headers=h, timeout=timeout) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            data: Any = raw.decode()
            if "json" in ctype:
                import json

                data = json.loads(raw)
            return Reply(resp.status, resp.headers, data)

    async def register(self, node: StandInNode, **overrides: Any) -> Reply:
        body: dict[str, Any] = {
            "id": node.name,
            "url": node.url,
            "media": {"host": "127.0.0.1", "port": 7882},
            "region": None,
            "capacity": {"max_participants": 1000, "max_rooms": 100},
            "version": "test",
        }
        body.update(overrides)
        return await self.call("POST", "/v1/nodes", body, scopes=("node:register",))

    async def heartbeat(self, node_id: str, **body: Any) -> Reply:
        return await self.call("PUT", f"/v1/nodes/{node_id}/status", body, scopes=("node:register",))

    async def create_room(self, **body: Any) -> Reply:
        return await self.call("POST", "/v1/rooms", body, scopes=("room:create",))

    async def nodes(self) -> dict[str, dict[str, Any]]:
        reply = await self.call("GET", "/v1/nodes", scopes=("node:admin",))
        assert reply.status == 200, reply.body
        return {n["id"]: n for n in reply.body["nodes"]}


def make_config(store: str, **overrides: Any) -> ControlConfig:
    base = ControlConfig(
        host="127.0.0.1",
        port=0,
        api_keys={KEY_ID: SECRET},
        project=PROJECT,
        store=store,
        lease_seconds=30.0,
        heartbeat_interval_seconds=1.0,
        node_timeout_seconds=1.0,
        # with Redis the queue's default file is in the working directory, shared by every test
        webhooks_db=":memory:" if store.startswith("redis") else "",
    )
    return replace(base, **overrides).validate()
