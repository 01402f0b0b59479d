"""A relay between two routers on two real media ports (real UDP, real SRTP from derived keys):
a track crosses once whatever the number of subscribers behind it, keyframe requests reach the
publisher, NACKs are served by the nearest cache, a broken relay unpublishes what it carried."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from sfu import clock
from sfu.counters import MediaCounters
from sfu.packet import rtcp
from sfu.packet.rtp import RtpPacket
from sfu.routing.events import RoomEvent, RoomEventKind
from sfu.routing.relay import RelayLink
from sfu.routing.relay_wire import RelayMessage
from sfu.routing.rooms import RoomRegistry
from sfu.routing.router import Router
from sfu.transport.peer import CloseReason, TransportState
from sfu.transport.relay import RelayTransport, relay_keys
from sfu.transport.srtp import SrtpProfile
from tests.sfu.routing.harness import NODE_CERT, OPUS_FRAME, PROFILES, VP8_KEY, open_port, rtp_bytes
from tests.sfu.routing.test_router import OPUS, SUB_VIDEO_SSRC, VP8, Node

AUDIO, VIDEO = 0x100, 0x101


def _node(loop: asyncio.AbstractEventLoop) -> Node:
    counters = MediaCounters()
    port = open_port(counters)
    rooms = RoomRegistry(max_rooms=10, max_participants=100)
    router = Router(
        rooms=rooms, port=port, certificate=NODE_CERT, counters=counters, srtp_profiles=PROFILES, loop=loop
    )
    return Node(port, rooms, router, counters)


class Pair:
    def __init__(self, a: Node, b: Node) -> None:
        self.a, self.b = a, b
        loop = asyncio.get_running_loop()
        secret = secrets.token_bytes(32)
        now = clock.now_ms()
        self.ta = RelayTransport(port=a.port, certificate=NODE_CERT, counters=a.counters, now_ms=now, loop=loop)
        self.tb = RelayTransport(port=b.port, certificate=NODE_CERT, counters=b.counters, now_ms=now, loop=loop)
        self.la = RelayLink(a.router, "w0-w1", self.ta, a.counters)
        self.lb = RelayLink(b.router, "w0-w1", self.tb, b.counters)
        gcm = SrtpProfile.AEAD_AES_128_GCM
        self.ta.start(("127.0.0.1", b.port.port), relay_keys(gcm, secret, "w0-w1", "w0", "w1"), now)
        self.tb.start(("127.0.0.1", a.port.port), relay_keys(gcm, secret, "w0-w1", "w1", "w0"), now)
        # needs go back as the hub sends them: at once when a relayed track gets a subscriber
        self.la.on_needs = lambda: self._needs(self.la, self.lb)
        self.lb.on_needs = lambda: self._needs(self.lb, self.la)
        self.events_b: list[RoomEvent] = []
        b.router.observers.append(self.events_b.append)
        # room events cross as the control channel would carry them: JSON both ways
        a.router.observers.append(lambda e: self._cross(self.la, self.lb, e))
        b.router.observers.append(lambda e: self._cross(self.lb, self.la, e))

    @staticmethod
    def _needs(src: RelayLink, dst: RelayLink) -> None:
        msg = src.needs()
        if msg is not None:
            dst.apply(RelayMessage.parse(msg.to_json()), clock.now_ms())

    @staticmethod
    def _cross(src: RelayLink, dst: RelayLink, event: RoomEvent) -> None:
        now = clock.now_ms()
        for msg in src.on_event(event, now):
            dst.apply(RelayMessage.parse(msg.to_json()), now)

    def share(self, room_id: str) -> None:
        now = clock.now_ms()
        ra, rb = self.a.room(room_id), self.b.room(room_id)
        for msg in self.lb.share(rb, now):
            self.la.apply(msg, now)
        self.la.rooms.add(room_id)
        for msg in self.la.share(ra, now):
            self.lb.apply(RelayMessage.parse(msg.to_json()), now)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    a, b = _node(loop), _node(loop)
    yield Pair(a, b)
    for n in (a, b):
        for c in n.clients:
            c.close()
        n.port.close()


async def _plis(client: object, media_ssrc: int) -> None:
    async with asyncio.timeout(3):
        while True:
            packets = rtcp.parse_compound(await client.recv_rtcp())  # type: ignore[attr-defined]
            if any(isinstance(p, rtcp.Pli) and p.media_ssrc == media_ssrc for p in packets):
                return


async def test_a_track_crosses_once_and_reaches_every_viewer_behind_the_relay(pair: Pair) -> None:
    a, b = pair.a, pair.b
    room_a = a.room("r")
    _, pub = await a.publisher(room_a, "alice", audio_ssrc=AUDIO, video_ssrc=VIDEO)
    pair.share("r")
    room_b = b.room("r")
    kinds = [(e.kind, e.participant.identity if e.participant else None) for e in pair.events_b]
    assert kinds == [(RoomEventKind.JOINED, "alice"), (RoomEventKind.PUBLISHED, "alice"), (RoomEventKind.PUBLISHED, "alice")]
    alice_b = room_b.participants["alice"]
    assert alice_b.relay == "w0-w1" and b.rooms.participant_count == 0  # no seat taken on b
    assert {t.sid for t in alice_b.tracks.values()} == {t.sid for t in room_a.participants["alice"].tracks.values()}
    v1, c1 = await b.subscriber(room_b, "v1", target="alice", video=True)
    v2, c2 = await b.subscriber(room_b, "v2", target="alice", video=True)
    await _plis(pub, VIDEO)  # the viewers behind the relay wait for a keyframe: asked of alice
    to_a = ("127.0.0.1", a.port.port)
    for seq in range(1, 11):
        pub.send(pub.protect(rtp_bytes(seq, seq * 3000, ssrc=VIDEO, pt=VP8.payload_type, payload=VP8_KEY)), to_a)
        pub.send(pub.protect(rtp_bytes(seq, seq * 960, ssrc=AUDIO, pt=OPUS.payload_type, payload=OPUS_FRAME)), to_a)
    for client in (c1, c2):
        got = {(p.header.ssrc, p.header.sequence_number) for p in [RtpPacket.parse(await client.recv_rtp()) for _ in range(20)]}
        assert len(got) == 20
        assert SUB_VIDEO_SSRC in {s for s, _ in got}
    # one copy on the relay per track, two subscribers behind it
    assert len(pair.la.exported) == 2
    assert sum(e.downtrack.packets_sent for e in pair.la.exported.values()) == 20
    assert [len(t.downtracks) for t in alice_b.tracks.values()] == [2, 2]
    # the relay's figures count what was carried, and stay when the tracks go
    out_a, in_b = pair.la.octets()[0], pair.lb.octets()[1]
    assert out_a > 0 and in_b > 0 and pair.lb.lost() == 0
    a.router.leave(room_a.participants["alice"], CloseReason.LEFT, clock.now_ms())
    assert not pair.la.exported and not pair.lb.imported
    assert (pair.la.octets()[0], pair.lb.octets()[1]) == (out_a, in_b)


async def test_keyframe_requests_reach_the_publisher_and_nacks_are_served_behind_the_relay(pair: Pair) -> None:
    a, b = pair.a, pair.b
    room_a = a.room("r")
    _, pub = await a.publisher(room_a, "alice", audio_ssrc=AUDIO, video_ssrc=VIDEO)
    pair.share("r")
    _, viewer = await b.subscriber(b.room("r"), "v1", target="alice", video=True)
    await _plis(pub, VIDEO)
    to_a = ("127.0.0.1", a.port.port)
    for seq in range(1, 6):
        pub.send(pub.protect(rtp_bytes(seq, seq * 3000, ssrc=VIDEO, pt=VP8.payload_type, payload=VP8_KEY)), to_a)
    seqs = [RtpPacket.parse(await viewer.recv_rtp()).header.sequence_number for _ in range(5)]
    # a NACK from the viewer on b: answered from b's own cache of the relayed track
    nack_in_a, resent_b = a.counters.nack_in, b.counters.retransmits
    to_b = ("127.0.0.1", b.port.port)
    viewer.send(viewer.protect_rtcp(bytes(rtcp.Nack(sender_ssrc=1, media_ssrc=SUB_VIDEO_SSRC, seqs=[seqs[2]]))), to_b)
    await viewer.recv()  # the retransmission (same SRTP index: the client's replay window refuses it)
    assert b.counters.retransmits == resent_b + 1
    assert a.counters.nack_in == nack_in_a  # it never crossed the relay
    # a PLI from the viewer (past the track's throttle): the publisher on a is asked
    await asyncio.sleep(0.6)
    viewer.send(viewer.protect_rtcp(bytes(rtcp.Pli(sender_ssrc=1, media_ssrc=SUB_VIDEO_SSRC))), to_b)
    await _plis(pub, VIDEO)
    assert pair.la.keyframe_requests_in >= 1


async def test_a_hole_on_the_relay_is_nacked_to_the_far_end_and_filled_from_its_cache(pair: Pair) -> None:
    a, b = pair.a, pair.b
    room_a = a.room("r")
    _, pub = await a.publisher(room_a, "alice", audio_ssrc=AUDIO, video_ssrc=VIDEO)
    pair.share("r")
    await b.subscriber(b.room("r"), "v1", target="alice", video=True)
    await _plis(pub, VIDEO)
    exported = next(e for e in pair.la.exported.values() if e.track.kind == "video")
    to_a = ("127.0.0.1", a.port.port)
    pub.send(pub.protect(rtp_bytes(1, 3000, ssrc=VIDEO, pt=VP8.payload_type, payload=VP8_KEY)), to_a)
    imported = next(t for t in b.room("r").participants["alice"].tracks.values() if t.kind == "video")
    async with asyncio.timeout(2):
        while imported.stats.packets < 1:
            await asyncio.sleep(0.01)
    # packet 2 goes into a's cache but is lost on the relay: the relay's SRTP index moves on
    dt = exported.downtrack
    pub_track = exported.track
    assert pub_track.rtx_cache is not None
    real_send = dt.peer.forward_rtp
    dropped = []

    def lose_once(*args: object, **kwargs: object) -> object:
        if not dropped:
            dropped.append(1)
            return 0
        return real_send(*args, **kwargs)  # type: ignore[arg-type]

    dt.peer.forward_rtp = lose_once  # type: ignore[method-assign]
    pub_track.fast_reset()
    for seq in (2, 3, 4):
        pub.send(pub.protect(rtp_bytes(seq, seq * 3000, ssrc=VIDEO, pt=VP8.payload_type, payload=VP8_KEY)), to_a)
    async with asyncio.timeout(3):
        while imported.stats.packets < 4:  # the hole is NACKed to a, served from a's cache
            await asyncio.sleep(0.02)
    assert a.counters.nack_in >= 1 and dropped


async def test_a_relay_that_breaks_unpublishes_its_tracks_and_the_room_goes_on(pair: Pair) -> None:
    a, b = pair.a, pair.b
    room_a = a.room("r")
    await a.publisher(room_a, "alice", audio_ssrc=AUDIO, video_ssrc=VIDEO)
    pair.share("r")
    room_b = b.room("r")
    _, bob = await b.publisher(room_b, "bob", audio_ssrc=0x200)
    assert "bob" in room_a.participants and room_a.participants["bob"].relay
    pair.events_b.clear()
    pair.lb.close(CloseReason.CONSENT_EXPIRED)
    kinds = [(e.kind, e.participant.identity if e.participant else None) for e in pair.events_b]
    assert kinds == [(RoomEventKind.UNPUBLISHED, "alice"), (RoomEventKind.UNPUBLISHED, "alice"), (RoomEventKind.LEFT, "alice")]
    assert set(room_b.participants) == {"bob"} and pair.tb.state is TransportState.CLOSED
    assert b.port.peer_at(("127.0.0.1", a.port.port)) is None
    # a's end hears nothing more: it closes after its silence, and bob leaves a's room
    pair.ta.silence_ms = 0
    pair.la.tick(clock.now_ms() + 1)
    assert pair.la.closed and "bob" not in room_a.participants and "alice" in room_a.participants


async def test_an_idle_relay_stays_up_on_its_reports_and_closes_on_silence(pair: Pair) -> None:
    pair.share("r")
    tb = pair.tb
    before = tb.last_consent_ms
    await asyncio.sleep(0.01)
    pair.la.tick(clock.now_ms())  # a's once-a-second report: b hears it
    async with asyncio.timeout(2):
        while tb.last_consent_ms == before:
            await asyncio.sleep(0.01)
    heard = tb.last_consent_ms
    pair.lb.tick(heard + tb.silence_ms)  # just within the silence allowed
    assert not pair.lb.closed
    pair.lb.tick(heard + tb.silence_ms + 1)
    assert pair.lb.closed and tb.state is TransportState.CLOSED


async def test_a_track_nobody_behind_the_relay_receives_is_not_carried(pair: Pair) -> None:
    a, b = pair.a, pair.b
    room_a = a.room("r")
    _, pub = await a.publisher(room_a, "alice", audio_ssrc=AUDIO)
    pair.share("r")
    audio = next(iter(pair.la.exported.values())).downtrack
    to_a = ("127.0.0.1", a.port.port)

    def send(seq: int) -> None:
        pub.send(pub.protect(rtp_bytes(seq, seq * 960, ssrc=AUDIO, pt=OPUS.payload_type, payload=OPUS_FRAME)), to_a)

    source = room_a.participants["alice"].tracks[AUDIO]

    async def taken(count: int) -> None:  # the publisher's packets reached a's track
        async with asyncio.timeout(3):
            while source.stats.packets < count:
                await asyncio.sleep(0.01)

    for seq in range(1, 6):
        send(seq)
    await taken(5)
    assert audio.held and audio.packets_sent == 0  # no one on b: nothing crosses
    viewer, client = await b.subscriber(b.room("r"), "v1", target="alice")  # needed at once
    assert not audio.held
    for seq in range(6, 11):
        send(seq)
    assert len([RtpPacket.parse(await client.recv_rtp()) for _ in range(5)]) == 5
    assert audio.packets_sent == 5
    b.router.leave(viewer, CloseReason.LEFT, clock.now_ms())
    Pair._needs(pair.lb, pair.la)  # the hub's once-a-second look: nobody left
    assert audio.held
    for seq in range(11, 16):
        send(seq)
    await taken(15)
    assert audio.packets_sent == 5


async def test_mute_unpublish_and_leave_cross_as_events(pair: Pair) -> None:
    a, b = pair.a, pair.b
    room_a = a.room("r")
    alice, _ = await a.publisher(room_a, "alice", audio_ssrc=AUDIO, video_ssrc=VIDEO)
    pair.share("r")
    room_b = b.room("r")
    video_a = alice.tracks[VIDEO]
    video_b = next(t for t in room_b.participants["alice"].tracks.values() if t.sid == video_a.sid)
    pair.events_b.clear()
    a.router.set_muted(room_a, alice, video_a, True, clock.now_ms())
    assert video_b.muted and [e.kind for e in pair.events_b] == [RoomEventKind.MUTED]
    a.router.unpublish(room_a, alice, video_a, clock.now_ms())
    assert pair.events_b[-1].kind is RoomEventKind.UNPUBLISHED and pair.events_b[-1].tracks == (video_b,)
    assert len(pair.la.exported) == 1 and len(pair.lb.imported) == 1
    a.router.leave(alice, CloseReason.LEFT, clock.now_ms())
    assert [e.kind for e in pair.events_b[-2:]] == [RoomEventKind.UNPUBLISHED, RoomEventKind.LEFT]
    assert "alice" not in room_b.participants and not pair.la.exported and not pair.lb.imported


async def test_the_far_ends_bounds_hold(pair: Pair) -> None:
    pair.lb.max_participants = 1
    a = pair.a
    room_a = a.room("r")
    await a.publisher(room_a, "alice", audio_ssrc=AUDIO)
    await a.publisher(room_a, "bob", audio_ssrc=0x200)
    with pytest.raises(ValueError, match="bound of 1 participants"):
        pair.share("r")
    assert list(pair.b.room("r").participants) == ["alice"] and pair.lb.refused == 1
