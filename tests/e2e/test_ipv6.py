"""IPv6 end to end (issue 13): real clients over ``::1``, on a dual-stack node (``media_host =
"::"``, ``public_ip = 127.0.0.1,::1``) and on an IPv6-only one (``media_host = "::1"``).

* lite clients (ICE, DTLS, SRTP; ``sfu.client.lite``) publish and watch over IPv6 UDP and IPv6
  ICE-TCP beside IPv4 ones in one room; the answer has a UDP and a TCP candidate per family;
* aiortc (aioice given only ``::1``, or only ``127.0.0.1``, as it gathers) publishes and
  watches over IPv6, and an IPv4 aiortc publisher is watched by an IPv6 aiortc viewer;
* bad input over IPv6 (garbage datagrams and TCP frames from ``::1``) is counted and the live
  session goes on; an ICE restart's fragment carries both families;
* the WebSocket publisher answer and the node's subscriber offer carry both families too.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator

import aioice.ice
import pytest

from sfu.client.lite import LiteEndpoint
from sfu.client.lite_tcp import TcpLiteEndpoint, tcp_candidate
from sfu.counters import DropReason
from sfu.node import Node
from sfu.signaling.sdpfrag import IceFragment
from sfu.transport.certificate import Certificate
from sfu.transport.tcp import TCP_PREFIX
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import public_participants, token
from tests.e2e.test_http_errors import call
from tests.e2e.test_ice_tcp import Received, post
from tests.e2e.test_rtc_ice_restart import VIDEO_SSRC, send_video
from tests.e2e.test_rtc_signaling import RtcClient

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6"),
]
CANDIDATES = re.compile(r"^a=candidate:(\S+) 1 (udp|tcp) (\d+) (\S+) (\d+) typ host", re.MULTILINE)
NodeFactory = Callable[..., Awaitable[Node]]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


if not _has_ipv6_loopback():  # pragma: no cover - a host without ::1 (IPv6 disabled)
    pytestmark.append(pytest.mark.skip(reason="no ::1 on this host"))


@pytest.fixture
def gather_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Which loopback aioice gathers its host candidate on (set before each client's offer)."""

    def use(host: str) -> None:
        monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [host])

    yield use


async def dual_stack(node_factory: NodeFactory) -> Node:
    return await node_factory(media_host="::", dev_allow_remote=True, public_ip="::1,127.0.0.1")


def probe_hosts(node: Node) -> set[str]:
    """The addresses the node's self-check probes reach it from; the last check passed."""
    assert node.selfcheck is not None and node.selfcheck.last is not None and node.selfcheck.last.ok
    hosts = set()
    for p in node.router.participants.values():
        t = p.publisher or p.subscriber
        if p.identity.startswith("selfcheck-") and t is not None and t.addr is not None:
            hosts.add(t.addr[0])
    return hosts


def transports(node: Node) -> dict[str, tuple[str, str]]:
    """identity -> (transport kind, address host) of each public participant's transport."""
    out = {}
    for p in public_participants(node):
        t = p.publisher or p.subscriber
        assert t is not None and t.addr is not None
        out[p.identity] = (t.transport_kind, t.addr[0])
    return out


async def test_lite_clients_over_ipv6_udp_and_tcp_beside_ipv4_on_a_dual_stack_node(node_factory: NodeFactory) -> None:
    node = await dual_stack(node_factory)
    room = "ipv6-lite"
    pub = TcpLiteEndpoint(Certificate.generate(), host="::1")  # publishes over IPv6 ICE-TCP
    got = {name: Received() for name in ("v4", "v6", "v6tcp")}
    viewers = {
        "v4": LiteEndpoint(Certificate.generate(), host="127.0.0.1", on_rtp=got["v4"]),
        "v6": LiteEndpoint(Certificate.generate(), host="::1", on_rtp=got["v6"]),
        "v6tcp": TcpLiteEndpoint(Certificate.generate(), host="::1", on_rtp=got["v6tcp"]),
    }
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        whip = await post(node, f"/whip/{room}", token(room, "alice"), pub.offer(send=True, video_ssrc=VIDEO_SSRC))
        cands = CANDIDATES.findall(whip.text)
        udp, tcp = node.router.port.port, node.router.port.tcp_port
        assert [(c[1], c[3], int(c[4])) for c in cands] == [
            ("udp", "127.0.0.1", udp), ("udp", "::1", udp), ("tcp", "127.0.0.1", tcp), ("tcp", "::1", tcp),
        ]
        assert len({c[0] for c in cands}) == 4  # a foundation each
        assert [int(c[2]) for c in cands] == sorted((int(c[2]) for c in cands), reverse=True)  # IPv4 first
        assert "c=IN IP4 127.0.0.1" in whip.text
        assert tcp_candidate(whip.text, ipv6=True) == ("::1", tcp)
        await pub.connect(whip.text, timeout_s=15)
        sender = asyncio.create_task(send_video(pub, stop))
        for name, viewer in viewers.items():
            whep = await post(node, f"/whep/{room}", token(room, f"viewer-{name}"), viewer.offer(send=False))
            await viewer.connect(whep.text, timeout_s=15)
        await wait_for(lambda: all(g.packets > 30 for g in got.values()), 20, "every viewer receives the IPv6 publisher")
        assert all(v.srtp_failures == 0 for v in viewers.values())
        assert transports(node) == {
            "alice": ("tcp", TCP_PREFIX + "::1"),
            "viewer-v4": ("udp", "127.0.0.1"),  # normalised: not ::ffff:127.0.0.1
            "viewer-v6": ("udp", "::1"),
            "viewer-v6tcp": ("tcp", TCP_PREFIX + "::1"),
        }
        # consent over IPv6: checks keep being answered, with the client's own address
        for viewer in (viewers["v6"], viewers["v4"]):
            answered = viewer.checks_answered
            viewer.send_check()
            await wait_for(lambda v=viewer, a=answered: v.checks_answered > a, 10, "a consent check answered")
    finally:
        stop.set()
        if sender is not None:
            await sender
        for lite in (pub, *viewers.values()):
            lite.close()


async def test_bad_input_over_ipv6_is_counted_and_the_session_goes_on(node_factory: NodeFactory) -> None:
    node = await dual_stack(node_factory)
    room = "ipv6-bad"
    pub = LiteEndpoint(Certificate.generate(), host="::1")
    got = Received()
    viewer = LiteEndpoint(Certificate.generate(), host="::1", on_rtp=got)
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    stranger = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    stranger.bind(("::1", 0))
    try:
        await pub.connect((await post(node, f"/whip/{room}", token(room, "alice"), pub.offer(send=True, video_ssrc=VIDEO_SSRC))).text)
        sender = asyncio.create_task(send_video(pub, stop))
        await viewer.connect((await post(node, f"/whep/{room}", token(room, "bob"), viewer.offer(send=False))).text)
        await wait_for(lambda: got.packets > 10, 20, "the IPv6 viewer receives")
        drops = node.counters.drops
        before = list(drops)
        to = ("::1", node.router.port.port)
        garbage = [b"\x80\x60" + bytes(40), bytes([22, 0xFE, 0xFD]) + bytes(30), b"\xff" * 50, b"\x00", b"\x00\x01\x00\x08" + bytes(16)]
        for _ in range(20):
            for data in garbage:
                stranger.sendto(data, to)
        # and from the viewer's own address: SRTP that does not authenticate
        viewer.sock.sendto(b"\x80\x60" + bytes(60), to)
        want = {
            DropReason.SRTP_UNKNOWN_ADDRESS: 20, DropReason.DTLS_UNKNOWN_ADDRESS: 20, DropReason.UNKNOWN_PROTOCOL: 20,
            DropReason.TOO_SHORT: 20, DropReason.STUN_MALFORMED: 20,
        }
        await wait_for(lambda: all(drops[r] - before[r] >= n for r, n in want.items()), 10, "the garbage counted")
        await wait_for(lambda: drops[DropReason.SRTP_AUTH_FAILED] > before[DropReason.SRTP_AUTH_FAILED], 10, "forged SRTP counted")
        # ICE-TCP over IPv6: a zero-length frame closes that connection, counted
        reader, writer = await asyncio.open_connection("::1", node.router.port.tcp_port)
        writer.write(struct.pack("!H", 0))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert drops[DropReason.TCP_BAD_FRAME] > before[DropReason.TCP_BAD_FRAME]
        seen = got.packets
        await wait_for(lambda: got.packets > seen + 20, 20, "the session goes on")
        assert viewer.srtp_failures == 0
        assert transports(node) == {"alice": ("udp", "::1"), "bob": ("udp", "::1")}
    finally:
        stop.set()
        if sender is not None:
            await sender
        stranger.close()
        pub.close()
        viewer.close()


async def test_whip_ice_restart_answer_carries_both_families(node_factory: NodeFactory) -> None:
    node = await dual_stack(node_factory)
    room = "ipv6-restart"
    pub = LiteEndpoint(Certificate.generate(), host="::1")
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        tok = token(room, "alice")
        whip = await post(node, f"/whip/{room}", tok, pub.offer(send=True, video_ssrc=VIDEO_SSRC))
        await pub.connect(whip.text, timeout_s=15)
        sender = asyncio.create_task(send_video(pub, stop))
        reply = await call(
            node, "PATCH", whip.headers["Location"], bearer=tok, body=pub.restart_ice(),
            content_type="application/trickle-ice-sdpfrag", headers={"If-Match": "*"},
        )
        assert reply.status == 200, reply.text
        frag = IceFragment.parse(reply.text)
        assert [(c.split()[2].lower(), c.split()[4]) for c in frag.candidates] == [
            ("udp", "127.0.0.1"), ("udp", "::1"), ("tcp", "127.0.0.1"), ("tcp", "::1"),
        ]
        pub.apply_remote_ice(reply.text)
        before = pub.checks_answered
        pub.send_check(use_candidate=True)
        await wait_for(lambda: pub.checks_answered > before, 10, "a check with the new credentials answered over IPv6")
    finally:
        stop.set()
        if sender is not None:
            await sender
        pub.close()


async def test_aiortc_publishes_and_watches_over_ipv6_on_an_ipv6_only_node(
    node_factory: NodeFactory, gather_on: Callable[[str], None]
) -> None:
    node = await node_factory(media_host="::1")
    assert node.router.port.family == socket.AF_INET6
    gather_on("::1")
    room = "ipv6-aiortc"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect(timeout=20)
        status, answer = await sub.connect(timeout=20)
        assert status == 201
        assert {c[3] for c in CANDIDATES.findall(answer)} == {"::1"} and "c=IN IP6 ::1" in answer
        await wait_for(lambda: sub.frames["video"] > 20 and sub.frames["audio"] > 20, 30, "IPv6 frames decoded")
        assert transports(node) == {"alice": ("udp", "::1"), "bob": ("udp", "::1")}
        assert probe_hosts(node) == {"::1"}  # the self-check runs over ::1 too
    finally:
        await pub.close()
        await sub.close()


async def test_an_ipv4_aiortc_publisher_and_an_ipv6_aiortc_viewer_in_one_room(
    node_factory: NodeFactory, gather_on: Callable[[str], None]
) -> None:
    node = await dual_stack(node_factory)
    room = "ipv6-mixed"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        gather_on("127.0.0.1")
        await pub.connect(timeout=20)
        gather_on("::1")
        await sub.connect(timeout=20)
        await wait_for(lambda: sub.frames["video"] > 20 and sub.frames["audio"] > 20, 30, "frames decoded over IPv6")
        assert transports(node) == {"alice": ("udp", "127.0.0.1"), "bob": ("udp", "::1")}
        assert probe_hosts(node) == {"127.0.0.1"}  # a :: node's self-check: the v4-mapped path
        text = (await call(node, "GET", "/metrics")).text
        assert 'levelchat_sfu_sessions_by_transport{transport="udp"}' in text
    finally:
        await pub.close()
        await sub.close()


async def test_websocket_publish_answer_and_subscriber_offer_carry_both_families(
    node_factory: NodeFactory, gather_on: Callable[[str], None]
) -> None:
    node = await dual_stack(node_factory)
    room = "ipv6-ws"
    lite = LiteEndpoint(Certificate.generate(), host="::1")
    alice = RtcClient(node, room, "alice", ("room:join", "room:publish"))
    bob = RtcClient(node, room, "bob", ("room:join", "room:subscribe"))
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    both = [("udp", "127.0.0.1"), ("udp", "::1"), ("tcp", "127.0.0.1"), ("tcp", "::1")]
    try:
        await alice.join()
        answer = await alice.call("publish", {"sdp": lite.offer(send=True, video_ssrc=VIDEO_SSRC)})
        assert [(c[1], c[3]) for c in CANDIDATES.findall(answer["sdp"])] == both
        await lite.connect(answer["sdp"], timeout_s=15)
        sender = asyncio.create_task(send_video(lite, stop))
        gather_on("::1")  # bob's aiortc answers the node's offer over IPv6
        await bob.join()
        await wait_for(lambda: any(len(r.log.packets) > 30 for r in bob.received.values()), 20, "bob receives alice")
        (offer,) = bob.named("offer")
        assert [(c[1], c[3]) for c in CANDIDATES.findall(offer["sdp"])] == both
        assert transports(node) == {"alice": ("udp", "::1"), "bob": ("udp", "::1")}
    finally:
        stop.set()
        if sender is not None:
            await sender
        lite.close()
        for client in (alice, bob):
            await client.close()
