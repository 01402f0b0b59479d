"""The control plane's calls to a node's room API (``POST {node_url}/v1/rooms``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

import aiohttp

from control.model import RoomSpec
from levelchat.errors import CATALOGUE


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


# A node refusing with these is sick or busy, not refusing the request: try the next node.
_NODE_TROUBLE = frozenset({401, 404, 405, 408, 410, 429})


async def create_room(
    session: aiohttp.ClientSession, node_url: str, token: str, spec: RoomSpec, timeout_s: float
) -> NodeCallResult:
    url = f"{node_url}/v1/rooms"
    try:
        async with session.post(
            url,
            json=spec.node_body(),
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            raw = await resp.content.read(64 * 1024)
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return NodeCallResult(NodeCallOutcome.FAILED, None, None, f"{url}: {type(exc).__name__}: {exc}")
    code, detail = _problem(raw)
    if 200 <= status < 300 or status == 409:
        return NodeCallResult(NodeCallOutcome.CREATED, status, code, detail or f"{url}: {status}")
    if 400 <= status < 500 and status not in _NODE_TROUBLE:
        return NodeCallResult(NodeCallOutcome.REFUSED, status, code, detail or f"{url}: {status}")
    return NodeCallResult(NodeCallOutcome.FAILED, status, code, f"{url}: {status} {detail}".strip())


def _problem(raw: bytes) -> tuple[str | None, str]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    code = body.get("code")
    detail = body.get("detail")
    return (code if isinstance(code, str) and code in CATALOGUE else None), (
        detail if isinstance(detail, str) else ""
    )


@dataclass(frozen=True)
class NodeReply:
    status: int
    content_type: str
    body: bytes


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
            return NodeReply(resp.status, resp.headers.get("Content-Type", ""), raw)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
