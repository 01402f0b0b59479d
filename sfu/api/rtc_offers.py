"""The server-offered subscriber transport of a signaling session: its m-sections over time.

One section per track the participant ever received, in the order they came; a section whose
track went away stays in later offers as ``a=inactive`` (JSEP never removes m-lines) and its mid
is never reused.  One offer is outstanding at a time: ``plan`` makes it, ``take_answer`` reads the
client's answer; changes in between wait for the next ``plan``.  No I/O and no router here.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, replace

from sfu.signaling import sdp
from sfu.signaling.codecs import CodecPolicy

PROTO = "UDP/TLS/RTP/SAVPF"


class SectionState(enum.Enum):
    OFFERED = "offered"  # in the outstanding offer, not answered yet
    ACTIVE = "active"  # answered: media flows
    INACTIVE = "inactive"  # its track went away (or the client refused it): kept as a=inactive


@dataclass
class Section:
    mid: str
    track_sid: str
    publisher: str  # the publishing participant's identity
    outgoing: sdp.OutgoingTrack
    state: SectionState = SectionState.OFFERED

    def describe(self) -> dict[str, object]:
        return {
            "mid": self.mid,
            "track": self.track_sid,
            "participant": self.publisher,
            "kind": self.outgoing.track.kind.value,
        }


@dataclass(frozen=True)
class Wanted:
    """A track the participant should receive."""

    track_sid: str
    publisher: str
    description: sdp.TrackDescription


@dataclass(frozen=True)
class Offer:
    plan: sdp.OfferPlan
    version: int
    removed: tuple[Section, ...]  # sections that went inactive with this offer

    def describe(self, sections: list[Section]) -> dict[str, object]:
        return {
            "sdp": self.plan.sdp,
            "version": self.version,
            "tracks": [s.describe() for s in sections if s.state is not SectionState.INACTIVE],
        }


@dataclass(frozen=True)
class AnswerOutcome:
    delivered: tuple[tuple[Section, sdp.SubscribeTrack], ...]  # newly flowing sections
    refused: tuple[sdp.TrackRefusal, ...]
    remote_ufrag: str
    remote_fingerprints: tuple[tuple[str, str], ...]


class SubscriberNegotiator:
    def __init__(self, policy: CodecPolicy, cname: str) -> None:
        self.policy = policy
        self.cname = cname
        self.sections: list[Section] = []
        self.pending: Offer | None = None
        self.version = 0
        self.session_id = random.getrandbits(62) or 1
        #: tracks the client declined (no codec in common): not offered again
        self.declined: set[str] = set()
        self._next_mid = 0

    def active_sids(self) -> set[str]:
        return {s.track_sid for s in self.sections if s.state is not SectionState.INACTIVE}

    def plan(self, wanted: list[Wanted], local: sdp.LocalParams, *, force: bool = False) -> Offer | None:
        """A new offer when what the participant should receive changed (or ``force``: an ICE
        restart), else None.

        Must not be called while an offer is outstanding."""
        if self.pending is not None:
            raise ValueError("an offer is already outstanding")
        want = {w.track_sid: w for w in wanted}
        removed = []
        for section in self.sections:
            if section.state is not SectionState.INACTIVE and section.track_sid not in want:
                section.state = SectionState.INACTIVE
                removed.append(section)
        have = self.active_sids()
        added = [w for w in wanted if w.track_sid not in have and w.track_sid not in self.declined]
        if not removed and not added and not force:
            return None
        for w in added:
            self.sections.append(
                Section(
                    mid=str(self._next_mid),
                    track_sid=w.track_sid,
                    publisher=w.publisher,
                    # video gets an RTX stream: the node's bandwidth probes go there as padding
                    outgoing=sdp.OutgoingTrack(
                        w.description,
                        ssrc=random.getrandbits(32) or 1,
                        rtx_ssrc=(random.getrandbits(32) or 1) if w.description.kind is sdp.MediaKind.VIDEO else None,
                    ),
                )
            )
            self._next_mid += 1
        self.version += 1
        local = replace(local, session_id=self.session_id, session_version=self.version)
        plan = self._render(local)
        self.pending = Offer(plan, self.version, tuple(removed))
        return self.pending

    def _render(self, local: sdp.LocalParams) -> sdp.OfferPlan:
        mids = [s.mid for s in self.sections]
        base = sdp.build_offer(
            [s.outgoing for s in self.sections], self.policy, local, cname=self.cname, mids=mids
        )
        answered = tuple(
            replace(a, direction=sdp.Direction.INACTIVE, send=None) if s.state is SectionState.INACTIVE else a
            for a, s in zip(base.sections, self.sections, strict=True)
        )
        text = sdp._render(
            local,
            sdp.Setup.ACTPASS,
            [(None, a, PROTO) for a in answered],
            allow_mixed=False,
            bundle_order=mids,
            rtcp_rsize={m: True for m in mids},
        )
        return sdp.OfferPlan(text, answered, base.tracks)

    def take_answer(self, answer_text: str) -> AnswerOutcome:
        """Apply the client's answer to the outstanding offer (ValueError when it does not fit)."""
        offer = self.pending
        if offer is None:
            raise ValueError("no offer is outstanding")
        negotiation = sdp.apply_answer(offer.plan, answer_text)
        desc = sdp.parse_sdp(answer_text)
        ufrag, _pwd, fingerprints, setup = desc.transport
        if setup is not sdp.Setup.ACTIVE:
            raise ValueError(
                f"the answer must say a=setup:active (the node is the DTLS server), not {setup.value if setup else 'nothing'}"
            )
        by_mid = {s.mid: s for s in self.sections}
        delivered = []
        for track in negotiation.tracks:
            section = by_mid[track.mid]
            if section.state is SectionState.OFFERED:
                section.state = SectionState.ACTIVE
                delivered.append((section, track))
        refused_mids = {a.mid for a in negotiation.sections if a.outcome is sdp.SectionOutcome.REJECTED}
        for section in self.sections:
            if section.state is SectionState.OFFERED and section.mid in refused_mids:
                section.state = SectionState.INACTIVE
                self.declined.add(section.track_sid)
        self.pending = None
        return AnswerOutcome(
            tuple(delivered),
            negotiation.refused,
            ufrag,
            tuple((f.algorithm, f.value) for f in fingerprints),
        )
