"""Signaling WebSocket tests against a real node process: a raw RFC 6455 client on a plain socket
(frames built by hand, masked or not, a small receive buffer for a client that does not read),
the node's VmRSS, its metrics, and a live WHIP/WHEP media session to watch across an attack."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.procs import Proc, Procs, admin_token

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True) -> bytes:
    """One WebSocket frame as a client sends it (masked unless told not to)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, key)
    return head + key + masked


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def rpc(method: str, params: Any = None, rid: int | str | None = None) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params if params is not None else {}}
    if rid is not None:
        body["id"] = rid
    return json.dumps(body).encode()


class RawWs:
    """A blocking client socket that did the opening handshake by hand."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self._buf = rest

    @classmethod
    def connect(
        cls, url: str, path: str, *, source: str = "127.0.0.1", rcvbuf: int | None = None,
        extra: bytes = b"", timeout_s: float = 10.0,
    ) -> RawWs:
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: the window the client offers stays this small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout_s)
        sock.bind((source, 0))
        sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        sock.sendall(request + extra)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError(f"closed during the handshake: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"no upgrade: {head!r}")
        return cls(sock, rest)

    def send(self, opcode: int, payload: bytes, *, mask: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, mask=mask))

    def send_text(self, payload: bytes, *, mask: bool = True) -> None:
        self.send(OP_TEXT, payload, mask=mask)

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv(self) -> tuple[int, bytes]:
        """The next frame from the node (servers do not mask); EOFError at the end of the stream."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def recv_json(self) -> dict[str, Any]:
        """The next text frame (pings and pongs skipped)."""
        while True:
            op, data = self.recv()
            if op == OP_TEXT:
                result: dict[str, Any] = json.loads(data)
                return result
            if op == OP_CLOSE:
                raise AssertionError(f"closed: {close_code(data)}")

    def until_close(self, timeout_s: float, *, pong: bool = False) -> tuple[int | None, list[dict[str, Any]], int]:
        """Read to the close frame: (its code or None at a plain end of stream, the text frames
        before it, pings seen); ``pong``: answer each ping as a live client does."""
        self.sock.settimeout(timeout_s)
        texts: list[dict[str, Any]] = []
        pings = 0
        try:
            while True:
                op, data = self.recv()
                if op == OP_TEXT:
                    texts.append(json.loads(data))
                elif op == OP_PING:
                    pings += 1
                    if pong:
                        self.send(OP_PONG, data)
                elif op == OP_CLOSE:
                    return close_code(data), texts, pings
        except (EOFError, ConnectionError):
            return None, texts, pings

    def close(self) -> None:
        self.sock.close()


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005


def vm_rss_bytes(pid: int) -> int:
    """VmRSS of a process and its children (a multi-worker node's front and its workers)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) * 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += vm_rss_bytes(int(child))
            except FileNotFoundError:
                pass  # gone meanwhile
    assert total, "no VmRSS"
    return total


async def metrics(url: str) -> dict[str, float]:
    """The node's signaling metrics; behind a multi-worker front, summed over the workers."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for m in re.finditer(r"^(levelchat_sfu_signaling_\w+)(?:\{([^}]*)\})? (\S+)$", text, re.MULTILINE):
        labels = ",".join(p for p in (m.group(2) or "").split(",") if p and not p.startswith("worker="))
        key = f"{m.group(1)}{{{labels}}}" if labels else m.group(1)
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def dropped(m: Mapping[str, float]) -> float:
    return m.get('levelchat_sfu_signaling_frames_dropped_total{reason="rate_limited"}', 0.0)


def closed(m: Mapping[str, float], reason: str) -> float:
    return m.get(f'levelchat_sfu_signaling_sockets_closed_total{{reason="{reason}"}}', 0.0)


async def healthz_s(url: str) -> float:
    """How long ``/healthz`` takes to answer 200."""
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, http.get(url + "/healthz") as resp:
        assert resp.status == 200
    return time.monotonic() - start


def env_of(**settings: object) -> dict[str, str]:
    return {f"LEVELCHAT_SFU_{k.upper()}": str(v) for k, v in settings.items()}


@dataclass
class Live:
    """A node process and a WHIP publisher -> WHEP subscriber pair with media flowing through it."""

    node: Proc
    pub: WhipPublisher
    sub: WhepSubscriber
    room: str

    def frames(self) -> int:
        return sum(self.sub.frames.values())

    async def still_flowing(self, more: int = 20, timeout_s: float = 20.0) -> None:
        """The subscriber's received frames keep growing (by ``more``) from now on."""
        start = self.frames()
        await wait_for(lambda: self.frames() >= start + more, timeout_s, f"{more} more frames at the subscriber")


@asynccontextmanager
async def live_node(workdir: Path, room: str, *, workers: int = 1, process_env: Mapping[str, str] | None = None,
                    **settings: object) -> AsyncIterator[Live]:
    """``settings``: node config (``LEVELCHAT_SFU_*``); ``process_env``: other environment of the node's
    process (``PYTHONMALLOC``...)."""
    procs = Procs(workdir)
    settings = {"rate_limit_ip_per_s": 0, "rate_limit_key_per_s": 0, **settings}
    node = procs.node("ws", None, env={**(process_env or {}), **env_of(**settings)}, extra_args=("--workers", str(workers)))
    pub = sub = None
    try:
        await node.wait_healthy()
        await wait_for_ready(node.url)
        pub = WhipPublisher(node.url, room, admin_token("room:join", "room:publish", room=room, identity="alice"))
        await pub.connect(timeout=20)
        sub = WhepSubscriber(node.url, room, admin_token("room:join", "room:subscribe", room=room, identity="viewer"))
        status, body = await sub.connect(timeout=20)
        assert status == 201, body
        live = Live(node, pub, sub, room)
        await live.still_flowing(timeout_s=30)
        yield live
    finally:
        if sub is not None:
            await sub.close()
        if pub is not None:
            await pub.close()
        procs.stop_all()


async def wait_for_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(url + "/readyz") as resp:
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} not ready within {timeout_s} s")
            await asyncio.sleep(0.1)


def rtc_path(room: str, identity: str, scopes: tuple[str, ...] = ("room:join", "room:publish", "room:subscribe")) -> str:
    tok = admin_token(*scopes, room=room, identity=identity)
    return f"/v1/rtc?access_token={tok}"


async def in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)
