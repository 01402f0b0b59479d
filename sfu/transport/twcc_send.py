"""Send side of transport-wide congestion control: what the node sent to a subscriber, matched
with the subscriber's transport-cc feedback.

``SendHistory`` is sans-I/O: the sender calls ``on_sent(seq, send_ms, size)`` for every packet
it stamps with its own transport-wide sequence number (O(1), preallocated rings of
``capacity`` entries, 8+8+4+1 bytes each; ``send(send_ms, size)`` numbers the next packet
and records it, ``record`` does the same without checks for the send path, whose inlined
copies read ``high``, ``mask``, ``exts``, ``send_times``, ``sizes``, ``states``), and the RTCP path calls ``on_transport_cc(TransportCC)`` (the opaque packet
``parse_compound`` gives; it refuses a message claiming more than ``capacity`` statuses) or
``on_feedback(TransportFeedback)``, which return one ``PacketFeedback`` per packet the message
reports for the first time, in sequence order: what a send-side estimator (GCC) consumes.

* ``seq`` in ``PacketFeedback`` is the extended (unwrapped) transport-wide seq.
* ``send_ms`` is the caller's send clock; ``recv_ms`` is on the subscriber's clock (the
  feedback's reference time, unwrapped across messages, plus the deltas): only differences
  between packets mean anything. ``None``: reported lost.
* A packet reported received twice (a receiver that reports again after reordering) is
  returned once; one reported lost and later received is returned again as received; one
  reported lost twice, once. Statuses of seqs not in the history (never sent, or more than
  ``capacity`` behind the newest) are skipped (``unknown``).
* Work per message: the statuses inside the history's range, at most ``capacity`` (about
  0.5 us each): the caller bounds how many messages per second a subscriber gets processed.
* ``feedback_lost`` counts messages missing from the feedback packet count sequence.
"""

from __future__ import annotations

from array import array

from sfu.packet.rtcp import TransportCC
from sfu.packet.twcc import DELTA_TICK_US, REFERENCE_TICK_US, TransportFeedback
from sfu.transport.bwe.feedback import PacketFeedback

__all__ = ["PacketFeedback", "SendHistory"]

_EMPTY = -(1 << 63)  # no extended seq takes it
_UNREPORTED = 0
_LOST = 1
_RECEIVED = 2
_REFERENCE_MOD = 1 << 24
_REFERENCE_HALF = 1 << 23


class SendHistory:
    """Transport-wide seq -> (send time, size) for one subscriber transport."""

    __slots__ = (
        "_last_fb_count",
        "_reference_ext",
        "_reference_raw",
        "capacity",
        "duplicates",
        "exts",
        "feedback_lost",
        "high",
        "mask",
        "send_times",
        "sizes",
        "states",
        "unknown",
    )

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 16 or capacity & (capacity - 1) or capacity > 1 << 15:
            raise ValueError(f"send history capacity {capacity} must be a power of two in 16-32768")
        self.capacity = capacity
        self.mask = capacity - 1
        self.exts = array("q", [_EMPTY]) * capacity
        self.send_times = array("d", [0.0]) * capacity
        self.sizes = array("i", [0]) * capacity
        self.states = bytearray(capacity)
        self.high = -1  # highest extended seq sent; -1 before the first
        self._reference_ext = 0
        self._reference_raw = -1
        self._last_fb_count = -1
        self.unknown = 0
        self.duplicates = 0
        self.feedback_lost = 0

    def _extend(self, seq: int) -> int:
        high = self.high
        d = (seq - high) & 0xFFFF
        if d >= 0x8000:
            d -= 0x10000
        return high + d

    def on_sent(self, seq: int, send_ms: float, size: int) -> int:
        """Record a sent packet; returns its extended seq. The sender numbers its packets
        consecutively; a seq behind the newest overwrites what that slot held."""
        if not 0 <= seq <= 0xFFFF:
            raise ValueError(f"transport-wide seq {seq} out of range 0-65535")
        if not 0 <= size <= 0xFFFF:
            raise ValueError(f"packet size {size} out of range 0-65535")
        ext = seq if self.high < 0 else self._extend(seq)
        slot = ext & self.mask
        self.exts[slot] = ext
        self.send_times[slot] = send_ms
        self.sizes[slot] = size
        self.states[slot] = _UNREPORTED
        if ext > self.high:
            self.high = ext
        return ext

    def send(self, send_ms: float, size: int) -> int:
        """Number the next packet (one after the newest recorded, 0 for the first) and record
        it; returns the 16-bit seq to stamp with ``sfu.packet.twcc.write_seq``."""
        seq = (self.high + 1) & 0xFFFF
        self.on_sent(seq, send_ms, size)
        return seq

    def record(self, send_ms: float, size: int) -> int:
        """``send`` for the sender's own packets, without the checks (the hot path's
        reference: ``PublishedTrack.on_rtp`` and ``PeerTransport.forward_rtp`` inline it).
        ``size`` must be 0-65535 (an RTP packet)."""
        ext = self.high + 1
        self.high = ext
        slot = ext & self.mask
        self.exts[slot] = ext
        self.send_times[slot] = send_ms
        self.sizes[slot] = size
        self.states[slot] = _UNREPORTED
        return ext & 0xFFFF

    def _reference_us(self, raw: int) -> int:
        if self._reference_raw < 0:
            self._reference_ext = raw
        else:
            d = (raw - self._reference_raw) % _REFERENCE_MOD
            if d >= _REFERENCE_HALF:
                d -= _REFERENCE_MOD
            self._reference_ext += d
        self._reference_raw = raw
        return self._reference_ext * REFERENCE_TICK_US

    def on_transport_cc(self, packet: TransportCC) -> list[PacketFeedback]:
        """Decode ``packet`` (from ``parse_compound``) and take it: ``ValueError`` when it is
        malformed or claims more statuses than the history holds."""
        return self.on_feedback(TransportFeedback.from_transport_cc(packet, max_count=self.capacity))

    def on_feedback(self, fb: TransportFeedback) -> list[PacketFeedback]:
        """The packets ``fb`` reports for the first time (or newly as received), in seq order.
        Only the statuses of seqs the history holds are looked at one by one."""
        if self._last_fb_count >= 0:
            gap = (fb.fb_count - self._last_fb_count - 1) & 0xFF
            if gap < 0x80:
                self.feedback_lost += gap
        self._last_fb_count = fb.fb_count
        t_us = self._reference_us(fb.reference_time)
        out: list[PacketFeedback] = []
        deltas = fb.deltas
        count = len(deltas)
        high = self.high
        base = self._extend(fb.base_seq) if high >= 0 else 0
        lo = max(0, high - self.capacity + 1 - base)
        hi = min(count, high + 1 - base) if high >= 0 else 0
        if lo >= hi:
            self.unknown += count
            return out
        self.unknown += count - (hi - lo)
        if lo:
            t_us += sum(d for d in deltas[:lo] if d is not None) * DELTA_TICK_US
        exts = self.exts
        state = self.states
        mask = self.mask
        for k in range(lo, hi):
            delta = deltas[k]
            if delta is not None:
                t_us += delta * DELTA_TICK_US
            ext = base + k
            slot = ext & mask
            if exts[slot] != ext:
                self.unknown += 1
                continue
            if delta is None:
                if state[slot] != _UNREPORTED:
                    self.duplicates += 1
                    continue
                state[slot] = _LOST
                out.append(PacketFeedback(ext, self.send_times[slot], None, self.sizes[slot]))
            else:
                if state[slot] == _RECEIVED:
                    self.duplicates += 1
                    continue
                state[slot] = _RECEIVED
                out.append(PacketFeedback(ext, self.send_times[slot], t_us / 1000, self.sizes[slot]))
        return out
