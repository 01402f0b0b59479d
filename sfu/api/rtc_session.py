"""Multi-party signaling sessions (``GET /v1/rtc``): the methods and notifications of
``docs/signaling.md``, with no WebSocket here.

A session talks through two callables: ``send(frame)`` queues a text frame and ``close(code,
reason)`` ends the socket after what is queued.  The service watches the router's room events
(``sfu.routing.events``) and tells each session's client what changed; subscriber transports are
renegotiated with one offer outstanding at a time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from levelchat.errors import ApiError
from levelchat.tokens import Claims
from levelchat.usage.meter import JoinKind
from sfu import clock
from sfu.api.jsonrpc import RpcCode, RpcError, notification
from sfu.api.rtc_data import DataService, data_only_offer, data_section
from sfu.api.rtc_ice import (
    apply_answer_ufrag,
    offer_credentials,
    offered,
    request_subscriber_restart,
    restart_publisher,
)
from sfu.api.rtc_layers import choose_layer, layers_of
from sfu.api.rtc_offers import SectionState, SubscriberNegotiator, Wanted
from sfu.api.rtc_quality import QualityNotifier
from sfu.api.rtc_resume import CLOSE_RESUMED, PROTOCOL_VERSION, Resumption, check_protocol, resume_param
from sfu.api.rtc_subscription import LayerTeller, SubscriptionUpdate, apply
from sfu.api.rtc_timeouts import OfferWatch, check_offer
from sfu.api.sessions import publish_track_specs
from sfu.routing.downtrack import DownTrack
from sfu.routing.events import RoomEvent, RoomEventKind
from sfu.routing.participant import Participant, ParticipantKind, Permissions
from sfu.routing.rooms import Room
from sfu.routing.router import DownTrackSpec, TransportSpec
from sfu.routing.simulcast import sources
from sfu.routing.speakers import LevelMeter, Speaker, rank
from sfu.routing.track import PublishedTrack
from sfu.signaling import sdp
from sfu.signaling.codecs import HDREXT_AUDIO_LEVEL, CodecPolicy
from sfu.transport.dtls import DtlsRole
from sfu.transport.ice import IceCredentials
from sfu.transport.peer import CloseReason, PeerTransport

if TYPE_CHECKING:
    from sfu.node import Node

log = logging.getLogger(__name__)

SPEAKERS_INTERVAL_S = 0.5
#: WebSocket close codes (the reason text names the cause)
CLOSE_LEFT = 1000
CLOSE_ENDED = 4000  # the server ended the session: replaced, room closed, transport lost


def _participant_view(p: Participant) -> dict[str, Any]:
    return {
        "identity": p.identity,
        "sid": p.sid,
        "name": p.name,
        "metadata": p.metadata,
        "kind": p.kind.value,
        "tracks": [_track_view(t) for t in sources(p.tracks.values())],
    }


def _track_view(t: PublishedTrack) -> dict[str, Any]:
    view: dict[str, Any] = {"sid": t.sid, "kind": t.kind, "codec": t.codec.name, "mid": t.mid, "muted": t.muted}
    if t.group is not None:
        view["layers"] = t.group.rids  # a simulcast source: its rids, low to high quality
    return view


def _str_param(params: dict[str, Any], name: str, *, max_len: int = 64 * 1024) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise RpcError(RpcCode.INVALID_PARAMS, ApiError("bad_request", f"params.{name} must be a non-empty string"))
    if len(value) > max_len:
        raise RpcError(RpcCode.INVALID_PARAMS, ApiError("bad_request", f"params.{name} is longer than {max_len}"))
    return value


def _spec_key(mid: str, ssrc: int, rid: str | None) -> tuple[str, int | str]:
    """What names a published track across renegotiations: a simulcast layer by its rid (its
    SSRC is learnt from its packets), any other track by its SSRC."""
    return (mid, rid) if rid is not None else (mid, ssrc)


def _drop(_frame: bytes) -> None:
    pass


def _no_close(_code: int, _reason: str) -> None:
    pass


@dataclass
class Link:
    """How a session reaches its client."""

    send: Callable[[bytes], None]
    close: Callable[[int, str], None]


class RtcSession:
    def __init__(self, service: RtcService, claims: Claims, room_id: str, identity: str, link: Link) -> None:
        self.service = service
        self.claims = claims
        self.room_id = room_id
        self.identity = identity
        self.link = link
        self.participant: Participant | None = None
        self.room: Room | None = None
        self.negotiator: SubscriberNegotiator | None = None
        self.downtracks: dict[str, DownTrack] = {}  # by track sid
        self.ended = False
        #: its socket was lost and it waits for a resume (sfu.api.rtc_resume)
        self.detached = False
        self.resume_token: str | None = None
        self._sync_scheduled = False
        #: the outstanding subscriber offer's notification, and when it was sent (sfu.api.rtc_timeouts)
        self.last_offer: dict[str, Any] | None = None
        self.offer_watch = OfferWatch(service.offer_timeout_ms)
        #: ICE restart of the subscriber transport: asked for, then in the outstanding offer (sfu.api.rtc_ice)
        self.ice_restart: IceCredentials | None = None
        self.restart_in_offer: IceCredentials | None = None
        #: what this publisher's simulcast sources were told (``subscribed_layers``)
        self.layers = LayerTeller()
        self.methods: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "join": self.join,
            "publish": self.publish,
            "unpublish": self.unpublish,
            "answer": self.answer,
            "trickle": self.trickle,
            "mute": self.mute,
            "leave": self.leave,
            "ping": self.ping,
            "set_layer": self.set_layer,
            "update_subscription": self.update_subscription,
            "restart_ice": self.restart_ice,
        }

    @property
    def subscribes(self) -> bool:
        return "room:subscribe" in self.claims.scopes

    def notify(self, method: str, params: dict[str, Any]) -> None:
        if not self.ended:
            self.link.send(notification(method, params))

    def end(self, code: int, reason: str) -> None:
        """Close the socket after what is queued (the participant is already gone or leaving)."""
        if not self.ended:
            self.ended = True
            self.link.close(code, reason)

    # -- resuming (sfu.api.rtc_resume) ---------------------------------------------------------------
    def seated(self) -> bool:
        return self.participant is not None and not self.participant.closed

    def go_quiet(self) -> None:
        self.link = Link(send=_drop, close=_no_close)
        self.ended = True  # nothing is sent to it, no offer is made, no offer timeout runs

    def expire(self) -> None:
        if self.detached and self.participant is not None and not self.participant.closed:
            self.service.node.router.leave(self.participant, CloseReason.LEFT, clock.now_ms())
        self.service.forget(self)
        self.methods.clear()

    def superseded(self) -> None:
        self.notify("disconnected", {"reason": CLOSE_RESUMED, "detail": "a new socket resumed this session"})
        self.end(CLOSE_ENDED, CLOSE_RESUMED)

    def _adopt(self, old: RtcSession) -> None:
        """Take the seat, transports and negotiation state of ``old`` (whose socket is gone or going)."""
        self.participant, self.room = old.participant, old.room
        self.negotiator, self.downtracks = old.negotiator, old.downtracks
        self.last_offer, self.offer_watch = old.last_offer, old.offer_watch
        self.ice_restart, self.restart_in_offer = old.ice_restart, old.restart_in_offer
        self.layers = old.layers
        old.participant = old.room = old.negotiator = None  # the end of its socket no longer frees the seat
        old.downtracks = {}
        old.ended, old.detached = True, False
        old.methods.clear()
        if self.participant is not None:
            self.service.by_sid[self.participant.sid] = self

    def _joined(self) -> tuple[Room, Participant]:
        if self.participant is None or self.room is None:
            raise RpcError(RpcCode.REFUSED, ApiError("bad_request", "call join first"))
        if self.participant.closed:
            raise RpcError(RpcCode.REFUSED, ApiError("bad_request", "this session has left the room"))
        return self.room, self.participant

    # -- methods -----------------------------------------------------------------------------------
    async def join(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.participant is not None:
            raise RpcError(RpcCode.REFUSED, ApiError("conflict", "this session already joined"))
        check_protocol(params)
        token = resume_param(params)
        if token is not None:
            return self._resume(token)
        name = params.get("name", self.claims.name)
        if name is not None and (not isinstance(name, str) or len(name) > 128):
            raise RpcError(RpcCode.INVALID_PARAMS, ApiError("bad_request", "params.name must be a string of at most 128 characters"))
        node = self.service.node
        node.usage.check_quota(JoinKind.RTC)
        now = clock.now_ms()
        room = node.room_for_join(self.room_id, now)
        participant = Participant(
            identity=self.identity,
            room_id=room.id,
            kind=ParticipantKind.RTC,
            name=name,
            target_identity="*",
            metadata=self.claims.metadata,
            permissions=Permissions(
                can_publish="room:publish" in self.claims.scopes,
                can_subscribe=self.subscribes,
                can_publish_data="room:publish" in self.claims.scopes,
            ),
        )
        self.participant, self.room = participant, room
        self.service.by_sid[participant.sid] = self
        try:
            node.router.admit(room, participant, now)
        except ApiError:
            self.service.by_sid.pop(participant.sid, None)
            self.participant = self.room = None
            raise
        if self.subscribes:
            self.negotiator = SubscriberNegotiator(
                CodecPolicy.parse(room.policy.codecs), cname=f"levelchat-{self.identity}"
            )
            self.schedule_sync()
        return self._join_result(room, participant, resumed=False)

    def _resume(self, token: str) -> dict[str, Any]:
        """Take over the session the token names (same identity and room): its seat, tracks and
        transports; an offer left unanswered when its socket was lost is sent again."""
        self._adopt(self.service.resumption.take_over(self, token))
        room, participant = self._joined()
        if self.negotiator is not None and self.negotiator.pending is not None and self.last_offer is not None:
            self.notify("offer", self.last_offer)
            self.offer_watch.sent(clock.now_ms())
        else:
            self.schedule_sync()  # what changed while it was away
        return self._join_result(room, participant, resumed=True)

    def _join_result(self, room: Room, participant: Participant, *, resumed: bool) -> dict[str, Any]:
        others = [p for p in room.participants.values() if p is not participant]
        return {
            "room": {"name": room.id, "sid": room.sid, "max_participants": room.policy.max_participants},
            # the room's codec policy (POST /v1/rooms `codecs`): the SDK checks it against what the
            # browser can encode and decode before it offers (codec/unsupported)
            "codecs": list(room.policy.codecs),
            "participant": _participant_view(participant),
            "participants": [_participant_view(p) for p in others],
            "can_publish": participant.permissions.can_publish,
            "can_subscribe": participant.permissions.can_subscribe,
            # the TURN servers, with a credential minted for this session (RTCIceServer shape)
            "ice_servers": [s.to_json() for s in self.service.node.ice_servers(self.identity)],
            "protocol": PROTOCOL_VERSION,
            # give it to `join` on a new socket to take this session over (sfu.api.rtc_resume)
            "resume": self.service.resumption.issue(self),
            "resume_grace_s": self.service.resumption.grace_s,
            "resumed": resumed,
        }

    async def publish(self, params: dict[str, Any]) -> dict[str, Any]:
        room, participant = self._joined()
        text = _str_param(params, "sdp")
        if not participant.permissions.can_publish and not data_only_offer(text):
            # data channels alone: received by anyone, sent with can_publish_data
            self.claims.require("room:publish")  # token/unauthorized: the token never allowed it
            raise ApiError("forbidden", "publishing was revoked for this participant (the participants API)")
        offer = self.service.node.sessions.parse_offer(text)
        negotiation = sdp.negotiate_publish(
            offer, CodecPolicy.parse(room.policy.codecs), transport_cc=self.service.node.router.publisher_transport_cc
        )
        if not negotiation.tracks and not negotiation.datachannel:
            raise ApiError("bad_request", "the offer sends no audio, video or data channel")
        # simulcast layers' placeholder SSRCs continue below the ones still unlearnt
        specs = publish_track_specs(offer, negotiation, min([0, *participant.tracks]))
        self.service.node.sessions.limits.check_tracks(len(specs))  # what the participant will publish
        if negotiation.tracks and not specs:
            raise ApiError(
                "bad_request", "the offer signals no SSRC for its media (a=ssrc lines, or a=rid with a=simulcast)"
            )
        router = self.service.node.router
        now = clock.now_ms()
        transport = participant.publisher
        ufrag, _pwd, fingerprints, setup = offer.transport
        if transport is None:
            answered = sdp.answer_setup(setup, self.service.preferred_role)
            role = DtlsRole.SERVER if answered is sdp.Setup.PASSIVE else DtlsRole.CLIENT
            transport = router.new_transport(
                TransportSpec(role, ufrag, [(f.algorithm, f.value) for f in fingerprints]), now
            )
            self.service.publisher_roles[participant.sid] = answered
            added = specs
        else:
            restart_publisher(transport, offer)  # a new ufrag: ICE restart
            keep = {_spec_key(s.mid, s.ssrc, s.rid) for s in specs}
            for track in list(participant.tracks.values()):
                if _spec_key(track.mid, track.ssrc, track.rid) not in keep:
                    self.service.published.pop(track.sid, None)
                    router.unpublish(room, participant, track, now)
            have = {_spec_key(t.mid, t.ssrc, t.rid) for t in participant.tracks.values()}
            added = [s for s in specs if _spec_key(s.mid, s.ssrc, s.rid) not in have]
        if added or participant.publisher is None:
            router.attach_publisher(room, participant, transport, added, now)
        if negotiation.datachannel:
            self.service.data.attach(
                participant, transport, data_section(offer), can_send=participant.permissions.can_publish_data
            )
        by_mid = {t.mid: t for t in negotiation.tracks}
        for track in participant.tracks.values():
            if track.sid not in self.service.published and track.mid in by_mid:
                self.service.published[track.sid] = sdp.TrackDescription.from_publish(
                    track.sid, participant.identity, by_mid[track.mid]
                )
        answered_role = self.service.publisher_roles.get(participant.sid, sdp.Setup.PASSIVE)
        answer = sdp.build_answer(offer, negotiation, self.service.local_params(transport, answered_role))
        if added:
            # the track_published notifications went out from the router event; now the descriptions exist
            self.service.resync_room(room)
        return {"sdp": answer, "tracks": [_track_view(t) for t in sources(participant.tracks.values())]}

    def _own_track(self, participant: Participant, params: dict[str, Any]) -> PublishedTrack:
        sid = _str_param(params, "track", max_len=64)
        track = next((t for t in sources(participant.tracks.values()) if t.sid == sid), None)
        if track is None:
            raise ApiError("not_found", f"you publish no track {sid!r}")
        return track

    async def unpublish(self, params: dict[str, Any]) -> dict[str, Any]:
        room, participant = self._joined()
        track = self._own_track(participant, params)
        for layer in layers_of(track):
            self.service.published.pop(layer.sid, None)
            self.service.node.router.unpublish(room, participant, layer, clock.now_ms())
        return {}

    async def answer(self, params: dict[str, Any]) -> dict[str, Any]:
        _room, participant = self._joined()
        negotiator = self.negotiator
        if negotiator is None or negotiator.pending is None:
            raise ApiError("bad_request", "there is no offer to answer")
        text = _str_param(params, "sdp")
        try:
            outcome = negotiator.take_answer(text)
        except ValueError as exc:
            raise ApiError("bad_request", f"invalid SDP answer: {exc}") from None
        self.offer_watch.answered()
        router = self.service.node.router
        transport = participant.subscriber
        if transport is None:
            raise ApiError("internal_error", "the subscriber transport is missing")
        if transport.remote_ufrag in ("", None):
            router.complete_offer_transport(transport, outcome.remote_ufrag, list(outcome.remote_fingerprints))
        apply_answer_ufrag(self, transport, outcome.remote_ufrag)
        now = clock.now_ms()
        for section, track in outcome.delivered:
            source = self.service.find_track(section.track_sid)
            if source is None:
                continue  # gone meanwhile: the next offer makes the section inactive
            spec = DownTrackSpec(
                kind=track.kind.value,
                mid=track.mid,
                ssrc=track.ssrc,
                out_payload_types=track.out_payload_types,
                out_ext_ids=dict(track.header_extensions),
                rtx_ssrc=track.rtx_ssrc,
                rtx_pt=track.mappings[0].subscriber_rtx_pt if track.mappings else None,
            )
            self.downtracks[section.track_sid] = router.subscribe(participant, source, spec, now)
        self.schedule_sync()  # changes that waited for this answer
        return {
            "tracks": [s.describe() for s, _ in outcome.delivered],
            "refused": [
                {"track": r.track_id, "kind": r.kind.value, "code": r.code, "detail": r.detail} for r in outcome.refused
            ],
        }

    async def trickle(self, params: dict[str, Any]) -> dict[str, Any]:
        # the node is ICE-lite with its candidate in every description; the client's candidates
        # are learnt from its connectivity checks, so trickled ones are accepted and not needed
        self._joined()
        candidate = params.get("candidate")
        if candidate is not None and not isinstance(candidate, (str, dict)):
            raise RpcError(RpcCode.INVALID_PARAMS, ApiError("bad_request", "params.candidate must be a string or an object"))
        return {}

    async def mute(self, params: dict[str, Any]) -> dict[str, Any]:
        room, participant = self._joined()
        track = self._own_track(participant, params)
        muted = params.get("muted")
        if not isinstance(muted, bool):
            raise RpcError(RpcCode.INVALID_PARAMS, ApiError("bad_request", "params.muted must be true or false"))
        if not muted and track.sid in participant.server_muted:
            raise ApiError("forbidden", "the server muted this track: only the participants API unmutes it")
        for layer in layers_of(track):
            self.service.node.router.set_muted(room, participant, layer, muted, clock.now_ms())
        return {"track": track.sid, "muted": track.muted}

    async def leave(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.participant is not None and not self.participant.closed:
            self.service.node.router.leave(self.participant, CloseReason.LEFT, clock.now_ms())
        self.end(CLOSE_LEFT, "left")
        return {}

    async def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"now_ms": clock.now_ms()}

    async def restart_ice(self, params: dict[str, Any]) -> dict[str, Any]:
        self._joined()
        return request_subscriber_restart(self)

    async def set_layer(self, params: dict[str, Any]) -> dict[str, Any]:
        room, participant = self._joined()
        result = choose_layer(self.service.node.router, participant, self.downtracks, params)
        self.service.tell_publisher(room, self.downtracks.get(result["track"]), clock.now_ms())
        return result

    async def update_subscription(self, params: dict[str, Any]) -> dict[str, Any]:
        room, participant = self._joined()
        update = SubscriptionUpdate.parse(params)
        dt = self.downtracks.get(update.track)
        if dt is None or dt not in participant.downtracks:
            raise ApiError("not_found", f"you receive no track {update.track!r}")
        now = clock.now_ms()
        result = apply(participant, dt, update, now)
        self.service.tell_publisher(room, dt, now)  # a layer needed now is asked for at once
        return result

    def on_permissions(self) -> None:
        """The participants API changed what this participant may do: a grant of subscribing to
        a session that had none starts its subscriber side; the next offer follows the change."""
        p, room = self.participant, self.room
        if p is None or room is None or p.closed:
            return
        if p.permissions.can_subscribe and self.negotiator is None:
            self.negotiator = SubscriberNegotiator(
                CodecPolicy.parse(room.policy.codecs), cname=f"levelchat-{self.identity}"
            )
        self.schedule_sync()

    # -- subscriber transport ------------------------------------------------------------------
    def schedule_sync(self) -> None:
        if not self._sync_scheduled and self.negotiator is not None:
            self._sync_scheduled = True
            asyncio.get_running_loop().call_soon(self.sync)

    def sync(self) -> None:
        """Offer what changed, unless an offer is outstanding (its answer calls this again)."""
        self._sync_scheduled = False
        negotiator = self.negotiator
        participant, room = self.participant, self.room
        if negotiator is None or negotiator.pending is not None or participant is None or room is None:
            return
        if participant.closed or self.ended:
            return
        wanted = self.service.wanted_for(room, participant)
        if not wanted and not negotiator.sections:
            return
        router = self.service.node.router
        transport = participant.subscriber
        if transport is None:
            transport = router.new_offer_transport(clock.now_ms())
            router.attach_offer_subscriber(participant, transport)
        local, restart = offer_credentials(self, self.service.local_params(transport, sdp.Setup.PASSIVE))
        try:
            offer = negotiator.plan(wanted, local, force=restart)
        except ValueError:
            log.exception("no offer could be made for %s", participant.identity)
            return
        if offer is None:
            return
        offered(self, restart)
        for section in offer.removed:
            dt = self.downtracks.pop(section.track_sid, None)
            if dt is not None:
                router.unsubscribe(participant, dt)
        self.last_offer = offer.describe(negotiator.sections)
        self.notify("offer", self.last_offer)
        self.offer_watch.sent(clock.now_ms())

    def active_track_sids(self) -> set[str]:
        if self.negotiator is None:
            return set()
        return {s.track_sid for s in self.negotiator.sections if s.state is SectionState.ACTIVE}


class RtcService:
    """Every signaling session of the node, fed by the router's room events."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.by_sid: dict[str, RtcSession] = {}  # by participant sid
        #: descriptions of tracks published over signaling, by track sid (WHIP ones live in node.sessions)
        self.published: dict[str, sdp.TrackDescription] = {}
        node.sessions.other_descriptions.append(self.published)  # WHEP viewers watch them too
        self.publisher_roles: dict[str, sdp.Setup] = {}
        self.preferred_role = sdp.Setup(node.config.dtls_role)
        self.offer_timeout_ms = int(node.config.subscriber_offer_timeout_s * 1000)
        self._last_speakers: dict[str, tuple[str, ...]] = {}
        self.qualities = QualityNotifier()
        self._told_draining = ""
        self._task: asyncio.Task[None] | None = None
        self.data = DataService(node)
        self.resumption: Resumption[RtcSession] = Resumption(node.config.signaling_resume_grace_s)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.node.router.observers.append(self.on_event)
        self.node.router.observers.append(self.data.on_event)
        self._task = asyncio.get_running_loop().create_task(self._periodic())

    async def stop(self) -> None:
        self.resumption.close()
        if self.on_event in self.node.router.observers:
            self.node.router.observers.remove(self.on_event)
        if self.data.on_event in self.node.router.observers:
            self.node.router.observers.remove(self.data.on_event)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # -- helpers -----------------------------------------------------------------------------------
    def local_params(self, transport: PeerTransport, role: sdp.Setup) -> sdp.LocalParams:
        router = self.node.router
        return sdp.LocalParams(
            ice_ufrag=transport.ice.ufrag,
            ice_pwd=transport.ice.pwd,
            fingerprint=router.certificate.fingerprint("sha-256"),
            candidates=self.node.sessions.advertised,
            tcp_candidates=self.node.sessions.advertised_tcp,
            dtls_role=role,
            session_id=random.getrandbits(62) or 1,
        )

    def description(self, track_sid: str) -> sdp.TrackDescription | None:
        # the node's (WHIP) and the other descriptions: relayed tracks' too (sfu.workers.relay)
        return self.published.get(track_sid) or self.node.sessions.description(track_sid)

    def find_track(self, track_sid: str) -> PublishedTrack | None:
        for session in (self.node.router.participants.values()):
            for track in session.tracks.values():
                if track.sid == track_sid:
                    return track
        return None

    def wanted_for(self, room: Room, participant: Participant) -> list[Wanted]:
        out: list[Wanted] = []
        if not participant.permissions.can_subscribe:
            return out  # revoked (the participants API): the next offer takes every track away
        for other in room.participants.values():
            if other is participant or other.closed:
                continue
            for track in sources(other.tracks.values()):
                desc = self.description(track.sid)
                if desc is not None:
                    out.append(Wanted(track.sid, other.identity, desc))
        return out

    def sessions_in(self, room_id: str) -> list[RtcSession]:
        return [s for s in self.by_sid.values() if s.room_id == room_id and not s.ended]

    def tell_room(self, room_id: str, method: str, params: dict[str, Any]) -> None:
        """A notification to every WebSocket participant of the room (a recording's status)."""
        for s in self.sessions_in(room_id):
            s.notify(method, params)

    def resync_room(self, room: Room) -> None:
        for s in self.sessions_in(room.id):
            s.schedule_sync()

    def forget(self, session: RtcSession) -> None:
        self.resumption.revoke(session)
        p = session.participant
        if p is not None and self.by_sid.get(p.sid) is session:
            del self.by_sid[p.sid]
            self.publisher_roles.pop(p.sid, None)
            for track in p.tracks.values():
                self.published.pop(track.sid, None)

    # -- room events -------------------------------------------------------------------------------
    def _tell_others(self, room: Room, participant: Participant | None, method: str, params: dict[str, Any]) -> None:
        for s in self.sessions_in(room.id):
            if s.participant is not participant and s.participant is not None:
                s.notify(method, params)

    def on_event(self, event: RoomEvent) -> None:
        room, p = event.room, event.participant
        kind = event.kind
        if kind is RoomEventKind.JOINED and p is not None:
            self._tell_others(room, p, "participant_joined", {"participant": _participant_view(p)})
        elif kind is RoomEventKind.PUBLISHED and p is not None:
            for track in sources(event.tracks):
                ext_id = track.ext_ids.get(HDREXT_AUDIO_LEVEL)
                if track.kind == "audio" and ext_id is not None and track.level_meter is None:
                    track.level_meter = LevelMeter(ext_id)
                self._tell_others(
                    room, p, "track_published", {"participant": p.identity, "track": _track_view(track)}
                )
            self.resync_room(room)
        elif kind is RoomEventKind.UNPUBLISHED and p is not None:
            for track in sources(event.tracks):
                self._tell_others(room, p, "track_unpublished", {"participant": p.identity, "track": track.sid})
            self.resync_room(room)
        elif kind is RoomEventKind.MUTED and p is not None:
            for track in sources(event.tracks):
                self._tell_others(
                    room, p, "track_muted", {"participant": p.identity, "track": track.sid, "muted": track.muted}
                )
        elif kind is RoomEventKind.UPDATED and p is not None:
            view = _participant_view(p)
            view["permissions"] = p.permissions.describe()
            for s in self.sessions_in(room.id):
                s.notify("participant_updated", {"participant": view})
            own = self.by_sid.get(p.sid)
            if own is not None:
                own.on_permissions()
            self.resync_room(room)
        elif kind is RoomEventKind.LEFT and p is not None:
            reason = event.reason.value if event.reason else "left"
            self._tell_others(
                room, p, "participant_left", {"participant": p.identity, "sid": p.sid, "reason": reason}
            )
            own = self.by_sid.get(p.sid)
            if own is not None:
                if event.reason is CloseReason.REMOVED:
                    own.notify("room_closed", {"room": room.id, "reason": reason})
                elif event.reason is not CloseReason.LEFT:
                    own.notify("disconnected", {"reason": reason, "detail": _disconnect_detail(event.reason)})
                own.end(CLOSE_ENDED if event.reason is not CloseReason.LEFT else CLOSE_LEFT, reason)
                self.forget(own)
            self.resync_room(room)
        elif kind is RoomEventKind.ROOM_CLOSED:
            reason = self._room_closed_reason(event.reason)
            for member in event.participants:
                own = self.by_sid.get(member.sid)
                if own is not None:
                    own.notify("room_closed", {"room": room.id, "reason": reason})
                    own.end(CLOSE_ENDED, reason)
                    self.forget(own)

    def _room_closed_reason(self, reason: CloseReason | None) -> str:
        if self.node.revoked and reason is CloseReason.DRAINED:
            return "node_revoked"
        return reason.value if reason is not None else "room_closed"

    # -- periodic: active speakers, connection quality, node state ---------------------------------------------------
    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(SPEAKERS_INTERVAL_S)
            try:
                self.tick(clock.now_ms())
            except Exception:
                log.exception("signaling tick failed")

    def tell_publisher(self, room: Room, dt: DownTrack | None, now_ms: int) -> None:
        """``subscribed_layers`` to the publisher of what ``dt`` receives, if it is a WebSocket
        participant and the needs of its layers changed (the others wait for the tick)."""
        source = dt.source if dt is not None else None
        owner = room.participants.get(source.owner) if source is not None else None
        session = self.by_sid.get(owner.sid) if owner is not None else None
        if session is not None and owner is not None and not session.ended and not owner.closed:
            session.layers.tell(owner, session.notify, now_ms)

    def tick(self, now_ms: int) -> None:
        for session in list(self.by_sid.values()):
            if not session.ended:
                check_offer(session, now_ms)
                if session.participant is not None and not session.participant.closed:
                    session.layers.tell(session.participant, session.notify, now_ms)
        rooms = {s.room_id for s in self.by_sid.values() if not s.ended}
        for room_id in rooms:
            room = self.node.rooms.rooms.get(room_id)
            if room is None:
                continue
            levels = [
                Speaker(p.identity, t.sid, t.level_meter.current(now_ms))
                for p in room.participants.values()
                for t in p.tracks.values()
                if isinstance(t.level_meter, LevelMeter) and not t.muted
            ]
            self.qualities.tick(room, self.sessions_in(room_id), now_ms)
            speakers = rank(levels)
            key = tuple(f"{s.identity}/{s.track_sid}" for s in speakers)
            if key != self._last_speakers.get(room_id, ()):
                self._last_speakers[room_id] = key
                params = {"speakers": [s.describe() for s in speakers]}
                for s in self.sessions_in(room_id):
                    s.notify("active_speakers", params)
        for room_id in [r for r in self._last_speakers if r not in rooms]:
            del self._last_speakers[room_id]
        self.qualities.forget_rooms(rooms)
        state = "node_revoked" if self.node.revoked else "draining" if self.node.draining else ""
        if state != self._told_draining:
            self._told_draining = state
            if state:
                for s in list(self.by_sid.values()):
                    s.notify("node_draining", {"reason": state})


def _disconnect_detail(reason: CloseReason | None) -> str:
    if reason is CloseReason.REPLACED:
        return "a newer session with the same identity joined the room"
    if reason is CloseReason.CONSENT_EXPIRED:
        return "the media transport stopped answering connectivity checks"
    return "the media session ended"
