"""Operator routes of the control plane that reach into its nodes, for the operator console
(``levelchat.console``) and scripts:

* ``GET /v1/rooms`` (``room:admin``, a token bound to no room): every live node's rooms (its ``GET /v1/rooms``), each with
  ``"node": {"id", "url"}``; a node that does not answer is named in ``"unreachable"``;
* ``DELETE /v1/rooms/{room}`` (``room:admin``): forwarded to the room's node (as the participants
  API is), which closes it;
* ``POST``/``DELETE /v1/nodes/{id}/drain`` (``node:admin``): start or cancel the node's drain
  (its ``/v1/node/drain``, body passed on); the node reports ``draining`` in its next heartbeat.

A node's answer, refusal included, comes back as it is; a node that cannot be reached is
``service_unavailable`` (retry)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from control.fields import parse_node_id
from control.model import Node
from control.participants import RETRY_AFTER_S, ServiceOf, forward_to_room_node
from control.service import ControlService
from levelchat.errors import ApiError
from levelchat.web import bearer_token, json_response, read_body

#: a drain request's body (``{"deadline_s"}``) is small
MAX_DRAIN_BODY_BYTES = 1024


async def _node_rooms(svc: ControlService, node: Node) -> list[dict[str, Any]] | None:
    reply = await svc.forward_as_operator(node, "GET", "/v1/rooms", None)
    if reply is None or reply.status != 200:
        return None
    try:
        rooms = json.loads(reply.body)["rooms"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(rooms, list):
        return None
    where = {"id": node.id, "url": node.url}
    return [{**room, "node": where} for room in rooms if isinstance(room, dict)]


async def list_rooms(request: web.Request, svc: ControlService) -> web.StreamResponse:
    claims = svc.authorize(bearer_token(request), "room:admin")
    if claims.room is not None:
        raise ApiError("token/unauthorized", "listing every room needs a room:admin token bound to no room")
    now = svc.now_ms()
    nodes = [n for n in await svc.list_nodes() if n.lease_alive(now)]
    answers = await asyncio.gather(*(_node_rooms(svc, n) for n in nodes))
    rooms: list[dict[str, Any]] = []
    unreachable: list[str] = []
    for node, answer in zip(nodes, answers, strict=True):
        if answer is None:
            unreachable.append(node.id)
        else:
            rooms.extend(answer)
    rooms.sort(key=lambda r: str(r.get("room", "")))
    return json_response({"rooms": rooms, "unreachable": unreachable})


async def node_drain(request: web.Request, svc: ControlService) -> web.StreamResponse:
    svc.authorize(bearer_token(request), "node:admin")
    try:
        node_id = parse_node_id(request.match_info["id"])
    except ValueError as exc:
        raise ApiError("bad_request", str(exc)) from None
    node = await svc.get_node(node_id)
    if not node.lease_alive(svc.now_ms()):
        raise ApiError("conflict", f"node {node.id!r} is {node.state(svc.now_ms()).value}: it cannot drain now")
    body: bytes | None = None
    if request.method == "POST" and request.can_read_body:
        body = await read_body(request, MAX_DRAIN_BODY_BYTES, "body")
    reply = await svc.forward_as_operator(node, request.method, "/v1/node/drain", body)
    if reply is None:
        raise ApiError("service_unavailable", f"node {node.id!r} did not answer", retry_after_s=RETRY_AFTER_S)
    return reply.as_response(request)


def add_routes(app: web.Application, service_of: ServiceOf) -> None:
    async def rooms(request: web.Request) -> web.StreamResponse:
        return await list_rooms(request, service_of(request))

    async def room_delete(request: web.Request) -> web.StreamResponse:
        return await forward_to_room_node(request, service_of(request))

    async def drain(request: web.Request) -> web.StreamResponse:
        return await node_drain(request, service_of(request))

    app.router.add_get("/v1/rooms", rooms)
    app.router.add_delete("/v1/rooms/{room}", room_delete)
    app.router.add_post("/v1/nodes/{id}/drain", drain)
    app.router.add_delete("/v1/nodes/{id}/drain", drain)
