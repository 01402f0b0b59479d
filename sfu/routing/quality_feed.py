"""Samples of a participant's link for its ``QualityScorer`` (sfu.routing.quality), from what
the node measures anyway; the participant's once-a-second tick (``Router._tick_participant``)
calls ``LinkMonitor.update``, never the packet path.

* Publisher leg: each published stream's loss over the second (its ``ReceiveStats``: expected
  from the highest sequence number against packets received, retransmissions that filled a hole
  included) and its interarrival jitter (RFC 3550 A.8).
* Subscriber leg: the receiver reports the client sends about the node's streams to it
  (``on_report_block``: loss on this leg only, and jitter, the worst since the last sample), and the
  round trip from their LSR/DLSR against the sender reports the node sent
  (``on_sender_report``; RFC 3550 6.4.1); the subscriber's bandwidth estimate
  (``TransportSender.estimate_bps``) against what its subscriptions want (each video
  subscription's best layer it may take, at that layer's measured rate).
* Silence: since the client's transport was last heard (``last_consent_ms``: authenticated
  media, RTCP or ICE checks) while up.

Bounded: a snapshot per published stream and per stream to the subscriber (pruned to the
participant's tracks and subscriptions), at most
``MAX_SR_REMEMBERED`` sender reports remembered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from sfu.routing.quality import LinkSample, Quality, QualityConfig, QualityScorer
from sfu.transport.peer import TransportState

if TYPE_CHECKING:
    from sfu.packet.rtcp import ReportBlock
    from sfu.routing.downtrack import DownTrack
    from sfu.routing.track import PublishedTrack
    from sfu.transport.peer import PeerTransport

#: a stream whose window expected fewer packets than this is not judged for loss
MIN_PACKETS = 20
#: sender reports whose send time is remembered for the round trip (oldest forgotten first)
MAX_SR_REMEMBERED = 256


class Linked(Protocol):
    """What is read of a participant (``sfu.routing.participant.Participant``)."""

    @property
    def tracks(self) -> Mapping[int, PublishedTrack]: ...
    @property
    def downtracks(self) -> Sequence[DownTrack]: ...
    @property
    def publisher(self) -> PeerTransport | None: ...
    @property
    def subscriber(self) -> PeerTransport | None: ...
    @property
    def link(self) -> LinkMonitor: ...


class LinkMonitor:
    __slots__ = ("scorer", "_seen", "_rr_seen", "_rr_loss", "_rr_jitter_ms", "rtt_ms", "_sr_sent", "last")

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.scorer = QualityScorer(config)
        #: per published SSRC: (expected, received) at the last sample
        self._seen: dict[int, tuple[int, int]] = {}
        #: per stream to the subscriber: (highest seq, cumulative lost, packets sent) at its last report
        self._rr_seen: dict[int, tuple[int, int, int]] = {}
        self._rr_loss: float | None = None
        self._rr_jitter_ms = 0.0
        self.rtt_ms: float | None = None
        self._sr_sent: dict[int, int] = {}  # middle 32 bits of an SR's NTP time -> sent at (ms)
        #: the last sample (the participants API shows its figures)
        self.last = LinkSample()

    @property
    def quality(self) -> Quality:
        return self.scorer.quality

    # -- subscriber leg: RTCP ------------------------------------------------------------------
    def on_sender_report(self, ntp_timestamp: int, now_ms: int) -> None:
        sent = self._sr_sent
        if len(sent) >= MAX_SR_REMEMBERED:
            del sent[next(iter(sent))]
        sent[(ntp_timestamp >> 16) & 0xFFFFFFFF] = now_ms

    def on_report_block(self, block: ReportBlock, clock_rate: int, packets_sent: int, now_ms: int) -> None:
        """A receiver report block from the subscriber about one of the node's streams to it,
        with how many packets the node has sent on that stream (retransmissions not counted).

        Loss on the node-to-subscriber leg only: what the subscriber received since its previous
        report (its highest sequence number's advance less its cumulative loss's) against what
        the node sent meanwhile; the report's own ``fraction_lost`` would count the holes the
        publisher's leg left in the stream too, and rate every viewer of a lossy publisher poor."""
        before = self._rr_seen.get(block.ssrc)
        self._rr_seen[block.ssrc] = (block.highest_seq, block.cumulative_lost, packets_sent)
        if before is not None:
            sent = packets_sent - before[2]
            if sent >= MIN_PACKETS:
                advanced = (block.highest_seq - before[0]) & 0xFFFFFFFF
                received = advanced - (block.cumulative_lost - before[1])
                loss = min(1.0, max(0.0, 1 - received / sent)) if advanced < 0x80000000 else 0.0
                self._rr_loss = loss if self._rr_loss is None else max(self._rr_loss, loss)
        if clock_rate > 0:
            self._rr_jitter_ms = max(self._rr_jitter_ms, block.jitter * 1000 / clock_rate)
        if block.lsr:
            sent_ms = self._sr_sent.get(block.lsr)
            if sent_ms is not None:
                rtt = now_ms - sent_ms - block.dlsr * 1000 / 65536
                if 0 <= rtt < 60_000:
                    self.rtt_ms = rtt if self.rtt_ms is None else 0.75 * self.rtt_ms + 0.25 * rtt

    # -- once a second -------------------------------------------------------------------------
    def update(self, participant: Linked, now_ms: int) -> Quality:
        self.last = self.sample(participant, now_ms)
        return self.scorer.update(self.last, now_ms)

    def sample(self, participant: Linked, now_ms: int) -> LinkSample:
        closed, silent = False, 0
        for t in (participant.publisher, participant.subscriber):
            if t is None:
                continue
            if t.state is TransportState.CLOSED:
                closed = True
            elif t.state is not TransportState.NEW:
                silent = max(silent, now_ms - t.last_consent_ms)
        loss, jitter = self._published(participant.tracks.values())
        if self._rr_loss is not None:
            loss = self._rr_loss if loss is None else max(loss, self._rr_loss)
        jitter = max(jitter, self._rr_jitter_ms)
        self._rr_loss, self._rr_jitter_ms = None, 0.0
        if len(self._rr_seen) > len(participant.downtracks):
            live = {dt.ssrc for dt in participant.downtracks}
            self._rr_seen = {ssrc: v for ssrc, v in self._rr_seen.items() if ssrc in live}
        return LinkSample(loss=loss, jitter_ms=jitter, rtt_ms=self.rtt_ms, bandwidth=_bandwidth(participant, now_ms),
                          silent_ms=silent, closed=closed)

    def _published(self, tracks: Iterable[PublishedTrack]) -> tuple[float | None, float]:
        worst: float | None = None
        jitter = 0.0
        seen: dict[int, tuple[int, int]] = {}
        for track in tracks:
            st = track.stats
            if not st.started or track.muted:
                continue
            expected, received = st.extended_max - st.base_seq + 1, st.packets
            before = self._seen.get(track.ssrc)
            seen[track.ssrc] = (expected, received)
            jitter = max(jitter, (st.jitter_q4 >> 4) * 1000 / st.clock_rate)
            if before is None:
                continue
            window = expected - before[0]
            if window < MIN_PACKETS:
                continue
            lost = max(0.0, 1 - (received - before[1]) / window)
            worst = lost if worst is None else max(worst, lost)
        self._seen = seen
        return worst, jitter


def _best_rate(dt: DownTrack) -> int:
    """The measured rate of the best layer ``dt`` may take (its source's, without simulcast)."""
    source = dt.source
    if source is None:
        return 0
    group = source.group
    if group is None:
        return source.rate_bps
    best = 0
    for layer in group.ranked:  # low to high
        if group.is_active(layer) and layer.rate_bps:
            best = layer.rate_bps
        if dt.target_rid is not None and layer.rid == dt.target_rid:
            break
    return best


def _bandwidth(participant: Linked, now_ms: int) -> float | None:
    """The subscriber's estimate / what its video subscriptions want; None when either is not known."""
    transport = participant.subscriber
    sender = transport.sender if transport is not None else None
    if sender is None:
        return None
    estimate = sender.estimate_bps(now_ms)
    if estimate is None:
        return None
    want = sum(_best_rate(dt) for dt in participant.downtracks if dt.kind == "video" and not dt.paused)
    return estimate / want if want > 0 else None


def by_quality(participants: Iterable[Linked]) -> dict[Quality, int]:
    """How many participants have each rating (the ``sfu_participants_by_quality`` gauge)."""
    counts = dict.fromkeys(Quality, 0)
    for p in participants:
        counts[p.link.quality] += 1
    return counts
