"""A published media stream and its fan-out to subscribers (the forwarding hot path).

``PublishedTrack.on_rtp`` runs once per incoming packet: it updates receive statistics, stores
the packet in the retransmission cache and hands it to each ``DownTrack``, which rewrites it
into its subscriber's output buffer and sends it.  No logging, no awaits, no per-packet objects
beyond what the socket layer needs.
"""

from __future__ import annotations

import secrets
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct
from typing import TYPE_CHECKING, Any

from pylibsrtp._binding import ffi, lib

from sfu.counters import MediaCounters, RecoveredVia
from sfu.packet.codecs import is_keyframe
from sfu.packet.frame_size import keyframe_size
from sfu.packet.nack import NackOutcome, NackTracker
from sfu.packet.rtp import header_length
from sfu.packet.rtx import apt_table
from sfu.packet.temporal import NONE as TL_NONE
from sfu.packet.temporal import START as TL_START
from sfu.packet.temporal import TID_MASK, vp8_temporal, vp9_temporal
from sfu.packet.twcc import TWCC_URI
from sfu.routing.rtx_cache import RTX_CACHE_SLOTS, RTX_SLOT_BYTES, RtxCache
from sfu.routing.stats import RateMeter, ReceiveStats
from sfu.transport.pacer import PacedKind, PacedQueue
from sfu.transport.twcc_send import SendHistory
from sfu.transport.udp import SEND_LANE_DEPTH

if TYPE_CHECKING:
    from sfu.routing.downtrack import DownTrack
    from sfu.routing.simulcast import SimulcastGroup

_NO_PT = -1  # sfu.routing.downtrack.NO_PT
#: payload type and marker, sequence number, timestamp, SSRC: the RTP header after its first byte
_B1_SEQ_TS_SSRC = Struct("!BHII")
_pack_header = _B1_SEQ_TS_SSRC.pack_into
_srtp_protect = lib.srtp_protect
_memmove = ffi.memmove
#: the RTP header's first 8 bytes: V/P/X/CC, marker and payload type, sequence number, timestamp
_unpack_head = Struct("!BBHI").unpack_from

# the ``shape`` argument of ``DownTrack.forward`` (same values as sfu.routing.downtrack.SHAPE_*,
# which imports this module); a packet with extensions passes the mask of their ids instead
_SHAPE_PLAIN = 0
_SHAPE_OTHER = -1


def extension_ids(view: memoryview, length: int, want: int = 0, found: list[int] | None = None) -> int:
    """Bit mask of the header extension ids in a well-formed RTP packet with its X bit set, or
    -1 when the block is anything but plain elements (empty, padding other than up to 3 zero
    bytes at its end for the one-byte form, reserved id 15, other profiles).  With ``want`` (an
    id) and ``found``, ``found[0]`` is set to where that element's value starts when it is 2
    bytes long (a transport-wide seq), else left alone: the walk finds it for free."""
    pos = 12 + (view[0] & 0x0F) * 4
    profile = (view[pos] << 8) | view[pos + 1]
    end = pos + 4 + ((view[pos + 2] << 8) | view[pos + 3]) * 4
    pos += 4
    mask = 0
    if profile == 0xBEDE:
        while pos < end:
            b = view[pos]
            if b == 0:  # only trailing padding may follow
                if end - pos > 3 or any(view[pos:end]):
                    return -1
                break
            ext_id = b >> 4
            if ext_id == 15:
                return -1
            mask |= 1 << ext_id
            if ext_id == want and b & 0x0F == 1 and found is not None:
                found[0] = pos + 1
            pos += 2 + (b & 0x0F)
    elif profile & 0xFFF0 == 0x1000:
        while pos < end:
            ext_id = view[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                return -1
            mask |= 1 << ext_id
            if ext_id == want and view[pos + 1] == 2 and found is not None:
                found[0] = pos + 2
            pos += 2 + view[pos + 1]
    else:
        return -1
    return mask if mask and pos <= end else -1

# where a packet stands in its stream, for the upstream NACK tracker (``PublishedTrack.nack``)
_NEWEST = 0  # in order, or newer than all before it
_LATE = 1  # older than the newest (a recovered hole, reordering or a duplicate)
_STALE = 2  # so much older that its retransmission cache slot holds a newer packet
_LANE_DEPTH = SEND_LANE_DEPTH
KEYFRAME_REQUEST_INTERVAL_MS = 500
#: codecs whose packets carry a temporal layer id (sfu.packet.temporal), by lower-case name
_TEMPORAL_READERS: dict[str, Callable[[memoryview, int, int], int]] = {"vp8": vp8_temporal, "vp9": vp9_temporal}
#: ... and the bit of the descriptor's first byte without which there is no TID (VP8 X, VP9 L)
_TEMPORAL_BITS = {"vp8": 0x80, "vp9": 0x20}
_Row = tuple[Any, int, int, int, list[int], int, SendHistory | None]


@dataclass(frozen=True)
class TrackCodec:
    name: str  # "VP8", "opus", "red", ...
    clock_rate: int
    payload_type: int
    #: the variant's names, most specific first (sfu.signaling.codecs.variant_keys); () = by name
    variant: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """What a subscriber's payload type map (``DownTrack.out_payload_types``) is keyed by."""
        return self.variant or (self.name.lower(),)


def _no_keyframe_request(ssrc: int) -> None:
    """The keyframe request of a closed track: its publisher is gone."""


class PublishedTrack:
    def __init__(
        self,
        *,
        kind: str,
        ssrc: int,
        codecs: list[TrackCodec],
        mid: str,
        owner: str,
        counters: MediaCounters,
        request_keyframe: Callable[[int], None],
        rid: str | None = None,
        rtx_ssrc: int | None = None,
        ext_ids: dict[str, int] | None = None,
        nack: bool = False,
        rtx_apt: dict[int, int] | None = None,
        send_nack: Callable[[int, list[int]], None] | None = None,
    ) -> None:
        self.sid = "TR_" + secrets.token_hex(6)
        self.kind = kind
        self.is_video = kind == "video"
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        if not codecs:
            raise ValueError("a track needs at least one codec")
        self.codecs = list(codecs)  # the publisher's payload types, preferred first
        self.codec = codecs[0]
        self.codec_by_pt: list[str | None] = [None] * 128
        for c in codecs:
            self.codec_by_pt[c.payload_type & 0x7F] = c.name
        self.mid = mid
        self.rid = rid
        #: the simulcast group of a layer (``rid`` set); a layer whose SSRC is not known yet has a
        #: negative placeholder ``ssrc`` (never a real one) until ``PublisherSink`` reads its rid
        self.group: SimulcastGroup | None = None
        #: downtracks that switch to this layer at its next keyframe (``DownTrack.switch_to``)
        self.switching: list[DownTrack] = []
        self.owner = owner
        self.ext_ids = dict(ext_ids or {})  # uri -> id in the publisher's packets
        self.downtracks: list[DownTrack] = []
        self.stats = ReceiveStats(self.codec.clock_rate)
        #: RTP octets received (headers included), for the participants API's bitrate
        self.octets_in = 0
        self.rate = RateMeter()
        self.rtx_cache = RtxCache() if self.is_video else None
        #: upstream loss recovery, for video that negotiated ``nack``: holes in what the publisher
        #: sends are NACKed to it (``send_nack(media_ssrc, seqs)``), its retransmissions (RTX,
        #: ``on_repair``) and late packets fill them (sfu.packet.nack)
        self.nack: NackTracker | None = None
        if nack and self.is_video and send_nack is not None:
            self.nack = NackTracker(given_up=counters.holes_given_up, requested=counters.nack_out_seqs)
        self._send_nack = send_nack
        #: RTX payload type -> the payload type it repairs (apt=), -1: none (sfu.packet.rtx)
        self.rtx_apt = apt_table(rtx_apt or {})
        self._repairing = False  # ``on_rtp`` is handling a retransmission
        self.muted = False
        # -- temporal layers (sfu.packet.temporal) --
        #: per payload type: the reader of its temporal facts (VP8, VP9), None: none
        self._tl_readers: list[Callable[[memoryview, int, int], int] | None] = [None] * 128
        self._tl_bits = [0] * 128  # per payload type: the first descriptor byte's bit for a TID
        for c in codecs:
            self._tl_readers[c.payload_type & 0x7F] = _TEMPORAL_READERS.get(c.name.lower())
            self._tl_bits[c.payload_type & 0x7F] = _TEMPORAL_BITS.get(c.name.lower(), 0)
        self._tl_any = any(r is not None for r in self._tl_readers)
        #: the temporal facts of the packet being forwarded (``TL_NONE``: none), for its downtracks
        self.tl_info = TL_NONE
        #: octets and frames received per temporal layer (T0-T3), the highest TID seen (-1: none);
        #: ``tl_rates`` / ``tl_fps`` are measured from them (sfu.routing.allocation.measure)
        self.tl_octets = [0, 0, 0, 0]
        self.tl_frames = [0, 0, 0, 0]
        self.tl_top = -1
        #: bps and frames per second up to each temporal layer (T0, T0+T1, ...) over the last window
        self.tl_rates: tuple[int, ...] = ()
        self.tl_fps: tuple[float, ...] = ()
        self.tl_mark: tuple[int, ...] = (0,) * 8  # tl_octets + tl_frames at the last measurement
        #: bytes received (the allocator measures each layer's bitrate from it: sfu.routing.allocation)
        self.octets = 0
        self.rate_bps = 0  # the last measured bitrate (bps), 0: not measured yet
        self.rate_octets = 0  # ``octets`` and the time at the last measurement
        self.rate_ms = -1
        self._counters = counters
        self._kind_index = 1 if self.is_video else 0
        self._request_keyframe_cb = request_keyframe
        self._last_keyframe_request_ms = -KEYFRAME_REQUEST_INTERVAL_MS
        #: a downtrack waits for a keyframe, or the coded size is to be read from the next one (a
        #: video track starts so: its first keyframe tells ``width`` x ``height``)
        self.keyframe_pending = self.is_video
        #: the coded picture size of the newest keyframe looked at; 0: not known yet
        self.width = 0
        self.height = 0
        self._keyframe_deferred = False  # a throttled request is still owed
        # the last sender report: (ntp 64-bit, rtp ts, arrival ms)
        self.last_sr: tuple[int, int, int] | None = None
        #: the publisher takes REMB for this track (goog-remb negotiated; sfu.routing.bandwidth)
        self.remb = False
        #: (view, length, now_ms) -> None: reads the audio level now and then (sfu.routing.speakers)
        self.level_meter: Callable[[memoryview, int, int], None] | None = None
        #: called when the track gets its first downtrack (a relayed track: the far end is told
        #: to carry it, sfu.routing.relay)
        self.on_demand: Callable[[], None] | None = None
        #: (view, length, now_ms) -> None: a recording's copy of every packet, retransmissions
        #: that fill holes included (sfu.recording.manager); None for a track not recorded
        self.tap: Callable[[memoryview, int, int], None] | None = None
        # -- the fan-out group (see ``fast_form``) --
        #: the incoming sequence number the group forwards next; -1: no group
        self._fast_next = -1
        self._fast_members: list[DownTrack] = []
        #: per member: (srtp_t, ssrc, seq offset, ts offset, second-byte map, trailer length, the
        #: send history of its transport's transport-wide seqs or None)
        self._fast_rows: list[_Row] = []
        #: the members' transport-wide-cc id (0: none has one): the group's packets carry it there
        self._fast_tw = 0
        #: where ``extension_ids`` found the packet's element of that id (0: none), per packet
        self._tw_found = [0]
        #: the downtracks outside the group, forwarded one by one
        self._fast_rest: list[DownTrack] = []
        #: the pacers of the members' transports that have one: each packet pays each budget
        #: first (``_fast_pay``), or goes the one-by-one way, where it may wait in a queue
        self._fast_pacers: list[PacedQueue] = []
        self._fast_keep: list[Any] = []  # the members' SrtpContexts, kept alive with their srtp_t
        self._fast_keys: list[array[int]] = []  # per member: its address key, once per lane slot
        self._fast_pt_ok: list[bool] = []  # second header byte -> every member maps it
        self._fast_ext = 0  # extension ids every member receives unchanged (mask)
        self._fast_ring: Any = None
        self._fast_flush: Callable[[], int] | None = None
        self._fast_generation = -1
        self._fast_epoch = -1  # the ring epoch of the group's lanes
        self._fast_lane0 = 0  # the group's first lane; member i writes lane lane0 + i
        self._fast_slot0 = 0  # lane0 * _LANE_DEPTH: the first member's first slot
        self._fast_span = slice(0, 0)  # the group's lanes, lane0 to lane0 + members
        self._fast_size = 0  # members
        self._fast_fill = 0  # packets in the group's lanes
        self._fast_fills: list[list[int]] = []  # [fill] * members, by fill
        # what the members were not told yet: packets, their octets, the newest timestamp, when
        self._fast_count = 0
        self._fast_octets = 0
        self._fast_newest_ts = 0
        self._fast_last_ms = 0
        self._fast_len_p: Any = ffi.new("int *")

    # -- hot path --------------------------------------------------------------------------------
    def on_rtp(self, view: memoryview, length: int, now_ms: int, cbuf: Any = None) -> None:
        """One incoming packet (clear RTP in ``view[:length]``; ``cbuf``, when given, is a cffi
        pointer to the same bytes, which copies faster)."""
        counters = self._counters
        kind = self._kind_index
        counters.rtp_in[kind] += 1
        self.octets += length
        b0, b1, seq, ts = _unpack_head(view)
        top = b0 & 0xF0  # version, padding, extension
        hlen = 12 + (b0 & 0x0F) * 4  # where the payload starts (-1: malformed; checked below)
        if top == 0x80:
            shape = _SHAPE_PLAIN if hlen <= length <= len(view) else _SHAPE_OTHER
        elif top == 0x90 and (hlen := header_length(view, length)) >= 0:
            # a mask of ids (>= 2), or -1 (_SHAPE_OTHER); the group's transport-wide seq found too
            tw_found = self._tw_found
            tw_found[0] = 0
            shape = extension_ids(view, length, self._fast_tw, tw_found)
        else:
            shape = _SHAPE_OTHER
            hlen = -1
        self.octets_in += length
        stats = self.stats  # ReceiveStats.update, inlined
        stats.packets += 1
        if (seq - stats.max_seq) & 0xFFFF == 1 and stats.started:  # in order
            if not seq:
                stats.cycles += 0x10000
            stats.max_seq = seq
        else:
            stats.sequence(seq)
        transit = (now_ms * stats.clock_rate // 1000 - ts) & 0xFFFFFFFF
        last = stats.transit
        if last is not None:
            d = (transit - last) & 0xFFFFFFFF
            if d > 0x7FFFFFFF:
                d = 0x100000000 - d
            stats.jitter_q4 += d - ((stats.jitter_q4 + 8) >> 4)
        stats.transit = transit
        meter = self.level_meter
        if meter is not None:
            meter(view, length, now_ms)
        tap = self.tap
        if tap is not None:
            tap(view, length, now_ms)
        src = view if cbuf is None else cbuf
        order = _NEWEST
        nack = self.nack
        if nack is not None:  # NackTracker.on_packet's in-order case, inlined
            if seq == nack.next_seq and now_ms < nack.due_ms:
                nack.next_seq = (seq + 1) & 0xFFFF
            else:
                order = self._nack_update(nack, seq, now_ms)
        cache = self.rtx_cache
        if cache is not None and order != _STALE and length <= RTX_SLOT_BYTES:  # RtxCache.put, inlined
            i = seq & cache.mask
            if not i:  # the ring turns: it may grow with the stream's rate
                cache.turn(seq, now_ms)
                i = seq & cache.mask
            _memmove(cache.bufs[i], src, length)
            cache.lens[i] = length
            cache.seqs[i] = seq
        keyframe = False
        if self.keyframe_pending:
            keyframe = self._check_keyframe(view, length)
            if keyframe:
                if nack is not None:
                    nack.keyframe(seq)  # decoders start again here: older holes are moot
                if self.switching:  # they join the fan-out below, starting with this packet
                    self._switch_waiting(now_ms)
            elif self._keyframe_deferred:
                self.request_keyframe(now_ms)
        if self._tl_any:
            pt = b1 & 0x7F
            reader = self._tl_readers[pt]
            info = TL_NONE
            if reader is not None:
                if hlen < 0 or shape == _SHAPE_OTHER:
                    hlen = header_length(view, length)
                # the descriptor's bit that says a TID may follow (VP8 X, VP9 L): else no call
                if 0 <= hlen < length and view[hlen] & self._tl_bits[pt]:
                    info = reader(view, hlen, length)
                if info >= 0 and not self._repairing:
                    tid = info & TID_MASK
                    self.tl_octets[tid] += length
                    if info & TL_START:
                        self.tl_frames[tid] += 1
                    if tid > self.tl_top:
                        self.tl_top = tid
            self.tl_info = info
        sent = 0
        octets = 0
        rest = self.downtracks
        if self._fast_next >= 0:
            ext = self._fast_ext
            ring = self._fast_ring
            tw = self._fast_tw
            tw_pos = self._tw_found[0] if tw and shape > 0 else 0  # members stamp their seq in place there
            if (
                seq == self._fast_next
                and (shape == _SHAPE_PLAIN or (shape > 0 and shape | ext == ext))
                and (tw_pos or not tw)
                and self._fast_pt_ok[b1]
                and self._fast_generation == ring.generation
                and (not self._fast_pacers or self._fast_pay(length, now_ms))
            ):
                # the group forwards the packet (see "the fan-out group" below)
                fill = self._fast_fill
                if self._fast_epoch != ring.epoch or fill == _LANE_DEPTH:
                    fill = self._fast_lanes()
                ptrs = ring.ptrs
                views = ring.views
                iov_lens = ring.iov_lens
                len_p = self._fast_len_p
                k = self._fast_slot0 + fill
                for srtp, ssrc, dseq, dts, b1_map, trailer, history in self._fast_rows:
                    ptr = ptrs[k]
                    _memmove(ptr, src, length)
                    out = views[k]
                    _pack_header(out, 1, b1_map[b1], (seq + dseq) & 0xFFFF, (ts + dts) & 0xFFFFFFFF, ssrc)
                    if history is not None:  # SendHistory.record, inlined; the seq in place
                        tw_ext = history.high + 1
                        history.high = tw_ext
                        slot = tw_ext & history.mask
                        history.exts[slot] = tw_ext
                        history.send_times[slot] = now_ms
                        history.sizes[slot] = length
                        history.states[slot] = 0
                        out[tw_pos] = (tw_ext >> 8) & 0xFF
                        out[tw_pos + 1] = tw_ext & 0xFF
                    len_p[0] = length
                    if _srtp_protect(srtp, ptr, len_p):
                        # none of this packet's slots count (they are reused): the group
                        # dissolves and the packet goes the one-by-one way, which counts the error
                        self.fast_reset()
                        break
                    iov_lens[2 * k + 1] = length + trailer
                    k += _LANE_DEPTH
                else:
                    fill += 1
                    self._fast_fill = fill
                    ring.fills[self._fast_span] = self._fast_fills[fill]
                    self._fast_next = (seq + 1) & 0xFFFF
                    self._fast_count += 1
                    self._fast_octets += length
                    if 0 < (ts - self._fast_newest_ts) & 0xFFFFFFFF < 0x80000000:
                        self._fast_newest_ts = ts
                    self._fast_last_ms = now_ms
                    if ring.auto_flush:
                        flush = self._fast_flush
                        assert flush is not None
                        flush()
                    sent = self._fast_size
                    octets = sent * length
                    rest = self._fast_rest
            else:
                self.fast_reset()
        for dt in rest:
            n = dt.forward(view, length, seq, ts, keyframe, now_ms, shape)
            if n:
                sent += 1
                octets += n
        if sent:
            counters.rtp_out[kind] += sent
            counters.bytes_out += octets
        if self._fast_next < 0 and self.group is None and order == _NEWEST:
            self.fast_form((seq + 1) & 0xFFFF)

    def _fast_pay(self, length: int, now_ms: int) -> bool:
        """Pay the packet out of every paced member's budget; False (nothing paid) when one of
        them has to queue it: the group dissolves and the packet goes one by one."""
        pacers = self._fast_pacers
        if not self.is_video:  # audio never waits, it only pays
            for p in pacers:
                p.budget -= length
            return True
        for i, p in enumerate(pacers):
            if p.budget > 0:
                p.budget -= length
            elif not p.admit(PacedKind.VIDEO, length, now_ms):
                for q in pacers[:i]:
                    q.budget += length
                return False
        return True

    def _nack_update(self, nack: NackTracker, seq: int, now_ms: int) -> int:
        """A packet out of order, or a NACK batch is due: where the packet stands (``_NEWEST``,
        ``_LATE``, ``_STALE``); sends what is due to the publisher."""
        outcome = nack.on_packet(seq, now_ms, repaired=self._repairing)
        order = _NEWEST
        if outcome == NackOutcome.RECOVERED or outcome == NackOutcome.LATE:
            if outcome == NackOutcome.RECOVERED:
                self._counters.recovered[RecoveredVia.RTX if self._repairing else RecoveredVia.REORDER] += 1
            cache = self.rtx_cache
            order = _LATE if nack.behind(seq) < (cache.slots if cache is not None else RTX_CACHE_SLOTS) else _STALE
        seqs = nack.due(now_ms)
        if seqs and self._send_nack is not None:
            self._counters.nack_out += 1
            self._send_nack(self.ssrc, seqs)
        return order

    def on_repair(self, view: memoryview, length: int, now_ms: int, cbuf: Any = None) -> bool:
        """A retransmission of one of this track's packets (an unwrapped RTX packet, RFC 4588):
        it goes the way of any packet (subscribers, retransmission cache) when it fills an open
        hole; False when it does not (not asked for: a duplicate, or RTX used as padding)."""
        nack = self.nack
        if nack is None or not nack.is_hole((view[2] << 8) | view[3]):
            return False
        self._repairing = True
        try:
            self.on_rtp(view, length, now_ms, cbuf)
        finally:
            self._repairing = False
        return True

    # -- the fan-out group ---------------------------------------------------------------------------
    # While packets arrive in order, every downtrack that forwards them plainly (no keyframe wait,
    # not paused, connected, in-order fast path of its mungers) does the same per packet but for
    # its offsets, SSRC, payload type map and SRTP session.  Those downtracks form this track's
    # group: one loop over per-member tuples copies, rewrites (bytes 1-11) and protects each packet
    # into the members' own lanes of the send ring, and what each downtrack would count (packets,
    # octets, sequence and timestamp progress) is kept once for all of them, to be handed over
    # (``fast_sync``) when anything outside reads it.  Anything else (a gap, a packet with other
    # extensions or another payload type, a member or peer changing) dissolves the group
    # (``fast_reset``): the packet goes the one-by-one way and the group forms again after it.
    # Simulcast layers never form one (their downtracks switch layers packet by packet).

    def _fast_lanes(self) -> int:
        """Take a lane of the send ring per member (flushing it first when too few are left)."""
        ring = self._fast_ring
        count = len(self._fast_rows)
        lane0 = ring.used
        if lane0 + count > ring.lanes:
            flush = self._fast_flush
            assert flush is not None
            flush()
            lane0 = 0
        ring.used = lane0 + count
        ring.fills[lane0 : lane0 + count] = self._fast_fills[0]
        names = ring.names
        for i, keys in enumerate(self._fast_keys):
            base = (lane0 + i) * _LANE_DEPTH
            names[2 * base : 2 * (base + _LANE_DEPTH) : 2] = keys
        self._fast_lane0 = lane0
        self._fast_slot0 = lane0 * _LANE_DEPTH
        self._fast_span = slice(lane0, lane0 + count)
        self._fast_epoch = ring.epoch
        self._fast_fill = 0
        return 0

    def fast_form(self, next_seq: int) -> None:
        """Form the group of the downtracks that can forward the packet ``next_seq`` plainly."""
        members: list[DownTrack] = []
        rest: list[DownTrack] = []
        rows: list[_Row] = []
        keep: list[Any] = []
        keys: list[array[int]] = []
        pacers: list[PacedQueue] = []
        ring: Any = None
        flush: Callable[[], int] | None = None
        # a member with transport-wide cc stamps in place: the publisher's packets must carry the
        # element at the subscriber's id (others go one by one, where it is added)
        tw_in = self.ext_ids.get(TWCC_URI, 0)
        for dt in self.downtracks:
            state = dt.peer.send_state()
            m = dt._seq
            tm = dt._ts
            sender = dt.peer.sender
            pacer = dt.peer.pacer
            if (
                state is None
                or dt._paused
                or dt._waiting_keyframe
                or dt.temporal is not None
                or m.fast_next != next_seq
                or tm.fast_offset < 0
                or (ring is not None and state[0] is not ring)
                or (pacer is not None and pacer.pending and self._regroup_later(pacer))
                or len(members) == state[0].lanes
                or (sender is not None and (sender.ext_id != tw_in or dt.tw_id != tw_in))
            ):
                rest.append(dt)
                continue
            ring, flush, srtp, key, trailer = state
            members.append(dt)
            history = sender.history if sender is not None else None
            rows.append((srtp, dt.ssrc, m.fast_delta, tm.fast_offset, dt._b1_map, trailer, history))
            keep.append(dt.peer.tx)
            if pacer is not None and pacer.rate:  # an unpaced one's budget is infinite
                pacers.append(pacer)
            keys.append(array("Q", [key]) * _LANE_DEPTH)
        if not members:
            return
        ext = -1
        pt_ok = [True] * 256
        for dt in members:
            ext &= dt._ext_same
            b1_map = dt._b1_map
            for b in range(256):
                if b1_map[b] == _NO_PT:
                    pt_ok[b] = False
            dt.fast_track = self
        self._fast_members = members
        self._fast_rest = rest
        self._fast_rows = rows
        self._fast_pacers = pacers
        self._fast_tw = tw_in if any(row[6] is not None for row in rows) else 0
        self._fast_keep = keep
        self._fast_keys = keys
        self._fast_ext = ext
        self._fast_pt_ok = pt_ok
        self._fast_ring = ring
        self._fast_flush = flush
        self._fast_generation = ring.generation
        self._fast_epoch = -1
        self._fast_fills = [[fill] * len(members) for fill in range(_LANE_DEPTH + 1)]
        self._fast_size = len(members)
        self._fast_count = 0
        self._fast_octets = 0
        self._fast_newest_ts = (members[0]._ts.newest_out - members[0]._ts.fast_offset) & 0xFFFFFFFF
        self._fast_next = next_seq

    @staticmethod
    def _regroup_later(pacer: PacedQueue) -> bool:
        """A member whose transport has a queue goes the one-by-one way, behind it; the groups
        form again when it is empty (``PeerTransport.drain_paced``)."""
        pacer.regroup = True
        return True

    def fast_sync(self) -> None:
        """Hand what the group counted since the last time over to its members."""
        count = self._fast_count
        if not count:
            return
        self._fast_count = 0
        octets = self._fast_octets - 12 * count
        self._fast_octets = 0
        next_seq = self._fast_next
        newest = self._fast_newest_ts
        last_ms = self._fast_last_ms
        for dt in self._fast_members:
            m = dt._seq
            m.fast_count += count
            m.fast_next = next_seq
            tm = dt._ts
            out = (newest + tm.fast_offset) & 0xFFFFFFFF
            if 0 < (out - tm.newest_out) & 0xFFFFFFFF < 0x80000000:
                tm.newest_out = out
            dt._packets_sent += count
            dt._octets_sent += octets
            dt._last_forward_ms = last_ms

    def fast_reset(self) -> None:
        """Dissolve the group (after ``fast_sync``); it forms again after the next packet."""
        if self._fast_next < 0 and not self._fast_members:
            return
        self.fast_sync()
        ring = self._fast_ring
        # the group queued packets in its own lanes of this ring: a member's next packet must not
        # go into a lane taken before those (the ring sends lane by lane), or it would overtake them
        release = ring is not None and self._fast_epoch == ring.epoch
        for dt in self._fast_members:
            dt.fast_track = None
            if release:
                dt.peer.release_lane()
        self._fast_next = -1
        self._fast_members = []
        self._fast_rows = []
        self._fast_pacers = []
        self._fast_tw = 0
        self._fast_rest = []
        self._fast_keep = []
        self._fast_keys = []
        self._fast_ring = None
        self._fast_flush = None
        self._fast_epoch = -1

    def _check_keyframe(self, view: memoryview, length: int) -> bool:
        offset = header_length(view, length)
        if offset < 0:
            return False
        name = self.codec_by_pt[view[1] & 0x7F]
        if name is not None and is_keyframe(name, view[offset:length]):
            self.keyframe_pending = False  # the waiting downtracks start with this packet
            self._keyframe_deferred = False
            size = keyframe_size(name, view[offset:length])
            if size is not None and (size.width != self.width or size.height != self.height):
                self.width, self.height = size.width, size.height
                if self.group is not None:
                    self.group.resized()
            return True
        return False

    def _switch_waiting(self, now_ms: int) -> None:
        waiting, self.switching = self.switching, []
        for dt in waiting:
            dt.switch_now(self, now_ms)

    # -- control ---------------------------------------------------------------------------------
    def request_keyframe(self, now_ms: int, *, wait: bool = True) -> bool:
        """Ask the publisher for a keyframe (PLI), at most once per interval.

        Before a layer's SSRC is known the request is owed: ``on_rtp`` sends it with the layer's
        first packets.  ``wait=False`` (a recording, which finds keyframes itself): no downtrack
        waits, so ``on_rtp`` does not look for the keyframe, and a throttled request is dropped
        (the asker asks again)."""
        if not self.is_video:
            return False
        if not wait:
            if self.ssrc < 0 or now_ms - self._last_keyframe_request_ms < KEYFRAME_REQUEST_INTERVAL_MS:
                return False
            self._last_keyframe_request_ms = now_ms
            self._counters.keyframe_requests += 1
            self._request_keyframe_cb(self.ssrc)
            return True
        self.keyframe_pending = True
        if self.ssrc < 0:
            self._keyframe_deferred = True
            return False
        if now_ms - self._last_keyframe_request_ms < KEYFRAME_REQUEST_INTERVAL_MS:
            self._keyframe_deferred = True  # sent by on_rtp once the interval has passed
            return False
        self._keyframe_deferred = False
        self._last_keyframe_request_ms = now_ms
        self._counters.keyframe_requests += 1
        self._request_keyframe_cb(self.ssrc)
        return True

    def keyframe_wanted(self) -> bool:
        """A subscriber waits for this track's next keyframe (bound, switching, or a request owed)."""
        return bool(self.switching) or self._keyframe_deferred or any(dt.waiting_keyframe for dt in self.downtracks)

    def attach(self, dt: DownTrack, *, wait_keyframe: bool = True) -> None:
        """Add ``dt`` to the fan-out; with ``wait_keyframe`` (video) the next keyframe is looked for."""
        if dt not in self.downtracks:
            self.fast_reset()
            first = not self.downtracks
            self.downtracks = [*self.downtracks, dt]
            if self.is_video and wait_keyframe:
                self.keyframe_pending = True
            if first and self.on_demand is not None:
                self.on_demand()

    def detach(self, dt: DownTrack) -> None:
        if dt in self.downtracks:
            self.fast_reset()
            self.downtracks = [d for d in self.downtracks if d is not dt]

    def add_switcher(self, dt: DownTrack, now_ms: int) -> None:
        """``dt`` joins this layer at its next keyframe (asked for with a PLI on this layer)."""
        if dt not in self.switching:
            self.switching = [*self.switching, dt]
        self.request_keyframe(now_ms)

    def remove_switcher(self, dt: DownTrack) -> None:
        if dt in self.switching:
            self.switching = [d for d in self.switching if d is not dt]

    def close(self) -> None:
        """The publisher is gone: unbind the subscribers and let go of the simulcast group, the
        callback to the publisher and the retransmission cache, so that the track's memory (the
        cache is up to ~750 KB for video) is freed with its last reference, not at the next full
        garbage collection (those references form cycles through the publisher)."""
        self.fast_reset()
        for dt in list(self.switching):
            dt.cancel_switch()
        for dt in list(self.downtracks):
            dt.unbind()
        self.downtracks = []
        self.switching = []
        self.group = None
        self.rtx_cache = None
        self.level_meter = None
        self.tap = None
        self.on_demand = None
        self.keyframe_pending = False
        self._request_keyframe_cb = _no_keyframe_request
        self._send_nack = None

    def describe(self) -> dict[str, object]:
        return {
            "sid": self.sid,
            "kind": self.kind,
            "codec": self.codec.name,
            "mid": self.mid,
            "rid": self.rid,
            **({"width": self.width or None, "height": self.height or None} if self.is_video else {}),
            "muted": self.muted,
            "subscribers": len(self.downtracks),
        }

