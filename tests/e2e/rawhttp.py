"""HTTP/1.1 over a raw socket, for what aiohttp's client cannot send: requests split into timed
segments, broken framing, parser-level junk; and the check every refusal must pass (RFC 7807
problem+json with a catalogue code and its status)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from levelchat.errors import CATALOGUE, SDK_ONLY_STATUSES

PROBLEM_TYPE = "application/problem+json"


@dataclass
class RawReply:
    """One response as read off the socket; ``status`` 0: the server closed without answering."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed_s: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


def request_bytes(method: str, path: str, *, headers: Sequence[tuple[str, str]] = (), body: bytes | None = None,
                  chunked: bool = False, close: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None and chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    if body is None:
        return head
    if chunked:
        return head + chunk(body)
    return head + body


def chunk(body: bytes, size: int = 1000) -> bytes:
    """``body`` in chunked transfer encoding, ``size`` bytes a chunk."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def split(data: bytes, *cuts: int) -> list[bytes]:
    """``data`` cut at these offsets (e.g. 1460: one TCP segment's worth)."""
    bounds = [0, *[c for c in cuts if 0 < c < len(data)], len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


async def _read_reply(reader: asyncio.StreamReader, head_only: bool) -> RawReply:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return RawReply(0)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    status = int(status_line.split()[1])
    if head_only or status in (204, 304):
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += data[:-2]
    else:
        body = await reader.read()
    return RawReply(status, headers, body)


async def exchange(port: int, parts: Sequence[bytes], *, gap_s: float = 0.05, timeout_s: float = 15.0,
                   source: str | None = None, host: str = "127.0.0.1") -> RawReply:
    """Send ``parts`` ``gap_s`` apart on a new connection, then read one response (or the close).
    A server that neither answers nor closes within ``timeout_s`` fails with ``TimeoutError``."""
    t0 = time.monotonic()

    async def go() -> RawReply:
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(source, 0) if source else None, limit=1 << 20
        )
        try:
            for i, part in enumerate(parts):
                if i:
                    await asyncio.sleep(gap_s)
                try:
                    writer.write(part)
                    await writer.drain()
                except (ConnectionError, OSError):
                    break  # the server answered and closed early: read what it said
            try:
                reply = await _read_reply(reader, head_only=parts[0].startswith(b"HEAD "))
            except (ConnectionError, asyncio.IncompleteReadError):
                reply = RawReply(0)
        finally:
            writer.transport.abort()
        return reply

    reply = await asyncio.wait_for(go(), timeout_s)
    reply.elapsed_s = time.monotonic() - t0
    return reply


def problem_code(reply: RawReply) -> str:
    """The reply's catalogue code, after checking it is a well-formed problem with that code's
    status; raises AssertionError saying what is wrong."""
    ctype = reply.headers.get("content-type", "")
    assert ctype.startswith(PROBLEM_TYPE), f"{reply.status} with content type {ctype!r}: {reply.body[:200]!r}"
    body = reply.json()
    code = body.get("code")
    spec = CATALOGUE.get(code) if isinstance(code, str) else None
    assert spec is not None, f"code {code!r} is not in the catalogue: {body}"
    if spec.status is None:
        assert reply.status in SDK_ONLY_STATUSES, body
    else:
        assert reply.status == spec.status, f"{code} must be {spec.status}, came as {reply.status}"
    assert body.get("status") == reply.status and body.get("type", "").endswith(code), body
    return str(code)


def open_partial(port: int, source: str, head: bytes = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ") -> socket.socket:
    """A connection from ``source`` that has sent the start of a request head and nothing more."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5.0)
    s.connect(("127.0.0.1", port))
    s.sendall(head)
    s.setblocking(False)
    return s
