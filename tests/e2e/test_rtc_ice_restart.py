"""ICE restart over the signaling WebSocket, on both transports, while DTLS and SRTP go on.

aiortc cannot restart ICE, so the restarts are driven at the SDP level: the publisher is a
``LiteEndpoint`` that offers again with new credentials; the subscriber (aiortc) asks with
``restart_ice`` and answers the node's new offer with new credentials of its own.  Then raw
connectivity checks show that the new credentials are answered and the old ones refused, and
media keeps flowing on the same DTLS/SRTP session.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from typing import Any

import pytest
from aioice import stun

from sfu.client.lite import Answer, LiteEndpoint
from sfu.counters import DropReason
from sfu.node import Node
from sfu.packet.rtp import RtpHeader, RtpPacket
from sfu.transport.certificate import Certificate
from sfu.transport.ice import IceCredentials
from tests.e2e.clients import wait_for
from tests.e2e.test_rtc_signaling import RpcFailure, RtcClient

pytestmark = pytest.mark.timeout(60)
VIDEO_SSRC = 0x5EED_0001


def ice_of(sdp_text: str) -> tuple[str, str]:
    ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp_text)
    pwd = re.search(r"a=ice-pwd:(\S+)", sdp_text)
    assert ufrag and pwd
    return ufrag.group(1), pwd.group(1)


def with_ice(sdp_text: str, ufrag: str, pwd: str) -> str:
    sdp_text = re.sub(r"a=ice-ufrag:\S+", f"a=ice-ufrag:{ufrag}", sdp_text)
    return re.sub(r"a=ice-pwd:\S+", f"a=ice-pwd:{pwd}", sdp_text)


async def check(node: Node, node_ufrag: str, node_pwd: str, client_ufrag: str) -> bool:
    """One connectivity check (not nominating) from a fresh socket: True when answered with a
    success that carries the node's ``node_pwd`` integrity."""
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{node_ufrag}:{client_ufrag}"
    msg.attributes["PRIORITY"] = 0x6E0001FF
    msg.attributes["ICE-CONTROLLING"] = 0x1234
    msg.add_message_integrity(node_pwd.encode())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendto(sock, bytes(msg), ("127.0.0.1", node.router.port.port))
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.5)
        except TimeoutError:
            return False
        reply = stun.parse_message(data)
        return reply.message_class == stun.Class.RESPONSE and reply.check_message_integrity(node_pwd.encode())
    finally:
        sock.close()


async def send_video(lite: LiteEndpoint, stop: asyncio.Event) -> None:
    seq = 100
    n = 0
    while not stop.is_set():
        payload = (b"\x10\x00\x9d\x01\x2a" if n % 30 == 0 else b"\x10\x01") + bytes(60)
        header = RtpHeader(payload_type=96, sequence_number=seq, timestamp=n * 3000, ssrc=VIDEO_SSRC, marker=True)
        lite.send_rtp(bytes(RtpPacket(header, payload)))
        seq, n = (seq + 1) & 0xFFFF, n + 1
        await asyncio.sleep(0.03)


async def test_publisher_ice_restart_keeps_dtls_and_media(node: Node) -> None:
    room = "rtc-ice-restart-pub"
    lite = LiteEndpoint(Certificate.generate())
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        await alice.join()
        first = await alice.call("publish", {"sdp": lite.offer(send=True, video_ssrc=VIDEO_SSRC)})
        await lite.connect(first["sdp"])
        sender = asyncio.create_task(send_video(lite, stop))
        publisher = next(p for p in node.router.participants.values() if p.identity == "alice")
        transport = publisher.publisher
        assert transport is not None
        (track,) = publisher.tracks.values()
        await wait_for(lambda: track.stats.packets > 10, 5, "media before the restart")
        rx_before = transport.rx
        old_node = ice_of(first["sdp"])
        old_client = lite.ice

        lite.ice = IceCredentials.generate()  # pc.restartIce(): new credentials, same certificate
        second = await alice.call("publish", {"sdp": lite.offer(send=True, video_ssrc=VIDEO_SSRC)})
        new_node = ice_of(second["sdp"])
        assert new_node[0] != old_node[0] and new_node[1] != old_node[1]
        assert Answer.parse(second["sdp"]).fingerprints == Answer.parse(first["sdp"]).fingerprints
        assert second["tracks"] == first["tracks"]  # nothing renegotiated away
        assert transport.remote_ufrag == lite.ice.ufrag and transport.ice.ufrag == new_node[0]

        unknown = node.counters.drops[DropReason.STUN_UNKNOWN_USER]
        assert await check(node, *new_node, lite.ice.ufrag)
        assert not await check(node, *old_node, old_client.ufrag)
        assert node.counters.drops[DropReason.STUN_UNKNOWN_USER] == unknown + 1
        assert not await check(node, new_node[0], new_node[1], old_client.ufrag)  # the old remote ufrag
        # DTLS and SRTP went on: the same session keys, media still arriving
        assert transport.rx is rx_before and transport.state.value == "connected"
        count = track.stats.packets
        await wait_for(lambda: track.stats.packets > count + 10, 5, "media after the restart")

        # a restart that changes the DTLS certificate is refused
        other = LiteEndpoint(Certificate.generate())
        try:
            with pytest.raises(RpcFailure) as info:
                await alice.call("publish", {"sdp": other.offer(send=True, video_ssrc=VIDEO_SSRC)})
            assert info.value.problem["code"] == "bad_request" and "fingerprint" in info.value.problem["detail"]
        finally:
            other.close()
    finally:
        stop.set()
        if sender is not None:
            await sender
        lite.close()
        await alice.close()


async def test_subscriber_ice_restart_on_request(node: Node) -> None:
    room = "rtc-ice-restart-sub"
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    try:
        await alice.join()
        await alice.publish(audio=False)
        await bob.join()
        await wait_for(lambda: any(r.frames >= 10 for r in bob.received.values()), 15, "bob receives alice")
        (old_offer,) = bob.named("offer")
        old_node = ice_of(old_offer["sdp"])
        old_bob = ice_of(bob.sub.localDescription.sdp)
        assert await check(node, *old_node, old_bob[0])

        bob.offers = asyncio.Queue()  # answered by hand from here (aiortc cannot restart ICE)
        assert await bob.call("restart_ice") == {"pending_offer": False}
        offer: dict[str, Any] = await asyncio.wait_for(bob.offers.get(), 5)
        assert offer["version"] == old_offer["version"] + 1 and offer["tracks"] == old_offer["tracks"]
        new_node = ice_of(offer["sdp"])
        assert new_node[0] != old_node[0] and new_node[1] != old_node[1]
        # until the answer, the old credentials are in force
        assert await check(node, *old_node, old_bob[0])
        assert not await check(node, *new_node, old_bob[0])

        new_bob = IceCredentials.generate()
        answer = with_ice(bob.sub.localDescription.sdp, new_bob.ufrag, new_bob.pwd)
        result = await bob.call("answer", {"sdp": answer})
        assert result == {"tracks": [], "refused": []}  # the same tracks go on
        assert await check(node, *new_node, new_bob.ufrag)
        assert not await check(node, *old_node, old_bob[0])
        assert not await check(node, new_node[0], new_node[1], old_bob[0])
        (received,) = bob.received.values()
        frames = received.frames
        await wait_for(lambda: received.frames > frames + 10, 5, "media after the restart")
        assert received.log.gaps() == []

        # an answer may not change the ufrag unless the offer restarted ICE
        await alice.call("unpublish", {"track": alice.published[0]["sid"]})
        offer = await asyncio.wait_for(bob.offers.get(), 5)
        with pytest.raises(RpcFailure) as info:
            await bob.call("answer", {"sdp": with_ice(answer, "zzzz", "z" * 24)})
        assert info.value.problem["code"] == "bad_request" and "restart_ice" in info.value.problem["detail"]
    finally:
        with contextlib.suppress(Exception):
            await alice.close()
        await bob.close()
