"""Router: admission, publishers and WHEP-style subscribers wired over real transports, rebinding
when publishers come and go, leaving, and housekeeping ticks on passed-in time."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from levelchat.errors import ApiError
from sfu import clock
from sfu.counters import MediaCounters
from sfu.packet import rtcp
from sfu.packet.rtp import RtpPacket
from sfu.routing.participant import NODE_RTCP_SSRC, Participant, ParticipantKind
from sfu.routing.rooms import Room, RoomPolicy, RoomRegistry, RoomState
from sfu.routing.router import DownTrackSpec, Router, TrackSpec, TransportSpec
from sfu.routing.track import TrackCodec
from sfu.transport.dtls import DtlsRole
from sfu.transport.peer import CONSENT_TIMEOUT_MS, CloseReason, PeerTransport, TransportState
from sfu.transport.udp import MediaPort
from tests.sfu.routing.harness import (
    NODE_CERT,
    OPUS_FRAME,
    PROFILES,
    VP8_KEY,
    RawClient,
    connect,
    open_port,
    rtp_bytes,
)

OPUS = TrackCodec("opus", 48_000, 111)
VP8 = TrackCodec("VP8", 90_000, 96)
SUB_AUDIO_SSRC = 0x5A000001
SUB_VIDEO_SSRC = 0x5A000002


@dataclass
class Node:
    port: MediaPort
    rooms: RoomRegistry
    router: Router
    counters: MediaCounters
    clients: list[RawClient] = field(default_factory=list)

    def room(self, room_id: str = "room-1", *, cap: int = 10, empty_timeout_s: int = 30, now_ms: int | None = None) -> Room:
        room, _ = self.rooms.create(
            room_id,
            RoomPolicy(max_participants=cap, codecs=("opus", "VP8"), empty_timeout_s=empty_timeout_s),
            clock.now_ms() if now_ms is None else now_ms,
        )
        return room

    def transport(self, client: RawClient) -> PeerTransport:
        spec = TransportSpec(DtlsRole.SERVER, client.ufrag, [("sha-256", client.cert.fingerprint())])
        return self.router.new_transport(spec, clock.now_ms())

    def client(self) -> RawClient:
        c = RawClient()
        self.clients.append(c)
        return c

    async def publisher(
        self, room: Room, identity: str, *, audio_ssrc: int, video_ssrc: int | None = None, connect_now: bool = True
    ) -> tuple[Participant, RawClient]:
        p = Participant(identity=identity, room_id=room.id, kind=ParticipantKind.WHIP)
        self.router.admit(room, p, clock.now_ms())
        client = self.client()
        transport = self.transport(client)
        tracks = [TrackSpec(kind="audio", mid="0", ssrc=audio_ssrc, codecs=[OPUS])]
        if video_ssrc is not None:
            tracks.append(TrackSpec(kind="video", mid="1", ssrc=video_ssrc, codecs=[VP8]))
        self.router.attach_publisher(room, p, transport, tracks, clock.now_ms())
        if connect_now:
            await connect(transport, client, self.port, DtlsRole.SERVER)
        return p, client

    async def subscriber(
        self, room: Room, identity: str, *, target: str | None = None, video: bool = False
    ) -> tuple[Participant, RawClient]:
        p = Participant(identity=identity, room_id=room.id, kind=ParticipantKind.WHEP, target_identity=target)
        self.router.admit(room, p, clock.now_ms())
        client = self.client()
        transport = self.transport(client)
        specs = [DownTrackSpec("audio", "0", SUB_AUDIO_SSRC, {"opus": 109}, {})]
        if video:
            specs.append(DownTrackSpec("video", "1", SUB_VIDEO_SSRC, {"VP8": 100}, {}))
        self.router.attach_subscriber(room, p, transport, specs, clock.now_ms())
        await connect(transport, client, self.port, DtlsRole.SERVER)
        return p, client


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    counters = MediaCounters()
    port = open_port(counters)
    rooms = RoomRegistry(max_rooms=10, max_participants=100)
    router = Router(
        rooms=rooms,
        port=port,
        certificate=NODE_CERT,
        counters=counters,
        srtp_profiles=PROFILES,
        loop=asyncio.get_running_loop(),
    )
    made = Node(port, rooms, router, counters)
    yield made
    for c in made.clients:
        c.close()
    port.close()


def room_state(room: Room) -> RoomState:
    """Read through a call so the type checker does not narrow across calls."""
    return room.state


def sources(p: Participant) -> list[str | None]:
    return [dt.source.owner if dt.source is not None else None for dt in p.downtracks]


def publish_audio(client: RawClient, node: Node, ssrc: int, seq: int) -> None:
    data = rtp_bytes(seq, seq * 960, ssrc=ssrc, pt=OPUS.payload_type, payload=OPUS_FRAME + bytes([seq & 0xFF]))
    client.send(client.protect(data), ("127.0.0.1", node.port.port))


async def recv_audio(client: RawClient, count: int) -> list[RtpPacket]:
    out = []
    for _ in range(count):
        pkt = RtpPacket.parse(await client.recv_rtp())
        if pkt.header.ssrc == SUB_AUDIO_SSRC:
            out.append(pkt)
    return out


# -- admission ------------------------------------------------------------------------------------------


async def test_admit_registers_and_replaces_the_same_identity(node: Node) -> None:
    room = node.room()
    old, _ = await node.publisher(room, "alice", audio_ssrc=0x100)
    old_transport = old.publisher
    assert old_transport is not None
    assert node.router.participants == {old.sid: old}
    assert old.on_gone is not None and old.joined_ms > 0
    new = Participant(identity="alice", room_id=room.id, kind=ParticipantKind.WHIP)
    node.router.admit(room, new, clock.now_ms())
    assert old.closed and old_transport.state is TransportState.CLOSED
    assert node.router.participants == {new.sid: new}
    assert room.participants == {"alice": new}
    assert node.rooms.participant_count == 1


@pytest.mark.parametrize(("cap", "joins"), [(1, 2), (2, 5)])
async def test_admit_over_the_cap_is_refused_without_side_effects(node: Node, cap: int, joins: int) -> None:
    room = node.room(cap=cap)
    codes = []
    for i in range(joins):
        try:
            node.router.admit(room, Participant(identity=f"u{i}", room_id=room.id, kind=ParticipantKind.RTC), 1)
        except ApiError as e:
            codes.append((e.code, e.status))
    assert codes == [("room/cap-denied", 429)] * (joins - cap)
    assert len(node.router.participants) == cap == len(room.participants)


# -- attaching and rebinding -------------------------------------------------------------------------------


async def test_whep_subscriber_binds_to_the_first_publisher(node: Node) -> None:
    room = node.room()
    alice, _ = await node.publisher(room, "alice", audio_ssrc=0x100, video_ssrc=0x101)
    await node.publisher(room, "bob", audio_ssrc=0x200, video_ssrc=0x201)
    viewer, _ = await node.subscriber(room, "viewer", video=True)
    assert sources(viewer) == ["alice", "alice"]
    assert [dt.source.ssrc for dt in viewer.downtracks if dt.source] == [0x100, 0x101]
    assert all(dt in t.downtracks for dt, t in zip(viewer.downtracks, alice.tracks.values(), strict=True))


async def test_subscriber_that_came_first_binds_when_a_publisher_arrives(node: Node) -> None:
    room = node.room()
    viewer, _ = await node.subscriber(room, "viewer", video=True)
    assert sources(viewer) == [None, None]
    await node.publisher(room, "alice", audio_ssrc=0x100, video_ssrc=0x101)
    assert sources(viewer) == ["alice", "alice"]


async def test_named_target_binds_only_to_that_publisher(node: Node) -> None:
    room = node.room()
    await node.publisher(room, "alice", audio_ssrc=0x100)
    viewer, _ = await node.subscriber(room, "viewer", target="bob")
    assert sources(viewer) == [None]
    await node.publisher(room, "carol", audio_ssrc=0x300)
    assert sources(viewer) == [None]
    await node.publisher(room, "bob", audio_ssrc=0x200)
    assert sources(viewer) == ["bob"]


async def test_star_target_is_left_alone(node: Node) -> None:
    room = node.room()
    await node.publisher(room, "alice", audio_ssrc=0x100)
    rtc, _ = await node.subscriber(room, "rtc-user", target="*")
    assert sources(rtc) == [None]


async def test_publisher_leaving_rebinds_to_the_next_and_media_stays_continuous(node: Node) -> None:
    room = node.room()
    alice, alice_client = await node.publisher(room, "alice", audio_ssrc=0x100)
    _, bob_client = await node.publisher(room, "bob", audio_ssrc=0x200)
    viewer, viewer_client = await node.subscriber(room, "viewer")
    for seq in range(5):
        publish_audio(alice_client, node, 0x100, 1000 + seq)
        publish_audio(bob_client, node, 0x200, 9000 + seq)  # not forwarded: alice is the source
    got = await recv_audio(viewer_client, 5)
    assert [p.payload[-1] for p in got] == [(1000 + s) & 0xFF for s in range(5)]
    node.router.leave(alice, CloseReason.LEFT, clock.now_ms())
    assert sources(viewer) == ["bob"]
    assert "alice" not in room.participants and alice.sid not in node.router.participants
    for seq in range(5, 8):
        publish_audio(bob_client, node, 0x200, 9000 + seq)
    after = await recv_audio(viewer_client, 3)
    assert [p.payload[-1] for p in after] == [(9000 + s) & 0xFF for s in range(5, 8)]
    seqs = [p.header.sequence_number for p in got + after]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(8)]
    assert {p.header.ssrc for p in got + after} == {SUB_AUDIO_SSRC}


async def test_publisher_reconnect_under_the_same_identity_rebinds(node: Node) -> None:
    room = node.room()
    _, first_client = await node.publisher(room, "alice", audio_ssrc=0x100)
    viewer, viewer_client = await node.subscriber(room, "viewer")
    publish_audio(first_client, node, 0x100, 10)
    first = await recv_audio(viewer_client, 1)
    again, again_client = await node.publisher(room, "alice", audio_ssrc=0x111)
    assert sources(viewer) == ["alice"]
    assert viewer.downtracks[0].source is again.tracks[0x111]
    publish_audio(again_client, node, 0x111, 40_000)
    second = await recv_audio(viewer_client, 1)
    assert second[0].header.sequence_number == (first[0].header.sequence_number + 1) & 0xFFFF


async def test_video_bind_sends_a_pli_to_the_publisher(node: Node) -> None:
    room = node.room()
    _, alice_client = await node.publisher(room, "alice", audio_ssrc=0x100, video_ssrc=0x101)
    viewer, viewer_client = await node.subscriber(room, "viewer", video=True)
    plis: list[rtcp.Pli] = []
    async with asyncio.timeout(2):
        while not plis:
            plis = [p for p in rtcp.parse_compound(await alice_client.recv_rtcp()) if isinstance(p, rtcp.Pli)]
    assert (plis[0].sender_ssrc, plis[0].media_ssrc) == (NODE_RTCP_SSRC, 0x101)
    data = rtp_bytes(1, 0, ssrc=0x101, pt=VP8.payload_type, payload=VP8_KEY)
    alice_client.send(alice_client.protect(data), ("127.0.0.1", node.port.port))
    pkt = RtpPacket.parse(await viewer_client.recv_rtp())
    assert (pkt.header.ssrc, pkt.header.payload_type, pkt.payload) == (SUB_VIDEO_SSRC, 100, VP8_KEY)
    assert viewer.downtracks[1].packets_sent == 1


# -- leaving and housekeeping ----------------------------------------------------------------------------


async def test_leave_releases_everything(node: Node) -> None:
    now = clock.now_ms()
    room = node.room(now_ms=now)
    alice, _ = await node.publisher(room, "alice", audio_ssrc=0x100)
    viewer, _ = await node.subscriber(room, "viewer")
    transport = viewer.subscriber
    assert transport is not None
    node.router.leave(viewer, CloseReason.LEFT, now + 5)
    assert viewer.closed and transport.state is TransportState.CLOSED
    assert alice.tracks[0x100].downtracks == []
    node.router.leave(alice, CloseReason.LEFT, now + 7)
    assert room.participants == {} and node.router.participants == {}
    assert room.empty_since_ms == now + 7
    assert node.port.peer_count == 0
    node.router.leave(alice, CloseReason.LEFT, now + 9)  # twice: nothing changes
    assert room.empty_since_ms == now + 7


async def _simulcast_publisher(node: Node, room: Room) -> Participant:
    p = Participant(identity="sim", room_id=room.id, kind=ParticipantKind.WHIP)
    node.router.admit(room, p, clock.now_ms())
    client = node.client()
    transport = node.transport(client)
    specs = [TrackSpec(kind="audio", mid="0", ssrc=0x300, codecs=[OPUS])] + [
        TrackSpec(kind="video", mid="1", ssrc=-(i + 1), codecs=[VP8], rid=rid, rid_params="")
        for i, rid in enumerate(("h", "l"))
    ]
    node.router.attach_publisher(room, p, transport, specs, clock.now_ms())
    await connect(transport, client, node.port, DtlsRole.SERVER)
    return p


async def test_participants_that_left_are_freed_without_a_collection(node: Node) -> None:
    """Nothing of a participant outlives its leave in a reference cycle (a simulcast group, the
    track's keyframe callback to its publisher, the DTLS endpoint's send callback): all of it is
    freed with the last reference, not at some later full garbage collection."""
    room = node.room()
    refs: list[weakref.ref[object]] = []
    gc.collect()
    gc.disable()
    try:
        publisher = await _simulcast_publisher(node, room)
        viewer, _ = await node.subscriber(room, "viewer", target="sim", video=True)
        layers = [t for t in publisher.tracks.values() if t.rid]
        assert len(layers) == 2 and layers[0].group is not None
        assert any(dt.source is not None for dt in viewer.downtracks)
        for p in (publisher, viewer):
            refs.append(weakref.ref(p))
            for transport in (p.publisher, p.subscriber):
                if transport is not None:
                    refs += [weakref.ref(transport), weakref.ref(transport.dtls), weakref.ref(transport.dtls._conn)]
            refs += [weakref.ref(t) for t in p.tracks.values()] + [weakref.ref(dt) for dt in p.downtracks]
        refs.append(weakref.ref(layers[0].group))
        del layers, p, transport
        now = clock.now_ms()
        node.router.leave(viewer, CloseReason.LEFT, now)
        node.router.leave(publisher, CloseReason.LEFT, now)
        del publisher, viewer
        alive = [type(r()).__name__ for r in refs if r() is not None]
        assert alive == []
    finally:
        gc.enable()


async def test_a_transport_closing_makes_its_participant_leave(node: Node) -> None:
    room = node.room()
    alice, alice_client = await node.publisher(room, "alice", audio_ssrc=0x100)
    assert alice_client.dtls is not None
    alice_client.dtls.close()  # close_notify from the client
    async with asyncio.timeout(2):
        while not alice.closed:
            await asyncio.sleep(0.002)
    assert room.participants == {} and node.router.participants == {}


async def test_tick_expires_consent_and_the_participant_leaves(node: Node) -> None:
    room = node.room()
    alice, _ = await node.publisher(room, "alice", audio_ssrc=0x100)
    viewer, _ = await node.subscriber(room, "viewer")
    transport = alice.publisher
    assert transport is not None
    node.router.tick(transport.last_consent_ms + CONSENT_TIMEOUT_MS)
    assert not alice.closed
    viewer_transport = viewer.subscriber
    assert viewer_transport is not None
    viewer_transport.last_consent_ms += 10 * CONSENT_TIMEOUT_MS  # the viewer's checks keep coming
    node.router.tick(transport.last_consent_ms + CONSENT_TIMEOUT_MS + 1)
    assert alice.closed and "alice" not in room.participants
    assert not viewer.closed and sources(viewer) == [None]


async def test_tick_due_reaches_each_participant_once_a_second_in_its_own_slot(node: Node) -> None:
    """The node's housekeeping: a wheel slot at a time; consent expiry still comes within a second."""
    t0 = clock.now_ms()
    rooms = [node.room(f"wheel-{r}") for r in range(9)]  # ten participants each: the harness caps
    people = [Participant(identity=f"p{i}", room_id=rooms[i // 10].id, kind=ParticipantKind.RTC) for i in range(90)]
    for p in people:
        node.router.admit(rooms[people.index(p) // 10], p, t0)
    wheel = node.router.wheel
    assert len(wheel) == 90
    seen: list[str] = []
    ticked = node.router._tick_participant  # noqa: SLF001 (counted, then called as it is)

    def counting(participant: Participant, now_ms: int) -> None:
        seen.append(participant.identity)
        ticked(participant, now_ms)

    node.router._tick_participant = counting  # type: ignore[method-assign]  # noqa: SLF001
    start = wheel.next_due_ms()
    per_tick = []
    for step in range(50):
        before = len(seen)
        node.router.tick_due(start + step * wheel.slot_ms)
        per_tick.append(len(seen) - before)
    assert sorted(seen) == sorted(p.identity for p in people)  # everyone once in the second
    assert max(per_tick) == 2  # 90 over 50 slots, never all at once
    node.router.leave(people[0], CloseReason.LEFT, t0)
    assert people[0].sid not in wheel and len(wheel) == 89


@pytest.mark.parametrize(
    ("timeout_s", "after_ms", "closed"),
    [(5, 4_999, False), (5, 5_000, True), (0, 0, True), (300, 299_999, False), (300, 300_000, True)],
)
async def test_tick_closes_empty_rooms_after_their_timeout(node: Node, timeout_s: int, after_ms: int, closed: bool) -> None:
    t0 = 1_000_000
    empty = node.room("empty-room", empty_timeout_s=timeout_s, now_ms=t0)
    busy = node.room("busy-room", empty_timeout_s=timeout_s, now_ms=t0)
    node.router.admit(busy, Participant(identity="x", room_id=busy.id, kind=ParticipantKind.RTC), t0)
    node.router.tick(t0 + after_ms)
    assert (empty.state is RoomState.CLOSED) is closed
    assert busy.state is RoomState.OPEN
    if closed:
        assert node.rooms.get("empty-room", t0 + after_ms) is empty
        assert empty.closed_ms == t0 + after_ms


async def test_a_room_emptied_by_leaving_closes_after_its_timeout(node: Node) -> None:
    t0 = clock.now_ms()
    room = node.room(empty_timeout_s=10, now_ms=t0)
    p = Participant(identity="x", room_id=room.id, kind=ParticipantKind.RTC)
    node.router.admit(room, p, t0)
    node.router.tick(t0 + 60_000)
    assert room_state(room) is RoomState.OPEN  # occupied the whole time
    node.router.leave(p, CloseReason.LEFT, t0 + 60_000)
    node.router.tick(t0 + 69_999)
    assert room_state(room) is RoomState.OPEN
    node.router.tick(t0 + 70_000)
    assert room_state(room) is RoomState.CLOSED


async def test_close_room_disconnects_everyone(node: Node) -> None:
    room = node.room()
    alice, _ = await node.publisher(room, "alice", audio_ssrc=0x100)
    viewer, _ = await node.subscriber(room, "viewer")
    node.router.close_room(room, CloseReason.ROOM_CLOSED, clock.now_ms())
    assert alice.closed and viewer.closed
    assert room.state is RoomState.CLOSED and node.router.participants == {}
    assert node.port.peer_count == 0
    with pytest.raises(ApiError) as info:
        node.router.admit(room, Participant(identity="late", room_id=room.id, kind=ParticipantKind.RTC), 1)
    assert info.value.code == "room_not_found"
