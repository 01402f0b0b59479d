"""Leaving frees resources; RTCP: NACKs answered from the cache, SRs translated, RRs to publishers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sfu import clock
from sfu.transport.peer import CONSENT_TIMEOUT_MS, TransportState
from tests.e2e.clients import WhepSubscriber, WhipPublisher, wait_for
from tests.e2e.conftest import PROBE_PEERS, public_participants, token


async def test_leaving_and_dtls_close_free_everything(node_factory: Callable[..., Any]) -> None:
    node = await node_factory()
    room = "leaving"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()
        await sub.connect()
        await wait_for(lambda: sub.frames["video"] >= 5, 10, "frames")
        alice = next(p for p in node.router.participants.values() if p.identity == "alice")
        track = next(t for t in alice.tracks.values() if t.kind == "video")
        assert len(track.downtracks) == 1
        await sub.close()  # aiortc sends a DTLS close_notify
        await wait_for(lambda: node.rooms.participant_count == 1, 5, "subscriber released")
        assert node.port.peer_count == 1 + PROBE_PEERS
        assert track.downtracks == []
        assert await pub.delete() == 200
        assert node.rooms.participant_count == 0
        assert node.port.peer_count == PROBE_PEERS
        assert public_participants(node) == []
        node.sessions.expire()
        assert all(s.participant.identity.startswith("selfcheck-") for s in node.sessions.sessions.values())
    finally:
        await pub.close()
        await node.stop()


async def test_consent_expiry_releases_a_silent_participant(node_factory: Callable[..., Any]) -> None:
    node = await node_factory()
    room = "consent"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()
        await sub.connect()
        participant = next(p for p in node.router.participants.values() if p.identity == "bob")
        transport = participant.subscriber
        assert transport is not None and transport.state is TransportState.CONNECTED
        now = clock.now_ms()
        node.router.tick(now + CONSENT_TIMEOUT_MS // 2)  # checks keep coming: still alive
        assert transport.state is TransportState.CONNECTED
        # time passed in: as if the client had gone silent for longer than the consent timeout
        transport.last_consent_ms = now
        for other in node.router.participants.values():  # everyone else kept checking
            for t in (other.publisher, other.subscriber):
                if t is not None and other is not participant:
                    t.last_consent_ms = now + CONSENT_TIMEOUT_MS
        node.router.tick(now + CONSENT_TIMEOUT_MS + 1)
        assert transport.state is TransportState.CLOSED
        assert participant.closed
        assert "bob" not in node.rooms.rooms[room].participants
        assert node.port.peer_count == 1 + PROBE_PEERS
    finally:
        await sub.close()
        await pub.close()
        await node.stop()


async def test_nacks_are_answered_from_the_cache(node_factory: Callable[..., Any]) -> None:
    node = await node_factory()
    room = "nacks"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()
        await sub.connect()
        await wait_for(lambda: len(sub.logs["video"].packets) >= 20, 10, "video packets")
        last = sub.logs["video"].packets[-1][0]
        wanted = {(last + k) & 0xFFFF for k in (15, 16, 40)}
        sub.simulate_loss("video")
        sub.logs["video"].lose_once |= wanted
        await wait_for(lambda: len(sub.logs["video"].lost) == 3, 10, "losses")
        received = lambda: {seq for seq, _, _ in sub.logs["video"].packets}  # noqa: E731
        await wait_for(lambda: wanted <= received(), 10, "retransmissions of the lost packets")
        assert node.counters.nack_in >= 1
        assert node.counters.retransmits >= 3
    finally:
        await sub.close()
        await pub.close()
        await node.stop()


async def test_sender_reports_reach_subscribers_and_receiver_reports_reach_publishers(
    node_factory: Callable[..., Any],
) -> None:
    node = await node_factory()
    room = "reports"
    pub = WhipPublisher(node.url, room, token(room, "alice"))
    sub = WhepSubscriber(node.url, room, token(room, "bob"))
    try:
        await pub.connect()
        await sub.connect()
        subscriber = next(p for p in node.router.participants.values() if p.identity == "bob")
        our_ssrcs = {dt.ssrc for dt in subscriber.downtracks}

        async def remote(pc: Any, kind: str) -> list[Any]:
            stats = await pc.getStats()
            return [s for s in stats.values() if s.type == kind]

        async def have(pc: Any, kind: str, count: int) -> bool:
            return len(await remote(pc, kind)) >= count

        deadline = clock.now_ms() + 15_000
        while clock.now_ms() < deadline:
            if await have(sub.pc, "remote-outbound-rtp", 2) and await have(pub.pc, "remote-inbound-rtp", 2):
                break
            await asyncio.sleep(0.25)
        outbound = await remote(sub.pc, "remote-outbound-rtp")
        assert {s.ssrc for s in outbound} == our_ssrcs  # SRs carry the subscriber-facing SSRCs
        assert all(s.packetsSent > 0 for s in outbound)
        inbound = await remote(pub.pc, "remote-inbound-rtp")
        assert len(inbound) == 2
        assert all(s.packetsLost == 0 for s in inbound)
    finally:
        await sub.close()
        await pub.close()
        await node.stop()
