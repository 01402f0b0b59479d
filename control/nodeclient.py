"""The control plane's calls to a node: create a room (``POST {node_url}/v1/rooms``), look at one
(``GET``) and close one (``DELETE {node_url}/v1/rooms/{room}``), and probe whether a node's URL
still answers (``GET {node_url}/healthz``).

No call ever raises for what the node (or its URL) does: any client exception, whatever its type
(a URL the HTTP client cannot use raises ``ValueError``, not only ``ClientError``), is a FAILED result.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp
from aiohttp import web

from control.model import RoomSpec
from levelchat.errors import CATALOGUE
from levelchat.web import request_id

MAX_REPLY_BYTES = 64 * 1024


class NodeCallOutcome(Enum):
    CREATED = "created"  # 2xx, or 409: the room already exists there
    REFUSED = "refused"  # 4xx about the request itself: no other node would accept it either
    FAILED = "failed"  # unreachable, timed out, 5xx, 410 revoked, 429, or a reply we cannot read


@dataclass(frozen=True)
class NodeCallResult:
    outcome: NodeCallOutcome
    status: int | None  # HTTP status, None when no reply
    code: str | None  # the node's catalogue code, when it sent a problem
    detail: str
    body: Any = None  # the decoded JSON reply, when there is one


# A node refusing with these is sick or busy, not refusing the request: try the next node.
_NODE_TROUBLE = frozenset({401, 404, 405, 408, 410, 429})


async def _request(
    session: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any, timeout_s: float
) -> tuple[int, bytes] | str:
    """``(status, body)``, or a description of why there is no reply."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.request(
            method,
            url,
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            return resp.status, await resp.content.read(MAX_REPLY_BYTES)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to talk to the node is "no reply"
        return f"{method} {url}: {type(exc).__name__}: {exc}"


async def create_room(
    session: aiohttp.ClientSession, node_url: str, token: str, spec: RoomSpec, timeout_s: float
) -> NodeCallResult:
    url = f"{node_url}/v1/rooms"
    got = await _request(session, "POST", url, token, spec.node_body(), timeout_s)
    if isinstance(got, str):
        return NodeCallResult(NodeCallOutcome.FAILED, None, None, got)
    status, raw = got
    code, detail, _ = _problem(raw)
    if 200 <= status < 300 or status == 409:
        return NodeCallResult(NodeCallOutcome.CREATED, status, code, detail or f"{url}: {status}")
    if 400 <= status < 500 and status not in _NODE_TROUBLE:
        return NodeCallResult(NodeCallOutcome.REFUSED, status, code, detail or f"{url}: {status}")
    return NodeCallResult(NodeCallOutcome.FAILED, status, code, f"{url}: {status} {detail}".strip())


async def room_participants(
    session: aiohttp.ClientSession, node_url: str, token: str, room: str, timeout_s: float
) -> int | None:
    """How many participants the node's copy of ``room`` has: 0 when it has none (or no such
    room), ``None`` when the node cannot tell (unreachable, or an unreadable reply)."""
    got = await _request(session, "GET", f"{node_url}/v1/rooms/{room}", token, None, timeout_s)
    if isinstance(got, str):
        return None
    status, raw = got
    if status == 404:
        return 0
    _, _, body = _problem(raw)
    count = body.get("num_participants") if isinstance(body, dict) else None
    if status != 200 or isinstance(count, bool) or not isinstance(count, int):
        return None
    return count


async def delete_room(
    session: aiohttp.ClientSession, node_url: str, token: str, room: str, timeout_s: float
) -> NodeCallResult:
    url = f"{node_url}/v1/rooms/{room}"
    got = await _request(session, "DELETE", url, token, None, timeout_s)
    if isinstance(got, str):
        return NodeCallResult(NodeCallOutcome.FAILED, None, None, got)
    status, raw = got
    code, detail, _ = _problem(raw)
    ok = 200 <= status < 300 or status == 404
    return NodeCallResult(NodeCallOutcome.CREATED if ok else NodeCallOutcome.FAILED, status, code,
                          f"{url}: {status} {detail}".strip())


async def answers(session: aiohttp.ClientSession, node_url: str, timeout_s: float) -> bool:
    """Whether something answers ``GET {node_url}/healthz`` with 200."""
    got = await _request(session, "GET", f"{node_url}/healthz", None, None, timeout_s)
    return not isinstance(got, str) and got[0] == 200


def _problem(raw: bytes) -> tuple[str | None, str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, "", None
    if not isinstance(body, dict):
        return None, "", body
    code = body.get("code")
    detail = body.get("detail")
    return (
        (code if isinstance(code, str) and code in CATALOGUE else None),
        (detail if isinstance(detail, str) else ""),
        body,
    )


#: a node's reply headers the control plane passes on with its body (a problem's retry advice)
PASSED_HEADERS = ("Retry-After", "X-RateLimit-Reset")


@dataclass(frozen=True)
class NodeReply:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # those of PASSED_HEADERS the node sent

    @classmethod
    def of(cls, resp: aiohttp.ClientResponse, body: bytes) -> NodeReply:
        passed = tuple((k, v) for k in PASSED_HEADERS if (v := resp.headers.get(k)) is not None)
        return cls(resp.status, resp.headers.get("Content-Type", ""), body, passed)

    def as_response(self, request: web.Request) -> web.Response:
        """The reply, passed on to the control plane's caller as it came; a problem's
        ``request_id`` becomes the control plane's (the ``X-Request-Id`` this response carries,
        contracts.md "Errors"), the node's kept as ``node_request_id`` (an extension member) to
        find the node's log line."""
        headers = dict(self.headers)
        if self.content_type:
            headers["Content-Type"] = self.content_type
        if self.status == 204:
            return web.Response(status=204, headers=headers)
        return web.Response(status=self.status, body=self._relabelled(request_id(request)), headers=headers)

    def _relabelled(self, rid: str) -> bytes:
        if not self.content_type.startswith("application/problem+json"):
            return self.body
        try:
            problem = json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return self.body
        if not isinstance(problem, dict):
            return self.body
        node_rid = problem.get("request_id")
        problem["request_id"] = rid
        if isinstance(node_rid, str):
            problem["node_request_id"] = node_rid
        return json.dumps(problem).encode()


#: the largest reply of a node the control plane passes on (a room's participant list)
MAX_FORWARDED_REPLY_BYTES = 4 * 1024 * 1024


async def forward(
    session: aiohttp.ClientSession,
    node_url: str,
    token: str,
    method: str,
    path: str,
    body: bytes | None,
    timeout_s: float,
) -> NodeReply | None:
    """One request to a node's API (a JSON body, if any) and its reply as it came; None when the
    node could not be reached, did not answer in time or sent more than we pass on."""
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        async with session.request(
            method,
            f"{node_url}{path}",
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            raw = await resp.content.read(MAX_FORWARDED_REPLY_BYTES + 1)
            if len(raw) > MAX_FORWARDED_REPLY_BYTES:
                return None
            return NodeReply.of(resp, raw)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None


#: a recording's file through the control plane: copied in chunks this big, never held whole
STREAM_CHUNK_BYTES = 1 << 16
#: and the idle limit (a chunk must come within this long); no total (a recording may be large)
STREAM_IDLE_S = 30.0
#: the node's headers a download passes on
DOWNLOAD_HEADERS = ("Content-Type", "Content-Disposition", "Content-Length", "ETag", "Last-Modified")


async def download(
    session: aiohttp.ClientSession,
    node_url: str,
    token: str,
    path: str,
    request: web.Request,
    connect_timeout_s: float,
) -> web.StreamResponse | NodeReply | None:
    """``GET {node_url}{path}`` streamed to ``request``'s client as it comes; a reply other than
    200 comes back whole as a ``NodeReply`` (a problem is small); None when the node could not be
    reached or failed before the headers."""
    try:
        resp = await session.get(
            f"{node_url}{path}",
            headers={"Authorization": f"Bearer {token}"},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=STREAM_IDLE_S),
        )
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
    async with resp:
        try:
            if resp.status != 200:
                return NodeReply.of(resp, await resp.content.read(MAX_REPLY_BYTES))
            out = web.StreamResponse(
                status=200, headers={k: v for k in DOWNLOAD_HEADERS if (v := resp.headers.get(k)) is not None}
            )
            await out.prepare(request)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
        try:
            async for chunk in resp.content.iter_chunked(STREAM_CHUNK_BYTES):
                await out.write(chunk)
            await out.write_eof()
        except (TimeoutError, aiohttp.ClientError, OSError):
            # the headers are gone: the client sees a short body (Content-Length says so)
            if request.transport is not None:
                request.transport.close()
        return out
