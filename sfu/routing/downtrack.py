"""One subscriber's copy of one published stream: the per-subscriber half of forwarding.

A DownTrack outlives the track it is bound to: when the publisher leaves and comes back, ``bind``
points it at the new source and the sequence and timestamp mungers keep the subscriber's stream
continuous.  Video waits for a keyframe after each bind.

Simulcast: binding to a layer of a ``SimulcastGroup`` lets the group pick the layer (the
downtrack's ``target_rid``, or the best one sending).  A layer change while media flows is
``switch_to``: the current layer keeps being forwarded until the new layer's next keyframe, where
``switch_now`` moves over without a gap or a duplicate in the outgoing sequence.
"""

from __future__ import annotations

import random
import secrets
from struct import Struct
from typing import TYPE_CHECKING

from sfu.counters import DropReason, MediaCounters
from sfu.packet.rtp import copy_rewrite, get_extension, header_length
from sfu.packet.seq import SeqMunger, TimestampMunger
from sfu.packet.twcc import TWCC_URI
from sfu.packet.vp8 import Vp8Munger
from sfu.packet.vp9 import Vp9Munger
from sfu.routing.subscription import Preferences
from sfu.transport.peer import PeerTransport

if TYPE_CHECKING:
    from sfu.routing.track import PublishedTrack, TrackCodec

NO_PT = -1
#: what ``PublishedTrack.on_rtp`` found a packet's header to be, once for all its subscribers
SHAPE_PLAIN = 0  # well-formed, no extension block, no padding
# a well-formed packet with extensions (no padding) passes the mask of its ids (``1 << id``)
SHAPE_OTHER = -1  # anything else: ``copy_rewrite`` checks and rewrites it
#: RFC 8843 BUNDLE demux: the value is the receiver's mid, so it is rewritten per subscriber
HDREXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
#: sequence number and timestamp, bytes 2-7 of an RTP header
_SEQ_TS = Struct("!HI")
#: simulcast codecs whose payload descriptor is kept continuous across layer switches
_DESCRIPTOR_MUNGERS: dict[str, type[Vp8Munger]] = {"vp8": Vp8Munger, "vp9": Vp9Munger}


class DownTrack:
    def __init__(
        self,
        *,
        peer: PeerTransport,
        kind: str,
        mid: str,
        ssrc: int,
        out_payload_types: dict[str, int],
        out_ext_ids: dict[str, int],
        counters: MediaCounters,
        rtx_ssrc: int | None = None,
        rtx_pt: int | None = None,
    ) -> None:
        self.sid = "DT_" + secrets.token_hex(6)
        self.peer = peer
        self.kind = kind
        self.mid = mid
        self.ssrc = ssrc
        #: codec variant (``TrackCodec.keys``, a plain name for opus or VP8) -> subscriber PT
        self.out_payload_types = {k.lower(): v for k, v in out_payload_types.items()}
        self.out_ext_ids = dict(out_ext_ids)  # uri -> id negotiated with the subscriber
        #: the subscriber's transport-wide-cc id (0: not negotiated): its transport stamps its own
        #: seq there on every packet (``PeerTransport.sender``)
        self.tw_id = self.out_ext_ids.get(TWCC_URI, 0)
        if not 1 <= self.tw_id <= 14:
            self.tw_id = 0
        if self.tw_id:
            sender = peer.enable_transport_cc(self.tw_id)
            if kind == "video" and rtx_ssrc is not None and rtx_pt is not None:
                sender.set_padding(rtx_ssrc, rtx_pt)  # probes go there (padding-only RTX)
        self.rtx_ssrc = rtx_ssrc
        self.source: PublishedTrack | None = None
        #: the subscriber's own preferences (``update_subscription``: pause, size, frame rate)
        self.prefs = Preferences()
        #: simulcast: the rid this subscriber wants (None: the best layer sending)
        self.target_rid: str | None = None
        #: simulcast: the highest layer the allocator gives this subscriber within its bandwidth
        #: estimate (None: no cap; sfu.routing.allocation); ``target_rid`` bounds it from above
        self.alloc_rid: str | None = None
        #: simulcast: the layer this downtrack moves to at that layer's next keyframe
        self.pending_source: PublishedTrack | None = None
        #: the track whose fan-out group forwards for this downtrack (its counts are then pending
        #: there: the properties below bring them up to date first)
        self.fast_track: PublishedTrack | None = None
        self._waiting_keyframe = kind == "video"
        self._seq = SeqMunger(random.getrandbits(16))
        self._ts = TimestampMunger(random.getrandbits(32))
        self.pt_map = [NO_PT] * 128
        #: second header byte in -> out (marker kept, payload type mapped), NO_PT when unmapped
        self._b1_map = [NO_PT] * 256
        self.ext_map = [0] * 256
        #: bit mask of the extension ids that reach this subscriber unchanged: a packet whose ids
        #: all are in it is copied with its extension block as is
        self._ext_same = 0
        self._packets_sent = 0
        self._octets_sent = 0
        self._paused = False
        #: its participant may not subscribe now (the participants API): paused whatever the source
        self.held = False
        self._counters = counters
        self._kind_index = 1 if kind == "video" else 0
        self._last_forward_ms = 0
        #: (subscriber's mid extension id, its mid) when the publisher's mid value differs
        self._mid_patch: tuple[int, bytes] | None = None
        #: the payload descriptor munger of a simulcast VP8 or VP9 source (``Vp8Munger``,
        #: ``Vp9Munger``): picture ID / TL0PICIDX / KEYIDX kept continuous
        #: across layer switches (set by ``_take``; such packets take the copying path, where the
        #: payload can change)
        self.descriptor: Vp8Munger | None = None

    # -- state the source's fan-out group may hold pending (see ``PublishedTrack``) ----------------
    @property
    def seq(self) -> SeqMunger:
        if self.fast_track is not None:
            self.fast_track.fast_sync()
        return self._seq

    @property
    def ts(self) -> TimestampMunger:
        if self.fast_track is not None:
            self.fast_track.fast_sync()
        return self._ts

    @property
    def packets_sent(self) -> int:
        if self.fast_track is not None:
            self.fast_track.fast_sync()
        return self._packets_sent

    @property
    def octets_sent(self) -> int:
        if self.fast_track is not None:
            self.fast_track.fast_sync()
        return self._octets_sent

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        if value != self._paused:
            self._paused = value
            self._regroup()

    @property
    def withheld(self) -> bool:
        """Paused whatever its source does: its participant may not subscribe now, or paused it."""
        return self.held or not self.prefs.enabled

    @property
    def waiting_keyframe(self) -> bool:
        return self._waiting_keyframe

    @waiting_keyframe.setter
    def waiting_keyframe(self, value: bool) -> None:
        if value != self._waiting_keyframe:
            self._waiting_keyframe = value
            self._regroup()

    def _regroup(self) -> None:
        """Whether this downtrack can be in its source's fan-out group changed."""
        if self.source is not None:
            self.source.fast_reset()

    def can_carry(self, track: PublishedTrack) -> bool:
        return track.kind == self.kind and self.out_pt(track.codec) is not None

    def out_pt(self, codec: TrackCodec) -> int | None:
        """The subscriber's payload type for ``codec``'s variant, None when it has none."""
        for key in codec.keys:
            pt = self.out_payload_types.get(key)
            if pt is not None:
                return pt
        return None

    def bind(self, track: PublishedTrack, now_ms: int) -> None:
        """Start forwarding ``track``; the outgoing stream continues where it was.

        For a simulcast layer the group chooses which of its layers (``SimulcastGroup.attach``)."""
        if track.group is not None:
            track.group.attach(self, now_ms)
        else:
            self.bind_layer(track, now_ms)

    def bind_layer(self, track: PublishedTrack, now_ms: int) -> None:
        """Forward exactly ``track`` from its next keyframe (video)."""
        if self.source is track:
            return
        self.unbind()
        self._take(track, now_ms, wait_keyframe=self.kind == "video")

    def switch_to(self, layer: PublishedTrack, now_ms: int) -> None:
        """Move to ``layer`` at its next keyframe, forwarding the current source until then (a PLI
        asks the publisher for that keyframe).  Without media flowing yet, this is ``bind_layer``."""
        if layer is self.source:
            self.cancel_switch()
            return
        if self.source is None or self._waiting_keyframe or self.kind != "video":
            self.bind_layer(layer, now_ms)
            return
        if self.pending_source is not layer:
            self.cancel_switch()
            self.pending_source = layer
        layer.add_switcher(self, now_ms)

    def cancel_switch(self) -> None:
        if self.pending_source is not None:
            self.pending_source.remove_switcher(self)
            self.pending_source = None

    def switch_now(self, layer: PublishedTrack, now_ms: int) -> None:
        """``layer`` has a keyframe starting: move to it (called by ``layer.on_rtp`` before its
        fan-out, so that packet is the first forwarded from the new layer)."""
        if self.pending_source is not layer:
            return
        self.pending_source = None
        if self.source is not None:
            self.source.detach(self)
            self.source = None
        self._take(layer, now_ms, wait_keyframe=False)

    def _take(self, track: PublishedTrack, now_ms: int, *, wait_keyframe: bool) -> None:
        pt_map = [NO_PT] * 128
        for codec in track.codecs:
            out_pt = self.out_pt(codec)
            if out_pt is not None:
                pt_map[codec.payload_type & 0x7F] = out_pt
        ext_map = [0] * 256
        self._mid_patch = None
        foreign = self.peer.foreign_ext_ids
        for uri, in_id in track.ext_ids.items():
            out_id = self.out_ext_ids.get(uri)
            if out_id is None and uri == TWCC_URI and foreign is not None and in_id not in foreign:
                # the publisher's transport-wide seq, at an id the subscriber's offer uses for
                # nothing else (or for this very extension): left as it is (a receiver ignores an
                # id it did not negotiate, RFC 8285), so the packet keeps the copying fast path
                ext_map[in_id] = in_id
                continue
            if out_id is None:
                continue
            if uri == HDREXT_MID and track.mid != self.mid:
                if len(track.mid) != len(self.mid):
                    continue  # cannot be rewritten in place: drop it, receivers demux by SSRC
                self._mid_patch = (out_id, self.mid.encode())
            ext_map[in_id] = out_id
        self.pt_map = pt_map
        self._b1_map = [NO_PT if pt_map[b & 0x7F] == NO_PT else (b & 0x80) | pt_map[b & 0x7F] for b in range(256)]
        self.ext_map = ext_map
        self._ext_same = 0
        if self._mid_patch is None:
            for ext_id in range(1, 256):
                if ext_map[ext_id] == ext_id:
                    self._ext_same |= 1 << ext_id
        elapsed = max(now_ms - self._last_forward_ms, 1) if self.packets_sent else 0
        self.seq.switch_source()
        self.ts.switch_source(elapsed * track.codec.clock_rate // 1000)
        self.source = track
        self._descriptor_follow(track)
        self._waiting_keyframe = wait_keyframe
        track.attach(self, wait_keyframe=wait_keyframe)
        if wait_keyframe:
            track.request_keyframe(now_ms)

    def _descriptor_follow(self, track: PublishedTrack) -> None:
        munger = _DESCRIPTOR_MUNGERS.get(track.codec.name.lower()) if track.group is not None else None
        if munger is None:
            self.descriptor = None
            return
        if type(self.descriptor) is not munger:
            self.descriptor = munger()
        self.descriptor.switch()

    def _descriptor_rewrite(self, out: memoryview, length: int, retransmission: bool) -> None:
        assert self.descriptor is not None
        start = header_length(out, length)
        if start >= 0:
            self.descriptor.rewrite(out, start, length, retransmission=retransmission)

    def unbind(self) -> None:
        self.cancel_switch()
        if self.source is not None:
            self.source.detach(self)
            self.source = None

    def forward(
        self, view: memoryview, length: int, seq: int, ts: int, keyframe: bool, now_ms: int, shape: int = SHAPE_OTHER
    ) -> int:
        """Rewrite and queue one packet of the source for this subscriber; returns the bytes
        queued (before SRTP), 0 when nothing was sent.  ``shape``: ``SHAPE_PLAIN``, ``SHAPE_OTHER`` or a mask of extension ids.

        A packet this subscriber cannot take (payload type it did not negotiate, malformed) is
        refused before its sequence number is mapped and leaves no hole in the outgoing sequence;
        a refused keyframe leaves the downtrack waiting for the next one."""
        peer = self.peer
        if self._paused or peer.tx is None:
            return 0
        waiting = self._waiting_keyframe
        if waiting and not keyframe:
            return 0
        b1 = self._b1_map[view[1]]
        if b1 == NO_PT:
            return self._refuse(seq, keyframe, now_ms)
        # simulcast VP8 takes the copying path: its payload descriptor is rewritten too
        plain = self.descriptor is None and (
            shape == SHAPE_PLAIN or (shape > 0 and shape | self._ext_same == self._ext_same)
        )
        n = length
        if not plain:  # rewritten into out_view first: a malformed packet is refused unmapped
            n = copy_rewrite(view, length, peer.out_view, ssrc=self.ssrc, seq=0, ts=0, pt=b1 & 0x7F, ext_map=self.ext_map)
            if n < 0:
                return self._refuse(seq, keyframe, now_ms)
        if waiting:
            self.waiting_keyframe = False
        m = self._seq
        if seq == m.fast_next:  # SeqMunger.map's in-order fast path, inlined
            m.fast_next = (seq + 1) & 0xFFFF
            m.fast_count += 1
            out_seq = (seq + m.fast_delta) & 0xFFFF
        else:
            out_seq = m.map(seq)
            if out_seq < 0:
                self._counters.drops[DropReason.SEQ_TOO_OLD] += 1
                return 0
        tm = self._ts
        offset = tm.fast_offset
        if offset >= 0:  # TimestampMunger.map, inlined
            out_ts = (ts + offset) & 0xFFFFFFFF
            if 0 < (out_ts - tm.newest_out) & 0xFFFFFFFF < 0x80000000:
                tm.newest_out = out_ts
        else:
            out_ts = tm.map(ts)
        if plain:
            tw_pos = 0  # where the packet's transport-wide seq is, to be overwritten in place
            tw = self.tw_id
            if tw and shape > 0 and (shape >> tw) & 1:
                found = get_extension(view, length, tw)
                if found is not None and found[1] == 2:
                    tw_pos = found[0]
            if not peer.forward_rtp(view, length, b1, out_seq, out_ts, self.ssrc, tw_pos, now_ms):
                return 0
        else:
            out = peer.out_view
            _SEQ_TS.pack_into(out, 2, out_seq, out_ts)
            if self._mid_patch is not None:
                self._patch_mid(out, n)
            if self.descriptor is not None:
                self._descriptor_rewrite(out, n, False)
            if not peer.send_rtp(n, now_ms):
                return 0
        self._packets_sent += 1
        self._octets_sent += n - 12
        self._last_forward_ms = now_ms
        return n

    def _refuse(self, seq: int, keyframe: bool, now_ms: int) -> int:
        """Count a packet this subscriber cannot take; keep the outgoing sequence without a hole
        (or, while waiting for a keyframe, keep waiting and look for the next one)."""
        self._counters.drops[DropReason.RTP_MALFORMED] += 1
        if self._waiting_keyframe:
            if keyframe and self.source is not None:
                self.source.request_keyframe(now_ms)  # the track looks for the next keyframe again
        else:
            self.seq.drop(seq)
        return 0

    def _patch_mid(self, out: memoryview, length: int) -> None:
        assert self._mid_patch is not None
        ext_id, value = self._mid_patch
        loc = get_extension(out, length, ext_id)
        if loc is not None and loc[1] == len(value):
            out[loc[0] : loc[0] + loc[1]] = value

    def retransmit(self, out_seqs: list[int], now_ms: int) -> int:
        """Answer a NACK from the retransmission cache; returns how many were resent (none while
        paused: nothing at all goes out for a paused track)."""
        track = self.source
        if track is None or track.rtx_cache is None or self._paused:
            return 0
        sent = 0
        peer = self.peer
        for out_seq in out_seqs:
            in_seq = self.seq.unmap(out_seq)
            if in_seq < 0:
                continue
            hit = track.rtx_cache.get(in_seq)
            if hit is None:
                continue
            buf, length = hit
            view = memoryview(buf)
            pt = self.pt_map[view[1] & 0x7F]
            if pt == NO_PT:
                continue
            ts = int.from_bytes(view[4:8], "big")
            n = copy_rewrite(view, length, peer.out_view, ssrc=self.ssrc, seq=out_seq, ts=self.ts.translate(ts), pt=pt, ext_map=self.ext_map)
            if n > 0 and self._mid_patch is not None:
                self._patch_mid(peer.out_view, n)
            if n > 0 and self.descriptor is not None:
                self._descriptor_rewrite(peer.out_view, n, True)
            if n > 0 and peer.send_rtp(n, now_ms):
                sent += 1
        self._counters.retransmits += sent
        return sent

    def close(self) -> None:
        self.unbind()
