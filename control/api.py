"""HTTP handlers of the control plane (contract: shared/design/contracts.md, "Control plane").

Handlers parse, authorize, call ``ControlService`` and render; refusals are ``ApiError``s that the
``levelchat.web`` error middleware turns into problems.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from control import operator, participants, recordings
from control.fields import parse_node_id
from control.metrics import CONTENT_TYPE
from control.model import MAX_REGISTRATION_BYTES, Heartbeat, Node, NodeRegistration, RoomSpec
from control.service import ControlService, RoomLocation
from levelchat.errors import ApiError
from levelchat.tokens import Claims, validate_room
from levelchat.usage.report import UsageReport
from levelchat.web import bearer_token, json_response, read_json, readiness_response

log = logging.getLogger("levelchat.control.http")

SERVICE_KEY = web.AppKey("control_service", ControlService)

def _service(request: web.Request) -> ControlService:
    return request.app[SERVICE_KEY]


async def _body(request: web.Request, max_bytes: int | None = None) -> dict[str, Any]:
    return await read_json(request) if max_bytes is None else await read_json(request, max_bytes)


def _node_id(request: web.Request) -> str:
    try:
        return parse_node_id(request.match_info["id"])
    except ValueError as exc:
        raise ApiError("bad_request", str(exc)) from None


NODE_IDENTITY_PREFIX = "node:"


def _require_node_identity(claims: Claims, node_id: str) -> None:
    """A ``node:register`` token whose identity is ``node:<id>`` (what nodes mint for themselves)
    speaks for that node only; a token with no node identity is a fleet credential (any node)."""
    identity = claims.identity
    if identity is not None and identity.startswith(NODE_IDENTITY_PREFIX):
        if identity[len(NODE_IDENTITY_PREFIX) :] != node_id:
            raise ApiError("token/unauthorized", f"token is for {identity!r}, not for node {node_id!r}")


def _parse(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as exc:
        raise ApiError("bad_request", str(exc)) from None


def _lease_view(svc: ControlService, node: Node) -> dict[str, Any]:
    return {
        "node": node.to_json(svc.now_ms()),
        "lease_s": svc.config.lease_seconds,
        "heartbeat_interval_s": svc.config.heartbeat_interval_seconds,
    }


def _room_view(loc: RoomLocation) -> dict[str, Any]:
    return loc.room.to_json(loc.node)


# -- nodes -------------------------------------------------------------------------------------


async def register_node(request: web.Request) -> web.Response:
    svc = _service(request)
    claims = svc.authorize(bearer_token(request), "node:register")
    reg: NodeRegistration = _parse(NodeRegistration.parse, await _body(request, MAX_REGISTRATION_BYTES))
    _require_node_identity(claims, reg.id)
    node, _ = await svc.register(reg, node_bound=claims.identity == f"{NODE_IDENTITY_PREFIX}{reg.id}")
    return json_response(_lease_view(svc, node), status=201, headers={"Location": f"/v1/nodes/{node.id}"})


async def node_status(request: web.Request) -> web.Response:
    svc = _service(request)
    claims = svc.authorize(bearer_token(request), "node:register")
    node_id = _node_id(request)
    _require_node_identity(claims, node_id)
    body = await _body(request, MAX_REGISTRATION_BYTES)
    hb: Heartbeat = _parse(Heartbeat.parse, body)
    report = _parse(UsageReport.parse, body["usage"]) if body.get("usage") is not None else None
    if report is not None:  # first: the participant time happened whatever the lease says
        await svc.usage.apply(report)
    node = await svc.heartbeat(node_id, hb)
    view = _lease_view(svc, node)
    if report is not None:
        view["usage"] = await svc.usage.answer()
    return json_response(view)


async def revoke_node(request: web.Request) -> web.Response:
    svc = _service(request)
    svc.authorize(bearer_token(request), "node:admin")
    node = await svc.revoke(_node_id(request))
    return json_response({"node": node.to_json(svc.now_ms())})


async def provision_node(request: web.Request) -> web.Response:
    svc = _service(request)
    svc.authorize(bearer_token(request), "node:admin")
    node = await svc.provision(_node_id(request))
    return json_response({"node": node.to_json(svc.now_ms())})


async def list_nodes(request: web.Request) -> web.Response:
    svc = _service(request)
    svc.authorize(bearer_token(request), "node:admin")
    now = svc.now_ms()
    return json_response({"nodes": [n.to_json(now) for n in await svc.list_nodes()]})


# -- rooms and tokens --------------------------------------------------------------------------


async def create_room(request: web.Request) -> web.Response:
    svc = _service(request)
    claims = svc.authorize(bearer_token(request), "room:create")
    body = await _body(request)
    room = body.get("room")
    room_id = validate_room(room) if room is not None else "room-" + secrets.token_hex(8)
    claims.require_room(room_id)
    spec: RoomSpec = _parse(RoomSpec.parse, body, room_id)
    loc = await svc.ensure_room(spec)
    return json_response(
        _room_view(loc), status=201 if loc.created else 200, headers={"Location": f"/v1/rooms/{room_id}"}
    )


async def get_room(request: web.Request) -> web.Response:
    svc = _service(request)
    claims = svc.authorize_any(bearer_token(request), ("room:admin", "room:create"))
    room_id = validate_room(request.match_info["room"])
    claims.require_room(room_id)
    room, node = await svc.lookup_room(room_id)
    return json_response(room.to_json(node))


async def create_token(request: web.Request) -> web.Response:
    svc = _service(request)
    claims = svc.authorize(bearer_token(request), "room:admin")
    body: Mapping[str, Any] = await _body(request)
    await svc.usage.check_quota()
    jt = await svc.join_token(
        claims,
        room=body.get("room"),
        identity=body.get("identity"),
        scopes=body.get("scopes"),
        ttl_s=body.get("ttl_s"),
        name=body.get("name"),
        metadata=body.get("metadata"),
    )
    return json_response({"token": jt.token, "url": jt.url, "room": jt.room.room, "node": {"id": jt.node.id}})


async def get_usage(request: web.Request) -> web.Response:
    svc = _service(request)
    claims = svc.authorize(bearer_token(request), "room:admin")
    if claims.room is not None:
        raise ApiError("token/unauthorized", "usage is project-wide: the token must not be bound to a room")
    return json_response((await svc.usage.current()).to_json())


# -- probes ------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc = _service(request)
    try:
        await svc.store.ping()
    except Exception as exc:  # any store failure means "not ready"
        return readiness_response(False, f"store is not reachable: {type(exc).__name__}")
    return readiness_response(True, None)


async def metrics(request: web.Request) -> web.Response:
    svc = _service(request)
    return web.Response(body=svc.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/nodes", register_node)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_put("/v1/nodes/{id}/status", node_status)
    app.router.add_delete("/v1/nodes/{id}", revoke_node)
    app.router.add_post("/v1/nodes/{id}/provision", provision_node)
    app.router.add_post("/v1/rooms", create_room)
    app.router.add_get("/v1/rooms/{room}", get_room)
    app.router.add_post("/v1/tokens", create_token)
    app.router.add_get("/v1/usage", get_usage)
    participants.add_routes(app, _service)  # the participants API, forwarded to the room's node
    operator.add_routes(app, _service)  # rooms listing, room close and node drain, through the nodes
    recordings.add_routes(app, _service)  # the recording API, forwarded to the node that records
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
