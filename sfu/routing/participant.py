"""A participant in a room: the media it publishes and the streams it receives.

A participant owns up to two transports (a WHIP session publishes, a WHEP session subscribes, a
signaling session has both).  ``PublisherSink`` and ``SubscriberSink`` are what those transports
hand unprotected media to; they route RTP to tracks and answer RTCP.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from struct import Struct

from sfu.counters import DropReason, MediaCounters
from sfu.packet import rtcp
from sfu.packet.rtx import RtxOutcome, unwrap_rtx
from sfu.routing.downtrack import DownTrack
from sfu.routing.quality_feed import LinkMonitor
from sfu.routing.simulcast import learn_layer
from sfu.routing.track import PublishedTrack
from sfu.transport.peer import CloseReason, PeerTransport
from sfu.transport.sender import TransportSender

log = logging.getLogger(__name__)
_unpack_ssrc = Struct("!I").unpack_from

#: SSRC the node uses as the sender of its own RTCP (reports, PLIs, NACKs)
NODE_RTCP_SSRC = 0x4C43_0001


@dataclass
class Permissions:
    """What a participant may do, changed at runtime by the participants API
    (``sfu.api.participants``); the token's scopes give the initial values."""

    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True

    def describe(self) -> dict[str, bool]:
        return {
            "can_publish": self.can_publish,
            "can_subscribe": self.can_subscribe,
            "can_publish_data": self.can_publish_data,
        }


class ParticipantKind(enum.Enum):
    WHIP = "whip"
    WHEP = "whep"
    RTC = "rtc"


@dataclass
class Participant:
    identity: str
    room_id: str
    kind: ParticipantKind
    name: str | None = None
    sid: str = field(default_factory=lambda: "PA_" + secrets.token_hex(8))
    tracks: dict[int, PublishedTrack] = field(default_factory=dict)  # by SSRC
    downtracks: list[DownTrack] = field(default_factory=list)
    publisher: PeerTransport | None = None
    subscriber: PeerTransport | None = None
    #: WHEP: whose tracks to receive (None: the room's first publisher)
    target_identity: str | None = None
    on_gone: Callable[[Participant, CloseReason], None] | None = None
    closed: bool = False
    joined_ms: int = 0
    #: the application's free-form string (the token's ``metadata`` claim, or set by the API)
    metadata: str | None = None
    permissions: Permissions = field(default_factory=Permissions)
    #: sids of its tracks the server muted (the participants API): its own unmute is refused
    server_muted: set[str] = field(default_factory=set)
    #: its connection quality, rated once a second (sfu.routing.quality_feed)
    link: LinkMonitor = field(default_factory=LinkMonitor)
    #: the relay it came over ("": a participant of this worker's); a relayed participant is the
    #: far end's, seen here (sfu.routing.relay): no seat here, never relayed again
    relay: str = ""

    def describe(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "sid": self.sid,
            "kind": self.kind.value,
            "name": self.name,
            "tracks": [t.describe() for t in self.tracks.values()],
            "subscriptions": len(self.downtracks),
        }

    def transport_closed(self, reason: CloseReason) -> None:
        if not self.closed and self.on_gone is not None:
            self.on_gone(self, reason)

    def close(self, reason: CloseReason) -> None:
        """Release every resource: tracks, downtracks, transports."""
        if self.closed:
            return
        self.closed = True
        for dt in self.downtracks:
            dt.close()
        for track in self.tracks.values():
            track.close()  # unbinds its subscribers, frees its retransmission cache
        for transport in (self.publisher, self.subscriber):
            if transport is not None:
                transport.close(reason)

    # -- periodic RTCP -------------------------------------------------------------------------
    def send_reports(self, now_ms: int) -> None:
        if self.publisher is not None and self.tracks:
            blocks = []
            for track in self.tracks.values():
                if not track.stats.started:
                    continue
                fig = track.stats.report()
                lsr, dlsr = 0, 0
                if track.last_sr is not None:
                    ntp, _, arrived = track.last_sr
                    lsr = (ntp >> 16) & 0xFFFFFFFF
                    dlsr = ((now_ms - arrived) * 65536) // 1000
                blocks.append(
                    rtcp.ReportBlock(
                        ssrc=track.ssrc,
                        fraction_lost=fig.fraction_lost,
                        cumulative_lost=fig.cumulative_lost,
                        highest_seq=fig.highest_seq,
                        jitter=fig.jitter,
                        lsr=lsr,
                        dlsr=dlsr,
                    )
                )
            if blocks:
                self.publisher.send_rtcp(bytes(rtcp.ReceiverReport(ssrc=NODE_RTCP_SSRC, reports=blocks[:31])))
        if self.subscriber is not None:
            for dt in self.downtracks:
                src = dt.source
                if src is None or src.last_sr is None or not dt.packets_sent:
                    continue
                ntp, rtp_ts, arrived = src.last_sr
                # advance the publisher's clock pair to now, then map into the subscriber's timeline
                elapsed_ms = now_ms - arrived
                ntp_now = ntp + (elapsed_ms << 32) // 1000
                ts_now = (rtp_ts + elapsed_ms * src.codec.clock_rate // 1000) & 0xFFFFFFFF
                sr = rtcp.SenderReport(
                    ssrc=dt.ssrc,
                    ntp_timestamp=ntp_now & 0xFFFFFFFFFFFFFFFF,
                    rtp_timestamp=dt.ts.translate(ts_now),
                    packet_count=dt.packets_sent & 0xFFFFFFFF,
                    octet_count=dt.octets_sent & 0xFFFFFFFF,
                    reports=[],
                )
                if self.subscriber.send_rtcp(bytes(sr)):
                    self.link.on_sender_report(sr.ntp_timestamp, now_ms)


def _forget(transport: PeerTransport | None, ssrc: int) -> None:
    """Media of an SSRC nothing routes: its SRTP stream state is not kept (a bound on what a
    client holding its keys can make the node allocate)."""
    if transport is not None:
        transport.forget_inbound(ssrc)


class PublisherSink:
    """Receives a publishing transport's media and routes it to the participant's tracks."""

    def __init__(self, participant: Participant, counters: MediaCounters) -> None:
        self.participant = participant
        self.counters = counters
        self.by_ssrc = participant.tracks
        self.rtx_ssrcs: dict[int, PublishedTrack] = {
            t.rtx_ssrc: t for t in participant.tracks.values() if t.rtx_ssrc is not None
        }

    def on_rtp(self, cbuf: object, view: memoryview, length: int, now_ms: int) -> None:
        if length < 12:
            self.counters.drops[DropReason.RTP_MALFORMED] += 1
            return
        ssrc = _unpack_ssrc(view, 8)[0]
        track = self.by_ssrc.get(ssrc)
        if track is None:
            repaired = self.rtx_ssrcs.get(ssrc)
            if repaired is None:
                # a simulcast layer's first packets name it (rid extension): it takes this SSRC;
                # a layer's RTX stream names it with the repaired-rid extension (learnt as its RTX)
                track = learn_layer(self.by_ssrc, self.rtx_ssrcs, view, length, ssrc)
                repaired = self.rtx_ssrcs.get(ssrc) if track is None else None
            if repaired is not None:
                self._on_rtx(repaired, cbuf, view, length, now_ms)
                return
            if track is None:
                self.counters.drops[DropReason.RTP_UNKNOWN_SSRC] += 1
                _forget(self.participant.publisher, ssrc)
                return
        track.on_rtp(view, length, now_ms, cbuf)

    def _on_rtx(self, track: PublishedTrack, cbuf: object, view: memoryview, length: int, now_ms: int) -> None:
        """A packet of ``track``'s RTX stream: unwrapped in place into the packet it repairs,
        which fills its hole like a late packet; probes and packets nobody asked for are dropped."""
        start = unwrap_rtx(view, length, track.rtx_apt, max(track.ssrc, 0))
        if start < 0 or track.ssrc < 0:  # (a simulcast layer whose own SSRC is not known yet)
            reason = DropReason.RTX_PADDING if start == RtxOutcome.PADDING_ONLY else DropReason.RTX_UNKNOWN
            self.counters.drops[reason] += 1
            return
        inner = view[start:]
        if not track.on_repair(inner, length - start, now_ms, None if cbuf is None else cbuf + start):  # type: ignore[operator]
            self.counters.drops[DropReason.RTX_UNREQUESTED] += 1

    def send_nack(self, media_ssrc: int, seqs: list[int]) -> None:
        """Ask the publisher to send these packets of ``media_ssrc`` again (Generic NACK)."""
        self._to_publisher(rtcp.Nack(sender_ssrc=NODE_RTCP_SSRC, media_ssrc=media_ssrc, seqs=seqs))

    def on_rtcp(self, data: bytes, now_ms: int) -> None:
        try:
            packets = rtcp.parse_compound(data)
        except ValueError:
            self.counters.drops[DropReason.RTCP_MALFORMED] += 1
            return
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                track = self.by_ssrc.get(packet.ssrc)
                if track is not None:
                    track.last_sr = (packet.ntp_timestamp, packet.rtp_timestamp, now_ms)

    def on_connected(self, now_ms: int) -> None:
        log.info("publisher %s connected in room %s", self.participant.identity, self.participant.room_id)

    def on_closed(self, reason: CloseReason) -> None:
        self.participant.transport_closed(reason)

    def request_keyframe(self, media_ssrc: int) -> None:
        self._to_publisher(rtcp.Pli(sender_ssrc=NODE_RTCP_SSRC, media_ssrc=media_ssrc))

    def _to_publisher(self, packet: rtcp.Nack | rtcp.Pli) -> None:
        transport = self.participant.publisher
        if transport is not None:
            transport.send_rtcp(bytes(packet))


class SubscriberSink:
    """Receives a subscribing transport's RTCP: keyframe requests and NACKs."""

    def __init__(self, participant: Participant, counters: MediaCounters) -> None:
        self.participant = participant
        self.counters = counters

    def on_rtp(self, cbuf: object, view: memoryview, length: int, now_ms: int) -> None:
        self.counters.drops[DropReason.NOT_PUBLISHING] += 1
        if length >= 12:
            _forget(self.participant.subscriber, _unpack_ssrc(view, 8)[0])

    def _downtrack(self, ssrc: int) -> DownTrack | None:
        for dt in self.participant.downtracks:
            if dt.ssrc == ssrc:
                return dt
        return None

    def _sender(self) -> TransportSender | None:
        transport = self.participant.subscriber
        return transport.sender if transport is not None else None

    def on_rtcp(self, data: bytes, now_ms: int) -> None:
        try:
            packets = rtcp.parse_compound(data)
        except ValueError:
            self.counters.drops[DropReason.RTCP_MALFORMED] += 1
            return
        for packet in packets:
            if isinstance(packet, (rtcp.Pli, rtcp.Fir)):
                self.counters.pli_in += 1
                targets = [packet.media_ssrc] if isinstance(packet, rtcp.Pli) else [e.ssrc for e in packet.entries]
                for ssrc in targets:
                    dt = self._downtrack(ssrc)
                    if dt is not None and dt.source is not None:
                        dt.source.request_keyframe(now_ms)
            elif isinstance(packet, rtcp.Nack):
                self.counters.nack_in += 1
                dt = self._downtrack(packet.media_ssrc)
                if dt is not None:
                    dt.retransmit(packet.seqs, now_ms)
            elif isinstance(packet, rtcp.TransportCC):
                sender = self._sender()
                if sender is not None:
                    sender.on_transport_cc(packet, now_ms)
            elif isinstance(packet, rtcp.Remb):
                sender = self._sender()
                if sender is not None:
                    sender.on_remb(packet.bitrate, now_ms)
            elif isinstance(packet, (rtcp.ReceiverReport, rtcp.SenderReport)) and packet.reports:
                self._on_reports(packet.reports, now_ms)

    def _on_reports(self, blocks: list[rtcp.ReportBlock], now_ms: int) -> None:
        """Reception reports about the node's streams to the subscriber: its link quality."""
        by_ssrc = {dt.ssrc: dt for dt in self.participant.downtracks}
        link = self.participant.link
        for block in blocks:
            dt = by_ssrc.get(block.ssrc)
            if dt is not None and dt.source is not None:
                link.on_report_block(block, dt.source.codec.clock_rate, dt.packets_sent, now_ms)

    def on_connected(self, now_ms: int) -> None:
        log.info("subscriber %s connected in room %s (%d track(s))", self.participant.identity,
                 self.participant.room_id, len(self.participant.downtracks))
        for dt in self.participant.downtracks:
            if dt.source is not None and dt.kind == "video":
                dt.waiting_keyframe = True
                dt.source.request_keyframe(now_ms)

    def on_closed(self, reason: CloseReason) -> None:
        self.participant.transport_closed(reason)
