"""TURN through a real coturn: the node hands out credentials minted per session, and aiortc
clients that may use nothing but relay candidates publish and watch through it.

- WHIP/WHEP ``201`` answers and an authenticated ``OPTIONS`` carry one ``Link: rel="ice-server"``
  per TURN URL (RFC 9725 §4.6), the WebSocket ``join`` result ``ice_servers``; a node without
  ``turn_servers`` hands out none; the metric counts the credentials issued; a multi-worker
  node's front passes them all through.
- An aiortc publisher and viewer whose only candidates are relayed (no host addresses to gather:
  ``get_host_addresses`` returns nothing) take the ICE servers from the ``OPTIONS`` answer's
  ``Link`` headers, over TURN/UDP and over TURN/TCP: frames flow, and the node sees coturn's
  relayed addresses (its relay port range) as the peers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCIceServer

from sfu.client.lite import LiteEndpoint
from sfu.node import Node
from sfu.signaling.sdpfrag import CONTENT_TYPE as FRAG_TYPE
from sfu.transport.certificate import Certificate
from sfu.turn import IceServer, TurnUrl, credential_for, parse_link
from tests.coturn import TURNSERVER, Coturn
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import public_participants, token
from tests.e2e.procs import Procs
from tests.e2e.test_http_errors import call
from tests.e2e.test_ice_tcp import metric
from tests.e2e.test_rtc_ice_restart import VIDEO_SSRC
from tests.e2e.test_rtc_signaling import RtcClient

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not shutil.which("turnserver"), reason=f"{TURNSERVER} is missing: apt-get install coturn"),
]
NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with Coturn(tmp_path_factory.mktemp("coturn")) as c:
        yield c


def turn_servers(c: Coturn) -> list[dict[str, Any]]:
    urls = [
        f"turn:127.0.0.1:{c.port}?transport=udp",
        f"turn:127.0.0.1:{c.port}?transport=tcp",
        f"turns:127.0.0.1:{c.tls_port}?transport=tcp",
    ]
    return [{"urls": urls, "secret": c.secret, "ttl_s": 600}]


def links(headers: Any) -> list[IceServer]:
    return [s for s in (parse_link(v) for v in headers.getall("Link", [])) if s is not None]


async def test_whip_whep_options_and_join_hand_out_minted_credentials(node_factory: NodeFactory, coturn: Coturn) -> None:
    node = await node_factory(turn_servers=turn_servers(coturn))
    urls = turn_servers(coturn)[0]["urls"]
    opts = await call(node, "OPTIONS", "/whip/turn-room", bearer=token("turn-room", "alice"))
    assert opts.status == 204 and opts.headers["Allow"] == "POST, OPTIONS", opts.text
    servers = links(opts.headers)
    assert [s.urls[0] for s in servers] == urls
    expiry, identity = servers[0].username.split(":")
    assert identity == "alice" and int(expiry) > 0
    assert all(s.credential == credential_for(coturn.secret, s.username) for s in servers)
    assert len(opts.headers.getall("Link")) == 3 and 'credential-type="password"' in opts.headers["Link"]

    # the 201 of WHIP and WHEP carry them too, for the identity of the session
    pub = WhipPublisher(node.url, "turn-room", token("turn-room", "alice"))
    try:
        await pub.connect()
        sub = WhepSubscriber(node.url, "turn-room", token("turn-room", "bob"))
        try:
            status, _ = await sub.connect()
            assert status == 201
        finally:
            await sub.close()
    finally:
        await pub.close()
    whep = await call(node, "OPTIONS", "/whep/turn-room", bearer=token("turn-room", "carol"))
    assert [s.username.split(":")[1] for s in links(whep.headers)] == ["carol"] * 3

    client = RtcClient(node, "turn-room", "dave")
    try:
        joined = await client.join()
        (ice,) = joined["ice_servers"]
        assert ice["urls"] == urls and ice["username"].endswith(":dave")
        assert ice["credential"] == credential_for(coturn.secret, ice["username"])
    finally:
        await client.close()

    # refusals as for a POST: no token, a token without publish rights
    assert (await call(node, "OPTIONS", "/whip/turn-room")).status == 401
    no_publish = token("turn-room", "eve", ("room:join", "room:subscribe"))
    refused = await call(node, "OPTIONS", "/whip/turn-room", bearer=no_publish)
    assert (refused.status, refused.body["code"], "Link" in refused.headers) == (401, "token/unauthorized", False)
    text = (await call(node, "GET", "/metrics")).text
    assert metric(text, "levelchat_sfu_turn_credentials_issued_total") == 5  # 2 OPTIONS, WHIP, WHEP, join


async def test_an_ice_restart_answer_carries_fresh_credentials_like_the_201(node_factory: NodeFactory, coturn: Coturn) -> None:
    """RFC 9725 §4.6: the ``200`` of an ICE-restart ``PATCH`` carries the TURN servers as the
    ``201`` does, with a credential minted at the restart (a trickle's ``204`` carries none)."""
    node = await node_factory(turn_servers=turn_servers(coturn))
    urls = turn_servers(coturn)[0]["urls"]
    pub = LiteEndpoint(Certificate.generate())
    tok = token("turn-restart", "alice")
    try:
        created = await call(node, "POST", "/whip/turn-restart", bearer=tok, body=pub.offer(send=True, video_ssrc=VIDEO_SSRC),
                             content_type="application/sdp")
        assert created.status == 201, created.text
        loc = created.headers["Location"]
        await pub.connect(created.text)
        trickle = await call(node, "PATCH", loc, bearer=tok, body=pub.ice_fragment(), content_type=FRAG_TYPE)
        assert trickle.status == 204 and "Link" not in trickle.headers
        restart = await call(node, "PATCH", loc, bearer=tok, body=pub.restart_ice(), content_type=FRAG_TYPE,
                             headers={"If-Match": "*"})
        assert restart.status == 200, restart.text
        servers = links(restart.headers)
        assert [s.urls[0] for s in servers] == urls
        assert {s.username.split(":")[1] for s in servers} == {"alice"}
        assert all(s.credential == credential_for(coturn.secret, s.username) for s in servers)
        assert int(servers[0].username.split(":")[0]) >= int(links(created.headers)[0].username.split(":")[0])
        text = (await call(node, "GET", "/metrics")).text
        assert metric(text, "levelchat_sfu_turn_credentials_issued_total") == 2  # the 201 and the restart
    finally:
        pub.close()


async def test_a_node_without_turn_servers_hands_out_none(node: Node) -> None:
    opts = await call(node, "OPTIONS", "/whip/turn-room", bearer=token("turn-room", "alice"))
    assert opts.status == 204 and "Link" not in opts.headers
    client = RtcClient(node, "turn-room", "dave")
    try:
        assert (await client.join())["ice_servers"] == []
    finally:
        await client.close()


async def test_a_multi_worker_front_passes_them_through(tmp_path: Path, coturn: Coturn) -> None:
    """The workers mint; the front forwards OPTIONS and passes every Link header and the join
    result through unchanged."""
    procs = Procs(tmp_path)
    try:
        env = {"LEVELCHAT_SFU_TURN_SERVERS": json.dumps(turn_servers(coturn))}
        front = procs.node("turn-front", None, env=env, extra_args=("--workers", "2"))
        await front.wait_healthy()
        room = "turn-front-room"
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {token(room, 'alice')}"}
            async with http.options(f"{front.url}/whip/{room}", headers=auth) as resp:
                assert resp.status == 204, await resp.text()
                servers = links(resp.headers)
            pub = WhipPublisher(front.url, room, token(room, "alice"))
            try:
                await pub.connect(timeout=20)
                async with http.options(f"{front.url}/whep/{room}", headers={"Authorization": f"Bearer {token(room, 'bob')}"}) as resp:
                    assert resp.status == 204, await resp.text()
                    viewer = links(resp.headers)
            finally:
                await pub.close()
        assert [s.urls[0] for s in servers] == turn_servers(coturn)[0]["urls"] == [s.urls[0] for s in viewer]
        assert {s.username.split(":")[1] for s in servers} == {"alice"} and {s.username.split(":")[1] for s in viewer} == {"bob"}
        assert all(s.credential == credential_for(coturn.secret, s.username) for s in servers + viewer)
        client = RtcClient(SimpleNamespace(url=front.url), room, "carol")  # type: ignore[arg-type]
        try:
            (ice,) = (await client.join())["ice_servers"]
            assert ice["username"].endswith(":carol") and ice["credential"] == credential_for(coturn.secret, ice["username"])
        finally:
            await client.close()
    finally:
        procs.stop_all()


def relay_only(servers: list[IceServer], transport: str) -> RTCConfiguration:
    """aiortc's configuration with the one TURN URL of ``transport`` (aiortc uses one TURN server)."""
    (chosen,) = [s for s in servers if not TurnUrl.parse(s.urls[0]).secure and TurnUrl.parse(s.urls[0]).transport.value == transport]
    return RTCConfiguration(iceServers=[RTCIceServer(urls=chosen.urls[0], username=chosen.username, credential=chosen.credential)])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_aiortc_publishes_and_watches_through_coturn_alone(
    node_factory: NodeFactory, coturn: Coturn, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [])  # relay candidates only
    node = await node_factory(turn_servers=turn_servers(coturn), ice_tcp=False)
    room = f"turn-{transport}"
    pub_token, sub_token = token(room, "alice"), token(room, "bob")
    pub_servers = links((await call(node, "OPTIONS", f"/whip/{room}", bearer=pub_token)).headers)
    sub_servers = links((await call(node, "OPTIONS", f"/whep/{room}", bearer=sub_token)).headers)
    pub = WhipPublisher(node.url, room, pub_token, config=relay_only(pub_servers, transport))
    sub = WhepSubscriber(node.url, room, sub_token, config=relay_only(sub_servers, transport))
    try:
        await pub.connect(timeout=30)
        local = [c.type for c in pub.pc.getTransceivers()[0].sender.transport.transport.iceGatherer.getLocalCandidates()]
        assert local == ["relay"], local
        await sub.connect(timeout=30)
        await wait_for(lambda: sub.frames["video"] >= 30 and sub.frames["audio"] >= 30, 30, "frames through coturn")
        peers = {p.identity: [t.addr for t in (p.publisher, p.subscriber) if t is not None] for p in public_participants(node)}
        assert set(peers) == {"alice", "bob"}, peers
        for identity, addrs in peers.items():
            (addr,) = addrs
            assert addr is not None and addr[0] == "127.0.0.1" and addr[1] in coturn.relay_ports, (identity, addr)
    finally:
        await sub.close()
        await pub.close()
