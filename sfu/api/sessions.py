"""WHIP and WHEP sessions: SDP offer in, answer out, participant wired into the router.

No HTTP here: the handlers in ``sfu.api.http`` authenticate and call these functions.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace

from levelchat.errors import ApiError
from levelchat.tokens import Claims
from sfu.packet.twcc import TWCC_URI
from sfu.routing.participant import Participant, ParticipantKind, Permissions
from sfu.routing.rooms import Room
from sfu.routing.router import DownTrackSpec, Router, TrackSpec, TransportSpec
from sfu.routing.simulcast import RidRestrictions, sources
from sfu.routing.track import TrackCodec
from sfu.signaling import sdp
from sfu.signaling.codecs import CodecPolicy, codecs_match, variant_keys
from sfu.signaling.limits import OfferLimits
from sfu.transport.dtls import DtlsRole
from sfu.transport.peer import CloseReason, PeerTransport

MAX_SDP_BYTES = 64 * 1024
REMB_FB = "goog-remb"


def takes_remb(track: sdp.PublishTrack) -> bool:
    """The answer to this video section carries ``a=rtcp-fb:... goog-remb``."""
    return track.kind is sdp.MediaKind.VIDEO and any(REMB_FB in c.rtcp_fb for c in track.codecs)


def takes_nack(track: sdp.PublishTrack) -> bool:
    """The answer to this video section carries ``a=rtcp-fb:... nack``: the node NACKs upstream."""
    return track.kind is sdp.MediaKind.VIDEO and any("nack" in c.rtcp_fb for c in track.codecs if not c.is_rtx)


def rtx_apt(track: sdp.PublishTrack) -> dict[int, int]:
    """The section's RTX payload types and what each repairs (apt=)."""
    return {c.pt: c.apt for c in track.codecs if c.is_rtx and c.apt is not None}


def ssrc_track_specs(track: sdp.PublishTrack) -> list[TrackSpec]:
    """One TrackSpec per media SSRC the offer signals for a negotiated section."""
    codecs = _media_codecs(track)
    return [_track_spec(track, ssrc, codecs, rtx_ssrc=track.rtx_ssrcs.get(ssrc)) for ssrc in track.ssrcs]


def _media_codecs(track: sdp.PublishTrack) -> list[TrackCodec]:
    return [TrackCodec(c.name, c.clock_rate, c.pt, variant_keys(c)) for c in track.codecs if not c.is_rtx]


def _track_spec(
    track: sdp.PublishTrack,
    ssrc: int,
    codecs: list[TrackCodec],
    *,
    rtx_ssrc: int | None = None,
    rid: str | None = None,
    rid_params: str = "",
) -> TrackSpec:
    """The TrackSpec of one SSRC (or one simulcast layer) of a negotiated section."""
    return TrackSpec(
        kind=track.kind.value,
        mid=track.mid,
        ssrc=ssrc,
        codecs=codecs,
        ext_ids=dict(track.header_extensions),
        rtx_ssrc=rtx_ssrc,
        rid=rid,
        rid_params=rid_params,
        remb=takes_remb(track),
        nack=takes_nack(track),
        rtx_apt=rtx_apt(track),
    )


def publish_track_specs(offer: sdp.SessionDesc, negotiation: sdp.PublishNegotiation, placeholder: int = 0) -> list[TrackSpec]:
    """Every track a publish offer sends: one per simulcast layer (rid; its SSRC comes with its
    first packets, so it gets a negative placeholder below ``placeholder``) and one per signalled
    media SSRC.  ``ApiError`` (``bad_request``) for an a=rid line with bad restrictions."""
    specs: list[TrackSpec] = []
    for track in negotiation.tracks:
        codecs = _media_codecs(track)
        section = offer.section(track.mid)
        rid_params = {r.id: r.params for r in section.rids} if section is not None else {}
        for rid in track.rids:
            placeholder -= 1
            try:
                RidRestrictions.parse(rid_params.get(rid, ""))
            except ValueError as exc:
                raise ApiError("bad_request", f"mid {track.mid!r}: {exc}") from None
            specs.append(_track_spec(track, placeholder, codecs, rid=rid, rid_params=rid_params.get(rid, "")))
        specs.extend(ssrc_track_specs(track))
    return specs


def foreign_ext_ids(offer: sdp.SessionDesc) -> frozenset[int]:
    """The header extension ids a subscriber's offer uses, in any section, for anything but
    transport-wide-cc (``PeerTransport.foreign_ext_ids``): receivers such as aiortc map ids
    across the whole BUNDLE, whatever the answer to one section says."""
    return frozenset(i for m in offer.media for uri, i in m.header_extensions.items() if uri != TWCC_URI)


def new_etag() -> str:
    """A fresh strong entity-tag for a session's ICE session (RFC 9110 §8.8.3)."""
    return '"' + secrets.token_hex(8) + '"'


#: random bits in a session id: the session URL is a capability (``MediaSession``)
SESSION_ID_BITS = 128


def new_session_id() -> str:
    """A WHIP/WHEP session id: 128 random bits as 32 hex digits, unrelated to the participant's
    public ``sid`` (which room info and the signaling events show to every member)."""
    return secrets.token_hex(SESSION_ID_BITS // 8)


@dataclass(frozen=True)
class Owner:
    """Who may act on a session's URL (``DELETE``, ``PATCH``, the layer choice): the identity
    (token ``sub``) that created it, or any token with ``room:admin`` for the room.  A session made
    with a token that has no ``sub`` is *anonymous* (its participant got a random identity): then
    the URL itself (128 random bits, shown only to its creator and to admins) is the capability,
    presented with a token that could have created it: no ``sub``, valid for the room, with
    ``scopes`` (the creating request's)."""

    identity: str
    anonymous: bool
    scopes: frozenset[str]
    #: the node's own (the self-check's probes): only ``room:admin`` acts on it
    internal: bool = False

    @classmethod
    def of(cls, claims: Claims, identity: str, scopes: tuple[str, ...]) -> Owner:
        return cls(identity=identity, anonymous=claims.identity is None, scopes=frozenset(scopes))

    @classmethod
    def node(cls, identity: str) -> Owner:
        return cls(identity=identity, anonymous=False, scopes=frozenset(), internal=True)

    def permits(self, claims: Claims) -> bool:
        """``claims`` (already checked for the room) may act on the session."""
        if "room:admin" in claims.scopes:
            return True
        if self.internal:
            return False
        if self.anonymous:
            return claims.identity is None and self.scopes <= claims.scopes
        return claims.identity == self.identity


@dataclass
class MediaSession:
    """One WHIP or WHEP resource (``/whip/{room}/{id}``)."""

    id: str
    room_id: str
    participant: Participant
    etag: str
    owner: Owner
    #: tracks the subscriber's offer could not carry: (kind, catalogue code, detail)
    refused: tuple[tuple[str, str, str], ...] = ()
    #: the bundle's first section (kind, mid): where an ICE restart's answer puts the candidates
    bundle_tag: tuple[str, str] = ("video", "0")


class SessionService:
    def __init__(
        self,
        router: Router,
        *,
        advertised_ips: tuple[str, ...],
        preferred_role: sdp.Setup = sdp.Setup.PASSIVE,
        limits: OfferLimits | None = None,
    ) -> None:
        self.router = router
        #: what one offer and one participant may declare (WHIP, WHEP and the WebSocket ``publish``)
        self.limits = limits or OfferLimits()
        #: the node's candidate addresses (IPv4 first: its candidates get the higher priority)
        self.advertised_ips = advertised_ips
        self.preferred_role = preferred_role
        self.sessions: dict[str, MediaSession] = {}
        #: session id by participant sid
        self.by_participant: dict[str, str] = {}
        #: the negotiated description of each published track, by track sid (for subscribers)
        self.published: dict[str, sdp.TrackDescription] = {}
        #: descriptions of tracks published elsewhere (the signaling WebSocket's), for WHEP viewers
        self.other_descriptions: list[Mapping[str, sdp.TrackDescription]] = []

    # -- helpers ---------------------------------------------------------------------------------
    def parse_offer(self, text: str) -> sdp.SessionDesc:
        """The parsed offer, within the node's limits (``bad_request`` otherwise)."""
        if len(text) > MAX_SDP_BYTES:
            raise ApiError("bad_request", f"SDP offer is larger than {MAX_SDP_BYTES} bytes")
        try:
            offer = sdp.parse_sdp(text)
        except ValueError as exc:
            raise ApiError("bad_request", f"invalid SDP offer: {exc}") from None
        self.limits.check_offer(offer)
        return offer

    def _transport(self, offer: sdp.SessionDesc, now_ms: int) -> tuple[PeerTransport, sdp.Setup]:
        ufrag, _pwd, fingerprints, setup = offer.transport
        answered = sdp.answer_setup(setup, self.preferred_role)
        role = DtlsRole.SERVER if answered is sdp.Setup.PASSIVE else DtlsRole.CLIENT
        spec = TransportSpec(
            dtls_role=role,
            remote_ufrag=ufrag,
            remote_fingerprints=[(f.algorithm, f.value) for f in fingerprints],
        )
        return self.router.new_transport(spec, now_ms), answered

    def _local(self, transport: PeerTransport, role: sdp.Setup) -> sdp.LocalParams:
        return sdp.LocalParams(
            ice_ufrag=transport.ice.ufrag,
            ice_pwd=transport.ice.pwd,
            fingerprint=self.router.certificate.fingerprint("sha-256"),
            candidates=self.advertised,
            tcp_candidates=self.advertised_tcp,
            dtls_role=role,
        )

    def _register(self, room: Room, participant: Participant, offer: sdp.SessionDesc, owner: Owner) -> MediaSession:
        tag = offer.bundle_tag
        session = MediaSession(
            id=new_session_id(), room_id=room.id, participant=participant, etag=new_etag(), owner=owner
        )
        if tag is not None:
            session.bundle_tag = (tag.kind.value, tag.mid)
        self.sessions[session.id] = session
        self.by_participant[participant.sid] = session.id
        return session

    # -- WHIP ------------------------------------------------------------------------------------
    def publish(
        self, room: Room, owner: Owner, name: str | None, offer_text: str, now_ms: int
    ) -> tuple[MediaSession, str]:
        identity = owner.identity
        offer = self.parse_offer(offer_text)
        negotiation = sdp.negotiate_publish(
            offer, CodecPolicy.parse(room.policy.codecs), transport_cc=self.router.publisher_transport_cc
        )
        if not negotiation.tracks:
            raise ApiError("bad_request", "the offer sends no audio or video")
        participant = Participant(
            identity=identity,
            room_id=room.id,
            kind=ParticipantKind.WHIP,
            name=name,
            permissions=Permissions(can_publish=True, can_subscribe=False, can_publish_data=False),
        )
        specs = publish_track_specs(offer, negotiation)
        self.limits.check_tracks(len(specs))
        if not specs:
            raise ApiError(
                "bad_request", "the offer signals no SSRC for its media (a=ssrc lines, or a=rid with a=simulcast)"
            )
        self.router.admit(room, participant, now_ms)
        transport, role = self._transport(offer, now_ms)
        self.router.attach_publisher(room, participant, transport, specs, now_ms)
        by_mid = {t.mid: t for t in negotiation.tracks}
        for published in participant.tracks.values():
            self.published[published.sid] = sdp.TrackDescription.from_publish(
                published.sid, identity, by_mid[published.mid]
            )
        answer = sdp.build_answer(offer, negotiation, self._local(transport, role))
        return self._register(room, participant, offer, owner), answer

    # -- WHEP ------------------------------------------------------------------------------------
    def subscribe(
        self, room: Room, owner: Owner, target: str | None, offer_text: str, now_ms: int
    ) -> tuple[MediaSession, str]:
        identity = owner.identity
        offer = self.parse_offer(offer_text)
        source = self.router.current_publisher(room, target)
        if source is None:
            who = f"participant {target!r}" if target else "any participant"
            raise ApiError("not_found", f"room {room.id!r} has no media published by {who}")
        policy = CodecPolicy.parse(room.policy.codecs)
        described = [self.description(t.sid) for t in sources(source.tracks.values())]  # one per simulcast group
        outgoing = [
            sdp.OutgoingTrack(
                track=self._with_room_codecs(d, offer, policy),
                ssrc=random.getrandbits(32) or 1,
                # video gets an RTX stream when the viewer offers RTX: the node's probes go there
                rtx_ssrc=(random.getrandbits(32) or 1) if d.kind is sdp.MediaKind.VIDEO else None,
            )
            for d in described
            if d is not None
        ]
        negotiation = sdp.negotiate_subscribe(offer, outgoing, policy, cname=f"levelchat-{identity}")
        if not negotiation.tracks:
            raise ApiError("bad_request", "the offer has no receiving audio or video section")
        participant = Participant(
            identity=identity,
            room_id=room.id,
            kind=ParticipantKind.WHEP,
            target_identity=target,
            permissions=Permissions(can_publish=False, can_subscribe=True, can_publish_data=False),
        )
        specs = [
            DownTrackSpec(
                kind=t.kind.value,
                mid=t.mid,
                ssrc=t.ssrc,
                out_payload_types=t.out_payload_types,
                out_ext_ids=dict(t.header_extensions),
                rtx_ssrc=t.rtx_ssrc,
                rtx_pt=t.mappings[0].subscriber_rtx_pt if t.mappings else None,
            )
            for t in negotiation.tracks
        ]
        self.router.admit(room, participant, now_ms)
        transport, role = self._transport(offer, now_ms)
        transport.foreign_ext_ids = foreign_ext_ids(offer)
        self.router.attach_subscriber(room, participant, transport, specs, now_ms)
        answer = sdp.build_answer(offer, negotiation, self._local(transport, role))
        session = self._register(room, participant, offer, owner)
        session.refused = tuple((r.kind.value, r.code, r.detail) for r in negotiation.refused)
        return session, answer

    def description(self, track_sid: str) -> sdp.TrackDescription | None:
        """The negotiated description of a published track, whichever API published it."""
        found = self.published.get(track_sid)
        for other in self.other_descriptions:
            if found is not None:
                break
            found = other.get(track_sid)
        return found

    @staticmethod
    def _with_room_codecs(
        track: sdp.TrackDescription, offer: sdp.SessionDesc, policy: CodecPolicy
    ) -> sdp.TrackDescription:
        """The track's codecs, then the other room codecs of its kind that the subscriber offers.

        The first stays the codec being sent; the others are answered too, so the subscriber can
        follow a later publisher (a rejoin, the next publisher of the room) that sends one of them.
        """
        kind = track.kind
        have = list(track.codecs)
        used = {c.pt for c in have}
        free = (pt for pt in range(96, 128) if pt not in used)
        offered = [c for m in offer.media if m.kind is kind for c in m.codecs if c.is_primary]
        for codec in policy.select(offered):
            if not codec.is_primary or any(codecs_match(codec, c) for c in have):
                continue
            pt = next(free, None)
            if pt is None:
                break
            have.append(replace(codec, pt=pt, rtx_pt=None))
        return replace(track, codecs=tuple(have))

    # -- the session URL: a capability of its creator ------------------------------------------
    def owned(self, session_id: str, room_id: str, kind: ParticipantKind, claims: Claims) -> MediaSession:
        """The ``kind`` (WHIP or WHEP) session ``session_id`` of ``room_id``, when ``claims`` (already
        checked for the room) may act on it (``Owner.permits``).  Otherwise ``not_found``, the very
        answer an id that never existed gets, so nobody learns or probes others' session ids."""
        session = self.sessions.get(session_id)
        if (
            session is None
            or session.room_id != room_id
            or session.participant.kind is not kind
            or not session.owner.permits(claims)
        ):
            raise ApiError("not_found", f"no {kind.value.upper()} session {session_id!r} in room {room_id!r}")
        return session

    def session_of(self, participant: Participant) -> MediaSession | None:
        """The WHIP/WHEP session of ``participant`` (None for a signaling one)."""
        session_id = self.by_participant.get(participant.sid)
        return self.sessions.get(session_id) if session_id is not None else None

    # -- simulcast layer choice -------------------------------------------------------------------
    def set_layer(self, session: MediaSession, rid: str | None, now_ms: int) -> dict[str, object]:
        """The WHEP session's video receives simulcast layer ``rid`` (None: the highest sending)."""
        participant = session.participant
        video = [dt for dt in participant.downtracks if dt.kind == "video"]
        dt = next((d for d in video if d.source is not None and d.source.group is not None), None)
        if dt is None:
            raise ApiError("bad_request", "this session receives no simulcast video: it has no layers to choose")
        return self.router.set_layer(participant, dt, rid, now_ms)

    @property
    def advertised(self) -> tuple[tuple[str, int], ...]:
        """The node's UDP host candidates (address, media port): one per advertised address."""
        port = self.router.port.port
        return tuple((ip, port) for ip in self.advertised_ips)

    @property
    def advertised_tcp(self) -> tuple[tuple[str, int], ...]:
        """The node's passive ICE-TCP host candidates (address, TCP port), if it listens."""
        tcp_port = self.router.port.tcp_port
        return tuple((ip, tcp_port) for ip in self.advertised_ips) if tcp_port else ()

    # -- ending ----------------------------------------------------------------------------------
    def end(self, session: MediaSession, now_ms: int) -> None:
        self.router.leave(session.participant, CloseReason.LEFT, now_ms)
        self.forget(session.participant)

    def forget(self, participant: Participant) -> None:
        session_id = self.by_participant.pop(participant.sid, None)
        if session_id is not None:
            self.sessions.pop(session_id, None)
        for track in participant.tracks.values():
            self.published.pop(track.sid, None)

    def expire(self) -> None:
        """Drop sessions whose participant is gone (transport closed, replaced, room closed)."""
        for sid in [sid for sid, s in self.sessions.items() if s.participant.closed]:
            self.forget(self.sessions[sid].participant)
