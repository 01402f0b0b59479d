"""A relay's routing: the tracks that cross it, and the far end's participants seen here.

One ``RelayLink`` per relay (today: per pair of workers of one node; the rooms they share cross
the same link).  Both directions at once:

- **Export**: each track a local participant publishes in a shared room crosses the relay once,
  as one ``DownTrack`` on the relay's transport (a relay SSRC of its own, payload types and
  header extension ids unchanged), however many subscribers the far end has for it.  RTCP from
  the far end comes back to these downtracks as a subscriber's would: PLI/FIR become keyframe
  requests to the publisher (throttled by the track, as today), NACKs are answered from the
  track's retransmission cache.
- **Import**: the far end's participants appear here as *relayed participants* (``Participant``
  with ``relay`` set: not seated against this worker's cap, never exported again), and their
  tracks as ``PublishedTrack``s fed by the relay: local subscribers bind to them as to any track
  (one copy in, a fan-out here).  A relayed video track keeps its own retransmission cache, so a
  local subscriber's NACK is answered here; holes on the relay itself are NACKed to the far end
  (the track's upstream NACK tracker) and its keyframe requests go there as PLIs.

Room events follow from the router: a relayed participant's join, publications and leave are
``RoomEvent``s like any other, so the WebSocket sessions here send the same notifications as in a
one-worker room and subscribe to relayed tracks by themselves.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct
from typing import Protocol

from sfu import clock
from sfu.counters import DropReason, MediaCounters
from sfu.packet import rtcp
from sfu.packet.twcc import TWCC_URI
from sfu.routing.downtrack import DownTrack
from sfu.routing.events import RoomEvent, RoomEventKind
from sfu.routing.participant import NODE_RTCP_SSRC, Participant, ParticipantKind
from sfu.routing.relay_parts import SsrcAllocator, identity_payload_types, lost_packets
from sfu.routing.relay_wire import RelayMessage, RelayOp, RelayTrack
from sfu.routing.rooms import Room
from sfu.routing.track import PublishedTrack
from sfu.transport.peer import CloseReason, PeerTransport

log = logging.getLogger(__name__)
_unpack_ssrc = Struct("!I").unpack_from

#: tracks one relay carries each way (exported, imported)
MAX_RELAY_TRACKS = 512
#: relayed participants one relay may make this end hold
MAX_RELAY_PARTICIPANTS = 4096


@dataclass
class Exported:
    room: str
    track: PublishedTrack
    downtrack: DownTrack


class RelaySink:
    """The relay transport's media: RTP of imported tracks by relay SSRC, RTCP for both ways."""

    def __init__(self, link: RelayLink, counters: MediaCounters) -> None:
        self.link = link
        self.counters = counters

    def on_rtp(self, cbuf: object, view: memoryview, length: int, now_ms: int) -> None:
        if length < 12:
            self.counters.drops[DropReason.RTP_MALFORMED] += 1
            return
        ssrc = _unpack_ssrc(view, 8)[0]
        track = self.link.imported.get(ssrc)
        if track is None:
            self.counters.drops[DropReason.RTP_UNKNOWN_SSRC] += 1
            self.link.transport.forget_inbound(ssrc)
            return
        track.on_rtp(view, length, now_ms, cbuf)

    def on_rtcp(self, data: bytes, now_ms: int) -> None:
        try:
            packets = rtcp.parse_compound(data)
        except ValueError:
            self.counters.drops[DropReason.RTCP_MALFORMED] += 1
            return
        link = self.link
        for packet in packets:
            if isinstance(packet, (rtcp.Pli, rtcp.Fir)):
                self.counters.pli_in += 1
                targets = [packet.media_ssrc] if isinstance(packet, rtcp.Pli) else [e.ssrc for e in packet.entries]
                for ssrc in targets:
                    out = link.exported.get(ssrc)
                    if out is not None:
                        link.keyframe_requests_in += 1
                        out.track.request_keyframe(now_ms)
            elif isinstance(packet, rtcp.Nack):
                self.counters.nack_in += 1
                out = link.exported.get(packet.media_ssrc)
                if out is not None:
                    out.downtrack.retransmit(packet.seqs, now_ms)
            elif isinstance(packet, rtcp.SenderReport):
                track = link.imported.get(packet.ssrc)
                if track is not None:
                    track.last_sr = (packet.ntp_timestamp, packet.rtp_timestamp, now_ms)

    def on_connected(self, now_ms: int) -> None:
        log.info("relay %s connected", self.link.link_id)

    def on_closed(self, reason: CloseReason) -> None:
        self.link.transport_closed(reason)


class RelayHost(Protocol):
    """What a link needs from the router (``sfu.routing.router.Router`` implements it)."""

    def room_of(self, room_id: str) -> Room | None: ...  # pragma: no cover
    def admit_relayed(self, room: Room, participant: Participant, now_ms: int) -> None: ...  # pragma: no cover
    def publish_relayed(self, room: Room, participant: Participant, track: PublishedTrack, now_ms: int) -> None: ...  # pragma: no cover
    def unpublish(self, room: Room, participant: Participant, track: PublishedTrack, now_ms: int) -> None: ...  # pragma: no cover
    def set_muted(self, room: Room, participant: Participant, track: PublishedTrack, muted: bool, now_ms: int) -> None: ...  # pragma: no cover
    def leave(self, participant: Participant, reason: CloseReason, now_ms: int) -> None: ...  # pragma: no cover


class RelayLink:
    """One relay: its transport, the tracks it exports and imports, the far end's participants."""

    def __init__(
        self,
        host: RelayHost,
        link_id: str,
        transport: PeerTransport,
        counters: MediaCounters,
        *,
        on_closed: Callable[[RelayLink, CloseReason], None] | None = None,
        max_tracks: int = MAX_RELAY_TRACKS,
        max_participants: int = MAX_RELAY_PARTICIPANTS,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.link_id = link_id
        self.transport = transport
        self.counters = counters
        self.max_tracks = max_tracks
        self.max_participants = max_participants
        #: rooms both ends forward (a room's events cross only for these)
        self.rooms: set[str] = set()
        #: relay SSRC -> the local track it carries out, and its downtrack on the relay
        self.exported: dict[int, Exported] = {}
        self._export_ssrc: dict[int, int] = {}  # id(track) -> relay SSRC
        self._ssrcs = SsrcAllocator(rng)
        #: relay SSRC -> the far end's track, as a source here
        self.imported: dict[int, PublishedTrack] = {}
        self._imported_room: dict[int, tuple[str, str]] = {}  # relay SSRC -> (room, identity)
        #: (room, identity) -> relayed participant
        self.relayed: dict[tuple[str, str], Participant] = {}
        #: per room, the participant object that holds the exported downtracks (never seated):
        #: sends their sender reports (``Participant.send_reports``)
        self._holders: dict[str, Participant] = {}
        #: called when a relayed track here got its first subscriber: ``needs`` has news
        self.on_needs: Callable[[], None] | None = None
        self._needs_sent: tuple[int, ...] = ()
        self.keyframe_requests_in = 0
        # figures of tracks no longer carried (``octets``, ``lost`` stay monotonic)
        self._gone_out = 0
        self._gone_in = 0
        self._gone_lost = 0
        self.refused = 0  # messages refused (bounds, unknown rooms)
        self.closed = False
        self._on_closed = on_closed
        transport.sink = RelaySink(self, counters)

    # -- export: local changes to messages ---------------------------------------------------------
    def share(self, room: Room, now_ms: int) -> list[RelayMessage]:
        """The room is forwarded by both ends from now on: the messages that tell the far end what
        is here (joins, then publications).  Shared already (the far end closed the room and opens
        it again): shared afresh."""
        if room.id in self.rooms:
            self.unshare(room.id, now_ms)
        self.rooms.add(room.id)
        out: list[RelayMessage] = []
        for p in list(room.participants.values()):
            if p.relay:
                continue
            out.append(self._join(room.id, p))
            for track in list(p.tracks.values()):
                msg = self._export(room.id, track, now_ms)
                if msg is not None:
                    out.append(msg)
        return out

    def on_event(self, event: RoomEvent, now_ms: int) -> list[RelayMessage]:
        """A room event here: what the far end must be told (nothing for rooms not shared, nor for
        the far end's own participants)."""
        room, p = event.room, event.participant
        if self.closed or room.id not in self.rooms or (p is not None and p.relay):
            return []
        kind = event.kind
        if kind is RoomEventKind.JOINED and p is not None:
            return [self._join(room.id, p)]
        if kind is RoomEventKind.PUBLISHED:
            msgs = [self._export(room.id, t, now_ms) for t in event.tracks]
            return [m for m in msgs if m is not None]
        if kind is RoomEventKind.UNPUBLISHED and p is not None:
            msgs = [self._unexport(room.id, p.identity, t) for t in event.tracks]
            return [m for m in msgs if m is not None]
        if kind is RoomEventKind.MUTED and p is not None:
            out = []
            for t in event.tracks:
                ssrc = self._export_ssrc.get(id(t))
                if ssrc is not None:
                    out.append(RelayMessage(RelayOp.MUTE, room.id, p.identity, ssrc=ssrc, muted=t.muted))
            return out
        if kind is RoomEventKind.LEFT and p is not None:
            for t in list(p.tracks.values()):
                self._unexport(room.id, p.identity, t)
            return [RelayMessage(RelayOp.LEAVE, room.id, p.identity)]
        if kind is RoomEventKind.ROOM_CLOSED:
            out = [RelayMessage(RelayOp.LEAVE, room.id, q.identity) for q in event.participants if not q.relay]
            self.unshare(room.id, now_ms, CloseReason.ROOM_CLOSED)
            return out
        return []

    def unshare(self, room_id: str, now_ms: int, reason: CloseReason = CloseReason.LEFT) -> None:
        """The room is no longer forwarded by both ends (closed at one): its exports stop, the far
        end's participants leave it here."""
        for ssrc in [s for s, e in self.exported.items() if e.room == room_id]:
            self._drop_export(ssrc)
        self.rooms.discard(room_id)
        self._drop_imports(room_id, reason, now_ms)

    def _join(self, room_id: str, p: Participant) -> RelayMessage:
        return RelayMessage(
            RelayOp.JOIN, room_id, p.identity, sid=p.sid, kind=p.kind.value, name=p.name, metadata=p.metadata
        )

    def _export(self, room_id: str, track: PublishedTrack, now_ms: int) -> RelayMessage | None:
        if id(track) in self._export_ssrc:
            return None
        if track.rid is not None:
            return None  # simulcast layers do not cross relays yet (docs/relays.md)
        if len(self.exported) >= self.max_tracks:
            self.refused += 1
            log.warning("relay %s: at its bound of %d exported tracks; %s stays here", self.link_id,
                        self.max_tracks, track.sid)
            return None
        holder = self._holders.get(room_id)
        if holder is None:
            holder = Participant(identity=f"relay:{self.link_id}", room_id=room_id, kind=ParticipantKind.RTC)
            holder.subscriber = self.transport
            self._holders[room_id] = holder
        ssrc = self._ssrcs.take()
        dt = DownTrack(
            peer=self.transport,
            kind=track.kind,
            mid=track.mid,
            ssrc=ssrc,
            out_payload_types=identity_payload_types(track),
            out_ext_ids={uri: i for uri, i in track.ext_ids.items() if uri != TWCC_URI},
            counters=self.counters,
        )
        holder.downtracks.append(dt)
        self.exported[ssrc] = Exported(room_id, track, dt)
        self._export_ssrc[id(track)] = ssrc
        dt.bind(track, now_ms)
        dt.held = True  # carried once the far end needs it (``RelayOp.NEED``)
        dt.paused = True
        return RelayMessage(
            RelayOp.PUBLISH, room_id, track.owner,
            track=RelayTrack(ssrc, track.sid, track.kind, track.mid, tuple(track.codecs), dict(track.ext_ids), track.muted),
        )

    def _unexport(self, room_id: str, identity: str, track: PublishedTrack) -> RelayMessage | None:
        ssrc = self._export_ssrc.get(id(track))
        if ssrc is None:
            return None
        self._drop_export(ssrc)
        return RelayMessage(RelayOp.UNPUBLISH, room_id, identity, ssrc=ssrc)

    def _drop_export(self, ssrc: int) -> None:
        e = self.exported.pop(ssrc, None)
        if e is None:
            return
        self._export_ssrc.pop(id(e.track), None)
        self._gone_out += e.downtrack.octets_sent
        e.downtrack.close()
        holder = self._holders.get(e.room)
        if holder is not None:
            if e.downtrack in holder.downtracks:
                holder.downtracks.remove(e.downtrack)
            if not holder.downtracks:
                del self._holders[e.room]
        self._ssrcs.free(ssrc)

    # -- import: the far end's messages applied here ---------------------------------------------------
    def apply(self, msg: RelayMessage, now_ms: int) -> None:
        """A change at the far end.  Raises ValueError for one that cannot apply (a room not
        shared or not open here, an unknown participant or track, a bound reached)."""
        if self.closed:
            raise ValueError("the relay is closed")
        if msg.op is RelayOp.DATA:
            return  # data messages are the node's (sfu.workers.relay)
        if msg.op is RelayOp.NEED:
            self._carry(set(msg.ssrcs), now_ms)
            return
        room = self.host.room_of(msg.room) if msg.room in self.rooms else None
        if room is None:
            self.refused += 1
            raise ValueError(f"room {msg.room!r} is not shared over relay {self.link_id}")
        key = (msg.room, msg.identity)
        p = self.relayed.get(key)
        if msg.op is RelayOp.JOIN:
            if p is not None:
                return
            if len(self.relayed) >= self.max_participants:
                self.refused += 1
                raise ValueError(f"relay {self.link_id}: at its bound of {self.max_participants} participants")
            try:
                kind = ParticipantKind(msg.kind)
            except ValueError:
                raise ValueError(f"participant kind {msg.kind!r:.20} is unknown") from None
            p = Participant(identity=msg.identity, room_id=msg.room, kind=kind, name=msg.name, sid=msg.sid)
            p.metadata = msg.metadata
            p.relay = self.link_id
            self.relayed[key] = p
            self.host.admit_relayed(room, p, now_ms)
            return
        if p is None:
            self.refused += 1
            raise ValueError(f"participant {msg.identity!r:.80} of room {msg.room!r} is not relayed here")
        if msg.op is RelayOp.PUBLISH:
            assert msg.track is not None
            self._import(room, p, msg.track, now_ms)
        elif msg.op is RelayOp.UNPUBLISH:
            track = self.imported.get(msg.ssrc)
            if track is None or self._imported_room.get(msg.ssrc) != key:
                raise ValueError(f"relay SSRC {msg.ssrc} is no track of {msg.identity!r:.80}")
            self._unimport(room, p, msg.ssrc, now_ms)
        elif msg.op is RelayOp.MUTE:
            track = self.imported.get(msg.ssrc)
            if track is None or self._imported_room.get(msg.ssrc) != key:
                raise ValueError(f"relay SSRC {msg.ssrc} is no track of {msg.identity!r:.80}")
            self.host.set_muted(room, p, track, msg.muted, now_ms)
        elif msg.op is RelayOp.LEAVE:
            for ssrc in [s for s, k in self._imported_room.items() if k == key]:
                self._unimport(room, p, ssrc, now_ms)
            del self.relayed[key]
            self.host.leave(p, CloseReason.LEFT, now_ms)

    def _carry(self, wanted: set[int], now_ms: int) -> None:
        """Carry exactly the exported tracks the far end needs: the others are held (paused, as a
        subscriber without the right to subscribe is); one needed again restarts at a keyframe."""
        for ssrc, e in self.exported.items():
            dt = e.downtrack
            held = ssrc not in wanted
            if held == dt.held:
                continue
            dt.held = held
            if held:
                dt.paused = True
            elif not e.track.muted:
                dt.paused = False
                dt.unbind()  # as Router.set_muted: continuous sequence numbers, a keyframe first
                dt.bind(e.track, now_ms)

    def needs(self) -> RelayMessage | None:
        """The far end's tracks someone here receives, when that changed since the last time."""
        wanted = tuple(sorted(s for s, t in self.imported.items() if t.downtracks or t.switching or t.tap is not None))
        if wanted == self._needs_sent:
            return None
        self._needs_sent = wanted
        return RelayMessage(RelayOp.NEED, "*", "*", ssrcs=wanted)

    def _demand(self) -> None:
        if self.on_needs is not None:
            self.on_needs()

    def _import(self, room: Room, p: Participant, spec: RelayTrack, now_ms: int) -> None:
        if spec.ssrc in self.imported:
            raise ValueError(f"relay SSRC {spec.ssrc} is taken")
        if len(self.imported) >= self.max_tracks:
            self.refused += 1
            raise ValueError(f"relay {self.link_id}: at its bound of {self.max_tracks} imported tracks")
        ssrc = spec.ssrc
        track = PublishedTrack(
            kind=spec.kind,
            ssrc=ssrc,
            codecs=list(spec.codecs),
            mid=spec.mid,
            owner=p.identity,
            counters=self.counters,
            request_keyframe=self._send_pli,
            ext_ids=spec.ext_ids,
            nack=spec.kind == "video",
            send_nack=self._send_nack,
        )
        track.sid = spec.sid
        track.muted = spec.muted
        track.on_demand = self._demand
        p.tracks[ssrc] = track
        self.imported[ssrc] = track
        self._imported_room[ssrc] = (room.id, p.identity)
        self.host.publish_relayed(room, p, track, now_ms)

    def _unimport(self, room: Room, p: Participant, ssrc: int, now_ms: int) -> None:
        track = self.imported.pop(ssrc, None)
        self._imported_room.pop(ssrc, None)
        self.transport.forget_inbound(ssrc)
        if track is not None:
            self._retire(track)
            self.host.unpublish(room, p, track, now_ms)

    def _drop_imports(self, room_id: str | None, reason: CloseReason, now_ms: int) -> None:
        """The far end's participants of ``room_id`` (None: of every room) leave, their tracks
        unpublished first (events sent)."""
        for key in [k for k in self.relayed if room_id is None or k[0] == room_id]:
            p = self.relayed.pop(key)
            room = self.host.room_of(key[0])
            for ssrc in [s for s, k in self._imported_room.items() if k == key]:
                if room is not None:
                    self._unimport(room, p, ssrc, now_ms)
                else:
                    gone = self.imported.pop(ssrc, None)
                    self._imported_room.pop(ssrc, None)
                    if gone is not None:
                        self._retire(gone)
            self.host.leave(p, reason, now_ms)

    # -- RTCP towards the far end ---------------------------------------------------------------------
    def _send_pli(self, ssrc: int) -> None:
        self.transport.send_rtcp(bytes(rtcp.Pli(sender_ssrc=NODE_RTCP_SSRC, media_ssrc=ssrc)))

    def _send_nack(self, ssrc: int, seqs: list[int]) -> None:
        self.transport.send_rtcp(bytes(rtcp.Nack(sender_ssrc=NODE_RTCP_SSRC, media_ssrc=ssrc, seqs=seqs)))

    def tick(self, now_ms: int) -> None:
        """Once a second: the transport's liveness, sender reports for exported tracks, and a
        receiver report (reception of imported ones; also the keepalive of an idle relay)."""
        self.transport.tick(now_ms)
        if self.closed:
            return
        for holder in list(self._holders.values()):
            holder.send_reports(now_ms)
        blocks = []
        for ssrc, track in self.imported.items():
            if track.stats.started:
                fig = track.stats.report()
                blocks.append(
                    rtcp.ReportBlock(
                        ssrc=ssrc, fraction_lost=fig.fraction_lost, cumulative_lost=fig.cumulative_lost,
                        highest_seq=fig.highest_seq, jitter=fig.jitter, lsr=0, dlsr=0,
                    )
                )
        self.transport.send_rtcp(bytes(rtcp.ReceiverReport(ssrc=NODE_RTCP_SSRC, reports=blocks[:31])))

    # -- figures --------------------------------------------------------------------------------------
    def octets(self) -> tuple[int, int]:
        """RTP octets carried out and in so far (tracks no longer carried included)."""
        out = sum(e.downtrack.octets_sent for e in self.exported.values())
        return self._gone_out + out, self._gone_in + sum(t.octets_in for t in self.imported.values())

    def lost(self) -> int:
        """Packets of imported tracks lost on the relay (what never arrived, repaired or not)."""
        return self._gone_lost + sum(lost_packets(t) for t in self.imported.values())

    def _retire(self, track: PublishedTrack) -> None:
        """An imported track leaves: its figures stay in the link's totals."""
        self._gone_in += track.octets_in
        self._gone_lost += lost_packets(track)

    # -- teardown -------------------------------------------------------------------------------------
    def transport_closed(self, reason: CloseReason) -> None:
        """The transport closed (the far end went silent): the link goes with it."""
        self.close(reason)

    def close(self, reason: CloseReason, now_ms: int | None = None) -> None:
        """Tear the relay down: the far end's participants leave here (tracks unpublished, events
        sent), the exported downtracks stop, the transport closes."""
        if self.closed:
            return
        self.closed = True
        now = clock.now_ms() if now_ms is None else now_ms
        for ssrc in list(self.exported):
            self._drop_export(ssrc)
        self._drop_imports(None, reason, now)
        self.rooms.clear()
        self.transport.close(reason)
        if self._on_closed is not None:
            self._on_closed(self, reason)
