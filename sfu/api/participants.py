"""The participants (moderation) API of a node (``shared/design/contracts.md``, "Operator
services"), every route with ``room:admin`` for the room:

* ``GET /v1/rooms/{room}/participants``: each participant with its tracks and connection quality;
* ``DELETE /v1/rooms/{room}/participants/{identity}``: its sessions close (a signaling client is
  told ``room_closed {"reason": "removed"}``); the identity may join again with a valid token;
* ``PATCH /v1/rooms/{room}/participants/{identity}`` ``{"permissions"?, "name"?, "metadata"?}``:
  enforced at once, the room told (``participant_updated``);
* ``POST /v1/rooms/{room}/participants/{identity}/tracks/{track}/mute`` ``{"muted"}``: forwarding
  stops at the node as for the publisher's own mute; the publisher is told (``track_muted`` with
  ``"by": "server"``) and may not unmute it itself;
* ``POST /v1/rooms/{room}/data`` ``{"data", "destinations"?, "kind"?, "binary"?}``: a message on
  the participants' data channels from the server (an empty sender identity).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from levelchat.errors import ApiError
from levelchat.tokens import validate_room
from levelchat.web import bearer_token, json_response, read_json
from sfu import clock
from sfu.api.rtc import RTC_SERVICE_KEY
from sfu.api.rtc_layers import layers_of
from sfu.api.rtc_session import RtcService
from sfu.routing.data import DataKind
from sfu.routing.participant import Participant
from sfu.routing.rooms import Room
from sfu.routing.simulcast import sources
from sfu.routing.track import PublishedTrack
from sfu.transport.peer import CloseReason

if TYPE_CHECKING:
    from sfu.node import Node

#: the largest server message payload (bytes, after base64 decoding)
MAX_DATA_BYTES = 64 * 1024
#: the most destinations a server message names
MAX_DESTINATIONS = 127
MAX_METADATA_CHARS = 64 * 1024
MAX_NAME_CHARS = 128
PERMISSIONS = ("can_publish", "can_subscribe", "can_publish_data")


PARTICIPANTS_NODE_KEY = web.AppKey("participants_node", object)


def _room(request: web.Request) -> tuple[Node, Room]:
    node: Node = request.app[PARTICIPANTS_NODE_KEY]  # type: ignore[assignment]
    room_id = validate_room(request.match_info["room"])
    claims = node.verifier.verify(bearer_token(request), time.time())
    claims.require("room:admin")
    claims.require_room_access(room_id)
    room = node.rooms.rooms.get(room_id)
    if room is None:
        node.rooms.get(room_id, clock.now_ms())  # room_not_found unless recently closed
        raise ApiError("room_not_found", f"room {room_id!r} is closed")
    return node, room


def _participant(request: web.Request) -> tuple[Node, Room, Participant]:
    node, room = _room(request)
    identity = request.match_info["identity"]
    p = room.participants.get(identity)
    if p is None or p.closed:
        raise ApiError("not_found", f"no participant {identity[:128]!r} in room {room.id!r}")
    return node, room, p


def _rtc(request: web.Request) -> RtcService:
    return request.app[RTC_SERVICE_KEY]


# -- views -------------------------------------------------------------------------------------
def _loss(track: PublishedTrack) -> float:
    """The share of the track's packets lost so far (cumulative: RFC 3550 A.3's figures)."""
    st = track.stats
    if not st.started:
        return 0.0
    expected = st.extended_max - st.base_seq + 1
    return max(0.0, 1 - st.packets / expected) if expected > 0 else 0.0


def _track_view(t: PublishedTrack, now_ms: int) -> dict[str, Any]:
    """The contract's fields, and live figures the operator console shows: the received bit rate
    (all layers; since the previous listing), the loss so far (the worst layer) and, for a
    simulcast track, each layer's bit rate."""
    layers = layers_of(t)
    rates = [layer.rate.bps(layer.octets_in, now_ms) for layer in layers]
    view: dict[str, Any] = {
        "id": t.sid,
        "kind": t.kind,
        "muted": t.muted,
        "layers": list(t.group.rids) if t.group is not None else [],
        "bitrate_bps": sum(rates),
        "loss": round(max(_loss(layer) for layer in layers), 4),
    }
    if t.group is not None:
        view["layer_bitrates_bps"] = {layer.rid or "": bps for layer, bps in zip(layers, rates, strict=True)}
    return view


def transport_of(p: Participant) -> str | None:
    """``udp`` or ``tcp`` (ICE-TCP): how the participant's media flows; None before a transport."""
    for t in (p.publisher, p.subscriber):
        if t is not None:
            return t.transport_kind
    return None


def participant_view(p: Participant, now_ms: int) -> dict[str, Any]:
    wall_ms = int(time.time() * 1000) - (now_ms - p.joined_ms)
    return {
        "identity": p.identity,
        "sid": p.sid,
        "kind": p.kind.value,
        "name": p.name,
        "metadata": p.metadata,
        "joined_at": wall_ms,
        "permissions": p.permissions.describe(),
        "tracks": [_track_view(t, now_ms) for t in sources(p.tracks.values())],
        "quality": p.link.quality.value,  # rated once a second (sfu.routing.quality_feed)
        "transport": transport_of(p),
    }


# -- routes ------------------------------------------------------------------------------------
async def participants_list(request: web.Request) -> web.StreamResponse:
    _node, room = _room(request)
    now = clock.now_ms()
    return json_response({"participants": [participant_view(p, now) for p in room.participants.values()]})


async def participant_delete(request: web.Request) -> web.StreamResponse:
    node, _room_, p = _participant(request)
    node.router.leave(p, CloseReason.REMOVED, clock.now_ms())
    node.sessions.forget(p)  # a WHIP/WHEP session's URL goes with it
    return web.Response(status=204)


def _optional_str(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body[name]
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise ApiError("bad_request", f"{name} must be a string of at most {limit} characters, or null")
    return value


async def participant_patch(request: web.Request) -> web.StreamResponse:
    node, room, p = _participant(request)
    body = await read_json(request)
    unknown = set(body) - {"permissions", "name", "metadata"}
    if unknown:
        raise ApiError("bad_request", f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    perms = body.get("permissions", {})
    if not isinstance(perms, dict) or set(perms) - set(PERMISSIONS):
        raise ApiError("bad_request", f"permissions must be an object with some of {', '.join(PERMISSIONS)}")
    if not all(isinstance(v, bool) for v in perms.values()):
        raise ApiError("bad_request", "each permission must be true or false")
    name = _optional_str(body, "name", MAX_NAME_CHARS) if "name" in body else p.name
    metadata = _optional_str(body, "metadata", MAX_METADATA_CHARS) if "metadata" in body else p.metadata
    # everything checked: apply
    p.name, p.metadata = name, metadata
    now = clock.now_ms()
    was = p.permissions.describe()
    for key, value in perms.items():
        setattr(p.permissions, key, value)
    if was["can_publish"] and not p.permissions.can_publish:
        _unpublish_all(node, _rtc(request), room, p, now)
    if was["can_subscribe"] != p.permissions.can_subscribe:
        node.router.set_subscribing(p, p.permissions.can_subscribe, now)
    data = _rtc(request).data.sessions.get(p.sid)
    if data is not None:
        data.member.can_send = p.permissions.can_publish_data
    node.router.updated(room, p)
    return json_response(participant_view(p, now))


def _unpublish_all(node: Node, rtc: RtcService, room: Room, p: Participant, now_ms: int) -> None:
    for track in list(p.tracks.values()):
        rtc.published.pop(track.sid, None)
        node.sessions.published.pop(track.sid, None)
        node.router.unpublish(room, p, track, now_ms)
    p.server_muted.clear()


async def track_mute(request: web.Request) -> web.StreamResponse:
    node, room, p = _participant(request)
    track_id = request.match_info["track"]
    track = next((t for t in sources(p.tracks.values()) if t.sid == track_id), None)
    if track is None:
        raise ApiError("not_found", f"participant {p.identity[:128]!r} publishes no track {track_id[:64]!r}")
    body = await read_json(request)
    muted = body.get("muted")
    if not isinstance(muted, bool):
        raise ApiError("bad_request", 'the body needs "muted": true or false')
    now = clock.now_ms()
    p.server_muted &= {t.sid for t in p.tracks.values()}  # forget tracks gone since (a bound)
    if muted:
        p.server_muted.add(track.sid)
    else:
        p.server_muted.discard(track.sid)
    for layer in layers_of(track):
        node.router.set_muted(room, p, layer, muted, now)
    own = _rtc(request).by_sid.get(p.sid)
    if own is not None:  # the others heard it from the router's event; the publisher hears it here
        own.notify("track_muted", {"participant": p.identity, "track": track.sid, "muted": muted, "by": "server"})
    return json_response(_track_view(track, now))


def _payload(body: dict[str, Any]) -> tuple[bytes, bool]:
    data = body.get("data")
    binary = body.get("binary", False)
    if not isinstance(binary, bool):
        raise ApiError("bad_request", "binary must be true or false")
    if not isinstance(data, str):
        raise ApiError("bad_request", 'the body needs "data": a string (base64 with "binary": true)')
    if binary:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("bad_request", "data is not valid base64") from None
    else:
        raw = data.encode()
    if len(raw) > MAX_DATA_BYTES:
        raise ApiError("bad_request", f"data is over {MAX_DATA_BYTES} bytes")
    return raw, not binary


async def room_data(request: web.Request) -> web.StreamResponse:
    _node, room = _room(request)
    body = await read_json(request)
    payload, text = _payload(body)
    dest = body.get("destinations", [])
    if (
        not isinstance(dest, list)
        or len(dest) > MAX_DESTINATIONS
        or not all(isinstance(d, str) and 0 < len(d) <= MAX_NAME_CHARS for d in dest)
    ):
        raise ApiError("bad_request", f"destinations must be a list of at most {MAX_DESTINATIONS} identities")
    kind_name = body.get("kind", "reliable")
    if kind_name not in ("reliable", "lossy"):
        raise ApiError("bad_request", 'kind must be "reliable" or "lossy"')
    kind = DataKind.RELIABLE if kind_name == "reliable" else DataKind.LOSSY
    relay = _rtc(request).data.relay
    n = relay.send_from_server(room.id, kind, payload, text, frozenset(dest), clock.now_ms())
    return json_response({"recipients": n}, status=202)


ROUTES = (
    ("GET", "/v1/rooms/{room}/participants", participants_list),
    ("DELETE", "/v1/rooms/{room}/participants/{identity}", participant_delete),
    ("PATCH", "/v1/rooms/{room}/participants/{identity}", participant_patch),
    ("POST", "/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute", track_mute),
    ("POST", "/v1/rooms/{room}/data", room_data),
)


def add_routes(app: web.Application, node: Node) -> None:
    """Register the routes (after ``sfu.api.rtc.setup``: they use its service)."""
    app[PARTICIPANTS_NODE_KEY] = node
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
