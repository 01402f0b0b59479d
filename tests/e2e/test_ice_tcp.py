"""ICE-TCP (RFC 6544 passive candidate, RFC 4571 framing) end to end with the lite client.

A WHIP publisher over TCP, a WHEP viewer over UDP and one over TCP in the same room: every
answer carries the passive TCP candidate below the UDP one, STUN, DTLS and SRTP go through
the TCP connection, both viewers verify (SRTP-authenticate) what they receive, and the metrics
count sessions by transport and the TCP connections.  ``ice_tcp = false`` offers no TCP.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from aioice import stun

from sfu.client.lite import Answer, LiteEndpoint
from sfu.client.lite_tcp import TcpLiteEndpoint, tcp_candidate
from sfu.node import Node
from sfu.transport.certificate import Certificate
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.test_http_errors import Reply, call
from tests.e2e.test_rtc_ice_restart import VIDEO_SSRC, send_video
from tests.e2e.test_rtc_signaling import RtcClient

pytestmark = pytest.mark.timeout(90)
CANDIDATES = re.compile(r"^a=candidate:\S+ 1 (udp|tcp) (\d+) (\S+) (\d+) typ host(.*)$", re.MULTILINE)


async def post(node: Node, path: str, tok: str, offer: str) -> Reply:
    reply = await call(node, "POST", path, bearer=tok, body=offer, content_type="application/sdp")
    assert reply.status == 201, reply.text
    return reply


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m is not None, f"{name} not in the metrics"
    return float(m.group(1))


class Received:
    """What a lite viewer gets: authenticated RTP of the publisher's payload size."""

    def __init__(self) -> None:
        self.packets = 0

    def __call__(self, view: memoryview, length: int) -> None:
        if length >= 12 + 62:
            self.packets += 1


async def test_publish_over_tcp_watch_over_udp_and_tcp(node: Node) -> None:
    room = "ice-tcp"
    pub = TcpLiteEndpoint(Certificate.generate())
    got_udp, got_tcp = Received(), Received()
    viewer_udp = LiteEndpoint(Certificate.generate(), on_rtp=got_udp)
    viewer_tcp = TcpLiteEndpoint(Certificate.generate(), on_rtp=got_tcp)
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        whip = await post(node, f"/whip/{room}", token(room, "alice"), pub.offer(send=True, video_ssrc=VIDEO_SSRC))
        cands = CANDIDATES.findall(whip.text)
        assert [(c[0], c[2], c[4].strip()) for c in cands] == [
            ("udp", "127.0.0.1", ""),
            ("tcp", "127.0.0.1", "tcptype passive"),
        ]
        assert int(cands[0][3]) == node.router.port.port and int(cands[1][3]) == node.router.port.tcp_port
        assert int(cands[1][1]) < int(cands[0][1])  # UDP preferred when both work
        assert tcp_candidate(whip.text) == ("127.0.0.1", node.router.port.tcp_port)
        await pub.connect(whip.text, timeout_s=15)
        sender = asyncio.create_task(send_video(pub, stop))

        whep_udp = await post(node, f"/whep/{room}", token(room, "viewer-udp"), viewer_udp.offer(send=False))
        await viewer_udp.connect(whep_udp.text, timeout_s=15)
        whep_tcp = await post(node, f"/whep/{room}", token(room, "viewer-tcp"), viewer_tcp.offer(send=False))
        assert "tcptype passive" in whep_tcp.text
        await viewer_tcp.connect(whep_tcp.text, timeout_s=15)
        await wait_for(lambda: got_udp.packets > 30 and got_tcp.packets > 30, 20, "both viewers receive the TCP publisher")
        assert viewer_tcp.srtp_failures == 0 and viewer_udp.srtp_failures == 0

        kinds = {p.identity: p.subscriber or p.publisher for p in node.router.participants.values()}
        assert {i: t.transport_kind for i, t in kinds.items() if t is not None and not i.startswith("selfcheck-")} == {
            "alice": "tcp",
            "viewer-udp": "udp",
            "viewer-tcp": "tcp",
        }
        text = (await call(node, "GET", "/metrics")).text
        assert metric(text, 'levelchat_sfu_sessions_by_transport{transport="tcp"}') == 2
        assert metric(text, 'levelchat_sfu_sessions_by_transport{transport="udp"}') >= 1
        assert metric(text, "levelchat_sfu_tcp_connections") == 2

        # consent over TCP: checks are answered on the connection
        answered = viewer_tcp.checks_answered
        viewer_tcp.send_check()
        await wait_for(lambda: viewer_tcp.checks_answered > answered, 10, "a consent check answered over TCP")
    finally:
        stop.set()
        if sender is not None:
            await sender
        for lite in (pub, viewer_udp, viewer_tcp):
            lite.close()
    # the connections go when the clients do
    await wait_for(lambda: not node.router.port.tcp_links, 10, "the node forgets closed TCP connections")


async def test_websocket_publisher_over_tcp_and_the_subscriber_offer(node: Node) -> None:
    room = "ice-tcp-ws"
    lite = TcpLiteEndpoint(Certificate.generate())
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        await alice.join()
        answer = await alice.call("publish", {"sdp": lite.offer(send=True, video_ssrc=VIDEO_SSRC)})
        assert [c[0] for c in CANDIDATES.findall(answer["sdp"])] == ["udp", "tcp"]
        await lite.connect(answer["sdp"], timeout_s=15)
        sender = asyncio.create_task(send_video(lite, stop))
        await bob.join()  # aiortc over UDP: the node's offer lists both candidates, UDP first
        await wait_for(lambda: any(len(r.log.packets) > 30 for r in bob.received.values()), 20, "bob receives alice")
        (offer,) = bob.named("offer")
        assert [c[0] for c in CANDIDATES.findall(offer["sdp"])] == ["udp", "tcp"]
        alice_t = next(p for p in node.router.participants.values() if p.identity == "alice").publisher
        bob_t = next(p for p in node.router.participants.values() if p.identity == "bob").subscriber
        assert alice_t is not None and bob_t is not None
        assert (alice_t.transport_kind, bob_t.transport_kind) == ("tcp", "udp")
    finally:
        stop.set()
        if sender is not None:
            await sender
        lite.close()
        for client in (alice, bob):
            await client.close()


async def test_a_bound_connection_stays_and_goes_with_its_session(node_factory: Callable[..., Awaitable[Node]]) -> None:
    node = await node_factory(tcp_bind_timeout_s=1.0)
    room = "ice-tcp-end"
    pub = TcpLiteEndpoint(Certificate.generate())
    tok = token(room, "alice")
    try:
        whip = await post(node, f"/whip/{room}", tok, pub.offer(send=True, video_ssrc=VIDEO_SSRC))
        await pub.connect(whip.text, timeout_s=15)
        (link,) = node.router.port.tcp_links.values()
        await asyncio.sleep(3.0)  # three bind timeouts: a bound connection is not idle
        assert not link.closed and node.router.port.tcp_links
        reply = await call(node, "DELETE", whip.headers["Location"], bearer=tok)
        assert reply.status in (200, 204), reply.text
        # unbound now: closed by the next sweep past the bind timeout
        await wait_for(lambda: link.closed and not node.router.port.tcp_links, 10, "the node closes the connection")
    finally:
        pub.close()
        await node.stop()


async def test_frames_split_and_joined_across_reads_are_reassembled(node: Node) -> None:
    """A STUN check sent a byte at a time, then two in one write: each is answered, framed."""
    room = "ice-tcp-split"
    lite = LiteEndpoint(Certificate.generate())
    whip = await post(node, f"/whip/{room}", token(room, "alice"), lite.offer(send=True, video_ssrc=VIDEO_SSRC))
    lite.close()
    remote = Answer.parse(whip.text)

    def check() -> bytes:
        msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{remote.ufrag}:{lite.ice.ufrag}"
        msg.attributes["PRIORITY"] = 0x6E0001FF
        msg.attributes["ICE-CONTROLLING"] = 1
        msg.add_message_integrity(remote.pwd.encode())
        data = bytes(msg)
        return struct.pack("!H", len(data)) + data

    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", node.router.port.tcp_port))
        for b in check():
            await loop.sock_sendall(sock, bytes([b]))
            await asyncio.sleep(0.002)
        await loop.sock_sendall(sock, check() + check())
        data = b""
        replies: list[stun.Message] = []
        async with asyncio.timeout(10):
            while len(replies) < 3:
                data += await loop.sock_recv(sock, 4096)
                while len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
                    n = struct.unpack("!H", data[:2])[0]
                    replies.append(stun.parse_message(data[2 : 2 + n]))
                    data = data[2 + n :]
        assert all(r.message_class == stun.Class.RESPONSE and r.check_message_integrity(remote.pwd.encode()) for r in replies)
        # XOR-MAPPED-ADDRESS is the client's real address, not the node's internal name for it
        assert replies[0].attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()
    finally:
        sock.close()


async def test_ice_tcp_can_be_turned_off(node_factory: Callable[..., Awaitable[Node]]) -> None:
    node = await node_factory(ice_tcp=False)
    try:
        lite = LiteEndpoint(Certificate.generate())
        whip = await post(node, "/whip/no-tcp", token("no-tcp", "alice"), lite.offer(send=True, video_ssrc=VIDEO_SSRC))
        lite.close()
        assert [c[0] for c in CANDIDATES.findall(whip.text)] == ["udp"]
        assert node.tcp is None and node.router.port.tcp_port == 0
    finally:
        await node.stop()
