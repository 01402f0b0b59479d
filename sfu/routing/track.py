"""A published media stream and its fan-out to subscribers (the forwarding hot path).

``PublishedTrack.on_rtp`` runs once per incoming packet: it updates receive statistics, stores
the packet in the retransmission cache and hands it to each ``DownTrack``, which rewrites it
into its subscriber's output buffer and sends it.  No logging, no awaits, no per-packet objects
beyond what the socket layer needs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from struct import unpack_from
from typing import TYPE_CHECKING

from sfu.counters import MediaCounters
from sfu.packet.codecs import is_keyframe
from sfu.packet.rtp import header_length
from sfu.routing.stats import ReceiveStats

if TYPE_CHECKING:
    from sfu.routing.downtrack import DownTrack
    from sfu.routing.simulcast import SimulcastGroup

# the ``shape`` argument of ``DownTrack.forward`` (same values as sfu.routing.downtrack.SHAPE_*,
# which imports this module); a packet with extensions passes the mask of their ids instead
_SHAPE_PLAIN = 0
_SHAPE_OTHER = -1


def extension_ids(view: memoryview, length: int) -> int:
    """Bit mask of the header extension ids in a well-formed RTP packet with its X bit set, or
    -1 when the block is anything but plain elements (empty, padding other than up to 3 zero
    bytes at its end for the one-byte form, reserved id 15, other profiles)."""
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
            pos += 2 + view[pos + 1]
    else:
        return -1
    return mask if mask and pos <= end else -1

#: retransmission cache slots per video track (a power of two); audio keeps none
RTX_CACHE_SLOTS = 512
RTX_SLOT_BYTES = 1500
KEYFRAME_REQUEST_INTERVAL_MS = 500


@dataclass(frozen=True)
class TrackCodec:
    name: str  # "VP8", "opus", "red", ...
    clock_rate: int
    payload_type: int


class RtxCache:
    """The last N packets of a stream by sequence number, for answering NACKs."""

    __slots__ = ("_bufs", "_lens", "_seqs", "_mask")

    def __init__(self, slots: int = RTX_CACHE_SLOTS) -> None:
        self._mask = slots - 1
        self._bufs = [bytearray(RTX_SLOT_BYTES) for _ in range(slots)]
        self._lens = [0] * slots
        self._seqs = [-1] * slots

    def put(self, view: memoryview, length: int, seq: int) -> None:
        if length > RTX_SLOT_BYTES:
            return
        i = seq & self._mask
        self._bufs[i][:length] = view[:length]
        self._lens[i] = length
        self._seqs[i] = seq

    def get(self, seq: int) -> tuple[bytearray, int] | None:
        i = seq & self._mask
        if self._seqs[i] != seq:
            return None
        return self._bufs[i], self._lens[i]


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
        self.rtx_cache = RtxCache() if self.is_video else None
        self.muted = False
        self._counters = counters
        self._kind_index = 1 if self.is_video else 0
        self._request_keyframe_cb = request_keyframe
        self._last_keyframe_request_ms = -KEYFRAME_REQUEST_INTERVAL_MS
        self.keyframe_pending = False  # a downtrack waits for a keyframe
        self._keyframe_deferred = False  # a throttled request is still owed
        # the last sender report: (ntp 64-bit, rtp ts, arrival ms)
        self.last_sr: tuple[int, int, int] | None = None
        #: (view, length, now_ms) -> None: reads the audio level now and then (sfu.routing.speakers)
        self.level_meter: Callable[[memoryview, int, int], None] | None = None

    # -- hot path --------------------------------------------------------------------------------
    def on_rtp(self, view: memoryview, length: int, now_ms: int) -> None:
        counters = self._counters
        kind = self._kind_index
        counters.rtp_in[kind] += 1
        seq = (view[2] << 8) | view[3]
        ts = unpack_from("!I", view, 4)[0]
        b0 = view[0]
        top = b0 & 0xF0  # version, padding, extension
        if top == 0x80:
            shape = _SHAPE_PLAIN if 12 + (b0 & 0x0F) * 4 <= length <= len(view) else _SHAPE_OTHER
        elif top == 0x90 and header_length(view, length) >= 0:
            shape = extension_ids(view, length)  # a mask of ids (>= 2), or -1 (_SHAPE_OTHER)
        else:
            shape = _SHAPE_OTHER
        self.stats.update(seq, ts, now_ms)
        meter = self.level_meter
        if meter is not None:
            meter(view, length, now_ms)
        cache = self.rtx_cache
        if cache is not None:
            cache.put(view, length, seq)
        keyframe = False
        if self.keyframe_pending:
            keyframe = self._check_keyframe(view, length)
            if keyframe:
                if self.switching:  # they join the fan-out below, starting with this packet
                    self._switch_waiting(now_ms)
            elif self._keyframe_deferred:
                self.request_keyframe(now_ms)
        sent = 0
        octets = 0
        for dt in self.downtracks:
            n = dt.forward(view, length, seq, ts, keyframe, now_ms, shape)
            if n:
                sent += 1
                octets += n
        if sent:
            counters.rtp_out[kind] += sent
            counters.bytes_out += octets

    def _check_keyframe(self, view: memoryview, length: int) -> bool:
        offset = header_length(view, length)
        if offset < 0:
            return False
        name = self.codec_by_pt[view[1] & 0x7F]
        if name is not None and is_keyframe(name, view[offset:length]):
            self.keyframe_pending = False  # the waiting downtracks start with this packet
            self._keyframe_deferred = False
            return True
        return False

    def _switch_waiting(self, now_ms: int) -> None:
        waiting, self.switching = self.switching, []
        for dt in waiting:
            dt.switch_now(self, now_ms)

    # -- control ---------------------------------------------------------------------------------
    def request_keyframe(self, now_ms: int) -> bool:
        """Ask the publisher for a keyframe (PLI), at most once per interval.

        Before a layer's SSRC is known the request is owed: ``on_rtp`` sends it with the layer's
        first packets."""
        if not self.is_video:
            return False
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

    def attach(self, dt: DownTrack, *, wait_keyframe: bool = True) -> None:
        """Add ``dt`` to the fan-out; with ``wait_keyframe`` (video) the next keyframe is looked for."""
        if dt not in self.downtracks:
            self.downtracks = [*self.downtracks, dt]
            if self.is_video and wait_keyframe:
                self.keyframe_pending = True

    def detach(self, dt: DownTrack) -> None:
        if dt in self.downtracks:
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
        cache is ~750 KB for video) is freed with its last reference, not at the next full
        garbage collection (those references form cycles through the publisher)."""
        for dt in list(self.switching):
            dt.cancel_switch()
        for dt in list(self.downtracks):
            dt.unbind()
        self.downtracks = []
        self.switching = []
        self.group = None
        self.rtx_cache = None
        self.level_meter = None
        self.keyframe_pending = False
        self._request_keyframe_cb = _no_keyframe_request

    def describe(self) -> dict[str, object]:
        return {
            "sid": self.sid,
            "kind": self.kind,
            "codec": self.codec.name,
            "mid": self.mid,
            "rid": self.rid,
            "muted": self.muted,
            "subscribers": len(self.downtracks),
        }

