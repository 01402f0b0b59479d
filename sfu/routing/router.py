"""The node's routing core: participants join rooms with transports, tracks and subscriptions.

The signaling layer above negotiates SDP and hands plain values down (``TrackSpec``,
``DownTrackSpec``, ``TransportSpec``); this layer wires transports to tracks and keeps
subscribers bound to the right sources as publishers come and go.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from levelchat.errors import ApiError
from sfu import clock
from sfu.counters import MediaCounters
from sfu.packet.twcc import TWCC_URI
from sfu.routing.allocation import AllocationLoop
from sfu.routing.bandwidth import send_remb
from sfu.routing.downtrack import DownTrack
from sfu.routing.events import RoomEvent, RoomEventKind, RoomObserver
from sfu.routing.participant import NODE_RTCP_SSRC, Participant, PublisherSink, SubscriberSink
from sfu.routing.rooms import Room, RoomRegistry
from sfu.routing.simulcast import RidRestrictions, SimulcastGroup, form_groups, groups_of
from sfu.routing.track import PublishedTrack, TrackCodec
from sfu.routing.wheel import TickWheel
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsRole
from sfu.transport.dtls_pool import HandshakePool
from sfu.transport.peer import SETUP_TIMEOUT_MS, CloseReason, PeerTransport
from sfu.transport.srtp import SrtpProfile
from sfu.transport.twcc_feedback import FeedbackTimer
from sfu.transport.udp import MediaPort

log = logging.getLogger(__name__)
#: the remote ufrag of a node-offered transport until the answer names the client's
_UNKNOWN_UFRAG = ""
#: every participant's housekeeping (consent, setup deadline, RTCP reports, REMB, simulcast checks)
#: once a period, spread over the period's slots (``tick_due``)
TICK_PERIOD_MS = 1000
TICK_SLOTS = 50


@dataclass(frozen=True)
class TransportSpec:
    dtls_role: DtlsRole
    remote_ufrag: str
    remote_fingerprints: list[tuple[str, str]]


@dataclass(frozen=True)
class TrackSpec:
    kind: str
    mid: str
    ssrc: int
    codecs: list[TrackCodec]
    ext_ids: dict[str, int] = field(default_factory=dict)
    rtx_ssrc: int | None = None
    rid: str | None = None
    #: a simulcast layer's a=rid restrictions ("max-width=640;max-height=360"); ``ssrc`` is then a
    #: negative placeholder until the publisher's packets name the layer (sfu.routing.simulcast)
    rid_params: str = ""
    #: the publisher negotiated goog-remb for it: it hears the node's bitrate cap (REMB)
    remb: bool = False
    #: the publisher negotiated generic NACK (video): the node asks it for lost packets again
    nack: bool = False
    #: RTX payload type -> the payload type it repairs (apt=), to unwrap the publisher's RTX
    rtx_apt: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DownTrackSpec:
    kind: str
    mid: str
    ssrc: int
    out_payload_types: dict[str, int]
    out_ext_ids: dict[str, int]
    #: the RTX stream the subscriber negotiated for it (its padding carries probes), if any
    rtx_ssrc: int | None = None
    rtx_pt: int | None = None


class Router:
    def __init__(
        self,
        *,
        rooms: RoomRegistry,
        port: MediaPort,
        certificate: Certificate,
        counters: MediaCounters,
        srtp_profiles: list[SrtpProfile],
        loop: asyncio.AbstractEventLoop,
        publisher_max_bitrate_bps: int = 0,
        setup_timeout_ms: int = SETUP_TIMEOUT_MS,
        handshakes: HandshakePool | None = None,
        publisher_transport_cc: bool = True,
        publisher_twcc_interval_ms: int = 100,
    ) -> None:
        self.rooms = rooms
        #: DTLS handshake steps run in these threads, off the forwarding loop (None: on the loop)
        self.handshakes = handshakes
        #: a transport that has not connected (ICE, DTLS) this long after it was made is closed
        self.setup_timeout_ms = setup_timeout_ms
        #: REMB sent to each video publisher once a second (0: none; sfu.routing.bandwidth)
        self.publisher_max_bitrate_bps = publisher_max_bitrate_bps
        #: publish answers accept transport-wide-cc where offered; the node then sends those
        #: publishers transport-cc feedback, one timer for all of them (sfu.transport.twcc_feedback)
        self.publisher_transport_cc = publisher_transport_cc
        self.twcc_timer = FeedbackTimer(loop, counters, publisher_twcc_interval_ms)
        self.port = port
        self.certificate = certificate
        self.counters = counters
        self.srtp_profiles = srtp_profiles
        self.loop = loop
        self.participants: dict[str, Participant] = {}  # by sid
        #: each participant's once-a-second housekeeping (``tick_due``), spread over the second
        self.wheel: TickWheel[str] = TickWheel(clock.now_ms(), period_ms=TICK_PERIOD_MS, slots=TICK_SLOTS)
        self._rooms_due_ms = 0
        #: told of joins, publications, leaves and closed rooms (sfu.routing.events)
        self.observers: list[RoomObserver] = []
        #: each subscriber's estimate spent on its tracks (sfu.routing.allocation; the node calls
        #: ``allocation.run_due`` every ``allocation.TICK_MS``)
        self.allocation = AllocationLoop(counters.cc)

    def new_transport(self, spec: TransportSpec, now_ms: int) -> PeerTransport:
        return PeerTransport(
            port=self.port,
            certificate=self.certificate,
            dtls_role=spec.dtls_role,
            remote_ufrag=spec.remote_ufrag,
            remote_fingerprints=spec.remote_fingerprints,
            srtp_profiles=self.srtp_profiles,
            counters=self.counters,
            now_ms=now_ms,
            loop=self.loop,
            setup_timeout_ms=self.setup_timeout_ms,
            handshakes=self.handshakes,
        )

    # -- joining ---------------------------------------------------------------------------------
    def admit(self, room: Room, participant: Participant, now_ms: int) -> None:
        """Seat the participant (cap checks); a previous session of the same identity is replaced."""
        previous = self.rooms.admit(room, participant, now_ms)
        participant.joined_ms = now_ms
        participant.on_gone = self._on_participant_gone
        self.participants[participant.sid] = participant
        self.wheel.add(participant.sid)
        if previous is not None and previous is not participant:
            self._close(previous, CloseReason.REPLACED, now_ms, release=False)
        self._emit(RoomEvent(RoomEventKind.JOINED, room, participant))

    def attach_publisher(
        self, room: Room, participant: Participant, transport: PeerTransport, tracks: list[TrackSpec], now_ms: int
    ) -> None:
        sink = PublisherSink(participant, self.counters)
        participant.publisher = transport
        transport.sink = sink
        twcc_id = next((s.ext_ids[TWCC_URI] for s in tracks if TWCC_URI in s.ext_ids), None)
        if twcc_id is not None:  # negotiated: one id for the transport (BUNDLE, RFC 8843 §9.1)
            transport.enable_twcc(twcc_id, NODE_RTCP_SSRC, self.twcc_timer)
        layers: list[tuple[PublishedTrack, RidRestrictions]] = []
        for spec in tracks:
            track = PublishedTrack(
                kind=spec.kind,
                ssrc=spec.ssrc,
                codecs=spec.codecs,
                mid=spec.mid,
                owner=participant.identity,
                counters=self.counters,
                request_keyframe=sink.request_keyframe,
                rid=spec.rid,
                rtx_ssrc=spec.rtx_ssrc,
                ext_ids=spec.ext_ids,
                nack=spec.nack,
                rtx_apt=spec.rtx_apt,
                send_nack=sink.send_nack,
            )
            track.remb = spec.remb
            participant.tracks[spec.ssrc] = track
            if track.rtx_ssrc is not None:
                sink.rtx_ssrcs[track.rtx_ssrc] = track
            if spec.rid is not None:
                layers.append((track, RidRestrictions.parse(spec.rid_params)))
        form_groups(layers, now_ms)  # simulcast: each layer's ``group``
        self._rebind_room(room, now_ms)
        added = tuple(t for t in participant.tracks.values() if t.ssrc in {s.ssrc for s in tracks})
        self._emit(RoomEvent(RoomEventKind.PUBLISHED, room, participant, tracks=added))

    def attach_subscriber(
        self,
        room: Room,
        participant: Participant,
        transport: PeerTransport,
        specs: list[DownTrackSpec],
        now_ms: int,
    ) -> None:
        participant.subscriber = transport
        transport.sink = SubscriberSink(participant, self.counters)
        for spec in specs:
            participant.downtracks.append(
                DownTrack(
                    peer=transport,
                    kind=spec.kind,
                    mid=spec.mid,
                    ssrc=spec.ssrc,
                    out_payload_types=spec.out_payload_types,
                    out_ext_ids=spec.out_ext_ids,
                    counters=self.counters,
                    rtx_ssrc=spec.rtx_ssrc,
                    rtx_pt=spec.rtx_pt,
                )
            )
        if transport.sender is not None:
            self.allocation.watch(participant, now_ms)
        self._rebind_room(room, now_ms)

    def current_publisher(self, room: Room, identity: str | None) -> Participant | None:
        if identity is not None:
            p = room.participants.get(identity)
            return p if p is not None and p.tracks else None
        return next(room.publishers(), None)

    def _rebind_room(self, room: Room, now_ms: int) -> None:
        """Point every WHEP-style subscriber's idle downtracks at the room's current publisher."""
        for sub in room.participants.values():
            if not sub.downtracks or sub.target_identity == "*":
                continue
            source = self.current_publisher(room, sub.target_identity)
            if source is None or source is sub:
                continue
            for dt in sub.downtracks:
                if dt.source is not None and dt.source.owner == source.identity and dt.source in source.tracks.values():
                    continue
                match = next((t for t in source.tracks.values() if dt.can_carry(t) and not t.rid), None)
                if match is None:
                    match = next((t for t in source.tracks.values() if dt.can_carry(t)), None)
                if match is not None:
                    dt.bind(match, now_ms)

    # -- relays (sfu.routing.relay): the far end's participants and tracks ---------------------
    def room_of(self, room_id: str) -> Room | None:
        return self.rooms.rooms.get(room_id)

    def admit_relayed(self, room: Room, participant: Participant, now_ms: int) -> None:
        """Seat the far end's participant here without a seat (no cap check: the far end
        admitted it); its join is an event like any other.  ValueError: the identity is seated
        here already."""
        if participant.identity in room.participants:
            raise ValueError(f"{participant.identity!r:.80} is in room {room.id!r} here already")
        participant.joined_ms = now_ms
        room.participants[participant.identity] = participant
        room.empty_since_ms = None
        self.participants[participant.sid] = participant
        self._emit(RoomEvent(RoomEventKind.JOINED, room, participant))

    def publish_relayed(self, room: Room, participant: Participant, track: PublishedTrack, now_ms: int) -> None:
        """A track of the far end's participant is a source here now."""
        self._rebind_room(room, now_ms)
        self._emit(RoomEvent(RoomEventKind.PUBLISHED, room, participant, tracks=(track,)))

    # -- leaving ---------------------------------------------------------------------------------
    def _on_participant_gone(self, participant: Participant, reason: CloseReason) -> None:
        self.leave(participant, reason, clock.now_ms())

    def leave(self, participant: Participant, reason: CloseReason, now_ms: int) -> None:
        self._close(participant, reason, now_ms, release=True)

    def _close(self, participant: Participant, reason: CloseReason, now_ms: int, *, release: bool) -> None:
        if participant.closed:
            return
        log.info("participant %s leaves room %s (%s)", participant.identity, participant.room_id, reason.value)
        participant.close(reason)
        self.participants.pop(participant.sid, None)
        self.wheel.remove(participant.sid)
        room = self.rooms.rooms.get(participant.room_id)
        if room is not None:
            if release:
                self.rooms.release(room, participant, now_ms)
            self._rebind_room(room, now_ms)
            self._emit(RoomEvent(RoomEventKind.LEFT, room, participant, reason=reason))

    def close_room(self, room: Room, reason: CloseReason, now_ms: int) -> None:
        left = self.rooms.close(room, now_ms)
        for p in left:
            p.close(reason)
            self.participants.pop(p.sid, None)
            self.wheel.remove(p.sid)
        self._emit(RoomEvent(RoomEventKind.ROOM_CLOSED, room, reason=reason, participants=tuple(left)))

    # -- signaling sessions (sfu.api.rtc): tracks come and go, subscriptions follow -------------
    def _emit(self, event: RoomEvent) -> None:
        if event.room.internal:
            return
        for observer in list(self.observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not break routing
                log.exception("room observer failed on %s", event.kind.value)

    def new_offer_transport(self, now_ms: int) -> PeerTransport:
        """A transport for a node-offered session: its ICE credentials go into the offer before
        the client's are known; ``complete_offer_transport`` adds them from the answer.  The node
        is the DTLS server (the answer must say ``a=setup:active``)."""
        return self.new_transport(
            TransportSpec(DtlsRole.SERVER, remote_ufrag=_UNKNOWN_UFRAG, remote_fingerprints=[("sha-256", "00")]),
            now_ms,
        )

    @staticmethod
    def complete_offer_transport(
        transport: PeerTransport, remote_ufrag: str, remote_fingerprints: list[tuple[str, str]]
    ) -> None:
        # a node offer knows the client's ICE/DTLS identity only from the answer; connectivity
        # checks are refused until this runs
        transport.set_remote(remote_ufrag, remote_fingerprints)

    def attach_offer_subscriber(self, participant: Participant, transport: PeerTransport) -> None:
        """The participant's (node-offered) subscriber transport; downtracks come and go."""
        participant.subscriber = transport
        participant.target_identity = "*"  # never rebound WHEP-style by ``_rebind_room``
        transport.sink = SubscriberSink(participant, self.counters)

    def subscribe(self, participant: Participant, track: PublishedTrack, spec: DownTrackSpec, now_ms: int) -> DownTrack:
        """Start forwarding ``track`` to the participant's subscriber transport."""
        transport = participant.subscriber
        if transport is None:
            raise ValueError("the participant has no subscriber transport")
        dt = DownTrack(
            peer=transport,
            kind=spec.kind,
            mid=spec.mid,
            ssrc=spec.ssrc,
            out_payload_types=spec.out_payload_types,
            out_ext_ids=spec.out_ext_ids,
            counters=self.counters,
            rtx_ssrc=spec.rtx_ssrc,
            rtx_pt=spec.rtx_pt,
        )
        if transport.sender is not None:
            self.allocation.watch(participant, now_ms)
        dt.held = not participant.permissions.can_subscribe
        dt.paused = track.muted or dt.withheld
        participant.downtracks.append(dt)
        dt.bind(track, now_ms)
        return dt

    @staticmethod
    def unsubscribe(participant: Participant, dt: DownTrack) -> None:
        dt.close()
        if dt in participant.downtracks:
            participant.downtracks.remove(dt)

    def unpublish(self, room: Room, participant: Participant, track: PublishedTrack, now_ms: int) -> None:
        """Stop taking ``track`` from its publisher; its subscribers stop receiving it."""
        if participant.tracks.get(track.ssrc) is not track:
            return
        del participant.tracks[track.ssrc]
        for dt in list(track.downtracks):
            dt.unbind()
        sink = participant.publisher.sink if participant.publisher is not None else None
        if isinstance(sink, PublisherSink) and track.rtx_ssrc is not None:
            sink.rtx_ssrcs.pop(track.rtx_ssrc, None)
        self._rebind_room(room, now_ms)
        self._emit(RoomEvent(RoomEventKind.UNPUBLISHED, room, participant, tracks=(track,)))
        track.close()  # its retransmission cache goes now

    def set_muted(self, room: Room, participant: Participant, track: PublishedTrack, muted: bool, now_ms: int) -> None:
        """Pause (or resume) forwarding ``track`` to every subscriber; video resumes at a keyframe."""
        if track.muted == muted:
            return
        track.muted = muted
        for dt in list(track.downtracks):
            dt.paused = muted or dt.withheld
            if not dt.paused:
                # a rebind: sequence numbers go on without the gap of the pause, timestamps
                # advance by the time it lasted, video waits for a keyframe (requested)
                dt.unbind()
                dt.bind(track, now_ms)
        self._emit(RoomEvent(RoomEventKind.MUTED, room, participant, tracks=(track,)))

    def set_subscribing(self, participant: Participant, allowed: bool, now_ms: int) -> None:
        """Stop (or resume) every stream the participant receives, as a mute does: a paused
        downtrack drops at its first check, costing nothing more per packet."""
        for dt in participant.downtracks:
            src = dt.source
            dt.held = not allowed
            if not allowed:
                dt.paused = True
            elif dt.paused and not dt.withheld and (src is None or not src.muted):
                dt.paused = False
                if src is not None:
                    dt.unbind()  # as in set_muted: continuous sequence numbers, a keyframe first
                    dt.bind(src, now_ms)

    def updated(self, room: Room, participant: Participant) -> None:
        """Tell the observers the participant's name, metadata or permissions changed."""
        self._emit(RoomEvent(RoomEventKind.UPDATED, room, participant))

    # -- simulcast layer choice (WHEP's layer route, the signaling's) ------------------------------
    @staticmethod
    def set_layer(participant: Participant, downtrack: DownTrack, rid: str | None, now_ms: int) -> dict[str, object]:
        """Make the participant's ``downtrack`` receive the simulcast layer ``rid`` (None: the
        highest sending); the move happens at that layer's next keyframe.  Returns the group's
        description for it (``layers`` low to high, ``target``, ``current``, ``switching_to``).
        Raises ``ApiError``: ``not_found`` for a downtrack of someone else, ``bad_request`` when it
        receives no simulcast source or the source has no such rid."""
        if downtrack not in participant.downtracks:
            raise ApiError("not_found", f"participant {participant.identity!r} has no such subscription")
        group: SimulcastGroup | None = downtrack.source.group if downtrack.source is not None else None
        if group is None:
            raise ApiError("bad_request", "this subscription receives no simulcast source: it has no layers to choose")
        try:
            group.set_target(downtrack, rid, now_ms)
        except KeyError:
            raise ApiError(
                "bad_request", f"the simulcast source has no layer {rid!r}; its layers are {', '.join(group.rids)}"
            ) from None
        return group.describe(downtrack)

    # -- housekeeping ----------------------------------------------------------------------------
    def tick(self, now_ms: int) -> None:
        """Everyone's housekeeping now, and empty rooms (``tick_due`` spreads it over the second)."""
        for participant in list(self.participants.values()):
            self._tick_participant(participant, now_ms)
        self._close_expired_rooms(now_ms)

    def tick_due(self, now_ms: int) -> None:
        """The participants whose slot on the wheel has come (each once a second, a 50th of them
        every 20 ms), and empty rooms once a second: call it every ``wheel.slot_ms``."""
        participants = self.participants
        for sid in self.wheel.due(now_ms):
            participant = participants.get(sid)
            if participant is not None:
                self._tick_participant(participant, now_ms)
        if now_ms >= self._rooms_due_ms:
            self._rooms_due_ms = now_ms + TICK_PERIOD_MS
            self._close_expired_rooms(now_ms)

    def _tick_participant(self, participant: Participant, now_ms: int) -> None:
        """Consent freshness and setup deadlines, RTCP reports, connection quality, REMB, simulcast
        layer checks."""
        for transport in (participant.publisher, participant.subscriber):
            if transport is not None:
                transport.tick(now_ms)
        if not participant.closed:
            participant.send_reports(now_ms)
            participant.link.update(participant, now_ms)
            if self.publisher_max_bitrate_bps:
                send_remb(participant, self.publisher_max_bitrate_bps)
            for group in groups_of(participant.tracks.values()):
                group.tick(now_ms)

    def _close_expired_rooms(self, now_ms: int) -> None:
        for room in self.rooms.expired_empty(now_ms):
            log.info("room %s closed after %d s empty", room.id, room.policy.empty_timeout_s)
            self.close_room(room, CloseReason.ROOM_CLOSED, now_ms)
