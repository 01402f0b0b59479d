"""The participants (moderation) API on the control plane: each route is forwarded to the node
that hosts the room (``shared/design/contracts.md``, "Operator services"; the node's side is
``sfu.api.participants``).  The caller's token needs ``room:admin`` for the room; the node gets a
short-lived token of the control plane's own (``room:admin`` for that room only).  The node's
answer, refusal included, comes back as it is; a node that cannot be reached is
``service_unavailable`` (retry)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from control.model import RoomState
from control.service import ControlService
from levelchat.errors import ApiError
from levelchat.tokens import validate_room
from levelchat.web import bearer_token, read_body

#: the participants API's routes, as on the node
ROUTES = (
    ("GET", "/v1/rooms/{room}/participants"),
    ("DELETE", "/v1/rooms/{room}/participants/{identity}"),
    ("PATCH", "/v1/rooms/{room}/participants/{identity}"),
    ("POST", "/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute"),
    ("POST", "/v1/rooms/{room}/data"),
)
MAX_BODY_BYTES = 192 * 1024
RETRY_AFTER_S = 2


ServiceOf = Callable[[web.Request], ControlService]


async def forward_to_room_node(request: web.Request, svc: ControlService) -> web.StreamResponse:
    claims = svc.authorize(bearer_token(request), "room:admin")
    room_id = validate_room(request.match_info["room"])
    claims.require_room_access(room_id)
    body: bytes | None = None
    if request.method in ("POST", "PATCH"):
        if request.content_type != "application/json":
            raise ApiError("bad_request", f"content type must be application/json, not {request.content_type or 'none'}")
        body = await read_body(request, MAX_BODY_BYTES, "body")
    room, node = await svc.lookup_room(room_id)
    if node is None or room.state is not RoomState.LIVE:
        raise ApiError("service_unavailable", f"room {room_id!r} has no live node now", retry_after_s=RETRY_AFTER_S)
    reply = await svc.forward_to_node(node, room_id, request.method, request.rel_url.raw_path, body)
    if reply is None:
        raise ApiError(
            "service_unavailable",
            f"the node of room {room_id!r} ({node.id}) did not answer",
            retry_after_s=RETRY_AFTER_S,
        )
    return reply.as_response(request)


def add_routes(app: web.Application, service_of: ServiceOf) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await forward_to_room_node(request, service_of(request))

    for method, path in ROUTES:
        app.router.add_route(method, path, handler)
