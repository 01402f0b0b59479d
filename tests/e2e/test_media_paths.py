"""Media through the node with real aiortc peers: profiles, DTLS roles, late joiners, reconnects, scale."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sfu.transport.dtls import DtlsRole
from sfu.transport.srtp import SrtpProfile
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import PROBE_PEERS, public_participants, token


@pytest.mark.parametrize(
    ("profile", "dtls_role"),
    [
        ("AES_CM_128_HMAC_SHA1_80", "passive"),
        ("AEAD_AES_128_GCM", "passive"),
        ("AES_CM_128_HMAC_SHA1_80", "active"),
        ("AEAD_AES_128_GCM", "active"),
    ],
)
async def test_srtp_profiles_and_dtls_roles(node_factory: Callable[..., Any], profile: str, dtls_role: str) -> None:
    node = await node_factory(srtp_profiles=[profile], dtls_role=dtls_role)
    room = "profiles"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()
        status, body = await sub.connect()
        assert status == 201, body
        await wait_for(lambda: sub.frames["video"] >= 10 and sub.frames["audio"] >= 10, 15, "frames")
        expected_role = DtlsRole.SERVER if dtls_role == "passive" else DtlsRole.CLIENT
        for p in public_participants(node):
            transport = p.publisher or p.subscriber
            assert transport is not None
            assert transport.profile is SrtpProfile.from_name(profile)
            assert transport.dtls.role is expected_role
        assert f"a=setup:{dtls_role}" in body
        assert sub.logs["video"].gaps() == []
    finally:
        await sub.close()
        await pub.close()
        await node.stop()


async def test_late_subscriber_gets_keyframe_within_one_second(node_factory: Callable[..., Any]) -> None:
    node = await node_factory()
    room = "late-join"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    early = WhepSubscriber(node.url, room, token(room, "early"))
    late = WhepSubscriber(node.url, room, token(room, "late"))
    try:
        await pub.connect()
        await early.connect()
        await wait_for(lambda: early.frames["video"] >= 30, 15, "early subscriber's frames")
        # aiortc sends keyframes only when asked: the late subscriber's first frame needs a PLI
        status, body = await late.connect()
        assert status == 201, body
        connected_at = asyncio.get_running_loop().time()
        await wait_for(lambda: bool(late.logs["video"].keyframes_at), 5, "a keyframe for the late subscriber")
        first_keyframe = late.logs["video"].keyframes_at[0]
        assert first_keyframe - connected_at < 1.0
        # the first video packet it was sent starts that keyframe: nothing undecodable before it
        assert late.logs["video"].packets[0][2] == first_keyframe
        await wait_for(lambda: late.frames["video"] >= 10, 10, "late subscriber's frames")
        assert late.logs["video"].gaps() == []
        assert node.counters.keyframe_requests >= 2
    finally:
        for c in (late, early, pub):
            await c.close()
        await node.stop()


async def test_publisher_reconnect_keeps_subscriber_stream_continuous(node_factory: Callable[..., Any]) -> None:
    node = await node_factory()
    room = "reconnect"
    first = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    second: WhipPublisher | None = None
    try:
        await first.connect()
        await sub.connect()
        await wait_for(lambda: sub.frames["video"] >= 20 and sub.frames["audio"] >= 20, 15, "frames")
        assert await first.delete() == 200
        await first.close()
        before = dict(sub.frames)
        packets_before = {k: len(v.packets) for k, v in sub.logs.items()}
        second = WhipPublisher(node.url, room, token(room, "alice"))
        await second.connect()
        await wait_for(
            lambda: sub.frames["video"] >= before["video"] + 20 and sub.frames["audio"] >= before["audio"] + 20,
            15,
            "frames from the rejoined publisher",
        )
        for kind, log in sub.logs.items():
            assert len(log.packets) > packets_before[kind]
            assert log.gaps() == [], f"{kind} sequence broke across the reconnect"
            stamps = [ts for _, ts, _ in log.packets]
            jumps = [(b - a) & 0xFFFFFFFF for a, b in zip(stamps, stamps[1:], strict=False)]
            assert all(j < 0x80000000 for j in jumps), f"{kind} timestamps went backwards"
        assert len(sub.logs["video"].keyframes_at) >= 2
    finally:
        await sub.close()
        if second is not None:
            await second.close()
        await node.stop()


async def test_twenty_participants_share_one_port(node_factory: Callable[..., Any]) -> None:
    node = await node_factory()
    pubs: list[WhipPublisher] = []
    subs: list[WhepSubscriber] = []
    try:
        for r in range(4):
            room = f"party-{r}"
            pub = WhipPublisher(node.url, room, token(room, f"host-{r}"))
            await pub.connect()
            pubs.append(pub)
            for i in range(4):
                sub = WhepSubscriber(node.url, room, token(room, f"guest-{r}-{i}"))
                status, body = await sub.connect()
                assert status == 201, body
                subs.append(sub)
        assert node.rooms.participant_count == 20
        assert node.port.peer_count == 20 + PROBE_PEERS
        await wait_for(lambda: all(s.frames["video"] >= 10 and s.frames["audio"] >= 10 for s in subs), 30, "frames")
        for s in subs:
            assert s.logs["video"].gaps() == []
            assert s.logs["audio"].gaps() == []
    finally:
        for c in [*subs, *pubs]:
            await c.close()
        await node.stop()
