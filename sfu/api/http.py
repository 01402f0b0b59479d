"""The node's HTTP API: WHIP, WHEP, rooms, health, metrics (``shared/design/contracts.md``)."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from levelchat import console
from levelchat.errors import ApiError
from levelchat.ratelimit import Limit, make_rate_limit_middleware
from levelchat.tokens import Claims, validate_room
from levelchat.web import (
    bearer_token,
    json_response,
    make_cors_middleware,
    make_error_middleware,
    read_body,
    read_json,
    readiness_response,
)
from sfu import clock
from sfu.api import participants, recordings, rtc, session_ice, usage, webhooks
from sfu.api.sessions import MediaSession, Owner
from sfu.metrics import CONTENT_TYPE, render
from sfu.routing.participant import ParticipantKind
from sfu.routing.rooms import Room, RoomPolicy
from sfu.signaling import sdpfrag
from sfu.transport.peer import CloseReason

if TYPE_CHECKING:
    from sfu.config import NodeConfig
    from sfu.node import Node

NODE_KEY = web.AppKey("node", object)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SDP_TYPE = "application/sdp"
#: WHEP answer header naming each published track the subscriber's offer cannot carry
REFUSED_TRACK_HEADER = "LevelChat-Refused-Track"
RATE_LIMITED_PATHS = ("/whip/", "/whep/", "/v1/rooms", "/v1/rtc", "/v1/recordings")
WHIP_SCOPES = ("room:join", "room:publish")
WHEP_SCOPES = ("room:join", "room:subscribe")
#: the browser SDK, always served; the demo pages, served with ``demo_page`` (dev mode's default)
SDK_FILES = frozenset({
    "levelchat.js", "levelchat-signaling.js", "levelchat-errors.js", "levelchat-config.js", "levelchat-data.js",
    "levelchat-transport.js", "levelchat-codecs.js", "levelchat-recording.js", "levelchat-dynacast.js",
    "levelchat.d.ts", "whip.js", "stats.js",
})
#: content types mimetypes would get wrong (``.ts`` is MPEG transport stream to it)
STATIC_TYPES = {".d.ts": "application/typescript; charset=utf-8"}
DEMO_FILES = frozenset({"index.html", "room.html", "app.js", "devtoken.js"})
STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
STATIC_FILES_KEY = web.AppKey("static_files", frozenset)


def _node(request: web.Request) -> Node:
    return request.app[NODE_KEY]  # type: ignore[return-value]


def _claims(request: web.Request) -> Claims:
    return _node(request).verifier.verify(bearer_token(request), time.time())


def _room_claims(request: web.Request, *scopes: str) -> tuple[Node, str, Claims]:
    """The node, the path's room and the token's claims, checked: the token carries ``scopes``
    and may act in this room (its ``room`` claim names it, or it has none and carries
    ``room:admin``: ``Claims.require_room_access``)."""
    node = _node(request)
    room_id = validate_room(request.match_info["room"])
    claims = _claims(request)
    claims.require(*scopes)
    claims.require_room_access(room_id)
    return node, room_id, claims


def _session_claims(request: web.Request) -> tuple[Node, str, Claims]:
    """As ``_room_claims`` for a session URL: the token has ``room:join`` or ``room:admin``."""
    node, room_id, claims = _room_claims(request)
    if "room:admin" not in claims.scopes:
        claims.require("room:join")
    return node, room_id, claims


def _owned_session(request: web.Request) -> tuple[Node, MediaSession]:
    """The session of the path (``/whip|whep/{room}/{session}``), when the token may act on it:
    the identity that created it, or ``room:admin`` for the room (``sfu.api.sessions.Owner``);
    any other token gets ``not_found``, as for an id that does not exist."""
    node, room_id, claims = _session_claims(request)
    return node, _owned(node, request, room_id, claims)


def _owned(node: Node, request: web.Request, room_id: str, claims: Claims) -> MediaSession:
    kind = ParticipantKind.WHIP if request.path.startswith("/whip/") else ParticipantKind.WHEP
    return node.sessions.owned(request.match_info["session"], room_id, kind, claims)


async def _read_sdp(request: web.Request) -> str:
    if request.content_type != SDP_TYPE:
        raise ApiError("bad_request", f"content type must be {SDP_TYPE}, not {request.content_type or 'none'}")
    raw = await read_body(request, 64 * 1024, "SDP offer")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError("bad_request", "SDP offer is not UTF-8") from None


def _owner(claims: Claims, prefix: str, scopes: tuple[str, ...]) -> Owner:
    """Who the new session belongs to: the token's identity, or a random one when it has none
    (an anonymous session: see ``Owner``)."""
    return Owner.of(claims, claims.identity or f"{prefix}-{secrets.token_hex(4)}", scopes)


def _sdp_created(
    request: web.Request, kind: str, room: str, session_id: str, etag: str, answer: str, identity: str
) -> web.Response:
    resp = web.Response(
        status=201,
        body=answer.encode(),
        headers={
            "Content-Type": SDP_TYPE,
            "Location": f"/{kind}/{room}/{session_id}",
            "ETag": etag,
        },
    )
    # the TURN servers, with a credential minted for this session (RFC 9725 §4.6)
    for server in _node(request).ice_servers(identity):
        for value in server.link_values():
            resp.headers.add("Link", value)
    return resp


async def whip_post(request: web.Request) -> web.StreamResponse:
    node, room_id, claims = _room_claims(request, *WHIP_SCOPES)
    offer = await _read_sdp(request)
    node.usage.check_quota()
    now = clock.now_ms()
    room = node.room_for_join(room_id, now)
    owner = _owner(claims, "whip", WHIP_SCOPES)
    session, answer = node.sessions.publish(room, owner, claims.name, offer, now)
    return _sdp_created(request, "whip", room_id, session.id, session.etag, answer, owner.identity)


async def whep_post(request: web.Request) -> web.StreamResponse:
    node, room_id, claims = _room_claims(request, *WHEP_SCOPES)
    target = request.match_info.get("identity")
    offer = await _read_sdp(request)
    if node.revoked:
        raise ApiError("node_revoked", "this node was revoked and accepts no new work")
    node.usage.check_quota()
    now = clock.now_ms()
    room = node.existing_room(room_id, now)
    owner = _owner(claims, "whep", WHEP_SCOPES)
    session, answer = node.sessions.subscribe(room, owner, target, offer, now)
    resp = _sdp_created(request, "whep", room_id, session.id, session.etag, answer, owner.identity)
    for kind, code, _detail in session.refused:
        # a track the subscriber cannot decode: its section is answered inactive
        resp.headers.add(REFUSED_TRACK_HEADER, f"kind={kind}; code={code}")
    return resp


async def ice_servers_options(request: web.Request) -> web.StreamResponse:
    """``OPTIONS /whip/{room}`` or ``/whep/{room}`` with the token a ``POST`` would carry: ``204``
    with the TURN servers as ``Link: rel="ice-server"`` headers, credentials minted now, so a
    client can configure its peer connection before it makes its offer (RFC 9725 §4.6 hands
    them out in the ``201``, too late for the offer's candidates). A CORS preflight (an
    ``OPTIONS`` with ``Access-Control-Request-Method``) is the CORS middleware's, not this."""
    whip = request.path.startswith("/whip/")
    node, _room_id, claims = _room_claims(request, *(WHIP_SCOPES if whip else WHEP_SCOPES))
    identity = claims.identity or f"{'whip' if whip else 'whep'}-{secrets.token_hex(4)}"
    resp = web.Response(status=204, headers={"Allow": "POST, OPTIONS"})
    for server in node.ice_servers(identity):
        for value in server.link_values():
            resp.headers.add("Link", value)
    return resp


async def session_delete(request: web.Request) -> web.StreamResponse:
    node, session = _owned_session(request)
    node.sessions.end(session, clock.now_ms())
    return web.Response(status=200)


async def whep_layer(request: web.Request) -> web.StreamResponse:
    """``POST /whep/{room}/{session}/layer`` ``{"rid": "h"}``: the simulcast layer the session's
    video receives (``"rid": null``: the highest the publisher sends, the default).  The switch
    happens at that layer's next keyframe; the answer is ``{"layers": [{"rid", "active"}, ...]``
    (low to high), ``"target"``, ``"current"``, ``"switching_to"}``.  Auth as for DELETE."""
    node, session = _owned_session(request)
    body = await read_json(request)
    if "rid" not in body:
        raise ApiError("bad_request", 'the body needs "rid": a layer\'s rid, or null for the highest')
    rid = body["rid"]
    if rid is not None and (not isinstance(rid, str) or not rid):
        raise ApiError("bad_request", '"rid" must be a non-empty string or null')
    result = node.sessions.set_layer(session, rid, clock.now_ms())
    return json_response(result)


async def session_patch(request: web.Request) -> web.StreamResponse:
    """``PATCH /whip|whep/{room}/{session}`` with an ``application/trickle-ice-sdpfrag`` body
    (RFC 9725 §4.3): candidates only (trickle) are accepted with 204 (the node, ICE-lite, learns
    the client's address from its checks); new ``a=ice-ufrag``/``a=ice-pwd`` restart ICE: 200
    with the node's new credentials as a fragment and the session's new ``ETag``.  ``If-Match``
    names the ICE session (``*`` for a restart); a stale one is ``conflict`` (see
    ``sfu.api.session_ice``).  Auth as for DELETE."""
    node, room_id, claims = _session_claims(request)
    accept = {"Accept-Patch": sdpfrag.CONTENT_TYPE}
    if request.content_type != sdpfrag.CONTENT_TYPE:
        raise ApiError(
            "bad_request",
            f"content type must be {sdpfrag.CONTENT_TYPE} (trickle ICE or ICE restart), not {request.content_type or 'none'}",
            headers=accept,
        )
    try:
        raw = await read_body(request, sdpfrag.MAX_FRAGMENT_BYTES, "fragment")
    except ApiError as err:
        err.headers.update(accept)
        raise
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError("bad_request", "the fragment is not UTF-8", headers=accept) from None
    session = _owned(node, request, room_id, claims)
    result = session_ice.patch_ice(
        session,
        text,
        request.headers.get("If-Match"),
        advertised=node.sessions.advertised,
        advertised_tcp=node.sessions.advertised_tcp,
    )
    if result.fragment is None:
        return web.Response(status=204, headers={"ETag": result.etag})
    return web.Response(
        status=200, body=result.fragment.encode(), headers={"Content-Type": sdpfrag.CONTENT_TYPE, "ETag": result.etag}
    )


# -- rooms -----------------------------------------------------------------------------------------
def _policy_from(body: dict[str, object], node: Node) -> RoomPolicy:
    cfg = node.config
    max_p = body.get("max_participants", cfg.default_max_participants)
    if not isinstance(max_p, int) or isinstance(max_p, bool) or not 1 <= max_p <= cfg.max_participants:
        raise ApiError("bad_request", f"max_participants must be an integer from 1 to {cfg.max_participants}")
    codecs = body.get("codecs", list(cfg.default_codecs))
    if not isinstance(codecs, list) or not codecs or not all(isinstance(c, str) for c in codecs):
        raise ApiError("bad_request", "codecs must be a non-empty list of codec names")
    from sfu.signaling.codecs import CodecPolicy

    try:
        CodecPolicy.parse(codecs)
    except ValueError as exc:
        raise ApiError("bad_request", f"codecs: {exc}") from None
    timeout = body.get("empty_timeout_s", cfg.default_empty_timeout_s)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 <= timeout <= 86400:
        raise ApiError("bad_request", "empty_timeout_s must be an integer from 0 to 86400")
    recording = body.get("recording", False)
    if not isinstance(recording, bool):
        raise ApiError("bad_request", "recording must be true or false")
    return RoomPolicy(max_participants=max_p, codecs=tuple(codecs), empty_timeout_s=timeout, recording=recording)


async def rooms_post(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    claims = _claims(request)
    claims.require("room:create")
    body = await read_json(request)
    room_id = body.get("room")
    room_id = validate_room(room_id) if room_id is not None else "room-" + secrets.token_hex(6)
    claims.require_room(room_id)
    policy = _policy_from(body, node)
    node.check_accepting_rooms()
    room, created = node.rooms.create(room_id, policy, clock.now_ms())
    if created:
        node.webhooks.room_created(room)
    return json_response(room.describe(), status=201 if created else 200)


def _room_view(node: Node, room: Room, claims: Claims) -> dict[str, object]:
    """Room info: its participants by identity (and public sid); each one's WHIP/WHEP session
    URL (``session``) only for a ``room:admin`` token: a session URL is its creator's capability."""
    view = room.describe()
    if "room:admin" in claims.scopes:
        participants = []
        for p in room.participants.values():
            entry = p.describe()
            session = node.sessions.session_of(p)
            entry["session"] = f"/{p.kind.value}/{room.id}/{session.id}" if session is not None else None
            participants.append(entry)
        view["participants"] = participants
    return view


async def rooms_list(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    claims = _claims(request)
    claims.require("room:admin")
    return json_response({"rooms": [_room_view(node, r, claims) for r in node.rooms.public_rooms()]})


async def room_get(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    room_id = validate_room(request.match_info["room"])
    claims = _claims(request)
    if "room:admin" not in claims.scopes:
        claims.require("room:join")
    claims.require_room_access(room_id)
    room: Room = node.rooms.get(room_id, clock.now_ms())
    return json_response(_room_view(node, room, claims))


async def room_delete(request: web.Request) -> web.StreamResponse:
    node, room_id, claims = _room_claims(request, "room:admin")
    now = clock.now_ms()
    room = node.rooms.rooms.get(room_id)
    if room is None:
        node.rooms.get(room_id, now)  # room_not_found unless recently closed
        return web.Response(status=204)
    node.router.close_room(room, CloseReason.ROOM_CLOSED, now)
    node.sessions.expire()
    return web.Response(status=204)


# -- drain (operators) ----------------------------------------------------------------------------
async def drain_post(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    _claims(request).require("node:admin")
    deadline_s: object = node.config.drain_deadline_s
    if request.can_read_body:
        body = await read_json(request)
        deadline_s = body.get("deadline_s", deadline_s)
    if not isinstance(deadline_s, (int, float)) or isinstance(deadline_s, bool) or not 0 <= deadline_s <= 86400:
        raise ApiError("bad_request", "deadline_s must be a number of seconds from 0 to 86400")
    node.start_drain(float(deadline_s))
    return json_response(node.drain_state(), status=202)


async def drain_delete(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    _claims(request).require("node:admin")
    if not node.cancel_drain():
        raise ApiError("conflict", "this node is not draining")
    return json_response(node.drain_state())


async def drain_get(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    _claims(request).require("node:admin")
    return json_response(node.drain_state())


# -- operations ------------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    ready, reason = node.readiness()
    return readiness_response(ready, reason)


async def metrics(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    return web.Response(body=render(node.metrics_registry), headers={"Content-Type": CONTENT_TYPE})


async def index(request: web.Request) -> web.StreamResponse:
    return _static_file(STATIC_DIR / "index.html")


def _static_file(path: Path) -> web.StreamResponse:
    if not path.is_file():
        raise ApiError("not_found", f"no file {path.name}")
    for suffix, content_type in STATIC_TYPES.items():
        if path.name.endswith(suffix):
            return web.FileResponse(path, headers={"Content-Type": content_type})
    return web.FileResponse(path)


async def static_get(request: web.Request) -> web.StreamResponse:
    """``GET /static/{name}``: a file of the static folder the configuration serves (a name, never
    a path: no ``/``, ``..``, NUL or over-long names reach the file system)."""
    name = request.match_info["name"]
    if not STATIC_NAME.fullmatch(name) or name not in request.app[STATIC_FILES_KEY]:
        raise ApiError("not_found", f"no static file {name[:64]!r}")
    return _static_file(STATIC_DIR / name)


def api_application(cfg: NodeConfig, http_counts: dict[tuple[str, str], int]) -> web.Application:
    """An empty application with the API's middlewares (errors, CORS, rate limits), counting each
    response in ``http_counts`` by (route, status): shared by a node and a multi-worker front."""

    def count(request: web.Request, status: int) -> None:
        resource = request.match_info.route.resource
        key = (resource.canonical if resource else "unmatched", str(status))
        http_counts[key] = http_counts.get(key, 0) + 1

    limiter = make_rate_limit_middleware(
        per_ip=Limit(cfg.rate_limit_ip_per_s, cfg.rate_limit_ip_burst) if cfg.rate_limit_ip_per_s > 0 else None,
        per_key=Limit(cfg.rate_limit_key_per_s, cfg.rate_limit_key_burst) if cfg.rate_limit_key_per_s > 0 else None,
        paths=RATE_LIMITED_PATHS,
        known_keys=frozenset(cfg.api_keys),
    )
    # The inner error middleware turns refusals (the handlers', the limiter's) into problems before
    # CORS decorates them, so a browser app can read every problem; the outer one answers the CORS
    # middleware's own refusal (an origin not allowed) and counts every response once.
    return web.Application(
        middlewares=[
            make_error_middleware(count),
            make_cors_middleware(cfg.cors_origins),
            make_error_middleware(),
            limiter,
        ],
        client_max_size=256 * 1024,
    )


def add_static_routes(app: web.Application, cfg: NodeConfig) -> None:
    """``/static/{name}`` (the browser SDK, always; the demo pages and the dev token helper only
    with ``demo_page``, by default in dev mode only) and ``/`` (the demo page), when the static
    folder is installed."""
    if not STATIC_DIR.is_dir():
        return
    files = SDK_FILES | DEMO_FILES if cfg.serves_demo_page else SDK_FILES
    app[STATIC_FILES_KEY] = frozenset(files)
    if cfg.serves_demo_page:
        app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_get)


def create_app(node: Node) -> web.Application:
    app = api_application(node.config, node.http_counts)
    app[NODE_KEY] = node
    r = app.router
    r.add_post("/whip/{room}", whip_post)
    r.add_route("OPTIONS", "/whip/{room}", ice_servers_options)
    r.add_delete("/whip/{room}/{session}", session_delete)
    r.add_patch("/whip/{room}/{session}", session_patch)
    r.add_post("/whep/{room}", whep_post)
    r.add_route("OPTIONS", "/whep/{room}", ice_servers_options)
    r.add_post("/whep/{room}/{identity}", whep_post)
    r.add_delete("/whep/{room}/{session}", session_delete)
    r.add_patch("/whep/{room}/{session}", session_patch)
    r.add_post("/whep/{room}/{session}/layer", whep_layer)
    r.add_post("/v1/rooms", rooms_post)
    r.add_get("/v1/rooms", rooms_list)
    r.add_get("/v1/rooms/{room}", room_get)
    r.add_delete("/v1/rooms/{room}", room_delete)
    r.add_post("/v1/node/drain", drain_post)
    r.add_delete("/v1/node/drain", drain_delete)
    r.add_get("/v1/node/drain", drain_get)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    rtc.setup(app, node)  # GET /v1/rtc: the signaling WebSocket (issue 7)
    participants.add_routes(app, node)  # the participants (moderation) API (issue 14)
    console.add_routes(app)  # the operator console's static page
    webhooks.setup(app, node.webhooks, node.verifier)  # /v1/webhooks (issue 14)
    recordings.add_routes(app, node)  # recording without transcoding (issue 14)
    usage.setup(app, node.usage, node.verifier)  # /v1/usage (issue 14)
    add_static_routes(app, node.config)
    return app
