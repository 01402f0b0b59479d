"""Trickle ICE and ICE restart on WHIP and WHEP sessions: ``PATCH`` with an sdpfrag (RFC 9725 §4.3).

Raw HTTP and two ``LiteEndpoint``s (a WHIP publisher, a WHEP viewer): after each restart,
connectivity checks with the new credentials are answered and the old ones refused, the
transport keeps its DTLS/SRTP session, and the viewer's stream goes on without a gap.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from sfu.client.lite import Answer, LiteEndpoint
from sfu.node import Node
from sfu.routing.participant import Participant
from sfu.signaling.sdpfrag import CONTENT_TYPE, IceFragment
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.test_http_errors import Reply, assert_problem, call
from tests.e2e.test_rtc_ice_restart import VIDEO_SSRC, check, send_video

pytestmark = pytest.mark.timeout(60)
ROOM = "whip-ice-restart"


def _participant(node: Node, identity: str) -> Participant:
    return next(p for p in node.router.participants.values() if p.identity == identity)


async def _patch(node: Node, location: str, tok: str, body: str, if_match: str | None) -> Reply:
    headers = {} if if_match is None else {"If-Match": if_match}
    return await call(node, "PATCH", location, bearer=tok, body=body, content_type=CONTENT_TYPE, headers=headers)


async def _post(node: Node, path: str, tok: str, offer: str) -> Reply:
    reply = await call(node, "POST", path, bearer=tok, body=offer, content_type="application/sdp")
    assert reply.status == 201, reply.text
    return reply


class Seqs:
    """The sequence numbers a LiteEndpoint receives."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def __call__(self, view: memoryview, length: int) -> None:
        if length >= 12:
            self.seqs.append((view[2] << 8) | view[3])

    def missing(self) -> list[int]:
        first = self.seqs[0]
        offsets = {(s - first) & 0xFFFF for s in self.seqs}
        return [o for o in range(max(offsets) + 1) if o not in offsets]


async def test_whip_and_whep_ice_restart_over_patch(node: Node) -> None:
    pub_tok, sub_tok = token(ROOM, "alice"), token(ROOM, "viewer")
    pub = LiteEndpoint(Certificate.generate())
    seqs = Seqs()
    sub = LiteEndpoint(Certificate.generate(), on_rtp=seqs)
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        whip = await _post(node, f"/whip/{ROOM}", pub_tok, pub.offer(send=True, video_ssrc=VIDEO_SSRC))
        pub_loc, etag = whip.headers["Location"], whip.headers["ETag"]
        await pub.connect(whip.text)
        sender = asyncio.create_task(send_video(pub, stop))
        whep = await _post(node, f"/whep/{ROOM}", sub_tok, sub.offer(send=False))
        sub_loc = whep.headers["Location"]
        await sub.connect(whep.text)
        await wait_for(lambda: len(seqs.seqs) > 10, 10, "the viewer receives the publisher")
        publisher = _participant(node, "alice")
        transport = publisher.publisher
        assert transport is not None
        rx, tx = transport.rx, transport.tx
        old_node = Answer.parse(whip.text)
        old_client = pub.ice

        # trickle: the same ICE session, accepted and changing nothing
        reply = await _patch(node, pub_loc, pub_tok, pub.ice_fragment(), etag)
        assert (reply.status, reply.headers["ETag"], reply.text) == (204, etag, "")
        assert transport.ice.ufrag == old_node.ufrag
        assert (await _patch(node, pub_loc, pub_tok, "a=end-of-candidates\r\n", None)).status == 204

        # restart: new credentials both ways, a new entity-tag
        reply = await _patch(node, pub_loc, pub_tok, pub.restart_ice(), "*")
        assert reply.status == 200, reply.text
        assert reply.headers["Content-Type"] == CONTENT_TYPE
        new_etag = reply.headers["ETag"]
        assert new_etag != etag and re.fullmatch(r'"[0-9a-f]{16}"', new_etag)
        frag = IceFragment.parse(reply.text)
        assert frag.ufrag is not None and frag.pwd is not None
        assert frag.ufrag != old_node.ufrag and frag.pwd != old_node.pwd
        assert frag.mids == ("0",) and frag.end_of_candidates and "a=ice-lite" in reply.text
        assert frag.candidates == (
            f"candidate:1 1 udp 2130706431 127.0.0.1 {node.router.port.port} typ host",
            f"candidate:2 1 tcp 2120220671 127.0.0.1 {node.router.port.tcp_port} typ host tcptype passive",
        )
        assert (transport.ice.ufrag, transport.remote_ufrag) == (frag.ufrag, pub.ice.ufrag)
        assert node.sessions.sessions[pub_loc.rsplit("/", 1)[1]].etag == new_etag

        assert await check(node, frag.ufrag, frag.pwd, pub.ice.ufrag)
        assert not await check(node, old_node.ufrag, old_node.pwd, old_client.ufrag)
        assert not await check(node, frag.ufrag, frag.pwd, old_client.ufrag)  # the old client ufrag
        pub.apply_remote_ice(reply.text)
        answered = pub.checks_answered
        pub.send_check(use_candidate=True)
        await wait_for(lambda: pub.checks_answered > answered, 5, "the publisher's check with the new credentials")
        # the same DTLS/SRTP session: media goes on with no gap
        assert transport.rx is rx and transport.tx is tx and transport.state.value == "connected"
        count = len(seqs.seqs)
        await wait_for(lambda: len(seqs.seqs) > count + 15, 5, "media after the publisher's restart")

        # entity-tags: a trickle for the old ICE session and a restart naming it are refused
        stale = await _patch(node, pub_loc, pub_tok, pub.ice_fragment(), etag)
        assert_problem(stale, 409, "conflict", pub_loc, "restarted")
        assert stale.headers["ETag"] == new_etag
        restart = pub.restart_ice()
        refused = await _patch(node, pub_loc, pub_tok, restart, etag)
        assert_problem(refused, 409, "conflict", pub_loc, "If-Match: *")
        assert transport.ice.ufrag == frag.ufrag  # nothing changed
        reply = await _patch(node, pub_loc, pub_tok, restart, new_etag)  # the current tag is fine too
        assert reply.status == 200 and reply.headers["ETag"] not in (etag, new_etag)
        pub.apply_remote_ice(reply.text)
        pub.send_check(use_candidate=True)

        # WHEP: the viewer restarts its transport the same way
        viewer = _participant(node, "viewer")
        sub_t = viewer.subscriber
        assert sub_t is not None
        sub_rx = sub_t.rx
        old_sub_node, old_sub_client = Answer.parse(whep.text), sub.ice
        reply = await _patch(node, sub_loc, sub_tok, sub.restart_ice(), "*")
        assert reply.status == 200, reply.text
        assert reply.headers["ETag"] != whep.headers["ETag"]
        sub_frag = IceFragment.parse(reply.text)
        assert sub_frag.ufrag is not None and sub_frag.pwd is not None
        assert sub_frag.mids == ("0",)
        assert await check(node, sub_frag.ufrag, sub_frag.pwd, sub.ice.ufrag)
        assert not await check(node, old_sub_node.ufrag, old_sub_node.pwd, old_sub_client.ufrag)
        sub.apply_remote_ice(reply.text)
        answered = sub.checks_answered
        sub.send_check(use_candidate=True)
        await wait_for(lambda: sub.checks_answered > answered, 5, "the viewer's check with the new credentials")
        assert sub_t.rx is sub_rx and sub_t.state.value == "connected"
        count = len(seqs.seqs)
        await wait_for(lambda: len(seqs.seqs) > count + 15, 5, "media after the viewer's restart")
        assert seqs.missing() == []
        assert sub.srtp_failures == 0
    finally:
        stop.set()
        if sender is not None:
            await sender
        pub.close()
        sub.close()


async def test_patch_refusals(node: Node) -> None:
    tok = token(ROOM, "bob")
    pub = LiteEndpoint(Certificate.generate())
    try:
        whip = await _post(node, f"/whip/{ROOM}", tok, pub.offer(send=True, video_ssrc=VIDEO_SSRC))
        loc = whip.headers["Location"]
        session = loc.rsplit("/", 1)[1]
        await pub.connect(whip.text)
        transport = _participant(node, "bob").publisher
        assert transport is not None
        ufrag = transport.ice.ufrag

        reply = await call(node, "PATCH", loc, bearer=tok, body="a=end-of-candidates\r\n", content_type="application/sdp")
        assert_problem(reply, 400, "bad_request", loc, CONTENT_TYPE)
        assert reply.headers["Accept-Patch"] == CONTENT_TYPE
        assert_problem(await _patch(node, loc, tok, "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n", "*"), 400, "bad_request",
                       loc, "does not belong")
        assert_problem(await _patch(node, loc, tok, "a=ice-ufrag:abcd\r\n", "*"), 400, "bad_request", loc, "a=ice-pwd")
        assert_problem(await _patch(node, loc, tok, "a=ice-ufrag:ab\r\n", "*"), 400, "bad_request", loc, "4 to 256")
        two = "a=ice-ufrag:abcd\r\na=ice-pwd:" + "p" * 22 + "\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=ice-ufrag:efgh\r\n"
        assert_problem(await _patch(node, loc, tok, two, "*"), 400, "bad_request", loc, "more than one")
        assert_problem(await _patch(node, loc, tok, "a=end-of-candidates\r\n", " , "), 400, "bad_request", loc, "If-Match")
        assert_problem(await _patch(node, loc, tok, "a=end-of-candidates\r\n", 'W/' + whip.headers["ETag"]),
                       409, "conflict", loc)  # a weak tag never matches (strong comparison)
        # a WHIP session through the WHEP path, an unknown one, no token, another room's token
        whep_path = f"/whep/{ROOM}/{session}"
        assert_problem(await _patch(node, whep_path, tok, pub.restart_ice(), "*"), 404, "not_found", whep_path, "WHEP")
        assert_problem(await _patch(node, f"/whip/{ROOM}/PA_0000", tok, pub.restart_ice(), "*"), 404, "not_found",
                       f"/whip/{ROOM}/PA_0000")
        reply = await call(node, "PATCH", loc, body=pub.restart_ice(), content_type=CONTENT_TYPE)
        assert_problem(reply, 401, "unauthorized", loc)
        assert_problem(await _patch(node, loc, token("other-room", "bob"), pub.restart_ice(), "*"), 401,
                       "token/unauthorized", loc)
        assert transport.ice.ufrag == ufrag  # no refused request restarted anything
        # after the session ends, its resource is gone
        assert (await call(node, "DELETE", loc, bearer=tok)).status == 200
        assert_problem(await _patch(node, loc, tok, pub.restart_ice(), "*"), 404, "not_found", loc)
    finally:
        pub.close()
