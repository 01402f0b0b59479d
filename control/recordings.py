"""The recording API on the control plane (contract: "Operator services"), forwarded to the node
that records, as the participants API is (``control.participants``):

* ``POST /v1/rooms/{room}/recording`` goes to the room's node;
* ``GET``/``DELETE /v1/recordings/{id}`` and ``GET /v1/recordings/{id}/files/{name}`` name no
  room: every node whose lease is alive is asked at once, and the one answer other than
  ``not_found`` is the answer (a recording lives on one node).  A file is streamed from that node
  to the caller, never held whole here.

The caller's token needs ``recording:write`` (else ``recording/not-permitted``, as on the node)
and access to the room.  The node gets a short-lived token of the control plane's own with the
caller's recording scopes bound to the caller's room (or to none, for an operator's room-less
token): the node's own checks (the room's recording policy, the recording's room against the
token's) decide, and its answer, refusal included, comes back as it is.  A node that cannot be
reached is ``service_unavailable`` (retry); so is an id no reachable node has while another node
did not answer (it may be there)."""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import web

from control.model import Node, RoomState
from control.nodeclient import NodeReply
from control.participants import RETRY_AFTER_S, ServiceOf
from control.service import ControlService
from levelchat.errors import ApiError
from levelchat.tokens import Claims, validate_room
from levelchat.web import bearer_token, read_body

#: the node's recording ids (``sfu.recording.manager.RECORDING_ID``); anything else is not_found here
RECORDING_ID = re.compile(r"RC_[0-9a-f]{16}")
#: a start's body (``{"tracks"?: [ids]}``, at most 64 ids)
MAX_START_BODY_BYTES = 8 * 1024
#: the caller's scopes a forwarded token may carry
FORWARDED_SCOPES = ("recording:write", "room:admin")


def _claims(svc: ControlService, request: web.Request) -> Claims:
    claims = svc.verifier.verify(bearer_token(request), svc.now_s())
    if "recording:write" not in claims.scopes:
        raise ApiError("recording/not-permitted", "recording needs a token with the recording:write scope")
    return claims


def _scopes(claims: Claims) -> list[str]:
    return [s for s in FORWARDED_SCOPES if s in claims.scopes]


def _unavailable(what: str) -> ApiError:
    return ApiError("service_unavailable", what, retry_after_s=RETRY_AFTER_S)


async def start(request: web.Request, svc: ControlService) -> web.StreamResponse:
    room_id = validate_room(request.match_info["room"])
    claims = _claims(svc, request)
    claims.require_room_access(room_id)
    body: bytes | None = None
    if request.can_read_body and request.content_length != 0:
        if request.content_type != "application/json":
            raise ApiError("bad_request", f"content type must be application/json, not {request.content_type or 'none'}")
        body = await read_body(request, MAX_START_BODY_BYTES, "body")
    room, node = await svc.lookup_room(room_id)
    if node is None or room.state is not RoomState.LIVE:
        raise _unavailable(f"room {room_id!r} has no live node now")
    reply = await svc.forward_scoped(node, claims.room, _scopes(claims), "POST", request.rel_url.raw_path, body)
    if reply is None:
        raise _unavailable(f"the node of room {room_id!r} ({node.id}) did not answer")
    return reply.as_response(request)


def _not_here(reply: NodeReply | None) -> bool:
    """A node's answer that it has no such recording (``recording_not_ready`` is a 404 too, but
    says the node has it)."""
    if reply is None or reply.status != 404:
        return False
    try:
        problem = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(problem, dict) and problem.get("code") == "not_found"


async def _find(
    svc: ControlService, claims: Claims, rec_id: str, method: str, path: str
) -> tuple[Node, NodeReply]:
    """Ask every live node ``method path`` at once: the node that has recording ``rec_id`` and
    its answer."""
    if RECORDING_ID.fullmatch(rec_id) is None:
        raise ApiError("not_found", f"no recording {rec_id[:64]!r}")
    now = svc.now_ms()
    nodes = [n for n in await svc.list_nodes() if n.lease_alive(now)]
    scopes = _scopes(claims)
    replies = await asyncio.gather(*(svc.forward_scoped(n, claims.room, scopes, method, path, None) for n in nodes))
    silent = [n.id for n, r in zip(nodes, replies, strict=True) if r is None]
    for node, reply in zip(nodes, replies, strict=True):
        if reply is not None and not _not_here(reply):
            return node, reply
    if silent:
        raise _unavailable(f"no node answering has recording {rec_id}; {', '.join(silent[:8])} did not answer")
    raise ApiError("not_found", f"no recording {rec_id}")


async def by_id(request: web.Request, svc: ControlService) -> web.StreamResponse:
    """``GET``/``DELETE /v1/recordings/{id}``: one node acts (the others have no such id)."""
    claims = _claims(svc, request)
    _, reply = await _find(svc, claims, request.match_info["id"], request.method, request.rel_url.raw_path)
    return reply.as_response(request)


async def file(request: web.Request, svc: ControlService) -> web.StreamResponse:
    """``GET /v1/recordings/{id}/files/{name}``: the node is found with the recording's own
    ``GET`` (small), then the file is streamed from it."""
    claims = _claims(svc, request)
    rec_id = request.match_info["id"]
    node, _ = await _find(svc, claims, rec_id, "GET", f"/v1/recordings/{rec_id}")
    got = await svc.download_from(node, claims.room, _scopes(claims), request.rel_url.raw_path, request)
    if got is None:
        raise _unavailable(f"node {node.id!r} did not send recording {rec_id}'s file")
    return got.as_response(request) if isinstance(got, NodeReply) else got


def add_routes(app: web.Application, service_of: ServiceOf) -> None:
    async def post(request: web.Request) -> web.StreamResponse:
        return await start(request, service_of(request))

    async def one(request: web.Request) -> web.StreamResponse:
        return await by_id(request, service_of(request))

    async def download(request: web.Request) -> web.StreamResponse:
        return await file(request, service_of(request))

    app.router.add_post("/v1/rooms/{room}/recording", post)
    app.router.add_get("/v1/recordings/{id}", one)
    app.router.add_delete("/v1/recordings/{id}", one)
    app.router.add_get("/v1/recordings/{id}/files/{name}", download)
