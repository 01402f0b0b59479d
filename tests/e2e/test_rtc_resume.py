"""Resuming a signaling session (``join {resume}``): the socket of a publishing participant is
cut by a real TCP relay mid-call (no close frame); its seat, tracks and media stay for
``signaling_resume_grace_s``, a new socket with the same identity takes it over without churn for
the others, and after the grace period it leaves.  Also the protocol version exchanged at join."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from sfu.api.rtc import RTC_SERVICE_KEY
from sfu.api.rtc_resume import PROTOCOL_VERSION, Resumption
from sfu.counters import ResumeOutcome
from sfu.node import Node
from tests.e2e.clients import wait_for
from tests.e2e.conftest import token
from tests.e2e.tcp_proxy import TcpProxy
from tests.e2e.test_rtc_signaling import ALL, RpcFailure, RtcClient, receives_from
from tests.e2e.ws_support import metrics

pytestmark = pytest.mark.timeout(90)
VIEW = ("room:join", "room:subscribe")


def _resumption(node: Node) -> Resumption:
    assert node._runner is not None
    return node._runner.app[RTC_SERVICE_KEY].resumption


async def _proxy(node: Node) -> TcpProxy:
    u = urlsplit(node.url)
    assert u.hostname is not None and u.port is not None
    proxy = TcpProxy(u.hostname, u.port)
    await proxy.start()
    return proxy


def _via(client: RtcClient, proxy: TcpProxy, room: str, identity: str, scopes: tuple[str, ...] = ALL) -> None:
    client.url = f"ws://127.0.0.1:{proxy.port}/v1/rtc?access_token=" + token(room, identity, scopes)


async def _new_socket(client: RtcClient, url: str | None = None) -> None:
    """A fresh WebSocket for the same client (its peer connections stay)."""
    client.closed_with = None
    client.ws = await client.http.ws_connect(url or client.url)
    client._tasks.append(asyncio.ensure_future(client._read()))


def _video_frames(client: RtcClient, publisher: str) -> int:
    return sum(r.frames for r in client.flowing().values() if r.participant == publisher and r.kind == "video")


async def _call_with(client: RtcClient, url: str, params: dict[str, Any]) -> dict[str, Any]:
    await _new_socket(client, url)
    return await client.call("join", params)


async def test_cut_socket_keeps_media_and_resume_takes_the_session_over(node: Node) -> None:
    room = "rtc-resume"
    proxy = await _proxy(node)
    pub, viewer = RtcClient(node, room, "pub"), RtcClient(node, room, "viewer", VIEW)
    _via(pub, proxy, room, "pub")
    try:
        await viewer.join()
        joined = await pub.join()
        assert joined["protocol"] == PROTOCOL_VERSION and joined["resumed"] is False
        assert isinstance(joined["resume"], str) and joined["resume_grace_s"] == 15.0
        assert joined["codecs"] == ["opus", "VP8", "VP9", "H264", "AV1"]  # the room's policy (the default)
        await pub.publish()
        await wait_for(receives_from(viewer, ["pub"], 10), 20, "viewer receives pub")

        assert proxy.cut() == 1  # the network drops the signaling connection: no close frame
        await wait_for(lambda: pub.closed_with is not None, 5, "pub's socket gone")
        await wait_for(lambda: _resumption(node).detached == 1, 5, "the node noticed")
        before = _video_frames(viewer, "pub")
        await wait_for(lambda: _video_frames(viewer, "pub") >= before + 30, 15, "media keeps flowing while detached")
        assert "pub" in node.rooms.rooms[room].participants

        resumed = await _call_with(pub, pub.url, {"resume": joined["resume"], "protocol": PROTOCOL_VERSION})
        assert resumed["resumed"] is True
        assert resumed["participant"]["sid"] == joined["participant"]["sid"]
        assert [t["sid"] for t in resumed["participant"]["tracks"]] == [t["sid"] for t in pub.published]
        assert resumed["resume"] != joined["resume"]  # a new token each time
        assert _resumption(node).detached == 0
        m = await metrics(node.url)
        assert m['levelchat_sfu_signaling_resumes_total{outcome="resumed"}'] == 1, m
        # the session works on the new socket: a mute reaches the viewer
        await pub.call("mute", {"track": pub.published[0]["sid"], "muted": True})
        await wait_for(lambda: viewer.named("track_muted"), 5, "track_muted")
        assert viewer.named("participant_left") == []
        assert [p["participant"]["identity"] for p in viewer.named("participant_joined")] == ["pub"]
        # the old token is void
        other = RtcClient(node, room, "pub")
        try:
            with pytest.raises(RpcFailure) as info:
                await _call_with(other, other.url, {"resume": joined["resume"]})
            assert info.value.problem["code"] == "not_found"
        finally:
            await other.close()
    finally:
        for c in (pub, viewer):
            await c.close()
        await proxy.close()


async def test_after_the_grace_period_the_participant_is_gone(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(signaling_resume_grace_s=1.0)
    room = "rtc-grace"
    proxy = await _proxy(node)
    pub, viewer = RtcClient(node, room, "pub"), RtcClient(node, room, "viewer", VIEW)
    _via(pub, proxy, room, "pub")
    try:
        await viewer.join()
        joined = await pub.join()
        await pub.publish()
        await wait_for(receives_from(viewer, ["pub"], 5), 20, "viewer receives pub")
        peers = node.port.peer_count
        proxy.cut()
        await wait_for(lambda: viewer.named("participant_left"), 10, "participant_left after the grace period")
        assert viewer.named("participant_left")[0]["reason"] == "left"
        assert "pub" not in node.rooms.rooms[room].participants
        assert node.port.peer_count == peers - 1  # pub's publisher transport released
        assert _resumption(node).counters.resumes[ResumeOutcome.EXPIRED] == 1
        m = await metrics(node.url)
        assert m['levelchat_sfu_signaling_resumes_total{outcome="expired"}'] == 1, m
        assert m['levelchat_sfu_signaling_resumes_total{outcome="detached"}'] == 1, m
        assert m["levelchat_sfu_signaling_detached"] == 0, m
        with pytest.raises(RpcFailure) as info:
            await _call_with(pub, pub.url, {"resume": joined["resume"]})
        assert info.value.problem["code"] == "not_found"
    finally:
        for c in (pub, viewer):
            await c.close()
        await proxy.close()
        await node.stop()


async def test_another_identity_or_room_cannot_resume_a_session(node: Node) -> None:
    room = "rtc-steal"
    proxy = await _proxy(node)
    pub, viewer = RtcClient(node, room, "pub"), RtcClient(node, room, "viewer", VIEW)
    thief = RtcClient(node, room, "mallory")
    elsewhere = RtcClient(node, "rtc-other", "pub")
    _via(pub, proxy, room, "pub")
    try:
        await viewer.join()
        joined = await pub.join()
        await pub.publish()
        proxy.cut()
        await wait_for(lambda: _resumption(node).detached == 1, 5, "detached")
        for c in (thief, elsewhere):
            with pytest.raises(RpcFailure) as info:
                await _call_with(c, c.url, {"resume": joined["resume"]})
            assert info.value.problem["code"] == "not_found"
        assert node.rooms.rooms[room].participants["pub"].sid == joined["participant"]["sid"]
        m = await metrics(node.url)
        assert m['levelchat_sfu_signaling_resumes_total{outcome="refused"}'] == 2, m
        assert m["levelchat_sfu_signaling_detached"] == 1, m
        # the failed attempts did not use the token up
        resumed = await _call_with(pub, pub.url, {"resume": joined["resume"]})
        assert resumed["participant"]["sid"] == joined["participant"]["sid"]
        assert viewer.named("participant_left") == []
    finally:
        for c in (pub, viewer, thief, elsewhere):
            await c.close()
        await proxy.close()


async def test_resume_from_a_live_socket_closes_the_old_one(node: Node) -> None:
    room = "rtc-takeover"
    old, viewer = RtcClient(node, room, "dup"), RtcClient(node, room, "viewer", VIEW)
    new = RtcClient(node, room, "dup")
    try:
        await viewer.join()
        joined = await old.join()
        await old.publish()
        resumed = await _call_with(new, new.url, {"resume": joined["resume"]})
        assert resumed["participant"]["sid"] == joined["participant"]["sid"]
        await wait_for(lambda: old.closed_with is not None, 5, "old socket closed")
        assert old.closed_with == 4000
        assert old.named("disconnected") == [{"reason": "resumed", "detail": "a new socket resumed this session"}]
        assert viewer.named("participant_left") == []
        assert node.rooms.rooms[room].participants["dup"].sid == joined["participant"]["sid"]
    finally:
        for c in (old, new, viewer):
            await c.close()


async def test_a_protocol_mismatch_is_refused_with_signaling_protocol(node: Node) -> None:
    client = RtcClient(node, "rtc-proto", "p")
    try:
        await client.connect()
        for bad, code in ((PROTOCOL_VERSION + 1, "signaling/protocol"), ("1", "bad_request")):
            with pytest.raises(RpcFailure) as info:
                await client.call("join", {"protocol": bad})
            assert info.value.problem["code"] == code
        assert (await client.call("join", {"protocol": PROTOCOL_VERSION}))["protocol"] == PROTOCOL_VERSION
    finally:
        await client.close()
