"""The recording API (contract: "Operator services"): start a room's recording, stop it, read
it, download its files.  ``recording:write`` and the room's ``recording`` policy, as before."""

from __future__ import annotations

import time
from typing import Any, Protocol

from aiohttp import web

from levelchat.errors import ApiError
from levelchat.tokens import Claims, TokenVerifier, validate_room
from levelchat.web import bearer_token, json_response, read_json
from sfu import clock
from sfu.recording.manager import RecordingManager
from sfu.routing.rooms import RoomRegistry


class Node(Protocol):
    """What the recording API needs of the node."""

    verifier: TokenVerifier
    rooms: RoomRegistry
    recordings: RecordingManager

MAX_TRACK_IDS = 64
NOT_READY_RETRY_S = 1


def _claims(node: Node, request: web.Request) -> Claims:
    claims = node.verifier.verify(bearer_token(request), time.time())
    if "recording:write" not in claims.scopes:
        raise ApiError("recording/not-permitted", "recording needs a token with the recording:write scope")
    return claims


async def recording_post(node: Node, request: web.Request) -> web.StreamResponse:
    """``POST /v1/rooms/{room}/recording`` ``{"tracks"?: [ids]}``: 201 once the recorder runs."""
    room_id = validate_room(request.match_info["room"])
    claims = _claims(node, request)
    claims.require_room_access(room_id)
    room = node.rooms.get(room_id, clock.now_ms())
    if not room.policy.recording:
        raise ApiError("recording/not-permitted", f"room {room_id!r} does not allow recording")
    tracks: list[str] | None = None
    if request.can_read_body and request.content_length != 0:
        body = await read_json(request)
        raw = body.get("tracks")
        if raw is not None:
            if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw) or not 1 <= len(raw) <= MAX_TRACK_IDS:
                raise ApiError("bad_request", f'"tracks" must be a list of 1 to {MAX_TRACK_IDS} track ids')
            tracks = list(dict.fromkeys(raw))
    rec = await node.recordings.start(room, tracks)
    return json_response({"id": rec.id, "room": rec.room_id, "status": rec.status.value}, status=201)


def _recording(node: Node, request: web.Request) -> dict[str, Any]:
    claims = _claims(node, request)
    rec_id = request.match_info["id"]
    view = node.recordings.get(rec_id)
    if view is None:
        raise ApiError("not_found", f"no recording {rec_id[:64]!r}")
    claims.require_room_access(str(view.get("room")))
    return view


async def recording_delete(node: Node, request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/recordings/{id}``: stop; the files are final once ``GET`` answers 200."""
    view = _recording(node, request)
    rec = node.recordings.live(view["id"])
    if rec is not None:
        node.recordings.stop(rec)
        view = rec.describe()
    return json_response(view, status=202 if view["status"] == "finishing" else 200)


async def recording_get(node: Node, request: web.Request) -> web.StreamResponse:
    view = _recording(node, request)
    if view["status"] not in ("completed", "failed"):
        raise ApiError(
            "recording_not_ready",
            f"recording {view['id']} is {view['status']}: its files are not final yet",
            retry_after_s=NOT_READY_RETRY_S,
        )
    return json_response(view)


async def recording_file(node: Node, request: web.Request) -> web.StreamResponse:
    """``GET /v1/recordings/{id}/files/{name}``: a name of the recording's file list, never a path."""
    view = _recording(node, request)
    name = request.match_info["name"]
    path = node.recordings.file_path(view["id"], name)
    if path is None:
        raise ApiError("not_found", f"recording {view['id']} has no file {name[:64]!r}")
    content_type = "video/x-matroska" if name.endswith(".mkv") else "video/webm"
    return web.FileResponse(path, headers={"Content-Type": content_type, "Content-Disposition": f'attachment; filename="{name}"'})


ROUTES = (
    ("DELETE", "/v1/recordings/{id}", recording_delete),
    ("GET", "/v1/recordings/{id}", recording_get),
    ("GET", "/v1/recordings/{id}/files/{name}", recording_file),
)


def add_routes(app: web.Application, node: Node) -> None:
    async def post(request: web.Request) -> web.StreamResponse:
        return await recording_post(node, request)

    app.router.add_post("/v1/rooms/{room}/recording", post)
    for method, path, handler in ROUTES:

        def bind(h: Any) -> Any:
            async def route(request: web.Request) -> web.StreamResponse:
                return await h(node, request)  # type: ignore[no-any-return]

            return route

        app.router.add_route(method, path, bind(handler))
