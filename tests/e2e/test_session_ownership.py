"""A WHIP/WHEP session URL is a capability of the identity that created it (issue 11, defect 1).

A live node, a real publisher and a real viewer (``LiteEndpoint``: ICE-lite checks, DTLS, SRTP
over loopback).  Another member of the room ("mallory", a valid token of another identity)
cannot see their session ids in room info, and ``DELETE``, ``PATCH`` (ICE restart) and the layer
choice on their sessions are answered ``not_found`` exactly as for ids that do not exist; forged
connectivity checks (credentials mallory does not have) redirect nothing, and the viewer's
packet count keeps growing through every attack.  The owner and a ``room:admin`` token still end
sessions; a token without a ``room`` claim is refused in rooms unless it carries ``room:admin``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioice import stun

from sfu.client.lite import Answer, LiteEndpoint
from sfu.node import Node
from sfu.routing.participant import Participant
from sfu.signaling.sdpfrag import CONTENT_TYPE
from sfu.transport.certificate import Certificate
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token
from tests.e2e.procs import Procs, admin_token
from tests.e2e.test_http_errors import Reply, assert_problem, call, unbound_token
from tests.e2e.test_rtc_ice_restart import VIDEO_SSRC, send_video
from tests.e2e.test_rtc_signaling import _refused_upgrade
from tests.e2e.test_whip_ice_restart import Seqs
from tests.e2e.test_workers import wait_for_ready

pytestmark = pytest.mark.timeout(90)
ROOM = "owned-sessions"
SESSION_ID = re.compile(r"[0-9a-f]{32}")
JOIN_ALL = ("room:join", "room:publish", "room:subscribe")
#: an ICE restart fragment with credentials of mallory's choosing
EVIL_RESTART = "a=ice-ufrag:evil\r\na=ice-pwd:" + "e" * 24 + "\r\n"


@dataclass
class Live:
    """A publisher streaming video and a viewer receiving it, each with its session URL."""

    node: Node
    pub: LiteEndpoint
    sub: LiteEndpoint
    seqs: Seqs
    pub_loc: str
    sub_loc: str
    pub_answer: Answer
    sub_answer: Answer

    def participant(self, identity: str) -> Participant:
        return next(p for p in self.node.router.participants.values() if p.identity == identity)

    async def flowing(self, what: str, more: int = 15) -> None:
        """The viewer receives ``more`` packets beyond what it had."""
        count = len(self.seqs.seqs)
        await wait_for(lambda: len(self.seqs.seqs) >= count + more, 15, f"the viewer's media keeps flowing {what}")


async def _post(node: Node, path: str, tok: str, offer: str) -> Reply:
    reply = await call(node, "POST", path, bearer=tok, body=offer, content_type="application/sdp")
    assert reply.status == 201, reply.text
    return reply


@pytest.fixture
async def live(node: Node) -> AsyncIterator[Live]:
    pub = LiteEndpoint(Certificate.generate())
    seqs = Seqs()
    sub = LiteEndpoint(Certificate.generate(), on_rtp=seqs)
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        whip = await _post(node, f"/whip/{ROOM}", token(ROOM, "alice"), pub.offer(send=True, video_ssrc=VIDEO_SSRC))
        await pub.connect(whip.text)
        sender = asyncio.create_task(send_video(pub, stop))
        whep = await _post(node, f"/whep/{ROOM}", token(ROOM, "viewer"), sub.offer(send=False))
        await sub.connect(whep.text)
        await wait_for(lambda: len(seqs.seqs) > 10, 15, "the viewer receives the publisher")
        yield Live(
            node, pub, sub, seqs, whip.headers["Location"], whep.headers["Location"],
            Answer.parse(whip.text), Answer.parse(whep.text),
        )
    finally:
        stop.set()
        if sender is not None:
            await sender
        pub.close()
        sub.close()


async def forged_check(node: Node, username: str, pwd: str) -> bool:
    """A nominating connectivity check from mallory's own socket, with integrity under ``pwd``:
    True when the node answers it."""
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 0x6E0001FF
    msg.attributes["ICE-CONTROLLING"] = 0x1234
    msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(pwd.encode())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendto(sock, bytes(msg), ("127.0.0.1", node.router.port.port))
        try:
            await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.5)
        except TimeoutError:
            return False
        return True
    finally:
        sock.close()


async def test_session_ids_are_128_bit_and_not_participant_sids(live: Live) -> None:
    ids = [loc.rsplit("/", 1)[1] for loc in (live.pub_loc, live.sub_loc)]
    assert live.pub_loc.startswith(f"/whip/{ROOM}/") and live.sub_loc.startswith(f"/whep/{ROOM}/")
    for session_id in ids:
        assert SESSION_ID.fullmatch(session_id), session_id  # 32 hex digits: 128 random bits
    assert ids[0] != ids[1]
    sids = {p.sid for p in live.node.router.participants.values()}
    assert not sids & set(ids)  # the public participant sid is not the session id


async def test_another_member_cannot_take_over_sessions(live: Live) -> None:
    node = live.node
    mallory = token(ROOM, "mallory", JOIN_ALL)
    publisher, viewer = live.participant("alice"), live.participant("viewer")
    assert publisher.publisher is not None and viewer.subscriber is not None
    before = {
        "pub": (publisher.publisher.ice.ufrag, publisher.publisher.remote_ufrag, publisher.publisher.addr),
        "sub": (viewer.subscriber.ice.ufrag, viewer.subscriber.remote_ufrag, viewer.subscriber.addr),
    }

    # room info: identities, no session ids
    info = await call(node, "GET", f"/v1/rooms/{ROOM}", bearer=mallory)
    assert info.status == 200, info.text
    assert {p["identity"] for p in info.body["participants"]} == {"alice", "viewer"}
    for loc in (live.pub_loc, live.sub_loc):
        assert loc.rsplit("/", 1)[1] not in info.text
    assert all("session" not in p for p in info.body["participants"])

    # knowing the URLs anyway (a leak, a log): every action is refused as for an unknown id
    for loc in (live.pub_loc, live.sub_loc):
        assert_problem(await call(node, "DELETE", loc, bearer=mallory), 404, "not_found", loc)
        reply = await call(node, "PATCH", loc, bearer=mallory, body=EVIL_RESTART, content_type=CONTENT_TYPE,
                           headers={"If-Match": "*"})
        assert_problem(reply, 404, "not_found", loc)
    layer = live.sub_loc + "/layer"
    assert_problem(await call(node, "POST", layer, bearer=mallory, body='{"rid": "q"}', content_type="application/json"),
                   404, "not_found", layer)
    unknown = f"/whep/{ROOM}/{'0' * 32}"
    same = await call(node, "DELETE", unknown, bearer=mallory)
    assert_problem(same, 404, "not_found", unknown)
    # an anonymous token (no sub) is not alice either
    anonymous = token(ROOM, None, JOIN_ALL)  # type: ignore[arg-type]
    assert_problem(await call(node, "DELETE", live.pub_loc, bearer=anonymous), 404, "not_found", live.pub_loc)
    await live.flowing("after the refused DELETE, PATCH and layer requests")

    # connectivity checks mallory can forge: its own restart credentials, the node's real ufrags
    # (which it cannot see) with a guessed password; none is answered, none moves media
    for answer, client in ((live.sub_answer, live.sub.ice.ufrag), (live.pub_answer, live.pub.ice.ufrag)):
        assert not await forged_check(node, f"{answer.ufrag}:evil", "e" * 24)
        assert not await forged_check(node, f"{answer.ufrag}:{client}", "e" * 24)
        assert not await forged_check(node, f"evil:{client}", "e" * 24)
    after = {
        "pub": (publisher.publisher.ice.ufrag, publisher.publisher.remote_ufrag, publisher.publisher.addr),
        "sub": (viewer.subscriber.ice.ufrag, viewer.subscriber.remote_ufrag, viewer.subscriber.addr),
    }
    assert after == before  # no credentials changed, media still goes to the viewer's address
    assert set(node.sessions.sessions) >= {live.pub_loc.rsplit("/", 1)[1], live.sub_loc.rsplit("/", 1)[1]}
    assert not publisher.closed and not viewer.closed
    await live.flowing("after the forged checks")
    assert live.sub.srtp_failures == 0


async def test_owner_and_room_admin_still_act(live: Live) -> None:
    node = live.node
    viewer_tok = token(ROOM, "viewer")
    # the owner: a layer request reaches the session (no simulcast here), a trickle PATCH is taken
    layer = live.sub_loc + "/layer"
    reply = await call(node, "POST", layer, bearer=viewer_tok, body='{"rid": "q"}', content_type="application/json")
    assert_problem(reply, 400, "bad_request", layer, "no simulcast")
    reply = await call(node, "PATCH", live.sub_loc, bearer=viewer_tok, body=live.sub.ice_fragment(),
                       content_type=CONTENT_TYPE)
    assert reply.status == 204, reply.text

    # room:admin (a room-less operator token) sees the session URLs and ends alice's publish
    admin = admin_token("room:admin")
    info = await call(node, "GET", f"/v1/rooms/{ROOM}", bearer=admin)
    assert info.status == 200, info.text
    sessions = {p["identity"]: p["session"] for p in info.body["participants"]}
    assert sessions == {"alice": live.pub_loc, "viewer": live.sub_loc}
    listed = await call(node, "GET", "/v1/rooms", bearer=admin)
    assert {p["session"] for r in listed.body["rooms"] for p in r["participants"]} == {live.pub_loc, live.sub_loc}
    # a room:admin token bound to another room is not admin here
    elsewhere = admin_token("room:admin", room="another-room")
    assert_problem(await call(node, "DELETE", live.pub_loc, bearer=elsewhere), 401, "token/unauthorized", live.pub_loc)
    assert (await call(node, "DELETE", live.pub_loc, bearer=admin)).status == 200
    await wait_for(lambda: all(p.identity != "alice" for p in node.router.participants.values()), 10, "alice left")

    # the owner ends its own session; then the URL is gone for it too
    assert (await call(node, "DELETE", live.sub_loc, bearer=viewer_tok)).status == 200
    assert_problem(await call(node, "DELETE", live.sub_loc, bearer=viewer_tok), 404, "not_found", live.sub_loc)
    assert not node.sessions.sessions.keys() & {live.pub_loc.rsplit("/", 1)[1], live.sub_loc.rsplit("/", 1)[1]}
    assert len(node.sessions.by_participant) == len(node.sessions.sessions)  # both tables forget


async def test_anonymous_session_needs_a_token_that_could_have_created_it(live: Live) -> None:
    """A WHEP session made with a token without ``sub``: its URL, with another anonymous token
    for the room that carries the creating scopes, acts on it; a named identity, or an anonymous
    token without ``room:subscribe``, gets not_found."""
    node = live.node
    creator = token(ROOM, None, ("room:join", "room:subscribe"))  # type: ignore[arg-type]
    seqs = Seqs()
    anon = LiteEndpoint(Certificate.generate(), on_rtp=seqs)
    try:
        whep = await _post(node, f"/whep/{ROOM}", creator, anon.offer(send=False))
        loc = whep.headers["Location"]
        await anon.connect(whep.text)
        await wait_for(lambda: len(seqs.seqs) > 10, 15, "the anonymous viewer receives")
        for refused in (
            token(ROOM, "mallory", JOIN_ALL),
            token(ROOM, None, ("room:join", "room:publish")),  # type: ignore[arg-type]
        ):
            assert_problem(await call(node, "DELETE", loc, bearer=refused), 404, "not_found", loc)
        count = len(seqs.seqs)
        await wait_for(lambda: len(seqs.seqs) > count + 10, 15, "the anonymous viewer keeps receiving")
        other_anonymous = token(ROOM, None, ("room:join", "room:subscribe"))  # type: ignore[arg-type]
        assert (await call(node, "DELETE", loc, bearer=other_anonymous)).status == 200
    finally:
        anon.close()
    await live.flowing("while another viewer's session ends")


async def test_room_less_token_is_not_a_key_to_every_room(live: Live) -> None:
    node = live.node
    roomless = unbound_token("alice", JOIN_ALL)  # alice's identity, but no room claim
    whip = f"/whip/{ROOM}"
    reply = await call(node, "POST", whip, bearer=roomless, body=LiteEndpoint(Certificate.generate()).offer(
        send=True, video_ssrc=VIDEO_SSRC), content_type="application/sdp")
    assert_problem(reply, 401, "token/unauthorized", whip, "room:admin")
    assert_problem(await call(node, "DELETE", live.pub_loc, bearer=roomless), 401, "token/unauthorized", live.pub_loc)
    info = f"/v1/rooms/{ROOM}"
    assert_problem(await call(node, "GET", info, bearer=roomless), 401, "token/unauthorized", info)
    frame, close_code = await _refused_upgrade(node, f"?access_token={roomless}&room={ROOM}")
    assert frame["error"]["data"]["code"] == "token/unauthorized" and close_code == 4401
    # with room:admin, a room-less token is an operator's: it may act in any room
    assert (await call(node, "GET", info, bearer=unbound_token("ops", ("room:admin",)))).status == 200
    await live.flowing("after the room-less token's attempts")


async def _json(http: aiohttp.ClientSession, url: str, tok: str) -> dict[str, Any]:
    async with http.get(url, headers={"Authorization": f"Bearer {tok}"}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert isinstance(body, dict)
        return body


async def _status(method: str, url: str, tok: str, *, body: str | None = None, content_type: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {tok}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.request(method, url, data=body, headers=headers) as resp:
            text = await resp.text()
            code = (await resp.json(content_type=None)).get("code", "") if resp.status >= 400 else ""
            assert resp.status < 500, text
            return resp.status, code


async def test_through_the_workers_front(tmp_path: Path) -> None:
    """The same refusals through a two-worker node's front (real processes, aiortc peers): the
    front routes session URLs by room, the worker checks the owner."""
    procs = Procs(tmp_path)
    room = "owned-front"
    pub = WhipPublisher("", room, token(room, "alice"), audio=False)
    sub = WhepSubscriber("", room, token(room, "viewer"), audio=False)
    try:
        node = procs.node("owned-front", None, extra_args=("--workers", "2"))
        await node.wait_healthy()
        assert (await wait_for_ready(node)).status == 200
        pub.url, pub.base_url, sub.url = f"{node.url}/whip/{room}", node.url, f"{node.url}/whep/{room}"
        await pub.connect(timeout=20)
        status, answer = await sub.connect(timeout=20)
        assert status == 201, answer
        packets = sub.logs["video"].packets
        await wait_for(lambda: len(packets) > 20, 30, "the viewer receives through the front")
        assert pub.location is not None
        async with aiohttp.ClientSession() as http:
            admin_view = await _json(http, f"{node.url}/v1/rooms/{room}", admin_token("room:admin"))
            member_view = await _json(http, f"{node.url}/v1/rooms/{room}", token(room, "mallory", JOIN_ALL))
        sessions = {p["identity"]: p["session"] for p in admin_view["participants"]}
        assert sessions["alice"] == pub.location
        sub_loc = sessions["viewer"]
        assert sub_loc.startswith(f"/whep/{room}/") and SESSION_ID.fullmatch(sub_loc.rsplit("/", 1)[1])
        assert all("session" not in p for p in member_view["participants"])
        mallory = token(room, "mallory", JOIN_ALL)
        for loc in (pub.location, sub_loc):
            assert await _status("DELETE", node.url + loc, mallory) == (404, "not_found")
            assert await _status("PATCH", node.url + loc, mallory, body=EVIL_RESTART, content_type=CONTENT_TYPE) == (
                404, "not_found")
        layer = node.url + sub_loc + "/layer"
        assert await _status("POST", layer, mallory, body='{"rid": "q"}', content_type="application/json") == (
            404, "not_found")
        count = len(packets)
        await wait_for(lambda: len(packets) > count + 20, 30, "the viewer's media keeps flowing")
        assert await _status("DELETE", node.url + pub.location, admin_token("room:admin")) == (200, "")
    finally:
        await pub.close()
        await sub.close()
        procs.stop_all()
