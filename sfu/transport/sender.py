"""The send side of one subscriber transport: its own transport-wide sequence numbers, what it
sent (``SendHistory``), and the bandwidth estimate made from the subscriber's feedback (issue 12).

``PeerTransport`` owns one (``enable_transport_cc``) when the subscriber negotiated the
transport-wide-cc header extension: every RTP packet it sends to that subscriber (each of its
downtracks, retransmissions, later padding and probes) carries the next seq under ``ext_id``,
and ``SendHistory`` records its send time and size.  The stamp is either a 2-byte overwrite in
place (the packet already carries the element at the subscriber's id: the forwarding fast paths
inline ``SendHistory.record`` for that) or ``stamp``, which adds the element when it is missing.

Feedback (RTCP in, ``on_transport_cc``): decoded into the history and fed to ``SendSideBwe``; at
most ``FEEDBACK_PER_S`` messages reporting ``STATUSES_PER_S`` packets together are processed per
subscriber a second (a browser sends 10-20 messages; the rest are counted and skipped, which the
estimator takes as lost feedback), and a message claiming more statuses than the history holds
is refused.  A subscriber that sends only REMB
is served from it (``on_remb``).  ``estimate_bps`` is None until either arrives (and, with feedback, until its first acknowledged rate seeds the estimator): the allocator
then leaves the subscriber alone.

Pacing (``pacer``, a ``sfu.transport.pacer.PacedQueue``): its rate follows ``estimate_bps``
(x the pacing factor) after every feedback, REMB and tick; while there is no estimate nothing is
paced.  ``PeerTransport`` reads its budget on every packet it sends.

This is the first piece of the transport's own send path (issue 12, "the send path gets one
owner"): the fan-out group's batched writes are to move here.
"""

from __future__ import annotations

from sfu.counters import CongestionCounters
from sfu.packet.rtcp import TransportCC
from sfu.packet.twcc import insert_seq
from sfu.transport.bwe.estimator import BweConfig, SendSideBwe
from sfu.transport.bwe.probe import ProbeConfig, ProbeController
from sfu.transport.pacer import PacedQueue, PacingConfig
from sfu.transport.twcc_send import SendHistory

#: probe clusters of 40 ms (not 15): a cluster of a few kB passes a token bucket's burst at its
#: own rate and reads as capacity the link does not have (measured behind a 700 kbit/s htb)
PROBE_CONFIG = ProbeConfig(cluster_ms=40.0)
#: the estimator starts (``on_probe_result``) from the first acknowledged rate (its first 500 ms
#: of feedback) times this, not from a fixed 300 kbit/s it would take many seconds to climb from
#: without a probe: what the link carried is proven, and the media was not trying for more
SEED_FACTOR = 1.2
#: transport-cc messages processed per subscriber per second, at most, and the packet statuses
#: they may report together (a message can claim up to the history's size; a browser receiving
#: 10 Mbit/s reports about 1,000 a second): about 10 ms of CPU a second per subscriber at worst
FEEDBACK_PER_S = 50
STATUSES_PER_S = 20_000
#: the send history's size (packets): several seconds at a few Mbit/s, feedback comes in 100 ms
HISTORY_PACKETS = 4096


class TransportSender:
    """See the module docstring."""

    __slots__ = ("ext_id", "history", "bwe", "probes", "padding", "remb_bps", "counters", "feedback_seen",
                 "_window_ms", "_window_count", "_window_statuses", "sent_since_tick", "seeded", "pacer")

    def __init__(self, ext_id: int, counters: CongestionCounters, *, config: BweConfig | None = None,
                 capacity: int = HISTORY_PACKETS, pacing: PacingConfig | None = None) -> None:
        if not 1 <= ext_id <= 14:
            raise ValueError(f"transport-wide cc extension id {ext_id} is outside the one-byte range 1-14")
        self.ext_id = ext_id
        self.history = SendHistory(capacity)
        self.bwe = SendSideBwe(config)
        self.probes = ProbeController(PROBE_CONFIG)
        self.probes.outcomes = counters.probes  # node-wide: sfu_probes_total{outcome}
        #: where probes go: [RTX SSRC, RTX payload type, next RTX seq] of one of the transport's
        #: video streams (padding-only packets, RFC 4588 section 4; set by the routing layer), None: no probes
        self.padding: list[int] | None = None
        self.counters = counters
        #: the subscriber's last REMB (bps), None: none yet
        self.remb_bps: int | None = None
        #: transport-cc feedback came: the estimator's figure is the estimate
        self.feedback_seen = False
        #: the estimate started from the first acknowledged rate (until then: no estimate)
        self.seeded = False
        self._window_ms = -1.0
        self._window_count = 0
        self._window_statuses = 0
        self.sent_since_tick = -1  # history.high at the last tick
        #: paces what the transport sends at the estimate x factor (not while there is none)
        self.pacer = PacedQueue(pacing, counters.pacer_drops)

    # -- sending -----------------------------------------------------------------------------------
    def stamp(self, buf: bytearray | memoryview, length: int, now_ms: float) -> int:
        """Give the RTP packet ``buf[:length]`` the next transport-wide seq (overwritten in place,
        or added: ``buf`` must have 8 bytes to spare) and record it; returns its new length.  A
        packet that cannot carry one (see ``insert_seq``) goes as it is, counted."""
        history = self.history
        n = insert_seq(buf, length, self.ext_id, (history.high + 1) & 0xFFFF)
        if n < 0:
            self.counters.unstamped += 1
            return length
        history.record(now_ms, n)
        return n

    # -- feedback ----------------------------------------------------------------------------------
    def on_transport_cc(self, packet: TransportCC, now_ms: float) -> None:
        """One transport-cc message from the subscriber (``parse_compound``'s opaque packet)."""
        if now_ms - self._window_ms >= 1000:
            self._window_ms = now_ms
            self._window_count = 0
            self._window_statuses = 0
        fci = packet.fci
        statuses = ((fci[2] << 8) | fci[3]) if len(fci) >= 4 else 0  # what decoding it would cost
        if self._window_count >= FEEDBACK_PER_S or self._window_statuses + statuses > STATUSES_PER_S:
            self.counters.feedback_limited += 1
            return
        self._window_count += 1
        self._window_statuses += statuses
        try:
            reported = self.history.on_transport_cc(packet)
        except ValueError:
            self.counters.feedback_malformed += 1
            return
        self.counters.feedback_in += 1
        self.feedback_seen = True
        if reported:
            self.bwe.on_feedback(reported, now_ms)
            result = self.probes.on_feedback(reported, now_ms)
            if result is not None:
                self.bwe.on_probe_result(result, now_ms)
            if not self.seeded:
                acked = self.bwe.acked_bps
                if acked is not None:  # what got through is a proven capacity: start from there
                    self.seeded = True
                    self.bwe.on_probe_result(acked * SEED_FACTOR, now_ms)
        self.pacer.set_rate(self.estimate_bps(now_ms), now_ms)

    def set_padding(self, ssrc: int, payload_type: int) -> None:
        """Probes go as padding-only packets on this RTX stream (the first one given stays)."""
        if self.padding is None:
            self.padding = [ssrc, payload_type, 0]

    def on_remb(self, bps: int, now_ms: float) -> None:
        self.counters.remb_in += 1
        self.remb_bps = bps
        self.pacer.set_rate(self.estimate_bps(now_ms), now_ms)

    def set_rtt(self, rtt_ms: float) -> None:
        self.bwe.set_rtt(rtt_ms)

    def tick(self, now_ms: float) -> None:
        """About once a second: the estimator's feedback timeout (only once feedback came)."""
        high = self.history.high
        sending = high != self.sent_since_tick
        self.sent_since_tick = high
        if self.feedback_seen:
            self.bwe.tick(now_ms, sending)
        self.pacer.set_rate(self.estimate_bps(now_ms), now_ms)

    def estimate_bps(self, now_ms: float) -> int | None:
        """What the subscriber can take now (bps): the send-side estimate once its feedback
        came and the first acknowledged rate seeded it (lowered by ``tick`` while it stops),
        else its REMB; None when neither came."""
        if self.feedback_seen:
            return self.bwe.estimate_bps if self.seeded else None
        return self.remb_bps
