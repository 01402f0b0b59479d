"""Admission with real clients: the cap race, seats freed on leave, rate limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from sfu.client.lite import LiteEndpoint
from sfu.node import Node
from sfu.transport.certificate import Certificate
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import token

CERT = Certificate.generate()


async def _whip(http: aiohttp.ClientSession, node: Node, room: str, identity: str) -> tuple[int, Any, Any]:
    offer = LiteEndpoint(CERT)
    try:
        sdp = offer.offer(send=True, video_ssrc=1000 + hash(identity) % 100000)
    finally:
        offer.sock.close()
    async with http.post(
        f"{node.url}/whip/{room}",
        data=sdp,
        headers={"Authorization": f"Bearer {token(room, identity)}", "Content-Type": "application/sdp"},
    ) as resp:
        body = await resp.json() if resp.content_type.endswith("json") else await resp.text()
        return resp.status, body, resp.headers.copy()


async def _create_room(http: aiohttp.ClientSession, node: Node, room: str, cap: int) -> None:
    tok = token(room, "admin", scopes=("room:create", "room:admin"))
    async with http.post(
        f"{node.url}/v1/rooms",
        json={"room": room, "max_participants": cap},
        headers={"Authorization": f"Bearer {tok}"},
    ) as resp:
        assert resp.status == 201, await resp.text()


async def test_fifty_clients_race_for_the_last_three_seats(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory(rate_limit_ip_per_s=0, rate_limit_key_per_s=0)
    try:
        async with aiohttp.ClientSession() as http:
            for round_no in range(5):
                room = f"race-{round_no}"
                await _create_room(http, node, room, cap=5)
                for i in range(2):
                    status, body, _ = await _whip(http, node, room, f"early-{i}")
                    assert status == 201, body
                results = await asyncio.gather(*(_whip(http, node, room, f"racer-{i}") for i in range(50)))
                statuses = [s for s, _, _ in results]
                assert statuses.count(201) == 3, statuses
                assert statuses.count(429) == 47
                for status, body, headers in results:
                    if status == 429:
                        assert body["code"] == "room/cap-denied"
                        assert body["status"] == 429
                        assert headers["Content-Type"] == "application/problem+json"
                assert len(node.rooms.rooms[room].participants) == 5
    finally:
        await node.stop()


async def test_leaving_frees_the_seat_at_once(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory()
    room = "one-seat"
    try:
        async with aiohttp.ClientSession() as http:
            await _create_room(http, node, room, cap=1)
        first = WhipPublisher(node.url, room, token(room, "first"))
        await first.connect()
        async with aiohttp.ClientSession() as http:
            status, body, _ = await _whip(http, node, room, "second")
            assert (status, body["code"]) == (429, "room/cap-denied")
            assert await first.delete() == 200
            status, body, _ = await _whip(http, node, room, "second")
            assert status == 201, body
        await first.close()
    finally:
        await node.stop()


async def test_rate_limit_refuses_with_headers_and_spares_live_sessions(
    node_factory: Callable[..., Any],
) -> None:
    node: Node = await node_factory(rate_limit_ip_per_s=0.5, rate_limit_ip_burst=3)
    room = "limited"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()  # request 1
        await sub.connect()  # request 2
        await wait_for(lambda: sub.frames["video"] >= 5, 10, "frames")
        async with aiohttp.ClientSession() as http:
            status, _, _ = await _whip(http, node, "other-room", "carol")  # request 3
            assert status == 201
            status, body, headers = await _whip(http, node, "other-room", "dave")
            assert status == 429
            assert body["code"] == "rate_limited"
            assert int(headers["Retry-After"]) >= 1
            assert int(headers["X-RateLimit-Reset"]) > time.time()
            assert headers["X-Request-Id"] == body["request_id"]
            async with http.get(f"{node.url}/healthz") as resp:  # probes are never limited
                assert resp.status == 200
        before = sub.frames["video"]
        await wait_for(lambda: sub.frames["video"] >= before + 10, 10, "frames after the refusals")
    finally:
        await sub.close()
        await pub.close()
        await node.stop()


async def test_same_identity_replaces_the_older_session(node_factory: Callable[..., Any]) -> None:
    node: Node = await node_factory()
    room = "replace"
    first = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    second = WhipPublisher(node.url, room, token(room, "alice"))
    try:
        await first.connect()
        await sub.connect()
        await wait_for(lambda: sub.frames["video"] >= 10, 10, "frames from the first session")
        old = node.rooms.rooms[room].participants["alice"]
        await second.connect()  # no DELETE: the newer session takes the seat
        new = node.rooms.rooms[room].participants["alice"]
        assert new is not old and old.closed
        assert len(node.rooms.rooms[room].participants) == 2
        await wait_for(lambda: first.pc.connectionState in ("closed", "failed"), 10, "old session closed")
        before = sub.frames["video"]
        await wait_for(lambda: sub.frames["video"] >= before + 10, 10, "frames from the newer session")
        assert sub.logs["video"].gaps() == []
    finally:
        for c in (sub, first, second):
            await c.close()
        await node.stop()


async def test_recording_requests_follow_scope_and_room_policy(node_factory: Callable[..., Any], tmp_path: Path) -> None:
    node: Node = await node_factory(recordings_dir=str(tmp_path / "recs"))
    try:
        async with aiohttp.ClientSession() as http:
            for room, allowed in (("rec-room", True), ("norec-room", False)):
                async with http.post(
                    f"{node.url}/v1/rooms",
                    json={"room": room, "recording": allowed},
                    headers={"Authorization": f"Bearer {token(room, 'admin', scopes=('room:create',))}"},
                ) as resp:
                    assert resp.status == 201
                    assert (await resp.json())["recording"] is allowed

            async def record(room: str, scopes: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
                tok = token(room, "rec", scopes=scopes)
                async with http.post(
                    f"{node.url}/v1/rooms/{room}/recording", headers={"Authorization": f"Bearer {tok}"}
                ) as resp:
                    return resp.status, await resp.json()

            status, body = await record("rec-room", ("room:join",))
            assert (status, body["code"]) == (400, "recording/not-permitted")
            assert "recording:write" in body["detail"]
            status, body = await record("norec-room", ("room:join", "recording:write"))
            assert (status, body["code"]) == (400, "recording/not-permitted")
            status, body = await record("rec-room", ("room:join", "recording:write"))
            assert (status, body["status"]) == (201, "recording")  # tests/e2e/test_recording.py
    finally:
        await node.stop()


async def test_codec_policy_refuses_publishers_and_subscribers_that_cannot_fit(
    node_factory: Callable[..., Any],
) -> None:
    node: Node = await node_factory()
    try:
        async with aiohttp.ClientSession() as http:
            await _create_room(http, node, "vp8-only", cap=10)
            async with http.post(
                f"{node.url}/v1/rooms",
                json={"room": "h264-only", "codecs": ["opus", "H264"]},
                headers={"Authorization": f"Bearer {token('h264-only', 'admin', scopes=('room:create',))}"},
            ) as resp:
                assert resp.status == 201
        # the lite client offers VP8 only: a room that allows only H264 refuses it
        async with aiohttp.ClientSession() as http:
            status, body, _ = await _whip(http, node, "h264-only", "vp8-publisher")
        assert (status, body["code"]) == (406, "codec/unsupported")
        assert "VP8" in body["detail"]
        # a VP8 publisher, and a subscriber whose video can only be H264: audio only, video refused
        pub = WhipPublisher(node.url, "vp8-only", token("vp8-only", "alice"))
        await pub.connect()
        sub = WhepSubscriber(node.url, "vp8-only", token("vp8-only", "bob"))
        from aiortc.rtcrtpsender import RTCRtpSender

        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "H264"]
        video = next(t for t in sub.pc.getTransceivers() if t.kind == "video")
        video.setCodecPreferences(h264)
        await sub.pc.setLocalDescription(await sub.pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{node.url}/whep/vp8-only",
                data=sub.pc.localDescription.sdp,
                headers={
                    "Authorization": f"Bearer {token('vp8-only', 'bob')}",
                    "Content-Type": "application/sdp",
                },
            ) as resp:
                assert resp.status == 201
                assert resp.headers.getall("LevelChat-Refused-Track") == [
                    "kind=video; code=codec/unsupported"
                ]
                answer = await resp.text()
        video_section = answer.split("m=video")[1].split("m=")[0]
        assert "a=inactive" in video_section
        await sub.close()
        await pub.close()
    finally:
        await node.stop()


async def test_every_refusal_in_a_live_room_leaves_its_media_flowing(
    node_factory: Callable[..., Any],
) -> None:
    node: Node = await node_factory(rate_limit_ip_per_s=0.001, rate_limit_ip_burst=40)
    room = "busy-room"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{node.url}/v1/rooms",
            json={"room": room, "max_participants": 3, "codecs": ["opus", "VP8"]},
            headers={"Authorization": f"Bearer {token(room, 'admin', scopes=('room:create',))}"},
        ) as resp:
            assert resp.status == 201
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()
        await sub.connect()
        async with aiohttp.ClientSession() as http:
            status, _, _ = await _whip(http, node, room, "carol")  # the third and last seat
            assert status == 201
        await wait_for(lambda: sub.frames["video"] >= 10, 10, "frames")
        offer = LiteEndpoint(CERT)
        good_sdp = offer.offer(send=True, video_ssrc=4242)
        offer.sock.close()
        expired = token(room, "eve", ttl_s=-120)
        now = int(time.time())
        long_identity = jwt.encode(
            {
                "iss": "devkey",
                "aud": "levelchat",
                "sub": "x" * 129,
                "room": room,
                "exp": now + 60,
                "scopes": ["room:join", "room:publish"],
            },
            "secret",
            headers={"kid": "devkey"},
        )
        cases: list[tuple[str, str, dict[str, str], str, int, str]] = [
            (
                "POST",
                f"/whip/{room}",
                {"Authorization": f"Bearer {token(room, 'dave')}"},
                good_sdp,
                429,
                "room/cap-denied",
            ),
            ("POST", f"/whip/{room}", {}, good_sdp, 401, "unauthorized"),
            ("POST", f"/whip/{room}", {"Authorization": "Bearer not.a.jwt"}, good_sdp, 401, "token/invalid"),
            ("POST", f"/whip/{room}", {"Authorization": f"Bearer {expired}"}, good_sdp, 401, "token/expired"),
            (
                "POST",
                f"/whip/{room}",
                {"Authorization": f"Bearer {token(room, 'eve', scopes=('room:join',))}"},
                good_sdp,
                401,
                "token/unauthorized",
            ),
            (
                "POST",
                f"/whip/{room}",
                {"Authorization": f"Bearer {token('other-room', 'eve')}"},
                good_sdp,
                401,
                "token/unauthorized",
            ),
            (
                "POST",
                f"/whip/{room}",
                {"Authorization": f"Bearer {token(room, 'eve')}"},
                "v=0\r\n",
                400,
                "bad_request",
            ),
            (
                "POST",
                f"/whip/{room}",
                {"Authorization": f"Bearer {long_identity}"},
                good_sdp,
                400,
                "invalid_identity",
            ),
            (
                "POST",
                "/whip/no",
                {"Authorization": f"Bearer {token(room, 'eve')}"},
                good_sdp,
                400,
                "invalid_room",
            ),
            (
                "POST",
                f"/v1/rooms/{room}/recording",
                {"Authorization": f"Bearer {token(room, 'eve')}"},
                "",
                400,
                "recording/not-permitted",
            ),
            (
                "DELETE",
                f"/v1/rooms/{room}",
                {"Authorization": f"Bearer {token(room, 'eve')}"},
                "",
                401,
                "token/unauthorized",
            ),
            ("GET", "/v1/nowhere", {}, "", 404, "not_found"),
        ]
        async with aiohttp.ClientSession() as http:
            for method, path, headers, body, status, code in cases:
                headers = {**headers, "Content-Type": "application/sdp"}
                async with http.request(method, node.url + path, data=body, headers=headers) as resp:
                    problem = await resp.json()
                    assert (resp.status, problem["code"]) == (status, code), (path, problem)
                    assert resp.headers["X-Request-Id"] == problem["request_id"]
            # and the rate limiter, once the burst is spent
            for _ in range(40):
                async with http.post(
                    f"{node.url}/whip/{room}", data=good_sdp, headers={"Content-Type": "application/sdp"}
                ) as resp:
                    if resp.status == 429 and (await resp.json())["code"] == "rate_limited":
                        break
            else:
                raise AssertionError("the rate limiter never refused")
        before = sub.frames["video"]
        await wait_for(lambda: sub.frames["video"] >= before + 20, 10, "media after every refusal")
        assert sub.logs["video"].gaps() == [] and sub.logs["audio"].gaps() == []
        assert len(node.rooms.rooms[room].participants) == 3
        assert not any(code == "500" for (_, code) in node.http_counts)
    finally:
        await sub.close()
        await pub.close()
        await node.stop()
