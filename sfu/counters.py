"""Plain-integer counters for the media plane, exported to Prometheus by a collector.

The hot path only does ``counters.x += 1`` or ``drops[reason] += 1`` on preallocated lists: no
locks, no label lookups.  Enum values double as metric labels.
"""

from __future__ import annotations

import enum
from bisect import bisect_left

from sfu.packet.nack import GiveUp, NackAttempt


class DropReason(enum.IntEnum):
    """Why a datagram arriving on the media port was not used. ``name.lower()`` is the metric label."""

    UNKNOWN_PROTOCOL = 0  # first byte matches no RFC 7983 range
    TOO_SHORT = 1
    STUN_MALFORMED = 2
    STUN_UNKNOWN_USER = 3  # USERNAME names no session
    STUN_BAD_INTEGRITY = 4  # MESSAGE-INTEGRITY fails with the session's password
    STUN_UNEXPECTED = 5  # not a binding request (nor a binding indication from a session's address)
    DTLS_UNKNOWN_ADDRESS = 6
    DTLS_REJECTED = 7  # the DTLS endpoint refused the record
    SRTP_UNKNOWN_ADDRESS = 8
    SRTP_NOT_READY = 9  # SRTP before the DTLS handshake completed
    SRTP_AUTH_FAILED = 10
    SRTP_REPLAY = 11
    SRTP_OTHER = 12
    RTP_MALFORMED = 13
    RTP_UNKNOWN_SSRC = 14
    RTCP_MALFORMED = 15
    NOT_PUBLISHING = 16  # media from a participant that has no published track
    SEND_FAILED = 17  # the kernel refused a send (buffer full)
    SEQ_TOO_OLD = 18  # the sequence munger could not place the packet
    RTX_UNKNOWN = 19  # an RTX packet that cannot be unwrapped (no apt= for its payload type, malformed)
    RTX_PADDING = 20  # a padding-only RTX packet (bandwidth probe): nothing to restore
    RTX_UNREQUESTED = 21  # an RTX packet of no open hole (a duplicate, payload padding, given up)
    RTCP_SENDER_LIMIT = 22  # SRTCP from one more sender SSRC than a transport keeps state for
    TCP_CONGESTED = 23  # an ICE-TCP connection holds more unsent bytes than its bound (a slow reader)
    TCP_BAD_FRAME = 24  # an ICE-TCP frame of length 0 or over the limit (the connection is closed)


class RecoveredVia(enum.IntEnum):
    """How a hole in a publisher's stream was filled (``name.lower()`` is the metric label)."""

    RTX = 0  # a retransmission the node asked for
    REORDER = 1  # the packet itself, late


class TwccDrop(enum.IntEnum):
    """Publisher transport-wide sequence numbers the transport-cc feedback does not report
    (``sfu.transport.twcc_recv``; ``name.lower()`` is the metric label)."""

    TOO_OLD = 0  # a straggler more than the builder's window behind the highest seq
    DUPLICATE = 1  # a seq already recorded (its first arrival is kept)
    OVERFLOWED = 2  # pending seqs pushed out of the window before a feedback reported them
    RESET = 3  # a jump of a window or more (a sender restart): a new base, not counted per seq


class Direction(enum.IntEnum):
    INBOUND = 0
    OUTBOUND = 1


class MediaCounters:
    """Node-wide media counters. Attributes are plain ints, updated in place."""

    __slots__ = (
        "datagrams_in",
        "stun_keepalives",
        "rtp_in",
        "rtcp_in",
        "rtp_out",
        "rtcp_out",
        "bytes_out",
        "drops",
        "srtp_errors",
        "nack_in",
        "pli_in",
        "keyframe_requests",
        "retransmits",
        "nack_out",
        "nack_out_seqs",
        "recovered",
        "holes_given_up",
        "twcc_feedback_out",
        "twcc_dropped",
        "latency_buckets",
        "latency_sum_s",
        "latency_count",
        "cc",
    )

    #: forward latency histogram bounds (seconds); the last bucket is +Inf.  0.1 ms steps up to
    #: 1 ms, so a percentile below 1 ms shows as one (issue 6: p99 < 1 ms at half load)
    LATENCY_BOUNDS = (
        0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0007, 0.0008, 0.0009, 0.001,
        0.0025, 0.005, 0.01, 0.025, 0.1,
    )  # fmt: skip

    def __init__(self) -> None:
        self.datagrams_in = 0
        #: STUN Binding indications from a session's address (RFC 8445 §11 keepalives): not drops
        self.stun_keepalives = 0
        self.rtp_in = [0, 0]  # [audio, video]
        self.rtcp_in = 0
        self.rtp_out = [0, 0]
        self.rtcp_out = 0
        self.bytes_out = 0
        self.drops = [0] * len(DropReason)
        self.srtp_errors = [0, 0]  # by Direction
        self.nack_in = 0
        self.pli_in = 0
        self.keyframe_requests = 0
        self.retransmits = 0
        #: upstream loss recovery (sfu.packet.nack): NACK packets sent to publishers, the sequence
        #: numbers they asked for (by NackAttempt), holes filled (by RecoveredVia), given up (GiveUp)
        self.nack_out = 0
        self.nack_out_seqs = [0] * len(NackAttempt)
        self.recovered = [0] * len(RecoveredVia)
        self.holes_given_up = [0] * len(GiveUp)
        #: transport-cc feedback messages sent to publishers, and transport-wide seqs they could
        #: not report (by TwccDrop; sfu.transport.twcc_feedback)
        self.twcc_feedback_out = 0
        self.twcc_dropped = [0] * len(TwccDrop)
        self.latency_buckets = [0] * (len(self.LATENCY_BOUNDS) + 1)
        self.latency_sum_s = 0.0
        self.latency_count = 0
        #: congestion control on the subscriber leg (issue 12)
        self.cc = CongestionCounters()

    def observe_latency(self, seconds: float) -> None:
        self.latency_buckets[bisect_left(self.LATENCY_BOUNDS, seconds)] += 1  # first bound >= it
        self.latency_sum_s += seconds
        self.latency_count += 1

    def drop_counts(self) -> dict[str, int]:
        return {r.name.lower(): self.drops[r] for r in DropReason}


class WsDrop(enum.IntEnum):
    """Why a signaling WebSocket frame was not handled (``name.lower()`` is the metric label)."""

    RATE_LIMITED = 0  # over ``signaling_frames_per_s``


class WsClose(enum.IntEnum):
    """Why the node closed a signaling WebSocket on its own (``name.lower()`` is the metric label)."""

    SEND_QUEUE_FULL = 0  # the client did not read what was queued for it (1008)
    JOIN_TIMEOUT = 1  # no ``join`` within ``signaling_join_timeout_s`` (1008)
    PROTOCOL_ERROR = 2  # 1002: an unmasked client frame, a bad opcode, ...
    TOO_BIG = 3  # 1009: a message larger than the frame limit
    NO_PONG = 4  # the heartbeat's ping went unanswered


class ResumeOutcome(enum.IntEnum):
    """What happened to a signaling session kept for a resume (``name.lower()`` is the metric label)."""

    DETACHED = 0  # its socket was lost: seat, tracks and media kept for the grace period
    RESUMED = 1  # a new socket took it over (``join {resume}``)
    EXPIRED = 2  # the grace period ended: it left the room
    REFUSED = 3  # a resume token that names no session of that identity and room


class SignalingCounters:
    """Node-wide signaling WebSocket counters (plain ints)."""

    __slots__ = ("frames_in", "dropped", "closed", "sockets", "resumes", "detached")

    def __init__(self) -> None:
        self.frames_in = 0
        self.dropped = [0] * len(WsDrop)
        self.closed = [0] * len(WsClose)
        self.sockets = 0  # open now
        self.resumes = [0] * len(ResumeOutcome)
        self.detached = 0  # sessions waiting for a resume now


class SwitchDirection(enum.IntEnum):
    """A layer switch's direction (``name.lower()`` is the ``direction`` label)."""

    UP = 0
    DOWN = 1


class SwitchReason(enum.IntEnum):
    """Why a subscriber's layer changed (``name.lower()`` is the ``reason`` label): its
    bandwidth estimate, its own bounds (set_layer, WHEP's layer route, pause), the publisher
    (a layer stopped or came back)."""

    BANDWIDTH = 0
    SUBSCRIBER = 1
    PUBLISHER = 2


class PacerDrop(enum.IntEnum):
    """Why a packet queued by a subscriber transport's pacer was dropped (``name.lower()`` is the
    ``reason`` label of ``sfu_pacer_dropped_total``)."""

    QUEUE_FULL = 0  # over the queue's packet or byte bound
    QUEUE_DELAY = 1  # queued longer than the pacer's max delay


class CongestionCounters:
    """Congestion control on the subscriber leg: transport-cc feedback taken and refused, the
    estimates the allocator spent (a histogram, sampled per allocation), layer switches."""

    __slots__ = ("feedback_in", "feedback_limited", "feedback_malformed", "remb_in", "unstamped",
                 "estimate_buckets", "estimate_sum", "estimate_count", "switches", "probes", "probe_packets",
                 "pacer_drops", "pacer_delay_buckets", "pacer_delay_sum", "pacer_delay_count")

    #: ``sfu_bwe_estimate_bps`` bucket bounds (bps); the last bucket is +Inf
    ESTIMATE_BOUNDS = (
        100_000, 200_000, 300_000, 500_000, 700_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000,
        5_000_000, 10_000_000,
    )  # fmt: skip
    #: ``sfu_pacer_delay_seconds`` bucket bounds (ms; exported in seconds); the last is +Inf
    PACER_DELAY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500)

    def __init__(self) -> None:
        self.feedback_in = 0  # transport-cc messages taken into a send history
        self.feedback_limited = 0  # over a subscriber's per-second budget: not processed
        self.feedback_malformed = 0
        self.remb_in = 0  # REMB from subscribers (their estimate when they send no transport-cc)
        self.unstamped = 0  # packets to a transport-cc subscriber that could carry no seq
        self.estimate_buckets = [0] * (len(self.ESTIMATE_BOUNDS) + 1)
        self.estimate_sum = 0.0
        self.estimate_count = 0
        #: [direction][reason]
        self.switches = [[0] * len(SwitchReason) for _ in SwitchDirection]
        #: probe clusters by outcome (every subscriber's ``ProbeController`` counts into it)
        self.probes = {"success": 0, "limited": 0, "failure": 0, "timeout": 0}
        self.probe_packets = 0  # padding-only packets sent for probes
        #: packets the subscriber transports' pacers dropped, by ``PacerDrop``
        self.pacer_drops = [0] * len(PacerDrop)
        #: how long each packet a pacer queued waited (packets that left at once are not in it)
        self.pacer_delay_buckets = [0] * (len(self.PACER_DELAY_BOUNDS_MS) + 1)
        self.pacer_delay_sum = 0.0  # ms
        self.pacer_delay_count = 0

    def observe_pacer_delay(self, delay_ms: float) -> None:
        self.pacer_delay_buckets[bisect_left(self.PACER_DELAY_BOUNDS_MS, delay_ms)] += 1
        self.pacer_delay_sum += delay_ms
        self.pacer_delay_count += 1

    def observe_estimate(self, bps: int) -> None:
        self.estimate_buckets[bisect_left(self.ESTIMATE_BOUNDS, bps)] += 1
        self.estimate_sum += bps
        self.estimate_count += 1
