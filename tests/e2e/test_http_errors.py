"""Every refusal of the node's HTTP API is a catalogue problem: status, code, title, type, ids.

A real node on ephemeral loopback ports; offers come from real aiortc peer connections.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from multidict import CIMultiDict

from levelchat.errors import CATALOGUE, TYPE_BASE
from levelchat.tokens import mint
from sfu.node import Node
from tests.e2e.clients import NO_ICE_SERVERS, PatternVideoTrack, WhipPublisher, wait_for
from tests.e2e.conftest import DEV_KEY
from tests.e2e.conftest import token as conftest_token

ROOM = "demo-1"
ALL = ("room:join", "room:publish", "room:subscribe")


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    text: str

    @property
    def body(self) -> dict[str, Any]:
        data = json.loads(self.text)
        assert isinstance(data, dict)
        return data


async def call(
    node: Node,
    method: str,
    path: str,
    *,
    bearer: str | None = None,
    body: bytes | str | None = None,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    hdrs = dict(headers or {})
    if bearer is not None:
        hdrs["Authorization"] = f"Bearer {bearer}"
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    data = body.encode() if isinstance(body, str) else body
    async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as http:
        async with http.request(method, node.url + path, data=data, headers=hdrs) as resp:
            return Reply(resp.status, CIMultiDict(resp.headers), await resp.text())


def assert_problem(reply: Reply, status: int, code: str, instance: str, detail: str = "") -> dict[str, Any]:
    assert reply.status != 500, reply.text
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"] == "application/problem+json"
    body = reply.body
    spec = CATALOGUE[code]
    assert body["code"] == code
    assert body["status"] == status
    assert spec.status in (status, None)
    assert body["title"] == spec.title
    assert body["type"] == TYPE_BASE + code
    assert body["instance"] == instance
    assert body["request_id"] == reply.headers["X-Request-Id"]
    assert body["request_id"].startswith("req_")
    assert detail in body["detail"], body["detail"]
    return body


# -- offers ------------------------------------------------------------------------------------
_OFFERS: dict[str, str] = {}


async def aiortc_offer(kind: str = "publish") -> str:
    """A real aiortc offer (sendonly video+audio, or recvonly for WHEP); the pc is closed again."""
    if kind not in _OFFERS:
        pc = RTCPeerConnection(NO_ICE_SERVERS)
        if kind == "publish":
            pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        else:
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        _OFFERS[kind] = pc.localDescription.sdp
        await pc.close()
    return _OFFERS[kind]


def without(sdp: str, prefix: str) -> str:
    lines = [ln for ln in sdp.splitlines() if not ln.startswith(prefix)]
    assert len(lines) < len(sdp.splitlines()), prefix
    return "\r\n".join(lines) + "\r\n"


#: the cases' tokens are minted when the module is collected, and the whole suite runs before some of
#: them are used (23 minutes in CI): 10-minute tokens had expired by then (token/expired for every case)
CASE_TOKEN_TTL_S = 6 * 3600


def token(room: str, identity: str, scopes: tuple[str, ...] = ("room:join", "room:publish", "room:subscribe")) -> str:
    return conftest_token(room, identity, scopes, ttl_s=CASE_TOKEN_TTL_S)


def unbound_token(identity: str, scopes: tuple[str, ...] = ALL) -> str:
    """A valid dev token with no room claim."""
    return mint(DEV_KEY, project="levelchat", now_s=time.time(), ttl_s=CASE_TOKEN_TTL_S, identity=identity, scopes=scopes)


def foreign_token(**claims: Any) -> str:
    base: dict[str, Any] = {
        "iss": "devkey",
        "aud": "levelchat",
        "iat": int(time.time()),
        "exp": int(time.time()) + CASE_TOKEN_TTL_S,
        "sub": "mallory",
        "room": ROOM,
        "scopes": list(ALL),
    }
    base.update(claims)
    kid = base.pop("kid", "devkey")
    secret = base.pop("secret", "secret")
    return jwt.encode(base, secret, algorithm="HS256", headers={"kid": kid})


async def create_room(node: Node, room: str, **policy: Any) -> None:
    reply = await call(
        node,
        "POST",
        "/v1/rooms",
        bearer=token(room, "admin", scopes=("room:create",)),
        body=json.dumps({"room": room, **policy}),
        content_type="application/json",
    )
    assert reply.status == 201, reply.text


# -- the table ---------------------------------------------------------------------------------
Setup = Callable[[Node], Awaitable[None]]


async def _no_setup(node: Node) -> None:
    return None


async def _empty_room(node: Node) -> None:
    await create_room(node, ROOM)


async def _video_forbidden(node: Node) -> None:
    await create_room(node, ROOM, codecs=["opus", "AV1"])


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int
    code: str
    detail: str = ""
    bearer: str | None = None
    body: str | bytes | None = None
    content_type: str | None = None
    setup: Setup = _no_setup
    allow: str | None = None


def _cases() -> list[Case]:
    good = token(ROOM, "alice", scopes=ALL)
    sdp = "application/sdp"
    whip = f"/whip/{ROOM}"
    whep = f"/whep/{ROOM}"
    return [
        # authentication, on WHIP
        Case("whip: no token", "POST", whip, 401, "unauthorized", "no access token", body="v=0", content_type=sdp),
        Case("whip: malformed token", "POST", whip, 401, "token/invalid", "malformed", bearer="abc.def", body="v=0", content_type=sdp),
        Case("whip: bad signature", "POST", whip, 401, "token/invalid", "rejected",
             bearer=foreign_token(secret="not-the-secret"), body="v=0", content_type=sdp),
        Case("whip: unknown kid", "POST", whip, 401, "token/invalid", "unknown API key",
             bearer=foreign_token(kid="otherkey"), body="v=0", content_type=sdp),
        Case("whip: wrong audience", "POST", whip, 401, "token/invalid", "rejected",
             bearer=foreign_token(aud="someone-else"), body="v=0", content_type=sdp),
        Case("whip: expired", "POST", whip, 401, "token/expired", "expired",
             bearer=foreign_token(exp=int(time.time()) - 120), body="v=0", content_type=sdp),
        Case("whip: missing publish scope", "POST", whip, 401, "token/unauthorized", "room:publish",
             bearer=token(ROOM, "alice", scopes=("room:join", "room:subscribe")), body="v=0", content_type=sdp),
        Case("whip: token for another room", "POST", whip, 401, "token/unauthorized", "demo-2",
             bearer=token("demo-2", "alice", scopes=ALL), body="v=0", content_type=sdp),
        Case("whip: invalid room id", "POST", "/whip/ab", 400, "invalid_room", "4 to 64",
             bearer=good, body="v=0", content_type=sdp),
        Case("whip: room id with odd characters", "POST", "/whip/demo_1!", 400, "invalid_room", "4 to 64",
             bearer=good, body="v=0", content_type=sdp),
        # the offer
        Case("whip: wrong content type", "POST", whip, 400, "bad_request", "application/sdp",
             bearer=good, body="v=0", content_type="text/plain"),
        Case("whip: no content type", "POST", whip, 400, "bad_request", "application/sdp", bearer=good, body=b"v=0"),
        Case("whip: empty body", "POST", whip, 400, "bad_request", "empty", bearer=good, body=b"", content_type=sdp),
        Case("whip: garbage SDP", "POST", whip, 400, "bad_request", "invalid SDP offer",
             bearer=good, body="hello, node\r\n", content_type=sdp),
        Case("whip: binary garbage", "POST", whip, 400, "bad_request", "UTF-8",
             bearer=good, body=bytes(range(128, 256)), content_type=sdp),
        Case("whip: 100 kB offer", "POST", whip, 400, "bad_request", "larger than",
             bearer=good, body="v=0\r\n" + "a=x\r\n" * 20_000, content_type=sdp),
        Case("whip: 2 MB body", "POST", whip, 400, "bad_request", "larger than",
             bearer=good, body=b"v" * 2_000_000, content_type=sdp),
        Case("whip: only codecs the room forbids", "POST", whip, 406, "codec/unsupported", "",
             bearer=good, body="<publish>", content_type=sdp, setup=_video_forbidden),
        # WHEP
        Case("whep: no token", "POST", whep, 401, "unauthorized", "", body="v=0", content_type=sdp),
        Case("whep: missing subscribe scope", "POST", whep, 401, "token/unauthorized", "room:subscribe",
             bearer=token(ROOM, "bob", scopes=("room:join", "room:publish")), body="v=0", content_type=sdp),
        Case("whep: unknown room", "POST", "/whep/nobody-here", 404, "room_not_found", "nobody-here",
             bearer=token("nobody-here", "bob"), body="<subscribe>", content_type=sdp),
        Case("whep: room without a publisher", "POST", whep, 404, "not_found", "no media published",
             bearer=token(ROOM, "bob"), body="<subscribe>", content_type=sdp, setup=_empty_room),
        Case("whep: unknown publisher identity", "POST", f"{whep}/carol", 404, "not_found", "carol",
             bearer=token(ROOM, "bob"), body="<subscribe>", content_type=sdp, setup=_empty_room),
        Case("whep: garbage SDP", "POST", whep, 400, "bad_request", "invalid SDP offer",
             bearer=token(ROOM, "bob"), body="v=0\r\nnonsense\r\n", content_type=sdp, setup=_empty_room),
        # sessions
        Case("delete: unknown session", "DELETE", f"{whip}/PA_0000", 404, "not_found", "PA_0000", bearer=good),
        Case("delete: unknown whep session", "DELETE", f"{whep}/PA_0000", 404, "not_found", "PA_0000", bearer=good),
        Case("delete: no token", "DELETE", f"{whip}/PA_0000", 401, "unauthorized"),
        Case("delete: token for another room", "DELETE", f"{whip}/PA_0000", 401, "token/unauthorized",
             bearer=token("demo-2", "alice")),
        Case("patch: unknown session", "PATCH", f"{whip}/PA_0000", 404, "not_found", "PA_0000",
             bearer=good, body="a=end-of-candidates", content_type="application/trickle-ice-sdpfrag"),
        Case("patch: not an sdpfrag", "PATCH", f"{whep}/PA_0000", 400, "bad_request", "trickle-ice-sdpfrag",
             bearer=good, body="v=0", content_type="application/sdp"),
        Case("patch: no token", "PATCH", f"{whep}/PA_0000", 401, "unauthorized"),
        # routing
        Case("unknown route", "GET", "/nope", 404, "not_found", "/nope"),
        Case("unknown nested route", "POST", "/whip", 404, "not_found"),
        Case("wrong method on whip", "GET", whip, 400, "bad_request", "not allowed", allow="OPTIONS, POST"),
        Case("wrong method on rooms", "PUT", "/v1/rooms", 400, "bad_request", "not allowed", allow="GET, HEAD, POST"),
        Case("wrong method on health", "POST", "/healthz", 400, "bad_request", "not allowed", allow="GET, HEAD"),
        # rooms API
        Case("rooms: no token", "POST", "/v1/rooms", 401, "unauthorized", body="{}", content_type="application/json"),
        Case("rooms: create without room:create", "POST", "/v1/rooms", 401, "token/unauthorized", "room:create",
             bearer=good, body="{}", content_type="application/json"),
        Case("rooms: wrong content type", "POST", "/v1/rooms", 400, "bad_request", "application/json",
             bearer=token(ROOM, "a", scopes=("room:create",)), body="room=x", content_type="application/x-www-form-urlencoded"),
        Case("rooms: invalid JSON", "POST", "/v1/rooms", 400, "bad_request", "not valid JSON",
             bearer=token(ROOM, "a", scopes=("room:create",)), body="{room:", content_type="application/json"),
        Case("rooms: JSON array", "POST", "/v1/rooms", 400, "bad_request", "JSON object",
             bearer=token(ROOM, "a", scopes=("room:create",)), body="[]", content_type="application/json"),
        Case("rooms: invalid room id", "POST", "/v1/rooms", 400, "invalid_room", "4 to 64",
             bearer=unbound_token("a", scopes=("room:create",)), body='{"room": "x"}', content_type="application/json"),
        Case("rooms: another room than the token's", "POST", "/v1/rooms", 401, "token/unauthorized", "demo-2",
             bearer=token(ROOM, "a", scopes=("room:create",)), body='{"room": "demo-2"}', content_type="application/json"),
        Case("rooms: zero participants", "POST", "/v1/rooms", 400, "bad_request", "max_participants",
             bearer=token(ROOM, "a", scopes=("room:create",)), body='{"room": "demo-1", "max_participants": 0}',
             content_type="application/json"),
        Case("rooms: boolean participants", "POST", "/v1/rooms", 400, "bad_request", "max_participants",
             bearer=token(ROOM, "a", scopes=("room:create",)), body='{"room": "demo-1", "max_participants": true}',
             content_type="application/json"),
        Case("rooms: unknown codec", "POST", "/v1/rooms", 400, "bad_request", "codecs",
             bearer=token(ROOM, "a", scopes=("room:create",)), body='{"room": "demo-1", "codecs": ["mp3"]}',
             content_type="application/json"),
        Case("rooms: empty codecs", "POST", "/v1/rooms", 400, "bad_request", "codecs",
             bearer=token(ROOM, "a", scopes=("room:create",)), body='{"room": "demo-1", "codecs": []}',
             content_type="application/json"),
        Case("rooms: negative empty timeout", "POST", "/v1/rooms", 400, "bad_request", "empty_timeout_s",
             bearer=token(ROOM, "a", scopes=("room:create",)), body='{"room": "demo-1", "empty_timeout_s": -1}',
             content_type="application/json"),
        Case("rooms: huge JSON", "POST", "/v1/rooms", 400, "bad_request", "larger than",
             bearer=token(ROOM, "a", scopes=("room:create",)), body='{"room": "' + "x" * 100_000 + '"}',
             content_type="application/json"),
        Case("rooms: list without room:admin", "GET", "/v1/rooms", 401, "token/unauthorized", "room:admin", bearer=good),
        Case("rooms: get unknown", "GET", "/v1/rooms/never-was", 404, "room_not_found", "never-was",
             bearer=unbound_token("a", scopes=("room:admin",))),
        Case("rooms: get invalid id", "GET", "/v1/rooms/ab", 400, "invalid_room", bearer=unbound_token("a", scopes=("room:admin",))),
        Case("rooms: get another room", "GET", "/v1/rooms/demo-2", 401, "token/unauthorized", bearer=good),
        Case("rooms: delete without room:admin", "DELETE", f"/v1/rooms/{ROOM}", 401, "token/unauthorized", "room:admin",
             bearer=good),
        Case("rooms: delete unknown", "DELETE", "/v1/rooms/never-was", 404, "room_not_found",
             bearer=unbound_token("a", scopes=("room:admin",))),
    ]


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_refusal_is_a_catalogue_problem(node: Node, case: Case) -> None:
    await case.setup(node)
    body = case.body
    if body == "<publish>":
        body = await aiortc_offer("publish")
    elif body == "<subscribe>":
        body = await aiortc_offer("subscribe")
    reply = await call(node, case.method, case.path, bearer=case.bearer, body=body, content_type=case.content_type)
    problem = assert_problem(reply, case.status, case.code, case.path, case.detail)
    if case.allow is not None:
        assert reply.headers["Allow"] == case.allow
    if case.code == "codec/unsupported":
        assert problem["kind"] == "video" and "VP8" in problem["offered"] and problem["allowed"] == ["AV1"]
    # every refusal is counted by route and status, never as a 500
    assert not any(code == "500" for (_, code) in node.http_counts)
    assert any(code == str(case.status) for (_, code) in node.http_counts)


SDP_DEFECTS = [
    ("a=group:BUNDLE", "BUNDLE"),
    ("a=rtcp-mux", "rtcp-mux"),
    ("a=fingerprint", "fingerprint"),
    ("a=ice-ufrag", "ice-ufrag"),
    ("a=mid", "a=mid"),
]


@pytest.mark.parametrize(("prefix", "named"), SDP_DEFECTS, ids=[d[1] for d in SDP_DEFECTS])
@pytest.mark.parametrize("kind", ["whip", "whep"])
async def test_offer_defects_are_named(node: Node, kind: str, prefix: str, named: str) -> None:
    pub: WhipPublisher | None = None
    if kind == "whep":
        # a publisher must be there, or the refusal would be about the missing media instead
        pub = WhipPublisher(node.url, ROOM, token(ROOM, "alice"))
        await pub.connect()
    offer = without(await aiortc_offer("publish" if kind == "whip" else "subscribe"), prefix)
    sessions, peers = set(node.sessions.sessions), node.port.peer_count
    try:
        path = f"/{kind}/{ROOM}"
        reply = await call(node, "POST", path, bearer=token(ROOM, "bob"), body=offer, content_type="application/sdp")
        assert_problem(reply, 400, "bad_request", path, named)
        assert set(node.sessions.sessions) == sessions
        assert node.port.peer_count == peers
    finally:
        if pub is not None:
            await pub.close()


async def test_refused_offers_leave_no_trace(node: Node) -> None:
    """A refused WHIP neither seats a participant nor leaves a transport on the media port."""
    await create_room(node, ROOM, codecs=["opus", "AV1"])
    offer = await aiortc_offer("publish")
    peers, participants = node.port.peer_count, dict(node.router.participants)
    for _ in range(3):
        reply = await call(node, "POST", f"/whip/{ROOM}", bearer=token(ROOM, "alice"), body=offer, content_type="application/sdp")
        assert_problem(reply, 406, "codec/unsupported", f"/whip/{ROOM}")
    assert node.port.peer_count == peers
    assert node.router.participants == participants
    assert node.rooms.rooms[ROOM].participants == {}


async def test_session_delete_then_again(node: Node) -> None:
    peers = node.port.peer_count
    pub = WhipPublisher(node.url, ROOM, token(ROOM, "alice"))
    await pub.connect()
    try:
        assert pub.location is not None
        assert node.port.peer_count == peers + 1
        assert await pub.delete() == 200
        reply = await call(node, "DELETE", pub.location, bearer=token(ROOM, "alice"))
        assert_problem(reply, 404, "not_found", pub.location)
        # a session id is only found in its own room
        other = pub.location.replace(ROOM, "demo-2")
        reply = await call(node, "DELETE", other, bearer=token("demo-2", "alice"))
        assert_problem(reply, 404, "not_found", other)
        await wait_for(lambda: node.port.peer_count == peers, 5, "transport released")
    finally:
        await pub.close()


async def test_room_id_with_a_newline_is_refused(node: Node) -> None:
    """``/whip/demo%0A``: refused as a room id, not seated and then dropped while writing Location."""
    sessions = set(node.sessions.sessions)
    reply = await call(
        node,
        "POST",
        "/whip/demo%0A",
        bearer=unbound_token("alice"),
        body=await aiortc_offer("publish"),
        content_type="application/sdp",
    )
    assert_problem(reply, 400, "invalid_room", "/whip/demo\n")
    assert set(node.sessions.sessions) == sessions


# -- CORS --------------------------------------------------------------------------------------
ORIGIN = "https://app.example"


@pytest.mark.parametrize("path", [f"/whip/{ROOM}", f"/whep/{ROOM}", f"/whip/{ROOM}/PA_1", "/v1/rooms", f"/v1/rooms/{ROOM}"])
async def test_cors_preflight(node: Node, path: str) -> None:
    reply = await call(
        node,
        "OPTIONS",
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert {"POST", "DELETE", "PATCH", "OPTIONS"} <= {m.strip() for m in reply.headers["Access-Control-Allow-Methods"].split(",")}
    assert reply.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    exposed = {h.strip() for h in reply.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "ETag", "Link"} <= exposed
    assert reply.headers["X-Request-Id"].startswith("req_")


async def test_cross_origin_publish_exposes_location(node: Node) -> None:
    reply = await call(
        node,
        "POST",
        f"/whip/{ROOM}",
        bearer=token(ROOM, "alice"),
        body=await aiortc_offer("publish"),
        content_type="application/sdp",
        headers={"Origin": ORIGIN},
    )
    assert reply.status == 201, reply.text
    assert reply.headers["Location"].startswith(f"/whip/{ROOM}/")
    assert reply.headers["ETag"]
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip() for h in reply.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "ETag", "Link"} <= exposed


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", f"/whip/{ROOM}", 401, "unauthorized"),
        ("POST", "/whip/ab", 400, "invalid_room"),
        ("GET", "/nope", 404, "not_found"),
        ("PATCH", f"/whip/{ROOM}/PA_1", 401, "unauthorized"),
    ],
)
async def test_cross_origin_problems_are_readable(node: Node, method: str, path: str, status: int, code: str) -> None:
    """A browser app must be able to read the problem, so errors carry the CORS headers too."""
    reply = await call(node, method, path, body="v=0", content_type="application/sdp", headers={"Origin": ORIGIN})
    assert_problem(reply, status, code, path)
    assert reply.headers.get("Access-Control-Allow-Origin") == "*"
    assert "X-Request-Id" in reply.headers.get("Access-Control-Expose-Headers", "")


async def test_cors_allow_list(node_factory: Callable[..., Awaitable[Node]]) -> None:
    node = await node_factory(cors_origins=(ORIGIN,))
    try:
        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        reply = await call(node, "OPTIONS", f"/whip/{ROOM}", headers=preflight)
        assert reply.status == 204 and reply.headers["Access-Control-Allow-Origin"] == ORIGIN
        path = f"/whip/{ROOM}"
        reply = await call(node, "OPTIONS", path, headers={**preflight, "Origin": "https://evil.example"})
        assert_problem(reply, 403, "forbidden", path, "evil.example")
        assert "Access-Control-Allow-Origin" not in reply.headers
        reply = await call(node, "POST", path, body="v=0", content_type="application/sdp", headers={"Origin": ORIGIN})
        assert_problem(reply, 401, "unauthorized", path)
        assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
        statuses = sorted(code for (_, code), n in node.http_counts.items() for _ in range(n))
        assert statuses == ["204", "401", "403"]
    finally:
        await node.stop()
